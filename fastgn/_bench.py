"""Benchmark harness behind ``python -m fastgn bench``.

Method
------
Every comparison printed here is a ratio of medians measured side by side:
for one shape, all contenders (fastgn, fastgn with ``out=``, the NumPy
reference, PyTorch, the streaming floor, at every thread count) are timed
round-robin in one process -- each round runs every contender once, in a
freshly shuffled order -- so machine noise hits all of them alike. A sample
is the ``time.perf_counter_ns`` duration of a batch of calls (batched so one
sample lasts at least ``min_sample_ms``; this matters only for tiny shapes)
divided by the batch size; a contender's time is the median of its samples. The
garbage collector is off while timing.

The *streaming floor* is one read plus one write of the same number of bytes
at the same thread count: the extension's private ``scale_copy`` kernel
(``dst = alpha * src`` in a ``prange``, with the forward's store policy:
streaming stores when input plus output exceed the last-level cache) when
available, else
``np.multiply(x, 1.0, out=y)`` (single-threaded). A float16 floor moves the
same bytes as a float32 array (scale_copy takes float32/float64 only).

Only NumPy is required; PyTorch is used when it imports.
"""

import argparse
import gc
import math
import os
import platform
import random
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import repeat
from typing import Callable

import numpy as np

from . import _api
from ._api import group_norm, group_norm_backward
from ._config import show_config

# (shape, num_groups); float32, NCHW (N, C, *spatial).
SHAPES = [
    ((1, 320, 64, 64), 32),
    ((8, 64, 56, 56), 32),
    ((32, 256, 28, 28), 32),
    ((2, 128, 32, 32, 32), 16),
    ((64, 512, 7, 7), 32),
    ((256, 1024), 32),
    ((1, 32, 16, 16), 8),
]
SMALL_SHAPE = ((1, 32, 16, 16), 8)      # the small-call latency case
# Shapes of other uses (no targets): forward and backward against torch,
# so that a kind of input no target covers cannot fall behind unseen.
# (NCHW shape, G, what, channels-last)
OTHER_SHAPES = [
    ((4096, 64), 1, "LayerNorm(64) over rows", False),
    ((256, 4096), 1, "LayerNorm(4096) over rows", False),
    ((128, 768, 16), 1, "rank 3, runs of 16", False),
    ((64, 64, 50), 64, "InstanceNorm, sequences", False),
    ((8, 64, 56, 56), 64, "InstanceNorm, 56x56", False),
    ((64, 256, 3, 3), 256, "InstanceNorm, 3x3 maps", False),
    ((256, 256, 3, 3), 32, "3x3 maps", False),
    ((256, 256, 3, 3), 32, "3x3 maps, channels-last", True),
    ((128, 256, 2, 2), 32, "2x2 maps, channels-last", True),
    ((64, 2048, 7, 7), 32, "7x7 maps, 2048 channels", False),
    ((1, 3, 224, 224), 1, "one RGB image", False),
    ((8, 3, 224, 224), 3, "RGB images, channels-last", True),
]
L3_BYTES = 32 * 2**20                   # the target machine's L3
# --past-l3: the target shapes with N multiplied until the float32 input is
# at least this many times the L3 (so input plus output are four times it).
PAST_L3 = 2

# Performance targets (issue "performance").
OUT_VS_FLOOR_MAX = 1.25
TORCH_SPEEDUP_GEOMEAN_MIN = 2.0
SMALL_CALL_MAX_US = 5.0
SCALING_1_TO_2_MIN = 1.7
CHANNELS_LAST_MAX = 1.3
SILU_MAX = 1.1
BACKWARD_VS_FORWARD_MAX = 2.5
BACKWARD_TORCH_SPEEDUP_MIN = 2.0
DTYPE_FLOOR_MAX = {"float64": 1.3, "float16": 1.5}

# Correctness tolerances: max |fastgn - reference| (absolute for the
# normalized float32 output, as the issue states; relative to max(1, |ref|)
# for everything else).
TOL = {"float32": 1e-4, "float64": 1e-10, "float16": 2e-3}

# Keyword or feature missing from this build: the section is skipped.
MISSING_FEATURE = (TypeError, NotImplementedError, AttributeError)

# Timing parameters: (min rounds, max rounds, per-group budget in s for the
# main float32 groups / the other groups, min sample length in ms).
AUTO = dict(min_rounds=5, max_rounds=101, main_budget=1.8, extra_budget=0.35,
            min_sample_ms=1.0)
QUICK = dict(rounds=4, min_sample_ms=0.2)    # 4: spreads (noise) computed too
MAX_INNER = 20000


# ====================================================================== timing

@dataclass
class Contender:
    """One thing to time: ``fn()`` runs inside ``context()`` (untimed)."""
    key: tuple                                  # (label, threads)
    fn: Callable[[], object]
    context: Callable = nullcontext


@dataclass
class Timing:
    median_ns: float
    samples: list = field(repr=False)
    inner: int = 1                              # calls per sample

    @property
    def spread(self):
        """Interquartile range relative to the median (a noise indicator)."""
        if len(self.samples) < 4:
            return float("nan")
        q = statistics.quantiles(self.samples, n=4)
        return (q[2] - q[0]) / self.median_ns


def _sample(c, inner):
    """Mean duration in ns of ``inner`` back-to-back calls of ``c.fn``."""
    fn = c.fn
    with c.context():
        t0 = time.perf_counter_ns()
        for _ in repeat(None, inner):
            fn()
        t1 = time.perf_counter_ns()
    return (t1 - t0) / inner


def _calibrate(c, min_sample_ns):
    """Warm up ``c`` and return (calls per sample, estimated sample ns)."""
    _sample(c, 1)                               # warm-up, first-touch
    single = _sample(c, 1)
    if single < min_sample_ns:                  # tiny call: measure better
        k = min(MAX_INNER, math.ceil(min_sample_ns / max(single, 1.0)))
        single = _sample(c, k)
    inner = max(1, min(MAX_INNER, math.ceil(min_sample_ns / max(single, 1.0))))
    return inner, inner * single


def time_interleaved(contenders, rounds=None, budget_s=1.0, min_rounds=5,
                     max_rounds=101, min_sample_ms=1.0, after_round=None):
    """Time ``contenders`` round-robin; return {key: Timing}.

    ``rounds=None`` picks as many rounds as fit in ``budget_s`` (clamped to
    [min_rounds, max_rounds]). ``after_round()`` runs between rounds,
    untimed (used to assert the active backend).
    """
    min_sample_ns = min_sample_ms * 1e6
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        inner, round_ns = {}, 0.0
        for c in contenders:
            inner[c.key], est = _calibrate(c, min_sample_ns)
            round_ns += est
        if rounds is None:
            rounds = int(budget_s * 1e9 // max(round_ns, 1.0))
            rounds = max(min_rounds, min(max_rounds, rounds))
        samples = {c.key: [] for c in contenders}
        order = list(contenders)
        shuffle = random.Random(0).shuffle
        for _ in range(rounds):
            shuffle(order)          # no contender always runs after another
            for c in order:
                samples[c.key].append(_sample(c, inner[c.key]))
            if after_round is not None:
                after_round()
    finally:
        if gc_was_enabled:
            gc.enable()
    return {k: Timing(statistics.median(v), v, inner[k])
            for k, v in samples.items()}


# ================================================================ environment

def load_kernels():
    """The compiled extension module, or None."""
    try:
        from . import _kernels
    except ImportError:
        return None
    return _kernels


def load_torch():
    """(torch module or None, reason string)."""
    try:
        import torch
        import torch.nn.functional  # noqa: F401
    except ImportError:
        return None, "torch not installed"
    except Exception as exc:                    # broken install
        return None, f"torch failed to import ({type(exc).__name__}: {exc})"
    return torch, f"torch {torch.__version__}"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def l3_size():
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def l3_bytes():
    """This machine's L3 in bytes (sysfs), or L3_BYTES when unknown."""
    text = l3_size()
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    try:
        if text[-1:].upper() in units:
            return int(text[:-1]) * units[text[-1].upper()]
        return int(text)
    except ValueError:
        return L3_BYTES


def past_l3(shapes, l3):
    """``shapes`` but the small-call one, N multiplied so that each float32
    input holds at least PAST_L3 * l3 bytes: the memory-bound regime."""
    out = []
    for shape, G in shapes:
        if (shape, G) == SMALL_SHAPE:
            continue
        k = -(-PAST_L3 * l3 // _nbytes(shape))
        out.append(((shape[0] * max(k, 1),) + tuple(shape[1:]), G))
    return out


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_times():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)    # idle + iowait
    return sum(vals[:8]) - idle, sum(vals[:8])


def background_load(seconds=0.5):
    """Cores kept busy by other processes while we sleep (None if unknown)."""
    try:
        busy0, total0 = _cpu_times()
        time.sleep(seconds)
        busy1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def load_warning(when):
    load = background_load()
    if load is None or load < 0.25:
        return None
    return (f"WARNING: other processes kept {load:.1f} of {os.cpu_count()} "
            f"cores busy {when}; timings (multi-threaded ones above all) "
            f"are distorted -- rerun on an idle machine")


def openmp_runtimes():
    """OpenMP runtime libraries mapped into this process (Linux only)."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f
                    if "omp" in line.rsplit("/", 1)[-1]}
    except OSError:
        return "unknown"
    return ", ".join(sorted(libs)) or "none"


@contextmanager
def python_backend():
    """Run fastgn on the NumPy reference kernels, then restore."""
    previous = _api._set_backend("python")
    try:
        yield
    finally:
        _api._set_backend(previous)


@dataclass
class Env:
    kernels: object             # the extension module or None
    torch: object               # torch or None
    torch_note: str
    backend: str                # what the fastgn rows run on
    floor_label: str
    threads: list
    busy: str = None            # warning if other processes used the CPU

    def assert_backend(self):
        if _api.BACKEND != self.backend:
            raise RuntimeError(f"fastgn backend is {_api.BACKEND!r}, "
                               f"expected {self.backend!r}")

    def torch_threads(self, t):
        torch = self.torch

        @contextmanager
        def ctx():
            torch.set_num_threads(t)
            yield
        return ctx


# ===================================================================== inputs

_F4, _F8 = np.dtype(np.float32), np.dtype(np.float64)


def make_inputs(shape, G, dtype=np.float32, seed=0):
    """x (shape, dtype), weight, bias (C,) float32-or-float64, dy like x."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    pdt = _F8 if dtype == _F8 else _F4          # float16 is made from float32
    C = shape[1]
    x = rng.standard_normal(shape, dtype=pdt)
    x *= 2.0
    x += 0.5
    x = x.astype(dtype, copy=False)
    w = rng.uniform(0.5, 1.5, C).astype(pdt)
    b = rng.uniform(-0.5, 0.5, C).astype(pdt)
    dy = rng.standard_normal(shape, dtype=pdt).astype(dtype, copy=False)
    return x, w, b, dy


def dims(shape):
    """(N, C, HW) of an NCHW shape."""
    return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))


def to_channels_last(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def make_floor(x, threads, kernels, out=None):
    """A zero-argument callable moving x.nbytes in and out, plus its label.

    It writes into ``out`` (contiguous, x's shape and dtype) when given: the
    array the ``out=`` contender writes, so both meet the same pages and
    cache sets (on a VM, where an array lands moved both by up to 1.3x).
    """
    if x.dtype in (_F4, _F8):
        src = np.ascontiguousarray(x).reshape(-1)
    else:                       # same bytes as float32 (normal values)
        src = np.ones(x.nbytes // 4, dtype=np.float32)
    if out is not None and out.flags.c_contiguous and \
            out.nbytes == src.nbytes and out.dtype == x.dtype:
        dst = out.reshape(-1).view(src.dtype)
    else:
        dst = np.empty_like(src)
    scale_copy = getattr(kernels, "scale_copy", None)
    if scale_copy is not None:
        try:
            scale_copy(src, dst, 1.0, threads)
        except MISSING_FEATURE + (ValueError,):
            scale_copy = None
    if scale_copy is not None:
        return (lambda: scale_copy(src, dst, 1.0, threads),
                "fastgn._kernels.scale_copy (one read + one write, prange, "
                "same thread count, streaming stores above "
                f"{kernels.stream_bytes() >> 20} MiB in+out as in the "
                "forward)")
    return (lambda: np.multiply(src, 1.0, out=dst),
            "np.multiply(x, 1.0, out=y) (single-threaded: compiled "
            "scale_copy unavailable)")


def probe(fn):
    """None if ``fn()`` runs, else why the feature is missing."""
    try:
        fn()
    except MISSING_FEATURE as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ================================================================= correctness

class Checker:
    """Collects max-abs-diff comparisons against the reference."""

    def __init__(self):
        self.results = []       # (name, err, tol)

    def compare(self, name, got, ref, tol, relative=False):
        got = np.asarray(got, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape:
            self.results.append((f"{name} (shape {got.shape} != "
                                 f"{ref.shape})", float("inf"), tol))
            return
        err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        if relative:
            err /= max(1.0, float(np.max(np.abs(ref))))
            name += " (diff / max(1, max|ref|))"
        if not math.isfinite(err):
            err = float("inf")
        self.results.append((name, err, tol))

    @property
    def failures(self):
        return [r for r in self.results if not r[1] <= r[2]]


def reference(fn):
    """``fn()`` evaluated on the NumPy reference backend."""
    with python_backend():
        return fn()


# ================================================================= formatting

def shape_str(shape):
    return "x".join(map(str, shape))


def fmt_ms(ns):
    if ns is None or not math.isfinite(ns):
        return "n/a"
    ms = ns / 1e6
    return f"{ms:.3f}" if ms >= 0.1 else f"{ms:.4f}"


def fmt_us(ns):
    return "n/a" if ns is None else f"{ns / 1e3:.2f}"


def fmt_x(r):
    return "n/a" if r is None or not math.isfinite(r) else f"{r:.2f}x"


def ratio(a, b):
    """a / b of two Timings (or None)."""
    if a is None or b is None:
        return None
    return a.median_ns / b.median_ns


def format_table(headers, rows, markdown=False):
    cells = [[str(c) for c in row] for row in rows]
    if markdown:
        align = ["---"] + ["---:"] * (len(headers) - 1)
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    fmt = lambda r: "  ".join(  # noqa: E731
        (c.ljust(w) if i == 0 else c.rjust(w))
        for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [fmt(r) for r in cells])


class Report:
    def __init__(self, markdown):
        self.markdown = markdown

    def heading(self, text):
        print(f"\n### {text}\n" if self.markdown else
              f"\n== {text} " + "=" * max(3, 74 - len(text)))

    def note(self, text):
        if self.markdown and not text.startswith(("- ", "\n")):
            text = "\n" + text         # its own paragraph, not a list item
        print(text)

    def table(self, headers, rows):
        if rows:
            print(format_table(headers, rows, self.markdown))
        else:
            print("(no rows)")


# =================================================================== sections
#
# Each section times one group per shape (all thread counts interleaved in
# it) and stores {key: Timing} per shape in ``results[section]``.

def _fastgn(x, G, w, b, t, **kw):
    return lambda: group_norm(x, G, w, b, num_threads=t, **kw)


def _torch_forward(env, t, x, w, b, G, channels_last=False):
    """A contender running torch's F.group_norm on (NCHW) x, in torch's
    channels_last memory format when asked."""
    torch = env.torch
    xt, wt, bt = map(torch.from_numpy, (x, w, b))
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last if x.ndim == 4
                           else torch.channels_last_3d)
    return Contender(("torch", t),
                     lambda: torch.nn.functional.group_norm(xt, G, wt, bt),
                     env.torch_threads(t))


def section_forward(env, shapes, checker, timing_opts):
    """float32 NCHW: fastgn, fastgn out=, reference, torch, floor."""
    out = {}
    for shape, G in shapes:
        x, w, b, _ = make_inputs(shape, G)
        y = np.empty_like(x)
        ref = reference(lambda: group_norm(x, G))
        ref_affine = reference(lambda: group_norm(x, G, w, b))
        cs = [Contender(("reference", 0), lambda: group_norm(x, G, w, b),
                        python_backend)]
        for t in env.threads:
            checker.compare(f"normalized {shape_str(shape)} G={G} t={t}",
                            group_norm(x, G, num_threads=t), ref,
                            TOL["float32"])
            checker.compare(f"affine {shape_str(shape)} G={G} t={t}",
                            group_norm(x, G, w, b, num_threads=t), ref_affine,
                            TOL["float32"], relative=True)
            group_norm(x, G, w, b, out=y, num_threads=t)
            checker.compare(f"out= {shape_str(shape)} G={G} t={t}", y,
                            ref_affine, TOL["float32"], relative=True)
            cs.append(Contender(("fastgn", t), _fastgn(x, G, w, b, t)))
            cs.append(Contender(("out", t), _fastgn(x, G, w, b, t, out=y)))
            cs.append(Contender(("floor", t),
                                make_floor(x, t, env.kernels, y)[0]))
            if env.torch is not None:
                cs.append(_torch_forward(env, t, x, w, b, G))
        out[(shape, G)] = time_interleaved(
            cs, after_round=env.assert_backend,
            **timing_opts("main"))
    return out


def section_channels_last(env, shapes, checker, timing_opts):
    out, skipped = {}, None
    for shape, G in shapes:
        if len(shape) < 3:
            continue            # no spatial axes: NHWC is the same layout
        x, w, b, _ = make_inputs(shape, G)
        xcl = to_channels_last(x)
        skipped = probe(lambda: group_norm(xcl, G, w, b, channels_last=True))
        if skipped:
            return {}, skipped
        ref = to_channels_last(reference(lambda: group_norm(x, G, w, b)))
        cs = []
        for t in env.threads:
            checker.compare(
                f"channels_last {shape_str(shape)} G={G} t={t}",
                group_norm(xcl, G, w, b, channels_last=True, num_threads=t),
                ref, TOL["float32"], relative=True)
            cs.append(Contender(("nchw", t), _fastgn(x, G, w, b, t)))
            cs.append(Contender(("nhwc", t), _fastgn(xcl, G, w, b, t,
                                                     channels_last=True)))
            if env.torch is not None:
                torch = env.torch
                fmt = (torch.channels_last if len(shape) == 4 else
                       torch.channels_last_3d)
                xt = torch.from_numpy(x).contiguous(memory_format=fmt)
                wt, bt = torch.from_numpy(w), torch.from_numpy(b)
                cs.append(Contender(
                    ("torch_cl", t), lambda xt=xt, wt=wt, bt=bt:
                    torch.nn.functional.group_norm(xt, G, wt, bt),
                    env.torch_threads(t)))
        out[(shape, G)] = time_interleaved(cs, after_round=env.assert_backend,
                                           **timing_opts("extra"))
    return out, None


def section_silu(env, shapes, checker, timing_opts):
    out = {}
    for shape, G in shapes:
        x, w, b, _ = make_inputs(shape, G)
        skipped = probe(lambda: group_norm(x, G, w, b, activation="silu"))
        if skipped:
            return {}, skipped
        ref = reference(lambda: group_norm(x, G, w, b, activation="silu"))
        cs = []
        for t in env.threads:
            checker.compare(
                f"silu {shape_str(shape)} G={G} t={t}",
                group_norm(x, G, w, b, activation="silu", num_threads=t),
                ref, TOL["float32"], relative=True)
            cs.append(Contender(("gn", t), _fastgn(x, G, w, b, t)))
            cs.append(Contender(("gn_silu", t),
                                _fastgn(x, G, w, b, t, activation="silu")))
            if env.torch is not None:
                F = env.torch.nn.functional
                xt, wt, bt = map(env.torch.from_numpy, (x, w, b))
                cs.append(Contender(
                    ("torch", t), lambda xt=xt, wt=wt, bt=bt:
                    F.silu(F.group_norm(xt, G, wt, bt)),
                    env.torch_threads(t)))
        out[(shape, G)] = time_interleaved(cs, after_round=env.assert_backend,
                                           **timing_opts("extra"))
    return out, None


def _torch_backward(env, name, t, x, dy, w, b, G, channels_last=False):
    """A contender running torch's CPU GN backward on (NCHW) x and dy, in
    torch's channels_last memory format when asked."""
    torch = env.torch
    N, C, HW = dims(x.shape)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    if channels_last:
        fmt = (torch.channels_last if x.ndim == 4 else
               torch.channels_last_3d)
        xt, dyt = (a.contiguous(memory_format=fmt) for a in (xt, dyt))
    wt, bt = torch.from_numpy(w), torch.from_numpy(b)
    _, mt, rt = torch.ops.aten.native_group_norm(xt, wt, bt, N, C, HW, G,
                                                 1e-5)
    return Contender(
        (name, t), lambda: torch.ops.aten.native_group_norm_backward(
            dyt, xt, mt, rt, wt, N, C, HW, G, [True, True, True]),
        env.torch_threads(t))


def section_backward(env, shapes, checker, timing_opts):
    out = {}
    for shape, G in shapes:
        x, w, b, dy = make_inputs(shape, G)

        def stats():
            _, m, r = group_norm(x, G, w, b, return_stats=True)
            return m, r
        skipped = probe(lambda: group_norm_backward(dy, x, *stats(), G, w))
        if skipped:
            return {}, skipped
        mean, rstd = stats()
        ref = reference(lambda: group_norm_backward(
            dy, x, *reference(stats), G, w))
        cs = []
        for t in env.threads:
            got = group_norm_backward(dy, x, mean, rstd, G, w, num_threads=t)
            for name, g, r in zip(("dx", "dweight", "dbias"), got, ref):
                checker.compare(f"backward {name} {shape_str(shape)} G={G} "
                                f"t={t}", g, r, TOL["float32"], relative=True)
            cs.append(Contender(("fwd", t), _fastgn(x, G, w, b, t)))
            cs.append(Contender(
                ("bwd", t), lambda t=t: group_norm_backward(
                    dy, x, mean, rstd, G, w, num_threads=t)))
            if env.torch is not None:
                cs.append(_torch_backward(env, "torch_bwd", t, x, dy, w, b,
                                          G))
        out[(shape, G)] = time_interleaved(cs, after_round=env.assert_backend,
                                           **timing_opts("extra"))
    return out, None


def section_backward_cl(env, shapes, checker, timing_opts):
    """Backward, channels_last vs NCHW on the same values (torch's CPU
    backward on channels_last tensors where it accepts them)."""
    out = {}
    for shape, G in shapes:
        if len(shape) < 3:
            continue            # no spatial axes: NHWC is the same layout
        x, w, b, dy = make_inputs(shape, G)
        xcl, dycl = to_channels_last(x), to_channels_last(dy)
        _, mean, rstd = group_norm(x, G, w, b, return_stats=True)
        skipped = probe(lambda: group_norm_backward(
            dycl, xcl, mean, rstd, G, w, channels_last=True))
        if skipped:
            return {}, skipped
        ref = reference(lambda: group_norm_backward(
            dycl, xcl, mean, rstd, G, w, channels_last=True))
        cs = []
        for t in env.threads:
            got = group_norm_backward(dycl, xcl, mean, rstd, G, w,
                                      channels_last=True, num_threads=t)
            for name, g, r in zip(("dx", "dweight", "dbias"), got, ref):
                checker.compare(f"backward channels_last {name} "
                                f"{shape_str(shape)} G={G} t={t}", g, r,
                                TOL["float32"], relative=True)
            cs.append(Contender(("nchw", t), lambda t=t: group_norm_backward(
                dy, x, mean, rstd, G, w, num_threads=t)))
            cs.append(Contender(("nhwc", t), lambda t=t: group_norm_backward(
                dycl, xcl, mean, rstd, G, w, channels_last=True,
                num_threads=t)))
            if env.torch is not None:
                cs.append(_torch_backward(env, "torch_cl", t, x, dy, w, b, G,
                                          channels_last=True))
        out[(shape, G)] = time_interleaved(cs, after_round=env.assert_backend,
                                           **timing_opts("extra"))
    return out, None


def section_dtypes(env, shapes, checker, timing_opts):
    """float64 and float16: fastgn, fastgn out=, floor of the same bytes."""
    out, skipped = {}, []
    for dtype in ("float64", "float16"):
        for shape, G in shapes:
            x, w, b, _ = make_inputs(shape, G, dtype)
            y = np.empty_like(x)
            why = probe(lambda: group_norm(x, G, w, b, out=y))
            if why:
                skipped.append(f"{dtype}: {why}")
                break
            ref = reference(lambda: group_norm(x, G, w, b))
            cs = []
            for t in env.threads:
                name = f"{dtype} {shape_str(shape)} G={G} t={t}"
                checker.compare(name, group_norm(x, G, w, b, num_threads=t),
                                ref, TOL[dtype], relative=True)
                group_norm(x, G, w, b, out=y, num_threads=t)
                checker.compare(f"{name} out=", y, ref, TOL[dtype],
                                relative=True)
                cs.append(Contender(("fastgn", t), _fastgn(x, G, w, b, t)))
                cs.append(Contender(("out", t), _fastgn(x, G, w, b, t, out=y)))
                cs.append(Contender(("floor", t),
                                    make_floor(x, t, env.kernels, y)[0]))
            out[(dtype, shape, G)] = time_interleaved(
                cs, after_round=env.assert_backend, **timing_opts("extra"))
    return out, "; ".join(skipped) or None


def section_other(env, shapes, checker, timing_opts):
    """OTHER_SHAPES (``shapes`` is ignored): forward (out of place) and
    backward, fastgn and torch."""
    out = {}
    for shape, G, _, cl in OTHER_SHAPES:
        x, w, b, dy = make_inputs(shape, G)
        ref = reference(lambda: group_norm(x, G, w, b))
        _, mean, rstd = group_norm(x, G, w, b, return_stats=True)
        ref_bwd = reference(lambda: group_norm_backward(dy, x, mean, rstd,
                                                        G, w))
        xn, dyn = x, dy                 # NCHW, as torch takes them
        if cl:
            x, dy, ref = map(to_channels_last, (x, dy, ref))
            ref_bwd = (to_channels_last(ref_bwd[0]),) + tuple(ref_bwd[1:])
        kw = dict(channels_last=cl)
        skipped = probe(lambda: group_norm_backward(
            dy, x, mean, rstd, G, w, **kw))
        if skipped:
            return {}, skipped
        cs = []
        for t in env.threads:
            name = f"{shape_str(shape)} G={G}{' NHWC' if cl else ''} t={t}"
            checker.compare(name, group_norm(x, G, w, b, num_threads=t, **kw),
                            ref, TOL["float32"], relative=True)
            got = group_norm_backward(dy, x, mean, rstd, G, w, num_threads=t,
                                      **kw)
            for gname, g, r in zip(("dx", "dweight", "dbias"), got, ref_bwd):
                checker.compare(f"backward {gname} {name}", g, r,
                                TOL["float32"], relative=True)
            cs.append(Contender(("fwd", t), _fastgn(x, G, w, b, t, **kw)))
            cs.append(Contender(
                ("bwd", t), lambda t=t: group_norm_backward(
                    dy, x, mean, rstd, G, w, num_threads=t, **kw)))
            if env.torch is not None:
                cs.append(_torch_forward(env, t, xn, w, b, G, cl))
                cs.append(_torch_backward(env, "torch_bwd", t, xn, dyn, w, b,
                                          G, cl))
        out[("NHWC" if cl else "NCHW", shape, G)] = time_interleaved(
            cs, after_round=env.assert_backend, **timing_opts("extra"))
    return out, None


# ====================================================================== tables

def _nbytes(shape, dtype="float32"):
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def table_forward(rep, env, res):
    rows = []
    for (shape, G), tm in res.items():
        nb = _nbytes(shape)
        for t in env.threads:
            f, o = tm[("fastgn", t)], tm[("out", t)]
            rows.append([
                shape_str(shape), G, t, fmt_ms(f.median_ns),
                f"{2 * nb / f.median_ns:.1f}",
                fmt_x(ratio(tm[("reference", 0)], f)),
                fmt_x(ratio(tm.get(("torch", t)), f)),
                fmt_ms(o.median_ns), fmt_ms(tm[("floor", t)].median_ns),
                fmt_x(ratio(o, tm[("floor", t)])),
                fmt_ms(tm[("reference", 0)].median_ns),
                fmt_ms(tm[("torch", t)].median_ns) if ("torch", t) in tm
                else "n/a"])
    rep.table(["shape", "G", "threads", "fastgn ms", "GB/s", "vs NumPy ref",
               "vs torch", "out= ms", "floor ms", "out=/floor", "ref ms",
               "torch ms"], rows)


def table_scaling(rep, env, res):
    if not {1, 2} <= set(env.threads):
        rep.note("(needs threads 1 and 2)")
        return
    rows = []
    for (shape, G), tm in res.items():
        r = lambda k: fmt_x(ratio(tm.get((k, 1)), tm.get((k, 2))))  # noqa
        rows.append([shape_str(shape), G, f"{2 * _nbytes(shape) / 2**20:.1f}",
                     "latency case" if shape == SMALL_SHAPE[0] else
                     "yes" if _fits_l3(shape) else "no", r("fastgn"),
                     r("out"), r("torch"), r("floor")])
    rep.table(["shape", "G", "in+out MiB", "fits L3", "fastgn", "out=",
               "torch", "floor"], rows)


def _table_pair(rep, env, res, keys, headers):
    """A table comparing two fastgn timings, ``keys = (base, new, torch)``,
    per shape and thread count: both times, new/base, and torch vs new."""
    base_k, new_k, torch_k = keys
    rows = []
    for (shape, G), tm in res.items():
        for t in env.threads:
            base, new, tt = tm[(base_k, t)], tm[(new_k, t)], \
                tm.get((torch_k, t))
            rows.append([shape_str(shape), G, t, fmt_ms(base.median_ns),
                         fmt_ms(new.median_ns), fmt_x(ratio(new, base)),
                         fmt_ms(tt.median_ns) if tt else "n/a",
                         fmt_x(ratio(tt, new))])
    rep.table(headers, rows)


def table_channels_last(rep, env, res):
    _table_pair(rep, env, res, ("nchw", "nhwc", "torch_cl"),
                ["shape (NCHW)", "G", "threads", "NCHW ms", "NHWC ms",
                 "NHWC/NCHW", "torch CL ms", "vs torch CL"])


def table_silu(rep, env, res):
    _table_pair(rep, env, res, ("gn", "gn_silu", "torch"),
                ["shape", "G", "threads", "GN ms", "GN+SiLU ms", "SiLU/GN",
                 "torch ms", "vs torch"])


def table_backward(rep, env, res):
    _table_pair(rep, env, res, ("fwd", "bwd", "torch_bwd"),
                ["shape", "G", "threads", "fwd ms", "bwd ms", "bwd/fwd",
                 "torch bwd ms", "vs torch"])


def table_backward_cl(rep, env, res):
    _table_pair(rep, env, res, ("nchw", "nhwc", "torch_cl"),
                ["shape (NCHW)", "G", "threads", "NCHW bwd ms",
                 "NHWC bwd ms", "NHWC/NCHW", "torch CL bwd ms",
                 "vs torch CL"])


def table_dtypes(rep, env, res):
    rows = []
    for (dtype, shape, G), tm in res.items():
        nb = _nbytes(shape, dtype)
        for t in env.threads:
            f, o, fl = tm[("fastgn", t)], tm[("out", t)], tm[("floor", t)]
            rows.append([dtype, shape_str(shape), G, t, fmt_ms(f.median_ns),
                         fmt_ms(o.median_ns), f"{2 * nb / o.median_ns:.1f}",
                         fmt_ms(fl.median_ns), fmt_x(ratio(o, fl))])
    rep.table(["dtype", "shape", "G", "threads", "fastgn ms", "out= ms",
               "out= GB/s", "floor ms", "out=/floor"], rows)


def table_other(rep, env, res):
    what = {("NHWC" if cl else "NCHW", shape, G): text
            for shape, G, text, cl in OTHER_SHAPES}
    rows = []
    for key, tm in res.items():
        shape, G = key[1:]
        for t in env.threads:
            f, bw = tm[("fwd", t)], tm[("bwd", t)]
            tf, tb = tm.get(("torch", t)), tm.get(("torch_bwd", t))
            rows.append([shape_str(shape), G, what[key], t,
                         fmt_ms(f.median_ns), fmt_x(ratio(tf, f)),
                         fmt_ms(bw.median_ns), fmt_x(ratio(tb, bw))])
    rep.table(["shape", "G", "what", "threads", "fwd ms", "fwd vs torch",
               "bwd ms", "bwd vs torch"], rows)


def table_small(rep, env, tm):
    rows = []
    for t in env.threads:
        tt = tm.get(("torch", t))
        rows.append([t, fmt_us(tm[("fastgn", t)].median_ns),
                     fmt_us(tm[("out", t)].median_ns),
                     fmt_us(tm[("reference", 0)].median_ns),
                     fmt_us(tt.median_ns) if tt else "n/a",
                     fmt_us(tm[("floor", t)].median_ns)])
    rep.table(["threads", "fastgn us", "out= us", "NumPy ref us", "torch us",
               "floor us"], rows)


# ===================================================================== targets

def _fits_l3(shape):
    """Input plus output fit in L3 (and the shape is not the latency case)."""
    return 2 * _nbytes(shape) <= L3_BYTES and shape != SMALL_SHAPE[0]


def _per_thread_items(res, threads):
    for (shape, G), tm in res.items():
        for t in threads:
            yield (f"{shape_str(shape)} t={t}", t), tm


def _bound(name, res, threads, num, den, limit, below=True):
    """Target "num/den <= limit" (or >= when below=False) on every row."""
    if not res:
        return ("SKIP", name, "not measured")
    vals = []
    for (lbl, t), tm in _per_thread_items(res, threads):
        r = ratio(tm.get((num, t)), tm.get((den, t)))
        if r is not None:
            vals.append((r, lbl))
    if not vals:
        return ("SKIP", name, "not measured")
    worst = max(vals) if below else min(vals)
    ok = worst[0] <= limit if below else worst[0] >= limit
    return ("PASS" if ok else "MISS", name,
            f"worst {worst[0]:.2f}x at {worst[1]}")


def check_targets(env, results):
    fwd = results.get("forward", {})
    th = env.threads
    out = [_bound(f"out= <= {OUT_VS_FLOOR_MAX}x the streaming floor on every "
                  f"shape (threads {', '.join(map(str, th))})", fwd, th,
                  "out", "floor", OUT_VS_FLOOR_MAX)]

    # fastgn >= 2x faster than torch: geomean per thread count, never slower.
    name = (f"out of place >= {TORCH_SPEEDUP_GEOMEAN_MIN}x faster than torch "
            f"(geomean), never slower on any shape")
    if env.torch is None or not fwd:
        out.append(("SKIP", name, env.torch_note if env.torch is None
                    else "not measured"))
    else:
        for t in th:
            sp = [(ratio(tm[("torch", t)], tm[("fastgn", t)]), shape_str(s))
                  for (s, G), tm in fwd.items()]
            gm = math.exp(sum(math.log(v) for v, _ in sp) / len(sp))
            worst = min(sp)
            ok = gm >= TORCH_SPEEDUP_GEOMEAN_MIN and worst[0] >= 1.0
            out.append(("PASS" if ok else "MISS", f"{name} [threads={t}]",
                        f"geomean {gm:.2f}x, slowest {worst[0]:.2f}x at "
                        f"{worst[1]}"))

    name = (f"small call {shape_str(SMALL_SHAPE[0])} G={SMALL_SHAPE[1]} "
            f"<= {SMALL_CALL_MAX_US} us (out of place, every thread count)")
    tm = fwd.get(SMALL_SHAPE)
    if tm is None:
        out.append(("SKIP", name, "shape not measured"))
    else:
        us = [(tm[("fastgn", t)].median_ns / 1e3, t) for t in th]
        worst = max(us)
        out.append(("PASS" if worst[0] <= SMALL_CALL_MAX_US else "MISS", name,
                    "; ".join(f"t={t}: {v:.2f} us" for v, t in us)))

    name = (f"1->2 threads >= {SCALING_1_TO_2_MIN}x (fastgn out of place) on "
            f"shapes whose input+output fit in L3 ({L3_BYTES >> 20} MiB), "
            f"excluding the small-call shape")
    fits = {k: v for k, v in fwd.items() if _fits_l3(k[0])}
    if not {1, 2} <= set(th) or not fits:
        out.append(("SKIP", name, "needs threads 1 and 2 and such shapes"))
    else:
        sp = [(ratio(tm[("fastgn", 1)], tm[("fastgn", 2)]), shape_str(s))
              for (s, G), tm in fits.items()]
        worst = min(sp)
        out.append(("PASS" if worst[0] >= SCALING_1_TO_2_MIN else "MISS", name,
                    f"worst {worst[0]:.2f}x at {worst[1]}"))

    out.append(_bound(f"channels_last <= {CHANNELS_LAST_MAX}x NCHW",
                      results.get("channels_last", {}), th, "nhwc", "nchw",
                      CHANNELS_LAST_MAX))
    out.append(_bound(f"GN+SiLU <= {SILU_MAX}x GN", results.get("silu", {}),
                      th, "gn_silu", "gn", SILU_MAX))
    bwd = results.get("backward", {})
    out.append(_bound(f"backward <= {BACKWARD_VS_FORWARD_MAX}x forward", bwd,
                      th, "bwd", "fwd", BACKWARD_VS_FORWARD_MAX))
    if env.torch is None:
        out.append(("SKIP", "backward >= 2x faster than torch backward",
                    env.torch_note))
    else:
        out.append(_bound(f"backward >= {BACKWARD_TORCH_SPEEDUP_MIN}x faster "
                          f"than torch backward on every shape", bwd, th,
                          "torch_bwd", "bwd", BACKWARD_TORCH_SPEEDUP_MIN,
                          below=False))
    dres = results.get("dtypes", {})
    for dtype, limit in DTYPE_FLOOR_MAX.items():
        sub = {k[1:]: v for k, v in dres.items() if k[0] == dtype}
        out.append(_bound(f"{dtype} out= <= {limit}x its floor", sub, th,
                          "out", "floor", limit))
    return out


# ========================================================================= run

def add_arguments(p):
    p.add_argument("--threads", type=_thread_list, default=None,
                   help="comma-separated thread counts (default: 1 and the "
                        "maximum)")
    p.add_argument("--repeat", type=_positive_int, default=None, metavar="N",
                   help="interleaved rounds per group (default: as many as "
                        "fit a time budget, whole run < ~60 s)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK['rounds']} rounds, short samples (CI smoke)")
    p.add_argument("--shapes", nargs="+", metavar="NxCxHxW", default=None,
                   type=_shape_name,
                   help="only these shapes, e.g. 8x64x56x56 256x1024")
    p.add_argument("--markdown", action="store_true",
                   help="print GitHub-markdown tables")
    p.add_argument("--no-extras", action="store_true",
                   help="only the float32 forward table and its targets")
    p.add_argument("--past-l3", action="store_true",
                   help=f"the target shapes with N multiplied until each "
                        f"input is {PAST_L3}x the L3 (memory-bound; no small "
                        f"call, no 1->2 threads target, no other shapes)")


def _thread_list(text):
    try:
        ts = sorted({int(s) for s in text.replace(" ", "").split(",") if s})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be like 1,2 (got {text!r})") from None
    if not ts or ts[0] < 1:
        raise argparse.ArgumentTypeError("thread counts must be >= 1")
    return ts


def _shape_name(text):
    name = text.strip().lower().replace(",", "x")
    known = [shape_str(s) for s, _ in SHAPES]
    if name not in known:
        raise argparse.ArgumentTypeError(
            f"unknown shape {text!r}; known: {', '.join(known)}")
    return name


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got "
                                         f"{text!r}")
    return n


def _select_shapes(names):
    if not names:
        return list(SHAPES)
    return [sg for sg in SHAPES if shape_str(sg[0]) in set(names)]


def _setup_env(args):
    """Pick the backend for the fastgn rows, thread counts, torch."""
    kernels = load_kernels()
    notes = []
    if kernels is not None:
        if _api.BACKEND == "python":
            notes.append("FASTGN_BACKEND=python was set; the benchmark "
                         "switches the fastgn rows to the compiled kernels")
        _api._set_backend("cython")
        backend = _api.BACKEND
        max_threads = int(kernels.max_threads())
    else:
        backend = _api.BACKEND
        max_threads = usable_cores()
        notes.append("WARNING: compiled kernels (fastgn._kernels) unavailable:"
                     " the fastgn rows run the pure-NumPy fallback, i.e. they"
                     " ARE the reference, and num_threads is ignored. Speedups"
                     " and targets below are not meaningful.")
    threads = args.threads or sorted({1, max_threads})
    torch, torch_note = load_torch()
    floor_label = make_floor(np.zeros(4, np.float32), 1, kernels)[1]
    env = Env(kernels, torch, torch_note, backend, floor_label, threads)
    return env, notes


def _print_header(rep, env, notes, args):
    rep.heading("fastgn benchmark")
    info = [
        f"machine: {platform.platform()}, {platform.machine()}",
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores "
        f"({usable_cores()} usable), L3 {l3_size()}",
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"{env.torch_note}",
        f"fastgn.show_config(): {show_config(mode='dicts')}",
        f"fastgn rows backend: {env.backend}; threads: "
        f"{', '.join(map(str, env.threads))}",
        f"streaming floor: {env.floor_label}",
        f"timing: median per call over "
        + (f"{args.repeat} interleaved rounds" if args.repeat else
           f"{QUICK['rounds']} interleaved rounds (--quick)" if args.quick
           else f"{AUTO['min_rounds']}-{AUTO['max_rounds']} interleaved "
                f"rounds (time budget)")
        + "; contenders round-robin per shape, perf_counter_ns, GC off",
    ]
    info.append(f"OpenMP runtimes loaded: {openmp_runtimes()}")
    omp = {k: v for k, v in os.environ.items()
           if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_"))}
    if omp:
        info.append(f"environment: {omp}")
    for line in info:
        rep.note(f"- {line}" if rep.markdown else line)
    env.busy = load_warning("before the run")
    for n in notes + [env.busy]:
        if n:
            rep.note(n)
    if env.torch is not None:
        env.torch.set_num_threads(max(env.threads))


def run(args):
    rep = Report(args.markdown)
    shapes = _select_shapes(args.shapes)
    env, notes = _setup_env(args)
    if args.past_l3:
        l3 = max(L3_BYTES, l3_bytes())
        shapes = past_l3(shapes, l3)
        if not shapes:
            sys.exit("--past-l3 leaves no shape: the small call is not "
                     "scaled")
        notes.append(f"--past-l3: shapes scaled in N to inputs of at least "
                     f"{PAST_L3 * l3 >> 20} MiB ({PAST_L3}x the L3): "
                     f"{', '.join(shape_str(s) for s, _ in shapes)}")
    _print_header(rep, env, notes, args)

    def timing_opts(kind):
        if args.repeat:
            return dict(rounds=args.repeat,
                        min_sample_ms=AUTO["min_sample_ms"])
        if args.quick:
            return dict(QUICK)
        return dict(budget_s=AUTO[f"{kind}_budget"],
                    min_rounds=AUTO["min_rounds"],
                    max_rounds=AUTO["max_rounds"],
                    min_sample_ms=AUTO["min_sample_ms"])

    checker = Checker()
    results = {}
    t_start = time.perf_counter()
    sys.stdout.flush()

    results["forward"] = section_forward(env, shapes, checker, timing_opts)
    rep.heading("float32 forward, NCHW (speedups: higher is better)")
    table_forward(rep, env, results["forward"])
    rep.heading("thread scaling 1->2 (time at 1 thread / time at 2 threads)")
    table_scaling(rep, env, results["forward"])
    if SMALL_SHAPE in results["forward"]:
        rep.heading(f"small-call latency {shape_str(SMALL_SHAPE[0])} "
                    f"G={SMALL_SHAPE[1]} (microseconds per call)")
        table_small(rep, env, results["forward"][SMALL_SHAPE])

    extras = [] if args.no_extras else [
        ("channels_last", "channels_last: fastgn NHWC vs NCHW on the same "
         "values; torch channels_last memory format",
         section_channels_last, table_channels_last),
        ("silu", "GN+SiLU fused (activation='silu') vs plain GN; torch "
         "F.silu(F.group_norm(...))", section_silu, table_silu),
        ("backward", "backward: group_norm_backward vs forward; torch "
         "aten.native_group_norm_backward", section_backward, table_backward),
        ("backward_cl", "backward, channels_last vs NCHW on the same "
         "values; torch aten.native_group_norm_backward on channels_last "
         "tensors", section_backward_cl, table_backward_cl),
        ("dtypes", "float64 / float16 vs their streaming floor (float16 "
         "computed in float32; its floor moves the same bytes)",
         section_dtypes, table_dtypes),
    ]
    if args.shapes is None and not args.no_extras and not args.past_l3:
        extras.append(("other", "other shapes (no targets): fastgn vs torch, "
                       "forward out of place and backward", section_other,
                       table_other))
    for key, title, section, table in extras:
        sys.stdout.flush()
        res, skipped = section(env, shapes, checker, timing_opts)
        rep.heading(title)
        if skipped:
            rep.note(f"skipped: feature not available in this build "
                     f"({skipped})")
        if res:
            results[key] = res
            table(rep, env, res)

    rep.heading("correctness (fastgn vs the NumPy reference)")
    failures = checker.failures
    worst = max(checker.results, key=lambda r: r[1] / r[2])
    if failures:
        for name, err, tol in failures:
            rep.note(f"MISMATCH: {name}: diff {err:.3g} > tolerance {tol:g}")
    else:
        rep.note(f"results match the reference ({len(checker.results)} "
                 f"checks; worst {worst[0]}: {worst[1]:.2g} <= {worst[2]:g})")
    if env.backend == "python":
        rep.note("(trivially: the fastgn rows ran the reference kernels)")

    env.busy = load_warning("after the run") or env.busy
    rep.heading('performance targets (issue "performance")' +
                (", on the shapes scaled past the L3" if args.past_l3 else ""))
    if env.busy:
        rep.note("(the machine was busy during the run: treat these as "
                 "unreliable)")
    for status, name, detail in check_targets(env, results):
        if env.backend == "python" and status != "SKIP":
            status, detail = "SKIP", (f"no compiled kernels (measured: "
                                      f"{status}, {detail})")
        rep.note(f"{'- ' if rep.markdown else ''}{status}  {name}: {detail}")

    spreads = [(tm.spread, f"{name} {shape_str(key[-2])} {k[0]} t={k[1]}")
               for name, sec in results.items() for key, tms in sec.items()
               for k, tm in tms.items() if math.isfinite(tm.spread)]
    if spreads:
        med = statistics.median(s for s, _ in spreads)
        worst_s = max(spreads)
        rep.note(f"\nnoise: median IQR/median {med:.1%} over "
                 f"{len(spreads)} timings (worst {worst_s[0]:.1%}, "
                 f"{worst_s[1]}); "
                 f"total {time.perf_counter() - t_start:.1f} s")
    if env.busy:
        rep.note(env.busy)
    return 1 if failures else 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastgn bench")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
