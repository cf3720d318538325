"""Hardening: concurrency, GIL release, leaks, hostile arguments, non-finite
values planted in one group, and one group of more than 2**31 values.

Every test runs on both backends (autouse ``backend`` fixture in conftest)
unless it says otherwise. Markers: ``slow`` (seconds), ``huge`` (> 8 GB of
memory; skipped unless ``--run-huge`` is given).

Complements, and does not repeat, test_validation.py (argument checks),
test_forward.py (in-place/overlapping ``out``, thread-count determinism,
non-finite values in float32/64 on small arrays) and test_backward.py.
"""

import copy
import gc
import itertools
import os
import re
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import fastgn

gn = fastgn.group_norm
gnb = fastgn.group_norm_backward

F16, F32, F64 = (np.dtype(np.float16), np.dtype(np.float32),
                 np.dtype(np.float64))
SENTINEL = -4242.5


def _data(rng, shape, dtype=F32, offset=0.5, scale=2.0):
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def _param_dtype(dtype):
    return F64 if np.dtype(dtype) == F64 else F32


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and \
        a.tobytes() == b.tobytes()


# ====================================================================
# 1. Concurrency: many Python threads calling into the kernels at once
# ====================================================================

def _concurrency_jobs(rng):
    """name -> callable(nt) returning a tuple of arrays.

    Sizes are above the kernels' serial threshold (32768 values) so that
    ``num_threads=2`` really runs OpenMP teams, from several Python threads
    at once. One read-only input is shared by many jobs.
    """
    xa = _data(rng, (2, 32, 32, 32), F32, offset=3.0)        # NCHW
    wa, ba = _data(rng, 32, F32, 1.0, 0.3), _data(rng, 32, F32, 0.0, 1.0)
    xb = _data(rng, (1, 2, 160, 160), F32, offset=-7.0)      # split slabs
    xc = _data(rng, (2, 24, 24, 64), F32)                    # NHWC
    wc, bc = _data(rng, 64, F32, 1.0, 0.3), _data(rng, 64, F32, 0.0, 1.0)
    xd = _data(rng, (4, 16, 24, 24), F64, offset=100.0)
    xe = _data(rng, (2, 32, 32, 32), F16)                    # NHWC float16
    xf = _data(rng, (1024, 64), F32)                         # HW == 1
    shared = _data(rng, (2, 32, 24, 24), F32, offset=1.5)
    shared.flags.writeable = False
    ws = _data(rng, 32, F32, 1.0, 0.3)
    wsl = _data(rng, 24, F32, 1.0, 0.3)
    dys = _data(rng, shared.shape, F32, 0.0, 1.0)
    dya = _data(rng, xa.shape, F32, 0.0, 1.0)
    dyc = _data(rng, xc.shape, F32, 0.0, 1.0)

    _, ma, ra = gn(xa, 8, wa, return_stats=True, num_threads=1)
    _, mc, rc = gn(xc, 8, wc, return_stats=True, channels_last=True,
                   num_threads=1)
    _, ms, rs = gn(shared, 8, ws, return_stats=True, num_threads=1)
    _, msl, rsl = gn(shared, 6, wsl, return_stats=True, channels_last=True,
                     num_threads=1)

    def with_out(nt):
        out = np.full(shared.shape, SENTINEL, F32)
        y = gn(shared, 4, ws, out=out, activation="relu", num_threads=nt)
        assert y is out
        return (out,)

    jobs = {
        "nchw_stats_silu": lambda nt: gn(xa, 8, wa, ba, return_stats=True,
                                         activation="silu", num_threads=nt),
        "split_slab": lambda nt: gn(xb, 1, return_stats=True,
                                    num_threads=nt),
        "nhwc_gelu": lambda nt: gn(xc, 8, wc, bc, channels_last=True,
                                   activation="gelu", return_stats=True,
                                   num_threads=nt),
        "f64_relu": lambda nt: (gn(xd, 4, activation="relu",
                                   num_threads=nt),),
        "f16_nhwc": lambda nt: gn(xe, 4, channels_last=True,
                                  return_stats=True, num_threads=nt),
        "hw1": lambda nt: (gn(xf, 16, num_threads=nt),),
        "bwd_nchw": lambda nt: gnb(dya, xa, ma, ra, 8, wa, num_threads=nt),
        "bwd_nhwc": lambda nt: gnb(dyc, xc, mc, rc, 8, wc,
                                   channels_last=True, num_threads=nt),
        # the shared read-only input
        "shared_stats": lambda nt: gn(shared, 8, ws, return_stats=True,
                                      num_threads=nt),
        "shared_nhwc_gelu": lambda nt: gn(shared, 6, wsl, channels_last=True,
                                          activation="gelu",
                                          return_stats=True, num_threads=nt),
        "shared_out_relu": with_out,
        "shared_strided": lambda nt: (gn(shared[:, ::2], 4, num_threads=nt),),
        "shared_as_f64": lambda nt: (gn(shared.astype(F64), 4,
                                        num_threads=nt),),
        "shared_bwd": lambda nt: gnb(dys, shared, ms, rs, 8, ws,
                                     num_threads=nt),
        "shared_bwd_nhwc": lambda nt: gnb(dys, shared, msl, rsl, 6, wsl,
                                          channels_last=True, num_threads=nt),
        "shared_as_grad": lambda nt: gnb(shared, shared, ms, rs, 8,
                                         num_threads=nt),
    }
    return jobs, shared


def test_concurrent_calls_bitwise_equal_single_threaded(rng):
    jobs, shared = _concurrency_jobs(rng)
    shared_bytes = shared.tobytes()
    expected = {name: tuple(job(1)) for name, job in jobs.items()}
    for name, res in expected.items():
        assert all(isinstance(a, np.ndarray) for a in res), name
    work = [(name, nt) for name in jobs for nt in (1, 2)] * 10
    order = rng.permutation(len(work))
    work = [work[i] for i in order]
    start = threading.Barrier(8)

    def run(item):
        name, nt = item
        return name, nt, tuple(jobs[name](nt))

    def first(item):            # line the 8 workers up before they start
        start.wait(timeout=60)
        return run(item)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(first, item) for item in work[:8]]
        futures += [pool.submit(run, item) for item in work[8:]]
        results = [f.result(timeout=300) for f in futures]
    assert len(results) == len(work)
    for name, nt, got in results:
        want = expected[name]
        assert len(got) == len(want), name
        for i, (g, w) in enumerate(zip(got, want)):
            assert _same_bits(g, w), (
                f"job {name!r}, num_threads={nt}, result {i}: differs from "
                f"the single-threaded answer")
    assert not shared.flags.writeable
    assert shared.tobytes() == shared_bytes, "the shared input was modified"


# ====================================================================
# 2. The kernels release the GIL
# ====================================================================

def _spin(stop, stamps):
    """Count as fast as possible; every 256 counts record (time, count)."""
    n = 0
    deadline = time.perf_counter() + 60.0           # never runs away
    while not stop.is_set():
        n += 1
        if not n & 255:
            t = time.perf_counter()
            stamps.append((t, n))
            if t > deadline:
                break


def _counts_inside(stamps, t0, t1):
    """Counter increments seen strictly inside [t0, t1]."""
    inside = [n for t, n in stamps if t0 < t < t1]
    return inside[-1] - inside[0] if len(inside) >= 2 else 0


def _gil_report(calls):
    """(call, ms, counts in the middle half of the call) of each call run
    twice, and of a control that holds the GIL, beside a counting thread."""
    stop = threading.Event()
    stamps = []
    spinner = threading.Thread(target=_spin, args=(stop, stamps),
                               daemon=True)
    spinner.start()
    windows = []
    shuffled = list(range(300_000))
    np.random.default_rng(6).shuffle(shuffled)
    try:
        time.sleep(0.05)                             # spinner up and running
        # Control: one C call that holds the GIL throughout (list.sort).
        for _ in range(2):
            t0 = time.perf_counter()
            sorted(shuffled)
            t1 = time.perf_counter()
            windows.append(("control_holds_gil", t0, t1))
        for name, call in calls.items():
            for _ in range(2):
                t0 = time.perf_counter()
                call()
                t1 = time.perf_counter()
                windows.append((name, t0, t1))
    finally:
        stop.set()
        spinner.join(timeout=10)
    assert not spinner.is_alive()
    report = []
    for name, t0, t1 in windows:
        d = t1 - t0
        # Only the middle of the call: its Python parts (argument checks,
        # allocation) may legitimately hand the GIL over at either end.
        counted = _counts_inside(stamps, t0 + 0.25 * d, t1 - 0.25 * d)
        report.append((name, round(d * 1e3, 1), counted))
    print("\n(call, ms, counts in the middle half):", report)
    return report


def test_kernels_release_the_gil(backend):
    if backend == "python":
        pytest.skip("targets the compiled kernels (NumPy releases the GIL "
                    "on its own)")
    n = 64 * 2 ** 20                                 # 64M float32 = 256 MiB
    block = np.random.default_rng(5).standard_normal(2 ** 20).astype(F32)
    x = np.empty(n, F32)
    x.reshape(64, -1)[:] = block
    xb = x[:n // 4].reshape(1, 2, 2 ** 13, 2 ** 10)   # 16M, contiguous
    xl = x.reshape(1, 2 ** 13, 2 ** 10, 8)              # NHWC view
    x = x.reshape(1, 8, 2 ** 13, 2 ** 10)
    x16 = np.empty(n // 2, F16)                      # 32M float16 values
    x16.reshape(32, -1)[:] = block
    x16 = x16.reshape(1, 2 ** 12, 2 ** 10, 8)
    _, mean, rstd = gn(xb, 2, return_stats=True)
    dy = xb
    calls = {
        "nchw_gelu": lambda: gn(x, 2, out=x, activation="gelu",
                                num_threads=1),
        "nhwc": lambda: gn(xl, 4, out=xl, channels_last=True,
                           num_threads=1),
        "f16_nhwc_stats": lambda: gn(x16, 2, channels_last=True,
                                     return_stats=True, num_threads=1),
        "backward": lambda: gnb(dy, dy, mean, rstd, 2, num_threads=1),
    }
    # A loaded machine can deschedule the main thread while the counting
    # thread holds the GIL, which the control (a call that holds the GIL
    # throughout) then shows: measure again, up to three times in all.
    for attempt in range(3):
        report = _gil_report(calls)
        control = [r for r in report if r[0] == "control_holds_gil"]
        if sum(r[2] for r in control) < 100:
            break
    total = sum(r[1] for r in report if r[0] != "control_holds_gil")
    assert total > 50, f"calls too short to tell: {report}"
    assert sum(r[2] for r in control) < 100, (
        f"the measurement cannot tell a GIL-holding call: {report}")
    for name in calls:
        rows = [r for r in report if r[0] == name]
        assert sum(r[2] for r in rows) > 100, (
            f"{name}: the counting thread barely ran while the kernel did "
            f"(name, ms, counts in the middle half of each call): {report}")


# ====================================================================
# 3. No leak over many calls, successful and failing
# ====================================================================

def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _leak_ops(rng):
    x = _data(rng, (2, 8, 4, 4), F32)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    x64 = x.astype(F64)
    x16 = xl.astype(F16)
    xm = _data(rng, (1, 32, 32, 32), F32)          # parallel path, scratch
    w, b = _data(rng, 8, F32, 1.0, 0.2), _data(rng, 8, F32, 0.0, 1.0)
    out64 = np.empty_like(x64)
    bad_out = np.full((2, 8, 4, 5), SENTINEL, F32)
    _, mean, rstd = gn(x, 4, w, return_stats=True)
    _, mean16, rstd16 = gn(x16, 2, return_stats=True, channels_last=True)
    xc = x.astype(np.complex64)

    def raises(exc, f, *a, **k):
        try:
            f(*a, **k)
        except exc:
            return
        raise AssertionError("no exception")

    # Parallel calls (partials, scratch, barriers) cost up to ~0.5 ms when
    # the OpenMP workers sleep between calls: the test runs them only every
    # 50th iteration.
    parallel = [
        lambda: gn(xm, 4, return_stats=True, channels_last=True,
                   num_threads=2),                  # NHWC, shared items
        lambda: gn(xm, 1, return_stats=True, num_threads=2),   # split slab
    ]
    return parallel, [
        lambda: gn(x, 4, w, b),
        lambda: gn(xl, 2, w, b, channels_last=True, activation="silu"),
        lambda: gn(x64, 4, out=out64, activation="relu"),
        lambda: gn(x, 2, w, return_stats=True),
        lambda: gn(x16, 2, w, b, channels_last=True, activation="gelu",
                   return_stats=True),
        lambda: gnb(x, x, mean, rstd, 4, w),
        lambda: gnb(x16, x16, mean16, rstd16, 2, channels_last=True),
        lambda: raises(ValueError, gn, x, 3),                  # groups
        lambda: raises(TypeError, gn, x, 2.0),
        lambda: raises(TypeError, gn, xc, 2),                  # dtype
        lambda: raises(ValueError, gn, x, 2, out=bad_out),     # out shape
        lambda: raises(TypeError, gn, x, 2, out=out64),        # out dtype
        lambda: raises(ValueError, gnb, x, x, mean, rstd, 2),  # stats shape
        lambda: raises(ValueError, gn, x, 2, activation="SiLU"),
    ]


def _under_asan():
    """AddressSanitizer's runtime is loaded (LD_PRELOAD for an ASan build):
    its quarantine keeps up to 256 MB of freed memory resident."""
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads /proc/self/statm")
def test_no_memory_leak(backend, rng):
    if _under_asan() and "quarantine_size_mb=0" not in os.environ.get(
            "ASAN_OPTIONS", ""):
        pytest.skip("RSS is meaningless under AddressSanitizer (quarantine "
                    "of freed memory); run with ASAN_OPTIONS="
                    "quarantine_size_mb=0 to check it there")
    # 50,000 calls on both backends (about 1 s compiled, 3 s NumPy).
    calls, parallel_every = 50_000, 50
    parallel, ops = _leak_ops(rng)
    k = len(ops)

    def run(count):
        for i in range(count):
            if i % parallel_every == 0:
                parallel[(i // parallel_every) % len(parallel)]()
            else:
                ops[i % k]()

    run(40 * k)                                     # warm-up
    gc.collect()
    before = _rss_bytes()
    run(calls)
    gc.collect()
    growth = _rss_bytes() - before
    assert growth < 4 * 2 ** 20, (
        f"RSS grew by {growth / 2 ** 20:.2f} MiB over {calls} calls")


# ====================================================================
# 4. Hostile arguments not covered by test_validation.py
# ====================================================================

def _reject(exc, patterns, call, *, guard=()):
    """``call()`` raises ``exc`` whose message matches every regex in
    ``patterns``; the arrays in ``guard`` keep their bytes."""
    before = [copy.deepcopy(a) for a in guard]
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for pat in patterns:
        assert re.search(pat, msg), f"{pat!r} not found in message {msg!r}"
    for a, b in zip(guard, before):
        assert _same_bits(a, b), "an array was written by a rejected call"
    return info


def _x(shape=(2, 6, 5), dtype=F32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _sentinel_out(x, dtype=None):
    return np.full(x.shape, SENTINEL, dtype or x.dtype)


# ------------------------------------------------------- 0-d arrays

@pytest.mark.parametrize("which", ["input", "grad_output", "both"])
def test_backward_zero_dim_arrays(which):
    x = _x((2, 4, 3))
    _, mean, rstd = gn(x, 2, return_stats=True)
    dy = np.ones_like(x)
    zx = np.array(1.5, F32)
    args = {"input": (dy, zx), "grad_output": (zx, x),
            "both": (zx, zx)}[which]
    _reject(ValueError, [r"\(\)"],
            lambda: gnb(*args, mean, rstd, 2), guard=(x, dy, mean, rstd))


@pytest.mark.parametrize("which", ["mean", "rstd"])
def test_backward_zero_dim_stats(which):
    x = _x((2, 4, 3))
    _, mean, rstd = gn(x, 2, return_stats=True)
    stats = {"mean": mean, "rstd": rstd}
    stats[which] = np.array(0.5, F32)
    _reject(ValueError, [which, r"\(\)"],
            lambda: gnb(x, x, stats["mean"], stats["rstd"], 2), guard=(x,))


def test_zero_dim_out():
    x = _x()
    out = np.array(SENTINEL, F32)
    _reject(ValueError, ["out", r"\(\)"], lambda: gn(x, 2, out=out),
            guard=(x, out))


# ------------------------------------------------------- object arrays

def _objects(a):
    o = np.empty(a.shape, dtype=object)
    o[...] = a.astype(float).tolist() if a.ndim else float(a)
    return o


@pytest.mark.parametrize("which", ["input", "grad_output", "mean", "rstd"])
def test_backward_object_arrays_of_floats(which):
    x = _x((2, 4, 3))
    _, mean, rstd = gn(x, 2, return_stats=True)
    args = {"grad_output": np.ones_like(x), "input": x, "mean": mean,
            "rstd": rstd}
    args[which] = _objects(args[which])
    _reject(TypeError, [which, "object"],
            lambda: gnb(args["grad_output"], args["input"], args["mean"],
                        args["rstd"], 2),
            guard=(x, mean, rstd))


def test_out_object_array_of_floats():
    x = _x()
    out = _objects(_sentinel_out(x))
    before = out.copy()
    _reject(TypeError, ["out", "object"], lambda: gn(x, 2, out=out),
            guard=(x,))
    assert (out == before).all()


# ------------------------------------------------------- zero-size, huge dims

# (shape, channels_last, num_groups): the product of the non-zero axes
# overflows int32 (the last one even int64), but a zero-sized axis makes the
# array empty. Nothing of the nominal size may be allocated.
_EMPTY_HUGE = [
    ((0, 2 ** 31, 4), False, 1),
    ((0, 2 ** 31, 4), False, 2 ** 31),
    ((0, 4, 2 ** 31), True, 2 ** 30),
    ((2 ** 16, 2 ** 16, 0), False, 1),
    ((2 ** 16, 2 ** 16, 0), False, 2 ** 4),
    ((2 ** 16, 0, 2 ** 16), True, 2 ** 4),
    ((0, 2 ** 20, 2 ** 20, 2 ** 16), False, 2 ** 20),
]


@pytest.mark.parametrize("shape,channels_last,G", _EMPTY_HUGE,
                         ids=lambda v: str(v).replace(" ", ""))
@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=str)
def test_empty_arrays_with_huge_dims_do_not_allocate(traced_peak, shape,
                                                     channels_last, G, dtype):
    N = shape[0]
    C = shape[-1] if channels_last else shape[1]
    sdt = F64 if dtype == F64 else F32
    x = np.empty(shape, dtype)
    out = np.empty(shape, dtype)
    mean = np.zeros((N, G), sdt)
    rstd = np.ones((N, G), sdt)
    w = np.ones(C, dtype) if C <= 2 ** 16 else None
    with traced_peak() as traced:
        y, m, r = gn(x, G, w, w, return_stats=True,
                     channels_last=channels_last)
        y2 = gn(x, G, out=out, channels_last=channels_last,
                activation="gelu")
        if C <= 2 ** 16:   # else grad_weight/bias are legitimately huge
            dx, dw, db = gnb(x, x, mean, rstd, G, w,
                             channels_last=channels_last)
    peak = traced.peak
    # the statistics are (N, G); the per-channel gradients are (C,)
    allowed = 3 * N * G * 8 + 8 * C * 8 + 4 * 2 ** 20
    assert peak < allowed, f"allocated {peak} bytes for an empty array"
    assert y.shape == shape and y.dtype == dtype and y.size == 0
    assert y2 is out
    assert m.shape == r.shape == (N, G) and m.dtype == sdt
    assert np.isnan(m).all() and np.isnan(r).all()
    if C <= 2 ** 16:
        assert dx.shape == shape and dx.size == 0
        assert dw.shape == db.shape == (C,)
        assert not dw.any() and not db.any()


@pytest.mark.parametrize("G", [2 ** 40, 2 ** 62], ids=str)
def test_zero_channels_with_absurd_num_groups(G):
    x = np.empty((1, 0), F32)
    _reject(ValueError, ["num_groups", str(G)],
            lambda: gn(x, G, return_stats=True))


# ------------------------------------------------------- num_groups

@pytest.mark.parametrize("G", [np.int8(3), np.uint64(3), np.int16(3),
                               np.array(3)],
                         ids=["int8", "uint64", "int16", "0d_int_array"])
def test_num_groups_numpy_integer_kinds(G):
    x = _x((2, 6, 5))
    want = gn(x, 3, return_stats=True)
    got = gn(x, G, return_stats=True)
    for a, b in zip(got, want):
        assert _same_bits(a, b)
    dy = np.ones_like(x)
    for a, b in zip(gnb(dy, x, want[1], want[2], G),
                    gnb(dy, x, want[1], want[2], 3)):
        assert _same_bits(a, b)


@pytest.mark.parametrize("G,exc,pats", [
    (np.int8(-3), ValueError, ["num_groups", "-3"]),
    (np.int8(0), ValueError, ["num_groups", r"\b0\b"]),
    (np.uint64(2 ** 64 - 1), ValueError, ["num_groups",
                                          str(2 ** 64 - 1)]),
    (10 ** 30, ValueError, ["num_groups", str(10 ** 30)]),
    (-(2 ** 63), ValueError, ["num_groups", str(-(2 ** 63))]),
    (True, TypeError, ["num_groups", "True"]),
    (np.bool_(False), TypeError, ["num_groups", "False"]),
    (np.float16(2), TypeError, ["num_groups", "2"]),
], ids=["int8_neg", "int8_zero", "uint64_max", "int_1e30", "int_-2**63",
        "bool", "np_bool", "float16"])
@pytest.mark.parametrize("fn", ["forward", "backward"])
def test_num_groups_hostile(G, exc, pats, fn):
    x = _x((2, 6, 5))
    out = _sentinel_out(x)
    _, mean, rstd = gn(x, 2, return_stats=True)
    dy = np.ones_like(x)
    if fn == "forward":
        call = lambda: gn(x, G, out=out)                         # noqa
    else:
        call = lambda: gnb(dy, x, mean, rstd, G)                 # noqa
    _reject(exc, pats, call, guard=(x, out, dy, mean, rstd))


@pytest.mark.parametrize("G", [np.array(2.0), np.array([2]), np.array(True)],
                         ids=["0d_float_array", "1d_array", "0d_bool_array"])
def test_num_groups_non_integer_arrays_message(G):
    x = _x((2, 6, 5))
    out = _sentinel_out(x)
    _reject(TypeError, ["num_groups"], lambda: gn(x, G, out=out),
            guard=(x, out))


# ------------------------------------------------------- weight dtype kind

_BAD_PARAMS = {
    "str": np.array(["1.0"] * 6),
    "bytes": np.array([b"1"] * 6),
    "complex_list": [1 + 0j] * 6,
    "object_floats": _objects(np.ones(6)),
    "datetime": np.zeros(6, "datetime64[s]"),
    "void": np.zeros(6, "V4"),
}
if np.dtype(np.longdouble).itemsize > 8:
    _BAD_PARAMS["longdouble"] = np.ones(6, np.longdouble)


@pytest.mark.parametrize("kind", sorted(_BAD_PARAMS))
@pytest.mark.parametrize("name", ["weight", "bias", "backward_weight"])
def test_param_of_wrong_dtype_kind(kind, name):
    p = _BAD_PARAMS[kind]
    dtname = re.escape(str(np.asarray(p).dtype))
    x = _x((2, 6, 5))
    out = _sentinel_out(x)
    if name == "backward_weight":
        _, mean, rstd = gn(x, 2, return_stats=True)
        _reject(TypeError, ["weight", dtname],
                lambda: gnb(np.ones_like(x), x, mean, rstd, 2, p),
                guard=(x,))
    else:
        _reject(TypeError, [name, dtname], lambda: gn(x, 2, out=out,
                                                      **{name: p}),
                guard=(x, out))


# ------------------------------------------------------- out aliases weight

class _ArrayLike:
    """Not an ndarray, but ``np.asarray`` gives a view of ``a``."""

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a


@pytest.mark.parametrize("wrap", ["memoryview", "array_like"])
@pytest.mark.parametrize("name", ["weight", "bias"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_out_aliasing_param_given_as_non_ndarray(dtype, name, wrap):
    x = _x((2, 6, 4), dtype)
    out = _sentinel_out(x)
    flat = out.reshape(-1)[:6]          # C-contiguous (C,) inside out[0]
    p = memoryview(flat) if wrap == "memoryview" else _ArrayLike(flat)
    assert np.shares_memory(np.asarray(p), out)
    _reject(ValueError, ["out", name], lambda: gn(x, 2, out=out,
                                                  **{name: p}),
            guard=(x, out))


@pytest.mark.compiled_only
def test_overlap_bits_match_numpy_bounds():
    """The compiled ``overlaps`` (one call for out against x, weight and
    bias) answers as ``np.may_share_memory`` on views of one buffer:
    reversed, strided, transposed, empty, adjacent, other itemsizes."""
    from fastgn import _kernels
    rng = np.random.default_rng(11)
    buf = np.arange(4 * 6 * 10, dtype=np.float32)
    cube = buf.reshape(4, 6, 10)

    def view():
        if rng.random() < 0.15:
            return buf.view(np.float64)[rng.integers(0, 60):][:rng.integers(
                0, 8)]
        idx = []
        for n in cube.shape:
            lo, hi = sorted(rng.integers(0, n + 1, 2))
            step = int(rng.choice([1, 2, 3]))
            idx.append(slice(lo, hi, step) if rng.random() < 0.7 else
                       slice(hi - 1 if hi else None, lo - 1 if lo else None,
                             -step))
        v = cube[tuple(idx)]
        return v.transpose(rng.permutation(3)) if rng.random() < 0.3 else v

    seen = set()
    for _ in range(3000):
        out, x = view(), view()
        w = view().reshape(-1) if rng.random() < 0.8 else None
        b = view()[..., :1] if rng.random() < 0.8 else None
        want = sum(bit for bit, a in ((1, x), (2, w), (4, b))
                   if a is not None and out.size and a.size
                   and np.may_share_memory(out, a))
        assert _kernels.overlaps(out, x, w, b) == want, (out.strides,
                                                          x.strides)
        seen.add(want)
    assert seen == set(range(8))        # every combination came up
    # ranges that touch without sharing a byte, and one byte shared
    assert _kernels.overlaps(buf[:10], buf[10:20], None, None) == 0
    assert _kernels.overlaps(buf[10:20], buf[:10], buf[20:], None) == 0
    assert _kernels.overlaps(buf[:10], buf[9:20], None, buf[::-1]) == 5
    assert _kernels.overlaps(buf.view(np.uint8)[:41], buf[10:], None,
                             None) == 1


# ------------------------------------------------------- out views the input

def _alias(x, how):
    if how == "transposed":                 # same memory, other strides
        return x.transpose(0, 2, 1, 3)
    if how == "reversed_rows":
        return x[:, ::-1]
    return x.view()                         # same strides, distinct object


@pytest.mark.parametrize("how", ["transposed", "reversed_rows", "view"])
@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=str)
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_out_is_a_view_of_input_channels_last(how, dtype, activation):
    """Valid: ``out`` aliases the channels-last input with other strides;
    the result equals the one computed from a copy (stats too)."""
    x = _x((2, 6, 6, 8), dtype, seed=3)      # (N, H, W, C), H == W
    w = _data(np.random.default_rng(4), 8, _param_dtype(dtype), 1.0, 0.3)
    xc = x.copy()
    want = gn(xc, 4, w, w, channels_last=True, activation=activation,
              return_stats=True)
    out = _alias(x, how)
    assert np.shares_memory(out, x) and out.shape == x.shape
    y, m, r = gn(x, 4, w, w, channels_last=True, activation=activation,
                 return_stats=True, out=out)
    assert y is out
    np.testing.assert_array_equal(out, want[0])
    assert _same_bits(m, want[1]) and _same_bits(r, want[2])


@pytest.mark.parametrize("how", ["transposed", "reversed_rows", "view"])
@pytest.mark.parametrize("bad", ["eps_decimal", "activation_case",
                                 "groups", "weight_str"])
def test_rejected_call_with_out_viewing_input(how, bad):
    x = _x((2, 6, 6, 8), F32, seed=5)
    out = _alias(x, how)
    kwargs = {"eps_decimal": {"eps": Decimal("1e-5")},
              "activation_case": {"activation": "SiLU"},
              "groups": {},
              "weight_str": {"weight": np.array(["1"] * 8)}}[bad]
    G = 3 if bad == "groups" else 4
    exc = ValueError if bad in ("activation_case", "groups") else TypeError
    _reject(exc, [], lambda: gn(x, G, out=out, channels_last=True, **kwargs),
            guard=(x,))


# ------------------------------------------------------- eps types

@pytest.mark.parametrize("eps,as_float", [
    (np.float16(1e-3), float(np.float16(1e-3))),
    (np.float16(0), 0.0),
    (np.int64(1), 1.0),
    (np.uint8(2), 2.0),
    (np.float32(0.25), float(np.float32(0.25))),
    (2 ** 70, float(2 ** 70)),
], ids=["f16", "f16_zero", "int64", "uint8", "f32", "int_2**70"])
def test_eps_numpy_and_int_types_accepted(eps, as_float):
    x = _x((2, 6, 5), F64, seed=6)
    want = gn(x, 2, eps=as_float, return_stats=True)
    got = gn(x, 2, eps=eps, return_stats=True)
    for a, b in zip(got, want):
        assert _same_bits(a, b)


def _huge_longdouble():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.longdouble(10) ** 400       # finite only in long double


_BAD_EPS = [
    (Decimal("1e-5"), TypeError, ["eps", "Decimal", r"0\.00001"]),
    (Fraction(1, 100000), TypeError, ["eps", "Fraction", "100000"]),
    (1e-5 + 0j, TypeError, ["eps", "complex"]),
    (np.array(1e-5), TypeError, ["eps", "ndarray"]),
    (np.bool_(True), TypeError, ["eps", "True"]),
    (np.float16(-1), ValueError, ["eps", "-1"]),
    (np.float16("inf"), ValueError, ["eps", "(?i)inf"]),
    (np.float16("nan"), ValueError, ["eps", "(?i)nan"]),
    (np.int64(-1), ValueError, ["eps", "-1"]),
    (-(10 ** 400), ValueError, ["eps", "-1000"]),
]
_BAD_EPS_IDS = ["Decimal", "Fraction", "complex", "0d_array", "np_bool",
                "f16_neg", "f16_inf", "f16_nan", "int64_neg", "int_-1e400"]
if np.finfo(np.longdouble).max > np.finfo(np.float64).max:
    _BAD_EPS.append((_huge_longdouble(), ValueError, ["eps"]))
    _BAD_EPS_IDS.append("longdouble_1e400")


@pytest.mark.parametrize("eps,exc,pats", _BAD_EPS, ids=_BAD_EPS_IDS)
def test_eps_hostile(eps, exc, pats):
    x = _x()
    out = _sentinel_out(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _reject(exc, pats, lambda: gn(x, 2, eps=eps, out=out),
                guard=(x, out))


# ------------------------------------------------------- activation names

@pytest.mark.parametrize("act", ["SiLU", "ReLU", "GELU", "Relu", " relu",
                                 "relu\n", "gelu_tanh", "silu "])
def test_activation_wrong_case_or_spacing(act):
    x = _x()
    out = _sentinel_out(x)
    _reject(ValueError, ["activation", re.escape(repr(act)), "relu", "silu",
                         "gelu"],
            lambda: gn(x, 2, out=out, activation=act), guard=(x, out))


def test_activation_numpy_str_accepted():
    x = _x()
    assert _same_bits(gn(x, 2, activation=np.str_("silu")),
                      gn(x, 2, activation="silu"))


# ------------------------------------------------------- unaligned memory

def _unaligned(a):
    """A C-contiguous, *unaligned* copy of ``a`` (offset 1 in a buffer)."""
    a = np.asarray(a)
    raw = bytearray(a.nbytes + 1)
    u = np.frombuffer(raw, dtype=a.dtype, offset=1)[:a.size].reshape(a.shape)
    u[...] = a
    assert u.flags.c_contiguous and not u.flags.aligned
    return u


class _AlignmentSpy:
    """Stands in for the kernel module; records every unaligned ndarray
    argument handed to a kernel (misaligned float loads and stores are
    undefined behaviour in C: UBSan reports them)."""

    def __init__(self, kern):
        self._kern = kern
        self.unaligned = []

    def __getattr__(self, name):
        attr = getattr(self._kern, name)
        if name not in ("forward", "forward_half", "backward", "convert",
                        "scale_copy"):
            return attr

        def spy(*args):
            for i, a in enumerate(args):
                if isinstance(a, np.ndarray) and a.size and \
                        not a.flags.aligned:
                    self.unaligned.append(f"{name} argument {i}")
            return attr(*args)
        return spy


_UNALIGNED_CASES = ["input_f32", "input_f64", "input_f16", "out_f32",
                    "out_f64", "out_f16", "weight", "bias", "bwd_grad",
                    "bwd_input", "bwd_mean", "bwd_weight"]


@pytest.mark.parametrize("case", _UNALIGNED_CASES)
def test_kernels_never_see_unaligned_arrays(monkeypatch, case):
    dt = {"input_f64": F64, "out_f64": F64, "input_f16": F16,
          "out_f16": F16}.get(case, F32)
    x = _x((2, 8, 6, 5), dt, seed=7)
    w = _data(np.random.default_rng(8), 8, _param_dtype(dt), 1.0, 0.3)
    y0, m0, r0 = gn(x, 4, w, w, return_stats=True)
    dy = _x(x.shape, dt, seed=9)
    g0 = gnb(dy, x, m0, r0, 4, w)
    spy = _AlignmentSpy(fastgn._api._kern)
    monkeypatch.setattr(fastgn._api, "_kern", spy)
    if case.startswith("bwd_"):
        args = {"grad": dy, "input": x, "mean": m0, "weight": w}
        key = case[4:]
        args[key] = _unaligned(args[key])
        got = gnb(args["grad"], args["input"], args["mean"], r0, 4,
                  args["weight"])
        want = g0
    else:
        xin, wb, out = x, {"weight": w, "bias": w}, None
        if case.startswith("input"):
            xin = _unaligned(x)
        elif case.startswith("out"):
            out = _unaligned(np.full(x.shape, SENTINEL, dt))
        else:
            wb[case] = _unaligned(w)
        got = gn(xin, 4, wb["weight"], wb["bias"], out=out,
                 return_stats=True)
        want = (y0, m0, r0)
        if out is not None:
            assert got[0] is out
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert not spy.unaligned, f"unaligned arrays reached the kernels: " \
        f"{spy.unaligned}"


# ====================================================================
# 5. NaN/Inf planted in one group
# ====================================================================

# (id, shape, num_groups, channels_last, num_threads)
_POISON_CASES = [
    ("small_nchw", (3, 8, 5, 5), 4, False, 1),
    ("small_nhwc", (3, 5, 5, 8), 4, True, 1),
    ("split_nchw", (1, 4, 96, 96), 2, False, 4),    # slabs split in chunks
    ("items_nhwc", (2, 48, 48, 16), 4, True, 2),    # several row items
    ("hw1", (512, 24), 6, False, 2),                # channels-last memory
    ("hw1_cl", (512, 24), 6, True, 2),
]

_TOL = {F16: (2e-3, 4e-3), F32: (1e-5, 1e-5), F64: (1e-12, 1e-12)}


def _group_index(shape, channels_last, G, n, g):
    """Index of slab (n, g) of an array of ``shape``."""
    C = shape[-1] if channels_last else shape[1]
    Cg = C // G
    sl = slice(g * Cg, (g + 1) * Cg)
    if channels_last:
        return (n, Ellipsis, sl)
    return (n, sl)


@pytest.mark.parametrize("case", _POISON_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("activation", [None, "relu", "silu", "gelu"])
@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=str)
def test_nonfinite_in_one_group(rng, case, activation, dtype):
    _, shape, G, cl, nt = case
    N = shape[0]
    C = shape[-1] if cl else shape[1]
    Cg = C // G
    pdt = _param_dtype(dtype)
    x = _data(rng, shape, dtype, offset=2.0)
    w = _data(rng, C, pdt, 1.0, 0.4)
    b = _data(rng, C, pdt, 0.0, 1.0)
    kw = dict(channels_last=cl, activation=activation, num_threads=nt,
              return_stats=True)
    y0, m0, r0 = gn(x, G, w, b, **kw)
    assert np.isfinite(y0).all()
    n_bad, g_bad = N - 1, G // 2
    bad_idx = _group_index(shape, cl, G, n_bad, g_bad)
    bad = np.zeros(shape, bool)
    bad[bad_idx] = True
    good_stats = np.ones((N, G), bool)
    good_stats[n_bad, g_bad] = False
    slab_positions = np.flatnonzero(bad)
    for poison, where in itertools.product(
            [np.nan, np.inf, -np.inf], [0, len(slab_positions) // 2, -1]):
        xp = x.copy()
        xp.reshape(-1)[slab_positions[where]] = poison
        y, m, r = gn(xp, G, w, b, **kw)
        label = f"poison {poison} at slab position {where}"
        assert np.isnan(y[bad]).all(), label
        np.testing.assert_array_equal(y[~bad], y0[~bad], err_msg=label)
        assert not np.isfinite(m[n_bad, g_bad]), label
        assert np.isnan(r[n_bad, g_bad]), label
        np.testing.assert_array_equal(m[good_stats], m0[good_stats],
                                      err_msg=label)
        np.testing.assert_array_equal(r[good_stats], r0[good_stats],
                                      err_msg=label)
    # The other groups equal the result of normalizing each group alone.
    rtol, atol = _TOL[dtype]
    others = {(n_bad, (g_bad + 1) % G), (0, g_bad), (0, 0)}
    for n, g in sorted(others - {(n_bad, g_bad)}):
        idx = _group_index(shape, cl, G, n, g)
        alone = x[(slice(n, n + 1),) + idx[1:]]
        sl = slice(g * Cg, (g + 1) * Cg)
        ya, ma, ra = gn(alone, 1, w[sl], b[sl], **kw)
        np.testing.assert_allclose(y[idx].astype(F64), ya[0].astype(F64),
                                   rtol=rtol, atol=atol,
                                   err_msg=f"group ({n}, {g})")
        np.testing.assert_allclose(m[n, g], ma[0, 0], rtol=rtol, atol=atol)
        np.testing.assert_allclose(r[n, g], ra[0, 0], rtol=rtol, atol=atol)


# ====================================================================
# 6. One group of more than 2**31 values (needs ~8.6 GB; --run-huge)
# ====================================================================

def _available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


_HUGE_N = 2 ** 31 + 1000
_PERIOD = 1000


def _pattern():
    """The repeating values: 3 + a ramp over [0, 1), in float32."""
    return (3.0 + np.arange(_PERIOD) / _PERIOD).astype(F32)


def _pattern_stats(n, eps):
    """Exact (float64) mean and rstd of the first n values of the pattern
    repeated: the first n % P values appear once more than the others."""
    v = _pattern().astype(F64)
    counts = np.full(_PERIOD, n // _PERIOD, F64)
    counts[:n % _PERIOD] += 1
    mean = (counts * v).sum() / n
    mean += (counts * (v - mean)).sum() / n
    var = (counts * (v - mean) ** 2).sum() / n
    return mean, 1.0 / np.sqrt(var + eps)


@pytest.mark.huge
@pytest.mark.slow
@pytest.mark.parametrize("nt", [1, 2])
def test_single_group_over_2_31_values_in_place(request, backend, nt):
    if not request.config.getoption("--run-huge", default=False):
        pytest.skip("needs ~8.6 GB of memory: run with --run-huge")
    if backend == "python":
        pytest.skip("the NumPy fallback computes in float64 temporaries: "
                    "several times the array's 8.6 GB")
    avail = _available_bytes()
    if avail is None or avail < 12 * 2 ** 30:
        pytest.skip(f"needs 12 GB of available memory, have {avail}")
    x = np.empty((1, 1, _HUGE_N), F32)
    flat = x.reshape(-1)
    block = np.tile(_pattern(), 2 ** 14)           # 16,384,000 values
    for s in range(0, _HUGE_N, block.size):
        e = min(_HUGE_N, s + block.size)
        flat[s:e] = block[:e - s]
    mean_ref, rstd_ref = _pattern_stats(_HUGE_N, 1e-5)
    t0 = time.perf_counter()
    y, mean, rstd = gn(x, 1, out=x, return_stats=True, num_threads=nt)
    elapsed = time.perf_counter() - t0
    print(f"\n{_HUGE_N} values, num_threads={nt}: {elapsed:.2f} s; mean "
          f"{mean[0, 0]!r} (exact {mean_ref!r}), rstd {rstd[0, 0]!r} "
          f"(exact {rstd_ref!r})")
    assert y is x
    assert mean.shape == rstd.shape == (1, 1)
    np.testing.assert_allclose(mean[0, 0], mean_ref, rtol=1e-6)
    np.testing.assert_allclose(rstd[0, 0], rstd_ref, rtol=1e-6)
    v = _pattern().astype(F64)
    idx = np.array([0, 1, 999, 1000, 123_456_789, 2 ** 31 - 1, 2 ** 31,
                    2 ** 31 + 1, 2 ** 31 + 500, _HUGE_N - 2, _HUGE_N - 1])
    want = (v[idx % _PERIOD] - mean_ref) * rstd_ref
    got = flat[idx].astype(F64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # every value is one of the P normalized pattern values
    tail = flat[2 ** 31 - 2 * _PERIOD:]
    np.testing.assert_allclose(
        tail.astype(F64),
        (v[(np.arange(2 ** 31 - 2 * _PERIOD, _HUGE_N)) % _PERIOD] -
         mean_ref) * rstd_ref, rtol=1e-5, atol=1e-5)
