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
#define FG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FG_CLONES
#endif

/* Helpers are forced inline so that each clone compiles them for its ISA. */
#define FG_INLINE __attribute__((always_inline))
#define FG_SIMD_REDUCE(...) _Pragma(FG_STR(omp simd reduction(+:__VA_ARGS__)))
#define FG_STR(x) #x

/* Moments of a chunk (a few thousand values, hot in L1) in two passes:
 * pass A finds a shift K (a value of type T near the mean), pass B sums
 * d = x - K and d*d; then mean = K + s/n and m2 = q - s*s/n, exact algebra
 * for any K, and well conditioned because K is within rounding of the mean.
 * Each pass keeps FG_LANES independent partial sums in AT (float32 for
 * float32 data: element-wise adds the compiler turns into full-width vector
 * adds, no loop-carried latency chain) and adds them up in float64 at the end
 * of the run; a run is at most one chunk, so a lane sums few values. */
#define FG_LANES 64

#define FG_MOMENTS(T, AT, SUF)                                                \
static inline FG_INLINE void fg_run_sum_##SUF(const T *p, ptrdiff_t len,      \
                                              double *a) {                    \
    AT acc[FG_LANES] = {0};                                                   \
    const ptrdiff_t nb = len - len % FG_LANES;                                \
    ptrdiff_t j, l;                                                           \
    double t = 0;                                                             \
    for (j = 0; j < nb; j += FG_LANES)                                        \
        for (l = 0; l < FG_LANES; l++) acc[l] += p[j + l];                    \
    for (j = nb; j < len; j++) t += p[j];                                     \
    for (l = 0; l < FG_LANES; l++) t += acc[l];                               \
    *a += t;                                                                  \
}                                                                             \
static inline FG_INLINE void fg_run_dev_##SUF(const T *p, ptrdiff_t len, T k, \
                                              double *s, double *q) {         \
    AT as[FG_LANES] = {0}, aq[FG_LANES] = {0}, d;                             \
    const ptrdiff_t nb = len - len % FG_LANES;                                \
    ptrdiff_t j, l;                                                           \
    double ts = 0, tq = 0;                                                    \
    for (j = 0; j < nb; j += FG_LANES)                                        \
        for (l = 0; l < FG_LANES; l++) {                                      \
            d = p[j + l] - k;                                                 \
            as[l] += d;                                                       \
            aq[l] += d * d;                                                   \
        }                                                                     \
    for (j = nb; j < len; j++) {                                              \
        d = p[j] - k;                                                         \
        ts += d;                                                              \
        tq += (double)d * d;                                                  \
    }                                                                         \
    for (l = 0; l < FG_LANES; l++) {                                          \
        ts += as[l];                                                          \
        tq += aq[l];                                                          \
    }                                                                         \
    *s += ts;                                                                 \
    *q += tq;                                                                 \
}                                                                             \
FG_CLONES void fg_moments_##SUF(const T *x, ptrdiff_t rows, ptrdiff_t rowlen, \
                                ptrdiff_t stride, double *out) {             \
    double a = 0, s = 0, q = 0, n = (double)rows * (double)rowlen;            \
    ptrdiff_t r;                                                              \
    T k;                                                                      \
    for (r = 0; r < rows; r++) fg_run_sum_##SUF(x + r * stride, rowlen, &a);  \
    k = (T)(a / n);                                                           \
    for (r = 0; r < rows; r++)                                                \
        fg_run_dev_##SUF(x + r * stride, rowlen, k, &s, &q);                  \
    out[0] = n;                                                               \
    out[1] = (double)k + s / n;                                               \
    out[2] = q - s * (s / n);                                                 \
}

/* ---- activations: codes 0 none, 1 relu, 2 silu, 3 gelu (exact, erf) ----
 * float32 uses branch-free exp/erf approximations that vectorize (relative
 * error ~1e-7, at float32 rounding level); float64 uses libm. */

static inline FG_INLINE float fg_expf(float x) {
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

static inline FG_INLINE float fg_erff(float x) {   /* Abramowitz & Stegun 7.1.26 */
    float a = x < 0 ? -x : x;
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float y = 1.0f - (((((1.061405429f * t - 1.453152027f) * t + 1.421413741f)
                        * t - 0.284496736f) * t + 0.254829592f) * t)
                         * fg_expf(-a * a);
    return x < 0 ? -y : y;
}

static inline FG_INLINE float fg_silu_f32(float v) { return v / (1.0f + fg_expf(-v)); }
static inline FG_INLINE double fg_silu_f64(double v) { return v / (1.0 + exp(-v)); }
static inline FG_INLINE float fg_gelu_f32(float v) {
    return 0.5f * v * (1.0f + fg_erff(v * 0.70710678118654752f));
}
static inline FG_INLINE double fg_gelu_f64(double v) {
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

FG_MOMENTS(float, float, f32)
FG_MOMENTS(double, double, f64)
FG_APPLY_RUN(float, f32)
FG_APPLY_RUN(double, f64)
FG_APPLY_ROW(float, f32)
FG_APPLY_ROW(double, f64)

#endif
