/* Hot inner loops of fastgn's kernels, plain C loops that the compiler
 * vectorizes for any baseline ISA
 * (SSE2 on x86-64, NEON on arm64) and, on x86-64 Linux with GCC, also an
 * AVX2+FMA clone picked at load time (target_clones): the default wheel runs
 * on every CPU of its platform and still uses the wide units where present.
 *
 * Sums are float64 `omp simd` reductions (compiled with -fopenmp or
 * -fopenmp-simd): their order depends on the build and the CPU's clone, never
 * on the thread count.
 */
#ifndef FASTGN_SIMD_H
#define FASTGN_SIMD_H

#include <stddef.h>
#include <math.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && !defined(FASTGN_NO_CLONES)
#define FG_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FG_CLONES
#endif

#define FG_SIMD_REDUCE(...) _Pragma(FG_STR(omp simd reduction(+:__VA_ARGS__)))
#define FG_STR(x) #x

/* out = {n, mean, m2}: corrected two-pass moments of `rows` runs of
 * `rowlen` values, `stride` apart. */
#define FG_MOMENTS(T, SUF)                                                    \
FG_CLONES void fg_moments_##SUF(const T *x, ptrdiff_t rows, ptrdiff_t rowlen, \
                                ptrdiff_t stride, double *out) {             \
    double a = 0, s = 0, q = 0, n = (double)rows * (double)rowlen, mu;        \
    ptrdiff_t r, i;                                                           \
    for (r = 0; r < rows; r++) {                                              \
        const T *p = x + r * stride;                                          \
        FG_SIMD_REDUCE(a)                                                     \
        for (i = 0; i < rowlen; i++) a += (double)p[i];                       \
    }                                                                         \
    mu = a / n;                                                               \
    for (r = 0; r < rows; r++) {                                              \
        const T *p = x + r * stride;                                          \
        FG_SIMD_REDUCE(s, q)                                                  \
        for (i = 0; i < rowlen; i++) {                                        \
            double d = (double)p[i] - mu;                                     \
            s += d;                                                           \
            q += d * d;                                                       \
        }                                                                     \
    }                                                                         \
    out[0] = n;                                                               \
    out[1] = mu + s / n;                                                      \
    out[2] = q - s * (s / n);                                                 \
}

/* ---- activations: codes 0 none, 1 relu, 2 silu, 3 gelu (exact, erf) ----
 * float32 uses branch-free exp/erf approximations that vectorize (relative
 * error ~1e-7, at float32 rounding level); float64 uses libm. */

static inline float fg_expf(float x) {
    union { float f; int i; } s;
    float k, r, p;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round */
    r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
    p = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f)
          * r + 4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    s.i = ((int)k + 127) << 23;
    return p * s.f;
}

static inline float fg_erff(float x) {   /* Abramowitz & Stegun 7.1.26 */
    float a = x < 0 ? -x : x;
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float y = 1.0f - (((((1.061405429f * t - 1.453152027f) * t + 1.421413741f)
                        * t - 0.284496736f) * t + 0.254829592f) * t)
                         * fg_expf(-a * a);
    return x < 0 ? -y : y;
}

static inline float fg_silu_f32(float v) { return v / (1.0f + fg_expf(-v)); }
static inline double fg_silu_f64(double v) { return v / (1.0 + exp(-v)); }
static inline float fg_gelu_f32(float v) {
    return 0.5f * v * (1.0f + fg_erff(v * 0.70710678118654752f));
}
static inline double fg_gelu_f64(double v) {
    return 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
}

/* One loop per activation: the switch stays outside the vector loop. */
#define FG_ACT_LOOP(T, SUF, LIN)                                              \
    switch (act) {                                                            \
    case 1: for (i = 0; i < n; i++) { T v = LIN; y[i] = v < 0 ? 0 : v; }      \
        break;                                                                \
    case 2: for (i = 0; i < n; i++) { T v = LIN; y[i] = fg_silu_##SUF(v); }   \
        break;                                                                \
    case 3: for (i = 0; i < n; i++) { T v = LIN; y[i] = fg_gelu_##SUF(v); }   \
        break;                                                                \
    default: for (i = 0; i < n; i++) y[i] = LIN;                              \
    }

/* y = act(((x - mhi) - mlo) * sc + sh) over a run (one channel, NCHW). */
#define FG_APPLY_RUN(T, SUF)                                                  \
FG_CLONES void fg_apply_run_##SUF(const T *x, T *y, ptrdiff_t n, T mhi,       \
                                  T mlo, T sc, T sh, int act) {               \
    ptrdiff_t i;                                                              \
    FG_ACT_LOOP(T, SUF, ((x[i] - mhi) - mlo) * sc + sh)                       \
}

/* y = act(((x - mhi) - mlo) * (w * rs) + b) over a row of channels (NHWC). */
#define FG_APPLY_ROW(T, SUF)                                                  \
FG_CLONES void fg_apply_row_##SUF(const T *x, T *y, ptrdiff_t n, T mhi,       \
                                  T mlo, T rs, const T *w, const T *b,        \
                                  int act) {                                  \
    ptrdiff_t i;                                                              \
    FG_ACT_LOOP(T, SUF, ((x[i] - mhi) - mlo) * (w[i] * rs) + b[i])            \
}

FG_MOMENTS(float, f32)
FG_MOMENTS(double, f64)
FG_APPLY_RUN(float, f32)
FG_APPLY_RUN(double, f64)
FG_APPLY_ROW(float, f32)
FG_APPLY_ROW(double, f64)

#endif
