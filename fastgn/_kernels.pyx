"""Cython/OpenMP Group Normalization kernels (private; see fastgn._api).

Callers pass validated, aligned, C-contiguous, native-order float32/float64
arrays with consistent shapes; nothing here checks them again. The innermost
loops live in _simd.h (vectorized C with AVX2/AVX-512 clones).

A *slab* is one (n, g): Cg = C/G channels at every spatial position. NCHW:
one contiguous run of Cg*HW values. Channels-last (NHWC): HW rows of Cg
values, C apart. Statistics are gathered per fixed-size *chunk* of a slab
(two passes over the chunk while it is hot in L1: a shift near the mean, then
shifted sums; float32 data is summed in short float32 lanes added up in
float64; a channels-last chunk, past L1, takes its shift from its first
positions and is summed again if that shift proves far from the mean), and
the chunks are merged in order with Chan's formula. Chunk boundaries depend
on the shape only, so a slab owned by one thread and a slab split over
several threads give bitwise the same numbers: results do not depend on the
thread count.
"""

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport sqrt

from ._openmp cimport (FASTGN_OPENMP, FASTGN_OPENMP_VERSION,
                      omp_get_max_threads, omp_get_thread_num,
                      fastgn_barrier)

import os

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #ifndef FASTGN_COMPILE_ARGS
    #define FASTGN_COMPILE_ARGS ""
    #endif
    """
    const char* FASTGN_COMPILE_ARGS

cdef extern from "_simd.h" nogil:
    void fg_moments_f32(const float*, Py_ssize_t, int, double, double*)
    void fg_moments_f64(const double*, Py_ssize_t, int, double, double*)
    void fg_apply_span_f32(const float*, float*, Py_ssize_t, Py_ssize_t,
                           Py_ssize_t, float, float, float, const float*,
                           const float*, int, int, const float*)
    void fg_apply_span_f64(const double*, double*, Py_ssize_t, Py_ssize_t,
                           Py_ssize_t, double, double, double, const double*,
                           const double*, int, int, const double*)
    void fg_apply_rows_f32(const float*, float*, Py_ssize_t, Py_ssize_t,
                           const float*, const float*, const float*,
                           Py_ssize_t, int, int, Py_ssize_t)
    void fg_apply_rows_f64(const double*, double*, Py_ssize_t, Py_ssize_t,
                           const double*, const double*, const double*,
                           Py_ssize_t, int, int, Py_ssize_t)
    void fg_small_slabs_f32(const float*, float*, Py_ssize_t, Py_ssize_t,
                            Py_ssize_t, const float*, const float*, double,
                            int, int, float*, float*)
    void fg_small_slabs_f64(const double*, double*, Py_ssize_t, Py_ssize_t,
                            Py_ssize_t, const double*, const double*, double,
                            int, int, double*, double*)
    void fg_rows_moments_f32(const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                             double, double*, float*, float*, float*, double*)
    void fg_rows_moments_f64(const double*, Py_ssize_t, Py_ssize_t,
                             Py_ssize_t, double, double*, double*, double*,
                             double*, double*)
    void fg_bwd_sums_f32(const float*, const float*, Py_ssize_t, Py_ssize_t,
                         float, double*, double*)
    void fg_bwd_sums_f64(const double*, const double*, Py_ssize_t,
                         Py_ssize_t, double, double*, double*)
    void fg_bwd_dx_f32(const float*, const float*, float*, Py_ssize_t,
                       Py_ssize_t, float, const float*, float, float, float,
                       int, Py_ssize_t)
    void fg_bwd_dx_f64(const double*, const double*, double*, Py_ssize_t,
                       Py_ssize_t, double, const double*, double, double,
                       double, int, Py_ssize_t)
    void fg_bwd_coefs_f32(const float*, double, const double*, const double*,
                          Py_ssize_t, double, float*, float*)
    void fg_bwd_coefs_f64(const double*, double, const double*,
                          const double*, Py_ssize_t, double, double*,
                          double*)
    void fg_acc_rows(double*, double*, const double*, const double*, double,
                     Py_ssize_t, int)
    void fg_bwd_coefs_groups_f32(const float*, const float*, const double*,
                                 const double*, Py_ssize_t, Py_ssize_t,
                                 double, float*)
    void fg_bwd_coefs_groups_f64(const double*, const double*,
                                 const double*, const double*, Py_ssize_t,
                                 Py_ssize_t, double, double*)
    void fg_finish_f32(const double*, Py_ssize_t, double, double*, float*,
                       float*)
    void fg_finish_f64(const double*, Py_ssize_t, double, double*, double*,
                       double*)
    void fg_acc_groups_f32(double*, double*, const double*, const double*,
                           const float*, Py_ssize_t, Py_ssize_t, int)
    void fg_acc_groups_f64(double*, double*, const double*, const double*,
                           const double*, Py_ssize_t, Py_ssize_t, int)
    void fg_bwd_slabs_f32(const float*, const float*, float*, Py_ssize_t,
                          Py_ssize_t, Py_ssize_t, const float*, const float*,
                          const float*, double*, double*, double*, Py_ssize_t,
                          int, int)
    void fg_bwd_slabs_f64(const double*, const double*, double*, Py_ssize_t,
                          Py_ssize_t, Py_ssize_t, const double*,
                          const double*, const double*, double*, double*,
                          double*, Py_ssize_t, int, int)
    void fg_bwd_small_f32(const float*, const float*, float*, Py_ssize_t,
                          Py_ssize_t, const float*, const float*,
                          const float*, double*, double*, int)
    int fg_bwd_flat_f32(const float*, const float*, float*, Py_ssize_t,
                        Py_ssize_t, const float*, const float*,
                        const float*, double*, double*, int)
    void fg_bwd_small_f64(const double*, const double*, double*, Py_ssize_t,
                          Py_ssize_t, const double*, const double*,
                          const double*, double*, double*, int)
    void fg_param_grads_f32(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                            Py_ssize_t, const double*, const double*, float*,
                            float*)
    void fg_param_grads_f64(Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                            Py_ssize_t, const double*, const double*,
                            double*, double*)
    void fg_bwd_rows_sums_f32(const float*, const float*, Py_ssize_t,
                              Py_ssize_t, const float*, double*, double*,
                              float*, float*)
    void fg_bwd_rows_sums_f64(const double*, const double*, Py_ssize_t,
                              Py_ssize_t, const double*, double*, double*,
                              double*, double*)
    void fg_bwd_rows_dx_f32(const float*, const float*, float*, Py_ssize_t,
                            Py_ssize_t, const float*, const float*,
                            const float*, const float*, Py_ssize_t, int,
                            Py_ssize_t)
    void fg_bwd_rows_dx_f64(const double*, const double*, double*,
                            Py_ssize_t, Py_ssize_t, const double*,
                            const double*, const double*, const double*,
                            Py_ssize_t, int, Py_ssize_t)
    void fg_rows_params_f32(const double*, const float*, const float*,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, float*,
                            float*, float*)
    void fg_rows_params_f64(const double*, const double*, const double*,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, double*,
                            double*, double*)
    void fg_bwd_rows_one_f32(const float*, const float*, float*, Py_ssize_t,
                             Py_ssize_t, Py_ssize_t, const float*,
                             const float*, const float*, double*, double*,
                             double*, double*, int, float*, float*,
                             Py_ssize_t, int, Py_ssize_t)
    void fg_bwd_rows_one_f64(const double*, const double*, double*,
                             Py_ssize_t, Py_ssize_t, Py_ssize_t,
                             const double*, const double*, const double*,
                             double*, double*, double*, double*, int,
                             double*, double*, Py_ssize_t, int, Py_ssize_t)
    void fg_rows_dx_params_f32(const float*, const float*, const float*,
                               const float*, Py_ssize_t, Py_ssize_t,
                               Py_ssize_t, float*, float*, float*, float*)
    void fg_rows_dx_params_f64(const double*, const double*, const double*,
                               const double*, Py_ssize_t, Py_ssize_t,
                               Py_ssize_t, double*, double*, double*,
                               double*)
    void fg_scale_copy_f32(const float*, float*, Py_ssize_t, float, int)
    void fg_scale_copy_f64(const double*, double*, Py_ssize_t, double, int)
    void fg_sfence()
    bint FG_HAVE_F16
    void fg_f16_to_f32(const void*, float*, Py_ssize_t)
    void fg_f32_to_f16(const float*, void*, Py_ssize_t)
    bint fg_half_fused()
    void fg_moments_f16(const void*, Py_ssize_t, int, double, double*)
    void fg_apply_span_f16(const void*, void*, Py_ssize_t, Py_ssize_t,
                           Py_ssize_t, float, float, float, const float*,
                           const float*, int, int, const void*)
    bint fg_half_small(Py_ssize_t, Py_ssize_t)
    void fg_small_slabs_f16(const void*, void*, Py_ssize_t, Py_ssize_t,
                            Py_ssize_t, const float*, const float*, double,
                            int, float*, float*)
    const char* fg_simd_level()
    void fg_set_level(int)

OPENMP = bool(FASTGN_OPENMP)
OPENMP_VERSION = FASTGN_OPENMP_VERSION
COMPILE_ARGS = FASTGN_COMPILE_ARGS.decode().split()
# FASTGN_MAX_SIMD (x86-64-v3 or x86-64) caps the level of the kernels on
# vector runs, to test the narrower copies on a wider CPU.
_SIMD_CAPS = {"": 4, "x86-64-v4": 4, "x86-64-v3": 3, "x86-64": 1}
_cap = os.environ.get("FASTGN_MAX_SIMD", "").strip().lower()
if _cap not in _SIMD_CAPS:
    raise ImportError(f"FASTGN_MAX_SIMD must be one of x86-64-v4, "
                      f"x86-64-v3, x86-64, got {_cap!r}")
fg_set_level(_SIMD_CAPS[_cap])
SIMD = fg_simd_level().decode()

# Values per statistics chunk (NCHW), and per work item (channels-last, in
# whole rows of C values).
cdef Py_ssize_t CHUNK = 8192
cdef Py_ssize_t ROW_CHUNK = 65536
# Slabs of at most SMALL_SLAB values (NCHW) take the small-slab path, about
# SMALL_ITEM values per work item (measured: 0.65-0.9x the chunked path's
# time for slabs of 1024-2048 values, 1.1x at 4096).
cdef Py_ssize_t SMALL_SLAB = 2048
# Slabs of short channel runs (2 to SHORT_RUN bytes) take it up to
# SMALL_RUNS_SLAB values: the chunked path's apply pays per run;
# 128x768x16 G=1 took 3.4x the time there, 8x2560x8x8 G=32 1.45x,
# 4x1024x10x10 G=16 1.3x, while runs of 144 and 196 values took
# 1.2-1.35x the time here, and rank-2 groups (one loop over channels
# there) 1.03-1.12x. So in calls of any size (see _small).
cdef Py_ssize_t SHORT_RUN = 512
cdef Py_ssize_t SMALL_RUNS_SLAB = 16384
cdef Py_ssize_t SMALL_ITEM = 8192
# The small-group backward sums parameter gradients over blocks of up to
# ROW_BLOCK samples first (16 times less partial-sum traffic).
cdef Py_ssize_t ROW_BLOCK = 16
# Units of work (NCHW slabs, channels-last samples) are shared among the
# threads, not one per thread, when fewer than SPLIT_UNITS per thread would
# leave a thread idle, if they have SPLIT_VALUES values or more (measured, 3
# or 5 slabs on 2 threads: 0.73-0.87x the time from 256 KiB slabs up, about
# 1.0x from 200 KiB down).
cdef Py_ssize_t SPLIT_UNITS = 4
cdef Py_ssize_t SPLIT_VALUES = 65536
# Below this many values a call runs on the calling thread.
cdef Py_ssize_t SERIAL_BELOW = 32768
# float16 NCHW slabs that go through float32 buffers (where the kernels do
# not convert in registers) have at most HALF_BUF values.
cdef Py_ssize_t HALF_BUF = 1 << 18
# The float16 backward's units convert at most this many values of each of
# dy, x and dx (or one slab, up to HALF_BUF) in their thread's buffers.
cdef Py_ssize_t HALF_UNIT = 1 << 15
# float16 slabs of the chunked path in arrays larger than the cache are
# streamed (fg_apply_span_f16), requesting the next slab's lines during
# their apply, from this many values on: 13x320x64x64 (40960-value slabs)
# 0.77-0.82x the time of plain stores with the requests, 0.86-0.87x
# without; 88x64x56x56 and 96x256x28x28 (6272) 1.09-1.15x and 0.90-1.0x
# with, 0.98-1.0x and 1.0-1.06x without.
cdef Py_ssize_t HALF_STREAM = 16384


def _cache_bytes(level, default):
    """Bytes of CPU 0's level-``level`` data cache: Linux's sysfs, else
    sysconf (CPython knows no SC_LEVEL*_CACHE_SIZE names on Linux, so that
    alone always fell back), else ``default``."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            d = os.path.join(base, entry)
            if not entry.startswith("index"):
                continue
            with open(os.path.join(d, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(d, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(d, "size")) as f:
                text = f.read().strip()         # "32768K"
            num, unit = text.rstrip("KMG"), text.lstrip("0123456789")
            return int(num) * {"": 1, "K": 1 << 10, "M": 1 << 20,
                               "G": 1 << 30}[unit]
    except (OSError, ValueError, KeyError):
        pass
    try:
        size = os.sysconf(f"SC_LEVEL{level}_CACHE_SIZE")
        if size > 0:
            return size
    except (AttributeError, ValueError, OSError):
        pass
    return default


# A slab or channels-last sample larger than this is applied from its last
# chunk back, so the chunks its statistics pass read last, still in L2, are
# re-read first (1x128x128x64 channels-last: 0.89-0.93x the time; no gain
# on samples that fit, which keep the forward order).
cdef Py_ssize_t L2_BYTES = _cache_bytes(2, 1 << 20)


# The most of the last-level cache one call is taken to keep. A guest sees
# its host socket's L3 in sysfs (480 MiB on a 2-vCPU Xeon VM) but gets a
# share of it: there, streaming stores beat plain ones from 16-18 MiB of
# input plus output (GN forward 0.7-0.9x the time at 18-50 MiB).
STREAM_CAP_BYTES = 16 << 20


def _last_level_cache():
    size = _cache_bytes(3, 0)
    return size if size >= (1 << 20) else 32 << 20


# Calls whose input plus output exceed this many bytes (the last-level
# cache, at most STREAM_CAP_BYTES) write the output with streaming stores:
# it could not stay cached anyway, and skipping the read-for-ownership saves
# a third of the traffic.
cdef Py_ssize_t STREAM_BYTES = min(_last_level_cache(), STREAM_CAP_BYTES)


def back_bytes(Py_ssize_t n=-1):
    """The slab or channels-last sample size above which chunks are applied
    last read first (L2_BYTES); set it when n >= 0 (tests)."""
    global L2_BYTES
    cdef Py_ssize_t old = L2_BYTES
    if n >= 0:
        L2_BYTES = n
    return old


cdef inline bint _whole_runs(cnp.ndarray y, Py_ssize_t run):
    """Streaming stores only where every run (an NCHW channel, a
    channels-last row) of y starts and ends on 16 bytes: a plain store into
    a line that streaming stores are filling (each run's first and last few
    values otherwise) made 64x1024x7x7 8.5x slower, channels-last rows of
    66 channels 4.9x."""
    return (<size_t>cnp.PyArray_DATA(y)) % 16 == 0 and \
        (run * cnp.PyArray_ITEMSIZE(y)) % 16 == 0


def stream_bytes(Py_ssize_t n=-1):
    """The streaming-store threshold in bytes; set it when n >= 0 (tests)."""
    global STREAM_BYTES
    cdef Py_ssize_t old = STREAM_BYTES
    if n >= 0:
        STREAM_BYTES = n
    return old


ctypedef struct Moments:
    double n
    double mean
    double m2


def max_threads():
    """OpenMP's default thread count (OMP_NUM_THREADS, threadpoolctl)."""
    return omp_get_max_threads()


cdef bint _bounds(cnp.ndarray a, char** lo, char** hi):
    """[lo, hi): the bytes a's elements span; False when a is empty."""
    cdef int d
    cdef Py_ssize_t step
    lo[0] = hi[0] = <char*>cnp.PyArray_DATA(a)
    for d in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIM(a, d) == 0:
            return False
        step = (cnp.PyArray_DIM(a, d) - 1) * cnp.PyArray_STRIDE(a, d)
        if step < 0:
            lo[0] += step
        else:
            hi[0] += step
    hi[0] += cnp.PyArray_ITEMSIZE(a)
    return True


def overlaps(cnp.ndarray out, cnp.ndarray x, cnp.ndarray weight,
             cnp.ndarray bias):
    """Bits 1, 2, 4: x, weight, bias (None: no bit) may share memory with
    ``out``, by the bounds of their bytes as ``numpy.may_share_memory``;
    one call where three of those took 0.55 us."""
    cdef char *lo
    cdef char *hi
    cdef char *alo
    cdef char *ahi
    cdef int bits = 0, bit = 1
    if not _bounds(out, &lo, &hi):
        return 0
    for a in (x, weight, bias):
        if a is not None and _bounds(a, &alo, &ahi) and alo < hi and lo < ahi:
            bits |= bit
        bit <<= 1
    return bits


# ------------------------------------------------------------ small helpers

cdef inline void _merge(Moments* a, const Moments* b) noexcept nogil:
    """a <- a merged with b (Chan et al.); exact when the means agree."""
    cdef double n, delta
    if b.n == 0:
        return
    if a.n == 0:
        a[0] = b[0]
        return
    n = a.n + b.n
    delta = b.mean - a.mean
    a.mean = a.mean + delta * (b.n / n)
    a.m2 = a.m2 + b.m2 + delta * delta * (a.n * (b.n / n))
    a.n = n


cdef inline void _finish(Moments* m, double eps, double* mean,
                         double* rstd) noexcept nogil:
    cdef double var = m.m2 / m.n
    if var < 0:
        var = 0
    mean[0] = m.mean
    rstd[0] = 1.0 / sqrt(var + eps)


cdef inline void _merge_slab(Moments* parts, Py_ssize_t K, Py_ssize_t step,
                             Py_ssize_t s, double eps, double* stats,
                             floating* mean_out,
                             floating* rstd_out) noexcept nogil:
    """Merge K chunk moments (``step`` apart) in order into slab s's stats."""
    cdef Moments acc
    cdef Py_ssize_t k
    acc.n = acc.mean = acc.m2 = 0
    for k in range(K):
        _merge(&acc, &parts[k * step])
    _finish(&acc, eps, &stats[2 * s], &stats[2 * s + 1])
    if mean_out != NULL:
        mean_out[s] = <floating>stats[2 * s]
        rstd_out[s] = <floating>stats[2 * s + 1]


# Weights and biases left None: read-only arrays of ones and zeros, kept
# for reuse (allocating two per call took a sixth of a small call's time),
# found by an integer key: with (C, dtype, value) keys the two lookups of a
# call without either took 0.17 us, with it 0.05 us (the kernel entry of
# 1x32x16x16 1.04 -> 0.92 us).
cdef dict _FILLED = {}


cdef cnp.ndarray _filled(Py_ssize_t C, int typenum, bint one):
    """C ones (one) or zeros of the dtype typenum (NPY_FLOAT32, ...64)."""
    key = (C * 64 + typenum) * 2 + one
    a = _FILLED.get(key)
    if a is None:
        if len(_FILLED) >= 64:
            _FILLED.clear()
        a = np.full(C, 1.0 if one else 0.0,
                    dtype=np.float32 if typenum == cnp.NPY_FLOAT32
                    else np.float64)
        a.setflags(write=False)
        _FILLED[key] = a
    return a


# ------------------------------------------------------------ forward, NCHW
#
# A slab is one contiguous run of Cg*HW values, cut in chunks of CHUNK.

cdef struct Geometry:
    Py_ssize_t N, C, HW, G, Cg
    Py_ssize_t T        # values per slab (NCHW) or positions per sample
    Py_ssize_t U        # values (positions) per chunk
    Py_ssize_t K        # chunks per slab (per sample)
    bint rows           # channels-last memory
    bint big            # input plus output larger than the cache
    bint huge           # ... than twice it (fg_small_slabs streams runs)
    int stream          # streaming stores (big; channels-last: no activation)
    bint keep           # float16 rows: a sample's chunks stay in the buffer
    Py_ssize_t m        # rank-2 small items of m samples (_rank2_items)


cdef inline void _geometry(Geometry* g, Py_ssize_t N, Py_ssize_t C,
                           Py_ssize_t HW, Py_ssize_t G,
                           bint rows) noexcept nogil:
    """The shape, and its slabs (NCHW) or samples (rows) cut in chunks;
    plain stores (callers that stream set big and stream after)."""
    g.N, g.C, g.HW, g.G, g.Cg = N, C, HW, G, C // G
    g.rows = rows
    g.T = HW if rows else g.Cg * HW
    g.U = max(1, ROW_CHUNK // C) if rows else CHUNK
    g.K = (g.T + g.U - 1) // g.U
    g.big = False
    g.huge = False
    g.stream = 0
    g.keep = False
    g.m = 0


cdef inline void _chunk_moments(const floating* xs, Geometry* g,
                                Py_ssize_t k, double eps,
                                Moments* m) noexcept nogil:
    cdef Py_ssize_t u0 = k * g.U
    cdef Py_ssize_t u1 = min(u0 + g.U, g.T)
    if floating is float:
        fg_moments_f32(xs + u0, u1 - u0, g.big, eps, <double*>m)
    else:
        fg_moments_f64(xs + u0, u1 - u0, g.big, eps, <double*>m)


cdef inline void _apply_units(const floating* xs, floating* ys, Geometry* g,
                              Py_ssize_t grp, Py_ssize_t u0, Py_ssize_t u1,
                              double mean, double rstd, const floating* w,
                              const floating* b, int act,
                              const floating* pf=NULL) noexcept nogil:
    """Normalize values [u0, u1) of a slab with its mean and rstd."""
    cdef floating mhi = <floating>mean
    cdef floating mlo = <floating>(mean - <double>mhi)
    cdef floating rs = <floating>rstd
    w = w + grp * g.Cg
    b = b + grp * g.Cg
    if floating is float:
        fg_apply_span_f32(xs, ys, u0, u1, g.HW, mhi, mlo, rs, w, b, act,
                          g.stream, pf)
    else:
        fg_apply_span_f64(xs, ys, u0, u1, g.HW, mhi, mlo, rs, w, b, act,
                          g.stream, pf)


cdef inline void _slab(const floating* xs, floating* ys, Geometry* g,
                       Py_ssize_t s, double eps, const floating* w,
                       const floating* b, int act, floating* mean_out,
                       floating* rstd_out, const floating* nxt,
                       const char* x16, char* y16) noexcept nogil:
    """Slab s (at xs, into ys) on the calling thread: statistics, then the
    apply, during which the lines of ``nxt`` (a later slab of the same size,
    or NULL) are requested. float16 (x16, y16 not NULL; xs is ys, a float32
    buffer): each chunk converted into it just before its moments and out
    of it just after its apply, while it is in L1. A slab larger than L2 is
    applied from its last chunk back: what the statistics read last, still
    in L2, is re-read first."""
    cdef Moments acc, part
    cdef Py_ssize_t k, j, u0, u1
    cdef bint back = g.T * <Py_ssize_t>sizeof(floating) > L2_BYTES
    cdef double mean, rstd
    acc.n = acc.mean = acc.m2 = 0
    for k in range(g.K):
        if x16 != NULL:
            u0 = k * g.U
            fg_f16_to_f32(x16 + 2 * u0, <float*>ys + u0,
                          min(u0 + g.U, g.T) - u0)
        _chunk_moments(xs, g, k, eps, &part)
        _merge(&acc, &part)
    _finish(&acc, eps, &mean, &rstd)
    if mean_out != NULL:
        mean_out[s] = <floating>mean
        rstd_out[s] = <floating>rstd
    if not back and y16 == NULL:
        _apply_units(xs, ys, g, s % g.G, 0, g.T, mean, rstd, w, b, act, nxt)
        return
    for j in range(g.K):
        k = g.K - 1 - j if back else j
        u0 = k * g.U
        u1 = min(u0 + g.U, g.T)
        _apply_units(xs, ys, g, s % g.G, u0, u1, mean, rstd, w, b, act, nxt)
        if y16 != NULL:
            fg_f32_to_f16(<float*>ys + u0, y16 + 2 * u0, u1 - u0)


cdef inline void _one_slab(const floating* x, floating* y, Geometry* g,
                           Py_ssize_t s, double eps, const floating* w,
                           const floating* b, int act, floating* mean_out,
                           floating* rstd_out, const char* x16,
                           char* y16) noexcept nogil:
    """Slab s of x into y. Written with streaming stores: the next slab is
    requested line by line during this one's apply, overlapping its reads
    with these writes (32x256x28x28 0.75-0.87x the time, cold or warm; the
    slab after next measured 0.98-1.06x the next's)."""
    cdef Py_ssize_t off = s * g.T
    if floating is float:
        if x16 != NULL:     # float16 converted in registers
            _half_slab(x16, y16, g, s, eps, w, b, act, mean_out, rstd_out)
            return
    _slab(x + off, y + off, g, s, eps, w, b, act, mean_out, rstd_out,
          x + off + g.T if g.stream and s + 1 < g.N * g.G else NULL,
          NULL, NULL)


cdef inline bint _small(Geometry* g, Py_ssize_t size) noexcept nogil:
    """Whether NCHW slabs take the small-slab path, computed in values of
    ``size`` bytes (float16: 4, its float32 path's choice, so the same bits;
    fg_half_small takes them in registers in the AVX2 and AVX-512 copies).
    The choice depends on the slab alone: the two paths' statistics round
    differently, so a choice by the call's size (short runs had taken the
    chunked path in calls larger than the cache) made a sample's bits
    depend on the batch it came in. The small path streams too now:
    calls larger than the cache took 0.46-0.48x the time of the chunked
    path with runs of 4 and 8 values (4096x1024x4 G=1), 0.54x with 16
    (512x768x16 G=1), float64 7x7 and 5x5 maps 0.71-0.74x (0.82x at two
    threads), float16 8x8 0.86-0.91x, 10x10 maps 1.01-1.03x, float32 8x8
    (256x512x8x8 G=8) 1.06-1.10x at one thread, 0.98-0.99x at two
    (benchmarks/ab.py)."""
    return g.T <= SMALL_SLAB or (
        1 < g.HW and g.HW * size < SHORT_RUN and g.T <= SMALL_RUNS_SLAB)


cdef inline Py_ssize_t _slabs_per_item(Geometry* g) noexcept nogil:
    return max(1, SMALL_ITEM // (g.Cg * g.HW))


cdef inline Py_ssize_t _small_items(Geometry* g) noexcept nogil:
    """Work items of the small paths: runs of slabs within one sample, or
    g.m whole samples (_rank2_items)."""
    cdef Py_ssize_t gpi = _slabs_per_item(g)
    if g.m:
        return (g.N + g.m - 1) // g.m
    return g.N * ((g.G + gpi - 1) // gpi)


cdef inline bint _rank2_items(Geometry* g) noexcept nogil:
    """Whether the small path takes rank-2 samples g.m at a time (setting
    g.m; the caller tiles w and b g.m times): samples of at most 512 values
    in fewer than 16 groups, where a kernel call per sample paid for 8 or
    16 groups' statistics: (4096, 64) G=1 0.20x the time (had taken 13x
    the copy's), (1024, 128) G=4 0.55x. Samples of 32 groups or 768 values
    lost the tiling's microseconds (256x1024 G=32, 1024x768 G=1: 1.04x),
    as would small calls."""
    cdef Py_ssize_t gpi = _slabs_per_item(g)
    if g.HW == 1 and g.G < 16 and g.C <= 512 and gpi >= 2 * g.G and \
            g.N * g.C >= SERIAL_BELOW:
        g.m = min(g.N, gpi // g.G)
    return g.m > 0


cdef inline Py_ssize_t _small_block(Geometry* g, Py_ssize_t it,
                                    Py_ssize_t* ng) noexcept nogil:
    """First slab (n*G + g0) of small-path item it; ng[0] slabs from it."""
    cdef Py_ssize_t gpi = _slabs_per_item(g)
    if g.m:
        ng[0] = (min(g.N, (it + 1) * g.m) - it * g.m) * g.G
        return it * g.m * g.G
    cdef Py_ssize_t per = (g.G + gpi - 1) // gpi
    cdef Py_ssize_t g0 = (it % per) * gpi
    ng[0] = min(gpi, g.G - g0)
    return (it // per) * g.G + g0


cdef inline void _small_run(const floating* xs, floating* ys,
                            const floating* w, const floating* b,
                            Geometry* g, Py_ssize_t s0, Py_ssize_t ng,
                            double eps, int act, floating* mean_out,
                            floating* rstd_out) noexcept nogil:
    """Slabs s0 .. s0+ng-1 of one sample (at xs, into ys), small-slab path."""
    cdef Py_ssize_t c0 = (s0 % g.G) * g.Cg
    cdef floating* mo = NULL if mean_out == NULL else mean_out + s0
    cdef floating* ro = NULL if rstd_out == NULL else rstd_out + s0
    if floating is float:
        fg_small_slabs_f32(xs, ys, ng, g.Cg, g.HW, w + c0, b + c0, eps, act,
                           g.big + g.huge, mo, ro)
    else:
        fg_small_slabs_f64(xs, ys, ng, g.Cg, g.HW, w + c0, b + c0, eps, act,
                           g.big + g.huge, mo, ro)


cdef inline void _small_item(const floating* x, floating* y,
                             const floating* w, const floating* b,
                             Geometry* g, Py_ssize_t it, double eps, int act,
                             floating* mean_out, floating* rstd_out,
                             const char* x16, char* y16) noexcept nogil:
    """Item it of the small-slab path: a run of slabs of one sample; float16
    (x16, y16) converted in registers (fg_half_small)."""
    cdef Py_ssize_t ng, s0 = _small_block(g, it, &ng)
    cdef Py_ssize_t c0 = (s0 % g.G) * g.Cg
    if floating is float:
        if x16 != NULL:
            fg_small_slabs_f16(x16 + 2 * s0 * g.T, y16 + 2 * s0 * g.T, ng,
                               g.Cg, g.HW, w + c0, b + c0, eps, act,
                               NULL if mean_out == NULL else mean_out + s0,
                               NULL if rstd_out == NULL else rstd_out + s0)
            return
    _small_run(x + s0 * g.T, y + s0 * g.T, w, b, g, s0, ng, eps, act,
               mean_out, rstd_out)


cdef inline bint _split_units(Py_ssize_t S, Py_ssize_t K, Py_ssize_t values,
                              int nt) noexcept nogil:
    """Whether S units of work (NCHW slabs, channels-last samples) of K
    pieces (chunks; channels in the NCHW backward) and ``values`` values
    each share their pieces among nt threads, phase by phase, rather than
    go one unit per thread: when there are fewer units than threads, or
    when whole units would leave a thread idle for much of the call (3
    units on 2 threads take 2 unit-times where 1.5 would do) and are long
    enough to pay for the barriers between phases. Either way the same
    pieces, merged in the same order: the same bits."""
    if nt <= 1 or K <= 1:
        return False
    return S < nt or (S % nt != 0 and S < SPLIT_UNITS * nt and
                      values >= SPLIT_VALUES)


cdef inline Py_ssize_t _mirror(Py_ssize_t it, Py_ssize_t n,
                               int nt) noexcept nogil:
    """Iteration it of a static prange over n on nt threads, mirrored within
    the thread's own contiguous block (libgomp's static split: the first
    n % nt threads get one more)."""
    cdef Py_ssize_t q = n // nt, r = n % nt, t, lo, hi
    if it < r * (q + 1):
        t = it // (q + 1)
        lo = t * (q + 1)
        hi = lo + q + 1
    else:
        t = r + (it - r * (q + 1)) // q
        lo = r * (q + 1) + (t - r) * q
        hi = lo + q
    return lo + hi - 1 - it


cdef inline void _shared_moments(const floating* x, Geometry* g,
                                 Py_ssize_t it, double eps, Moments* m,
                                 const char* x16) noexcept nogil:
    """Chunk it (of all slabs' chunks in order) of a shared slab's
    statistics; float16 (x16) converted in registers."""
    if floating is float:
        if x16 != NULL:
            _half_moments(x16, g, it // g.K, it % g.K, eps, m)
            return
    _chunk_moments(x + (it // g.K) * g.T, g, it % g.K, eps, m)


cdef inline void _shared_apply(const floating* x, floating* y, Geometry* g,
                               Py_ssize_t it, const double* stats,
                               const floating* w, const floating* b, int act,
                               const char* x16, char* y16) noexcept nogil:
    """Chunk it's apply with its slab's stats; float16 as _shared_moments."""
    cdef Py_ssize_t s = it // g.K, u0 = (it % g.K) * g.U
    cdef Py_ssize_t u1 = min(u0 + g.U, g.T)
    if floating is float:
        if x16 != NULL:
            _half_apply(x16, y16, g, s, u0, u1, stats[2 * s],
                        stats[2 * s + 1], w, b, act)
            return
    _apply_units(x + s * g.T, y + s * g.T, g, s % g.G, u0, u1, stats[2 * s],
                 stats[2 * s + 1], w, b, act)


cdef void _forward_nchw(const floating* x, floating* y, const floating* w,
                        const floating* b, Geometry* g, double eps, int act,
                        floating* mean_out, floating* rstd_out,
                        Moments* parts, double* stats, int nt,
                        const char* x16=NULL, char* y16=NULL) noexcept nogil:
    """NCHW forward; float16 (x16, y16; x, y are NULL) converted in
    registers by the kernels (fg_half_fused, or fg_half_small for small
    slabs)."""
    cdef Py_ssize_t S = g.N * g.G, s, it, j, items
    cdef Py_ssize_t size = 2 if x16 != NULL else sizeof(floating)
    cdef bint back = g.T * size > L2_BYTES
    if _small(g, sizeof(floating)):
        # Small slabs: many slabs per call, no per-slab dispatch.
        # In calls larger than the cache each thread fences after its
        # items: fg_small_slabs may stream without (rank-2 float64 groups,
        # channel runs). Elsewhere one parallel loop (the block and its
        # fence cost a second barrier: 256x1024 at two threads 1.01-1.02x).
        items = _small_items(g)
        if nt == 1:
            for it in range(items):
                _small_item(x, y, w, b, g, it, eps, act, mean_out, rstd_out,
                            x16, y16)
            if g.big:
                fg_sfence()
        elif g.big:
            with parallel(num_threads=nt):
                for it in prange(items, schedule="static"):
                    _small_item(x, y, w, b, g, it, eps, act, mean_out,
                                rstd_out, x16, y16)
                fg_sfence()
        else:
            for it in prange(items, schedule="static", num_threads=nt):
                _small_item(x, y, w, b, g, it, eps, act, mean_out, rstd_out,
                            x16, y16)
        return
    if nt == 1:
        for s in range(S):
            _one_slab(x, y, g, s, eps, w, b, act, mean_out, rstd_out, x16,
                      y16)
    elif parts == NULL:
        # One thread per slab, from first read to last write.
        for s in prange(S, schedule="static", num_threads=nt):
            _one_slab(x, y, g, s, eps, w, b, act, mean_out, rstd_out, x16,
                      y16)
    else:
        # Few slabs for the threads (_split_units): share their chunks.
        with parallel(num_threads=nt):
            for it in prange(S * g.K, schedule="static"):
                _shared_moments(x, g, it, eps, &parts[it], x16)
            fastgn_barrier()
            for s in prange(S, schedule="static"):
                _merge_slab(&parts[s * g.K], g.K, 1, s, eps, stats,
                            mean_out, rstd_out)
            fastgn_barrier()
            for it in prange(S * g.K, schedule="static"):
                # each thread's chunks, last read first when big
                j = _mirror(it, S * g.K, nt) if back else it
                _shared_apply(x, y, g, j, stats, w, b, act, x16, y16)


# ------------------------------------------------------------ forward, NHWC
#
# Channels-last (HW > 1; with HW == 1 the memory is NCHW): a sample is HW rows
# of C values; a work item is a chunk of U rows of one sample, every group at
# once, so every access is contiguous and vectorizes over channels. Three
# phases: chunk moments per (item, group); merge per slab, in chunk order;
# apply per item. Each thread applies the items it read (static schedule).

cdef inline Py_ssize_t _half_rows_buf(Geometry* g, bint half) noexcept nogil:
    """Bytes of a thread's float32 buffer for float16 rows (half): a sample
    (g.keep) or a chunk; a 64-byte multiple, 0 without half."""
    return (4 * (g.T if g.keep else g.U) * g.C + 63) // 64 * 64 if half else 0


cdef inline Py_ssize_t _rows_scratch(Geometry* g, bint half) noexcept nogil:
    """Bytes of a thread's scratch in the rows path: for float16 (half) its
    buffer, then a row of 2C doubles and 3C (or 4C) values (the kernels'
    scratch pointer; the buffer after the row measured 1.06x the time on
    64x512x7x7 at two threads); 64-byte multiples."""
    return _half_rows_buf(g, half) + (8 * (6 * g.C + 8) + 63) // 64 * 64


cdef inline float* _half_chunk(char* scratch, Geometry* g, Py_ssize_t p0,
                               Py_ssize_t off, Py_ssize_t m, const char* x16,
                               bint convert) noexcept nogil:
    """Where the chunk of float16 rows from p0 on (its m values from off on
    in x16) is in float32 in the buffer before the thread's scratch row: at
    row p0 of the sample (g.keep), else at the buffer's start; converted
    there when ``convert``."""
    cdef float* buf = <float*>(scratch - _half_rows_buf(g, True))
    if g.keep:
        buf = buf + p0 * g.C
    if convert:
        fg_f16_to_f32(x16 + 2 * off, buf, m)
    return buf


cdef inline void _rows_moments(const floating* x, Geometry* g, Py_ssize_t it,
                               double eps, char* scratch, Moments* out,
                               const char* x16=NULL) noexcept nogil:
    """Chunk it's moments; float16 (x16; x is NULL) converted into the
    thread's buffer first (_half_chunk)."""
    cdef Py_ssize_t n = it // g.K, p0 = (it % g.K) * g.U
    cdef Py_ssize_t p1 = min(p0 + g.U, g.T)
    cdef double* dscr = <double*>scratch
    cdef floating* acc = <floating*>(dscr + 2 * g.C)
    if x16 != NULL:
        x = <floating*>_half_chunk(scratch, g, p0, (n * g.T + p0) * g.C,
                                   (p1 - p0) * g.C, x16, True)
    else:
        x = x + (n * g.T + p0) * g.C
    if floating is float:
        fg_rows_moments_f32(x, p1 - p0, g.C, g.G, eps, dscr, acc, acc + g.C,
                            acc + 2 * g.C, <double*>out)
    else:
        fg_rows_moments_f64(x, p1 - p0, g.C, g.G, eps, dscr, acc, acc + g.C,
                            acc + 2 * g.C, <double*>out)


cdef inline Py_ssize_t _rotation(const floating* y, Py_ssize_t C,
                                 int stream) noexcept nogil:
    """Values of y before its next 64-byte boundary when every row of C
    values starts at that offset in a line (plain stores), else 0: the rows
    kernels take their per-channel vectors rotated by it."""
    if stream or (C * <Py_ssize_t>sizeof(floating)) % 64:
        return 0
    return <Py_ssize_t>((-(<size_t>y)) & 63) // sizeof(floating)


cdef inline void _rows_apply(const floating* x, floating* y, Geometry* g,
                             Py_ssize_t it, const double* stats,
                             const floating* w, const floating* b, int act,
                             char* scratch, const char* x16=NULL,
                             char* y16=NULL,
                             Py_ssize_t ahead=0) noexcept nogil:
    """Chunk it's apply; float16 (x16, y16; x, y are NULL) normalized in the
    thread's buffer (converted there again unless g.keep) and converted
    out. Streamed, the values ``ahead`` on in x (the next sample's rows,
    or negative: the chunk before's; 0: none) are requested as it goes."""
    cdef Py_ssize_t n = it // g.K, p0 = (it % g.K) * g.U
    cdef Py_ssize_t p1 = min(p0 + g.U, g.T)
    cdef Py_ssize_t off = (n * g.T + p0) * g.C, q
    cdef float* buf = NULL
    if x16 != NULL:
        buf = _half_chunk(scratch, g, p0, off, (p1 - p0) * g.C, x16,
                          not g.keep)
        x = y = <floating*>buf
    else:
        x = x + off
        y = y + off
    q = _rotation(y, g.C, g.stream)
    cdef floating* mhi = <floating*>scratch
    cdef floating* sc = mhi + g.C
    cdef floating* sh = mhi + 2 * g.C
    stats = stats + 2 * n * g.G
    if floating is float:
        fg_rows_params_f32(stats, w, b, g.G, g.Cg, q, mhi, sc, sh)
        fg_apply_rows_f32(x, y, p1 - p0, g.C, mhi, sc, sh, q, act, g.stream,
                          ahead)
    else:
        fg_rows_params_f64(stats, w, b, g.G, g.Cg, q, mhi, sc, sh)
        fg_apply_rows_f64(x, y, p1 - p0, g.C, mhi, sc, sh, q, act, g.stream,
                          ahead)
    if y16 != NULL:
        fg_f32_to_f16(buf, y16 + 2 * off, (p1 - p0) * g.C)


cdef inline void _rows_sample(const floating* x, floating* y,
                              const floating* w, const floating* b,
                              Geometry* g, Py_ssize_t n, double eps, int act,
                              floating* mean_out, floating* rstd_out,
                              Moments* parts, double* stats, char* scratch,
                              const char* x16, char* y16) noexcept nogil:
    """One whole sample on the calling thread (hot in L2 when it fits);
    float16 (x16, y16) a chunk at a time through the thread's buffer."""
    cdef Py_ssize_t k, j, grp, ahead
    cdef Py_ssize_t sample = g.T * g.C * <Py_ssize_t>sizeof(floating)
    cdef bint back = sample > L2_BYTES
    cdef Py_ssize_t s0 = n * g.G
    for k in range(g.K):
        _rows_moments(x, g, n * g.K + k, eps, scratch,
                      &parts[(n * g.K + k) * g.G], x16)
    if g.K == 1:
        if floating is float:
            fg_finish_f32(<double*>&parts[s0], g.G, eps, stats + 2 * s0,
                          NULL if mean_out == NULL else mean_out + s0,
                          NULL if rstd_out == NULL else rstd_out + s0)
        else:
            fg_finish_f64(<double*>&parts[s0], g.G, eps, stats + 2 * s0,
                          NULL if mean_out == NULL else mean_out + s0,
                          NULL if rstd_out == NULL else rstd_out + s0)
    for grp in range(g.G if g.K > 1 else 0):
        _merge_slab(&parts[n * g.K * g.G + grp], g.K, g.G, n * g.G + grp,
                    eps, stats, mean_out, rstd_out)
    for j in range(g.K):
        k = g.K - 1 - j if back else j     # see _slab
        # streamed: the chunk before is requested (applied next, back) or,
        # in a sample that fits L2, the next sample's rows; not streamed,
        # the next sample's rows where four samples fit L2 (8x64x56x56's
        # 784 KiB samples took 1.06-1.12x the time with them: the next
        # sample pushed the current one out)
        ahead = 0
        if x16 == NULL and g.stream:
            if back:
                ahead = -g.U * g.C if k > 0 else 0
            elif n + 1 < g.N:
                ahead = g.T * g.C
        elif x16 == NULL and n + 1 < g.N and 4 * sample <= L2_BYTES:
            ahead = g.T * g.C
        _rows_apply(x, y, g, n * g.K + k, stats, w, b, act, scratch, x16,
                    y16, ahead)


cdef void _forward_rows(const floating* x, floating* y, const floating* w,
                        const floating* b, Geometry* g, double eps, int act,
                        floating* mean_out, floating* rstd_out,
                        Moments* parts, double* stats, char* scratch,
                        Py_ssize_t scratch_bytes, int nt,
                        const char* x16=NULL, char* y16=NULL) noexcept nogil:
    """Channels-last forward; float16 (x16, y16; x, y are NULL) a chunk at a
    time through a buffer in each thread's scratch (_rows_scratch)."""
    cdef Py_ssize_t items = g.N * g.K, S = g.N * g.G, it, s, n
    cdef char* mine = NULL
    # each thread applies its chunks last read first (see L2_BYTES)
    cdef bint back = g.T * g.C * <Py_ssize_t>sizeof(floating) > L2_BYTES
    scratch = scratch + _half_rows_buf(g, x16 != NULL)    # past the buffer
    if nt == 1:
        for n in range(g.N):
            _rows_sample(x, y, w, b, g, n, eps, act, mean_out, rstd_out,
                         parts, stats, scratch, x16, y16)
        return
    with parallel(num_threads=nt):
        mine = scratch + omp_get_thread_num() * scratch_bytes
        if not _split_units(g.N, g.K, g.T * g.C, nt):
            # A sample per thread, from first read to last write.
            for n in prange(g.N, schedule="static"):
                _rows_sample(x, y, w, b, g, n, eps, act, mean_out, rstd_out,
                             parts, stats, mine, x16, y16)
        else:
            # Few samples for the threads: their items are shared.
            for it in prange(items, schedule="static"):
                _rows_moments(x, g, it, eps, mine, &parts[it * g.G], x16)
            fastgn_barrier()
            for s in prange(S, schedule="static"):
                _merge_slab(&parts[(s // g.G) * g.K * g.G + s % g.G], g.K,
                            g.G, s, eps, stats, mean_out, rstd_out)
            fastgn_barrier()
            for it in prange(items, schedule="static"):
                _rows_apply(x, y, g, _mirror(it, items, nt) if back else it,
                            stats, w, b, act, mine, x16, y16)


cdef cnp.ndarray _work(Py_ssize_t nparts, Py_ssize_t S,
                       Py_ssize_t scratch_bytes, int nt, Moments** pp,
                       double** sp, char** scp):
    """One work array for a call (one allocation: it shows in small calls):
    nparts chunk moments at pp, S slab stats at sp, then scratch_bytes per
    thread at scp, 64-byte aligned."""
    cdef cnp.ndarray work = np.empty(8 * (3 * nparts + 2 * S + 8) +
                                     scratch_bytes * nt, dtype=np.uint8)
    pp[0] = <Moments*>cnp.PyArray_DATA(work)
    sp[0] = <double*>(pp[0] + nparts)
    scp[0] = <char*>(sp[0] + 2 * S)
    scp[0] = scp[0] + (-<size_t>scp[0]) % 64
    return work


cdef cnp.ndarray _forward_work(Geometry* g, int nt, bint half,
                               Py_ssize_t* scratch_bytes, Moments** pp,
                               double** sp, char** scp):
    """The work array of a forward (_work), or None: channels-last, chunk
    moments, stats and each thread's scratch (_rows_scratch; float16:
    half); NCHW slabs shared among the threads (_split_units), their chunk
    moments and stats, which _forward_nchw takes for that mode."""
    cdef Py_ssize_t S = g.N * g.G
    pp[0] = NULL
    sp[0] = NULL
    scp[0] = NULL
    scratch_bytes[0] = 0
    if g.rows:
        scratch_bytes[0] = _rows_scratch(g, half)
        return _work(S * g.K, S, scratch_bytes[0], nt, pp, sp, scp)
    if _split_units(S, g.K, g.T, nt):
        return _work(S * g.K, S, 0, nt, pp, sp, scp)
    return None


def forward(cnp.ndarray x, cnp.ndarray y, weight, bias, Py_ssize_t N,
            Py_ssize_t C, Py_ssize_t HW, Py_ssize_t G, double eps,
            bint channels_last, int activation, mean, rstd, int num_threads):
    """Normalize x into y (may be x). See fastgn._reference.forward."""
    cdef Geometry g
    cdef cnp.ndarray w, b, work = None
    cdef cnp.ndarray mo = mean, ro = rstd
    cdef bint f32 = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32
    cdef bint rows = channels_last and HW > 1
    cdef int nt = num_threads
    cdef Py_ssize_t scratch_bytes = 0
    _geometry(&g, N, C, HW, G, rows)
    g.big = 2 * N * C * HW * x.itemsize > STREAM_BYTES
    g.huge = N * C * HW * x.itemsize > STREAM_BYTES
    # channels-last rows with an activation keep plain stores: computed
    # into an L1 buffer and streamed from it (as NCHW slabs are), they took
    # 1.08-1.4x the time (13x320x64x64, 704x512x7x7, 88x64x56x56 silu)
    g.stream = g.big and HW > 1 and (activation == 0 or not rows) and \
        _whole_runs(y, C if rows else HW)
    if N * C * HW < SERIAL_BELOW:
        nt = 1
    w = _filled(C, cnp.PyArray_TYPE(x), True) if weight is None else weight
    b = _filled(C, cnp.PyArray_TYPE(x), False) if bias is None else bias
    if not rows and _small(&g, x.itemsize) and _rank2_items(&g):
        w, b = np.tile(w, g.m), np.tile(b, g.m)
    cdef Moments* pp
    cdef double* sp
    cdef char* scp
    work = _forward_work(&g, nt, False, &scratch_bytes, &pp, &sp, &scp)
    cdef void* mp = NULL if mo is None else cnp.PyArray_DATA(mo)
    cdef void* rp = NULL if ro is None else cnp.PyArray_DATA(ro)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* wp = cnp.PyArray_DATA(w)
    cdef void* bp = cnp.PyArray_DATA(b)
    with nogil:
        if f32 and rows:
            _forward_rows(<const float*>xp, <float*>yp, <const float*>wp,
                          <const float*>bp, &g, eps, activation, <float*>mp,
                          <float*>rp, pp, sp, scp, scratch_bytes, nt)
        elif rows:
            _forward_rows(<const double*>xp, <double*>yp, <const double*>wp,
                          <const double*>bp, &g, eps, activation,
                          <double*>mp, <double*>rp, pp, sp, scp,
                          scratch_bytes, nt)
        elif f32:
            _forward_nchw(<const float*>xp, <float*>yp, <const float*>wp,
                          <const float*>bp, &g, eps, activation, <float*>mp,
                          <float*>rp, pp, sp, nt)
        else:
            _forward_nchw(<const double*>xp, <double*>yp, <const double*>wp,
                          <const double*>bp, &g, eps, activation,
                          <double*>mp, <double*>rp, pp, sp, nt)


# ------------------------------------------------------------ forward, float16
#
# float16 data is computed in float32 with the bits of converting the whole
# array first. NCHW slabs are converted in registers by the kernels that can
# (the AVX2 and AVX-512 copies: one read and one write of the float16
# arrays), or go through a float32 buffer per thread a unit at a time (one
# slab, or a small-slab item): converted in, normalized there by the float32
# code above, converted out. Channels-last chunks go through the buffer in
# each thread's scratch (_rows_moments, _rows_apply; see forward_half).

cdef inline void _half_moments(const char* x, Geometry* g, Py_ssize_t s,
                               Py_ssize_t k, double eps,
                               Moments* m) noexcept nogil:
    """Chunk k of float16 slab s, converted in registers (fg_half_fused):
    _chunk_moments of the float32 values."""
    cdef Py_ssize_t u0 = k * g.U
    fg_moments_f16(x + 2 * (s * g.T + u0), min(u0 + g.U, g.T) - u0, 0, eps,
                   <double*>m)


cdef inline void _half_apply(const char* x, char* y, Geometry* g,
                             Py_ssize_t s, Py_ssize_t u0, Py_ssize_t u1,
                             double mean, double rstd, const float* w,
                             const float* b, int act) noexcept nogil:
    """Values [u0, u1) of float16 slab s: _apply_units on the
    float32 values, rounded once."""
    cdef float mhi = <float>mean
    cdef float mlo = <float>(mean - <double>mhi)
    cdef Py_ssize_t c0 = (s % g.G) * g.Cg
    fg_apply_span_f16(x + 2 * s * g.T, y + 2 * s * g.T, u0, u1, g.HW, mhi,
                      mlo, <float>rstd, w + c0, b + c0, act, g.stream,
                      x + 2 * (s + 1) * g.T
                      if g.stream and s + 1 < g.N * g.G else NULL)


cdef inline void _half_slab(const char* x, char* y, Geometry* g,
                            Py_ssize_t s, double eps, const float* w,
                            const float* b, int act, float* mean_out,
                            float* rstd_out) noexcept nogil:
    """Slab s of float16 x into y (may be x), converted in registers: _slab
    without a buffer, the same bits; a slab larger than L2 applied from its
    last chunk back."""
    cdef Moments acc, part
    cdef Py_ssize_t k, j, u0
    cdef double mean, rstd
    acc.n = acc.mean = acc.m2 = 0
    for k in range(g.K):
        _half_moments(x, g, s, k, eps, &part)
        _merge(&acc, &part)
    _finish(&acc, eps, &mean, &rstd)
    if mean_out != NULL:
        mean_out[s] = <float>mean
        rstd_out[s] = <float>rstd
    if 2 * g.T <= L2_BYTES:
        _half_apply(x, y, g, s, 0, g.T, mean, rstd, w, b, act)
        return
    for j in range(g.K):
        u0 = (g.K - 1 - j) * g.U
        _half_apply(x, y, g, s, u0, min(u0 + g.U, g.T), mean, rstd, w, b,
                    act)


cdef inline void _half_unit(const char* x, char* y, const float* w,
                            const float* b, Geometry* g, Py_ssize_t it,
                            bint small, double eps, int act, float* mo,
                            float* ro, float* buf) noexcept nogil:
    """Unit it (a slab, or a small-slab item) through the buffer buf."""
    cdef Py_ssize_t ng = 1, s0 = it
    if not small:
        _slab(buf, buf, g, it, eps, w, b, act, mo, ro, NULL,
              x + 2 * it * g.T, y + 2 * it * g.T)
        return
    s0 = _small_block(g, it, &ng)
    fg_f16_to_f32(x + 2 * s0 * g.T, buf, ng * g.T)
    _small_run(buf, buf, w, b, g, s0, ng, eps, act, mo, ro)
    fg_f32_to_f16(buf, y + 2 * s0 * g.T, ng * g.T)


def half_fused():
    """Whether float16 NCHW slabs of the chunked path are converted in
    registers (the AVX2 and AVX-512 copies) rather than through buffers."""
    return bool(fg_half_fused())


def forward_half(cnp.ndarray x, cnp.ndarray y, weight, bias, Py_ssize_t N,
                 Py_ssize_t C, Py_ssize_t HW, Py_ssize_t G, double eps,
                 bint channels_last, int activation, mean, rstd,
                 int num_threads):
    """float16 x into y (may be x), computed in float32: NCHW slabs
    converted in registers where the kernels take them (fg_half_fused: the
    chunked path; fg_half_small: small slabs), else through a
    float32 buffer per thread; channels-last a chunk at a time through a
    buffer per thread. False, with nothing written, where none suits (NCHW
    slabs through buffers above HALF_BUF values or split over threads):
    convert the whole array."""
    cdef Geometry g
    cdef cnp.ndarray w, b, work = None
    cdef cnp.ndarray mo = mean, ro = rstd
    cdef int nt = num_threads
    cdef bint small = False, fused = False
    cdef Py_ssize_t units = 0, per = 0, it
    cdef float* buf
    cdef Moments* pp = NULL
    cdef double* sp = NULL
    cdef char* scp = NULL
    _geometry(&g, N, C, HW, G, channels_last and HW > 1)
    if N * C * HW < SERIAL_BELOW:
        nt = 1
    if not FG_HAVE_F16:
        return False
    if g.rows:
        # A sample per thread (_forward_rows) stays converted in a buffer
        # from its statistics to its apply, if the threads' buffers fit in
        # the cache a call keeps (STREAM_BYTES); else each chunk is
        # converted for each (2x128x32x32x32 at two threads: 0.5x the time;
        # 1x320x64x64 at one thread, 5 MiB, 0.85x the other way).
        g.keep = nt * 4 * g.T * C <= STREAM_BYTES and \
            (nt == 1 or not _split_units(N, g.K, g.T * C, nt))
        work = _forward_work(&g, nt, True, &per, &pp, &sp, &scp)
    else:
        small = _small(&g, 4)
        fused = fg_half_small(g.Cg, HW) if small else fg_half_fused()
        if not fused and (g.T > HALF_BUF or (not small and nt > 1 and
                                            N * G < nt and g.K > 1)):
            return False
        if fused:
            g.big = 2 * N * C * HW * 2 > STREAM_BYTES
            g.stream = g.big and not small and g.T >= HALF_STREAM
            work = _forward_work(&g, nt, True, &per, &pp, &sp, &scp)
        else:                   # a buffer per thread, 64-byte strides
            per = (_slabs_per_item(&g) if small else 1) * g.T
            per = (per + 15) // 16 * 16 * 4
            work = _work(0, 0, per, nt, &pp, &sp, &scp)
    w = _filled(C, cnp.NPY_FLOAT32, True) if weight is None else weight
    b = _filled(C, cnp.NPY_FLOAT32, False) if bias is None else bias
    if small and _rank2_items(&g):
        w, b = np.tile(w, g.m), np.tile(b, g.m)
    units = _small_items(&g) if small else N * G
    cdef const char* xp = <const char*>cnp.PyArray_DATA(x)
    cdef char* yp = <char*>cnp.PyArray_DATA(y)
    cdef const float* wp = <const float*>cnp.PyArray_DATA(w)
    cdef const float* bp = <const float*>cnp.PyArray_DATA(b)
    cdef float* mp = NULL if mo is None else <float*>cnp.PyArray_DATA(mo)
    cdef float* rp = NULL if ro is None else <float*>cnp.PyArray_DATA(ro)
    buf = <float*>scp
    with nogil:
        if g.rows:
            _forward_rows(<const float*>NULL, <float*>NULL, wp, bp, &g, eps,
                          activation, mp, rp, pp, sp, scp, per, nt, xp, yp)
        elif fused:
            _forward_nchw(<const float*>NULL, <float*>NULL, wp, bp, &g, eps,
                          activation, mp, rp, pp, sp, nt, xp, yp)
        elif nt == 1:
            for it in range(units):
                _half_unit(xp, yp, wp, bp, &g, it, small, eps, activation,
                           mp, rp, buf)
        else:
            with parallel(num_threads=nt):
                buf = <float*>(scp + omp_get_thread_num() * per)
                for it in prange(units, schedule="static"):
                    _half_unit(xp, yp, wp, bp, &g, it, small, eps,
                               activation, mp, rp, buf)
    return True


# ------------------------------------------------------------ backward

cdef inline void _bwd_coefs(const floating* w, double rs, const double* ds,
                            const double* db, Py_ssize_t Cg, double M,
                            floating* B, floating* D) noexcept nogil:
    """B, D of dx = w*rstd*dy + B*(x - mean) + D for one group, from its
    channels' sums ds = sum dy*(x - mean), db = sum dy (M values)."""
    if floating is float:
        fg_bwd_coefs_f32(w, rs, ds, db, Cg, M, B, D)
    else:
        fg_bwd_coefs_f64(w, rs, ds, db, Cg, M, B, D)


cdef inline void _bwd_slab_sums(const floating* dy, const floating* x,
                                const floating* mean, Geometry* g,
                                Py_ssize_t s, Py_ssize_t c0, Py_ssize_t c1,
                                double* ds, double* db) noexcept nogil:
    """Channels c0 .. c1-1 of NCHW slab s: their sums of dy*(x - mean) and
    dy into ds + c0, db + c0 (the slab's Cg sums at ds, db). Each channel's
    sums are its own: the same bits for any channel range."""
    cdef Py_ssize_t n = s // g.G, c = (s % g.G) * g.Cg + c0
    cdef Py_ssize_t off = n * g.C * g.HW + c * g.HW
    if floating is float:
        fg_bwd_sums_f32(dy + off, x + off, c1 - c0, g.HW, mean[s], ds + c0,
                        db + c0)
    else:
        fg_bwd_sums_f64(dy + off, x + off, c1 - c0, g.HW, mean[s], ds + c0,
                        db + c0)


cdef inline void _bwd_slab_coefs(const floating* rstd, const floating* w,
                                 Geometry* g, Py_ssize_t s, const double* ds,
                                 const double* db,
                                 floating* coef) noexcept nogil:
    """B, D of NCHW slab s into coef[0], coef[1], from its channels' sums
    (at ds, db)."""
    _bwd_coefs(w + (s % g.G) * g.Cg, rstd[s], ds, db, g.Cg,
               <double>(g.Cg * g.HW), &coef[0], &coef[1])


cdef inline void _bwd_slab_dx(const floating* dy, const floating* x,
                              const floating* mean, const floating* rstd,
                              const floating* w, Geometry* g, Py_ssize_t s,
                              Py_ssize_t c0, Py_ssize_t c1,
                              const floating* coef,
                              floating* dx) noexcept nogil:
    """dx of channels c0 .. c1-1 of NCHW slab s, with its B, D in coef."""
    cdef Py_ssize_t c = (s % g.G) * g.Cg + c0
    cdef Py_ssize_t off = (s // g.G) * g.C * g.HW + c * g.HW
    if floating is float:
        fg_bwd_dx_f32(dy + off, x + off, dx + off, c1 - c0, g.HW, rstd[s],
                      w + c, coef[0], mean[s], coef[1], g.stream, 0)
    else:
        fg_bwd_dx_f64(dy + off, x + off, dx + off, c1 - c0, g.HW, rstd[s],
                      w + c, coef[0], mean[s], coef[1], g.stream, 0)


cdef Py_ssize_t SLAB_SUMS = 256    # at least, a side of the thread's sums


cdef inline Py_ssize_t _slab_sums(Geometry* g) noexcept nogil:
    """Doubles a side of a thread's slab sums (fg_bwd_slabs' cap)."""
    return max(g.Cg, SLAB_SUMS)


cdef inline Py_ssize_t _tmp_stride(Geometry* g) noexcept nogil:
    """Doubles between the threads' sums: in _backward_block 2 sides of
    max(Cg, SLAB_SUMS), channels-last a sample's sums and its chunks' (2*C
    each); whole lines and one more (sharing a line, each slab's sums of
    64x64x50 G=64 took the two threads 1.9x the time of one)."""
    return (2 * ((g.K + 1) * g.C if g.rows else _slab_sums(g)) + 7) // 8 * 8 \
        + 8


cdef struct Half:
    # float16 dy, x, dx of the NCHW slab path, each unit's slabs converted
    # to and from float32 in its thread's buffers (3 * stride floats)
    const char* dy
    const char* x
    char* dx
    float* buf
    Py_ssize_t stride


cdef inline float* _half_in(Half* h, Py_ssize_t off,
                            Py_ssize_t m) noexcept nogil:
    """The calling thread's buffers, with m values of dy and x from value
    off converted into the first two (dx goes in the third)."""
    cdef float* hb = h.buf + omp_get_thread_num() * 3 * h.stride
    fg_f16_to_f32(h.dy + 2 * off, hb, m)
    fg_f16_to_f32(h.x + 2 * off, hb + h.stride, m)
    return hb


cdef inline void _half_out(Half* h, const float* hb, Py_ssize_t off,
                           Py_ssize_t m) noexcept nogil:
    """The m values of dx in the third buffer out to dx from value off."""
    fg_f32_to_f16(hb + 2 * h.stride, h.dx + 2 * off, m)


cdef void _backward_block(const floating* dy, const floating* x,
                          const floating* mean, const floating* rstd,
                          const floating* w, Geometry* g, Py_ssize_t u,
                          Py_ssize_t RB, Py_ssize_t GR, floating* dx,
                          double* ds, double* db, double* tmp,
                          Half* h) noexcept nogil:
    """Unit u of the NCHW slab path: groups of range u % GR (of GR) of the
    samples of row block u // GR (RB samples), sample by sample
    (fg_bwd_slabs): the slabs' dx, their channels' sums (in tmp) added to
    the block's rows of ds, db. A channel's sums add in sample order for
    any GR. float16 (h not NULL): a sample's slabs of the unit converted
    into the thread's buffers, dx out of them, the float32 arithmetic on
    the same values: the bits of converting whole arrays."""
    cdef Py_ssize_t k = u // GR, r = u % GR, n, s, o, off, m
    cdef Py_ssize_t n0 = k * RB, g0 = r * g.G // GR, g1 = (r + 1) * g.G // GR
    cdef Py_ssize_t cap = _slab_sums(g)
    cdef float* hb = NULL
    for n in range(n0, min(g.N, n0 + RB)):
        s = n * g.G + g0
        o = k * g.C + g0 * g.Cg
        off = s * g.Cg * g.HW
        if floating is float:
            if h != NULL:
                m = (g1 - g0) * g.T
                hb = _half_in(h, off, m)
                fg_bwd_slabs_f32(hb, hb + h.stride, hb + 2 * h.stride,
                                 g1 - g0, g.Cg, g.HW, mean + s, rstd + s,
                                 w + g0 * g.Cg, ds + o, db + o, tmp, cap,
                                 n == n0, 0)
                _half_out(h, hb, off, m)
                continue
            fg_bwd_slabs_f32(dy + off, x + off, dx + off, g1 - g0, g.Cg, g.HW,
                             mean + s, rstd + s, w + g0 * g.Cg, ds + o,
                             db + o, tmp, cap, n == n0, g.stream)
        else:
            fg_bwd_slabs_f64(dy + off, x + off, dx + off, g1 - g0, g.Cg, g.HW,
                             mean + s, rstd + s, w + g0 * g.Cg, ds + o,
                             db + o, tmp, cap, n == n0, g.stream)


cdef inline void _fold_samples(const floating* rstd, Geometry* g,
                               Py_ssize_t k, Py_ssize_t RB, const double* ps,
                               double* ds, double* db) noexcept nogil:
    """Row block k's samples' rows of sums ps (ds then db, N rows of C
    each) added into its rows of ds, db as _bwd_rows_block and
    _backward_block add them (the same bits)."""
    cdef Py_ssize_t n, n0 = k * RB
    for n in range(n0, min(g.N, n0 + RB)):
        if floating is float:
            fg_acc_groups_f32(ds + k * g.C, db + k * g.C, ps + n * g.C,
                              ps + (g.N + n) * g.C, rstd + n * g.G, g.G,
                              g.Cg, n == n0)
        else:
            fg_acc_groups_f64(ds + k * g.C, db + k * g.C, ps + n * g.C,
                              ps + (g.N + n) * g.C, rstd + n * g.G, g.G,
                              g.Cg, n == n0)


# Channels-last (or HW == 1 with large groups): like the forward, a sample
# is HW rows of C values cut in chunks of U rows, all groups at once. Chunk
# sums per channel (phase 1); per sample, the chunks added in order and each
# group's B, D (phase 2); dx per chunk (phase 3). A sample per thread when
# there are enough, all three phases while it is hot; else phases split
# over the threads. The same chunks and order either way: the same bits.

cdef inline void _bwd_rows_sums(const floating* dy, const floating* x,
                                const floating* mean, Geometry* g,
                                Py_ssize_t it, double* ds, double* db,
                                floating* scratch) noexcept nogil:
    """Phase 1, chunk it: its per-channel sums into ds, db (C each); dy, x
    at the chunk's sample."""
    cdef Py_ssize_t n = it // g.K, p0 = (it % g.K) * g.U, c, grp
    cdef Py_ssize_t p1 = min(p0 + g.U, g.T), off = p0 * g.C
    cdef floating* muc = scratch
    for grp in range(g.G):
        for c in range(grp * g.Cg, (grp + 1) * g.Cg):
            muc[c] = mean[n * g.G + grp]
    if floating is float:
        fg_bwd_rows_sums_f32(dy + off, x + off, p1 - p0, g.C, muc, ds, db,
                             muc + g.C, muc + 2 * g.C)
    else:
        fg_bwd_rows_sums_f64(dy + off, x + off, p1 - p0, g.C, muc, ds, db,
                             muc + g.C, muc + 2 * g.C)


cdef inline void _bwd_rows_merge(const floating* rstd, const floating* w,
                                 Geometry* g, Py_ssize_t n,
                                 const double* parts, double* ds, double* db,
                                 floating* coef) noexcept nogil:
    """Phase 2, sample n: its chunks' sums (parts: 2*C a chunk, the
    sample's first at parts; NULL: one chunk, summed into ds, db already)
    added in order into ds, db (C each), then B, D of each group into coef
    (2 per group)."""
    cdef Py_ssize_t k, c
    cdef const double* pk
    for k in range(g.K if parts != NULL else 0):
        pk = parts + 2 * k * g.C
        if k == 0:
            for c in range(g.C):
                ds[c] = pk[c]
                db[c] = pk[g.C + c]
        else:
            for c in range(g.C):
                ds[c] += pk[c]
                db[c] += pk[g.C + c]
    if floating is float:
        fg_bwd_coefs_groups_f32(w, rstd + n * g.G, ds, db, g.G, g.Cg,
                                <double>(g.Cg * g.T), coef)
    else:
        fg_bwd_coefs_groups_f64(w, rstd + n * g.G, ds, db, g.G, g.Cg,
                                <double>(g.Cg * g.T), coef)


cdef inline void _bwd_rows_dx(const floating* dy, const floating* x,
                              const floating* mean, const floating* rstd,
                              const floating* w, Geometry* g, Py_ssize_t it,
                              const floating* coef, floating* dx,
                              floating* scratch) noexcept nogil:
    """Phase 3, chunk it: dx from per-channel vectors of the coefficients;
    dy, x, dx at the chunk's sample."""
    cdef Py_ssize_t n = it // g.K, p0 = (it % g.K) * g.U
    cdef Py_ssize_t p1 = min(p0 + g.U, g.T), off = p0 * g.C
    cdef Py_ssize_t q = _rotation(dx + off, g.C, g.stream)
    cdef floating* a = scratch
    cdef floating* bc = a + g.C
    cdef floating* muc = a + 2 * g.C
    cdef floating* dc = a + 3 * g.C
    cdef Py_ssize_t s0 = n * g.G
    if floating is float:
        fg_rows_dx_params_f32(mean + s0, rstd + s0, coef + 2 * s0, w, g.G,
                              g.Cg, q, a, bc, muc, dc)
        fg_bwd_rows_dx_f32(dy + off, x + off, dx + off, p1 - p0, g.C, a, bc,
                           muc, dc, q, g.stream, 0)
    else:
        fg_rows_dx_params_f64(mean + s0, rstd + s0, coef + 2 * s0, w, g.G,
                              g.Cg, q, a, bc, muc, dc)
        fg_bwd_rows_dx_f64(dy + off, x + off, dx + off, p1 - p0, g.C, a, bc,
                           muc, dc, q, g.stream, 0)


cdef inline void _bwd_rows_sample(const floating* dy, const floating* x,
                                  const floating* mean,
                                  const floating* rstd, const floating* w,
                                  Geometry* g, Py_ssize_t n, floating* dx,
                                  double* ds, double* db, double* parts,
                                  floating* coef, floating* scratch,
                                  Half* h, double* bs, double* bb,
                                  int first) noexcept nogil:
    """All three phases of sample n on the calling thread, its sums in ds,
    db (C each), its chunks' in parts (2*C a chunk), then added into its
    row block's rows bs, bb (stored if first; fg_acc_groups). float16 (h
    not NULL): the sample converted in the thread's buffers, as
    _backward_block's slabs."""
    cdef Py_ssize_t k, m = g.T * g.C, ahead = 0
    cdef const floating* sy = dy + n * m
    cdef const floating* sx = x + n * m
    cdef floating* sd = dx + n * m
    cdef float* hb = NULL
    if floating is float:
        if h != NULL:
            hb = _half_in(h, n * m, m)
            sy, sx, sd = hb, hb + h.stride, hb + 2 * h.stride
    cdef Py_ssize_t s0 = n * g.G
    # the next sample's dy and x requested during dx where eight samples
    # fit L2 (its three arrays, the next's two, and room; as _rows_sample's
    # apply)
    if h == NULL and not g.stream and n + 1 < g.N and \
            8 * m * <Py_ssize_t>sizeof(floating) <= L2_BYTES:
        ahead = m
    if g.K == 1:        # one call: its phases and the row sums
        if floating is float:
            fg_bwd_rows_one_f32(sy, sx, sd, g.T, g.G, g.Cg, mean + s0,
                                rstd + s0, w, ds, db, bs, bb, first,
                                coef + 2 * s0, scratch,
                                _rotation(sd, g.C, g.stream), g.stream,
                                ahead)
        else:
            fg_bwd_rows_one_f64(sy, sx, sd, g.T, g.G, g.Cg, mean + s0,
                                rstd + s0, w, ds, db, bs, bb, first,
                                coef + 2 * s0, scratch,
                                _rotation(sd, g.C, g.stream), g.stream,
                                ahead)
    else:
        for k in range(g.K):
            _bwd_rows_sums(sy, sx, mean, g, n * g.K + k, parts + 2 * k * g.C,
                           parts + (2 * k + 1) * g.C, scratch)
        _bwd_rows_merge(rstd, w, g, n, parts, ds, db, coef + 2 * s0)
        for k in range(g.K):
            _bwd_rows_dx(sy, sx, mean, rstd, w, g, n * g.K + k, coef, sd,
                         scratch)
        if floating is float:
            fg_acc_groups_f32(bs, bb, ds, db, rstd + s0, g.G, g.Cg, first)
        else:
            fg_acc_groups_f64(bs, bb, ds, db, rstd + s0, g.G, g.Cg, first)
    if floating is float:
        if h != NULL:
            _half_out(h, hb, n * m, m)


cdef inline void _bwd_rows_block(const floating* dy, const floating* x,
                                 const floating* mean, const floating* rstd,
                                 const floating* w, Geometry* g, Py_ssize_t k,
                                 Py_ssize_t RB, floating* dx, double* ds,
                                 double* db, double* tmp, floating* coef,
                                 floating* scratch, Half* h) noexcept nogil:
    """Row block k (samples k*RB ..) of the channels-last backward, a sample
    at a time (_bwd_rows_sample; its sums, then its chunks', in the thread's
    tmp), each sample's sums added into the block's rows ds, db (C each)
    scaled by its rstd. Rows per sample (N of C) had made 128x256x2x2's
    temporaries as large as its input, their pages faulted in every call."""
    cdef Py_ssize_t n, n0 = k * RB
    for n in range(n0, min(g.N, n0 + RB)):
        _bwd_rows_sample(dy, x, mean, rstd, w, g, n, dx, tmp, tmp + g.C,
                         tmp + 2 * g.C, coef, scratch, h, ds, db, n == n0)


cdef inline void _backward_rows(const floating* dy, const floating* x,
                                const floating* mean, const floating* rstd,
                                const floating* w, Geometry* g, Py_ssize_t k,
                                Py_ssize_t RB, floating* dx, double* ps,
                                double* pb, Half* h) noexcept nogil:
    """Row block k (samples k*RB ..) of the small-group backward (HW == 1):
    dx, and the block's parameter-gradient partial sums ps, pb (C each).
    float16 (h not NULL): the block's rows converted in the thread's
    buffers, as _backward_block's slabs."""
    cdef Py_ssize_t n, n0 = k * RB, n1 = min(g.N, (k + 1) * RB), o
    cdef Py_ssize_t m = (n1 - n0) * g.C
    cdef const floating* gy = dy + n0 * g.C
    cdef const floating* gx = x + n0 * g.C
    cdef floating* gd = dx + n0 * g.C
    cdef float* hb = NULL
    if floating is float:
        if h != NULL:
            hb = _half_in(h, n0 * g.C, m)
            gy, gx, gd = hb, hb + h.stride, hb + 2 * h.stride
    for n in range(n0, n1):
        o = (n - n0) * g.C
        if floating is float:
            # rank-2 groups of one vector to FG_BWD_FLAT_MAX values
            if fg_bwd_flat_f32(gy + o, gx + o, gd + o, g.G, g.Cg,
                               mean + n * g.G, rstd + n * g.G, w, ps, pb,
                               n > n0):
                continue
            fg_bwd_small_f32(gy + o, gx + o, gd + o, g.G, g.Cg,
                             mean + n * g.G, rstd + n * g.G, w, ps, pb,
                             n > n0)
        else:
            fg_bwd_small_f64(gy + o, gx + o, gd + o, g.G, g.Cg,
                             mean + n * g.G, rstd + n * g.G, w, ps, pb,
                             n > n0)
    if floating is float:
        if h != NULL:
            _half_out(h, hb, n0 * g.C, m)


cdef inline void _param_grads(Geometry* g, Py_ssize_t R, Py_ssize_t blk,
                              Py_ssize_t nblk, double* ds, double* db,
                              floating* dw, floating* dbias) noexcept nogil:
    """dweight, dbias of block blk of nblk blocks of whole groups, from the
    R row blocks' rows of ds, db added in order."""
    if floating is float:
        fg_param_grads_f32(R, g.C, g.G, blk * g.G // nblk,
                           (blk + 1) * g.G // nblk, ds, db, dw, dbias)
    else:
        fg_param_grads_f64(R, g.C, g.G, blk * g.G // nblk,
                           (blk + 1) * g.G // nblk, ds, db, dw, dbias)


cdef void _backward_impl(const floating* dy, const floating* x,
                         const floating* mean, const floating* rstd,
                         const floating* w, Geometry* g, floating* dx,
                         floating* dw, floating* dbias, double* ds,
                         double* db, Py_ssize_t RB, Py_ssize_t GR,
                         Py_ssize_t P, double* parts, floating* coef,
                         floating* scratch, Half* h, int nt) noexcept nogil:
    """The parameter gradients' sums go in rows of C (ds, db), one per
    block of RB samples (RB from N alone, so the order of the sums never
    depends on the thread count), added up in block order. Paths: rank-2
    (HW == 1, _backward_rows); g.rows: channels-last (a sample's sums and
    its chunk sums in parts, B and D in coef, 4*C values of scratch per
    thread; _bwd_rows_block; samples whose phases the threads share: every
    chunk's sums, then every sample's, in parts, folded into the blocks'
    rows after, _fold_samples); P > 0: NCHW slabs shared
    among the threads in P channel ranges each (per-sample rows of sums in
    parts, folded into the blocks' rows after; B, D of each slab in coef);
    else R*GR units of a block's samples and a range of groups
    (_backward_block; _tmp_stride doubles of parts per thread). float16
    through h: samples on their own threads, rank-2 row blocks, NCHW
    slabs not split."""
    cdef Py_ssize_t S = g.N * g.G, s, blk, k, n, it, u
    cdef Py_ssize_t nblk = min(g.G, 64)    # blocks of whole groups
    cdef Py_ssize_t R = (g.N + RB - 1) // RB
    cdef Py_ssize_t NC = g.N * g.C
    cdef floating* mine = NULL
    cdef double* tmp = NULL
    if nt == 1:
        # No parallel region: entering one took half of a small call.
        if g.rows:      # parts: a sample's sums and its chunks'
            for k in range(R):
                _bwd_rows_block(dy, x, mean, rstd, w, g, k, RB, dx,
                                ds + k * g.C, db + k * g.C, parts, coef,
                                scratch, h)
        elif g.HW == 1:
            for k in range(R):
                _backward_rows(dy, x, mean, rstd, w, g, k, RB, dx,
                               ds + k * g.C, db + k * g.C, h)
        else:
            for u in range(R * GR):
                _backward_block(dy, x, mean, rstd, w, g, u, RB, GR, dx, ds,
                                db, parts, h)
        for blk in range(nblk):
            _param_grads(g, R, blk, nblk, ds, db, dw, dbias)
        return
    with parallel(num_threads=nt):
        mine = scratch + omp_get_thread_num() * 4 * g.C if g.rows else NULL
        tmp = parts + omp_get_thread_num() * _tmp_stride(g)
        if g.rows and not _split_units(g.N, g.K, g.T * g.C, nt):
            for k in prange(R, schedule="static"):
                _bwd_rows_block(dy, x, mean, rstd, w, g, k, RB, dx,
                                ds + k * g.C, db + k * g.C, tmp, coef, mine,
                                h)
        elif g.rows:
            for it in prange(g.N * g.K, schedule="static"):
                n = it // g.K * g.T * g.C
                _bwd_rows_sums(dy + n, x + n, mean, g, it,
                               parts + 2 * it * g.C,
                               parts + (2 * it + 1) * g.C, mine)
            fastgn_barrier()
            # each sample's sums after the chunks' (NC each side)
            for n in prange(g.N, schedule="static"):
                _bwd_rows_merge(rstd, w, g, n, parts + 2 * n * g.K * g.C,
                                parts + 2 * g.K * NC + n * g.C,
                                parts + (2 * g.K + 1) * NC + n * g.C,
                                coef + 2 * n * g.G)
            fastgn_barrier()
            for it in prange(g.N * g.K, schedule="static"):
                n = it // g.K * g.T * g.C
                _bwd_rows_dx(dy + n, x + n, mean, rstd, w, g, it, coef,
                             dx + n, mine)
            for k in prange(R, schedule="static"):
                _fold_samples(rstd, g, k, RB, parts + 2 * g.K * NC, ds, db)
        elif g.HW == 1:
            for k in prange(R, schedule="static"):
                _backward_rows(dy, x, mean, rstd, w, g, k, RB, dx,
                               ds + k * g.C, db + k * g.C, h)
        elif P > 0:
            for it in prange(S * P, schedule="static"):
                s = it // P
                k = it % P
                n = s // g.G * g.C + s % g.G * g.Cg     # the slab's sums
                _bwd_slab_sums(dy, x, mean, g, s, k * g.Cg // P,
                               (k + 1) * g.Cg // P, parts + n,
                               parts + NC + n)
            fastgn_barrier()
            for s in prange(S, schedule="static"):
                n = s // g.G * g.C + s % g.G * g.Cg
                _bwd_slab_coefs(rstd, w, g, s, parts + n, parts + NC + n,
                                coef + 2 * s)
            fastgn_barrier()
            for it in prange(S * P, schedule="static"):
                s = it // P
                k = it % P
                _bwd_slab_dx(dy, x, mean, rstd, w, g, s, k * g.Cg // P,
                             (k + 1) * g.Cg // P, coef + 2 * s, dx)
            for k in prange(R, schedule="static"):
                _fold_samples(rstd, g, k, RB, parts, ds, db)
        else:
            for u in prange(R * GR, schedule="static"):
                _backward_block(dy, x, mean, rstd, w, g, u, RB, GR, dx, ds,
                                db, tmp, h)
        fastgn_barrier()
        for blk in prange(nblk, schedule="static"):
            _param_grads(g, R, blk, nblk, ds, db, dw, dbias)


def backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray mean,
             cnp.ndarray rstd, weight, Py_ssize_t N, Py_ssize_t C,
             Py_ssize_t HW, Py_ssize_t G, bint channels_last,
             cnp.ndarray dx, cnp.ndarray dweight, cnp.ndarray dbias,
             int num_threads):
    """Gradients of group_norm. See fastgn._reference.backward.

    float16 dy, x, dx (float32 statistics, weight and gradients of the
    parameters): NCHW slabs, rank-2 row blocks and channels-last samples
    converted a unit at a time in the threads' buffers; False, with
    nothing written, where that does not serve (work split among the
    threads phase by phase, units over HALF_BUF values): convert whole
    arrays and call this in float32."""
    cdef Geometry g
    cdef bint half = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT16
    cdef cnp.ndarray w = _filled(C, cnp.NPY_FLOAT32 if half else
                                 cnp.PyArray_TYPE(x), True) \
        if weight is None else weight
    # Partial sums per block of RB samples (RB from N alone, so the order
    # of the sums never depends on the thread count); channels-last
    # samples whose phases the threads share: per sample. NCHW slabs had
    # kept a row per sample too, which the other thread then read for the
    # parameter gradients: 256x256x3x3 at two threads took 1.08x one
    # thread's time.
    cdef Py_ssize_t RB = max(1, min(ROW_BLOCK, N // 16))
    cdef bint f32 = half or cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32
    cdef int nt = num_threads
    cdef Py_ssize_t nparts = 0, ncoef = 0, P = 0, GR = 1, rows, nhalf = 0, k
    cdef Half hv
    cdef Half* h = NULL
    _geometry(&g, N, C, HW, G, channels_last and HW > 1)
    # dx streamed when it alone exceeds the forward's threshold: the
    # backward's three arrays measured slower streamed up to 12 MiB each
    # (1.05-1.15x the time), faster from 24 MiB (0.7-0.89x)
    g.stream = N * C * HW * x.itemsize > STREAM_BYTES and HW > 1 and \
        _whole_runs(dx, C if g.rows else HW) and not half
    if N * C * HW < SERIAL_BELOW:
        nt = 1
    # work shared among the threads phase by phase (channels-last samples'
    # chunks, NCHW slabs' channel ranges)
    cdef bint split = _split_units(N, g.K, g.T * C, nt) if g.rows else \
        HW > 1 and _split_units(N * G, g.Cg, g.T, nt)
    rows = (N + RB - 1) // RB
    # float16: a unit is a sample (channels-last), a row block (rank 2) or
    # at least a slab
    hv.stride = g.T * C if g.rows else RB * C if HW == 1 else g.T
    if half and (not FG_HAVE_F16 or split or hv.stride > HALF_BUF):
        return False
    if g.rows:
        # every chunk's sums when the phases are shared, else a sample's
        # a thread (whole-array chunk sums had made 256x256x3x3 NHWC's
        # temporaries as large as its input, and a loop of calls 7.5x
        # slower: glibc handed their pages back to the system each call)
        nparts = 2 * N * (g.K + 1) * C if split else _tmp_stride(&g) * nt
        ncoef = 2 * N * G + 4 * C * nt + 16    # coef, then thread scratch
    elif split:
        # NCHW slabs shared by channel ranges (each channel's sums are its
        # own, so the same bits); enough ranges to balance the threads
        P = min(g.Cg, 4 * nt)
        nparts = 2 * N * C
        ncoef = 2 * N * G + 16
    elif HW > 1:
        # units of a row block and a range of groups: at least 4 a thread;
        # float16: few enough groups a unit for the buffers (any GR gives
        # the same bits)
        GR = min(G, max(1, (4 * nt + rows - 1) // rows))
        if half:
            k = max(1, HALF_UNIT // g.T)    # groups a unit at most
            GR = max(GR, (G + k - 1) // k)
            hv.stride = (G + GR - 1) // GR * g.T
        nparts = _tmp_stride(&g) * nt
    if half:        # three buffers a thread, each on whole lines
        hv.stride = (hv.stride + 15) // 16 * 16
        nhalf = (3 * hv.stride * nt + 1) // 2 + 8
    # one work array: ds, db, chunk sums (doubles), then coef and scratch,
    # then float16's buffers
    cdef cnp.ndarray work = np.empty(2 * rows * C + nparts + ncoef + nhalf,
                                     dtype=np.float64)
    cdef double* ds = <double*>cnp.PyArray_DATA(work)
    cdef double* pp = ds + 2 * rows * C
    cdef char* cp = <char*>(pp + nparts)
    cp = cp + (-<size_t>cp) % 64
    cdef void* p0 = cnp.PyArray_DATA(dy)
    cdef void* p1 = cnp.PyArray_DATA(x)
    cdef void* p2 = cnp.PyArray_DATA(mean)
    cdef void* p3 = cnp.PyArray_DATA(rstd)
    cdef void* p4 = cnp.PyArray_DATA(w)
    cdef void* p5 = cnp.PyArray_DATA(dx)
    cdef void* p6 = cnp.PyArray_DATA(dweight)
    cdef void* p7 = cnp.PyArray_DATA(dbias)
    cdef Py_ssize_t cs = 2 * N * G
    if half:
        hv.dy, hv.x, hv.dx = <const char*>p0, <const char*>p1, <char*>p5
        hv.buf = <float*>(pp + nparts + ncoef)
        hv.buf = hv.buf + ((-<size_t>hv.buf) % 64) // 4
        h = &hv
    with nogil:
        if f32:
            _backward_impl(<const float*>p0, <const float*>p1,
                           <const float*>p2, <const float*>p3,
                           <const float*>p4, &g, <float*>p5, <float*>p6,
                           <float*>p7, ds, ds + rows * C, RB, GR, P, pp,
                           <float*>cp, <float*>cp + (cs + 15) // 16 * 16, h,
                           nt)
        else:
            _backward_impl(<const double*>p0, <const double*>p1,
                           <const double*>p2, <const double*>p3,
                           <const double*>p4, &g, <double*>p5, <double*>p6,
                           <double*>p7, ds, ds + rows * C, RB, GR, P, pp,
                           <double*>cp, <double*>cp + (cs + 7) // 8 * 8, h,
                           nt)
    return True


# float16 dy, x, dx: its own name, so that the Python layer finds it only
# in the compiled kernels.
backward_half = backward


# ------------------------------------------------------------ floor

cdef void _scale_copy(const floating* src, floating* dst, Py_ssize_t n,
                      floating alpha, int nt) noexcept nogil:
    cdef Py_ssize_t blk = 16384, nb = (n + blk - 1) // blk, j, e
    cdef int stream = 2 * n * <Py_ssize_t>sizeof(floating) > STREAM_BYTES
    for j in prange(nb, schedule="static", num_threads=nt):
        e = min(n, (j + 1) * blk)
        if floating is float:
            fg_scale_copy_f32(src + j * blk, dst + j * blk, e - j * blk,
                              alpha, stream)
        else:
            fg_scale_copy_f64(src + j * blk, dst + j * blk, e - j * blk,
                              alpha, stream)


def scale_copy(cnp.ndarray src, cnp.ndarray dst, double alpha,
               int num_threads):
    """dst = alpha * src: one read and one write, the benchmarks' floor.

    Stores as the forward's apply does: streaming above STREAM_BYTES.
    """
    cdef Py_ssize_t n = cnp.PyArray_SIZE(src)
    cdef void* sp = cnp.PyArray_DATA(src)
    cdef void* dp = cnp.PyArray_DATA(dst)
    if cnp.PyArray_TYPE(src) == cnp.NPY_FLOAT32:
        with nogil:
            _scale_copy(<const float*>sp, <float*>dp, n, <float>alpha,
                        num_threads)
    else:
        with nogil:
            _scale_copy(<const double*>sp, <double*>dp, n, alpha,
                        num_threads)


cdef void _convert(const void* src, void* dst, Py_ssize_t n, bint to_f32,
                   int nt) noexcept nogil:
    cdef Py_ssize_t blk = 32768, nb = (n + blk - 1) // blk, j, e
    for j in prange(nb, schedule="static", num_threads=nt):
        e = min(n, (j + 1) * blk)
        if to_f32:
            fg_f16_to_f32(<const char*>src + 2 * j * blk,
                          <float*>dst + j * blk, e - j * blk)
        else:
            fg_f32_to_f16(<const float*>src + j * blk,
                          <char*>dst + 2 * j * blk, e - j * blk)


def convert(cnp.ndarray src, cnp.ndarray dst, int num_threads):
    """dst[...] = src between C-contiguous native float16 and float32."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(src)
    cdef bint to_f32 = cnp.PyArray_TYPE(src) == cnp.NPY_FLOAT16
    cdef void* sp = cnp.PyArray_DATA(src)
    cdef void* dp = cnp.PyArray_DATA(dst)
    if not FG_HAVE_F16:
        np.copyto(dst, src, casting="unsafe")
        return
    if n < SERIAL_BELOW:
        num_threads = 1
    with nogil:
        _convert(sp, dp, n, to_f32, num_threads)
