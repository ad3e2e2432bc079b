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

/* One block of n <= CB channels of one output pixel, summed in registers. `n` is the
 * constant CB on the hot path (the compiler unrolls it into vector FMAs). */
INLINE void tap_block(const float *restrict src, const float *restrict w,
                      const float *restrict init, float *restrict o, int n, int b, int y, int x,
                      int Hs, int Ws, int C, int KH, int KW, int ph, int pw, int d, int dir) {
  float acc[CB];
  for (int c = 0; c < n; c++) acc[c] = init ? init[c] : 0.f;
  for (int i = 0; i < KH; i++) {
    const int sy = y + dir * (i * d - ph);
    if (sy < 0 || sy >= Hs) continue;
    for (int j = 0; j < KW; j++) {
      const int sx = x + dir * (j * d - pw);
      if (sx < 0 || sx >= Ws) continue;
      const float *restrict s = PIX(src, b, sy, sx, Hs, Ws, C);
      const float *restrict k = w + ((size_t)i * KW + j) * C;
      for (int c = 0; c < n; c++) acc[c] += k[c] * s[c];
    }
  }
  for (int c = 0; c < n; c++) o[c] = acc[c];
}

/* dst [B, Hd, Wd, C] (items [b0, b1)) from src [B, Hs, Ws, C], see above. */
INLINE void tap_sum(const float *restrict src, const float *restrict w,
                    const float *restrict init, float *restrict dst, int b0, int b1, int Hs,
                    int Ws, int Hd, int Wd, int C, int KH, int KW, int ph, int pw, int d,
                    int dir) {
  for (int b = b0; b < b1; b++)
    for (int y = 0; y < Hd; y++)
      for (int x = 0; x < Wd; x++)
        for (int c0 = 0; c0 < C; c0 += CB) {
          float *o = PIX(dst, b, y, x, Hd, Wd, C) + c0;
          const float *in = init ? init + c0 : NULL;
          if (C - c0 >= CB)
            tap_block(src + c0, w + c0, in, o, CB, b, y, x, Hs, Ws, C, KH, KW, ph, pw, d, dir);
          else
            tap_block(src + c0, w + c0, in, o, C - c0, b, y, x, Hs, Ws, C, KH, KW, ph, pw, d,
                      dir);
        }
}

/* y = conv(x, w) + bias (bias may be NULL). */
void lgun_dw_forward(const float *x, const float *w, const float *bias, float *y, int b0,
                     int b1, int H, int W, int C, int KH, int KW, int ph, int pw, int d, int Ho,
                     int Wo) {
  tap_sum(x, w, bias, y, b0, b1, H, W, Ho, Wo, C, KH, KW, ph, pw, d, 1);
}

/* gx = dL/dx from gy = dL/dy. */
void lgun_dw_backward_input(const float *gy, const float *w, float *gx, int b0, int b1, int H,
                            int W, int C, int KH, int KW, int ph, int pw, int d, int Ho,
                            int Wo) {
  tap_sum(gy, w, NULL, gx, b0, b1, Ho, Wo, H, W, C, KH, KW, ph, pw, d, -1);
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

/* gw [KH, KW, C] = dL/dw and gb [C] = dL/dbias (gb may be NULL) over items [b0, b1), both
 * overwritten; rs, rb: scratch of KH*KW*C and C floats. No fp32 accumulator takes more than
 * Wo terms before it is added to gw. Which loop order is faster depends on the width
 * (measured on LGUN's layers, Zen 3): long channel loops for wide layers, register sums
 * along the row for the 16-channel dilated branches. */
void lgun_dw_backward_weight(const float *restrict x, const float *restrict gy,
                             float *restrict gw, float *restrict gb, float *restrict rs,
                             float *restrict rb, int b0, int b1, int H, int W, int C, int KH,
                             int KW, int ph, int pw, int d, int Ho, int Wo) {
  memset(gw, 0, sizeof(float) * (size_t)KH * KW * C);
  if (gb) memset(gb, 0, sizeof(float) * C);
  for (int b = b0; b < b1; b++)
    for (int oy = 0; oy < Ho; oy++) {
      if (C >= WIDE)
        bwd_w_pixels(x, gy, gw, gb, rs, rb, b, oy, H, W, C, KH, KW, ph, pw, d, Ho, Wo);
      else
        bwd_w_taps(x, gy, gw, gb, b, oy, H, W, C, KH, KW, ph, pw, d, Ho, Wo);
    }
}
