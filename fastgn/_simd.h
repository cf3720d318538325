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
#include <string.h>

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

/* y = ((x - mhi) - mlo) * sc + sh over a run (one channel, NCHW). */
#define FG_APPLY_RUN(T, SUF)                                                  \
FG_CLONES void fg_apply_run_##SUF(const T *x, T *y, ptrdiff_t n, T mhi,       \
                                  T mlo, T sc, T sh) {                        \
    ptrdiff_t i;                                                              \
    for (i = 0; i < n; i++) y[i] = ((x[i] - mhi) - mlo) * sc + sh;            \
}

/* y = ((x - mhi) - mlo) * (w * rs) + b over a row of channels (NHWC). */
#define FG_APPLY_ROW(T, SUF)                                                  \
FG_CLONES void fg_apply_row_##SUF(const T *x, T *y, ptrdiff_t n, T mhi,       \
                                  T mlo, T rs, const T *w, const T *b) {      \
    ptrdiff_t i;                                                              \
    for (i = 0; i < n; i++) y[i] = ((x[i] - mhi) - mlo) * (w[i] * rs) + b[i]; \
}

FG_MOMENTS(float, f32)
FG_MOMENTS(double, f64)
FG_APPLY_RUN(float, f32)
FG_APPLY_RUN(double, f64)
FG_APPLY_ROW(float, f32)
FG_APPLY_ROW(double, f64)

#endif
