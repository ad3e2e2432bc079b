/* GELU of a per-sample channel scaling, y = GELU(t * s), forward and backward, for channels-last
 * float32 tensors: t [B, N, C] (N pixels), s [B, C]. The exact (erf) GELU of torch's default.
 *
 * Built and loaded by lgun/cpu_kernels.py with depthwise.c. Why hand-written: in LGUN's FFN
 * the eager chain (t * s, GELU, and in the backward t * s again, gelu_backward, a reduction for
 * ds and a product for dt) makes six passes over the largest activation of the network; here
 * the forward is one pass and the backward one. erf and exp are the usual polynomial and
 * range-reduction approximations, written as plain arithmetic so that the compiler vectorises
 * the channel loops (no libm calls): |erf error| < 1.5e-7 (Abramowitz & Stegun 7.1.26, the
 * approximation ATen's vectorised erf uses), exp within 2 ulp.
 * Each function handles batch items [b0, b1): the caller splits a batch across threads.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define ROWS 64 /* pixels per partial sum of ds: no fp32 sum takes more terms before it is added */

/* exp(x) for x <= 0 (callers pass -u^2 / 2): 2^n * e^r, r = x - n ln2 in [-ln2/2, ln2/2]. */
INLINE float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  /* round(x / ln2) by the 1.5 * 2^23 trick: exact for |x / ln2| < 2^22 */
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f; /* Cody-Waite: ln2 hi + lo */
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { float f; int32_t i; } scale = {.i = ((int32_t)n + 127) << 23};
  return p * scale.f;
}

/* GELU(u) and GELU'(u) from one exp: Phi(u) = (1 + erf(u / sqrt 2)) / 2 by A&S 7.1.26, whose
 * exp(-(u / sqrt 2)^2) is the same exp(-u^2 / 2) as the density's. */
INLINE void gelu_pair(float u, float *g, float *dg) {
  const float z = __builtin_fabsf(u) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  float q = 1.061405429f;
  q = q * t - 1.453152027f;
  q = q * t + 1.421413741f;
  q = q * t - 0.284496736f;
  q = q * t + 0.254829592f;
  const float e = exp_neg(-0.5f * u * u);
  const float erf_a = 1.0f - q * t * e; /* erf(|u| / sqrt 2) */
  const float phi = 0.5f + 0.5f * __builtin_copysignf(erf_a, u);
  *g = u * phi;
  *dg = phi + u * e * 0.39894228040143268f; /* + u * pdf(u) */
}

/* y = GELU(t * s). */
void lgun_scale_gelu_forward(const float *restrict t, const float *restrict s, float *restrict y,
                             int b0, int b1, int N, int C) {
  for (int b = b0; b < b1; b++) {
    const float *restrict sb = s + (size_t)b * C;
    for (int n = 0; n < N; n++) {
      const size_t o = ((size_t)b * N + n) * C;
      for (int c = 0; c < C; c++) {
        float g, dg;
        gelu_pair(t[o + c] * sb[c], &g, &dg);
        y[o + c] = g;
      }
    }
  }
}

/* From gy = dL/dy: gt = gy GELU'(t s) s, and gs [B, C] = sum over pixels of gy GELU'(t s) t
 * (overwritten). acc: scratch of 2 C floats. */
void lgun_scale_gelu_backward(const float *restrict gy, const float *restrict t,
                              const float *restrict s, float *restrict gt, float *restrict gs,
                              float *restrict acc, int b0, int b1, int N, int C) {
  float *restrict part = acc + C;
  for (int b = b0; b < b1; b++) {
    const float *restrict sb = s + (size_t)b * C;
    memset(acc, 0, sizeof(float) * C);
    for (int n0 = 0; n0 < N; n0 += ROWS) {
      const int n1 = N - n0 < ROWS ? N : n0 + ROWS;
      memset(part, 0, sizeof(float) * C);
      for (int n = n0; n < n1; n++) {
        const size_t o = ((size_t)b * N + n) * C;
        for (int c = 0; c < C; c++) {
          const float tv = t[o + c];
          float g, dg;
          gelu_pair(tv * sb[c], &g, &dg);
          const float gu = gy[o + c] * dg;
          gt[o + c] = gu * sb[c];
          part[c] += gu * tv;
        }
      }
      for (int c = 0; c < C; c++) acc[c] += part[c];
    }
    memcpy(gs + (size_t)b * C, acc, sizeof(float) * C);
  }
}
