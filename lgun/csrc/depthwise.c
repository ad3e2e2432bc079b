/* Depthwise 2-D convolution of channels-last (NHWC) float32 tensors: forward, input gradient,
 * weight and bias gradients. Stride 1, any kernel size, dilation and zero padding.
 *
 * Built and loaded by lgun/cpu_kernels.py (plain C, no torch headers, so it compiles in about
 * a second). Why hand-written: for LGUN's training shapes oneDNN's depthwise backward runs at
 * 3-4x the cost of its forward and its dilated kernels are several times slower per MAC
 * (BENCHMARKS.md, training step). With channels innermost, every tap is one contiguous
 * multiply-add over C floats, which the compiler vectorises; there is no im2col and nothing
 * is allocated.
 *
 * Layouts: x [B, H, W, C]; w [KH, KW, C] (the conv weight (C, 1, KH, KW) transposed);
 * y [B, Ho, Wo, C] with Ho = H + 2 ph - d (KH - 1), Wo = W + 2 pw - d (KW - 1).
 * Each function handles batch items [b0, b1): the caller splits a batch across threads.
 */
#include <stddef.h>
#include <string.h>

#define PIX(p, b, y, x, H, W, C) ((p) + ((((size_t)(b) * (H) + (y)) * (W) + (x)) * (C)))
#define CB 16 /* channels per block: two AVX2 / one AVX-512 register of accumulators */
#define WIDE 64 /* from this many channels the weight gradient loops over pixels first */
#define INLINE static inline __attribute__((always_inline))

/* The forward and the input gradient are one tap sum: out(y, x) = init + sum over taps (i, j)
 * of w(i, j) * src(y + dir (i d - ph), x + dir (j d - pw)), taps outside src skipped. The
 * forward reads x with dir = +1 (init: the bias); the input gradient is the transposed conv,
 * reading gy with the taps mirrored, dir = -1 (no init). `dir` is a constant at each call,
 * so the compiler specialises both. */

INLINE int floor_div(int a, int d) { return a >= 0 ? a / d : -((-a + d - 1) / d); }

/* The taps t in [0, K) whose source index p + dir (t d - pad) lies in [0, n), as [*t0, *t1). */
INLINE void tap_range(int p, int n, int K, int pad, int d, int dir, int *t0, int *t1) {
  int lo, hi; /* inclusive */
  if (dir > 0) {
    lo = -floor_div(p - pad, d); /* ceil((pad - p) / d) */
    hi = floor_div(n - 1 - p + pad, d);
  } else {
    lo = -floor_div(n - 1 - p - pad, d); /* ceil((p + pad - n + 1) / d) */
    hi = floor_div(p + pad, d);
  }
  *t0 = lo < 0 ? 0 : lo;
  *t1 = hi >= K ? K : hi + 1;
}

/* One block of n <= CB channels of one output pixel, summed in registers over the taps
 * [i0, i1) x [j0, j1) that land inside src (no per-tap test; pointers step by the dilation).
 * `n` is the constant CB on the hot path (the compiler unrolls it into vector FMAs). */
INLINE void tap_block(const float *restrict s0, const float *restrict w,
                      const float *restrict init, float *restrict o, int n, int i0, int i1,
                      int j0, int j1, ptrdiff_t row_step, ptrdiff_t col_step, int KW, int C) {
  float acc[CB];
  for (int c = 0; c < n; c++) acc[c] = init ? init[c] : 0.f;
  for (int i = i0; i < i1; i++) {
    const float *restrict s = s0 + (i - i0) * row_step;
    const float *restrict k = w + ((size_t)i * KW + j0) * C;
    for (int j = j0; j < j1; j++, s += col_step, k += C)
      for (int c = 0; c < n; c++) acc[c] += k[c] * s[c];
  }
  for (int c = 0; c < n; c++) o[c] = acc[c];
}

/* Row y of item b of dst [B, Hd, Wd, C] from src [B, Hs, Ws, C], see above. */
INLINE void tap_row(const float *restrict src, const float *restrict w,
                    const float *restrict init, float *restrict dst, int b, int y, int Hs,
                    int Ws, int Hd, int Wd, int C, int KH, int KW, int ph, int pw, int d,
                    int dir) {
  const ptrdiff_t row_step = (ptrdiff_t)dir * d * Ws * C, col_step = (ptrdiff_t)dir * d * C;
  int i0, i1;
  tap_range(y, Hs, KH, ph, d, dir, &i0, &i1);
  for (int x = 0; x < Wd; x++) {
    int j0, j1;
    tap_range(x, Ws, KW, pw, d, dir, &j0, &j1);
    float *o = PIX(dst, b, y, x, Hd, Wd, C);
    if (i0 >= i1 || j0 >= j1) { /* every tap in the padding */
      for (int c = 0; c < C; c++) o[c] = init ? init[c] : 0.f;
      continue;
    }
    const float *s0 = PIX(src, b, y + dir * (i0 * d - ph), x + dir * (j0 * d - pw), Hs, Ws, C);
    for (int c0 = 0; c0 < C; c0 += CB) {
      const float *in = init ? init + c0 : NULL;
      if (C - c0 >= CB)
        tap_block(s0 + c0, w + c0, in, o + c0, CB, i0, i1, j0, j1, row_step, col_step, KW, C);
      else
        tap_block(s0 + c0, w + c0, in, o + c0, C - c0, i0, i1, j0, j1, row_step, col_step, KW,
                  C);
    }
  }
}

/* y = conv(x, w) + bias (bias may be NULL). */
void lgun_dw_forward(const float *x, const float *w, const float *bias, float *y, int b0,
                     int b1, int H, int W, int C, int KH, int KW, int ph, int pw, int d, int Ho,
                     int Wo) {
  for (int b = b0; b < b1; b++)
    for (int r = 0; r < Ho; r++)
      tap_row(x, w, bias, y, b, r, H, W, Ho, Wo, C, KH, KW, ph, pw, d, 1);
}

/* One tap (i, j) and one block of channels over one output row: sum_ox gy * x in registers,
 * over the columns where the tap lands inside the image (no per-pixel bounds test). */
INLINE void bwd_w_block(const float *restrict g, const float *restrict s, float *restrict k,
                        int n, int ox0, int ox1, int shift, int C) {
  float acc[CB];
  for (int c = 0; c < n; c++) acc[c] = 0.f;
  for (int ox = ox0; ox < ox1; ox++) {
    const float *restrict gp = g + (size_t)ox * C;
    const float *restrict sp = s + (size_t)(ox + shift) * C;
    for (int c = 0; c < n; c++) acc[c] += gp[c] * sp[c];
  }
  for (int c = 0; c < n; c++) k[c] += acc[c];
}

/* Wide layers (C >= WIDE): per output pixel and tap, one long multiply-add over the C
 * channels into a row buffer (rs, rb), added to gw, gb at the end of each row. */
static void bwd_w_pixels(const float *restrict x, const float *restrict gy, float *restrict gw,
                         float *restrict gb, float *restrict rs, float *restrict rb, int b,
                         int oy, int H, int W, int C, int KH, int KW, int ph, int pw, int d,
                         int Ho, int Wo) {
  const size_t nw = (size_t)KH * KW * C;
  memset(rs, 0, sizeof(float) * nw);
  memset(rb, 0, sizeof(float) * C);
  for (int ox = 0; ox < Wo; ox++) {
    const float *restrict g = PIX(gy, b, oy, ox, Ho, Wo, C);
    for (int c = 0; c < C; c++) rb[c] += g[c];
    for (int i = 0; i < KH; i++) {
      const int iy = oy - ph + i * d;
      if (iy < 0 || iy >= H) continue;
      for (int j = 0; j < KW; j++) {
        const int ix = ox - pw + j * d;
        if (ix < 0 || ix >= W) continue;
        const float *restrict s = PIX(x, b, iy, ix, H, W, C);
        float *restrict k = rs + ((size_t)i * KW + j) * C;
        for (int c = 0; c < C; c++) k[c] += g[c] * s[c];
      }
    }
  }
  for (size_t n = 0; n < nw; n++) gw[n] += rs[n];
  if (gb)
    for (int c = 0; c < C; c++) gb[c] += rb[c];
}

/* Narrow layers: per tap and block of channels, the sum over the row in registers (over the
 * columns where the tap lands inside the image, no per-pixel test), then added to gw. */
static void bwd_w_taps(const float *restrict x, const float *restrict gy, float *restrict gw,
                       float *restrict gb, int b, int oy, int H, int W, int C, int KH, int KW,
                       int ph, int pw, int d, int Ho, int Wo) {
  const float *g = PIX(gy, b, oy, 0, Ho, Wo, C);
  if (gb)
    for (int c0 = 0; c0 < C; c0 += CB) {
      const int n = C - c0 < CB ? C - c0 : CB;
      float acc[CB] = {0};
      for (int ox = 0; ox < Wo; ox++)
        for (int c = 0; c < n; c++) acc[c] += g[(size_t)ox * C + c0 + c];
      for (int c = 0; c < n; c++) gb[c0 + c] += acc[c];
    }
  for (int i = 0; i < KH; i++) {
    const int iy = oy - ph + i * d;
    if (iy < 0 || iy >= H) continue;
    const float *s = PIX(x, b, iy, 0, H, W, C);
    for (int j = 0; j < KW; j++) {
      const int shift = j * d - pw; /* input column = ox + shift */
      const int ox0 = shift < 0 ? -shift : 0;
      const int ox1 = W - shift < Wo ? W - shift : Wo;
      if (ox1 <= ox0) continue;
      float *k = gw + ((size_t)i * KW + j) * C;
      for (int c0 = 0; c0 < C; c0 += CB) {
        if (C - c0 >= CB)
          bwd_w_block(g + c0, s + c0, k + c0, CB, ox0, ox1, shift, C);
        else
          bwd_w_block(g + c0, s + c0, k + c0, C - c0, ox0, ox1, shift, C);
      }
    }
  }
}

/* gx = dL/dx and gw [KH, KW, C] = dL/dw, gb [C] = dL/dbias over items [b0, b1) from
 * gy = dL/dy (gx NULL: no input gradient; gw NULL: no weight or bias gradient; gb NULL: no
 * bias). gw and gb are overwritten; rs, rb: scratch of KH*KW*C and C floats. No fp32
 * accumulator takes more than Wo terms before it is added to gw. Which loop order is faster
 * for the weight gradient depends on the width (measured on LGUN's layers, Zen 3): long
 * channel loops for wide layers, register sums along the row for the 16-channel dilated
 * branches. Both gradients come from one sweep over the rows: input-gradient row r and
 * weight-gradient row r read the rows of gy and x near r, which stay in cache from one r to
 * the next, so x and gy each come from memory once. */
void lgun_dw_backward(const float *restrict x, const float *restrict gy,
                      const float *restrict w, float *restrict gx, float *restrict gw,
                      float *restrict gb, float *restrict rs, float *restrict rb, int b0, int b1,
                      int H, int W, int C, int KH, int KW, int ph, int pw, int d, int Ho,
                      int Wo) {
  if (gw) memset(gw, 0, sizeof(float) * (size_t)KH * KW * C);
  if (gw && gb) memset(gb, 0, sizeof(float) * C);
  const int rows = H > Ho ? H : Ho;
  for (int b = b0; b < b1; b++)
    for (int r = 0; r < rows; r++) {
      if (gx && r < H) tap_row(gy, w, NULL, gx, b, r, Ho, Wo, H, W, C, KH, KW, ph, pw, d, -1);
      if (!gw || r >= Ho) continue;
      if (C >= WIDE)
        bwd_w_pixels(x, gy, gw, gb, rs, rb, b, r, H, W, C, KH, KW, ph, pw, d, Ho, Wo);
      else
        bwd_w_taps(x, gy, gw, gb, b, r, H, W, C, KH, KW, ph, pw, d, Ho, Wo);
    }
}
