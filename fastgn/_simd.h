/* Hot inner loops of fastgn's kernels: plain C loops that the compiler
 * vectorizes for any baseline ISA (SSE2 on x86-64, NEON on arm64), GNU C
 * vector types (GCC, clang) where a reduction must end in shuffles rather
 * than the auto-vectorizer's scalar epilogue, and SSE2 streaming stores on
 * x86-64. On x86-64 Linux with GCC, AVX2+FMA and AVX-512 clones are picked
 * at load time (target_clones; the kernels on vector types are compiled per
 * ISA level with vectors as wide as its registers, one picked at import): the
 * default wheel runs on every CPU of its platform and still uses the wide
 * units where present.
 *
 * The order of every sum depends on the build, the CPU's clone and the
 * shape, never on the thread count (nor, for per-sample results, on the
 * batch size).
 */
#ifndef FASTGN_SIMD_H
#define FASTGN_SIMD_H

#include <stddef.h>
#include <math.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

/* The x86-64-v3/v4 levels are GCC 11's; older compilers build one copy. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    defined(__x86_64__) && defined(__linux__) && !defined(FASTGN_NO_CLONES)
#define FG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FG_DISPATCH 1
/* Run-time tests for the levels (GCC 12 names them; GCC 11 by features). */
#if __GNUC__ >= 12 && !defined(FASTGN_CPU_BY_FEATURES)
#define FG_CPU_V4() __builtin_cpu_supports("x86-64-v4")
#define FG_CPU_V3() __builtin_cpu_supports("x86-64-v3")
#else
#define FG_CPU_V4()                                                           \
    (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") \
     && __builtin_cpu_supports("avx512cd") &&                                 \
     __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
#define FG_CPU_V3()                                                           \
    (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&      \
     __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2"))
#endif
#else
#define FG_CLONES
#define FG_DISPATCH 0
#endif

/* Helpers are forced inline so that each clone compiles them for its ISA. */
#define FG_INLINE __attribute__((always_inline))
#define FG_SIMD_REDUCE(...) _Pragma(FG_STR(omp simd reduction(+:__VA_ARGS__)))
#define FG_STR(x) #x
/* v as computed, opaque to what follows: GCC split one vector's fused
 * (x - m) * s + h into a product and a masked add for the relu after it,
 * where the slab's other vectors kept the FMA, so that the bits depended on
 * where a vector started. */
#if defined(__GNUC__) && defined(__x86_64__)
#define FG_OPAQUE(v) __asm__("" : "+v"(v))
#elif defined(__GNUC__) && defined(__aarch64__)
#define FG_OPAQUE(v) __asm__("" : "+w"(v))
#else
#define FG_OPAQUE(v) ((void)0)
#endif

/* Moments of a chunk (a few thousand values) or a small slab: a shift K (a
 * value of type T near the mean), then sums of d = x - K and d*d; mean =
 * K + s/n and m2 = q - s*s/n, exact algebra for any K, and well conditioned
 * while K is within a standard deviation of the mean (q <= 2*m2). K is the
 * mean of the first FG_SHIFT_LEN values (of all of them in runs of at most
 * FG_SHIFT_ALL), so the data is read once, not twice; a run whose K turns
 * out farther from its mean than that (FG_FAR: data that drifts, or a group
 * whose first channel sits apart) is summed again shifted by the mean just
 * found. Both sums are vector runs (fg_vrun_sum, fg_vrun_dev below): four
 * vectors of partial sums in T (float32 for float32 data, so no float64
 * conversions and no loop-carried latency chain), added up in float64 at
 * the end of the run; a run is at most one chunk, so a lane sums at most a
 * few hundred values. */
#define FG_SHIFT_LEN 16
#define FG_SHIFT_ALL 64
#define FG_SHIFT_N(len) ((len) <= FG_SHIFT_ALL ? (len) : FG_SHIFT_LEN)
/* Data on its way from memory (the caller's `ahead`: arrays larger than the
 * cache) has every line of a run requested before the run is summed: a
 * pass of sums alone used to stream it in, and without either the shifted
 * sums ran ~10% slower on 32x256x28x28. Prefetches change no bits. */
#define FG_AHEAD(on, p, len)                                                  \
    if (on) {                                                                 \
        ptrdiff_t z_;                                                         \
        for (z_ = 0; z_ < (len); z_ += 64 / sizeof(*(p)))                     \
            __builtin_prefetch((p) + z_, 0, 3);                               \
    }
/* The small-slab paths (fg_small_slabs, its flat functions) request each
 * block before its statistics for float64 only. For float32 the requests
 * cost time: without them 16384x1024 G=32 took 0.63-0.72x the time,
 * 8192x2048 0.91-0.93x, 128x512x7x7 0.85-0.95x, 64x1024x7x7 0.85-0.96x,
 * 512x256x5x5 0.72-0.86x, warm or cold, other shapes 0.97-1.03x
 * (benchmarks/ab.py, Zen 5). For float64 they were mixed: 4096x1024 took
 * 1.09-1.26x the time without (its two passes), 7x7 maps 0.88-0.95x, 10x10
 * and 14x14 maps 1.03-1.07x. */
#define FG_SMALL_AHEAD(T, ahead) ((ahead) && sizeof(T) == sizeof(double))
/* Shifted sums s, q of n values (rn = 1/n) whose shift lies more than one
 * standard deviation from their mean: (s/n)^2 > m2/n. */
#define FG_FAR(s, q, rn) ((s) * ((s) * (rn)) > (q) - (s) * ((s) * (rn)))

/* Float32 lanes keep the passes fast, but squares of |x| > ~1e18 overflow
 * them and squares of |x| < ~1e-16 lose bits to subnormals. A result that
 * shows either (sum of squares infinite, or below 1e-30 per value) is
 * recomputed here with every value in float64; double data never needs it.
 * Lost bits of a variance below 1e-30 only matter beside an eps below
 * FG_EPS_EXACT (their effect on var + eps is below 1e-10 relative): with the
 * usual eps, a constant group (q = 0) is not summed again (that scalar pass
 * made all-zero float32 input 20-33x slower). A sum of squares is NaN only
 * when the data holds a NaN (or an infinity less itself): float64 gives NaN
 * as well, so such a group is not summed again either (a NaN in every group
 * had made the call 33x slower). */
#define FG_EPS_EXACT 1e-20
/* The float64 sums (fg_vrun_dev64; channels-last, fg_rows_dev64: both
 * vectorized) keep the float32 shift K when it is finite, else take the
 * run's first value x0 (any member: q <= n*m2, a factor of at most a few
 * thousand on float64 rounding). The scalar two-pass float64 sum they
 * replace had made float32 data around 1e19 20-30x slower than ordinary
 * data. */
#define FG_SHIFT64(k, x0) (isfinite((double)(k)) ? (double)(k) : (double)(x0))
#define FG_NEEDS_F64(AT, q, n, eps)                                           \
    (sizeof(AT) < sizeof(double) &&                                           \
     ((q) > 1e300 || ((q) < 1e-30 * (n) && (eps) < FG_EPS_EXACT)))

#define FG_MOMENTS(T, CT, AT, SUF, ISA, SC)                                   \
FG_WIDE_FN void fg_moments_##SUF##ISA(const T *x, ptrdiff_t len, int ahead,  \
                                      double eps, double *out) {              \
    const double n = (double)len;                                             \
    ptrdiff_t m = FG_SHIFT_N(len);                                            \
    CT k;                                                                     \
    double s, q;                                                              \
    FG_AHEAD(ahead, x, len)                                                   \
    k = (CT)(fg_vrun_sum_##SUF##ISA(x, m) / (double)m);                       \
    for (;;) {              /* one copy of the loop: 32x256x28x28 ~10% */     \
        fg_vrun_dev_##SUF##ISA(x, len, k, &s, &q);                            \
        if (m == len || !FG_FAR(s, q, 1.0 / n)) break;                        \
        k = (CT)(k + s / n);                                                  \
        m = len;                                                              \
    }                                                                         \
    if (FG_NEEDS_F64(AT, q, n, eps)) {                                        \
        const double k64 = FG_SHIFT64(k, SC(x[0]));                           \
        fg_vrun_dev64_##SUF##ISA(x, len, k64, &s, &q);                        \
        out[1] = k64 + s / n;                                                 \
    } else {                                                                  \
        out[1] = (double)k + s / n;                                           \
    }                                                                         \
    out[0] = n;                                                               \
    out[2] = q - s * (s / n);                                                 \
}

/* Channels-last moments: `rows` positions of C channels (G groups of Cg),
 * contiguous. Per-channel partial sums run across positions (vectorized over
 * channels) in AT over blocks of FG_ROWBLK positions, then in float64;
 * each group's sums are the sums of its channels. out[3*g..] = {n, mean, m2}
 * per group, the two-pass scheme of fg_moments except where the shift comes
 * from: pass A reads only the first positions, enough for FG_SHIFT_LEN
 * values of each group (one position of 16 channels, 16 of one), whose group
 * means are the shifts, and pass B reads every row. A position holds every
 * channel of its group alike, so channels' offsets do not bias the shift.
 * A group whose shift turns out farther than one standard deviation from its
 * mean (data that drifts across positions) is summed again, shifted by the
 * mean just found: as well conditioned as shifting by a full pass A's mean.
 * Pass B requests the lines of its next block of rows as it goes: without
 * pass A's sequential reads (its first 64 positions, 64x512x7x7's whole
 * sample, 0.85x the time warm without them) the column walk alone waited
 * on memory for each sample's first rows (1.09-1.11x the time cold). With
 * the requests: 0.85-0.86x warm, 0.97x cold; 1x320x64x64 0.93x / 0.86x,
 * 8x64x56x56 1.01x / 0.86x (benchmarks/ab.py, Zen 5); two blocks ahead
 * measured 1.02x cold on 7x7.
 * scratch: 2*C doubles, 2*C values of AT and C values of T. */
#define FG_ROWBLK 64
/* Rows of fewer than FG_FEW_CHANNELS channels flush every FG_ROWBLK_FEW
 * rows: integer-valued images in HWC (0..255) had come out up to 9e-7 off
 * with 64 (PyTorch 1.4-2.7e-7), the float32 lanes' roundings alike on
 * values of few significant bits; 0.8-2.6e-7 with 16. 8x3x224x224 took
 * 0.96-0.98x the time, 8x4x224x224 1.02-1.03x, 8x8x128x128 1.05-1.07x;
 * rows of 64-512 channels took 1.04-1.09x so, and keep 64. */
#define FG_FEW_CHANNELS 16
#define FG_ROWBLK_FEW 16
/* Rows of C channels fewer than, or not a multiple of, VL lanes are taken
 * as rows of FG_WIDE(C, VL) values, the least multiple of both up to
 * FG_WIDE_MAX (else C): 8x3x224x224 channels-last had taken 9x the time
 * of NCHW, its three channels a scalar column each. */
#define FG_WIDE_MAX 128
static inline ptrdiff_t fg_wide(ptrdiff_t C, ptrdiff_t VL) {
    /* VL a power of two: gcd(C, VL) is C's lowest set bit, at most VL */
    const ptrdiff_t low = C & -C, d = low < VL ? low : VL;
    return C % VL == 0 || C / d * VL > FG_WIDE_MAX ? C : C / d * VL;
}
#define FG_WIDE(C, VL) fg_wide((C), (ptrdiff_t)(VL))
/* DST[j] = SRC[j % C] for j < P (a multiple of C): per-channel values
 * repeated for wide rows, without a division per value (one a value, for
 * three or four arrays, made the widened calls 1.02-1.06x slower) */
#define FG_REPEAT(DST, SRC, C, P)                                             \
    {                                                                         \
        ptrdiff_t r_, c_;                                                     \
        for (r_ = 0; r_ < (P); r_ += (C))                                     \
            for (c_ = 0; c_ < (C); c_++) (DST)[r_ + c_] = (SRC)[c_];          \
    }
/* A block's per-channel lane sums A1, A2 (C each) into the float64 sums D1,
 * D2: stored on the first block, added after. */
#define FG_FLUSH2(FIRST, D1, D2, A1, A2)                                      \
    if (FIRST)                                                                \
        for (c = 0; c < C; c++) {                                             \
            D1[c] = A1[c];                                                    \
            D2[c] = A2[c];                                                    \
        }                                                                     \
    else                                                                      \
        for (c = 0; c < C; c++) {                                             \
            D1[c] += A1[c];                                                   \
            D2[c] += A2[c];                                                   \
        }

/* Per-channel sums over rows [r0, r1) of C channels, from channel c on,
 * NV vectors of W lanes (type V, unaligned VU) at a time, added to A1, A2
 * (set when FIRST): the sums stay in registers down the rows. STEP(VU, o,
 * k, S1, S2) adds the values at offset o (row p, the vector's first
 * channel) to S1, S2, with k the vector of KV at those channels. Sums kept
 * in memory across rows cost a store and a reload per row (1.3-1.6x the
 * time on 64 channels, Zen 5); rows of many channels are taken FG_COLROWS
 * at a time, so that each vector's pass down them reads lines the previous
 * one brought into L1. The scalar tail is V = VU = T, W = 1. */
#define FG_COLS(V, VU, NV, W, KV, A1, A2, FIRST, STEP)                        \
    for (; c + (NV) * (W) <= C; c += (NV) * (W)) {                            \
        V k_[NV], s_[NV], q_[NV];                                             \
        int j_;                                                               \
        for (j_ = 0; j_ < (NV); j_++) {                                       \
            k_[j_] = *(const VU *)((KV) + c + j_ * (W));                      \
            s_[j_] = q_[j_] = (V){0};                                         \
            if (!(FIRST)) {                                                   \
                s_[j_] = *(const VU *)((A1) + c + j_ * (W));                  \
                q_[j_] = *(const VU *)((A2) + c + j_ * (W));                  \
            }                                                                 \
        }                                                                     \
        for (p = r0; p < r1; p++)                                             \
            for (j_ = 0; j_ < (NV); j_++)                                     \
                STEP(VU, p * C + c + j_ * (W), k_[j_], s_[j_], q_[j_])        \
        for (j_ = 0; j_ < (NV); j_++) {                                       \
            *(VU *)((A1) + c + j_ * (W)) = s_[j_];                            \
            *(VU *)((A2) + c + j_ * (W)) = q_[j_];                            \
        }                                                                     \
    }
/* BODY over rows [R0, R1) of C channels of T, FG_COLROWS rows [r0, r1) at a
 * time (first_ on the first), each from channel c = 0 on; VL_ is the lanes
 * of V. */
#define FG_COLROWS(C, size) (16384 / ((C) * (ptrdiff_t)(size)) + 1)
#define FG_ROW_BLOCKS(T, V, R0, R1, BODY)                                     \
    {                                                                         \
        enum { VL_ = sizeof(V) / sizeof(T) };                                 \
        const ptrdiff_t n_ = FG_COLROWS(C, sizeof(T));                        \
        ptrdiff_t r0, r1;                                                     \
        for (r0 = (R0); r0 < (R1); r0 = r1) {                                 \
            const int first_ = r0 == (R0);                                    \
            r1 = r0 + n_ < (R1) ? r0 + n_ : (R1);                             \
            c = 0;                                                            \
            (void)first_;                                                     \
            BODY                                                              \
        }                                                                     \
    }
/* Rows [p0, p1), every channel: four vectors at a time, then one, then one
 * value. Same sums for any split. */
#define FG_COLS_ALL(T, V, VU, KV, A1, A2, STEP)                               \
    FG_ROW_BLOCKS(T, V, p0, p1,                                               \
                  FG_COLS(V, VU, 4, VL_, KV, A1, A2, first_, STEP)            \
                  FG_COLS(V, VU, 1, VL_, KV, A1, A2, first_, STEP)            \
                  FG_COLS(T, T, 1, 1, KV, A1, A2, first_, STEP))
/* d = x - k at offset o; its sum and sum of squares; the line a block of
 * rows further on requested (n_, C: FG_ROW_BLOCKS') */
#define FG_ROWS_DEV_STEP(VU, o, k, S, Q)                                      \
    {                                                                         \
        const VU d_ = *(const VU *)(x + (o)) - (k);                           \
        __builtin_prefetch(x + (o) + n_ * C, 0, 3);                             \
        S += d_;                                                              \
        Q += d_ * d_;                                                         \
    }

/* A pass of per-channel sums over `rows` positions of C channels (dy, x;
 * the moments' pass has no dy): STEP adds the vector at each offset to the
 * AT lanes a1, a2 (C each; k the channels' vector of KV, mean or shift),
 * flushed into the float64 sums s1, s2 every blk rows. Rows of C
 * channels fewer than VL, or not a multiple of it, are taken as rows of
 * P = FG_WIDE(C) values (k repeated P / C times; fg_NAME_wide, on the
 * stack) and each wide column's sums added into its channel's, the rows
 * left over as they are (FG_WIDE). (Inlined beside the
 * plain pass, GCC 12 compiled the plain one into an endless loop: the
 * wide one is a function of its own.) */
#define FG_ROWS_PASS(T, AT, V, VU, SUF, NAME, STEP)                           \
FG_WIDE_INL void fg_##NAME##_pass_##SUF(const T *dy, const T *x,              \
                                        ptrdiff_t rows, ptrdiff_t C,          \
                                        ptrdiff_t blk, const T *restrict k,   \
                                        double *restrict s1,                  \
                                        double *restrict s2,                  \
                                        AT *restrict a1, AT *restrict a2) {   \
    ptrdiff_t p, p0, p1, c;                                                   \
    (void)dy;                                                                 \
    for (p0 = 0; p0 < rows; p0 += blk) {                                      \
        p1 = p0 + blk < rows ? p0 + blk : rows;                               \
        FG_COLS_ALL(T, V, VU, k, a1, a2, STEP)                                \
        FG_FLUSH2(p0 == 0, s1, s2, a1, a2)                                    \
    }                                                                         \
}                                                                             \
FG_WIDE_FN __attribute__((noinline))                                          \
void fg_##NAME##_wide_##SUF(const T *dy, const T *x, ptrdiff_t rows,           \
                            ptrdiff_t C, ptrdiff_t P, ptrdiff_t blk,          \
                            const T *restrict k,                              \
                            double *restrict s1, double *restrict s2) {       \
    double w1[FG_WIDE_MAX], w2[FG_WIDE_MAX];                                  \
    AT b1[FG_WIDE_MAX], b2[FG_WIDE_MAX];                                      \
    T wk[FG_WIDE_MAX];                                                        \
    ptrdiff_t j;                                                              \
    FG_REPEAT(wk, k, C, P)                                                    \
    fg_##NAME##_pass_##SUF(dy, x, rows, P, blk, wk, w1, w2, b1, b2);          \
    for (j = 0; j < P; j++) {                                                 \
        s1[j % C] += w1[j];                                                   \
        s2[j % C] += w2[j];                                                   \
    }                                                                         \
}                                                                             \
FG_WIDE_INL void fg_##NAME##_##SUF(const T *dy, const T *x, ptrdiff_t rows,   \
                                   ptrdiff_t C, const T *restrict k,          \
                                   double *restrict s1, double *restrict s2,  \
                                   AT *restrict a1, AT *restrict a2) {        \
    const ptrdiff_t P = FG_WIDE(C, sizeof(V) / sizeof(T)), m = P / C;        \
    const ptrdiff_t n = rows / m * P;                                         \
    const ptrdiff_t blk = C < FG_FEW_CHANNELS ? FG_ROWBLK_FEW : FG_ROWBLK;   \
    ptrdiff_t c;                                                              \
    if (m == 1 || rows < m) {                                                 \
        fg_##NAME##_pass_##SUF(dy, x, rows, C, blk, k, s1, s2, a1, a2);       \
        return;                                                               \
    }                                                                         \
    if (rows % m)                                                             \
        fg_##NAME##_pass_##SUF(dy ? dy + n : NULL, x + n, rows % m, C, blk,   \
                               k, s1, s2, a1, a2);                            \
    else                                                                      \
        for (c = 0; c < C; c++) s1[c] = s2[c] = 0;                            \
    fg_##NAME##_wide_##SUF(dy, x, rows / m, C, P, blk, k, s1, s2);            \
}

/* OUT = EXPR(VU) over rows [0, rows) of C channels (NHWC), where EXPR uses
 * the vectors u1_..u4_[j_] of the per-channel parameters P1..P4 and the
 * values (type VU) at offset o_. Up to eight vectors of channels, the
 * parameters are held in registers down the rows (FG_COLROWS at a time),
 * as FG_COLS holds its sums: loaded once per four-row step instead
 * (FG_ROWS_BODY), they took 1.5x the time from L2 on 64 channels (Zen 5).
 * Wider rows measured 1.05-1.15x slower in columns (512 channels) and run
 * WIDE, the loop of four rows a step. REQ(o_) runs with each vector's
 * store (fg_rows_affine's requests; FG_NOREQ for none). */
#define FG_COLS_MAP(V, VU, NV, W, P1, P2, P3, P4, OUT, EXPR, REQ)             \
    for (; c + (NV) * (W) <= C; c += (NV) * (W)) {                            \
        V u1_[NV], u2_[NV], u3_[NV], u4_[NV];                                 \
        int j_;                                                               \
        for (j_ = 0; j_ < (NV); j_++) {                                       \
            u1_[j_] = *(const VU *)((P1) + c + j_ * (W));                     \
            u2_[j_] = *(const VU *)((P2) + c + j_ * (W));                     \
            u3_[j_] = *(const VU *)((P3) + c + j_ * (W));                     \
            u4_[j_] = *(const VU *)((P4) + c + j_ * (W));                     \
        }                                                                     \
        (void)u4_;                                                            \
        for (p = r0; p < r1; p++)                                             \
            for (j_ = 0; j_ < (NV); j_++) {                                   \
                const ptrdiff_t o_ = p * C + c + j_ * (W);                    \
                REQ(o_);                                                      \
                *(VU *)((OUT) + o_) = EXPR(VU);                               \
            }                                                                 \
    }
#define FG_NOREQ(o) ((void)0)
#define FG_COLS_MAP_ALL(T, V, VU, P1, P2, P3, P4, OUT, EXPR, WIDE, REQ)       \
    if (C > 8 * (ptrdiff_t)(sizeof(V) / sizeof(T))) {                         \
        WIDE                                                                  \
    } else                                                                    \
        FG_ROW_BLOCKS(T, V, 0, rows,                                          \
                      FG_COLS_MAP(V, VU, 4, VL_, P1, P2, P3, P4, OUT, EXPR,   \
                                  REQ)                                        \
                      FG_COLS_MAP(V, VU, 1, VL_, P1, P2, P3, P4, OUT, EXPR,   \
                                  REQ)                                        \
                      FG_COLS_MAP(T, T, 1, 1, P1, P2, P3, P4, OUT, EXPR,      \
                                  FG_NOREQ))
/* y = (x - mhi) * sc + sh (no activation): same arithmetic, same bits as
 * FG_ROWS_BODY. With `ahead`, the values that far on in x are requested
 * (FG_REQ) as each vector is stored (FG_ROWS_BODY_REQ for wide rows). */
#define FG_AHEAD_REQ(o) __builtin_prefetch(x + (o) + ahead, 0, 2)
#define FG_AFFINE_EXPR(VU)                                                    \
    (*(const VU *)(x + o_) - u1_[j_]) * u2_[j_] + u3_[j_]
#define FG_ROWS_AFFINE(T, V, VU, SUF)                                         \
FG_WIDE_INL void fg_rows_affine_##SUF(const T *x, T *y, ptrdiff_t rows,       \
                                     ptrdiff_t C, const T *restrict mhi,      \
                                     const T *restrict sc,                    \
                                     const T *restrict sh,                    \
                                     ptrdiff_t ahead) {                       \
    typedef T fg_t;                                                           \
    ptrdiff_t p, c, i;                                                        \
    if (ahead) {                                                              \
        FG_COLS_MAP_ALL(T, V, VU, mhi, sc, sh, sh, y, FG_AFFINE_EXPR,         \
                        FG_ROWS_BODY_REQ(FG_NOACT, SUF), FG_AHEAD_REQ)        \
    } else {                                                                  \
        FG_COLS_MAP_ALL(T, V, VU, mhi, sc, sh, sh, y, FG_AFFINE_EXPR,         \
                        FG_ROWS_BODY(FG_NOACT, SUF), FG_NOREQ)                \
    }                                                                         \
}

/* Channels-last backward: `rows` positions of all C channels (a chunk of a
 * sample), the mean of each channel's group in muc. Per channel, sums of
 * dy * (x - mean) and dy into ds, db: AT lanes over blocks of FG_ROWBLK
 * positions (FG_COLS), then float64 (a channel whose sums overflowed is
 * summed again in float64). scratch as, ab: C values each. */
#define FG_BWD_ROWS_STEP(VU, o, k, S, B)                                      \
    {                                                                         \
        const VU v_ = *(const VU *)(dy + (o));                                \
        S += v_ * (*(const VU *)(x + (o)) - (k));                             \
        B += v_;                                                              \
    }
#define FG_BWD_ROWS_SUMS(T, AT, V, VU, SUF)                                   \
FG_ROWS_PASS(T, AT, V, VU, SUF, bwd_rows, FG_BWD_ROWS_STEP)                   \
FG_WIDE_FN void fg_bwd_rows_sums_##SUF(const T *dy, const T *x,               \
                                       ptrdiff_t rows, ptrdiff_t C,           \
                                       const T *restrict muc,                 \
                                       double *restrict ds,                   \
                                       double *restrict db,                   \
                                       AT *restrict as, AT *restrict ab) {    \
    ptrdiff_t p, c;                                                           \
    int bad = 0;                                                              \
    fg_bwd_rows_##SUF(dy, x, rows, C, muc, ds, db, as, ab);                   \
    /* the test vectorized first: a branch a channel took 45% of the sums   \
     * of 2x2 maps' 256 channels */                                          \
    FG_SIMD_REDUCE(bad) for (c = 0; c < C; c++)                               \
        bad += FG_OVERFLOWED(AT, ds[c], db[c]);                               \
    for (c = 0; bad && c < C; c++)                                            \
        if (FG_OVERFLOWED(AT, ds[c], db[c])) {                                \
            double s = 0, b = 0;                                              \
            for (p = 0; p < rows; p++) {                                      \
                s += (double)dy[p * C + c] *                                  \
                     ((double)x[p * C + c] - muc[c]);                         \
                b += dy[p * C + c];                                           \
            }                                                                 \
            ds[c] = s;                                                        \
            db[c] = b;                                                        \
        }                                                                     \
}
/* dx = a*dy + B*(x - mean) + D over `rows` positions (FG_COLS_MAP); with
 * `ahead`, dy's and x's values that far on requested as the forward's
 * fg_rows_affine requests x's. */
#define FG_DX_AHEAD_REQ(o)                                                    \
    {                                                                         \
        __builtin_prefetch(dy + (o) + ahead, 0, 2);                           \
        __builtin_prefetch(x + (o) + ahead, 0, 2);                            \
    }
#define FG_DX_EXPR(VU)                                                        \
    u1_[j_] * *(const VU *)(dy + o_)                                          \
    + u2_[j_] * (*(const VU *)(x + o_) - u3_[j_]) + u4_[j_]
#define FG_ROWS_DX(T, V, VU, SUF)                                             \
FG_WIDE_INL void fg_rows_dx_##SUF(const T *dy, const T *x, T *dx,             \
                                 ptrdiff_t rows, ptrdiff_t C,                 \
                                 const T *restrict a, const T *restrict bc,   \
                                 const T *restrict muc,                       \
                                 const T *restrict dc, ptrdiff_t ahead) {     \
    ptrdiff_t p, c, r;                                                        \
    if (ahead) {                                                              \
        FG_COLS_MAP_ALL(T, V, VU, a, bc, muc, dc, dx, FG_DX_EXPR,             \
                        FG_BWD_ROWS_DX_REQ(T), FG_DX_AHEAD_REQ)               \
    } else {                                                                  \
        FG_COLS_MAP_ALL(T, V, VU, a, bc, muc, dc, dx, FG_DX_EXPR,             \
                        FG_BWD_ROWS_DX(T), FG_NOREQ)                          \
    }                                                                         \
}

#define FG_ROWS_MOMENTS(T, AT, V, VU, SUF)                                    \
/* Pass B: per-channel sums of d = x - kc[c] and d*d into da, dq. */          \
FG_ROWS_PASS(T, AT, V, VU, SUF, rows_dev, FG_ROWS_DEV_STEP)                   \
/* The float64 re-summation: per channel, shifted by kd (float64 lanes). */ \
FG_WIDE_INL void fg_rows_dev64_##SUF(const T *x, ptrdiff_t rows,             \
                                     ptrdiff_t C, double *restrict da,        \
                                     double *restrict dq,                     \
                                     const double *restrict kd) {             \
    ptrdiff_t p, c;                                                           \
    FG_SIMD for (c = 0; c < C; c++) da[c] = dq[c] = 0;                        \
    for (p = 0; p < rows; p++) {                                              \
        const T *r = x + p * C;                                               \
        FG_SIMD for (c = 0; c < C; c++) {                                     \
            const double d = (double)r[c] - kd[c];                            \
            da[c] += d;                                                       \
            dq[c] += d * d;                                                   \
        }                                                                     \
    }                                                                         \
}                                                                             \
FG_WIDE_INL void fg_rows_moments_in_##SUF(const T *x, ptrdiff_t rows,        \
                                          ptrdiff_t C, ptrdiff_t G,           \
                                          ptrdiff_t Cg, double eps,           \
                                          double *restrict dscr,              \
                                          AT *restrict acc,                   \
                                          AT *restrict acq,                   \
                                          T *restrict kc, double *out) {      \
    const ptrdiff_t ra = (FG_SHIFT_LEN + Cg - 1) / Cg;                        \
    const ptrdiff_t r0 = rows < ra ? rows : ra;                               \
    const double n = (double)rows * (double)Cg, n0 = (double)r0 * (double)Cg; \
    double *restrict da = dscr, *restrict dq = dscr + C;                      \
    ptrdiff_t p, c, g;                                                        \
    int pass, again = 0;                                                      \
    FG_SIMD for (c = 0; c < C; c++) acc[c] = x[c];                            \
    for (p = 1; p + 4 <= r0; p += 4) {                                        \
        const T *x0 = x + p * C, *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C;    \
        FG_SIMD for (c = 0; c < C; c++)                                       \
            acc[c] += ((AT)x0[c] + x1[c]) + ((AT)x2[c] + x3[c]);              \
    }                                                                         \
    for (; p < r0; p++) {                                                     \
        const T *x0 = x + p * C;                                              \
        FG_SIMD for (c = 0; c < C; c++) acc[c] += x0[c];                      \
    }                                                                         \
    for (g = 0; g < G; g++) {                                                 \
        double a = 0;                                                         \
        T k;                                                                  \
        for (c = g * Cg; c < (g + 1) * Cg; c++) a += acc[c];                  \
        k = (T)(a / n0);                                                      \
        for (c = g * Cg; c < (g + 1) * Cg; c++) kc[c] = k;                    \
    }                                                                         \
    for (pass = 0; pass == 0 || again; pass++) {                              \
        again = 0;                                                            \
        fg_rows_dev_##SUF(NULL, x, rows, C, kc, da, dq, acc, acq);            \
        for (g = 0; g < G; g++) {                                             \
            double s = 0, q = 0;                                              \
            for (c = g * Cg; c < (g + 1) * Cg; c++) {                         \
                s += da[c];                                                   \
                q += dq[c];                                                   \
            }                                                                 \
            out[3 * g] = q;                   /* n, once the loop ends */     \
            out[3 * g + 1] = (double)kc[g * Cg] + s / n;                      \
            out[3 * g + 2] = q - s * (s / n);                                 \
            if (pass == 0 && FG_FAR(s, q, 1.0 / n)) {                         \
                const T k = (T)out[3 * g + 1];                                \
                for (c = g * Cg; c < (g + 1) * Cg; c++) kc[c] = k;            \
                again = 1;                                                    \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    {   /* groups needing float64 (flag in kc[g*Cg]); their shifts in kd */   \
        double *restrict kd = (double *)acc;    /* C doubles: acc, acq */     \
        for (g = 0; g < G; g++) {                                             \
            const double q = out[3 * g], k = FG_SHIFT64(kc[g * Cg], x[g * Cg]);\
            const int need = FG_NEEDS_F64(AT, q, n, eps);                     \
            out[3 * g] = n;                                                   \
            for (c = g * Cg; c < (g + 1) * Cg; c++) kd[c] = k;                \
            kc[g * Cg] = (T)need;                                             \
            again |= need;                                                    \
        }                                                                     \
        if (!again) return;                                                   \
        /* every channel in float64 lanes; only those groups take it (the   \
         * others keep their bits) */                                        \
        fg_rows_dev64_##SUF(x, rows, C, da, dq, kd);                          \
        for (g = 0; g < G; g++) {                                             \
            double s = 0, q = 0;                                              \
            if (kc[g * Cg] == 0) continue;                                    \
            for (c = g * Cg; c < (g + 1) * Cg; c++) {                         \
                s += da[c];                                                   \
                q += dq[c];                                                   \
            }                                                                 \
            out[3 * g + 1] = kd[g * Cg] + s / n;                              \
            out[3 * g + 2] = q - s * (s / n);                                 \
        }                                                                     \
    }                                                                         \
}                                                                             \
/* the common group sizes as constants: the loops over a group's channels  \
 * straight code (2x2 maps of 256 channels had spent most of the moments'   \
 * time in them) */                                                          \
FG_WIDE_FN void fg_rows_moments_##SUF(const T *x, ptrdiff_t rows,            \
                                      ptrdiff_t C, ptrdiff_t G, double eps,   \
                                      double *restrict dscr,                  \
                                      AT *restrict acc, AT *restrict acq,     \
                                      T *restrict kc, double *out) {          \
    switch (C / G) {                                                          \
    case 4: fg_rows_moments_in_##SUF(x, rows, C, G, 4, eps, dscr, acc, acq,   \
                                     kc, out); break;                         \
    case 8: fg_rows_moments_in_##SUF(x, rows, C, G, 8, eps, dscr, acc, acq,   \
                                     kc, out); break;                         \
    case 16: fg_rows_moments_in_##SUF(x, rows, C, G, 16, eps, dscr, acc, acq, \
                                      kc, out); break;                        \
    default: fg_rows_moments_in_##SUF(x, rows, C, G, C / G, eps, dscr, acc,   \
                                      acq, kc, out);                          \
    }                                                                         \
}

/* ---- activations: codes 0 none, 1 relu, 2 silu, 3 gelu (exact, erf) ----
 * float32 uses branch-free exp/erf approximations that vectorize (relative
 * error ~1e-7, at float32 rounding level); float64 its own exp and erfc
 * (below), near libm's accuracy. */

/* fg_expf's time was its dependency chain (a vector needs ~50 cycles;
 * too few vectors fit the scheduler to cover that): evaluating the
 * polynomial by pairs (Estrin) made the exp 0.91x and the fused GN+SiLU
 * 0.91-0.98x the time, same accuracy (max 1.4 units of 2^-24 relative,
 * mean 0.38, over [-87, 88]; Zen 5). */
/* The clamp bounds of fg_expf live in a variable the compiler cannot
 * see the value of: with literal bounds GCC folded exp at each bound and
 * if-converted SiLU into three masked divisions per vector, one per case.
 * From 88.38 on (a little before float32's own 88.72) the exponent is 128
 * and the result inf: with 88 as the bound, exp stopped at 1.65e38, and
 * SiLU of v below -88 gave v / 1.65e38 (-0.006 for v = -1e36, -inf for
 * -inf) for a true value under 6e-37 (NaN for -inf), now -0 (NaN).
 * Selecting 0 and inf after an unclamped exp instead took 1.3x the time
 * at AVX-512, 7x at AVX2 (a C harness). */
__attribute__((visibility("hidden"))) float fg_exp_bounds[2] = {-87.0f,
                                                                 89.0f};

static inline FG_INLINE float fg_expf(float x) {
    union { float f; int i; } s;
    float k, r, r2, p;
    /* min/max form (NaN becomes a bound): callers keep NaN through v. */
    x = x > fg_exp_bounds[0] ? x : fg_exp_bounds[0];
    x = x < fg_exp_bounds[1] ? x : fg_exp_bounds[1];
    k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round */
    r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
    r2 = r * r;     /* Estrin's scheme: 3 steps deep where Horner's was 5 */
    p = ((1.9875691500e-4f * r + 1.3981999507e-3f) * r2
         + (8.3334519073e-3f * r + 4.1665795894e-2f)) * r2
        + (1.6666665459e-1f * r + 5.0000001201e-1f);
    p = p * r2 + r + 1.0f;
    s.i = ((int)k + 127) << 23;
    return p * s.f;
}

/* float64 exp for SiLU, in place of libm's, which does not vectorize
 * (GN+SiLU in float64 took 8-9x plain GN's time). x = k ln2 + r with
 * |r| <= ln2/2 (ln2 in two parts, the first with trailing zero bits so that
 * k times it is exact); exp(r) by its Taylor series to r^13 (the first term
 * left out, 1.7e-16 of exp(r)), the small terms summed before the 1; 2^k
 * applied as 2^k1 * 2^(k - k1), k1 = k/2 rounded, so results round once
 * near overflow and into the subnormals. Bounds as fg_expf's: below -746
 * the result is 0 and above 710 inf, as libm's. Error at most 0.94 units
 * in the last place (mean 0.27) against long double expl on [-760, 720]. */
__attribute__((visibility("hidden"))) double fg_exp64_bounds[2] = {-746.0,
                                                                   710.0};

static inline FG_INLINE double fg_as_f64(long long i) {
    double d;
    __builtin_memcpy(&d, &i, sizeof d);
    return d;
}

static inline FG_INLINE long long fg_as_i64(double d) {
    long long i;
    __builtin_memcpy(&i, &d, sizeof i);
    return i;
}

/* exp(x + lo) for a small lo (|lo| < 2) that x's rounding left out. */
static inline FG_INLINE double fg_exp64(double x, double lo) {
    const double rnd = 6755399441055744.0;     /* 1.5 * 2^52: rounds */
    double t, k, t1, t2, r, r2, r4, p;
    x = x > fg_exp64_bounds[0] ? x : fg_exp64_bounds[0];
    x = x < fg_exp64_bounds[1] ? x : fg_exp64_bounds[1];
    t = (x + lo) * 1.4426950408889634 + rnd;
    k = t - rnd;
    r = ((x - k * 6.93147180369123816490e-01) + lo)
        - k * 1.90821492927058770002e-10;
    r2 = r * r;
    r4 = r2 * r2;
    p = r4 * ((1.0 / 24 + r * (1.0 / 120))
              + r2 * (1.0 / 720 + r * (1.0 / 5040)))
        + r4 * r4 * (((1.0 / 40320 + r * (1.0 / 362880))
                      + r2 * (1.0 / 3628800 + r * (1.0 / 39916800)))
                     + r4 * (1.0 / 479001600 + r * (1.0 / 6227020800.0)));
    p = 1.0 + (r + (r2 * (0.5 + r * (1.0 / 6)) + p));
    t1 = k * 0.5 + rnd;                 /* k1 = k/2 rounded */
    t2 = (k - (t1 - rnd)) + rnd;        /* k - k1 */
    /* an integer rounded by rnd sits in the low bits of its sum with rnd */
    return p * fg_as_f64((fg_as_i64(t1) - fg_as_i64(rnd) + 1023) << 52)
             * fg_as_f64((fg_as_i64(t2) - fg_as_i64(rnd) + 1023) << 52);
}

/* float64 erfc for GELU, in place of libm's erf, which does not vectorize
 * (GN+GELU in float64 took 20-37x plain GN's time). For z >= 0 and
 * t = 2/(2 + z), erfc(z) = t * exp(-z^2 + f(2t - 1)) with f smooth on
 * [-1, 1]: f as a polynomial of degree 27 (tools/erfc_coefficients.py fits
 * it at 50 digits; the terms cut off are below 3e-18), by Estrin's scheme. */
static const double fg_erfc_c[28] = {
    -0.6717940840566923, 0.6726432239776567, 0.04734330684190443,
    -0.0468956102311753, -0.009872689366389959, 0.008824938557060623,
    0.001758933557799016, -0.002345812500482853, -0.00014624686337800336,
    0.000673678795580235, -9.37350311709817e-05, -0.0001743029472030762,
    7.14010141275703e-05, 3.17451797494374e-05, -3.0187884551394243e-05,
    1.3772664134464417e-07, 8.562623420121286e-06, -2.947986876998259e-06,
    -1.27231190486887e-06, 1.2500276612569754e-06, -1.6849800720653297e-07,
    -2.495832761719667e-07, 1.5334345920908177e-07, 1.4448658046252676e-09,
    -3.9171820510271855e-08, 1.1172352263623759e-08, 4.06088214696972e-09,
    -1.8902306008944537e-09};

static inline FG_INLINE double fg_erfc_f(double u) {
    const double *c = fg_erfc_c;
    const double u2 = u * u, u4 = u2 * u2, u8 = u4 * u4, u16 = u8 * u8;
#define FG_E2(i) (c[i] + u * c[(i) + 1])
#define FG_E4(i) (FG_E2(i) + u2 * FG_E2((i) + 2))
#define FG_E8(i) (FG_E4(i) + u4 * FG_E4((i) + 4))
    return (FG_E8(0) + u8 * FG_E8(8)) + u16 * (FG_E8(16) + u8 * FG_E4(24));
#undef FG_E2
#undef FG_E4
#undef FG_E8
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
static inline FG_INLINE double fg_silu_f64(double v) {
    return v / (1.0 + fg_exp64(-v, 0.0));
}
static inline FG_INLINE float fg_gelu_f32(float v) {
    return 0.5f * v * (1.0f + fg_erff(v * 0.70710678118654752f));
}
/* GELU as 0.5 v erfc(-v/sqrt(2)): v clamped to +-60 (erfc is 0 beyond);
 * -v^2/2 in two parts, the square of v's leading 24 bits (exact) and the
 * rest; erfc(|z|) for v < 0, 2 - erfc(|z|) for v >= 0, picked by
 * arithmetic (a select kept AVX2 and SSE2 from vectorizing). Error at
 * most 6 units in the last place against 40-digit GELU on [-38, 40],
 * mean 0.3-1.1 (libm's 1 + erf(z) loses all digits below v = -8). */
__attribute__((visibility("hidden"))) double fg_gelu_bounds[2] = {-60.0,
                                                                   60.0};

static inline FG_INLINE double fg_gelu_f64(double v) {
    const double w0 = v > fg_gelu_bounds[0] ? v : fg_gelu_bounds[0];
    const double w = w0 < fg_gelu_bounds[1] ? w0 : fg_gelu_bounds[1];
    const double a = __builtin_fabs(w) * 0.70710678118654752;
    const double t = 2.0 / (2.0 + a);
    const double wh = (double)(float)w, wl = w - wh;
    const double e = t * fg_exp64(-0.5 * (wh * wh),
                                  fg_erfc_f(2.0 * t - 1.0)
                                  - 0.5 * (wl * (wh + wh + wl)));
    const double s = 0.5 + __builtin_copysign(0.5, v);   /* v >= +0: 1 */
    return 0.5 * v * ((1.0 - 2.0 * s) * e + 2.0 * s);
}

static inline FG_INLINE float fg_relu_f32(float v) { return v < 0 ? 0 : v; }
static inline FG_INLINE double fg_relu_f64(double v) { return v < 0 ? 0 : v; }

/* An apply body is written once with ACT(SUF, v) for the activation and
 * expanded once per activation, so the switch stays outside the loops. */
#define FG_NOACT(SUF, v) (v)
#define FG_RELU(SUF, v) fg_relu_##SUF(v)
#define FG_SILU(SUF, v) fg_silu_##SUF(v)
#define FG_GELU(SUF, v) fg_gelu_##SUF(v)
#define FG_ACT_SWITCH(BODY, SUF)                                              \
    switch (act) {                                                            \
    case 1: BODY(FG_RELU, SUF) break;                                         \
    case 2: BODY(FG_SILU, SUF) break;                                         \
    case 3: BODY(FG_GELU, SUF) break;                                         \
    default: BODY(FG_NOACT, SUF)                                              \
    }
#define FG_SIMD _Pragma("omp simd")

/* The affine is y = act((x - mhi) * sc + sh) where mhi is the slab mean
 * rounded to T and sh = beta - (mean - mhi) * sc carries the rest of the
 * mean: x - mhi is exact near the mean (Sterbenz), so float32 data far from
 * zero keeps its precision without float64 arithmetic in the apply. */

/* Streaming (non-temporal) stores for outputs larger than the last-level
 * cache: the line is written without being read first (no read-for-
 * ownership), so a DRAM-bound call moves one read and one write per value
 * instead of two reads and one write. SSE2 stores (baseline on x86-64, so
 * legal in every clone) straight from the arithmetic: computing into an L1
 * buffer first and streaming that out measured no faster than plain stores.
 * Each call that streams ends with a store fence, so its output is visible
 * to other threads when it returns (the small-slab path's streamed blocks,
 * channel runs and rank-2 float64 groups through fg_ntv below: its caller
 * fences once per thread after its items).
 * Elsewhere plain stores. */
#if defined(__x86_64__) && defined(__SSE2__) && !defined(FASTGN_NO_NT)
#include <emmintrin.h>
#define FG_HAVE_NT 1
static void fg_sfence(void) { _mm_sfence(); }
/* yp[i] = (xp[i] - m) * s + h for i < n, streamed (no activation); m, s, h
 * scalars (fg_nt_affine, an NCHW channel run) or per-element vectors
 * (fg_nt_row, an NHWC row). The arithmetic is written as in the plain loops
 * (GNU vector operators on the SSE types), so each clone contracts it the
 * same way: the same bits whichever store is used. */
/* O[i] = SCALAR for i < n: SCALAR to O's first 16-byte boundary, then
 * VECTOR (the same expression on the SSE type) streamed, SCALAR after.
 * REQ runs with the store of each 64 bytes: the callers request there,
 * into L2 (FG_REQ), the line they read next at the same offset (the next
 * slab's, sample's or chunk's; the backward's next block of dy and x), a
 * line at a time (all of a run's lines at once before its stores measured
 * 1.03-1.27x the time of no requests). */
#define FG_REQ(p) __builtin_prefetch((p) + i, 0, 2)     /* p[i], in the loop */
#define FG_NT_RUN(V, VL, STREAM, O, REQ, SCALAR, VECTOR)                      \
    ptrdiff_t i = 0;                                                          \
    for (; i < n && ((size_t)(O + i) & 15); i++) O[i] = SCALAR;               \
    while (i + 4 * VL <= n) {       /* 64 bytes a step, one request */      \
        int j_;                                                               \
        REQ;                                                                  \
        for (j_ = 0; j_ < 4; j_++, i += VL) {                                 \
            V v = VECTOR;                                                     \
            STREAM(O + i, v);                                                 \
        }                                                                     \
    }                                                                         \
    for (; i + VL <= n; i += VL) {                                            \
        V v = VECTOR;                                                         \
        STREAM(O + i, v);                                                     \
    }                                                                         \
    for (; i < n; i++) O[i] = SCALAR;
#else
#define FG_HAVE_NT 0
#define FG_NT_RUN(V, VL, STREAM, O, REQ, SCALAR, VECTOR)                      \
    ptrdiff_t i;                                                              \
    FG_SIMD for (i = 0; i < n; i++) O[i] = SCALAR;
#endif
/* fg_ntv_f32, fg_ntv_f64 of an ISA of VB-byte vectors: a whole vector
 * streamed to p, aligned to VB (plain stores without FG_HAVE_NT). */
#define FG_NTV_DEF(ISA, ST32, ST64, T32, T64)                                 \
FG_WIDE_INL void fg_ntv_f32##ISA(float *p, fg_vf32##ISA v) {                  \
    ST32(p, (T32)v);                                                          \
}                                                                             \
FG_WIDE_INL void fg_ntv_f64##ISA(double *p, fg_vf64##ISA v) {                 \
    ST64(p, (T64)v);                                                          \
}                                                                             \
FG_NT_LINES(float, f32, ISA)                                                  \
FG_NT_LINES(double, f64, ISA)                                                 \
FG_ACT_NT(float, f32, ISA)                                                    \
FG_ACT_NT(double, f64, ISA)
/* dst[0 .. n) = src[0 .. n) (src at dst's offset within a line, so its
 * vectors are aligned): whole 64-byte lines of dst streamed, the values
 * before its first line boundary and after its last stored plainly (a
 * plain store into a line that streaming stores fill costs many times the
 * line; see _whole_runs). */
#define FG_NT_LINES(T, SUF, ISA)                                              \
FG_WIDE_INL void fg_nt_lines_##SUF##ISA(const T *src, T *dst, ptrdiff_t n,   \
                                         const T *pf) {                       \
    enum { VL = sizeof(fg_v##SUF##ISA) / sizeof(T), LV = 64 / sizeof(T) };    \
    ptrdiff_t i = FG_TO_LINE(dst), e, j;                                      \
    if (i > n)                                                                \
        i = n;                                                                \
    for (j = 0; j < i; j++)                                                   \
        dst[j] = src[j];                                                      \
    e = i + (n - i) / LV * LV;                                                \
    for (; i < e; i += VL) {                                                  \
        if (i % LV == 0)                                                      \
            __builtin_prefetch(pf + i, 0, 2);                                 \
        fg_ntv_##SUF##ISA(dst + i, *(const fg_v##SUF##u##ISA *)(src + i));    \
    }                                                                         \
    for (; i < n; i++)                                                        \
        dst[i] = src[i];                                                      \
}
#define FG_PLAIN_ST(p, v) (*(__typeof__(v) *)(void *)(p) = (v))
#if FG_HAVE_NT
#define FG_NTV_64(ISA) FG_NTV_DEF(ISA, _mm512_stream_ps, _mm512_stream_pd,    \
                                  __m512, __m512d)
#define FG_NTV_32(ISA) FG_NTV_DEF(ISA, _mm256_stream_ps, _mm256_stream_pd,    \
                                  __m256, __m256d)
#define FG_NTV_16(ISA) FG_NTV_DEF(ISA, _mm_stream_ps, _mm_stream_pd, __m128,  \
                                  __m128d)
#else
#define FG_NTV_64(ISA) FG_NTV_DEF(ISA, FG_PLAIN_ST, FG_PLAIN_ST,              \
                                  fg_vf32##ISA, fg_vf64##ISA)
#define FG_NTV_32(ISA) FG_NTV_64(ISA)
#define FG_NTV_16(ISA) FG_NTV_64(ISA)
#endif
#define FG_NT_LOOP(V, VL, LOAD, STREAM, REQ, M, S, H, VM, VS, VH)             \
    FG_NT_RUN(V, VL, STREAM, yp, REQ, (xp[i] - M) * S + H,                    \
              (LOAD(xp + i) - VM) * VS + VH)
/* The backward's dx = a*dy + B*(x - mu) + D, streamed the same way: scalars
 * (fg_nt_dx, an NCHW channel run; dy and x `ahead` values on requested
 * unless it is 0) or per-channel vectors (fg_nt_dxrow). */
#define FG_NT_DX_LOOP(V, VL, LOAD, STREAM, REQ, A, B, M, D, VA, VB, VM, VD)   \
    FG_NT_RUN(V, VL, STREAM, o, REQ, A * g[i] + B * (p[i] - M) + D,           \
              VA * LOAD(g + i) + VB * (LOAD(p + i) - VM) + VD)
#define FG_NT_DEF(T, V, VL, LOAD, STREAM, SUF)                                \
static inline FG_INLINE void fg_nt_dx_##SUF(const T *g, const T *p, T *o,     \
                                            ptrdiff_t n, T a, T b, T mu,      \
                                            T d, ptrdiff_t ahead) {           \
    if (ahead) {                                                              \
        FG_NT_DX_LOOP(V, VL, LOAD, STREAM,                                    \
                      { FG_REQ(g + ahead); FG_REQ(p + ahead); },              \
                      a, b, mu, d, a, b, mu, d)                               \
    } else {                                                                  \
        FG_NT_DX_LOOP(V, VL, LOAD, STREAM, (void)0, a, b, mu, d, a, b, mu, d) \
    }                                                                         \
}                                                                             \
static inline FG_INLINE void fg_nt_dxrow_##SUF(const T *g, const T *p, T *o,  \
                                               ptrdiff_t n, const T *a,       \
                                               const T *b, const T *mu,       \
                                               const T *d) {                  \
    FG_NT_DX_LOOP(V, VL, LOAD, STREAM, (void)0, a[i], b[i], mu[i], d[i],      \
                  LOAD(a + i), LOAD(b + i), LOAD(mu + i), LOAD(d + i))        \
}                                                                             \
static inline FG_INLINE void fg_nt_affine_##SUF(const T *xp, T *yp,          \
                                                ptrdiff_t n, T m, T s, T h,   \
                                                const T *pf) {                \
    if (pf) {                                                                 \
        FG_NT_LOOP(V, VL, LOAD, STREAM, FG_REQ(pf), m, s, h, m, s, h)         \
    } else {                                                                  \
        FG_NT_LOOP(V, VL, LOAD, STREAM, (void)0, m, s, h, m, s, h)            \
    }                                                                         \
}                                                                             \
static inline FG_INLINE void fg_nt_copy_##SUF(const T *xp, T *yp,            \
                                              ptrdiff_t n, const T *pf) {     \
    if (pf) {                                                                 \
        FG_NT_RUN(V, VL, STREAM, yp, FG_REQ(pf), xp[i], LOAD(xp + i))         \
    } else {                                                                  \
        FG_NT_RUN(V, VL, STREAM, yp, (void)0, xp[i], LOAD(xp + i))            \
    }                                                                         \
}                                                                             \
static inline FG_INLINE void fg_nt_row_##SUF(const T *xp, T *yp, ptrdiff_t n, \
                                             const T *m, const T *s,          \
                                             const T *h, ptrdiff_t ahead) {   \
    if (ahead) {                                                              \
        FG_NT_LOOP(V, VL, LOAD, STREAM, FG_REQ(xp + ahead), m[i], s[i], h[i], \
                   LOAD(m + i), LOAD(s + i), LOAD(h + i))                     \
    } else {                                                                  \
        FG_NT_LOOP(V, VL, LOAD, STREAM, (void)0, m[i], s[i], h[i],            \
                   LOAD(m + i), LOAD(s + i), LOAD(h + i))                     \
    }                                                                         \
}
#if FG_HAVE_NT
FG_NT_DEF(float, __m128, 4, _mm_loadu_ps, _mm_stream_ps, f32)
FG_NT_DEF(double, __m128d, 2, _mm_loadu_pd, _mm_stream_pd, f64)
#else
FG_NT_DEF(float, , , , , f32)
FG_NT_DEF(double, , , , , f64)
static void fg_sfence(void) {}
#endif

/* O[i] = STMT's value for i < m (STMT assigns O[i]), stored on whole cache
 * lines when the run has 512 bytes or more: the values before O's first
 * 64-byte boundary one by one, the rest as vectors. NumPy's arrays start 16
 * bytes past a line, and there every 64-byte store split across two lines:
 * the apply of 1x320x64x64 took 1.1-1.25x as long, 1x32x16x16 1.3x (Xeon,
 * AVX-512). Shorter runs go as they are (32 values took 1.25x longer
 * peeled; a loop from a variable start cost 3-5% on 7x7 maps). Each value's
 * arithmetic is the same in the peeled loop. */
#define FG_TO_LINE(yp) ((ptrdiff_t)((-(size_t)(yp) & 63) / sizeof(*(yp))))
#define FG_LINE_RUN(O, m, STMT)                                               \
    if ((m) * (ptrdiff_t)sizeof(*(O)) >= 512) {                               \
        const ptrdiff_t q_ = FG_TO_LINE(O);                                   \
        for (i = 0; i < q_; i++) STMT;                                        \
        FG_SIMD for (i = q_; i < (m); i++) STMT;                              \
    } else {                                                                  \
        FG_SIMD for (i = 0; i < (m); i++) STMT;                               \
    }

/* Values [u0, u1) of an NCHW slab (channel c holds values c*HW .. c*HW+HW-1;
 * w, b start at the slab's first channel): the loop over channel runs is
 * inside. HW == 1 is one vector loop over channels. */
#define FG_SPAN_AT(ACT, SUF, UE, Y0, US)                                      \
    while (u < (UE)) {                                                        \
        const ptrdiff_t c = u / HW;                                           \
        const ptrdiff_t e = (c + 1) * HW < (UE) ? (c + 1) * HW : (UE);        \
        const fg_t s = w[c] * rs, h = b[c] - mlo * s;                         \
        const fg_t *xp = x + u;                                               \
        fg_t *yp = (Y0) + (u - (US));                                         \
        const ptrdiff_t m = e - u;                                            \
        FG_LINE_RUN(yp, m, yp[i] = ACT(SUF, (xp[i] - mhi) * s + h))           \
        u = e;                                                                \
    }
#define FG_SPAN_BODY(ACT, SUF) FG_SPAN_AT(ACT, SUF, u1, y, 0)
#define FG_SPAN_PIECE(ACT, SUF) FG_SPAN_AT(ACT, SUF, ue, bp, us)
/* buf (64-byte aligned) at p's offset within a line */
#define FG_AT_LINE_OFF(buf, p)                                                \
    ((buf) + ((size_t)(p) & 63) / sizeof(*(p)))
/* Values [u0, u1) of an output y in pieces of at most PIECE values, each
 * ending on one of y's lines: per piece [us, ue), BODY with bp, the buffer
 * buf (PIECE values and a line more) at y + us's offset within a line. */
#define FG_PIECES(buf, PIECE, u0, u1, y, ...)                                 \
    {                                                                         \
        ptrdiff_t us, ue;                                                     \
        for (us = (u0); us < (u1); us = ue) {                                 \
            __typeof__(&(buf)[0]) const bp = FG_AT_LINE_OFF(buf, (y) + us);   \
            ue = us + (PIECE) - (bp - (buf)) < (u1)                           \
                ? us + (PIECE) - (bp - (buf)) : (u1);                         \
            __VA_ARGS__                                                       \
        }                                                                     \
    }
/* Values of T in a piece of fg_apply_span's streamed activation */
#define FG_ACT_PIECE(T) (1024 / (ptrdiff_t)sizeof(T))

#define FG_AFFINE_BODY(ACT, SUF)                                              \
    FG_SIMD for (i = u0; i < u1; i++) {                                       \
        fg_t s = w[i] * rs;                                                   \
        y[i] = ACT(SUF, (x[i] - mhi) * s + (b[i] - mlo * s));                 \
    }

/* Values [u0, u1) of a slab; `stream` (HW > 1): streaming stores, see
 * above, with the same values of pf (a later slab, or NULL) requested as
 * they go. With an activation, FG_ACT_PIECE values at a time (ending on
 * y's lines) computed into an L1 buffer at y's offset within a line, then
 * streamed from it: the same loops, so the same bits. Plain stores had read
 * every output line first (96x256x28x28 silu 0.89x the time at one thread
 * with 4 KiB pieces; relu 0.70x); 1 KiB pieces let a piece's stores drain
 * while the next is computed (two threads 0.93x 4 KiB's; 16 KiB 1.10x). */
#define FG_APPLY_SPAN(T, SUF)                                                 \
FG_CLONES void fg_apply_span_##SUF(const T *x, T *y, ptrdiff_t u0,            \
                                   ptrdiff_t u1, ptrdiff_t HW, T mhi, T mlo,  \
                                   T rs, const T *w, const T *b, int act,     \
                                   int stream, const T *pf) {                 \
    typedef T fg_t;                                                           \
    ptrdiff_t u = u0, i;                                                      \
    if (FG_HAVE_NT && stream && act) {                                        \
        fg_t buf_[FG_ACT_PIECE(T) + 64 / sizeof(T)]                           \
            __attribute__((aligned(64)));                                     \
        FG_PIECES(buf_, FG_ACT_PIECE(T), u0, u1, y,                           \
                  FG_ACT_SWITCH(FG_SPAN_PIECE, SUF)                           \
                  fg_nt_copy_##SUF(bp, y + us, ue - us,                       \
                                   pf ? pf + us : NULL);)                     \
        fg_sfence();                                                          \
    } else if (stream) {                                                      \
        while (u < u1) {                                                      \
            const ptrdiff_t c = u / HW;                                       \
            const ptrdiff_t e = (c + 1) * HW < u1 ? (c + 1) * HW : u1;        \
            const T sc = w[c] * rs;                                           \
            fg_nt_affine_##SUF(x + u, y + u, e - u, mhi, sc, b[c] - mlo * sc, \
                               pf ? pf + u : NULL);                           \
            u = e;                                                            \
        }                                                                     \
        fg_sfence();                                                          \
    } else if (HW == 1) {                                                     \
        FG_ACT_SWITCH(FG_AFFINE_BODY, SUF)                                    \
    } else {                                                                  \
        FG_ACT_SWITCH(FG_SPAN_BODY, SUF)                                      \
    }                                                                         \
}

/* The benchmarks' floor: dst = alpha * src, one read and one write, with
 * the apply's store policy. */
#define FG_SCALE_COPY(T, SUF)                                                 \
FG_CLONES void fg_scale_copy_##SUF(const T *src, T *dst, ptrdiff_t n,         \
                                   T alpha, int stream) {                     \
    ptrdiff_t i;                                                              \
    if (stream) {                                                             \
        fg_nt_affine_##SUF(src, dst, n, 0, alpha, 0, NULL);                   \
        fg_sfence();                                                          \
        return;                                                               \
    }                                                                         \
    FG_SIMD for (i = 0; i < n; i++) dst[i] = alpha * src[i];                  \
}
FG_SCALE_COPY(float, f32)
FG_SCALE_COPY(double, f64)

/* Mean and rstd of G groups from their moments m (n, mean, m2 each) into
 * st (pairs) and, when given, mean_out, rstd_out: a channels-last sample of
 * one chunk, its groups' square roots and divisions as vectors (one group
 * at a time in Cython, they took a third of the time outside its kernels;
 * the same bits, as IEEE rounds each). */
#define FG_FINISH(T, SUF)                                                     \
FG_CLONES void fg_finish_##SUF(const double *m, ptrdiff_t G, double eps,     \
                               double *st, T *mean_out, T *rstd_out) {        \
    ptrdiff_t g;                                                              \
    FG_SIMD for (g = 0; g < G; g++) {                                         \
        const double var = m[3 * g + 2] / m[3 * g];                           \
        st[2 * g] = m[3 * g + 1];                                             \
        st[2 * g + 1] = 1.0 / sqrt((var < 0 ? 0 : var) + eps);                \
    }                                                                         \
    if (mean_out)                                                             \
        for (g = 0; g < G; g++) {                                             \
            mean_out[g] = (T)st[2 * g];                                       \
            rstd_out[g] = (T)st[2 * g + 1];                                   \
        }                                                                     \
}
FG_FINISH(float, f32)
FG_FINISH(double, f64)

/* `rows` positions of C channels (NHWC), per-channel mhi/sc/sh vectors; four
 * rows a step so each vector of parameters is loaded once for four. */
#define FG_ROWS_BODY(ACT, SUF)                                                \
    for (p = 0; p + 4 <= rows; p += 4) {                                      \
        const fg_t *x0 = x + p * C, *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C; \
        fg_t *y0 = y + p * C, *y1 = y0 + C, *y2 = y1 + C, *y3 = y2 + C;       \
        FG_SIMD for (i = 0; i < C; i++) {                                     \
            fg_t m = mhi[i], s = sc[i], h = sh[i];                            \
            y0[i] = ACT(SUF, (x0[i] - m) * s + h);                            \
            y1[i] = ACT(SUF, (x1[i] - m) * s + h);                            \
            y2[i] = ACT(SUF, (x2[i] - m) * s + h);                            \
            y3[i] = ACT(SUF, (x3[i] - m) * s + h);                            \
        }                                                                     \
    }                                                                         \
    for (; p < rows; p++) {                                                   \
        const fg_t *x0 = x + p * C;                                           \
        fg_t *y0 = y + p * C;                                                 \
        FG_SIMD for (i = 0; i < C; i++)                                       \
            y0[i] = ACT(SUF, (x0[i] - mhi[i]) * sc[i] + sh[i]);               \
    }

/* FG_ROWS_BODY a row at a time, requesting (as FG_REQ) the values `ahead`
 * on in x with the store of each 64 bytes, as FG_NT_RUN does; the same
 * arithmetic per value, so the same bits. The caller's `ahead` is the next
 * sample's rows: a channels-last sample's statistics walk its rows down
 * columns, and from memory each column block's first rows had waited for
 * their lines (64x512x7x7 cold took 1.45x its NCHW time). With the next
 * sample requested as a row at a time is applied: 0.71-0.75x the time cold,
 * 1.03-1.07x warm (data in L3; benchmarks/ab.py), and with NCHW calls
 * interleaved on other arrays (as the bench times them) NHWC/NCHW went from
 * 1.44-1.51x to 1.16-1.19x. Four rows a step with the same requests measured
 * 0.92x cold. */
#define FG_ROWS_BODY_REQ(ACT, SUF)                                            \
    for (p = 0; p < rows; p++) {                                              \
        const fg_t *x0 = x + p * C;                                           \
        fg_t *y0 = y + p * C;                                                 \
        ptrdiff_t j;                                                          \
        for (j = 0; j + 64 / (ptrdiff_t)sizeof(fg_t) <= C;                    \
             j += 64 / (ptrdiff_t)sizeof(fg_t)) {                             \
            __builtin_prefetch(x0 + j + ahead, 0, 2);                         \
            FG_SIMD for (i = j; i < j + 64 / (ptrdiff_t)sizeof(fg_t); i++)    \
                y0[i] = ACT(SUF, (x0[i] - mhi[i]) * sc[i] + sh[i]);           \
        }                                                                     \
        FG_SIMD for (i = j; i < C; i++)                                       \
            y0[i] = ACT(SUF, (x0[i] - mhi[i]) * sc[i] + sh[i]);               \
    }

/* The rows from the first cache line of y on, when every row starts at the
 * same offset q values before a line (C * sizeof(T) a multiple of 64): the
 * caller rotated the parameters by q (index t is channel (q + t) % C), so
 * the C values from row p's q-th on are one "row" of the loop above, on
 * whole lines; row 0's first q values before, row rows-1's last C - q
 * after. Every value's arithmetic is the same, so are the bits. NumPy's
 * arrays start 16 bytes past a line: every 64-byte store split in two,
 * 1.2-1.35x the time (Xeon, AVX-512). */
#define FG_ROWS_ROTATED(ACT, SUF, BODY)                                       \
    for (i = 0; i < q; i++)                                                   \
        y[i] = ACT(SUF, (x[i] - mhi[C - q + i]) * sc[C - q + i]               \
                        + sh[C - q + i]);                                     \
    x += q;                                                                   \
    y += q;                                                                   \
    rows -= 1;                                                                \
    BODY(ACT, SUF)                                                            \
    FG_SIMD for (i = 0; i < C - q; i++)                                       \
        y[rows * C + i] = ACT(SUF, (x[rows * C + i] - mhi[i]) * sc[i]         \
                                   + sh[i]);
#define FG_ROWS_ROTATED_LOOP(ACT, SUF) FG_ROWS_ROTATED(ACT, SUF, FG_ROWS_BODY)
/* No activation: the parameters held in registers (fg_rows_affine). */
#define FG_ROWS_WIDE(ACT, SUF)                                                \
    fg_rows_affine_##SUF(x, y, rows, C, mhi, sc, sh, ahead);
#define FG_ROWS_ROTATED_REQ(ACT, SUF)                                         \
    FG_ROWS_ROTATED(ACT, SUF, FG_ROWS_BODY_REQ)

/* One ISA's copy (the rows kernel it calls is of the same ISA: a copy of
 * another level would round the rows' ends differently, FMA or not, from
 * their middles, so that the bits would depend on where chunks start). */
#define FG_APPLY_ROWS(T, SUF, ISA)                                            \
FG_WIDE_FN void fg_apply_rows_##SUF##ISA(const T *x, T *y, ptrdiff_t rows,    \
                                        ptrdiff_t C, const T *restrict mhi,   \
                                        const T *restrict sc,                 \
                                        const T *restrict sh, ptrdiff_t q,    \
                                        int act, int stream,                  \
                                        ptrdiff_t ahead);                     \
/* Rows of C channels as rows of P = FG_WIDE(C) values (parameters repeated \
 * P / C times), the rows left over as they are: each value's arithmetic  \
 * is the same. */                                                          \
FG_WIDE_FN __attribute__((noinline))                                          \
void fg_apply_wide_##SUF##ISA(const T *x, T *y, ptrdiff_t rows, ptrdiff_t C,   \
                              ptrdiff_t P, const T *restrict mhi,             \
                              const T *restrict sc, const T *restrict sh,     \
                              int act, int stream, ptrdiff_t ahead) {         \
    T wm[FG_WIDE_MAX], ws[FG_WIDE_MAX], wh[FG_WIDE_MAX];                      \
    const ptrdiff_t k = P / C, n = rows / k * P;                              \
    FG_REPEAT(wm, mhi, C, P)                                                  \
    FG_REPEAT(ws, sc, C, P)                                                   \
    FG_REPEAT(wh, sh, C, P)                                                   \
    fg_apply_rows_##SUF##ISA(x, y, rows / k, P, wm, ws, wh, 0, act, stream,   \
                             ahead);                                          \
    if (rows % k)                                                             \
        fg_apply_rows_##SUF##ISA(x + n, y + n, rows % k, C, mhi, sc, sh, 0,   \
                                 act, stream, ahead);                         \
}                                                                             \
FG_WIDE_FN void fg_apply_rows_##SUF##ISA(const T *x, T *y, ptrdiff_t rows,    \
                                        ptrdiff_t C, const T *restrict mhi,   \
                                        const T *restrict sc,                 \
                                        const T *restrict sh, ptrdiff_t q,    \
                                        int act, int stream,                  \
                                        ptrdiff_t ahead) {                    \
    typedef T fg_t;                                                           \
    const ptrdiff_t P = FG_WIDE(C, sizeof(fg_vf32##ISA) / sizeof(T));        \
    ptrdiff_t p, i;                                                           \
    if (q == 0 && P != C && rows >= P / C) {                                  \
        fg_apply_wide_##SUF##ISA(x, y, rows, C, P, mhi, sc, sh, act, stream,  \
                                 ahead);                                      \
        return;                                                               \
    }                                                                         \
    if (stream) {                                                             \
        for (p = 0; p < rows; p++)                                            \
            fg_nt_row_##SUF(x + p * C, y + p * C, C, mhi, sc, sh, ahead);     \
        fg_sfence();                                                          \
        return;                                                               \
    }                                                                         \
    if (act == 0 && q) {                                                      \
        FG_ROWS_ROTATED(FG_NOACT, SUF##ISA, FG_ROWS_WIDE)                     \
    } else if (act == 0) {                                                    \
        FG_ROWS_WIDE(FG_NOACT, SUF##ISA)                                      \
    } else if (q && ahead) {                                                  \
        FG_ACT_SWITCH(FG_ROWS_ROTATED_REQ, SUF)                               \
    } else if (q) {                                                           \
        FG_ACT_SWITCH(FG_ROWS_ROTATED_LOOP, SUF)                              \
    } else if (ahead) {                                                       \
        FG_ACT_SWITCH(FG_ROWS_BODY_REQ, SUF)                                  \
    } else {                                                                  \
        FG_ACT_SWITCH(FG_ROWS_BODY, SUF)                                      \
    }                                                                         \
}

#define FG_BWD_ROWS_DX_FN(T, SUF, ISA)                                        \
/* dx = a*dy + B*(x - mean) + D per channel (vectors a, bc, muc, dc of C): \
 * streamed, or the rows from the first cache line of dx on (fg_rows_dx); \
 * rows of C channels as rows of FG_WIDE(C) values where that widens them \
 * (as fg_apply_wide). */                                                   \
FG_WIDE_FN void fg_bwd_rows_dx_##SUF##ISA(const T *dy, const T *x, T *dx,     \
                                         ptrdiff_t rows, ptrdiff_t C,         \
                                         const T *restrict a,                 \
                                         const T *restrict bc,                \
                                         const T *restrict muc,               \
                                         const T *restrict dc, ptrdiff_t q,   \
                                         int stream, ptrdiff_t ahead);        \
FG_WIDE_FN __attribute__((noinline))                                          \
void fg_bwd_dx_wide_##SUF##ISA(const T *dy, const T *x, T *dx,                 \
                               ptrdiff_t rows, ptrdiff_t C, ptrdiff_t P,      \
                               const T *restrict a, const T *restrict bc,     \
                               const T *restrict muc, const T *restrict dc,   \
                               int stream, ptrdiff_t ahead) {                 \
    T wa[FG_WIDE_MAX], wb[FG_WIDE_MAX], wm[FG_WIDE_MAX], wd[FG_WIDE_MAX];     \
    const ptrdiff_t k = P / C, n = rows / k * P;                              \
    FG_REPEAT(wa, a, C, P)                                                    \
    FG_REPEAT(wb, bc, C, P)                                                   \
    FG_REPEAT(wm, muc, C, P)                                                  \
    FG_REPEAT(wd, dc, C, P)                                                   \
    fg_bwd_rows_dx_##SUF##ISA(dy, x, dx, rows / k, P, wa, wb, wm, wd, 0,      \
                              stream, ahead);                                 \
    if (rows % k)                                                             \
        fg_bwd_rows_dx_##SUF##ISA(dy + n, x + n, dx + n, rows % k, C, a, bc,  \
                                  muc, dc, 0, stream, ahead);                 \
}                                                                             \
FG_WIDE_FN void fg_bwd_rows_dx_##SUF##ISA(const T *dy, const T *x, T *dx,     \
                                         ptrdiff_t rows, ptrdiff_t C,         \
                                         const T *restrict a,                 \
                                         const T *restrict bc,                \
                                         const T *restrict muc,               \
                                         const T *restrict dc, ptrdiff_t q,   \
                                         int stream, ptrdiff_t ahead) {       \
    const ptrdiff_t P = FG_WIDE(C, sizeof(fg_vf32##ISA) / sizeof(T));        \
    ptrdiff_t p, c;                                                           \
    if (q == 0 && P != C && rows >= P / C) {                                  \
        fg_bwd_dx_wide_##SUF##ISA(dy, x, dx, rows, C, P, a, bc, muc, dc,      \
                                  stream, ahead);                             \
        return;                                                               \
    }                                                                         \
    if (stream) {                                                             \
        for (p = 0; p < rows; p++)                                            \
            fg_nt_dxrow_##SUF(dy + p * C, x + p * C, dx + p * C, C, a, bc,    \
                              muc, dc);                                       \
        fg_sfence();                                                          \
        return;                                                               \
    }                                                                         \
    if (q) {        /* rotated vectors: as fg_apply_rows (FG_ROWS_ROTATED) */ \
        for (c = 0; c < q; c++) {                                             \
            const ptrdiff_t t = C - q + c;                                    \
            dx[c] = a[t] * dy[c] + bc[t] * (x[c] - muc[t]) + dc[t];           \
        }                                                                     \
        dy += q;                                                              \
        x += q;                                                               \
        dx += q;                                                              \
        rows -= 1;                                                            \
    }                                                                         \
    fg_rows_dx_##SUF##ISA(dy, x, dx, rows, C, a, bc, muc, dc, ahead);         \
    if (q)                                                                    \
        FG_SIMD for (c = 0; c < C - q; c++) {                                 \
            const ptrdiff_t i = rows * C + c;                                 \
            dx[i] = a[c] * dy[i] + bc[c] * (x[i] - muc[c]) + dc[c];           \
        }                                                                     \
}

/* Short runs (a small slab, a 7x7 channel: at most a few thousand values)
 * are summed with GNU C vector types in two or four independent
 * accumulators: the reduction at the end is a handful of shuffles, not the
 * scalar epilogue the auto-vectorizer emits for `omp simd` reductions, which
 * dominated groups of a few dozen values. A vector type must be as wide as
 * the registers of the code it is compiled for: GCC keeps a wider one in
 * memory (64-byte vectors in AVX2 code ran 2-5x slower than plain loops).
 * So the kernels built on them (FG_WIDE_KERNELS, below) are compiled once
 * per ISA with the width of its registers, and picked at run time.
 * Lanes are folded to at most 8 in T, then added up in float64. */
#define FG_VTYPES(ISA, VB)                                                    \
typedef float fg_vf32##ISA __attribute__((vector_size(VB)));                  \
typedef double fg_vf64##ISA __attribute__((vector_size(VB)));                 \
typedef float fg_vf32u##ISA                                                   \
    __attribute__((vector_size(VB), aligned(4), may_alias));                  \
typedef double fg_vf64u##ISA                                                  \
    __attribute__((vector_size(VB), aligned(8), may_alias));                  \
typedef float fg_vf32h##ISA                                                   \
    __attribute__((vector_size(VB / 2), aligned(4), may_alias));              \
typedef int fg_vi32##ISA __attribute__((vector_size(VB)));                    \
typedef long long fg_vi64##ISA __attribute__((vector_size(VB)));
/* The sum of a vector's lanes in float64: float32 halves added down to 8
 * lanes, converted 4 + 4, then a tree. One definition per width (VB), for
 * that width's registers; the AVX widths share the 8-lane tail. Halves are
 * taken by intrinsic: GCC made __builtin_memcpy of one a vector store to
 * the stack and a narrower reload at an offset, a failed store forward in
 * every reduction (the backward sums of 7x7 maps: 1.18x the time). */
#define FG_VTAIL(ISA)                                                         \
typedef float fg_f8##ISA __attribute__((vector_size(32)));                    \
typedef float fg_f4##ISA __attribute__((vector_size(16)));                    \
typedef double fg_d4##ISA __attribute__((vector_size(32)));                   \
typedef float fg_f4u##ISA                                                     \
    __attribute__((vector_size(16), aligned(4), may_alias));                  \
typedef double fg_d4u##ISA                                                    \
    __attribute__((vector_size(32), aligned(8), may_alias));                  \
/* float32 -> float64 conversions by intrinsic: GCC 12 lowers               \
 * __builtin_convertvector from 4 (8) floats to 4 (8) doubles in halves,      \
 * three or four instructions for one. */                                    \
FG_WIDE_INL fg_d4##ISA fg_cvt4##ISA(fg_f4##ISA v) {                           \
    return (fg_d4##ISA)_mm256_cvtps_pd((__m128)v);                            \
}                                                                             \
FG_WIDE_INL double fg_d4sum##ISA(fg_d4##ISA v) {                              \
    return (v[0] + v[1]) + (v[2] + v[3]);                                     \
}                                                                             \
/* fg_bwd_coefs_in's sums of w*ds and w*db (Cg a multiple of 4) in four    \
 * lanes, the order of its four scalar partial sums (float32's bits; GCC    \
 * had vectorized float64's scalar sums in another order); the scalar ones  \
 * took a sixth of the channels-last backward of 2x2 maps */                \
FG_WDOTS(float, f32, ISA, fg_cvt4##ISA(*(const fg_f4u##ISA *)(w + c)))        \
FG_WDOTS(double, f64, ISA, *(const fg_d4u##ISA *)(w + c))                     \
FG_WIDE_INL double fg_f8sum##ISA(fg_f8##ISA v) {                              \
    return fg_d4sum##ISA(fg_cvt4##ISA((fg_f4##ISA)_mm256_castps256_ps128(    \
                             (__m256)v)) +                                    \
                         fg_cvt4##ISA((fg_f4##ISA)_mm256_extractf128_ps(      \
                             (__m256)v, 1)));                                 \
}
#define FG_VSUMS_64(ISA)                                                      \
FG_VTAIL(ISA)                                                                 \
FG_WIDE_INL double fg_vsum_f64##ISA(fg_vf64##ISA v) {                         \
    return fg_d4sum##ISA((fg_d4##ISA)_mm512_castpd512_pd256((__m512d)v) +    \
                         (fg_d4##ISA)_mm512_extractf64x4_pd((__m512d)v, 1)); \
}                                                                             \
/* 8 float32 lanes converted in one register (the 4 + 4 of FG_VTAIL took    \
 * one conversion more per reduction: 6-7% on 256x1024) */                  \
FG_WIDE_INL double fg_vsum_f32##ISA(fg_vf32##ISA v) {                         \
    const __m256 lo = _mm512_castps512_ps256((__m512)v);                      \
    const __m256 hi = _mm512_extractf32x8_ps((__m512)v, 1);                   \
    return fg_vsum_f64##ISA((fg_vf64##ISA)_mm512_cvtps_pd(                    \
                                (__m256)((fg_f8##ISA)lo + (fg_f8##ISA)hi)));  \
}                                                                             \
FG_WIDE_INL fg_vf64##ISA fg_widen##ISA(const float *p) {                      \
    return (fg_vf64##ISA)_mm512_cvtps_pd(_mm256_loadu_ps(p));                 \
}                                                                             \
FG_WIDE_INL fg_vf64##ISA fg_vsqrt##ISA(fg_vf64##ISA v) {                      \
    return (fg_vf64##ISA)_mm512_sqrt_pd((__m512d)v);                          \
}                                                                             \
FG_WIDE_INL void fg_split##ISA(fg_vf32##ISA v, fg_vf64##ISA *lo,             \
                               fg_vf64##ISA *hi) {                            \
    *lo = (fg_vf64##ISA)_mm512_cvtps_pd(_mm512_castps512_ps256((__m512)v));   \
    *hi = (fg_vf64##ISA)_mm512_cvtps_pd(_mm512_extractf32x8_ps((__m512)v, 1));\
}                                                                             \
/* fg_vsums_t: lane g of the result is the sum of a[g]'s lanes, for 8      \
 * vectors at once (pairs of lanes added, then of 128-bit blocks, then of   \
 * 256-bit blocks). */                                                      \
FG_WIDE_INL __m512d fg_pairsum##ISA(__m512d x, __m512d y, int lanes) {       \
    return lanes ? _mm512_add_pd(_mm512_unpacklo_pd(x, y),                    \
                                 _mm512_unpackhi_pd(x, y))                    \
                 : _mm512_add_pd(_mm512_shuffle_f64x2(x, y, 0x88),            \
                                 _mm512_shuffle_f64x2(x, y, 0xDD));           \
}                                                                             \
FG_WIDE_INL fg_vf64##ISA fg_vsums_t##ISA(const fg_vf64##ISA *a) {             \
    const __m512d b0 = fg_pairsum##ISA((__m512d)a[0], (__m512d)a[1], 1);      \
    const __m512d b1 = fg_pairsum##ISA((__m512d)a[2], (__m512d)a[3], 1);      \
    const __m512d b2 = fg_pairsum##ISA((__m512d)a[4], (__m512d)a[5], 1);      \
    const __m512d b3 = fg_pairsum##ISA((__m512d)a[6], (__m512d)a[7], 1);      \
    return (fg_vf64##ISA)fg_pairsum##ISA(fg_pairsum##ISA(b0, b1, 0),          \
                                         fg_pairsum##ISA(b2, b3, 0), 0);      \
}                                                                             \
/* fg_vsums_t32: the same for 16 float32 vectors (pairs of lanes, of      \
 * 64-bit pairs, then of 128-bit blocks twice), sums kept in float32. */    \
FG_WIDE_INL __m512 fg_pairsum32##ISA(__m512 x, __m512 y, int step) {          \
    const __m512d u = _mm512_castps_pd(x), v = _mm512_castps_pd(y);           \
    return step == 0 ? _mm512_add_ps(_mm512_unpacklo_ps(x, y),                \
                                     _mm512_unpackhi_ps(x, y))                \
         : step == 1 ? _mm512_add_ps(                                         \
                           _mm512_castpd_ps(_mm512_unpacklo_pd(u, v)),        \
                           _mm512_castpd_ps(_mm512_unpackhi_pd(u, v)))        \
         : _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88),                    \
                         _mm512_shuffle_f32x4(x, y, 0xDD));                   \
}                                                                             \
FG_WIDE_INL fg_vf32##ISA fg_vsums_t32##ISA(const fg_vf32##ISA *a) {           \
    __m512 b[8], c[4];                                                        \
    int i;                                                                    \
    for (i = 0; i < 8; i++)                                                   \
        b[i] = fg_pairsum32##ISA((__m512)a[2 * i], (__m512)a[2 * i + 1], 0);  \
    for (i = 0; i < 4; i++)                                                   \
        c[i] = fg_pairsum32##ISA(b[2 * i], b[2 * i + 1], 1);                  \
    return (fg_vf32##ISA)fg_pairsum32##ISA(                                   \
        fg_pairsum32##ISA(c[0], c[1], 2), fg_pairsum32##ISA(c[2], c[3], 2),   \
        2);                                                                   \
}
#define FG_VSUMS_32(ISA)                                                      \
FG_VTAIL(ISA)                                                                 \
FG_WIDE_INL fg_vf64##ISA fg_widen##ISA(const float *p) {                      \
    return (fg_vf64##ISA)_mm256_cvtps_pd(_mm_loadu_ps(p));                    \
}                                                                             \
FG_WIDE_INL fg_vf64##ISA fg_vsqrt##ISA(fg_vf64##ISA v) {                      \
    return (fg_vf64##ISA)_mm256_sqrt_pd((__m256d)v);                          \
}                                                                             \
FG_WIDE_INL void fg_split##ISA(fg_vf32##ISA v, fg_vf64##ISA *lo,             \
                               fg_vf64##ISA *hi) {                            \
    *lo = (fg_vf64##ISA)_mm256_cvtps_pd(_mm256_castps256_ps128((__m256)v));   \
    *hi = (fg_vf64##ISA)_mm256_cvtps_pd(_mm256_extractf128_ps((__m256)v, 1)); \
}                                                                             \
FG_WIDE_INL fg_vf64##ISA fg_vsums_t##ISA(const fg_vf64##ISA *a) {             \
    const __m256d b0 = _mm256_hadd_pd((__m256d)a[0], (__m256d)a[1]);         \
    const __m256d b1 = _mm256_hadd_pd((__m256d)a[2], (__m256d)a[3]);         \
    return (fg_vf64##ISA)_mm256_add_pd(_mm256_permute2f128_pd(b0, b1, 0x20),  \
                                       _mm256_permute2f128_pd(b0, b1, 0x31)); \
}                                                                             \
FG_WIDE_INL __m256 fg_pairsum32##ISA(__m256 x, __m256 y, int step) {          \
    const __m256d u = _mm256_castps_pd(x), v = _mm256_castps_pd(y);           \
    return step == 0 ? _mm256_add_ps(_mm256_unpacklo_ps(x, y),                \
                                     _mm256_unpackhi_ps(x, y))                \
         : step == 1 ? _mm256_add_ps(                                         \
                           _mm256_castpd_ps(_mm256_unpacklo_pd(u, v)),        \
                           _mm256_castpd_ps(_mm256_unpackhi_pd(u, v)))        \
         : _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20),                  \
                         _mm256_permute2f128_ps(x, y, 0x31));                 \
}                                                                             \
FG_WIDE_INL fg_vf32##ISA fg_vsums_t32##ISA(const fg_vf32##ISA *a) {           \
    __m256 b[4];                                                              \
    int i;                                                                    \
    for (i = 0; i < 4; i++)                                                   \
        b[i] = fg_pairsum32##ISA((__m256)a[2 * i], (__m256)a[2 * i + 1], 0);  \
    return (fg_vf32##ISA)fg_pairsum32##ISA(fg_pairsum32##ISA(b[0], b[1], 1),  \
                                           fg_pairsum32##ISA(b[2], b[3], 1),  \
                                           2);                                \
}                                                                             \
FG_WIDE_INL double fg_vsum_f32##ISA(fg_vf32##ISA v) {                         \
    return fg_f8sum##ISA(v);                                                  \
}                                                                             \
FG_WIDE_INL double fg_vsum_f64##ISA(fg_vf64##ISA v) {                         \
    return fg_d4sum##ISA(v);                                                  \
}
#define FG_WDOTS(T, SUF, ISA, LOADW)                                          \
FG_WIDE_INL int fg_wdots_##SUF##ISA(const T *w, const double *ds,             \
                                    const double *db, ptrdiff_t Cg,           \
                                    double *sa, double *sb) {                 \
    fg_d4##ISA a = {0, 0, 0, 0}, b = a;                                       \
    ptrdiff_t c;                                                              \
    for (c = 0; c < Cg; c += 4) {                                             \
        const fg_d4##ISA w_ = LOADW;                                          \
        a += w_ * *(const fg_d4u##ISA *)(ds + c);                             \
        b += w_ * *(const fg_d4u##ISA *)(db + c);                             \
    }                                                                         \
    *sa = fg_d4sum##ISA(a);                                                   \
    *sb = fg_d4sum##ISA(b);                                                   \
    return 1;                                                                 \
}
/* 16-byte registers: fg_bwd_coefs_in sums in scalars */
#define FG_WDOTS_NONE(T, SUF, ISA)                                            \
FG_WIDE_INL int fg_wdots_##SUF##ISA(const T *w, const double *ds,             \
                                    const double *db, ptrdiff_t Cg,           \
                                    double *sa, double *sb) {                 \
    (void)w, (void)ds, (void)db, (void)Cg, (void)sa, (void)sb;                \
    return 0;                                                                 \
}
#define FG_VSUMS_16(ISA)                                                      \
FG_WDOTS_NONE(float, f32, ISA)                                                \
FG_WDOTS_NONE(double, f64, ISA)                                               \
FG_WIDE_INL fg_vf64##ISA fg_widen##ISA(const float *p) {                      \
    return __builtin_convertvector(*(const fg_vf32h##ISA *)p, fg_vf64##ISA);  \
}                                                                             \
FG_WIDE_INL void fg_split##ISA(fg_vf32##ISA v, fg_vf64##ISA *lo,             \
                               fg_vf64##ISA *hi) {                            \
    *lo = (fg_vf64##ISA){v[0], v[1]};                                         \
    *hi = (fg_vf64##ISA){v[2], v[3]};                                         \
}                                                                             \
FG_WIDE_INL double fg_vsum_f32##ISA(fg_vf32##ISA v) {                         \
    return ((double)v[0] + (double)v[1]) + ((double)v[2] + (double)v[3]);    \
}                                                                             \
FG_WIDE_INL double fg_vsum_f64##ISA(fg_vf64##ISA v) {                         \
    return v[0] + v[1];                                                       \
}                                                                             \
FG_WIDE_INL fg_vf64##ISA fg_vsums_t##ISA(const fg_vf64##ISA *a) {             \
    return (fg_vf64##ISA){a[0][0] + a[0][1], a[1][0] + a[1][1]};              \
}                                                                             \
FG_WIDE_INL fg_vf32##ISA fg_vsums_t32##ISA(const fg_vf32##ISA *a) {           \
    const fg_vi32##ISA lo = {0, 4, 1, 5}, hi = {2, 6, 3, 7};                  \
    const fg_vi32##ISA l2 = {0, 1, 4, 5}, h2 = {2, 3, 6, 7};                  \
    const fg_vf32##ISA b0 = __builtin_shuffle(a[0], a[1], lo) +               \
                            __builtin_shuffle(a[0], a[1], hi);                \
    const fg_vf32##ISA b1 = __builtin_shuffle(a[2], a[3], lo) +               \
                            __builtin_shuffle(a[2], a[3], hi);                \
    return __builtin_shuffle(b0, b1, l2) + __builtin_shuffle(b0, b1, h2);     \
}

/* The tail of a backward run (len - j values after its whole vectors) as
 * the run's last vector with the lanes before j masked off, when it holds
 * half a vector or more; shorter tails go value by value. (The backward
 * sums of 5x5 maps, nine values a channel one by one, took 1.4x as long;
 * tails of 1-4 values measured 1.2x slower as a vector. In the forward's
 * statistics, one run per slab, 0.95x on 5x5 maps and 1.02-1.05x on the
 * bench's shapes.) ON, a vector VI
 * of integers as wide as T: its last r lanes all ones, the others zero (a
 * window on a table; SSE2 has no 64-bit compare to make it from lane
 * numbers). */
#define FG_TAIL_VEC(len, j, VL) ((len) - (j) >= (VL) / 2 && (len) >= (VL))
#define FG_MASKED(V, VI, X, ON) ((V)((VI)(X) & (ON)))
static const int fg_ones32[32] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
static const long long fg_ones64[16] = {0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1,
    -1, -1, -1, -1, -1};
#define FG_LAST_LANES(ON, T, VL, r)                                           \
    __builtin_memcpy(&(ON), sizeof(T) == 4                                    \
                     ? (const void *)(fg_ones32 + 16 - (VL) + (r))            \
                     : (const void *)(fg_ones64 + 8 - (VL) + (r)), sizeof(ON));
/* d = the vector at p + j + off (loaded by fg_ld_SUF), shifted by k; its
 * sum and sum of squares */
#define FG_DEV_STEP(SUF, S, Q, off)                                           \
    d = fg_ld_##SUF(p + j + (off)) - k;                                       \
    S += d;                                                                   \
    Q += d * d;
/* v = the gradient vector at g + j + off; its sum, and its products with
 * the values at p + j + off less mu */
#define FG_BWD_STEP(VU, S, B, off)                                            \
    v = *(const VU *)(g + j + (off));                                         \
    S += v * (*(const VU *)(p + j + (off)) - mu);                             \
    B += v;
/* The shift and shifted sums of a run of values of type T, loaded as
 * vectors V of CT by fg_ld_SUF and one by one by SC, summed in CT lanes
 * (fg_vsum_VS at the end): float32 and float64 data as they are, float16
 * converted to float32 in registers. float32 lanes add at most
 * FG_DEV_BLOCK squares each before their sums go into float64: over a
 * whole chunk (128 a lane at AVX-512, 256 at AVX2, 512 at SSE2) their
 * roundings, alike on data of few significant bits, had made the variance
 * of integer-valued data (0..255) off by up to 2e-6 at AVX-512 (outputs
 * 1.7e-6 off, against PyTorch's 2.6e-7; 4e-6 and 7e-6 at AVX2 and SSE2);
 * now 2.6e-7, for 0.99-1.03x the time (float16 1.035x). The sums of
 * deviations need no such care: their error divides by the count. */
#define FG_DEV_BLOCK 16
#define FG_VRUN_SUMS(T, CT, V, SUF, VS, SC)                                   \
FG_WIDE_INL double fg_vrun_sum_##SUF(const T *p, ptrdiff_t len) {             \
    enum { VL = sizeof(V) / sizeof(CT) };                                     \
    V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                 \
    ptrdiff_t j = 0;                                                          \
    double t = 0;                                                             \
    for (; j + 4 * VL <= len; j += 4 * VL) {                                  \
        a0 += fg_ld_##SUF(p + j);                                             \
        a1 += fg_ld_##SUF(p + j + VL);                                        \
        a2 += fg_ld_##SUF(p + j + 2 * VL);                                    \
        a3 += fg_ld_##SUF(p + j + 3 * VL);                                    \
    }                                                                         \
    a0 += a2;                                                                 \
    a1 += a3;                                                                 \
    for (; j + 2 * VL <= len; j += 2 * VL) {                                  \
        a0 += fg_ld_##SUF(p + j);                                             \
        a1 += fg_ld_##SUF(p + j + VL);                                        \
    }                                                                         \
    if (j + VL <= len) {                                                      \
        a0 += fg_ld_##SUF(p + j);                                             \
        j += VL;                                                              \
    }                                                                         \
    for (; j < len; j++) t += SC(p[j]);                                       \
    return t + fg_vsum_##VS(a0 + a1);                                         \
}                                                                             \
FG_WIDE_INL void fg_vrun_dev_##SUF(const T *p, ptrdiff_t len,                 \
                                               CT k, double *s, double *q) {  \
    enum { VL = sizeof(V) / sizeof(CT) };                                     \
    V s0 = {0}, s1 = {0}, q0 = {0}, q1 = {0}, d;                              \
    V s2 = {0}, s3 = {0}, q2 = {0}, q3 = {0};                                 \
    ptrdiff_t j = 0;                                                          \
    int blk = 0;                                                              \
    double ts = 0, tq = 0;                                                    \
    for (; j + 4 * VL <= len; j += 4 * VL) {                                  \
        FG_DEV_STEP(SUF, s0, q0, 0)                                           \
        FG_DEV_STEP(SUF, s1, q1, VL)                                          \
        FG_DEV_STEP(SUF, s2, q2, 2 * VL)                                      \
        FG_DEV_STEP(SUF, s3, q3, 3 * VL)                                      \
        if (sizeof(CT) == 4 && ++blk == FG_DEV_BLOCK) {                       \
            tq += fg_vsum_##VS((q0 + q1) + (q2 + q3));                        \
            q0 = q1 = q2 = q3 = (V){0};                                       \
            blk = 0;                                                          \
        }                                                                     \
    }                                                                         \
    s0 += s2;                                                                 \
    s1 += s3;                                                                 \
    q0 += q2;                                                                 \
    q1 += q3;                                                                 \
    for (; j + 2 * VL <= len; j += 2 * VL) {                                  \
        FG_DEV_STEP(SUF, s0, q0, 0)                                           \
        FG_DEV_STEP(SUF, s1, q1, VL)                                          \
    }                                                                         \
    if (j + VL <= len) {                                                      \
        FG_DEV_STEP(SUF, s0, q0, 0)                                           \
        j += VL;                                                              \
    }                                                                         \
    for (; j < len; j++) {                                                    \
        CT e = SC(p[j]) - k;                                                  \
        ts += e;                                                              \
        tq += (double)e * e;                                                  \
    }                                                                         \
    *s = ts + fg_vsum_##VS(s0 + s1);                                          \
    *q = tq + fg_vsum_##VS(q0 + q1);                                          \
}
#define FG_SAME(v) (v)
/* fg_vrun_bwd's four chains over g, p where either starts off a 64-byte
 * line (NumPy's arrays start 16 bytes in, or anywhere on the heap): a
 * vector's values come from the two aligned vectors that hold them,
 * joined by a permute, the same values in the same lanes as the unaligned
 * load, so the same bits. Loads that split across two lines took the
 * backward of 8x64x56x56 1.25x the aligned time (a C harness, Zen 5).
 * Returns where the unaligned loop goes on (0: not taken); the vectors a
 * step reads end before len. AVX-512 only. */
#define FG_BWD_LINES_STEP(K, S, B, L, LOADA, PERM)                            \
    gb = LOADA(ga + j + L * (K) + L);                                         \
    pb = LOADA(pa + j + L * (K) + L);                                         \
    v = (V)PERM(gx, ig, gb);                                                  \
    S += v * ((V)PERM(px, ip, pb) - mu);                                      \
    B += v;                                                                   \
    gx = gb;                                                                  \
    px = pb;
/* T's vectors of L lanes (register type R, index type I), aligned loads
 * LOADA, unaligned LOADU, two-table permute PERM; IDX(m) the lane indices
 * m, m+1, ..., m+L-1. */
#define FG_BWD_LINES_FN(T, SUF, ISA, L, R, I, LOADA, LOADU, PERM, IDX)        \
FG_WIDE_INL ptrdiff_t fg_bwd_lines_##SUF##ISA(                                \
    const T *g, const T *p, ptrdiff_t len, T mu, fg_v##SUF##ISA *s0,          \
    fg_v##SUF##ISA *s1, fg_v##SUF##ISA *s2, fg_v##SUF##ISA *s3,               \
    fg_v##SUF##ISA *b0, fg_v##SUF##ISA *b1, fg_v##SUF##ISA *b2,               \
    fg_v##SUF##ISA *b3) {                                                     \
    typedef fg_v##SUF##ISA V;                                                 \
    const ptrdiff_t mg = (ptrdiff_t)((size_t)g & 63) / (ptrdiff_t)sizeof(T);  \
    const ptrdiff_t mp = (ptrdiff_t)((size_t)p & 63) / (ptrdiff_t)sizeof(T);  \
    const ptrdiff_t m = mg < mp ? mg : mp;                                    \
    const T *ga = g - mg, *pa = p - mp;                                       \
    I ig, ip;                                                                 \
    R gx, px, gb, pb;                                                         \
    V v, S0 = *s0, S1 = *s1, S2 = *s2, S3 = *s3;                              \
    V B0 = *b0, B1 = *b1, B2 = *b2, B3 = *b3;                                 \
    ptrdiff_t j = 0;                                                          \
    if ((mg == 0 && mp == 0) || len < 5 * L - m)                              \
        return 0;                                                             \
    ig = IDX(mg);                                                             \
    ip = IDX(mp);                                                             \
    v = (V)LOADU(g);                /* the first: its line starts before g */ \
    S0 += v * ((V)LOADU(p) - mu);                                             \
    B0 += v;                                                                  \
    gx = LOADA(ga + L);                                                       \
    px = LOADA(pa + L);                                                       \
    FG_BWD_LINES_STEP(1, S1, B1, L, LOADA, PERM)                              \
    FG_BWD_LINES_STEP(2, S2, B2, L, LOADA, PERM)                              \
    FG_BWD_LINES_STEP(3, S3, B3, L, LOADA, PERM)                              \
    for (j = 4 * L; j + 5 * L - m <= len; j += 4 * L) {                       \
        FG_BWD_LINES_STEP(0, S0, B0, L, LOADA, PERM)                          \
        FG_BWD_LINES_STEP(1, S1, B1, L, LOADA, PERM)                          \
        FG_BWD_LINES_STEP(2, S2, B2, L, LOADA, PERM)                          \
        FG_BWD_LINES_STEP(3, S3, B3, L, LOADA, PERM)                          \
    }                                                                         \
    *s0 = S0;                                                                 \
    *s1 = S1;                                                                 \
    *s2 = S2;                                                                 \
    *s3 = S3;                                                                 \
    *b0 = B0;                                                                 \
    *b1 = B1;                                                                 \
    *b2 = B2;                                                                 \
    *b3 = B3;                                                                 \
    return j;                                                                 \
}
#define FG_IDX16(m)                                                           \
    _mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5,  \
                                      4, 3, 2, 1, 0),                         \
                     _mm512_set1_epi32((int)(m)))
#define FG_IDX8(m)                                                            \
    _mm512_add_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0),                \
                     _mm512_set1_epi64((long long)(m)))
#define FG_BWD_LINES_64(ISA)                                                  \
FG_BWD_LINES_FN(float, f32, ISA, 16, __m512, __m512i, _mm512_load_ps,         \
                _mm512_loadu_ps, _mm512_permutex2var_ps, FG_IDX16)            \
FG_BWD_LINES_FN(double, f64, ISA, 8, __m512d, __m512i, _mm512_load_pd,        \
                _mm512_loadu_pd, _mm512_permutex2var_pd, FG_IDX8)
#define FG_BWD_LINES_NONE(T, SUF, ISA)                                        \
FG_WIDE_INL ptrdiff_t fg_bwd_lines_##SUF##ISA(                                \
    const T *g, const T *p, ptrdiff_t len, T mu, fg_v##SUF##ISA *s0,          \
    fg_v##SUF##ISA *s1, fg_v##SUF##ISA *s2, fg_v##SUF##ISA *s3,               \
    fg_v##SUF##ISA *b0, fg_v##SUF##ISA *b1, fg_v##SUF##ISA *b2,               \
    fg_v##SUF##ISA *b3) {                                                     \
    (void)g, (void)p, (void)len, (void)mu, (void)s0, (void)s1, (void)s2;      \
    (void)s3, (void)b0, (void)b1, (void)b2, (void)b3;                         \
    return 0;                                                                 \
}
#define FG_BWD_LINES_32(ISA)                                                  \
    FG_BWD_LINES_NONE(float, f32, ISA)                                        \
    FG_BWD_LINES_NONE(double, f64, ISA)
#define FG_BWD_LINES_16(ISA) FG_BWD_LINES_32(ISA)
#define FG_VRUNS(T, V, VU, VI, SUF)                                           \
FG_WIDE_INL V fg_ld_##SUF(const T *p) { return *(const VU *)p; }              \
FG_VRUN_SUMS(T, T, V, SUF, SUF, FG_SAME)                                      \
/* Backward: *s = sum g*(p - mu), *b = sum g. */                              \
FG_WIDE_INL void fg_vrun_bwd_##SUF(const T *g, const T *p,                    \
                                               ptrdiff_t len, T mu,           \
                                               double *s, double *b) {        \
    enum { VL = sizeof(V) / sizeof(T) };                                      \
    V s0 = {0}, s1 = {0}, b0 = {0}, b1 = {0}, v;                              \
    ptrdiff_t j = 0;                                                          \
    double ts = 0, tb = 0;                                                    \
    if (len >= 4 * VL) {    /* long runs: four chains */                      \
        V s2 = {0}, s3 = {0}, b2 = {0}, b3 = {0};                             \
        j = fg_bwd_lines_##SUF(g, p, len, mu, &s0, &s1, &s2, &s3, &b0, &b1,   \
                               &b2, &b3);                                     \
        for (; j + 4 * VL <= len; j += 4 * VL) {                              \
            FG_BWD_STEP(VU, s0, b0, 0)                                        \
            FG_BWD_STEP(VU, s1, b1, VL)                                       \
            FG_BWD_STEP(VU, s2, b2, 2 * VL)                                   \
            FG_BWD_STEP(VU, s3, b3, 3 * VL)                                   \
        }                                                                     \
        s0 += s2;                                                             \
        s1 += s3;                                                             \
        b0 += b2;                                                             \
        b1 += b3;                                                             \
    }                                                                         \
    for (; j + 2 * VL <= len; j += 2 * VL) {                                  \
        FG_BWD_STEP(VU, s0, b0, 0)                                            \
        FG_BWD_STEP(VU, s1, b1, VL)                                           \
    }                                                                         \
    if (j + VL <= len) {                                                      \
        FG_BWD_STEP(VU, s0, b0, 0)                                            \
        j += VL;                                                              \
    }                                                                         \
    if (FG_TAIL_VEC(len, j, VL)) {                                            \
        VI on;                                                                \
        FG_LAST_LANES(on, T, VL, len - j)                                     \
        v = FG_MASKED(V, VI, *(const VU *)(g + len - VL), on);                \
        s1 += v * (*(const VU *)(p + len - VL) - mu);                         \
        b1 += v;                                                              \
        j = len;                                                              \
    }                                                                         \
    for (; j < len; j++) {                                                    \
        ts += (double)g[j] * ((double)p[j] - mu);                             \
        tb += g[j];                                                           \
    }                                                                         \
    *s = ts + fg_vsum_##SUF(s0 + s1);                                         \
    *b = tb + fg_vsum_##SUF(b0 + b1);                                         \
}

/* ---- backward ----
 * Per channel: ds = sum dy * (x - mean), db = sum dy (vector runs of at
 * most FG_BWD_BLK values, as in fg_moments, added up in float64);
 * then dx = a*dy + B*(x - mean) + D. */
#define FG_BWD_BLK 8192
/* float32 channel runs shorter than this go fg_runs_bwd_vl's way (runs of
 * 36-50 values took 1.01-1.02x the time that way). */
#define FG_BWD_SHORT 32
/* fg_runs_bwd_vl's runs of a vector or more at AVX-512 (a line or more
 * each) request dy and x this many values (4 KiB) ahead. Without, the
 * hardware's prefetch of 128x768x16 G=1 depended on where fg_bwd_slabs'
 * code landed (1.00x or 1.06-1.18x the time, warm or cold, the same
 * instructions); with, 0.94-1.05x warm, 0.95-0.99x cold; cold 4x4 maps
 * 0.83x, 5x5 0.91x, warm ones 1.00-1.05x. At AVX2 and SSE2 it cost
 * 1.02-1.08x (benchmarks/ab.py --repeats 2, against 36222a2). */
#define FG_RUNS_AHEAD 1024

/* Float32 lanes overflow where |dy * (x - mean)| sums pass ~3e38: such a
 * run is summed again in float64 lanes (fg_vrun_bwd64; a NaN sum may come
 * from lanes overflowing both ways, so NaN takes it too). */
#define FG_OVERFLOWED(AT, s, b)                                               \
    (sizeof(AT) < sizeof(double) && !((fabs(s) <= 1e300) & (fabs(b) <= 1e300)))

/* The backward's sums of ng consecutive slabs' Cg float32 channel runs of
 * HW < FG_BWD_SHORT values each (slab g's mean mean[g]) into ds, db:
 * float32 lanes per run, the lane sums of VL runs at a time in one float32
 * transposing tree (fg_vsums_t32, across slabs), then widened. A run
 * shorter than a vector takes one vector from its start with the lanes of
 * the next runs off in dy and in the product (so nothing of theirs, not
 * even an infinity, enters), copied through a buffer where it would pass
 * the block's end, so each run's lanes, and bits, do not depend on where
 * the block ends; a longer run its whole vectors and a last one masked as
 * FG_TAIL_VEC's. Runs whose float32 sums overflowed are summed again in
 * float64 lanes. With every value widened to float64 first and a float64
 * tree per VLD runs, the backward took 1.2-1.45x the time (AVX-512, AVX2:
 * 2x2 to 5x5 maps, 4x6, 128x768x16 G=32; 1.4-2.3x at the SSE2 level). */
#define FG_RUNS_BWD_VL(ISA)                                                   \
FG_WIDE_INL void fg_runs_tree##ISA(const fg_vf32##ISA *sv,                   \
                                   const fg_vf32##ISA *bv, double *ds,        \
                                   double *db, ptrdiff_t n) {                 \
    enum { VL = sizeof(fg_vf32##ISA) / sizeof(float),                         \
           VLD = sizeof(fg_vf64##ISA) / sizeof(double) };                     \
    const fg_vf32##ISA st = fg_vsums_t32##ISA(sv), bt = fg_vsums_t32##ISA(bv);\
    fg_vf64##ISA lo, hi;                                                      \
    double s[VL], b[VL];                                                      \
    ptrdiff_t c;                                                              \
    fg_split##ISA(st, &lo, &hi);                                              \
    *(fg_vf64u##ISA *)s = lo;                                                 \
    *(fg_vf64u##ISA *)(s + VLD) = hi;                                         \
    fg_split##ISA(bt, &lo, &hi);                                              \
    *(fg_vf64u##ISA *)b = lo;                                                 \
    *(fg_vf64u##ISA *)(b + VLD) = hi;                                         \
    if (n == VL) {                                                            \
        *(fg_vf64u##ISA *)ds = *(fg_vf64u##ISA *)s;                           \
        *(fg_vf64u##ISA *)(ds + VLD) = *(fg_vf64u##ISA *)(s + VLD);           \
        *(fg_vf64u##ISA *)db = *(fg_vf64u##ISA *)b;                           \
        *(fg_vf64u##ISA *)(db + VLD) = *(fg_vf64u##ISA *)(b + VLD);           \
    } else                                                                    \
        for (c = 0; c < n; c++) {                                             \
            ds[c] = s[c];                                                     \
            db[c] = b[c];                                                     \
        }                                                                     \
}                                                                             \
FG_WIDE_INL void fg_runs_bwd_vl##ISA(const float *dy, const float *x,         \
                                     ptrdiff_t ng, ptrdiff_t Cg,              \
                                     ptrdiff_t HW, const float *mean,         \
                                     double *ds, double *db) {                \
    enum { VL = sizeof(fg_vf32##ISA) / sizeof(float) };                       \
    const ptrdiff_t end = ng * Cg * HW - VL;                                  \
    fg_vf32##ISA sv[VL], bv[VL], v, s0, b0, bad = {0};                        \
    ptrdiff_t g, c, j, o, f = 0, at = 0;                                      \
    fg_vi32##ISA on, first;                                                   \
    FG_LAST_LANES(on, float, VL, HW % VL)                                     \
    FG_LAST_LANES(first, float, VL, HW < VL ? VL - HW : 0)                    \
    first = ~first;                                                           \
    if (HW < VL)    /* the run in its first lanes, the others off */          \
        FG_RUNS_EACH(ISA, {                                                   \
            const float *gp = dy + o, *pp = x + o;                            \
            float tg[VL] = {0}, tx[VL] = {0};                                 \
            if (o > end) {  /* the vector would pass the block's end */       \
                __builtin_memcpy(tg, gp, HW * sizeof(float));                 \
                __builtin_memcpy(tx, pp, HW * sizeof(float));                 \
                gp = tg;                                                      \
                pp = tx;                                                      \
            }                                                                 \
            b0 = FG_MASKED(fg_vf32##ISA, fg_vi32##ISA,                        \
                           *(const fg_vf32u##ISA *)gp, first);                \
            s0 = FG_MASKED(fg_vf32##ISA, fg_vi32##ISA,                        \
                           b0 * (*(const fg_vf32u##ISA *)pp - mu), first);    \
        })                                                                    \
    else                                                                      \
        FG_RUNS_EACH(ISA, {                                                   \
            const float *gp = dy + o, *pp = x + o;                            \
            if (sizeof(fg_vf32##ISA) == 64) {   /* a line or more a run */    \
                __builtin_prefetch(gp + FG_RUNS_AHEAD);                       \
                __builtin_prefetch(pp + FG_RUNS_AHEAD);                       \
            }                                                                 \
            b0 = *(const fg_vf32u##ISA *)gp;                                  \
            s0 = b0 * (*(const fg_vf32u##ISA *)pp - mu);                      \
            for (j = VL; j + VL <= HW; j += VL) {                             \
                v = *(const fg_vf32u##ISA *)(gp + j);                         \
                s0 += v * (*(const fg_vf32u##ISA *)(pp + j) - mu);            \
                b0 += v;                                                      \
            }                                                                 \
            if (j < HW) {                                                     \
                v = FG_MASKED(fg_vf32##ISA, fg_vi32##ISA,                     \
                              *(const fg_vf32u##ISA *)(gp + HW - VL), on);    \
                s0 += v * (*(const fg_vf32u##ISA *)(pp + HW - VL) - mu);      \
                b0 += v;                                                      \
            }                                                                 \
        })                                                                    \
    if (f) {                                                                  \
        for (c = f; c < VL; c++)                                              \
            sv[c] = bv[c] = (fg_vf32##ISA){0};                                \
        fg_runs_tree##ISA(sv, bv, ds + at, db + at, f);                       \
    }                                                                         \
    if (fg_vsum_f32##ISA(bad) == 0)                                           \
        return;                                                               \
    for (c = 0; c < ng * Cg; c++)                                             \
        if (FG_OVERFLOWED(float, ds[c], db[c]))                               \
            fg_vrun_bwd64_f32##ISA(dy + c * HW, x + c * HW, HW,               \
                                   mean[c / Cg], ds + c, db + c);             \
}
/* fg_runs_bwd_vl's loop over the runs: the code given sets s0, b0 for the
 * run at o (its slab's mean mu); they go into the next tree, each full
 * tree into ds, db; bad gathers NaN from any lane that overflowed. */
#define FG_RUNS_EACH(ISA, ...)                                                \
    for (g = 0; g < ng; g++) {                                                \
        const float mu = mean[g];                                             \
        for (c = 0; c < Cg; c++) {                                            \
            o = (g * Cg + c) * HW;                                            \
            __VA_ARGS__                                                       \
            sv[f] = s0;                                                       \
            bv[f] = b0;                                                       \
            bad += s0 * 0 + b0 * 0;                                           \
            if (++f == VL) {                                                  \
                fg_runs_tree##ISA(sv, bv, ds + at, db + at, VL);              \
                at += VL;                                                     \
                f = 0;                                                        \
            }                                                                 \
        }                                                                     \
    }

/* Whether fg_runs_bwd_vl takes the runs: float32, HW < FG_BWD_SHORT. */
#define FG_RUNS_VL(T, HW) (sizeof(T) == sizeof(float) && (HW) < FG_BWD_SHORT)
/* One NCHW slab: Cg channels of HW values each. */
#define FG_BWD_SUMS(T, AT, SUF, ISA)                                          \
FG_WIDE_FN void fg_bwd_sums_##SUF##ISA(const T *dy, const T *x, ptrdiff_t Cg, \
                                       ptrdiff_t HW, T mu, double *ds,        \
                                       double *db) {                          \
    ptrdiff_t c, b0;                                                          \
    if (FG_RUNS_VL(T, HW)) {                                                  \
        const float m = (float)mu;                                            \
        fg_runs_bwd_vl##ISA((const float *)dy, (const float *)x, 1, Cg, HW,   \
                            &m, ds, db);                                      \
        return;                                                               \
    }                                                                         \
    for (c = 0; c < Cg; c++) {                                                \
        const T *g = dy + c * HW, *p = x + c * HW;                            \
        double ts, tb, s, b;                                                  \
        if (HW <= FG_BWD_BLK) {     /* short runs (7x7): one call */          \
            fg_vrun_bwd_##SUF##ISA(g, p, HW, mu, &ts, &tb);                   \
        } else {                                                              \
            ts = tb = 0;                                                      \
            for (b0 = 0; b0 < HW; b0 += FG_BWD_BLK) {                         \
                fg_vrun_bwd_##SUF##ISA(g + b0, p + b0,                        \
                                  HW - b0 < FG_BWD_BLK ? HW - b0 : FG_BWD_BLK,\
                                  mu, &s, &b);                                \
                ts += s;                                                      \
                tb += b;                                                      \
            }                                                                 \
        }                                                                     \
        if (FG_OVERFLOWED(AT, ts, tb))                                        \
            fg_vrun_bwd64_##SUF##ISA(g, p, HW, mu, &ts, &tb);                 \
        ds[c] = ts;                                                           \
        db[c] = tb;                                                           \
    }                                                                         \
}

/* The NCHW slab backward in one function per ISA: per slab its channels'
 * sums (fg_bwd_sums), B, D (fg_bwd_coefs), the sums into its row block's
 * rows (fg_acc_rows) and dx (fg_bwd_dx). fg_bwd_slabs takes ng consecutive
 * slabs of one sample, nb at a time (nb from the slabs' size: their values
 * stay in L1 between the passes), each step over the nb slabs before the
 * next, so the slabs' chains of reductions, divisions and stores overlap.
 * A slab at a time through Cython, with a dispatch per call, InstanceNorm
 * of 64x64x50 spent 27% of its backward waiting on the divisions, and ran
 * at 0.64x PyTorch's speed. The split path (slabs shared among threads)
 * calls the same pieces one at a time: the same bits. */
/* Streamed dx requests the next block's dy and x as it goes (float32:
 * 32x256x28x28 0.90-0.98x the time, cold 0.90-0.93x, 64x128x56x56
 * 0.90-0.93x, 8x256x64x64 0.89-0.96x, 2x128x32x32x32 0.93-1.02x; float64
 * took 0.90-0.99x on 64x64 maps but 1.03-1.10x on 28x28 at one thread,
 * and goes without). */
#define FG_BWD_AHEAD(T, n)                                                    \
    (stream && sizeof(T) == sizeof(float) && g0 + k < ng ? (n) : 0)
#define FG_BWD_SLAB_BYTES 16384
#define FG_BWD_SLAB_MAX 2048
#define FG_BWD_NB 16
/* A slab's m channel sums into its row block's: rs*ds and db stored (the
 * block's first sample) or added; the parameter gradients are the blocks'
 * rows added in order (fg_param_grads). FG_ACC_RUN: the loops (c). */
#define FG_ACC_RUN(bs, bb, ds, db, rs, m, first)                               \
    if (first)                                                                \
        FG_SIMD for (c = 0; c < (m); c++) {                                   \
            (bs)[c] = (rs) * (ds)[c];                                         \
            (bb)[c] = (db)[c];                                                \
        }                                                                     \
    else                                                                      \
        FG_SIMD for (c = 0; c < (m); c++) {                                   \
            (bs)[c] = (bs)[c] + (rs) * (ds)[c];                               \
            (bb)[c] = (bb)[c] + (db)[c];                                      \
        }
#define FG_ACC_ROWS(ISA)                                                      \
FG_WIDE_FN void fg_acc_rows##ISA(double *bs, double *bb, const double *ds,    \
                                  const double *db, double rs, ptrdiff_t m,   \
                                  int first) {                                \
    ptrdiff_t c;                                                              \
    FG_ACC_RUN(bs, bb, ds, db, rs, m, first)                                  \
}                                                                             \
FG_ACC_GROUPS(float, f32, ISA)                                                \
FG_ACC_GROUPS(double, f64, ISA)
/* A sample's per-channel sums ds, db (G groups of Cg) into its row block's
 * rows bs, bb, each group's scaled by its rstd rs[g]: fg_acc_rows a group,
 * one call a sample. */
#define FG_ACC_GROUPS(T, SUF, ISA)                                            \
FG_WIDE_FN void fg_acc_groups_##SUF##ISA(double *bs, double *bb,              \
                                         const double *ds, const double *db,  \
                                         const T *rs, ptrdiff_t G,            \
                                         ptrdiff_t Cg, int first) {           \
    ptrdiff_t g;                                                              \
    for (g = 0; g < G; g++)                                                   \
        fg_acc_rows##ISA(bs + g * Cg, bb + g * Cg, ds + g * Cg, db + g * Cg,  \
                         (double)rs[g], Cg, first);                           \
}
/* fg_bwd_coefs: B, D of dx = w*rstd*dy + B*(x - mean) + D for one group,
 * from its channels' sums ds = sum dy*(x - mean), db = sum dy (M values).
 * Four partial sums a side: as one chain of dependent adds, a group of
 * 4096 channels (G = 1) took 4 us a sample, most of a (4, 4096) backward.
 * fg_bwd_dx: dx of Cg channels of HW values, a*dy + B*(x - mu) + D with
 * a = w[c]*rs. */
/* fg_bwd_ones' and fg_bwd_tiny's slab s of L values once its sums ds, db
 * are known: B, D, the row sums and dx. */
#define FG_BWD_ONE(ISA)                                                       \
FG_WIDE_INL void fg_bwd_one##ISA(const float *dy, const float *x, float *dx,  \
                                 ptrdiff_t s, ptrdiff_t L, const float *mean, \
                                 const float *rstd, const float *w,           \
                                 double *ps, double *pb, int first,           \
                                 int stream, double ds, double db) {          \
    enum { VL = sizeof(fg_vf32##ISA) / sizeof(float) };                       \
    const ptrdiff_t o = s * L;                                                \
    const float *gp = dy + o, *pp = x + o;                                    \
    float *op = dx + o;                                                       \
    const float mu = mean[s], rs = rstd[s], a = w[s] * rs;                    \
    const double drs = rs, M = (double)L;                                     \
    const float B = (float)(-drs * drs * drs * (w[s] * ds) / M);              \
    const float D = (float)(-drs * (w[s] * db) / M);                          \
    ptrdiff_t i;                                                              \
    ps[s] = first ? drs * ds : ps[s] + drs * ds;                              \
    pb[s] = first ? db : pb[s] + db;                                          \
    if (stream) {                                                             \
        fg_nt_dx_f32(gp, pp, op, L, a, B, mu, D, 0);                          \
        return;                                                               \
    }                                                                         \
    for (i = 0; i + VL <= L; i += VL)                                         \
        *(fg_vf32u##ISA *)(op + i) =                                          \
            a * *(const fg_vf32u##ISA *)(gp + i) +                            \
            B * (*(const fg_vf32u##ISA *)(pp + i) - mu) + D;                  \
    for (; i < L; i++)                                                        \
        op[i] = a * gp[i] + B * (pp[i] - mu) + D;                             \
}                                                                             \
/* Slabs of one channel under a vector (3x3 maps): their sums in float64,  \
 * value by value. Through fg_bwd_slabs' pieces, 64x256x3x3 G=256 ran at   \
 * 0.45x PyTorch's speed. */                                                \
FG_WIDE_FN void fg_bwd_tiny##ISA(const float *dy, const float *x, float *dx,  \
                                 ptrdiff_t ng, ptrdiff_t L,                   \
                                 const float *mean, const float *rstd,        \
                                 const float *w, double *ps, double *pb,      \
                                 int first, int stream) {                     \
    ptrdiff_t s, j;                                                           \
    for (s = 0; s < ng; s++) {                                                \
        const float *gp = dy + s * L, *pp = x + s * L;                        \
        const double mu = mean[s];                                            \
        double ds = 0, db = 0;                                                \
        for (j = 0; j < L; j++) {                                             \
            ds += (double)gp[j] * ((double)pp[j] - mu);                       \
            db += gp[j];                                                      \
        }                                                                     \
        fg_bwd_one##ISA(dy, x, dx, s, L, mean, rstd, w, ps, pb, first,        \
                        stream, ds, db);                                      \
    }                                                                         \
    if (stream)                                                               \
        fg_sfence();                                                          \
}
/* The NCHW backward of float32 slabs of one channel (Cg == 1: InstanceNorm)
 * of L values, from one vector to FG_BWD_SLAB_MAX bytes of dy and x: per
 * slab its sums in float32 lanes over whole vectors, the last vector
 * ending at the slab's end with the lanes already summed masked off (as
 * fg_vrun_bwd's tail), widened to float64 lanes; per VLD slabs one
 * transposing tree for each sum (fg_vsums_t); then B, D, the row sums and
 * dx (fg_bwd_one) as fg_bwd_coefs, fg_acc_rows and fg_bwd_dx compute
 * them; slabs under a vector go fg_bwd_tiny's way. Through
 * those pieces a slab at a time, a slab's calls, reductions and peeled
 * loops took most of the time: 64x64x50 (G = 64) ran at 0.75-0.82x
 * PyTorch's backward speed. Every such slab takes this path, whatever the
 * batch or thread count (one channel is never split among threads), so
 * its bits do not depend on them. */
#define FG_BWD_ONES(ISA)                                                      \
FG_WIDE_INL void fg_bwd_ones##ISA(const float *dy, const float *x, float *dx, \
                                  ptrdiff_t ng, ptrdiff_t L,                  \
                                  const float *mean, const float *rstd,       \
                                  const float *w, double *ps, double *pb,     \
                                  int first, int stream) {                    \
    enum { VL = sizeof(fg_vf32##ISA) / sizeof(float),                         \
           VLD = sizeof(fg_vf64##ISA) / sizeof(double) };                     \
    ptrdiff_t g0, g, j;                                                       \
    fg_vi32##ISA on;                                                          \
    FG_LAST_LANES(on, float, VL, L % VL)                                      \
    for (g0 = 0; g0 < ng; g0 += VLD) {                                        \
        fg_vf64##ISA sv[VLD], bv[VLD], lo, hi;                                \
        double ds[VLD], db[VLD];                                              \
        for (g = 0; g < VLD; g++) {                                           \
            const float *gp = dy + (g0 + g) * L, *pp = x + (g0 + g) * L;      \
            fg_vf32##ISA s0 = {0}, s1 = {0}, b0 = {0}, b1 = {0}, v;           \
            float mu;                                                         \
            if (g0 + g >= ng) {                                               \
                sv[g] = bv[g] = (fg_vf64##ISA){0};                            \
                continue;                                                     \
            }                                                                 \
            mu = mean[g0 + g];                                                \
            for (j = 0; j + 2 * VL <= L; j += 2 * VL) {                       \
                v = *(const fg_vf32u##ISA *)(gp + j);                         \
                s0 += v * (*(const fg_vf32u##ISA *)(pp + j) - mu);            \
                b0 += v;                                                      \
                v = *(const fg_vf32u##ISA *)(gp + j + VL);                    \
                s1 += v * (*(const fg_vf32u##ISA *)(pp + j + VL) - mu);       \
                b1 += v;                                                      \
            }                                                                 \
            if (j + VL <= L) {                                                \
                v = *(const fg_vf32u##ISA *)(gp + j);                         \
                s0 += v * (*(const fg_vf32u##ISA *)(pp + j) - mu);            \
                b0 += v;                                                      \
                j += VL;                                                      \
            }                                                                 \
            if (j < L) {                                                      \
                v = FG_MASKED(fg_vf32##ISA, fg_vi32##ISA,                     \
                              *(const fg_vf32u##ISA *)(gp + L - VL), on);     \
                s1 += v * (*(const fg_vf32u##ISA *)(pp + L - VL) - mu);       \
                b1 += v;                                                      \
            }                                                                 \
            fg_split##ISA(s0 + s1, &lo, &hi);                                 \
            sv[g] = lo + hi;                                                  \
            fg_split##ISA(b0 + b1, &lo, &hi);                                 \
            bv[g] = lo + hi;                                                  \
        }                                                                     \
        *(fg_vf64u##ISA *)ds = fg_vsums_t##ISA(sv);                           \
        *(fg_vf64u##ISA *)db = fg_vsums_t##ISA(bv);                           \
        for (g = 0; g < VLD && g0 + g < ng; g++) {                            \
            if (FG_OVERFLOWED(float, ds[g], db[g]))                           \
                fg_vrun_bwd64_f32##ISA(dy + (g0 + g) * L, x + (g0 + g) * L,   \
                                       L, mean[g0 + g], ds + g, db + g);      \
            fg_bwd_one##ISA(dy, x, dx, g0 + g, L, mean, rstd, w, ps, pb,      \
                            first, stream, ds[g], db[g]);                     \
        }                                                                     \
    }                                                                         \
    if (stream)                                                               \
        fg_sfence();                                                          \
}
#define FG_BWD_SLABS(T, SUF, ISA)                                             \
FG_WIDE_INL void fg_bwd_coefs_in_##SUF##ISA(const T *w, double rs,          \
                                            const double *ds,                 \
                                            const double *db, ptrdiff_t Cg,   \
                                            double iM, T *B, T *D) {          \
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;    \
    ptrdiff_t c = 0;                                                          \
    if (Cg % 4 == 0 && fg_wdots_##SUF##ISA(w, ds, db, Cg, &a0, &b0)) {        \
        *B = (T)(-rs * rs * rs * a0 * iM);                                    \
        *D = (T)(-rs * b0 * iM);                                              \
        return;                                                               \
    }                                                                         \
    for (; c + 4 <= Cg; c += 4) {                                             \
        a0 += w[c] * ds[c];                                                   \
        a1 += w[c + 1] * ds[c + 1];                                           \
        a2 += w[c + 2] * ds[c + 2];                                           \
        a3 += w[c + 3] * ds[c + 3];                                           \
        b0 += w[c] * db[c];                                                   \
        b1 += w[c + 1] * db[c + 1];                                           \
        b2 += w[c + 2] * db[c + 2];                                           \
        b3 += w[c + 3] * db[c + 3];                                           \
    }                                                                         \
    for (; c < Cg; c++) {                                                     \
        a0 += w[c] * ds[c];                                                   \
        b0 += w[c] * db[c];                                                   \
    }                                                                         \
    *B = (T)(-rs * rs * rs * ((a0 + a1) + (a2 + a3)) * iM);                   \
    *D = (T)(-rs * ((b0 + b1) + (b2 + b3)) * iM);                             \
}                                                                             \
FG_WIDE_FN void fg_bwd_coefs_##SUF##ISA(const T *w, double rs,               \
                                        const double *ds, const double *db,   \
                                        ptrdiff_t Cg, double M, T *B, T *D) { \
    fg_bwd_coefs_in_##SUF##ISA(w, rs, ds, db, Cg, 1.0 / M, B, D);             \
}                                                                             \
/* B, D of a sample's G groups into coef (pairs): one call a sample (a     \
 * call a group took a seventh of the channels-last backward of 2x2 maps) */ \
FG_WIDE_FN void fg_bwd_coefs_groups_##SUF##ISA(const T *w, const T *rstd,     \
                                               const double *ds,              \
                                               const double *db, ptrdiff_t G, \
                                               ptrdiff_t Cg, double M,        \
                                               T *coef) {                     \
    const double iM = 1.0 / M;                                                \
    ptrdiff_t g;                                                              \
    for (g = 0; g < G; g++)                                                   \
        fg_bwd_coefs_in_##SUF##ISA(w + g * Cg, rstd[g], ds + g * Cg,          \
                                   db + g * Cg, Cg, iM, coef + 2 * g,         \
                                   coef + 2 * g + 1);                         \
}                                                                             \
FG_WIDE_FN void fg_bwd_dx_##SUF##ISA(const T *dy, const T *x, T *dx,         \
                                     ptrdiff_t Cg, ptrdiff_t HW, T rs,        \
                                     const T *w, T B, T mu, T D,              \
                                     int stream, ptrdiff_t ahead) {           \
    ptrdiff_t c, i;                                                           \
    if (sizeof(T) == sizeof(float) && !stream &&                              \
        HW * sizeof(T) >= sizeof(fg_vf32##ISA) &&                             \
        HW * sizeof(T) <= 4 * sizeof(fg_vf32##ISA) &&                         \
        HW * sizeof(T) % sizeof(fg_vf32##ISA) * 4 <= sizeof(fg_vf32##ISA)) {  \
        /* whole vectors, the rest (at most a quarter vector: longer rests    \
         * took 1.01-1.09x the time value by value) one by one */             \
        enum { VL = sizeof(fg_vf32##ISA) / sizeof(float) };                   \
        const float *g = (const float *)dy, *p = (const float *)x;            \
        float *o = (float *)dx;                                               \
        const ptrdiff_t nv = HW / VL * VL;                                    \
        for (c = 0; c < Cg; c++) {                                            \
            const float a = (float)(w[c] * rs);                               \
            for (i = c * HW; i < c * HW + nv; i += VL)                        \
                *(fg_vf32u##ISA *)(o + i) =                                   \
                    a * *(const fg_vf32u##ISA *)(g + i) +                     \
                    (float)B * (*(const fg_vf32u##ISA *)(p + i) - (float)mu)  \
                    + (float)D;                                               \
            if (nv < HW)                                                      \
                for (; i < c * HW + HW; i++)                                  \
                    o[i] = a * g[i] + (float)B * (p[i] - (float)mu)           \
                           + (float)D;                                        \
        }                                                                     \
        return;                                                               \
    }                                                                         \
    for (c = 0; c < Cg; c++) {                                                \
        const T a = w[c] * rs, *g = dy + c * HW, *p = x + c * HW;             \
        T *o = dx + c * HW;                                                   \
        if (stream)                                                           \
            fg_nt_dx_##SUF(g, p, o, HW, a, B, mu, D, ahead);                  \
        else                                                                  \
            FG_LINE_RUN(o, HW, o[i] = a * g[i] + B * (p[i] - mu) + D)         \
    }                                                                         \
    if (stream)                                                               \
        fg_sfence();                                                          \
}                                                                             \
FG_WIDE_FN void fg_bwd_slabs_##SUF##ISA(const T *dy, const T *x, T *dx,       \
                                        ptrdiff_t ng, ptrdiff_t Cg,           \
                                        ptrdiff_t HW, const T *mean,          \
                                        const T *rstd, const T *w,            \
                                        double *ps, double *pb, double *tmp,  \
                                        ptrdiff_t cap, int first,             \
                                        int stream) {                         \
    const ptrdiff_t L = Cg * HW;                                              \
    const double M = (double)L;                                               \
    const ptrdiff_t bytes = 2 * L * (ptrdiff_t)sizeof(T);                     \
    ptrdiff_t nb = bytes > FG_BWD_SLAB_MAX ? 1 : FG_BWD_SLAB_BYTES / bytes;    \
    ptrdiff_t g0, g;                                                          \
    T B[FG_BWD_NB], D[FG_BWD_NB];                                             \
    const int perm = !stream && FG_PERM_OK(T, sizeof(fg_vf32##ISA), Cg, HW);  \
    const int vl = FG_RUNS_VL(T, HW);                                         \
    if (sizeof(T) == sizeof(float) && Cg == 1 && bytes <= FG_BWD_SLAB_MAX) {  \
        (HW * sizeof(float) < sizeof(fg_vf32##ISA) ? fg_bwd_tiny##ISA         \
                                                    : fg_bwd_ones##ISA)(      \
            (const float *)dy, (const float *)x, (float *)dx, ng, HW,         \
            (const float *)mean, (const float *)rstd, (const float *)w, ps,   \
            pb, first, stream);                                               \
        return;                                                               \
    }                                                                         \
    nb = nb < 1 ? 1 : nb > FG_BWD_NB ? FG_BWD_NB : nb;                        \
    nb = nb * Cg > cap ? (cap / Cg > 1 ? cap / Cg : 1) : nb;                  \
    for (g0 = 0; g0 < ng; g0 += nb) {                                         \
        const ptrdiff_t k = ng - g0 < nb ? ng - g0 : nb, o = g0 * L;          \
        double *ts = tmp, *tb = tmp + k * Cg;                                 \
        if (vl)     /* the k slabs' runs in one call: whole trees */          \
            fg_runs_bwd_vl##ISA((const float *)dy + o, (const float *)x + o,  \
                                k, Cg, HW, (const float *)mean + g0, ts, tb); \
        else                                                                  \
            for (g = 0; g < k; g++)                                           \
                fg_bwd_sums_##SUF##ISA(dy + o + g * L, x + o + g * L, Cg, HW, \
                                       mean[g0 + g], ts + g * Cg,             \
                                       tb + g * Cg);                          \
        for (g = 0; g < k; g++)                                               \
            fg_bwd_coefs_##SUF##ISA(w + (g0 + g) * Cg, rstd[g0 + g],          \
                                    ts + g * Cg, tb + g * Cg, Cg, M, B + g,   \
                                    D + g);                                   \
        for (g = 0; g < k; g++)                                               \
            fg_acc_rows##ISA(ps + (g0 + g) * Cg, pb + (g0 + g) * Cg,          \
                             ts + g * Cg, tb + g * Cg, rstd[g0 + g], Cg,      \
                             first);                                          \
        for (g = 0; g < k; g++)                                               \
            if (perm)                                                         \
                fg_perm_dx_f32##ISA((const float *)dy + o + g * L,            \
                                    (const float *)x + o + g * L,             \
                                    (float *)dx + o + g * L, L, Cg, HW,       \
                                    (float)rstd[g0 + g],                      \
                                    (const float *)w + (g0 + g) * Cg,         \
                                    (float)B[g], (float)mean[g0 + g],         \
                                    (float)D[g]);                             \
            else                                                              \
                fg_bwd_dx_##SUF##ISA(dy + o + g * L, x + o + g * L,           \
                                     dx + o + g * L, Cg, HW, rstd[g0 + g],    \
                                     w + (g0 + g) * Cg, B[g], mean[g0 + g],   \
                                     D[g], stream, FG_BWD_AHEAD(T, k * L));   \
    }                                                                         \
}

/* dx of `rows` rows from dy, x, dx on, four rows a step so each parameter
 * vector is loaded once for four */
#define FG_BWD_ROWS_DX(T)                                                     \
    for (p = 0; p + 4 <= rows; p += 4)                                        \
        FG_SIMD for (c = 0; c < C; c++) {                                     \
            const T ac = a[c], bb = bc[c], m = muc[c], d = dc[c];             \
            for (r = 0; r < 4; r++) {                                         \
                const ptrdiff_t i = (p + r) * C + c;                          \
                dx[i] = ac * dy[i] + bb * (x[i] - m) + d;                     \
            }                                                                 \
        }                                                                     \
    for (; p < rows; p++)                                                     \
        FG_SIMD for (c = 0; c < C; c++) {                                     \
            const ptrdiff_t i = p * C + c;                                    \
            dx[i] = a[c] * dy[i] + bc[c] * (x[i] - muc[c]) + dc[c];           \
        }

/* FG_BWD_ROWS_DX a row at a time, requesting dy's and x's values `ahead`
 * on with the store of each 64 bytes (as FG_ROWS_BODY_REQ): the same
 * arithmetic per value. */
#define FG_BWD_ROWS_DX_REQ(T)                                                 \
    for (p = 0; p < rows; p++) {                                              \
        const ptrdiff_t o_ = p * C;                                           \
        for (r = 0; r + 64 / (ptrdiff_t)sizeof(T) <= C;                       \
             r += 64 / (ptrdiff_t)sizeof(T)) {                                \
            __builtin_prefetch(dy + o_ + r + ahead, 0, 2);                    \
            __builtin_prefetch(x + o_ + r + ahead, 0, 2);                     \
            FG_SIMD for (c = r; c < r + 64 / (ptrdiff_t)sizeof(T); c++) {     \
                const ptrdiff_t i = o_ + c;                                   \
                dx[i] = a[c] * dy[i] + bc[c] * (x[i] - muc[c]) + dc[c];       \
            }                                                                 \
        }                                                                     \
        FG_SIMD for (c = r; c < C; c++) {                                     \
            const ptrdiff_t i = o_ + c;                                       \
            dx[i] = a[c] * dy[i] + bc[c] * (x[i] - muc[c]) + dc[c];           \
        }                                                                     \
    }

/* Backward for rank-2 input (HW == 1: one value per channel): dx of the
 * `ng` consecutive groups of one sample, and the sample's parameter-gradient
 * terms rstd*dy*(x-mean) and dy per channel stored into (acc == 0) or added
 * to (acc != 0) a row block's partial sums ps, pb (summed by fg_param_grads
 * with rstd == NULL). A group's sums go FG_SMALL_CG channels at a time
 * through p1, p2. Groups above FG_SMALL_CG values (LayerNorm-wide, G = 1)
 * had taken the channels-last path, one row of C per sample, whose
 * per-sample rows of sums fg_param_grads then read a tile at a time down
 * N rows: (256, 4096) G=1 took 28x the forward's time. */
#define FG_SMALL_CG 1024
#define FG_PGT 16
#define FG_BWD_SMALL(T, SUF, ISA)                                             \
FG_WIDE_FN void fg_bwd_small_##SUF##ISA(const T *dy, const T *x, T *dx,       \
                                        ptrdiff_t ng, ptrdiff_t Cg,           \
                                        const T *mean, const T *rstd,         \
                                        const T *w, double *ps, double *pb,   \
                                        int acc) {                            \
    const double M = (double)Cg;                                              \
    double p1[FG_SMALL_CG], p2[FG_SMALL_CG];                                  \
    ptrdiff_t g, c, c0;                                                       \
    for (g = 0; g < ng; g++) {                                                \
        const T mu = mean[g], rs = rstd[g];                                   \
        const double drs = rs;                                                \
        double s1 = 0, s2 = 0;                                                \
        ptrdiff_t o = g * Cg;                                                 \
        T B, D;                                                               \
        for (c0 = 0; c0 < Cg; c0 += FG_SMALL_CG) {                            \
            const ptrdiff_t m = Cg - c0 < FG_SMALL_CG ? Cg - c0       \
                                                      : FG_SMALL_CG;         \
            const ptrdiff_t oc = o + c0;                                      \
            double a1, a2;                                                    \
            if (acc)                                                          \
                FG_SIMD for (c = 0; c < m; c++) {                             \
                    double d = (double)dy[oc + c] * ((double)x[oc + c] - mu); \
                    ps[oc + c] += drs * d;                                    \
                    pb[oc + c] += dy[oc + c];                                 \
                    p1[c] = w[oc + c] * d;                                    \
                    p2[c] = (double)w[oc + c] * dy[oc + c];                   \
                }                                                             \
            else                                                              \
                FG_SIMD for (c = 0; c < m; c++) {                             \
                    double d = (double)dy[oc + c] * ((double)x[oc + c] - mu); \
                    ps[oc + c] = drs * d;                                     \
                    pb[oc + c] = dy[oc + c];                                  \
                    p1[c] = w[oc + c] * d;                                    \
                    p2[c] = (double)w[oc + c] * dy[oc + c];                   \
                }                                                             \
            a1 = fg_vrun_sum_f64##ISA(p1, m);                                 \
            a2 = fg_vrun_sum_f64##ISA(p2, m);                                 \
            s1 = c0 ? s1 + a1 : a1;                                           \
            s2 = c0 ? s2 + a2 : a2;                                           \
        }                                                                     \
        B = (T)(-drs * drs * drs * s1 / M);                                   \
        D = (T)(-drs * s2 / M);                                               \
        FG_SIMD for (c = 0; c < Cg; c++)                                      \
            dx[o + c] = (w[o + c] * rs) * dy[o + c] + B * (x[o + c] - mu) + D;\
    }                                                                         \
}

/* dweight, dbias of groups [g0, g1): sums over the N rows (ascending) of
 * ds and db (C each; the row blocks' sums, already weighted by rstd).
 * Channels go FG_PGT at a time with their sums in registers across the
 * rows (summing into row 0 in memory cost a load and a store per value
 * and row). */
#define FG_PG_ROWS(M)                                                         \
    for (n = 1; n < N; n++) {                                                 \
        const double *restrict sn = ds + n * C + c0;                          \
        const double *restrict bn = db + n * C + c0;                          \
        for (l = 0; l < (M); l++) {                                           \
            as[l] = as[l] + sn[l];                                            \
            ab[l] = ab[l] + bn[l];                                            \
        }                                                                     \
    }
#define FG_PARAM_GRADS(T, SUF)                                                \
FG_CLONES void fg_param_grads_##SUF(ptrdiff_t N, ptrdiff_t C, ptrdiff_t G,    \
                                    ptrdiff_t g0, ptrdiff_t g1,               \
                                    const double *ds, const double *db,       \
                                    T *dw, T *dbias) {                        \
    const ptrdiff_t Cg = C / G;                                               \
    ptrdiff_t c0, c1, n, l, m;                                                \
    for (c0 = g0 * Cg; c0 < g1 * Cg; c0 = c1) {                               \
        double as[FG_PGT], ab[FG_PGT];                                        \
        c1 = c0 + FG_PGT < g1 * Cg ? c0 + FG_PGT : g1 * Cg;                   \
        m = c1 - c0;                                                          \
        for (l = 0; l < m; l++) {                                             \
            as[l] = ds[c0 + l];                                               \
            ab[l] = db[c0 + l];                                               \
        }                                                                     \
        if (m == FG_PGT) {                                                    \
            FG_PG_ROWS(FG_PGT)                                                \
        } else {                                                              \
            FG_PG_ROWS(m)                                                     \
        }                                                                     \
        for (l = 0; l < m; l++) {                                             \
            dw[c0 + l] = (T)as[l];                                            \
            dbias[c0 + l] = (T)ab[l];                                         \
        }                                                                     \
    }                                                                         \
}
FG_PARAM_GRADS(float, f32)
FG_PARAM_GRADS(double, f64)

/* The per-channel vectors a channels-last chunk is applied with, each
 * channel c's entry at (c - q) mod C (the rows kernels' rotation): a
 * group's channels as the two runs either side of q, so that the loops
 * vectorize (written per channel in the Cython caller they took 8% of a
 * 64x7x7x512 forward). Baseline code, not cloned: no FMA, so the bits of
 * any SIMD level. BODY writes channel c to index t. */
#define FG_ROTATED_RUNS(c0, c1, BODY)                                         \
    {                                                                         \
        ptrdiff_t c, t;                                                       \
        if (q <= (c0) || q >= (c1)) {   /* one run: a constant length */      \
            const ptrdiff_t d_ = q <= (c0) ? q : q - C;                       \
            FG_SIMD for (c = (c0); c < (c1); c++) {                           \
                t = c - d_;                                                   \
                BODY                                                          \
            }                                                                 \
        } else {                                                              \
            FG_SIMD for (c = (c0); c < q; c++) {                              \
                t = c + C - q;                                                \
                BODY                                                          \
            }                                                                 \
            FG_SIMD for (c = q; c < (c1); c++) {                              \
                t = c - q;                                                    \
                BODY                                                          \
            }                                                                 \
        }                                                                     \
    }
/* FN, fg_bwd_rows_groups' phase PH, with the common group sizes as
 * constants, so that the loops over a group's channels compile to straight
 * vector code (channels-last backward of 2x2 and 3x3 maps, 32 groups of
 * 8: 0.92-0.94x the time). */
#define FG_CG_SWITCH(FN, PH)                                                  \
    switch (Cg) {                                                             \
    case 4: FN(PH, G, 4, mean, rstd, w, ds, db, bs, bb, first, coef, a, q,    \
               iM); break;                                                    \
    case 8: FN(PH, G, 8, mean, rstd, w, ds, db, bs, bb, first, coef, a, q,    \
               iM); break;                                                    \
    case 16: FN(PH, G, 16, mean, rstd, w, ds, db, bs, bb, first, coef, a, q,  \
                iM); break;                                                   \
    default: FN(PH, G, Cg, mean, rstd, w, ds, db, bs, bb, first, coef, a, q,  \
                iM);                                                          \
    }
/* Four lanes from k on of a vector of T (float32 widened), four values of
 * T at p as float64, and FG_ACC_RUN on four channels (pointers to
 * fg_d4u). */
#define FG_D4(T, ISA, v, k)                                                   \
    (sizeof(T) == sizeof(float)                                               \
         ? fg_cvt4##ISA((fg_f4##ISA){(float)(v)[k], (float)(v)[(k) + 1],      \
                                     (float)(v)[(k) + 2],                     \
                                     (float)(v)[(k) + 3]})                    \
         : (fg_d4##ISA){(v)[k], (v)[(k) + 1], (v)[(k) + 2], (v)[(k) + 3]})
#define FG_W4(T, ISA, p)                                                      \
    (sizeof(T) == sizeof(float)                                               \
         ? fg_cvt4##ISA(*(const fg_f4u##ISA *)(const void *)(p))              \
         : (fg_d4##ISA) * (const fg_d4u##ISA *)(const void *)(p))
#define FG_ACC4(ps, pb, rs, d, e, first)                                      \
    if (first) {                                                              \
        *(ps) = (rs) * (d);                                                   \
        *(pb) = (e);                                                          \
    } else {                                                                  \
        *(ps) = *(ps) + (rs) * (d);                                           \
        *(pb) = *(pb) + (e);                                                  \
    }
/* The lanes of group j of a vector (gi == j) set to val, in registers (a
 * vector stored a lane at a time and loaded whole waits for the stores) */
#define FG_LANES(V, VI, dst, j, val)                                          \
    {                                                                         \
        V t_ = {0};                                                           \
        const VI z_ = {0}, m_ = gi == (int)(j);                               \
        t_[0] = (val);                                                        \
        t_ = __builtin_shuffle(t_, z_);                                       \
        dst = (V)(((VI)t_ & m_) | ((VI)(dst) & ~m_));                         \
    }
#define FG_BWD_COLS_SIG(T, SUF, ISA)                                          \
FG_WIDE_INL void fg_bwd_cols_##SUF##ISA(const T *dy, const T *x, T *dx,       \
                                        ptrdiff_t rows, ptrdiff_t C,          \
                                        ptrdiff_t Cg, const T *mean,          \
                                        const T *rstd, const T *w,            \
                                        double *bs, double *bb, int first,    \
                                        T *coef, double iM, ptrdiff_t ahead)
/* fg_bwd_rows_one of a sample of few positions (fg_bwd_cols_fits: at
 * most 9 rows and 16 KiB, C a multiple of the VL lanes, groups of Cg
 * channels, a multiple of 4, within a vector; AVX2 and AVX-512): a vector
 * of channels at a time, its sums down the rows, its groups' B, D and row
 * sums, then its dx down the same rows, the per-channel vectors in
 * registers. Each value's arithmetic is fg_bwd_rows_sums', fg_wdots',
 * FG_ACC_RUN's and FG_DX_EXPR's: float32 has the bits of the phases one at
 * a time (the row sums of float64 may differ in the last bit); which of
 * the two a sample takes depends on its shape alone, not on the thread
 * count (samples of one chunk are never shared). dx is not rotated
 * (the column's rows stay in L1). Against the phases, each a loop over the
 * sample (benchmarks/ab.py, 128x256x2x2, 256x256x3x3, 128x512x2x2
 * channels-last): 0.60-0.85x the time cold, 0.92-1.04x warm; at AVX2
 * 0.83-0.96x warm, 0.85-0.90x cold. At 12 or 16 rows (3x4, 4x4 maps) it
 * took 1.01-1.11x, and 1.06x at 9 rows of 512 channels. */
#define FG_BWD_COLS(T, AT, V, VU, VI, SUF, ISA)                               \
static inline int fg_bwd_cols_fits_##SUF##ISA(ptrdiff_t rows, ptrdiff_t C,    \
                                              ptrdiff_t Cg) {                 \
    enum { VL = sizeof(V) / sizeof(T) };                                      \
    return C % VL == 0 && Cg % 4 == 0 && VL % Cg == 0 && rows <= 9 &&         \
           rows * C * (ptrdiff_t)sizeof(T) <= 16384;                          \
}                                                                             \
FG_BWD_COLS_SIG(T, SUF, ISA) {                                                \
    enum { VL = sizeof(V) / sizeof(T) };                                      \
    VI gi; /* each lane's group in the vector */                              \
    ptrdiff_t c0, p, l, j, k;                                                 \
    for (l = 0; l < VL; l++) gi[l] = l / Cg;                                  \
    for (c0 = 0; c0 < C; c0 += VL) {                                          \
        const ptrdiff_t g0 = c0 / Cg;                                         \
        double ds[VL], db[VL];                                                \
        V mu = {0}, rl = {0}, s = {0}, b = {0}, av, bv = {0}, dv = {0};       \
        for (j = 0; j < VL / Cg; j++) {                                       \
            FG_LANES(V, VI, mu, j, mean[g0 + j])                              \
            FG_LANES(V, VI, rl, j, rstd[g0 + j])                              \
        }                                                                     \
        for (p = 0; p < rows; p++) {                                          \
            const ptrdiff_t o = p * C + c0;                                   \
            const V v = *(const VU *)(dy + o);                                \
            if (ahead) {                                                      \
                __builtin_prefetch(dy + o + ahead, 0, 2);                     \
                __builtin_prefetch(x + o + ahead, 0, 2);                      \
            }                                                                 \
            s += v * (*(const VU *)(x + o) - mu);                             \
            b += v;                                                           \
        }                                                                     \
        /* float64 sums four lanes a store, as fg_bwd_coefs_in and the row  \
         * sums load them (a wider store would not forward to their loads) */ \
        for (k = 0; k < VL; k += 4) {                                         \
            *(fg_d4u##ISA *)(ds + k) = FG_D4(T, ISA, s, k);                   \
            *(fg_d4u##ISA *)(db + k) = FG_D4(T, ISA, b, k);                   \
        }                                                                     \
        if (sizeof(AT) < sizeof(double) &&                                    \
            fg_any_nan##ISA((fg_vf32##ISA)((s - s) + (b - b))))               \
            for (l = 0; l < VL; l++)  /* as fg_bwd_rows_sums' */              \
                if (FG_OVERFLOWED(AT, ds[l], db[l])) {                        \
                    double s_ = 0, b_ = 0;                                    \
                    for (p = 0; p < rows; p++) {                              \
                        s_ += (double)dy[p * C + c0 + l] *                    \
                              ((double)x[p * C + c0 + l] - mu[l]);            \
                        b_ += dy[p * C + c0 + l];                             \
                    }                                                         \
                    ds[l] = s_;                                               \
                    db[l] = b_;                                               \
                }                                                             \
        for (j = 0; j < VL / Cg; j++) {                                       \
            const ptrdiff_t g = g0 + j;                                       \
            const T rs = rstd[g];                                             \
            const double drs = rs;                                            \
            fg_d4##ISA sa = {0, 0, 0, 0}, sb = sa;                            \
            for (k = j * Cg; k < (j + 1) * Cg; k += 4) {                      \
                /* fg_wdots' sums and FG_ACC_RUN's rows, four lanes a step */ \
                const fg_d4##ISA d_ = *(const fg_d4u##ISA *)(ds + k);         \
                const fg_d4##ISA e_ = *(const fg_d4u##ISA *)(db + k);         \
                const fg_d4##ISA w_ = FG_W4(T, ISA, w + c0 + k);              \
                fg_d4u##ISA *ps = (fg_d4u##ISA *)(bs + c0 + k);               \
                fg_d4u##ISA *pb = (fg_d4u##ISA *)(bb + c0 + k);               \
                sa += w_ * d_;                                                \
                sb += w_ * e_;                                                \
                FG_ACC4(ps, pb, drs, d_, e_, first)                           \
            }                                                                 \
            {                                                                 \
                const T B = (T)(-(double)rs * rs * rs * fg_d4sum##ISA(sa) * iM); \
                const T D = (T)(-(double)rs * fg_d4sum##ISA(sb) * iM);        \
                coef[2 * g] = B;                                              \
                coef[2 * g + 1] = D;                                          \
                FG_LANES(V, VI, bv, j, B)                                     \
                FG_LANES(V, VI, dv, j, D)                                     \
            }                                                                 \
        }                                                                     \
        av = *(const VU *)(w + c0) * rl;                                      \
        for (p = 0; p < rows; p++) {                                          \
            const ptrdiff_t o = p * C + c0;                                   \
            *(VU *)(dx + o) = av * *(const VU *)(dy + o)                      \
                              + bv * (*(const VU *)(x + o) - mu) + dv;        \
        }                                                                     \
    }                                                                         \
}
/* whether any lane is NaN (s - s + b - b: whether s or b is not finite) */
#define FG_BWD_COLS_64(ISA)                                                   \
FG_WIDE_INL int fg_any_nan##ISA(fg_vf32##ISA v) {                             \
    return _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q) != 0;       \
}                                                                             \
FG_BWD_COLS_BOTH(ISA)
#define FG_BWD_COLS_32(ISA)                                                   \
FG_WIDE_INL int fg_any_nan##ISA(fg_vf32##ISA v) {                             \
    return _mm256_movemask_ps(                                                \
               _mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q)) != 0;       \
}                                                                             \
FG_BWD_COLS_BOTH(ISA)
#define FG_BWD_COLS_BOTH(ISA)                                                 \
FG_BWD_COLS(float, float, fg_vf32##ISA, fg_vf32u##ISA, fg_vi32##ISA, f32, ISA) \
FG_BWD_COLS(double, double, fg_vf64##ISA, fg_vf64u##ISA, fg_vi64##ISA, f64,   \
            ISA)
/* 16-byte registers: the phases one at a time */
#define FG_BWD_COLS_NONE(T, SUF, ISA)                                         \
static inline int fg_bwd_cols_fits_##SUF##ISA(ptrdiff_t rows, ptrdiff_t C,    \
                                              ptrdiff_t Cg) {                 \
    (void)rows, (void)C, (void)Cg;                                            \
    return 0;                                                                 \
}                                                                             \
FG_BWD_COLS_SIG(T, SUF, ISA) {                                                \
    (void)dy, (void)x, (void)dx, (void)rows, (void)C, (void)Cg, (void)mean;   \
    (void)rstd, (void)w, (void)bs, (void)bb, (void)first, (void)coef;         \
    (void)iM, (void)ahead;                                                    \
}
#define FG_BWD_COLS_16(ISA)                                                   \
FG_BWD_COLS_NONE(float, f32, ISA)                                             \
FG_BWD_COLS_NONE(double, f64, ISA)
/* The channels-last backward of one sample of `rows` positions (its G
 * groups' mean, rstd; one chunk): its per-channel sums ds, db, its groups'
 * B, D into coef (pairs), its sums into its row block's rows bs, bb
 * (rstd*ds and db stored if first, else added) and dx, the per-channel
 * vectors rotated by q (fg_bwd_rows_dx). scratch: 4*C values. One call a
 * sample with one loop over the groups, where the groups' means, their
 * coefficients, the rows' sums and dx's vectors had taken a loop each
 * (2x2 and 3x3 maps of 256 channels: 36% of the backward). */
#define FG_BWD_ROWS_ONE(T, SUF, ISA)                                          \
/* fg_bwd_rows_one's loops over the groups: the channels' means into a       \
 * (phase 0); the coefficients, dx's vectors and the row sums (phase 1). */ \
FG_WIDE_INL void fg_bwd_rows_groups_##SUF##ISA(int phase, ptrdiff_t G,        \
                                               ptrdiff_t Cg, const T *mean,   \
                                               const T *rstd, const T *w,     \
                                               const double *ds,              \
                                               const double *db, double *bs,  \
                                               double *bb, int first,         \
                                               T *coef, T *restrict a,        \
                                               ptrdiff_t q, double iM) {      \
    const ptrdiff_t C = G * Cg;                                               \
    T *restrict bc = a + C, *restrict muc = a + 2 * C;                        \
    T *restrict dc = a + 3 * C;                                               \
    ptrdiff_t g, c;                                                           \
    if (phase == 0) {                                                         \
        for (g = 0; g < G; g++) {                                             \
            const T mu = mean[g];                                             \
            FG_SIMD for (c = g * Cg; c < (g + 1) * Cg; c++) a[c] = mu;        \
        }                                                                     \
        return;                                                               \
    }                                                                         \
    for (g = 0; g < G; g++) {                                                 \
        const T rs = rstd[g], mu = mean[g];                                   \
        const double drs = rs;                                                \
        const double *sg = ds + g * Cg, *bg = db + g * Cg;                    \
        double *ps = bs + g * Cg, *pb = bb + g * Cg;                          \
        T B, D;                                                               \
        fg_bwd_coefs_in_##SUF##ISA(w + g * Cg, rs, sg, bg, Cg, iM, &B, &D);   \
        coef[2 * g] = B;                                                      \
        coef[2 * g + 1] = D;                                                  \
        FG_DX_VECTORS(g, rs, mu, B, D)                                        \
        FG_ACC_RUN(ps, pb, sg, bg, drs, Cg, first)                            \
    }                                                                         \
}                                                                             \
FG_WIDE_FN void fg_bwd_rows_one_##SUF##ISA(const T *dy, const T *x, T *dx,    \
                                           ptrdiff_t rows, ptrdiff_t G,       \
                                           ptrdiff_t Cg, const T *mean,       \
                                           const T *rstd, const T *w,         \
                                           double *ds, double *db,            \
                                           double *bs, double *bb,            \
                                           int first, T *coef, T *scratch,    \
                                           ptrdiff_t q, int stream,           \
                                           ptrdiff_t ahead) {                 \
    const ptrdiff_t C = G * Cg;                                               \
    const double iM = 1.0 / (double)(Cg * rows);                              \
    T *a = scratch;                                                           \
    if (!stream && fg_bwd_cols_fits_##SUF##ISA(rows, C, Cg)) {                \
        switch (Cg) {   /* constants: a group's loops straight vector code */ \
        case 4: fg_bwd_cols_##SUF##ISA(dy, x, dx, rows, C, 4, mean, rstd, w,  \
                                       bs, bb, first, coef, iM, ahead); break; \
        case 8: fg_bwd_cols_##SUF##ISA(dy, x, dx, rows, C, 8, mean, rstd, w,  \
                                       bs, bb, first, coef, iM, ahead); break; \
        case 16: fg_bwd_cols_##SUF##ISA(dy, x, dx, rows, C, 16, mean, rstd,   \
                                        w, bs, bb, first, coef, iM, ahead);   \
                 break;                                                       \
        default: fg_bwd_cols_##SUF##ISA(dy, x, dx, rows, C, Cg, mean, rstd,   \
                                        w, bs, bb, first, coef, iM, ahead);   \
        }                                                                     \
        return;                                                               \
    }                                                                         \
    FG_CG_SWITCH(fg_bwd_rows_groups_##SUF##ISA, 0)                            \
    fg_bwd_rows_sums_##SUF##ISA(dy, x, rows, C, a, ds, db, a + C, a + 2 * C); \
    FG_CG_SWITCH(fg_bwd_rows_groups_##SUF##ISA, 1)                            \
    fg_bwd_rows_dx_##SUF##ISA(dy, x, dx, rows, C, a, a + C, a + 2 * C,        \
                              a + 3 * C, q, stream, ahead);                   \
}
/* Group g's entries of dx's per-channel vectors a = w*rstd, muc, bc, dc,
 * rotated by q (FG_ROTATED_RUNS). */
#define FG_DX_VECTORS(g, rs, mu, B, D)                                        \
    FG_ROTATED_RUNS((g) * Cg, ((g) + 1) * Cg, {                               \
        a[t] = w[c] * (rs);                                                   \
        muc[t] = (mu);                                                        \
        bc[t] = (B);                                                          \
        dc[t] = (D);                                                          \
    })
#define FG_ROWS_PARAMS(T, SUF)                                                \
/* Forward: y = (x - mhi) * sc + sh from each group's float64 mean and its  \
 * rstd (st: pairs per group), the mean as hi + lo. */                       \
static inline FG_INLINE void fg_rows_params_in_##SUF(                         \
    const double *st, const T *w, const T *b, ptrdiff_t G, ptrdiff_t Cg,      \
    ptrdiff_t q, T *restrict mhi, T *restrict sc, T *restrict sh) {           \
    const ptrdiff_t C = G * Cg;                                               \
    ptrdiff_t g;                                                              \
    for (g = 0; g < G; g++) {                                                 \
        const double mean = st[2 * g];                                        \
        const T rs = (T)st[2 * g + 1], hi = (T)mean;                          \
        const T lo = (T)(mean - (double)hi);                                  \
        FG_ROTATED_RUNS(g * Cg, (g + 1) * Cg, {                               \
            const T s_ = w[c] * rs;                                           \
            mhi[t] = hi;                                                      \
            sc[t] = s_;                                                       \
            sh[t] = b[c] - lo * s_;                                           \
        })                                                                    \
    }                                                                         \
}                                                                             \
/* the common group sizes as constants (as FG_CG_SWITCH): a group's runs    \
 * straight vector code (2x2 maps of 256 channels: 0.9x the forward) */      \
static void fg_rows_params_##SUF(const double *st, const T *w, const T *b,   \
                                 ptrdiff_t G, ptrdiff_t Cg, ptrdiff_t q,      \
                                 T *restrict mhi, T *restrict sc,             \
                                 T *restrict sh) {                            \
    switch (Cg) {                                                             \
    case 4: fg_rows_params_in_##SUF(st, w, b, G, 4, q, mhi, sc, sh); break;   \
    case 8: fg_rows_params_in_##SUF(st, w, b, G, 8, q, mhi, sc, sh); break;   \
    case 16: fg_rows_params_in_##SUF(st, w, b, G, 16, q, mhi, sc, sh); break; \
    default: fg_rows_params_in_##SUF(st, w, b, G, Cg, q, mhi, sc, sh);        \
    }                                                                         \
}                                                                             \
/* Backward: dx = a*dy + bc*(x - muc) + dc from each group's mean, rstd and \
 * its B, D (coef: pairs per group). */                                      \
static void fg_rows_dx_params_##SUF(const T *mean, const T *rstd,            \
                                    const T *coef, const T *w, ptrdiff_t G,   \
                                    ptrdiff_t Cg, ptrdiff_t q,                \
                                    T *restrict a, T *restrict bc,            \
                                    T *restrict muc, T *restrict dc) {        \
    const ptrdiff_t C = G * Cg;                                               \
    ptrdiff_t g;                                                              \
    for (g = 0; g < G; g++) {                                                 \
        const T rs = rstd[g], mu = mean[g];                                   \
        const T B = coef[2 * g], D = coef[2 * g + 1];                         \
        FG_DX_VECTORS(g, rs, mu, B, D)                                        \
    }                                                                         \
}
FG_ROWS_PARAMS(float, f32)
FG_ROWS_PARAMS(double, f64)


/* Small slabs (NCHW, Cg*HW values each, a few thousand at most): `ng`
 * consecutive slabs, statistics and apply in one call, so nothing is paid
 * per slab beyond its arithmetic (per-slab dispatch dominated 7x7 maps and
 * rank-2 input). Same two-pass scheme (shift, then shifted sums, one vector
 * reduction each); stats written as T when asked. */
#define FG_SMALL_BODY(ACT, SUF)                                               \
    if (HW == 1) {                                                            \
        FG_SIMD for (i = 0; i < L; i++) {                                     \
            fg_t sc = wg[i] * rs;                                             \
            yg[i] = ACT(SUF, (xg[i] - mhi) * sc + (bg[i] - mlo * sc));        \
        }                                                                     \
    } else {                                                                  \
        for (c = 0; c < Cg; c++) {                                            \
            const fg_t sc = wg[c] * rs, sh = bg[c] - mlo * sc;                \
            const fg_t *xc = xg + c * HW;                                     \
            fg_t *yc = yg + c * HW;                                           \
            FG_LINE_RUN(yc, HW, yc[i] = ACT(SUF, (xc[i] - mhi) * sc + sh))    \
        }                                                                     \
    }


/* Groups are taken FG_SMALL_BLK at a time, pass by pass (sums of every
 * group, shifts, shifted sums, then mean and rstd vectorized over the
 * block): each group's reductions and its sqrt are short dependency chains,
 * and interleaving a block's independent chains keeps the core busy where
 * one group at a time would wait on each of them in turn. A block holds
 * about 1024 values, at least two groups: blocks of 4096 took 1.05-1.2x as
 * long on 7x7 and 8x8 maps (Xeon; the writes start later after the reads). */
#define FG_SMALL_BLK 32

/* silu or gelu over nv values yb[0..nv) of a block of small slabs, after
 * their affine (FG_RUNS_AFFINE), a run of at least 1024 values or the
 * block's rest: in each channel's run of a few vectors the activation's
 * long chains had a short loop apiece and a scalar tail (7x7 maps: 0.71x
 * the time warm, 0.84x from memory; 5x5 0.54-0.60x; 8x8 0.95x; Zen 5).
 * Runs of 512 bytes or more keep the activation in the affine's loop:
 * apart, 12x12 maps took 1.04-1.16x as long. */
#define FG_ACT_RUN(ACT, SUF)                                                  \
    FG_SIMD for (i = 0; i < nv; i++) yb[i] = ACT(SUF, yb[i]);

/* A small slab's apply (no activation, or relu), channel runs of HW >= one
 * vector's values: each run as whole vectors from its start, and its last
 * vector ending at its end, loaded before the others are stored (so in
 * place too, where it overlaps them, it stores the same values over them).
 * No scalar epilogue: runs of 49 values (7x7) went as three vectors, a
 * shorter one and a scalar each (the forward: 64x512x7x7 0.89-0.99x the
 * time, 64x256x5x5 0.87-0.92x, Zen 5). Runs of 512 bytes or more keep
 * FG_LINE_RUN's stores on whole lines. Each value's arithmetic is that of
 * FG_SMALL_BODY, so are the bits. */
/* relu of a vector v: lanes below zero cleared (NaN and -0 kept, as
 * fg_relu's v < 0 ? 0 : v); in the runs, 7x7 maps took 0.87x the time of
 * FG_SMALL_BODY's relu warm, the same from memory. */
#define FG_VRELU(V, VI, v) FG_MASKED(V, VI, v, ~(VI)((v) < 0))
#define FG_VNOACT(V, VI, v) (v)
#define FG_RUNS_LOOP(V, VU, VI, OP)                                           \
    for (c = 0; c < Cg; c++) {                                                \
        const fg_t sc = w[c] * rs, sh = b[c] - mlo * sc;                      \
        const fg_t *xc = x + c * HW;                                          \
        fg_t *yc = y + c * HW;                                                \
        const V last = *(const VU *)(xc + HW - VL);                           \
        V v;                                                                  \
        for (i = 0; i + VL <= HW; i += VL) {                                  \
            v = (*(const VU *)(xc + i) - mhi) * sc + sh;                      \
            *(VU *)(yc + i) = OP(V, VI, v);                                   \
        }                                                                     \
        if (i < HW) {                                                         \
            v = (last - mhi) * sc + sh;                                       \
            *(VU *)(yc + HW - VL) = OP(V, VI, v);                             \
        }                                                                     \
    }
/* A small slab's apply (no activation, or relu) or its backward's dx where
 * its Cg channels fit one float32 vector and it holds one at least (Cg <=
 * VL <= L): each channel's parameter is a lane of one vector, which every
 * lane picks its channel's from by a permute. The lanes' channels: (p +
 * 0.5) / HW rounded down for position p (FG_PERM_CH; for p < L, HW < 128:
 * within Cg * 2^-23 of the quotient, which lies 0.5 / HW at least from an
 * integer). Stores on whole lines from the output's first boundary a on,
 * after a first vector [0, VL) and before a last [L - VL, L), both
 * computed before any store (in place too). Each value's arithmetic is
 * that of the loops per channel, so are the bits. Those loops had their
 * own parameters, a last vector and stores across lines apiece, for runs
 * of a few values. */
#define FG_PERM_CH(p)                                                         \
    __builtin_convertvector((pos + (float)(p)) * r, fg_pi_t)
#define FG_PERM_LD(p, at) (*(const fg_pu_t *)((p) + (at)))
/* out[at .. at + VL) = F(at), from y's first line boundary a on, as above;
 * F a vector of the inputs at `at`, opaque (FG_OPAQUE: GCC split one
 * vector's FMA into a product and a masked add for the relu after it,
 * where the others kept theirs, so that the bits depended on where a
 * vector started) */
#define FG_PERM_RUN(out, F)                                                   \
    {                                                                         \
        const ptrdiff_t a = FG_TO_LINE(out) % VL;                             \
        const int whole = a && a + VL <= L;     /* a vector from a on */      \
        const fg_pv_t r0 = F(0), rl = F(L - VL);                              \
        const fg_pv_t ra = whole ? F(a) : r0;                                 \
        ptrdiff_t i = 0;                                                      \
        if (a) {                                                              \
            *(fg_pu_t *)(out) = r0;                                           \
            i = VL;                                                           \
        }                                                                     \
        if (whole) {                                                          \
            *(fg_pu_t *)((out) + a) = ra;                                     \
            i = a + VL;                                                       \
        }                                                                     \
        for (; i + VL <= L; i += VL) *(fg_pu_t *)((out) + i) = F(i);          \
        if (i < L) *(fg_pu_t *)((out) + L - VL) = rl;                         \
    }
#define FG_PERM_AFF(at)                                                       \
    ({                                                                        \
        const fg_pi_t ch_ = FG_PERM_CH(at);                                   \
        fg_pv_t v_ = (FG_PERM_LD(x, at) - mhi) * __builtin_shuffle(scv, ch_) \
                     + __builtin_shuffle(shv, ch_);                           \
        FG_OPAQUE(v_);                                                        \
        v_;                                                                   \
    })
#define FG_PERM_RELU(at)                                                      \
    ({                                                                        \
        const fg_pv_t u_ = FG_PERM_AFF(at);                                   \
        FG_VRELU(fg_pv_t, fg_pi_t, u_);                                       \
    })
#define FG_PERM_DX(at)                                                        \
    ({                                                                        \
        fg_pv_t v_ = __builtin_shuffle(av, FG_PERM_CH(at)) *                  \
                     FG_PERM_LD(dy, at) + B * (FG_PERM_LD(x, at) - mu) + D;   \
        FG_OPAQUE(v_);                                                        \
        v_;                                                                   \
    })
/* The slab's types and constants: positions' offsets (pos), 1 / HW (r). */
#define FG_PERM_SETUP(ISA)                                                    \
    typedef fg_vf32##ISA fg_pv_t;                                             \
    typedef fg_vf32u##ISA fg_pu_t;                                            \
    typedef fg_vi32##ISA fg_pi_t;                                             \
    enum { VL = sizeof(fg_pv_t) / sizeof(float) };                            \
    const float r = 1.0f / (float)HW;                                         \
    fg_pv_t pos;                                                              \
    ptrdiff_t c;                                                              \
    for (c = 0; c < VL; c++) pos[c] = (float)c + 0.5f;
#define FG_PERM_FNS(ISA)                                                      \
FG_WIDE_FN void fg_perm_affine_f32##ISA(const float *x, float *y,             \
                                        ptrdiff_t L, ptrdiff_t Cg,            \
                                        ptrdiff_t HW, const float *w,         \
                                        const float *b, float mhi,            \
                                        float mlo, float rs, int relu) {      \
    FG_PERM_SETUP(ISA)                                                        \
    fg_pv_t scv = {0}, shv = {0};                                             \
    for (c = 0; c < Cg; c++) {                                                \
        const float sc = w[c] * rs;                                           \
        scv[c] = sc;                                                          \
        shv[c] = b[c] - mlo * sc;                                             \
    }                                                                         \
    if (relu)                                                                 \
        FG_PERM_RUN(y, FG_PERM_RELU)                                          \
    else                                                                      \
        FG_PERM_RUN(y, FG_PERM_AFF)                                           \
}                                                                             \
FG_WIDE_FN void fg_perm_dx_f32##ISA(const float *dy, const float *x,          \
                                    float *dx, ptrdiff_t L, ptrdiff_t Cg,     \
                                    ptrdiff_t HW, float rs, const float *w,   \
                                    float B, float mu, float D) {             \
    FG_PERM_SETUP(ISA)                                                        \
    fg_pv_t av = {0};                                                         \
    for (c = 0; c < Cg; c++) av[c] = w[c] * rs;                               \
    FG_PERM_RUN(dx, FG_PERM_DX)                                               \
}
/* Not SSE2's: no variable permute. */
#define FG_PERM_FNS_64(ISA) FG_PERM_FNS(ISA)
#define FG_PERM_FNS_32(ISA) FG_PERM_FNS(ISA)
#define FG_PERM_FNS_16(ISA)                                                   \
FG_WIDE_FN __attribute__((unused)) void fg_perm_affine_f32##ISA(              \
    const float *x, float *y, ptrdiff_t L, ptrdiff_t Cg, ptrdiff_t HW,        \
    const float *w, const float *b, float mhi, float mlo, float rs,           \
    int relu) {                                                               \
    (void)x; (void)y; (void)L; (void)Cg; (void)HW; (void)w; (void)b;         \
    (void)mhi; (void)mlo; (void)rs; (void)relu;                               \
}                                                                             \
FG_WIDE_FN __attribute__((unused)) void fg_perm_dx_f32##ISA(                  \
    const float *dy, const float *x, float *dx, ptrdiff_t L, ptrdiff_t Cg,    \
    ptrdiff_t HW, float rs, const float *w, float B, float mu, float D) {     \
    (void)dy; (void)x; (void)dx; (void)L; (void)Cg; (void)HW; (void)rs;      \
    (void)w; (void)B; (void)mu; (void)D;                                      \
}
/* Whether fg_perm_* take a slab: float32, AVX2 or AVX-512 (VB bytes), the
 * channel runs shorter than a vector. */
#define FG_PERM_OK(T, VB, Cg, HW)                                             \
    (sizeof(T) == sizeof(float) && (VB) >= 32 && (HW) > 1 &&                 \
     (HW) * 4 < (ptrdiff_t)(VB) && (Cg) * 4 <= (ptrdiff_t)(VB) &&             \
     (Cg) * (HW) * 4 >= (ptrdiff_t)(VB))

/* The apply of nb rank-2 groups of L values each (HW == 1: every value its
 * own weight), mean mh[g] + ml[g] and rstd rf[g]: whole vectors from each
 * group's start, its last vector ending at its end, loaded before the
 * others are stored (as FG_RUNS_LOOP); FG_SMALL_BODY's arithmetic. */
#define FG_FLAT_STEP(V, VU, VI, OP, XV, at)                                   \
    {                                                                         \
        const V sc = *(const VU *)(w + (at)) * rs;                            \
        const V v = ((XV) - mhi) * sc + (*(const VU *)(b + (at)) - mlo * sc); \
        *(VU *)(y + (at)) = OP(V, VI, v);                                     \
    }
/* The same values streamed (FG_FLAT_STREAMS; the state *st): the output's
 * first vector boundary lies st->h values into it, and its groups are of
 * whole vectors, so their vectors follow one another. Each vector computed
 * completes the aligned vector that ends h values into it, which is
 * streamed whole (its lanes from the previous vector and this one), and
 * the same offset of the input 4 blocks on is requested, a line a vector.
 * The output's first h values are stored plainly, its last VL - h at the
 * end of FG_FLAT_BLOCKS. Each value's arithmetic is FG_FLAT_STEP's: the
 * same bits. 16-byte pieces of the unaligned vectors instead took a
 * store-queue entry each, and the statistics' own stores waited behind
 * them (1.5x the time of plain stores). */
#define FG_FLAT_NT_LOOP(V, VU, VI, OP, NTV)                                   \
    for (g = 0; g < nb; g++) {                                                \
        const fg_t *x = x0 + g * L, *w = w0 + g * L, *b = b0 + g * L;         \
        fg_t *y = y0 + g * L;                                                 \
        const fg_t mhi = mh[g], mlo = ml[g], rs = rf[g];                      \
        for (i = 0; i < L; i += VL) {                                         \
            const V sc = *(const VU *)(w + i) * rs;                           \
            const V v = (*(const VU *)(x + i) - mhi) * sc +                   \
                        (*(const VU *)(b + i) - mlo * sc);                    \
            const V o = OP(V, VI, v);                                         \
            if (st->n++ == 0) {                                               \
                ptrdiff_t l_;                                                 \
                for (l_ = 0; l_ < st->h; l_++) y[i + l_] = o[l_];             \
            } else {                                                          \
                NTV(y + i - VL + st->h, __builtin_shuffle(st->prev, o,        \
                                                          st->idx));          \
                __builtin_prefetch(x + i + st->ahead, 0, 2);                  \
            }                                                                 \
            st->prev = o;                                                     \
        }                                                                     \
    }
/* fg_runs_nt's parameters of its channel k: the slab's mean in two parts
 * and the channel's scale and shift, as FG_SMALL_SLABS and FG_RUNS_LOOP
 * compute them (mhi, mlo, rs; sc, sh) */
#define FG_RUN_PARAMS(k, M, S, H)                                             \
    {                                                                         \
        const ptrdiff_t s_ = (k) / Cg;                                        \
        const fg_t mlo_ = (fg_t)(mean[s_] - (double)(fg_t)mean[s_]);          \
        const fg_t rs_ = (fg_t)rstd[s_];                                      \
        M = (fg_t)mean[s_];                                                   \
        S = w[k] * rs_;                                                       \
        H = b[k] - mlo_ * S;                                                  \
    }
#define FG_RUN_VALUE(relu, xv, M, S, H)                                       \
    ((relu) && ((xv) - (M)) * (S) + (H) < 0 ? 0 : ((xv) - (M)) * (S) + (H))
/* A vector of scalar a in the lanes where mask m is clear, b where set */
#define FG_LANE_PICK(V, VI, m, a, b)                                          \
    ((V)(((VI)((V){0} + (a)) & ~(m)) | ((VI)((V){0} + (b)) & (m))))
/* Line-aligned vectors from y + e on, each of channel c's values (lanes
 * before the run's end bnd) and channel c + 1's (m1, s1, h1: runs of at
 * least a vector, so no third), the channel's values of x at the same
 * offset loaded whole; the input `ahead` values on requested as each is
 * stored. */
#define FG_RUNS_NT_LOOP(V, VU, VI, OP, NTV)                                   \
    for (; e + VL <= n; e += VL) {                                            \
        VI in1_;                                                              \
        V mv_, sv_, hv_;                                                      \
        if (e >= bnd) {                                                       \
            c++;                                                              \
            bnd += HW;                                                        \
            m0 = m1;                                                          \
            s0 = s1;                                                          \
            h0 = h1;                                                          \
            FG_RUN_PARAMS(c < last ? c + 1 : c, m1, s1, h1)                   \
        }                                                                     \
        in1_ = (VI)(lane >= (V){0} + (fg_t)(bnd - e));                        \
        mv_ = FG_LANE_PICK(V, VI, in1_, m0, m1);                              \
        sv_ = FG_LANE_PICK(V, VI, in1_, s0, s1);                              \
        hv_ = FG_LANE_PICK(V, VI, in1_, h0, h1);                              \
        NTV(y + e, OP(V, VI, (*(const VU *)(x + e) - mv_) * sv_ + hv_));       \
        __builtin_prefetch(x + e + ahead, 0, 2);                              \
    }
#define FG_FLAT_LOOP(T, V, VU, VI, OP)                                        \
    for (g = 0; g < nb; g++) {                                                \
        const T *x = x0 + g * L, *w = w0 + g * L, *b = b0 + g * L;            \
        T *y = y0 + g * L;                                                    \
        const T mhi = mh[g], mlo = ml[g], rs = rf[g];                         \
        const V last = *(const VU *)(x + L - VL);                             \
        for (i = 0; i + VL <= L; i += VL)                                     \
            FG_FLAT_STEP(V, VU, VI, OP, *(const VU *)(x + i), i)              \
        if (i < L)                                                            \
            FG_FLAT_STEP(V, VU, VI, OP, last, L - VL)                         \
    }
#define FG_RUNS_AFFINE(T, V, VU, VI, SUF)                                     \
FG_WIDE_FN void fg_runs_affine_##SUF(const T *x, T *y, ptrdiff_t Cg,          \
                                      ptrdiff_t HW, const T *w, const T *b,   \
                                      T mhi, T mlo, T rs, int relu) {         \
    typedef T fg_t;                                                           \
    enum { VL = sizeof(V) / sizeof(T) };                                      \
    ptrdiff_t c, i;                                                           \
    if (relu)                                                                 \
        FG_RUNS_LOOP(V, VU, VI, FG_VRELU)                                     \
    else                                                                      \
        FG_RUNS_LOOP(V, VU, VI, FG_VNOACT)                                    \
}                                                                             \
/* The state of a streamed output (FG_FLAT_NT_LOOP): h, the shuffle's     \
 * indices h .. h + VL - 1, the vectors computed so far and the last one,   \
 * the distance of the requested input ahead. */                            \
typedef struct {                                                              \
    ptrdiff_t h, n, ahead;                                                    \
    VI idx;                                                                   \
    V prev;                                                                   \
} fg_flat_nt_##SUF;                                                           \
FG_WIDE_INL void fg_flat_affine_##SUF(const T *x0, T *y0, ptrdiff_t nb,      \
                                      ptrdiff_t L, const T *w0, const T *b0,  \
                                      const T *mh, const T *ml, const T *rf,  \
                                      int relu, fg_flat_nt_##SUF *st) {       \
    typedef T fg_t;                                                           \
    enum { VL = sizeof(V) / sizeof(T) };                                      \
    ptrdiff_t i, g;                                                           \
    if (st && relu)                                                           \
        FG_FLAT_NT_LOOP(V, VU, VI, FG_VRELU, fg_ntv_##SUF)                    \
    else if (st)                                                              \
        FG_FLAT_NT_LOOP(V, VU, VI, FG_VNOACT, fg_ntv_##SUF)                   \
    else if (relu)                                                            \
        FG_FLAT_LOOP(T, V, VU, VI, FG_VRELU)                                  \
    else                                                                      \
        FG_FLAT_LOOP(T, V, VU, VI, FG_VNOACT)                                 \
}                                                                             \
/* The apply of a block of nb small slabs (x, y: the block's; w, b: its    \
 * first channel's; mean, rstd: its slabs'), channel runs of HW >= VL      \
 * values, streamed a line-aligned vector at a time (FG_RUNS_NT_LOOP). */   \
FG_WIDE_FN __attribute__((noinline))                                          \
void fg_runs_nt_##SUF(const T *x, T *y, ptrdiff_t nb, ptrdiff_t Cg,           \
                      ptrdiff_t HW, const T *w, const T *b,                   \
                      const double *mean, const double *rstd, int relu,       \
                      ptrdiff_t ahead) {                                      \
    typedef T fg_t;                                                           \
    enum { VL = sizeof(V) / sizeof(T) };                                      \
    const ptrdiff_t n = nb * Cg * HW, last = nb * Cg - 1;                     \
    const ptrdiff_t a0 = (ptrdiff_t)((-(size_t)y & (sizeof(V) - 1)) /        \
                                     sizeof(T));                              \
    const V lane = FG_IOTA(V);                                                \
    ptrdiff_t e, c, bnd;                                                      \
    T m0, s0, h0, m1, s1, h1;                                                 \
    for (e = 0; e < a0 && e < n; e++) {                                       \
        FG_RUN_PARAMS(e / HW, m0, s0, h0)                                     \
        y[e] = FG_RUN_VALUE(relu, x[e], m0, s0, h0);                          \
    }                                                                         \
    if (e + VL <= n) {                                                        \
        c = e / HW;                                                           \
        bnd = (c + 1) * HW;                                                   \
        FG_RUN_PARAMS(c, m0, s0, h0)                                          \
        FG_RUN_PARAMS(c < last ? c + 1 : c, m1, s1, h1)                       \
        if (relu)                                                             \
            FG_RUNS_NT_LOOP(V, VU, VI, FG_VRELU, fg_ntv_##SUF)                \
        else                                                                  \
            FG_RUNS_NT_LOOP(V, VU, VI, FG_VNOACT, fg_ntv_##SUF)               \
    }                                                                         \
    for (; e < n; e++) {                                                      \
        FG_RUN_PARAMS(e / HW, m0, s0, h0)                                     \
        y[e] = FG_RUN_VALUE(relu, x[e], m0, s0, h0);                          \
    }                                                                         \
}

/* Rank-2 float32 input in groups of one vector to FG_SHIFT_ALL values
 * (HW == 1: a group is Cg consecutive channels, each its own weight): the
 * small-slab scheme in one function of its own, every step a vector step.
 * Per group: one pass of float64 lane sums shifted by its first value
 * (FG_FLAT_RUN, as FG_VRUN_F64); per VLD groups: one transposing tree for
 * each sum, then mean, rstd and their float32 parts as vectors
 * (FG_FLAT_STATS32); per block: the apply (fg_flat_affine), then silu or
 * gelu over the block (FG_FLAT_BLOCKS). fg_small_slabs' own
 * loops for these groups spent most of their time on per-group scalar work
 * (conversions, branches, spilled pointers): 256x1024 G=32 takes 0.71x the
 * time (0.70x at two threads, silu 0.80x), 256x768 0.61x (Zen 5). */
/* The flat functions' parameters (T data), their arguments passed on with
 * the group length L, and their stubs' use of them. */
#define FG_FLAT_PARAMS(T)                                                     \
    const T *x, T *y, ptrdiff_t ng, ptrdiff_t L, const T *w, const T *b,      \
        double eps, int act, int ahead, T *mean_out, T *rstd_out
#define FG_FLAT_ARGS(L) x, y, ng, L, w, b, eps, act, ahead, mean_out, rstd_out
#define FG_FLAT_UNUSED                                                        \
    (void)x; (void)y; (void)ng; (void)L; (void)w; (void)b; (void)eps;         \
    (void)act; (void)ahead; (void)mean_out; (void)rstd_out;
/* A group's float64 lane sums s (returned) and q (*qv) of p[j] - k, for L
 * values of type TIN loaded by LOAD(p) a float64 vector at a time; a tail
 * as the run's last vector with the lanes already summed masked off. */
#define FG_FLAT_RUN(ISA, SUF, TIN, LOAD)                                      \
FG_WIDE_INL fg_vf64##ISA fg_flat_run_##SUF##ISA(const TIN *p, ptrdiff_t L,    \
                                                double k, fg_vf64##ISA *qv) { \
    enum { VL = sizeof(fg_vf64##ISA) / sizeof(double) };                      \
    fg_vf64##ISA s0 = {0}, s1 = {0}, q0 = {0}, q1 = {0}, d;                   \
    ptrdiff_t j = 0;                                                          \
    for (; j + 2 * VL <= L; j += 2 * VL) {                                    \
        d = LOAD(p + j) - k;                                                  \
        s0 += d;                                                              \
        q0 += d * d;                                                          \
        d = LOAD(p + j + VL) - k;                                             \
        s1 += d;                                                              \
        q1 += d * d;                                                          \
    }                                                                         \
    if (j + VL <= L) {                                                        \
        d = LOAD(p + j) - k;                                                  \
        s0 += d;                                                              \
        q0 += d * d;                                                          \
        j += VL;                                                              \
    }                                                                         \
    if (j < L) {                                                              \
        fg_vi64##ISA on;                                                      \
        FG_LAST_LANES(on, double, VL, L - j)                                  \
        d = FG_MASKED(fg_vf64##ISA, fg_vi64##ISA, LOAD(p + L - VL) - k, on);  \
        s1 += d;                                                              \
        q1 += d * d;                                                          \
    }                                                                         \
    if (qv)                                                                   \
        *qv = q0 + q1;                                                        \
    return s0 + s1;                                                           \
}
/* The blocks of a flat function: per VLD groups STATS (setting mh, ml, rf
 * from g1 on), then per block the statistics out, the apply, silu or gelu;
 * the apply streamed when NT (a constant; its caller checked
 * FG_FLAT_STREAMS). */
#define FG_FLAT_BLOCKS(T, SUF, ISA, STATS, NT)                                \
    enum { VLD = sizeof(fg_vf64##ISA) / sizeof(double) };                     \
    const double rn = 1.0 / (double)L;                                        \
    const int fused = act >= 2 ? 0 : act;                                     \
    ptrdiff_t bs = 1024 / L, g0, g1, g, i;                                    \
    T mh[FG_SMALL_BLK], ml[FG_SMALL_BLK], rf[FG_SMALL_BLK];                   \
    fg_flat_nt_##SUF##ISA nt_, *st = NULL;                                    \
    bs = bs < VLD ? VLD : bs > FG_SMALL_BLK ? FG_SMALL_BLK : bs;              \
    bs -= bs % VLD;                                                           \
    if (NT) {                                                                 \
        st = &nt_;                                                            \
        st->h = (ptrdiff_t)((-(size_t)y & (sizeof(fg_vf32##ISA) - 1)) /       \
                            sizeof(T));                                       \
        st->n = 0;                                                            \
        st->ahead = 4 * bs * L;                                               \
        st->idx = FG_IOTA(__typeof__(nt_.idx)) + (int)st->h;                  \
    }                                                                         \
    for (g0 = 0; g0 < ng; g0 += bs) {                                         \
        const ptrdiff_t nb = ng - g0 < bs ? ng - g0 : bs;                     \
        const T *xb = x + g0 * L;                                             \
        T *yb = y + g0 * L;                                                   \
        FG_AHEAD(FG_SMALL_AHEAD(T, ahead), xb, nb * L)                        \
        for (g1 = 0; g1 < nb; g1 += VLD) {                                    \
            fg_vf64##ISA av[VLD], qv[VLD], k, s, q, v, mean;                  \
            STATS                                                             \
        }                                                                     \
        if (mean_out)                                                         \
            for (g = 0; g < nb; g++) {                                        \
                mean_out[g0 + g] = mh[g];                                     \
                rstd_out[g0 + g] = rf[g];                                     \
            }                                                                 \
        if (nbuf && nb * L <= FG_NT_BUF(T)) {                                 \
            T *yd = FG_AT_LINE_OFF(nbuf, yb);                                 \
            fg_flat_affine_##SUF##ISA(xb, yd, nb, L, w + g0 * L, b + g0 * L,  \
                                      mh, ml, rf, fused, NULL);               \
            fg_act_nt_##SUF##ISA(yd, yb, nb * L, fused != act ? act : 0,      \
                                 xb + FG_ACT_AHEAD * nb * L);                 \
            continue;                                                         \
        }                                                                     \
        fg_flat_affine_##SUF##ISA(xb, yb, nb, L, w + g0 * L, b + g0 * L, mh,  \
                                  ml, rf, fused, st);                         \
        if (fused != act) {                                                   \
            const ptrdiff_t nv = nb * L;                                      \
            FG_ACT_SWITCH(FG_ACT_RUN, SUF)                                    \
        }                                                                     \
    }                                                                         \
    if (st) {                                                                 \
        enum { VL = sizeof(fg_vf32##ISA) / sizeof(T) };                       \
        T *ye = y + ng * L - VL;                                              \
        for (i = st->h; i < VL; i++) ye[i] = st->prev[i];                     \
    }
/* Whether a flat function streams its output: arrays larger than the
 * cache (`ahead`), groups of whole vectors, no activation applied after
 * (silu and gelu read the output back). float64 only: 16384x1024 G=32
 * took 0.67-0.69x the time at one thread, 0.79x at two, 4096x1024
 * 0.71x, 16384x256 G=8 0.69x, 1536x1024 (12 MiB) 0.90x, 2048x1024 at
 * two threads 0.97-1.04x (AVX2: 0.71-0.82x); float32 16384x1024
 * 1.12-1.15x at one thread, 0.87-0.96x at two (AVX2 1.32x), with any
 * request distance (benchmarks/ab.py). The stores are not fenced here:
 * the small path's caller fences once per thread after all its items (a
 * fence per call waits for the call's lines to drain: float32 16384x1024
 * at two threads took 1.57-1.60x the copy's time so, 1.22-1.23x without). */
#define FG_FLAT_STREAMS(T, ISA, ahead, act, L, y)                             \
    (FG_HAVE_NT && (ahead) && (act) <= 1 &&                                   \
     (L) % (ptrdiff_t)(sizeof(fg_vf32##ISA) / sizeof(T)) == 0 &&              \
     (size_t)(y) % sizeof(T) == 0)
/* {0, 1, ...} as the lane indices of T's vectors, from memory (built lane
 * by lane, they would be loaded from stores still queued) */
static const int fg_iota32[16] __attribute__((aligned(64))) = {
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static const long long fg_iota64[8] __attribute__((aligned(64))) = {
    0, 1, 2, 3, 4, 5, 6, 7};
static const float fg_iotaf[16] __attribute__((aligned(64))) = {
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static const double fg_iotad[8] __attribute__((aligned(64))) = {
    0, 1, 2, 3, 4, 5, 6, 7};
/* (VT: an integer or floating vector type; lanes of 4 or 8 bytes) */
#define FG_IOTA(VT)                                                           \
    __extension__({                                                           \
        typedef VT fg_ia_ __attribute__((may_alias));                         \
        const VT z_ = {0};                                                    \
        const int fl_ = (__typeof__(z_[0]))0.5 != 0;                          \
        sizeof(z_[0]) == 4                                                    \
            ? *(const fg_ia_ *)(const void *)(fl_ ? (const void *)fg_iotaf    \
                                                  : (const void *)fg_iota32)  \
            : *(const fg_ia_ *)(const void *)(fl_ ? (const void *)fg_iotad    \
                                                  : (const void *)fg_iota64); \
    })
/* mean and variance v of VLD groups from their shift k and shifted sums s,
 * q (negative v as 0) */
#define FG_FLAT_MOMENTS(ISA)                                                  \
    s = fg_vsums_t##ISA(av);                                                  \
    q = fg_vsums_t##ISA(qv);                                                  \
    mean = k + s * rn;                                                        \
    v = (q - s * (s * rn)) * rn;                                              \
    v = FG_MASKED(fg_vf64##ISA, fg_vi64##ISA, v, ~(fg_vi64##ISA)(v < 0));
/* float32: one pass shifted by each group's first value */
#define FG_FLAT_STATS32(ISA)                                                  \
    for (g = 0; g < VLD; g++) {                                               \
        const float *pg = xb + (g1 + g < nb ? g1 + g : nb - 1) * L;           \
        k[g] = pg[0];                                                         \
        av[g] = fg_flat_run_f32##ISA(pg, L, k[g], qv + g);                    \
    }                                                                         \
    FG_FLAT_MOMENTS(ISA)                                                      \
    *(fg_h *)(mh + g1) = __builtin_convertvector(mean, fg_h);                 \
    *(fg_h *)(ml + g1) = __builtin_convertvector(                             \
        mean - __builtin_convertvector(*(fg_h *)(mh + g1), fg_vf64##ISA),     \
        fg_h);                                                                \
    *(fg_h *)(rf + g1) =                                                      \
        __builtin_convertvector(1.0 / fg_vsqrt##ISA(v + eps), fg_h);
/* float64: the sums, a shift k = their mean rounded, the shifted sums */
#define FG_FLAT_STATS64(ISA)                                                  \
    for (g = 0; g < VLD; g++)                                                 \
        av[g] = g1 + g < nb                                                   \
            ? fg_flat_run_f64##ISA(xb + (g1 + g) * L, L, 0, NULL)             \
            : (fg_vf64##ISA){0};                                              \
    k = fg_vsums_t##ISA(av) * rn;                                             \
    for (g = 0; g < VLD; g++)                                                 \
        av[g] = g1 + g < nb                                                   \
            ? fg_flat_run_f64##ISA(xb + (g1 + g) * L, L, k[g], qv + g)        \
            : (qv[g] = (fg_vf64##ISA){0});                                    \
    FG_FLAT_MOMENTS(ISA)                                                      \
    *(fg_vf64u##ISA *)(mh + g1) = mean;                                       \
    *(fg_vf64u##ISA *)(ml + g1) = (fg_vf64##ISA){0};                          \
    *(fg_vf64u##ISA *)(rf + g1) = 1.0 / fg_vsqrt##ISA(v + eps);
#define FG_FLAT_SLABS(ISA)                                                    \
FG_WIDE_INL fg_vf64##ISA fg_load64##ISA(const double *p) {                    \
    return *(const fg_vf64u##ISA *)p;                                         \
}                                                                             \
FG_FLAT_RUN(ISA, f32, float, fg_widen##ISA)                                   \
FG_FLAT_RUN(ISA, f64, double, fg_load64##ISA)                                 \
FG_WIDE_INL void fg_flat_body##ISA(FG_FLAT_PARAMS(float), float *nbuf) {      \
    typedef float fg_h __attribute__((vector_size(sizeof(fg_vf64##ISA) / 2),  \
                                      aligned(4), may_alias));                \
    FG_FLAT_BLOCKS(float, f32, ISA, FG_FLAT_STATS32(ISA), 0)                  \
}                                                                             \
/* The same for float64 groups of one vector to FG_SHIFT_ALL values, with   \
 * fg_small_slabs' two passes (FG_FLAT_STATS64; 256x1024 G=32 float64:      \
 * 0.63-0.74x the time, 256x512 0.54-0.63x). No FG_FAR pass: k is off the   \
 * mean by the sum's rounding alone, a few ulps of the values, so it lies   \
 * beyond a standard deviation only for data within a few ulps of one      \
 * value, whose deviations from k are exact (rstd exact, eps 0, on 3200     \
 * groups of 64 values within 3 ulps of each other). */                     \
FG_WIDE_INL void fg_flat64_body##ISA(FG_FLAT_PARAMS(double), int nt,          \
                                     double *nbuf) {                          \
    FG_FLAT_BLOCKS(double, f64, ISA, FG_FLAT_STATS64(ISA), nt)                \
}                                                                             \
/* silu or gelu in arrays larger than the cache: each block through an L1   \
 * buffer, streamed (fg_act_nt); a function of its own, so that the others' \
 * stack holds no buffer */                                                 \
FG_WIDE_FN __attribute__((noinline))                                          \
void fg_flat_act64##ISA(FG_FLAT_PARAMS(double)) {                             \
    double nbuf[FG_NT_BUF(double) + 8] __attribute__((aligned(64)));         \
    FG_CONST_L(FG_FLAT64_ACT, ISA)                                            \
}                                                                             \
FG_WIDE_FN __attribute__((noinline))                                          \
void fg_flat_act##ISA(FG_FLAT_PARAMS(float)) {                                \
    float nbuf[FG_NT_BUF(float) + 16] __attribute__((aligned(64)));          \
    FG_CONST_L(FG_FLAT_ACT, ISA)                                              \
}                                                                             \
FG_WIDE_FN void fg_flat_slabs64##ISA(FG_FLAT_PARAMS(double)) {                \
    if (FG_ACT_STREAM(double, ahead, act, y)) {                               \
        fg_flat_act64##ISA(FG_FLAT_ARGS(L));                                  \
        return;                                                               \
    }                                                                         \
    FG_CONST_L(FG_FLAT64_BODY, ISA)                                           \
}                                                                             \
FG_WIDE_FN void fg_flat_slabs##ISA(FG_FLAT_PARAMS(float)) {                   \
    if (FG_ACT_STREAM(float, ahead, act, y)) {                                \
        fg_flat_act##ISA(FG_FLAT_ARGS(L));                                    \
        return;                                                               \
    }                                                                         \
    FG_CONST_L(FG_FLAT_BODY, ISA)                                             \
}
/* BODY(ISA, L) with common group lengths L as constants, loops unrolled and
 * tails gone: the forward kernel alone took 0.60x the time of the runtime-L
 * body on 256x512 G=32, 0.70-0.74x on 256x1024, 0.79x on 256x2048 (a C
 * harness); the backward with L at run time took 1.22x as long on 256x1024,
 * 1.52x on 256x512. */
#define FG_CONST_L(BODY, ISA)                                                 \
    switch (L) {                                                              \
    case 16: BODY(ISA, 16) break;                                             \
    case 24: BODY(ISA, 24) break;                                             \
    case 32: BODY(ISA, 32) break;                                             \
    case 48: BODY(ISA, 48) break;                                             \
    case 64: BODY(ISA, 64) break;                                             \
    default: BODY(ISA, L)                                                     \
    }
#define FG_FLAT_BODY(ISA, L) fg_flat_body##ISA(FG_FLAT_ARGS(L), NULL);
#define FG_FLAT_ACT(ISA, L) fg_flat_body##ISA(FG_FLAT_ARGS(L), nbuf);
#define FG_FLAT64_ACT(ISA, L) fg_flat64_body##ISA(FG_FLAT_ARGS(L), 0, nbuf);
#define FG_FLAT64_BODY(ISA, L)                                                \
    if (FG_FLAT_STREAMS(double, ISA, ahead, act, L, y))                       \
        fg_flat64_body##ISA(FG_FLAT_ARGS(L), 1, NULL);                        \
    else                                                                      \
        fg_flat64_body##ISA(FG_FLAT_ARGS(L), 0, NULL);

/* The small-group backward (fg_bwd_small) of one sample of rank-2 float32
 * input whose G groups hold L >= one vector of values each, as vector steps:
 * per group, d = dy*(x - mu) and the sums of w*d and w*dy in float32 lanes
 * (as fg_vrun_bwd), a tail as the group's last vector with the lanes already
 * summed masked off (d and dy both: an infinite x there adds no NaN), rstd*d
 * and dy added to the block's float64 rows ps, pb
 * (zeroed first when acc is 0); per VLD groups one transposing tree for
 * each sum; then dx by whole vectors, the last ending at the group's end. */
/* Up to 128 values: groups of 128 took 0.90x the time of fg_bwd_small's
 * float64 loops (256x4096 G=32), of 256 1.02x, of 1024 1.02-1.03x. */
#define FG_BWD_FLAT_MAX 128
#define FG_BWD_FLAT_STEP(ISA, at, ON)                                         \
    {                                                                         \
        const fg_vf32##ISA dv = ON(ISA, *(const fg_vf32u##ISA *)(dyg + (at)));\
        const fg_vf32##ISA wv = *(const fg_vf32u##ISA *)(wg + (at));          \
        const fg_vf32##ISA d =                                                \
            ON(ISA, dv * (*(const fg_vf32u##ISA *)(xg + (at)) - mu));         \
        fg_vf64##ISA lo, hi;                                                  \
        a1 += wv * d;                                                         \
        a2 += wv * dv;                                                        \
        fg_split##ISA(d, &lo, &hi);                                           \
        *(fg_vf64u##ISA *)(psg + (at)) += lo * drs;                           \
        *(fg_vf64u##ISA *)(psg + (at) + VLD) += hi * drs;                     \
        fg_split##ISA(dv, &lo, &hi);                                          \
        *(fg_vf64u##ISA *)(pbg + (at)) += lo;                                 \
        *(fg_vf64u##ISA *)(pbg + (at) + VLD) += hi;                           \
    }
#define FG_BWD_ALL(ISA, v) (v)
#define FG_BWD_TAIL(ISA, v) FG_MASKED(fg_vf32##ISA, fg_vi32##ISA, v, on)
#define FG_BWD_FLAT(ISA)                                                      \
FG_WIDE_INL void fg_bwd_flat_body##ISA(const float *dy, const float *x,        \
                                       float *dx, ptrdiff_t G, ptrdiff_t L,   \
                                       const float *mean, const float *rstd,  \
                                       const float *w, double *ps,            \
                                       double *pb, int acc) {                 \
    enum { VL = sizeof(fg_vf32##ISA) / sizeof(float), VLD = VL / 2 };         \
    const double rM = 1.0 / (double)L;                                        \
    fg_vi32##ISA on = {0};                                                    \
    ptrdiff_t g0, g, j;                                                       \
    if (L % VL)                                                               \
        FG_LAST_LANES(on, float, VL, L % VL)                                  \
    if (!acc)                                                                 \
        for (j = 0; j < G * L; j++)                                           \
            ps[j] = pb[j] = 0;                                                \
    for (g0 = 0; g0 < G; g0 += VLD) {                                         \
        fg_vf64##ISA s1v[VLD], s2v[VLD];                                      \
        double s1[VLD], s2[VLD];                                              \
        for (g = 0; g < VLD; g++) {                                           \
            const ptrdiff_t o = (g0 + g) * L;                                 \
            const float *dyg = dy + o, *xg = x + o, *wg = w + o;              \
            double *psg = ps + o, *pbg = pb + o;                              \
            fg_vf32##ISA a1 = {0}, a2 = {0};                                  \
            fg_vf64##ISA l1, h1, l2, h2;                                      \
            if (g0 + g >= G) {                                                \
                s1v[g] = s2v[g] = (fg_vf64##ISA){0};                          \
                continue;                                                     \
            }                                                                 \
            const float mu = mean[g0 + g];                                    \
            const double drs = rstd[g0 + g];                                  \
            for (j = 0; j + VL <= L; j += VL)                                 \
                FG_BWD_FLAT_STEP(ISA, j, FG_BWD_ALL)                          \
            if (j < L)                                                        \
                FG_BWD_FLAT_STEP(ISA, L - VL, FG_BWD_TAIL)                    \
            fg_split##ISA(a1, &l1, &h1);                                      \
            fg_split##ISA(a2, &l2, &h2);                                      \
            s1v[g] = l1 + h1;                                                 \
            s2v[g] = l2 + h2;                                                 \
        }                                                                     \
        *(fg_vf64u##ISA *)s1 = fg_vsums_t##ISA(s1v);                          \
        *(fg_vf64u##ISA *)s2 = fg_vsums_t##ISA(s2v);                          \
        for (g = 0; g < VLD && g0 + g < G; g++) {                             \
            const ptrdiff_t o = (g0 + g) * L;                                 \
            const float *dyg = dy + o, *xg = x + o, *wg = w + o;              \
            float *dxg = dx + o;                                              \
            const float mu = mean[g0 + g], rs = rstd[g0 + g];                 \
            const double drs = rs;                                            \
            const float B = (float)(-drs * drs * drs * s1[g] * rM);           \
            const float D = (float)(-drs * s2[g] * rM);                       \
            const fg_vf32##ISA ld = *(const fg_vf32u##ISA *)(dyg + L - VL);   \
            const fg_vf32##ISA lx = *(const fg_vf32u##ISA *)(xg + L - VL);    \
            for (j = 0; j + VL <= L; j += VL)                                 \
                *(fg_vf32u##ISA *)(dxg + j) =                                 \
                    (*(const fg_vf32u##ISA *)(wg + j) * rs) *                 \
                        *(const fg_vf32u##ISA *)(dyg + j) +                   \
                    B * (*(const fg_vf32u##ISA *)(xg + j) - mu) + D;          \
            if (j < L)                                                        \
                *(fg_vf32u##ISA *)(dxg + L - VL) =                            \
                    (*(const fg_vf32u##ISA *)(wg + L - VL) * rs) * ld +       \
                    B * (lx - mu) + D;                                        \
        }                                                                     \
    }                                                                         \
}                                                                             \
/* Its own function, on a line of its own: inlined into fg_bwd_small (or    \
 * not aligned) the float64 loops there took 1.04x as long on groups of 256 \
 * and this one 1.08x as long (layout; Zen 5). */                           \
FG_WIDE_FN __attribute__((noinline, aligned(64)))                             \
void fg_bwd_flat##ISA(const float *dy, const float *x, float *dx,             \
                      ptrdiff_t G, ptrdiff_t L, const float *mean,            \
                      const float *rstd, const float *w, double *ps,          \
                      double *pb, int acc) {                                  \
    FG_CONST_L(FG_BWD_FLAT_BODY, ISA)                                         \
}
#define FG_BWD_FLAT_BODY(ISA, L)                                              \
    fg_bwd_flat_body##ISA(dy, x, dx, G, L, mean, rstd, w, ps, pb, acc);
/* Whether fg_bwd_flat takes groups of Cg values of type T with vectors of
 * VB bytes (else fg_bwd_small does), and the public name taking them:
 * returns 1 if it did. */
#define FG_BWD_FLAT_OK(T, Cg, VB)                                             \
    (sizeof(T) == sizeof(float) && (VB) >= 32 &&                              \
     (Cg) * (ptrdiff_t)sizeof(T) >= (VB) && (Cg) <= FG_BWD_FLAT_MAX)
#define FG_BWD_FLAT_PUBLIC(T, SUF, VB, CALL)                                  \
int fg_bwd_flat_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t ng,           \
                      ptrdiff_t Cg, const T *mean, const T *rstd,             \
                      const T *w, double *ps, double *pb, int acc) {          \
    if (!FG_BWD_FLAT_OK(T, Cg, VB))                                           \
        return 0;                                                             \
    CALL((const float *)dy, (const float *)x, (float *)dx, ng, Cg,            \
         (const float *)mean, (const float *)rstd, (const float *)w, ps, pb,  \
         acc)                                                                 \
    return 1;                                                                 \
}
#define FG_FLAT_SLABS_64(ISA) FG_FLAT_SLABS(ISA) FG_BWD_FLAT(ISA)
#define FG_FLAT_SLABS_32(ISA) FG_FLAT_SLABS(ISA) FG_BWD_FLAT(ISA)
/* 16-byte vectors (SSE2, NEON) keep fg_small_slabs' path: two floats make
 * no register to widen (FG_VRUN_DEV64_16). Not reached. */
#define FG_FLAT_SLABS_16(ISA)                                                 \
FG_WIDE_FN void fg_flat_slabs##ISA(FG_FLAT_PARAMS(float)) { FG_FLAT_UNUSED }  \
FG_WIDE_FN void fg_flat_slabs64##ISA(FG_FLAT_PARAMS(double)) { FG_FLAT_UNUSED }\
FG_WIDE_FN __attribute__((unused))                                           \
void fg_bwd_flat##ISA(const float *dy, const float *x, float *dx,             \
                      ptrdiff_t G, ptrdiff_t L, const float *mean,            \
                      const float *rstd, const float *w, double *ps,          \
                      double *pb, int acc) {                                  \
    (void)dy; (void)x; (void)dx; (void)G; (void)L; (void)mean; (void)rstd;    \
    (void)w; (void)ps; (void)pb; (void)acc;                                   \
}

/* fg_small_slabs' statistics of a block of nb groups of L values at xb
 * (a[], k[] of the compute type CT, s[], q[], mean[], rstd[]): the two
 * passes' sums (groups of more than FG_SHIFT_ALL values, or float64), then
 * mean and rstd over the block, groups whose float32 sums need it summed
 * again in float64, and the statistics out. */
#define FG_SMALL_SUMS(CT, SUF, ISA)                                           \
            for (g = 0; g < nb; g++)                                          \
                a[g] = fg_vrun_sum_##SUF##ISA(xb + g * L, m);                 \
            for (g = 0; g < nb; g++) {                                        \
                k[g] = (CT)(a[g] * rm);                                       \
                fg_vrun_dev_##SUF##ISA(xb + g * L, L, k[g], s + g, q + g);    \
            }                                                                 \
            for (g = 0; g < nb; g++)                                          \
                if (FG_FAR(s[g], q[g], rn)) {                                 \
                    k[g] = (CT)(k[g] + s[g] / n);                             \
                    fg_vrun_dev_##SUF##ISA(xb + g * L, L, k[g], s + g,        \
                                           q + g);                            \
                }
#define FG_SMALL_STATS(CT, AT, SUF, ISA, SC)                                  \
        FG_SIMD for (g = 0; g < nb; g++) {                                    \
            const double sm = s[g] * rn;                                      \
            double v = (q[g] - s[g] * sm) * rn;                               \
            mean[g] = (double)k[g] + sm;                                      \
            rstd[g] = 1.0 / sqrt((v < 0 ? 0 : v) + eps);                      \
        }                                                                     \
        for (g = 0; g < nb && m < L; g++)   /* tiny: float64 sums already */  \
            if (FG_NEEDS_F64(AT, q[g], n, eps)) {                             \
                const double k64 = FG_SHIFT64(k[g], SC(xb[g * L]));           \
                double v;                                                     \
                fg_vrun_dev64_##SUF##ISA(xb + g * L, L, k64, s + g, q + g);   \
                v = (q[g] - s[g] * (s[g] / n)) / n;                           \
                mean[g] = k64 + s[g] / n;                                     \
                rstd[g] = 1.0 / sqrt((v < 0 ? 0 : v) + eps);                  \
            }                                                                 \
        if (mean_out)                                                         \
            for (g = 0; g < nb; g++) {                                        \
                mean_out[g0 + g] = (CT)mean[g];                               \
                rstd_out[g0 + g] = (CT)rstd[g];                               \
            }
/* fg_small_slabs' blocks: slabs of 6 KiB or more of arrays larger than the
 * cache (`ahead`) one at a time, others at least two at a time. From
 * memory, 64x2048x7x7 (12 KiB slabs) took 0.85-0.95x the time one at a
 * time, 64x1024x7x7 0.79-0.83x, float64 64x512x7x7 (6 KiB) 0.83-0.93x;
 * 32x256x14x14 (6 KiB, in the cache) 1.08x warm, 0.87x cold; 128x512x7x7's
 * 3 KiB slabs 1.08-1.13x (benchmarks/ab.py, Zen 5). */
#define FG_SMALL_MIN_BLK(T, L, ahead)                                         \
    ((ahead) && (L) * (ptrdiff_t)sizeof(T) >= 6144 ? 1 : 2)
/* Whether fg_small_slabs streams a block's apply (fg_runs_nt): arrays
 * larger than twice the cache (`ahead` 2; 1: larger than the cache),
 * channel runs of at least a vector (not fg_perm_affine's), no activation
 * applied after. */
#define FG_RUNS_STREAM(T, ahead, act, runs, perm, y)                          \
    (FG_HAVE_NT && (ahead) >= 2 && (act) <= 1 && (runs) && !(perm) &&         \
     (size_t)(y) % sizeof(T) == 0)
/* Whether the small and flat paths take a block's silu or gelu through an
 * L1 buffer (FG_NT_BUF bytes; larger blocks as they were), its whole lines
 * then streamed (fg_act_nt) with the input FG_ACT_AHEAD blocks on
 * requested: arrays larger than the cache. The activation had come after
 * the block's affine, over its output: every output line read first.
 * benchmarks/ab.py against plain stores: 704x512x7x7 silu 0.80x the time
 * at one thread, 0.71x at two; requests 1 block on took 1.06-1.11x the
 * time of 2 blocks on, 4 blocks 1.00-1.02x, 8 blocks 1.00-1.03x. */
#define FG_NT_BUF(T) (12288 / (ptrdiff_t)sizeof(T))
#define FG_ACT_AHEAD 2
#define FG_ACT_STREAM(T, ahead, act, y)                                       \
    (FG_HAVE_NT && (ahead) && (act) >= 2 && (size_t)(y) % sizeof(T) == 0)
/* The activation act over src[0 .. n) in place, then src streamed to dst
 * (fg_nt_lines, pf requested), in pieces of 8 lines of dst: a piece's
 * stores drain while the next is computed (a block's stores, all after its
 * activation, stalled the next block's arithmetic: 704x512x7x7 silu took
 * 1.08-1.24x the time of plain stores, in pieces 0.80x; pieces of 2 lines
 * 1.12x 4 lines' time, of 8 lines 0.96-0.98x, of 16 0.99-1.18x 8's) */
#define FG_ACT_NT(T, SUF, ISA)                                                \
FG_WIDE_INL void fg_act_nt_##SUF##ISA(T *src, T *dst, ptrdiff_t n, int act,   \
                                      const T *pf) {                          \
    enum { PV = 512 / sizeof(T) };                                            \
    ptrdiff_t p = 0, e = FG_TO_LINE(dst), i;                                  \
    if (e > n)                                                                \
        e = n;                                                                \
    while (p < n) {                                                           \
        T *yb = src + p;                                                      \
        const ptrdiff_t nv = e - p;                                           \
        FG_ACT_SWITCH(FG_ACT_RUN, SUF)                                        \
        fg_nt_lines_##SUF##ISA(src + p, dst + p, e - p, pf + p);              \
        p = e;                                                                \
        e = p + PV < n ? p + PV : n;                                          \
    }                                                                         \
}
/* fg_small_slabs' runs: HW values of T a vector or more and shorter than
 * 512 bytes (FG_LINE_RUN peels those) */
#define FG_SMALL_RUNS(T, ISA, HW)                                             \
    ((HW) * sizeof(T) >= sizeof(fg_vf32##ISA) && (HW) * sizeof(T) < 512)
#define FG_SMALL_SLABS(T, AT, SUF, ISA)                                       \
/* the body, streaming when nt_on (a constant): the plain copy keeps the   \
 * code it had (with the test inside, the small call took 1.03-1.05x) */   \
FG_WIDE_INL void fg_small_body_##SUF##ISA(const T *x, T *y, ptrdiff_t ng,     \
                                          ptrdiff_t Cg, ptrdiff_t HW,         \
                                          const T *w, const T *b, double eps, \
                                          int act, int ahead, T *mean_out,    \
                                          T *rstd_out, int nt_on, T *nbuf) {  \
    typedef T fg_t;                                                           \
    const ptrdiff_t L = Cg * HW;                                              \
    const ptrdiff_t m = FG_SHIFT_N(L);                                        \
    const double n = (double)L, rn = 1.0 / n, rm = 1.0 / (double)m;           \
    ptrdiff_t bs = 1024 / L, g0, g, i, c;                                     \
    const int runs = FG_SMALL_RUNS(T, ISA, HW);                               \
    const int perm = FG_PERM_OK(T, sizeof(fg_vf32##ISA), Cg, HW);            \
    /* the activation applied with the affine; silu and gelu come after */   \
    const int fused = act >= 2 && (runs || perm) ? 0 : act, act0 = act;       \
    const int nt = nt_on;                                                     \
    double a[FG_SMALL_BLK], s[FG_SMALL_BLK], q[FG_SMALL_BLK];                 \
    double mean[FG_SMALL_BLK], rstd[FG_SMALL_BLK];                            \
    T k[FG_SMALL_BLK];                                                        \
    if (sizeof(T) == sizeof(float) && HW == 1 && m == L &&                    \
        L * sizeof(T) >= sizeof(fg_vf32##ISA) && sizeof(fg_vf32##ISA) >= 32) { \
        fg_flat_slabs##ISA((const float *)x, (float *)y, ng, L,               \
                           (const float *)w, (const float *)b, eps, act,      \
                           ahead, (float *)mean_out, (float *)rstd_out);      \
        return;                                                               \
    }                                                                         \
    if (sizeof(T) == sizeof(double) && HW == 1 && m == L &&                   \
        L * sizeof(T) >= sizeof(fg_vf32##ISA) && sizeof(fg_vf32##ISA) >= 32) { \
        fg_flat_slabs64##ISA((const double *)x, (double *)y, ng, L,           \
                             (const double *)w, (const double *)b, eps, act,  \
                             ahead, (double *)mean_out, (double *)rstd_out);  \
        return;                                                               \
    }                                                                         \
    bs = bs < 2 ? FG_SMALL_MIN_BLK(T, L, ahead)                              \
                : bs > FG_SMALL_BLK ? FG_SMALL_BLK : bs;                      \
    for (g0 = 0; g0 < ng; g0 += bs) {                                         \
        const ptrdiff_t nb = ng - g0 < bs ? ng - g0 : bs;                     \
        const T *xb = x + g0 * L;                                             \
        FG_AHEAD(FG_SMALL_AHEAD(T, ahead), xb, nb * L)                        \
        if (m == L && sizeof(T) < sizeof(double)) {   /* tiny, float32 */     \
            fg_runs_dev64_##SUF##ISA(xb, nb, L, k, s, q);                     \
        } else {                                                              \
            FG_SMALL_SUMS(T, SUF, ISA)                                        \
        }                                                                     \
        FG_SMALL_STATS(T, AT, SUF, ISA, FG_SAME)                              \
        ptrdiff_t done = 0;     /* values of the block activated */           \
        T *const yo = y + g0 * L;                                             \
        T *yd = yo;             /* where the block's values go */             \
        if (nt && act0 <= 1) {                                                \
            fg_runs_nt_##SUF##ISA(xb, yo, nb, Cg, HW, w + g0 * Cg,            \
                                  b + g0 * Cg, mean, rstd, act, 4 * nb * L);  \
            continue;                                                         \
        }                                                                     \
        if (nbuf && nb * L <= FG_NT_BUF(T))                                   \
            yd = FG_AT_LINE_OFF(nbuf, yo);                                    \
        for (g = 0; g < nb; g++) {                                            \
            const T *xg = xb + g * L, *wg = w + (g0 + g) * Cg;                \
            const T *bg = b + (g0 + g) * Cg;                                  \
            T *yg = yd + g * L;                                               \
            const T mhi = (T)mean[g], mlo = (T)(mean[g] - (double)mhi);       \
            const T rs = (T)rstd[g];                                          \
            const int act = fused;                                            \
            if (act <= 1 && perm)                                             \
                fg_perm_affine_f32##ISA((const float *)xg, (float *)yg, L,    \
                                        Cg, HW, (const float *)wg,            \
                                        (const float *)bg, (float)mhi,        \
                                        (float)mlo, (float)rs, act);          \
            else if (act <= 1 && runs)                                        \
                fg_runs_affine_##SUF##ISA(xg, yg, Cg, HW, wg, bg, mhi, mlo,   \
                                          rs, act);                           \
            else                                                              \
                FG_ACT_SWITCH(FG_SMALL_BODY, SUF)                             \
            if (fused != act0 && yd == yo &&                                  \
                ((g + 1) * L - done >= 1024 ||                                \
                                  g + 1 == nb)) {                             \
                T *yb = yd + done;                                            \
                const ptrdiff_t nv = (g + 1) * L - done;                      \
                const int act = act0;                                         \
                FG_ACT_SWITCH(FG_ACT_RUN, SUF)                                \
                done = (g + 1) * L;                                           \
            }                                                                 \
        }                                                                     \
        if (yd != yo)                                                         \
            fg_act_nt_##SUF##ISA(yd, yo, nb * L, fused != act0 ? act0 : 0,    \
                                 xb + FG_ACT_AHEAD * nb * L);                 \
    }                                                                         \
}                                                                             \
/* silu or gelu streamed (FG_ACT_STREAM): the body with an L1 buffer, in  \
 * a function of its own, so that the plain path's stack frame stays as    \
 * it was (3.5 KiB; 16 KiB with the buffer in it) */                       \
FG_WIDE_FN __attribute__((noinline))                                      \
void fg_small_act_##SUF##ISA(const T *x, T *y, ptrdiff_t ng, ptrdiff_t Cg,\
                             ptrdiff_t HW, const T *w, const T *b,        \
                             double eps, int act, int ahead, T *mean_out, \
                             T *rstd_out) {                               \
    T nbuf[FG_NT_BUF(T) + 64 / sizeof(T)] __attribute__((aligned(64)));   \
    fg_small_body_##SUF##ISA(x, y, ng, Cg, HW, w, b, eps, act, ahead,     \
                             mean_out, rstd_out, 1, nbuf);                \
}                                                                         \
FG_WIDE_FN void fg_small_slabs_##SUF##ISA(const T *x, T *y, ptrdiff_t ng, \
                                          ptrdiff_t Cg, ptrdiff_t HW,     \
                                          const T *w, const T *b, double eps,\
                                          int act, int ahead, T *mean_out,\
                                          T *rstd_out) {                  \
    if (FG_RUNS_STREAM(T, ahead, act, FG_SMALL_RUNS(T, ISA, HW),          \
                       FG_PERM_OK(T, sizeof(fg_vf32##ISA), Cg, HW), y))   \
        fg_small_body_##SUF##ISA(x, y, ng, Cg, HW, w, b, eps, act, ahead, \
                                 mean_out, rstd_out, 1, NULL);            \
    else if (FG_ACT_STREAM(T, ahead, act, y))                             \
        fg_small_act_##SUF##ISA(x, y, ng, Cg, HW, w, b, eps, act, ahead,  \
                                mean_out, rstd_out);                      \
    else                                                                  \
        fg_small_body_##SUF##ISA(x, y, ng, Cg, HW, w, b, eps, act, ahead, \
                                 mean_out, rstd_out, 0, NULL);            \
}

/* Float32 runs of at most FG_SHIFT_ALL values (tiny groups: rank-2 input),
 * in one pass: shifted by their first value, d and d*d summed in float64
 * lanes (the values widened exactly), so no pass and no reduction come
 * before the sums. Any one of n values lies within sqrt(n - 1) standard
 * deviations of their mean, so q <= n*m2: at most a factor 64 on float64
 * rounding, far below float32's (and float64 squares of float32 values
 * neither overflow nor underflow). float64 data keeps the two passes, whose
 * rounding that factor would show in (3e-16 -> 5e-15 relative on rstd). The
 * same lanes re-sum float32 runs whose float32 sums overflowed or went
 * subnormal (fg_moments, the backward). The 16-byte copy (WIDEN 0: SSE2 has
 * no register of two floats to widen) sums every value in the scalar loop. */
#define FG_VRUN_DEV64_64(ISA) FG_VRUN_F64(ISA, 1)
#define FG_VRUN_DEV64_32(ISA) FG_VRUN_F64(ISA, 1)
#define FG_VRUN_DEV64_16(ISA) FG_VRUN_F64(ISA, 0)
/* Runs of a block of nb, VL at a time: RUN, for run g0 + g (< nb), adds
 * its sums into the vectors sv[g], qv[g] and the scalars ts[g], tq[g]
 * (zero before); the vectors' lane sums go through one transposing tree
 * each (fg_vsums_t), instead of a tree per run; S[g0 + g] and Q[g0 + g]
 * get the totals. */
#define FG_RUNS_TREES(ISA, nb, RUN, S, Q)                                     \
    for (g0 = 0; g0 < (nb); g0 += VL) {                                       \
        fg_vf64##ISA sv[VL], qv[VL];                                          \
        double ts[VL], tq[VL], st[VL], qt[VL];                                \
        for (g = 0; g < VL; g++) {                                            \
            sv[g] = qv[g] = (fg_vf64##ISA){0};                                \
            ts[g] = tq[g] = 0;                                                \
            if (g0 + g < (nb))                                                \
                RUN                                                           \
        }                                                                     \
        *(fg_vf64u##ISA *)st = fg_vsums_t##ISA(sv);                           \
        *(fg_vf64u##ISA *)qt = fg_vsums_t##ISA(qv);                           \
        for (g = 0; g < VL && g0 + g < (nb); g++) {                           \
            S[g0 + g] = ts[g] + st[g];                                        \
            Q[g0 + g] = tq[g] + qt[g];                                        \
        }                                                                     \
    }
/* Half a vector of float32 at P widened to a vector of float64. */
#define FG_WIDEN(ISA, P) fg_widen##ISA(P)
#define FG_VRUN_F64(ISA, WIDEN)                                               \
/* Its sums before the lane sums: vectors *sv, *qv, the tail's *ts, *tq. */  \
FG_WIDE_INL void fg_vrun_dev64_parts##ISA(const float *p, ptrdiff_t len,      \
                                          double k, fg_vf64##ISA *sv,         \
                                          fg_vf64##ISA *qv, double *ts,       \
                                          double *tq) {                       \
    enum { VL = sizeof(fg_vf64##ISA) / sizeof(double) };                      \
    fg_vf64##ISA s0 = {0}, s1 = {0}, q0 = {0}, q1 = {0}, d;                   \
    ptrdiff_t j = 0;                                                          \
    *ts = *tq = 0;                                                            \
    for (; WIDEN && j + 2 * VL <= len; j += 2 * VL) {                         \
        d = FG_WIDEN(ISA, p + j) - k;                                         \
        s0 += d;                                                              \
        q0 += d * d;                                                          \
        d = FG_WIDEN(ISA, p + j + VL) - k;                                    \
        s1 += d;                                                              \
        q1 += d * d;                                                          \
    }                                                                         \
    if (WIDEN && j + VL <= len) {                                             \
        d = FG_WIDEN(ISA, p + j) - k;                                         \
        s0 += d;                                                              \
        q0 += d * d;                                                          \
        j += VL;                                                              \
    }                                                                         \
    for (; j < len; j++) {                                                    \
        double e = p[j] - k;                                                  \
        *ts += e;                                                             \
        *tq += e * e;                                                         \
    }                                                                         \
    *sv = s0 + s1;                                                            \
    *qv = q0 + q1;                                                            \
}                                                                             \
FG_WIDE_INL void fg_vrun_dev64_f32##ISA(const float *p,                       \
                                                    ptrdiff_t len, double k,  \
                                                    double *s, double *q) {   \
    fg_vf64##ISA sv, qv;                                                      \
    double ts, tq;                                                            \
    fg_vrun_dev64_parts##ISA(p, len, k, &sv, &qv, &ts, &tq);                  \
    *s = ts + fg_vsum_f64##ISA(sv);                                           \
    *q = tq + fg_vsum_f64##ISA(qv);                                           \
}                                                                             \
/* The same for nb consecutive runs of len values, each shifted by its     \
 * first value (k[g], set here): the lane sums of VL runs at a time in one  \
 * transposing tree (fg_vsums_t) instead of a tree per run, which was about \
 * a third of the statistics of 32-value groups (forward 256x640 G=32      \
 * 0.90-0.91x the time, 256x1024 0.92-0.97x, 512x2048 G=64 0.95x). */      \
FG_WIDE_INL void fg_runs_dev64_f32##ISA(const float *p, ptrdiff_t nb,         \
                                        ptrdiff_t len, float *k, double *s,   \
                                        double *q) {                          \
    enum { VL = sizeof(fg_vf64##ISA) / sizeof(double) };                      \
    ptrdiff_t g0, g;                                                          \
    FG_RUNS_TREES(ISA, nb, {                                                  \
        const float *pg = p + (g0 + g) * len;                                 \
        k[g0 + g] = pg[0];                                                    \
        fg_vrun_dev64_parts##ISA(pg, len, pg[0], sv + g, qv + g, ts + g,      \
                                 tq + g);                                     \
    }, s, q)                                                                  \
}                                                                             \
/* The backward's sums of dy*(x - mu) and dy in float64 lanes. */            \
FG_WIDE_INL void fg_vrun_bwd64_f32##ISA(const float *g,                       \
                                                    const float *p,           \
                                                    ptrdiff_t len, double mu, \
                                                    double *s, double *b) {   \
    enum { VL = sizeof(fg_vf64##ISA) / sizeof(double) };                      \
    fg_vf64##ISA s0 = {0}, b0 = {0}, v;                                       \
    ptrdiff_t j = 0;                                                          \
    double ts = 0, tb = 0;                                                    \
    for (; WIDEN && j + VL <= len; j += VL) {                                 \
        v = FG_WIDEN(ISA, g + j);                                             \
        s0 += v * (FG_WIDEN(ISA, p + j) - mu);                                \
        b0 += v;                                                              \
    }                                                                         \
    for (; j < len; j++) {                                                    \
        ts += (double)g[j] * ((double)p[j] - mu);                             \
        tb += g[j];                                                           \
    }                                                                         \
    *s = ts + fg_vsum_f64##ISA(s0);                                           \
    *b = tb + fg_vsum_f64##ISA(b0);                                           \
}                                                                             \
FG_VRUN_F64_NAMES(ISA)
/* The names for float64 in type-generic code; not reached (float64 data
 * needs no second summation). */
#define FG_VRUN_F64_NAMES(ISA)                                                \
FG_WIDE_INL void fg_vrun_dev64_f64##ISA(const double *p,                      \
                                                    ptrdiff_t len, double k,  \
                                                    double *s, double *q) {   \
    fg_vrun_dev_f64##ISA(p, len, k, s, q);                                    \
}                                                                             \
FG_WIDE_INL void fg_vrun_bwd64_f64##ISA(const double *g,                      \
                                                    const double *p,          \
                                                    ptrdiff_t len, double mu, \
                                                    double *s, double *b) {   \
    fg_vrun_bwd_f64##ISA(g, p, len, mu, s, b);                                \
}                                                                             \
FG_WIDE_INL void fg_runs_dev64_f64##ISA(const double *p, ptrdiff_t nb,        \
                                        ptrdiff_t len, double *k, double *s,  \
                                        double *q) {                          \
    (void)p; (void)nb; (void)len; (void)k; (void)s; (void)q;                  \
}

/* float16 data read and written in registers (F16C, AVX-512), in the AVX2
 * and AVX-512 copies: a large NCHW slab's chunk statistics and its apply,
 * with the float32 kernels' arithmetic on the converted values, so the bits
 * of converting the slab to float32 first and rounding once at the end.
 * Converting through a float32 buffer instead wrote and read every value
 * twice more (1x320x64x64: the conversions 39% of the time). */
#define FG_HALF_IO_64(ISA)                                                    \
FG_WIDE_INL fg_vf32##ISA fg_ld_f16##ISA(const unsigned short *p) {            \
    return (fg_vf32##ISA)_mm512_cvtph_ps(                                     \
        _mm256_loadu_si256((const __m256i *)p));                              \
}                                                                             \
FG_WIDE_INL void fg_st_f16##ISA(unsigned short *p, fg_vf32##ISA v) {          \
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(                        \
                            (__m512)v, _MM_FROUND_TO_NEAREST_INT));           \
}
#define FG_HALF_IO_32(ISA)                                                    \
FG_WIDE_INL fg_vf32##ISA fg_ld_f16##ISA(const unsigned short *p) {            \
    return (fg_vf32##ISA)_mm256_cvtph_ps(                                     \
        _mm_loadu_si128((const __m128i *)p));                                 \
}                                                                             \
FG_WIDE_INL void fg_st_f16##ISA(unsigned short *p, fg_vf32##ISA v) {          \
    _mm_storeu_si128((__m128i *)p,                                            \
                     _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));  \
}
#define FG_F2H(v) _cvtss_sh((v), _MM_FROUND_TO_NEAREST_INT)
/* yp[0..m) = act(v) for the m float16 values at xp, v their affine as
 * vectors (VAFF(ISA, o): the vector at offset o) and values (SAFF(o)):
 * vector by vector, or with an activation a block at a time through an L1
 * buffer, where the float32 kernels' loop applies it. */
#define FG_HALF_ACT_BODY(ACT, SUF) FG_SIMD for (j = 0; j < e; j++)            \
    buf[j] = ACT(SUF, buf[j]);
#define FG_HALF_RUN(ISA, VAFF, SAFF)                                          \
    if (act == 0) {                                                           \
        for (i = 0; i + VL <= m; i += VL)                                     \
            fg_st_f16##ISA(yp + i, VAFF(ISA, i));                             \
        for (; i < m; i++)                                                    \
            yp[i] = FG_F2H(SAFF(i));                                          \
    } else {                                                                  \
        for (i = 0; i < m; i += BLK) {                                        \
            const ptrdiff_t e = m - i < BLK ? m - i : BLK;                    \
            for (j = 0; j + VL <= e; j += VL)                                 \
                *(fg_vf32##ISA *)(buf + j) = VAFF(ISA, i + j);                \
            for (; j < e; j++)                                                \
                buf[j] = SAFF(i + j);                                         \
            FG_ACT_SWITCH(FG_HALF_ACT_BODY, f32)                              \
            for (j = 0; j + VL <= e; j += VL)                                 \
                fg_st_f16##ISA(yp + i + j, *(fg_vf32##ISA *)(buf + j));       \
            for (; j < e; j++)                                                \
                yp[i + j] = FG_F2H(buf[j]);                                   \
        }                                                                     \
    }
/* The affine of a channel's run (its sc, sh), and of values each its own
 * channel (HW == 1: FG_AFFINE_BODY's arithmetic). */
#define FG_HALF_RUN_V(ISA, o) ((fg_ld_f16##ISA(xp + (o)) - mhi) * sc + sh)
#define FG_HALF_RUN_S(o) ((_cvtsh_ss(xp[o]) - mhi) * sc + sh)
#define FG_HALF_EACH_V(ISA, o) fg_half_each##ISA(xp + (o), wp + (o),          \
                                                 bp + (o), mhi, mlo, rs)
#define FG_HALF_EACH_S(o)                                                     \
    ((_cvtsh_ss(xp[o]) - mhi) * (wp[o] * rs) + (bp[o] - mlo * (wp[o] * rs)))
/* Values of a piece of fg_apply_span_f16's streamed output */
#define FG_HALF_PIECE 256
#define FG_HALF_KERNELS(ISA, VB)                                              \
FG_HALF_IO_##VB(ISA)                                                          \
/* dst[0 .. n) = src[0 .. n) in bytes, whole 64-byte lines of dst streamed  \
 * (src at dst's offset within a line), the bytes before and after plain */ \
FG_WIDE_INL void fg_nt_bytes##ISA(const unsigned char *src,                   \
                                  unsigned char *dst, ptrdiff_t n,            \
                                  const unsigned char *pf) {                  \
    ptrdiff_t i = (ptrdiff_t)(-(size_t)dst & 63), e, j;                       \
    if (i > n)                                                                \
        i = n;                                                                \
    for (j = 0; j < i; j++)                                                   \
        dst[j] = src[j];                                                      \
    e = i + (n - i) / 64 * 64;                                                \
    for (; i < e; i += sizeof(fg_vf32##ISA)) {                                \
        if (pf && i % 64 == 0)                                                \
            __builtin_prefetch(pf + i, 0, 2);                                 \
        fg_ntv_f32##ISA((float *)(void *)(dst + i),                           \
                        *(const fg_vf32u##ISA *)(const void *)(src + i));     \
    }                                                                         \
    for (; i < n; i++)                                                        \
        dst[i] = src[i];                                                      \
}                                                                             \
FG_VRUN_SUMS(unsigned short, float, fg_vf32##ISA, f16##ISA, f32##ISA,         \
             _cvtsh_ss)                                                       \
/* Reached only by sums of squares that are infinite or NaN (float16's        \
 * squares neither overflow nor underflow float32 lanes) or a constant run    \
 * with eps < FG_EPS_EXACT: its result is the float32 data's. */              \
FG_WIDE_INL void fg_vrun_dev64_f16##ISA(const unsigned short *p,              \
                                        ptrdiff_t len, double k, double *s,   \
                                        double *q) {                          \
    ptrdiff_t j;                                                              \
    double ts = 0, tq = 0;                                                    \
    for (j = 0; j < len; j++) {                                               \
        const double e = (double)_cvtsh_ss(p[j]) - k;                         \
        ts += e;                                                              \
        tq += e * e;                                                          \
    }                                                                         \
    *s = ts;                                                                  \
    *q = tq;                                                                  \
}                                                                             \
FG_MOMENTS(unsigned short, float, float, f16, ISA, _cvtsh_ss)                 \
FG_WIDE_INL fg_vf32##ISA fg_half_each##ISA(const unsigned short *x,           \
                                           const float *w, const float *b,    \
                                           float mhi, float mlo, float rs) {  \
    const fg_vf32##ISA sc = *(const fg_vf32u##ISA *)w * rs;                   \
    return (fg_ld_f16##ISA(x) - mhi) * sc +                                   \
           (*(const fg_vf32u##ISA *)b - mlo * sc);                            \
}                                                                             \
/* Values [u0, u1) of a float16 slab into yo[0 .. u1 - u0):                  \
 * fg_apply_span_f32's arithmetic. */                                         \
FG_WIDE_INL void fg_span_f16##ISA(const unsigned short *x, ptrdiff_t u0,      \
                                  ptrdiff_t u1, ptrdiff_t HW, float mhi,      \
                                  float mlo, float rs, const float *w,        \
                                  const float *b, int act,                    \
                                  unsigned short *yo) {                       \
    enum { VL = sizeof(fg_vf32##ISA) / sizeof(float), BLK = 512 };            \
    float buf[BLK] __attribute__((aligned(64)));                              \
    ptrdiff_t u = u0, i, j;                                                   \
    if (HW == 1) {                                                            \
        const unsigned short *xp = x + u0;                                    \
        unsigned short *yp = yo;                                              \
        const float *wp = w + u0, *bp = b + u0;                               \
        const ptrdiff_t m = u1 - u0;                                          \
        FG_HALF_RUN(ISA, FG_HALF_EACH_V, FG_HALF_EACH_S)                      \
        return;                                                               \
    }                                                                         \
    while (u < u1) {                                                          \
        const ptrdiff_t c = u / HW;                                           \
        const ptrdiff_t m = ((c + 1) * HW < u1 ? (c + 1) * HW : u1) - u;      \
        const float sc = w[c] * rs, sh = b[c] - mlo * sc;                     \
        const unsigned short *xp = x + u;                                     \
        unsigned short *yp = yo + (u - u0);                                   \
        FG_HALF_RUN(ISA, FG_HALF_RUN_V, FG_HALF_RUN_S)                        \
        u += m;                                                               \
    }                                                                         \
}                                                                             \
/* The same into y; `stream` (arrays larger than the cache): pieces of       \
 * FG_HALF_PIECE values ending on y's lines computed into an L1 buffer at   \
 * y's offset in a line, then streamed (fg_nt_bytes), the same bits. Plain  \
 * stores read every output line first. */                                  \
FG_WIDE_FN void fg_apply_span_f16##ISA(const unsigned short *x,               \
                                       unsigned short *y, ptrdiff_t u0,       \
                                       ptrdiff_t u1, ptrdiff_t HW, float mhi, \
                                       float mlo, float rs, const float *w,   \
                                       const float *b, int act, int stream,   \
                                       const unsigned short *pf) {            \
    if (FG_HAVE_NT && stream) {                                               \
        unsigned short hb[FG_HALF_PIECE + 32] __attribute__((aligned(64)));  \
        FG_PIECES(hb, FG_HALF_PIECE, u0, u1, y,                               \
                  fg_span_f16##ISA(x, us, ue, HW, mhi, mlo, rs, w, b, act,    \
                                   bp);                                       \
                  fg_nt_bytes##ISA((const unsigned char *)bp,                 \
                                   (unsigned char *)(y + us), 2 * (ue - us),  \
                                   pf ? (const unsigned char *)(pf + us)      \
                                      : NULL);)                               \
        fg_sfence();                                                          \
        return;                                                               \
    }                                                                         \
    fg_span_f16##ISA(x, u0, u1, HW, mhi, mlo, rs, w, b, act, y + u0);         \
}

/* Small float16 slabs (fg_small_slabs' items) of more than FG_SHIFT_ALL
 * values and channel runs of a vector or more: its statistics (the
 * two-pass branch, group by group) and its apply on the converted values,
 * the same bits. Runs as FG_RUNS_LOOP's, each channel's last vector ending
 * at its end; with an activation, a group's affine goes through a
 * buffer (at most FG_HALF_SMALL values, the small path's largest slab),
 * where the float32 loop applies it. At 2048 values, slabs between that
 * and 16384 went through a float32 buffer per item instead: 64x2048x7x7
 * takes 0.60-0.79x the time in registers. */
#define FG_HALF_SMALL 16384
/* y[0..HW) = OUT(v) of v = (x[i] - mhi) * sc + sh: whole vectors, then the
 * run's last vector, loaded before the others are stored */
#define FG_HALF_RUNV(ISA, LD, ST)                                             \
    {                                                                         \
        const fg_vf32##ISA last = LD(xc + HW - VL);                           \
        for (i = 0; i + VL <= HW; i += VL)                                    \
            ST(yc + i, (LD(xc + i) - mhi) * sc + sh);                         \
        if (i < HW)                                                           \
            ST(yc + HW - VL, (last - mhi) * sc + sh);                         \
    }
#define FG_HALF_SMALL_FN(ISA)                                                 \
FG_WIDE_INL void fg_st_f32##ISA(float *p, fg_vf32##ISA v) {                   \
    *(fg_vf32u##ISA *)p = v;                                                  \
}                                                                             \
FG_WIDE_FN void fg_small_slabs_f16##ISA(const unsigned short *x,              \
                                        unsigned short *y, ptrdiff_t ng,      \
                                        ptrdiff_t Cg, ptrdiff_t HW,           \
                                        const float *w, const float *b,       \
                                        double eps, int act, float *mean_out, \
                                        float *rstd_out) {                    \
    enum { VL = sizeof(fg_vf32##ISA) / sizeof(float) };                       \
    const ptrdiff_t L = Cg * HW, m = FG_SHIFT_N(L);                           \
    const double n = (double)L, rn = 1.0 / n, rm = 1.0 / (double)m;           \
    ptrdiff_t bs = 1024 / L, g0, g, c, i, j;                                  \
    double a[FG_SMALL_BLK], s[FG_SMALL_BLK], q[FG_SMALL_BLK];                 \
    double mean[FG_SMALL_BLK], rstd[FG_SMALL_BLK];                            \
    float k[FG_SMALL_BLK], buf[FG_HALF_SMALL] __attribute__((aligned(64)));   \
    bs = bs < 2 ? 2 : bs > FG_SMALL_BLK ? FG_SMALL_BLK : bs;                  \
    for (g0 = 0; g0 < ng; g0 += bs) {                                         \
        const ptrdiff_t nb = ng - g0 < bs ? ng - g0 : bs;                     \
        const unsigned short *xb = x + g0 * L;                                \
        FG_SMALL_SUMS(float, f16, ISA)                                        \
        FG_SMALL_STATS(float, float, f16, ISA, _cvtsh_ss)                     \
        for (g = 0; g < nb; g++) {                                            \
            const unsigned short *xg = xb + g * L;                            \
            unsigned short *yg = y + (g0 + g) * L;                            \
            const float *wg = w + (g0 + g) * Cg, *bg = b + (g0 + g) * Cg;     \
            const float mhi = (float)mean[g];                                 \
            const float mlo = (float)(mean[g] - (double)mhi);                 \
            const float rs = (float)rstd[g];                                  \
            for (c = 0; c < Cg; c++) {                                        \
                const float sc = wg[c] * rs, sh = bg[c] - mlo * sc;           \
                const unsigned short *xc = xg + c * HW;                       \
                if (act == 0) {                                               \
                    unsigned short *yc = yg + c * HW;                         \
                    FG_HALF_RUNV(ISA, fg_ld_f16##ISA, fg_st_f16##ISA)         \
                } else {                                                      \
                    float *yc = buf + c * HW;                                 \
                    FG_HALF_RUNV(ISA, fg_ld_f16##ISA, fg_st_f32##ISA)         \
                }                                                             \
            }                                                                 \
            if (act != 0) {                                                   \
                const ptrdiff_t e = L;                                        \
                FG_ACT_SWITCH(FG_HALF_ACT_BODY, f32)                          \
                for (i = 0; i + VL <= L; i += VL)                             \
                    fg_st_f16##ISA(yg + i, *(const fg_vf32##ISA *)(buf + i)); \
                if (i < L)                                                    \
                    fg_st_f16##ISA(yg + L - VL,                               \
                                   *(const fg_vf32u##ISA *)(buf + L - VL));   \
            }                                                                 \
        }                                                                     \
    }                                                                         \
}

/* The kernels built on vector runs, for one ISA (names suffixed ISA) with
 * vectors of VB bytes. */
#define FG_WIDE_KERNELS(ISA, VB)                                              \
    FG_VTYPES(ISA, VB)                                                        \
    FG_VSUMS_##VB(ISA)                                                        \
    FG_BWD_LINES_##VB(ISA)                                                    \
    FG_VRUNS(float, fg_vf32##ISA, fg_vf32u##ISA, fg_vi32##ISA, f32##ISA)      \
    FG_VRUNS(double, fg_vf64##ISA, fg_vf64u##ISA, fg_vi64##ISA, f64##ISA)     \
    FG_VRUN_DEV64_##VB(ISA)                                                   \
    FG_PERM_FNS_##VB(ISA)                                                     \
    FG_MOMENTS(float, float, float, f32, ISA, FG_SAME)                        \
    FG_MOMENTS(double, double, double, f64, ISA, FG_SAME)                     \
    FG_RUNS_BWD_VL(ISA)                                                       \
    FG_BWD_SUMS(float, float, f32, ISA)                                       \
    FG_BWD_SUMS(double, double, f64, ISA)                                     \
    FG_ACC_ROWS(ISA)                                                          \
    FG_BWD_ONE(ISA)                                                           \
    FG_BWD_ONES(ISA)                                                          \
    FG_BWD_SLABS(float, f32, ISA)                                             \
    FG_BWD_SLABS(double, f64, ISA)                                            \
    FG_BWD_SMALL(float, f32, ISA)                                             \
    FG_BWD_SMALL(double, f64, ISA)                                            \
    FG_NTV_##VB(ISA)                                                          \
    FG_RUNS_AFFINE(float, fg_vf32##ISA, fg_vf32u##ISA, fg_vi32##ISA,          \
                   f32##ISA)                                                  \
    FG_RUNS_AFFINE(double, fg_vf64##ISA, fg_vf64u##ISA, fg_vi64##ISA,         \
                   f64##ISA)                                                  \
    FG_FLAT_SLABS_##VB(ISA)                                                   \
    FG_SMALL_SLABS(float, float, f32, ISA)                                    \
    FG_SMALL_SLABS(double, double, f64, ISA)                                  \
    FG_ROWS_MOMENTS(float, float, fg_vf32##ISA, fg_vf32u##ISA, f32##ISA)      \
    FG_ROWS_MOMENTS(double, double, fg_vf64##ISA, fg_vf64u##ISA, f64##ISA)    \
    FG_ROWS_AFFINE(float, fg_vf32##ISA, fg_vf32u##ISA, f32##ISA)              \
    FG_ROWS_AFFINE(double, fg_vf64##ISA, fg_vf64u##ISA, f64##ISA)             \
    FG_BWD_ROWS_SUMS(float, float, fg_vf32##ISA, fg_vf32u##ISA, f32##ISA)     \
    FG_BWD_ROWS_SUMS(double, double, fg_vf64##ISA, fg_vf64u##ISA, f64##ISA)   \
    FG_ROWS_DX(float, fg_vf32##ISA, fg_vf32u##ISA, f32##ISA)                  \
    FG_ROWS_DX(double, fg_vf64##ISA, fg_vf64u##ISA, f64##ISA)                 \
    FG_APPLY_ROWS(float, f32, ISA)                                            \
    FG_APPLY_ROWS(double, f64, ISA)                                           \
    FG_BWD_ROWS_DX_FN(float, f32, ISA)                                        \
    FG_BWD_ROWS_DX_FN(double, f64, ISA)                                       \
    FG_BWD_COLS_##VB(ISA)                                                     \
    FG_BWD_ROWS_ONE(float, f32, ISA)                                          \
    FG_BWD_ROWS_ONE(double, f64, ISA)

#if FG_DISPATCH
/* x86-64 Linux, GCC: one copy per ISA level, as target_clones makes of the
 * other kernels, each for its own target with vectors as wide as its
 * registers; the public names call the copy of the level set at import
 * (fg_set_level, below). (A #pragma GCC target region instead of the
 * attribute measured 5-7% slower on 256x1024.) */
#define FG_WIDE_FN static __attribute__((target("arch=x86-64-v4")))
#define FG_WIDE_INL static inline __attribute__((always_inline,               \
                                                 target("arch=x86-64-v4")))
FG_WIDE_KERNELS(_v4, 64)
FG_HALF_KERNELS(_v4, 64)
FG_HALF_SMALL_FN(_v4)
#undef FG_WIDE_FN
#undef FG_WIDE_INL
#define FG_WIDE_FN static __attribute__((target("arch=x86-64-v3")))
#define FG_WIDE_INL static inline __attribute__((always_inline,               \
                                                 target("arch=x86-64-v3")))
FG_WIDE_KERNELS(_v3, 32)
FG_HALF_KERNELS(_v3, 32)
FG_HALF_SMALL_FN(_v3)
#undef FG_WIDE_FN
#undef FG_WIDE_INL
#define FG_WIDE_FN static
#define FG_WIDE_INL static inline FG_INLINE
FG_WIDE_KERNELS(_v1, 16)
/* The level the public names take: the CPU's, capped at fg_set_level's
 * argument (4, 3 or 1; FASTGN_MAX_SIMD at import, so that a test run can
 * exercise the narrower copies on a wider CPU). */
static int fg_level = 0;
static void fg_set_level(int cap) {
    int l = FG_CPU_V4() ? 4 : FG_CPU_V3() ? 3 : 1;
    fg_level = l < cap ? l : cap;
}
#define FG_PICK(NAME, ARGS)                                                   \
    if (fg_level >= 4)                                                        \
        NAME##_v4 ARGS;                                                       \
    else if (fg_level == 3)                                                   \
        NAME##_v3 ARGS;                                                       \
    else                                                                      \
        NAME##_v1 ARGS;
/* The vector bytes of the copy whose flat functions take rank-2 groups of
 * Cg values of type T: groups shorter than an AVX-512 vector but at least
 * an AVX2 one take the AVX2 copy's, rather than fg_small_slabs' (256x384
 * G=32 0.64x the time, 256x256 0.87x; float64 256x192 0.57x, 256x256
 * 0.85x) or fg_bwd_small's. */
#define FG_FLAT_VB(T, Cg)                                                     \
    (fg_level >= 4 && (Cg) * (ptrdiff_t)sizeof(T) >= 64 ? 64                  \
     : fg_level >= 3 && (Cg) * (ptrdiff_t)sizeof(T) >= 32 ? 32 : 16)
#define FG_PICK_FLAT(...)                                                     \
    if (FG_FLAT_VB(float, Cg) == 64)                                          \
        fg_bwd_flat_v4(__VA_ARGS__);                                          \
    else                                                                      \
        fg_bwd_flat_v3(__VA_ARGS__);
#define FG_PICK_TYPED(T, SUF)                                                 \
void fg_acc_groups_##SUF(double *bs, double *bb, const double *ds,            \
                         const double *db, const T *rs, ptrdiff_t G,          \
                         ptrdiff_t Cg, int first) {                           \
    FG_PICK(fg_acc_groups_##SUF, (bs, bb, ds, db, rs, G, Cg, first))          \
}                                                                             \
void fg_moments_##SUF(const T *x, ptrdiff_t len, int ahead, double eps,       \
                     double *out) {                                           \
    FG_PICK(fg_moments_##SUF, (x, len, ahead, eps, out))                      \
}                                                                             \
void fg_bwd_sums_##SUF(const T *dy, const T *x, ptrdiff_t Cg, ptrdiff_t HW,   \
                       T mu, double *ds, double *db) {                        \
    FG_PICK(fg_bwd_sums_##SUF, (dy, x, Cg, HW, mu, ds, db))                   \
}                                                                             \
FG_BWD_FLAT_PUBLIC(T, SUF, FG_FLAT_VB(T, Cg), FG_PICK_FLAT)                  \
void fg_bwd_coefs_##SUF(const T *w, double rs, const double *ds,            \
                        const double *db, ptrdiff_t Cg, double M, T *B,       \
                        T *D) {                                               \
    FG_PICK(fg_bwd_coefs_##SUF, (w, rs, ds, db, Cg, M, B, D))                 \
}                                                                             \
void fg_bwd_coefs_groups_##SUF(const T *w, const T *rstd, const double *ds,   \
                               const double *db, ptrdiff_t G, ptrdiff_t Cg,   \
                               double M, T *coef) {                           \
    FG_PICK(fg_bwd_coefs_groups_##SUF, (w, rstd, ds, db, G, Cg, M, coef))     \
}                                                                             \
void fg_bwd_dx_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t Cg,            \
                     ptrdiff_t HW, T rs, const T *w, T B, T mu, T D,          \
                     int stream, ptrdiff_t ahead) {                           \
    FG_PICK(fg_bwd_dx_##SUF, (dy, x, dx, Cg, HW, rs, w, B, mu, D, stream,     \
                              ahead))                                         \
}                                                                             \
void fg_bwd_slabs_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t ng,         \
                        ptrdiff_t Cg, ptrdiff_t HW, const T *mean,            \
                        const T *rstd, const T *w, double *ps, double *pb,    \
                        double *tmp, ptrdiff_t cap, int first, int stream) {  \
    FG_PICK(fg_bwd_slabs_##SUF, (dy, x, dx, ng, Cg, HW, mean, rstd, w, ps,    \
                                 pb, tmp, cap, first, stream))                \
}                                                                             \
void fg_bwd_small_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t ng,         \
                        ptrdiff_t Cg, const T *mean, const T *rstd,           \
                        const T *w, double *ps, double *pb, int acc) {        \
    FG_PICK(fg_bwd_small_##SUF, (dy, x, dx, ng, Cg, mean, rstd, w, ps, pb,    \
                                 acc))                                        \
}                                                                             \
void fg_small_slabs_##SUF(const T *x, T *y, ptrdiff_t ng, ptrdiff_t Cg,       \
                          ptrdiff_t HW, const T *w, const T *b, double eps,   \
                          int act, int ahead, T *mean_out, T *rstd_out) {     \
    if (HW == 1 && fg_level >= 4 && FG_FLAT_VB(T, Cg) == 32) {                \
        if (sizeof(T) == sizeof(float))                                       \
            fg_flat_slabs_v3((const float *)x, (float *)y, ng, Cg,            \
                             (const float *)w, (const float *)b, eps, act,    \
                             ahead, (float *)mean_out, (float *)rstd_out);    \
        else                                                                  \
            fg_flat_slabs64_v3((const double *)x, (double *)y, ng, Cg,        \
                               (const double *)w, (const double *)b, eps,     \
                               act, ahead, (double *)mean_out,                \
                               (double *)rstd_out);                           \
        return;                                                               \
    }                                                                         \
    FG_PICK(fg_small_slabs_##SUF, (x, y, ng, Cg, HW, w, b, eps, act, ahead,   \
                                   mean_out, rstd_out))                       \
}                                                                             \
void fg_bwd_rows_sums_##SUF(const T *dy, const T *x, ptrdiff_t rows,          \
                            ptrdiff_t C, const T *muc, double *ds,            \
                            double *db, T *as, T *ab) {                       \
    FG_PICK(fg_bwd_rows_sums_##SUF, (dy, x, rows, C, muc, ds, db, as, ab))    \
}                                                                             \
void fg_bwd_rows_dx_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t rows,     \
                          ptrdiff_t C, const T *a, const T *bc,               \
                          const T *muc, const T *dc, ptrdiff_t q,             \
                          int stream, ptrdiff_t ahead) {                      \
    FG_PICK(fg_bwd_rows_dx_##SUF, (dy, x, dx, rows, C, a, bc, muc, dc, q,     \
                                   stream, ahead))                            \
}                                                                             \
void fg_bwd_rows_one_##SUF(const T *dy, const T *x, T *dx, ptrdiff_t rows,    \
                           ptrdiff_t G, ptrdiff_t Cg, const T *mean,          \
                           const T *rstd, const T *w, double *ds, double *db, \
                           double *bs, double *bb, int first, T *coef,        \
                           T *scratch, ptrdiff_t q, int stream,               \
                           ptrdiff_t ahead) {                                 \
    FG_PICK(fg_bwd_rows_one_##SUF, (dy, x, dx, rows, G, Cg, mean, rstd, w,    \
                                    ds, db, bs, bb, first, coef, scratch, q,  \
                                    stream, ahead))                           \
}                                                                             \
void fg_apply_rows_##SUF(const T *x, T *y, ptrdiff_t rows, ptrdiff_t C,       \
                         const T *mhi, const T *sc, const T *sh, ptrdiff_t q, \
                         int act, int stream, ptrdiff_t ahead) {              \
    FG_PICK(fg_apply_rows_##SUF, (x, y, rows, C, mhi, sc, sh, q, act,         \
                                  stream, ahead))                             \
}                                                                             \
void fg_rows_moments_##SUF(const T *x, ptrdiff_t rows, ptrdiff_t C,           \
                           ptrdiff_t G, double eps, double *dscr, T *acc,     \
                           T *acq, T *kc, double *out) {                      \
    FG_PICK(fg_rows_moments_##SUF, (x, rows, C, G, eps, dscr, acc, acq, kc,   \
                                    out))                                     \
}
void fg_acc_rows(double *bs, double *bb, const double *ds, const double *db,
                 double rs, ptrdiff_t m, int first) {
    FG_PICK(fg_acc_rows, (bs, bb, ds, db, rs, m, first))
}

FG_PICK_TYPED(float, f32)
FG_PICK_TYPED(double, f64)
/* float16 read and written in registers where a copy with F16C runs. */
static int fg_half_fused(void) { return fg_level >= 3; }
#define FG_PICK_HALF(NAME, ARGS)                                              \
    if (fg_level >= 4)                                                        \
        NAME##_v4 ARGS;                                                       \
    else                                                                      \
        NAME##_v3 ARGS;
static void fg_moments_f16(const void *x, ptrdiff_t len, int ahead,
                           double eps, double *out) {
    FG_PICK_HALF(fg_moments_f16, ((const unsigned short *)x, len, ahead, eps,
                                  out))
}
/* Whether fg_small_slabs_f16 takes slabs of Cg channel runs of HW values:
 * runs of a vector or more (16 values in the AVX-512 copy, 8 in the AVX2
 * one), slabs of FG_SHIFT_ALL + 1 to FG_HALF_SMALL values. */
static int fg_half_small(ptrdiff_t Cg, ptrdiff_t HW) {
    return fg_level >= 3 && HW >= (fg_level >= 4 ? 16 : 8) &&
           Cg * HW > FG_SHIFT_ALL && Cg * HW <= FG_HALF_SMALL;
}
static void fg_small_slabs_f16(const void *x, void *y, ptrdiff_t ng,
                               ptrdiff_t Cg, ptrdiff_t HW, const float *w,
                               const float *b, double eps, int act,
                               float *mean_out, float *rstd_out) {
    FG_PICK_HALF(fg_small_slabs_f16, ((const unsigned short *)x,
                                      (unsigned short *)y, ng, Cg, HW, w, b,
                                      eps, act, mean_out, rstd_out))
}
static void fg_apply_span_f16(const void *x, void *y, ptrdiff_t u0,
                              ptrdiff_t u1, ptrdiff_t HW, float mhi,
                              float mlo, float rs, const float *w,
                              const float *b, int act, int stream,
                              const void *pf) {
    FG_PICK_HALF(fg_apply_span_f16, ((const unsigned short *)x,
                                     (unsigned short *)y, u0, u1, HW, mhi,
                                     mlo, rs, w, b, act, stream,
                                     (const unsigned short *)pf))
}
/* The level FG_PICK takes (show_config's "simd"). */
static const char *fg_simd_level(void) {
    return fg_level >= 4 ? "x86-64-v4 (AVX-512)"
         : fg_level == 3 ? "x86-64-v3 (AVX2)" : "x86-64 (SSE2)";
}
#else
/* One copy, with the vector width of the target compiled for (AVX-512 or
 * AVX in a native build, else 16 bytes: SSE2, NEON). */
#define FG_WIDE_FN
#define FG_WIDE_INL static inline FG_INLINE
#if defined(__AVX512F__)
FG_WIDE_KERNELS(, 64)
#define FG_VBITS "512"
#elif defined(__AVX__)
FG_WIDE_KERNELS(, 32)
#define FG_VBITS "256"
#else
FG_WIDE_KERNELS(, 16)
#define FG_VBITS "128"
#endif
#define FG_CALL_FLAT(...) fg_bwd_flat(__VA_ARGS__);
FG_BWD_FLAT_PUBLIC(float, f32, (int)sizeof(fg_vf32), FG_CALL_FLAT)
FG_BWD_FLAT_PUBLIC(double, f64, (int)sizeof(fg_vf32), FG_CALL_FLAT)
static const char *fg_simd_level(void) {
    return "build target, " FG_VBITS "-bit vectors";
}
static void fg_set_level(int cap) {}
/* float16 goes through float32 buffers (fg_f16_to_f32, fg_f32_to_f16). */
static int fg_half_fused(void) { return 0; }
static int fg_half_small(ptrdiff_t Cg, ptrdiff_t HW) { return 0; }
static void fg_small_slabs_f16(const void *x, void *y, ptrdiff_t ng,
                               ptrdiff_t Cg, ptrdiff_t HW, const float *w,
                               const float *b, double eps, int act,
                               float *mean_out, float *rstd_out) {}
static void fg_moments_f16(const void *x, ptrdiff_t len, int ahead,
                           double eps, double *out) {}
static void fg_apply_span_f16(const void *x, void *y, ptrdiff_t u0,
                              ptrdiff_t u1, ptrdiff_t HW, float mhi,
                              float mlo, float rs, const float *w,
                              const float *b, int act, int stream,
                              const void *pf) {}
#endif
FG_APPLY_SPAN(float, f32)
FG_APPLY_SPAN(double, f64)

/* float16 <-> float32 for float16 input (computed in float32): vectorized
 * F16C / AVX-512 conversions in the clones. Without _Float16 support in the
 * compiler the caller converts with NumPy instead (FG_HAVE_F16 == 0). */
#if defined(__FLT16_MAX__)
#define FG_HAVE_F16 1
#if defined(__GNUC__) && defined(__x86_64__)
/* GCC does not vectorize _Float16 conversions: use F16C where present. */
#include <immintrin.h>
__attribute__((target("avx,f16c")))
static void fg_f16_to_f32_f16c(const void *src, float *dst, ptrdiff_t n) {
    const unsigned short *s = (const unsigned short *)src;
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(
            _mm_loadu_si128((const __m128i *)(s + i))));
    for (; i < n; i++) dst[i] = (float)((const _Float16 *)src)[i];
}
__attribute__((target("avx,f16c")))
static void fg_f32_to_f16_f16c(const float *src, void *dst, ptrdiff_t n) {
    unsigned short *d = (unsigned short *)dst;
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(
            _mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) ((_Float16 *)dst)[i] = (_Float16)src[i];
}
#if FG_DISPATCH
/* 16 values a step where the AVX-512 kernels run: the 8-wide conversions
 * were about half of a float16 call's time on a Xeon. */
__attribute__((target("avx512f")))
static void fg_f16_to_f32_512(const void *src, float *dst, ptrdiff_t n) {
    const unsigned short *s = (const unsigned short *)src;
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(
            _mm256_loadu_si256((const __m256i *)(s + i))));
    fg_f16_to_f32_f16c(s + i, dst + i, n - i);
}
__attribute__((target("avx512f")))
static void fg_f32_to_f16_512(const float *src, void *dst, ptrdiff_t n) {
    unsigned short *d = (unsigned short *)dst;
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(d + i), _mm512_cvtps_ph(
            _mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    fg_f32_to_f16_f16c(src + i, d + i, n - i);
}
#define FG_F16_512() (fg_level >= 4)
#else
#define FG_F16_512() 0
#define fg_f16_to_f32_512(s, d, n)
#define fg_f32_to_f16_512(s, d, n)
#endif
#define FG_F16C() __builtin_cpu_supports("f16c")
#else
#define FG_F16C() 0
#define fg_f16_to_f32_f16c(s, d, n)
#define fg_f32_to_f16_f16c(s, d, n)
#endif
static void fg_f16_to_f32(const void *src, float *dst, ptrdiff_t n) {
    const _Float16 *s = (const _Float16 *)src;
    ptrdiff_t i;
    if (FG_F16_512()) {
        fg_f16_to_f32_512(src, dst, n);
        return;
    }
    if (FG_F16C()) {
        fg_f16_to_f32_f16c(src, dst, n);
        return;
    }
    for (i = 0; i < n; i++) dst[i] = (float)s[i];
}
static void fg_f32_to_f16(const float *src, void *dst, ptrdiff_t n) {
    _Float16 *d = (_Float16 *)dst;
    ptrdiff_t i;
    if (FG_F16_512()) {
        fg_f32_to_f16_512(src, dst, n);
        return;
    }
    if (FG_F16C()) {
        fg_f32_to_f16_f16c(src, dst, n);
        return;
    }
    for (i = 0; i < n; i++) d[i] = (_Float16)src[i];
}
#else
#define FG_HAVE_F16 0
static void fg_f16_to_f32(const void *src, float *dst, ptrdiff_t n) {}
static void fg_f32_to_f16(const float *src, void *dst, ptrdiff_t n) {}
#endif

#endif
