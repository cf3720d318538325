"""Time two builds of fastgn's kernels against each other on the same arrays.

    python benchmarks/ab.py OLD NEW [CASE ...] [--cold] [--repeats N]

OLD and NEW are source trees with a built extension (``python setup.py
build_ext --inplace`` in each; ``git archive REV | tar -x -C DIR`` makes
one of any revision) or paths to ``_kernels`` shared objects. A CASE is
``fwd|bwd:SHAPE:G`` followed by any of ``:t=THREADS``, ``:cl``
(channels-last), ``:float64``, ``:float16`` (forward: forward_half),
``:relu``/``:silu``/``:gelu`` (forward),
for example ``fwd:64x512x7x7:32:t=2``. Each line gives the median time of
NEW over OLD, once per repeat, and ``BITS DIFFER`` when their outputs do.

Both builds work on one set of input and output arrays, called in
turns (``fastgn._bench.time_interleaved``). With a copy of the data per
build, two copies of a large case can exceed the last-level cache
together, and then the copy the other one evicted sets the ratio: two
copies of one build measured 0.86-1.17 that way, 0.98-1.02 on shared
arrays (2-vCPU Zen 5 guest, 32 MiB L3).

By default the arrays stay warm in the cache between calls. ``--cold``
gives every call the next of enough copies of them to fill 64 MiB, so
each reads its input from memory. Check both: a channels-last chunk's
shift taken from 16 of its first 64 positions instead of all 64 measured
0.91-0.94x the time warm and 1.14-1.24x cold on 64x512x7x7.

The kernels are private: both builds must take the same arguments.
"""

import argparse
import glob
import importlib.util
import itertools
import os
import sys

import numpy as np

from fastgn._bench import (Contender, make_inputs, time_interleaved,
                           to_channels_last)

_ACTS = {"relu": 1, "silu": 2, "gelu": 3}
DEFAULT_CASES = [f"{kind}:{shape}:{G}:t={t}"
                 for kind in ("fwd", "bwd")
                 for shape, G in (("64x512x7x7", 32), ("8x64x56x56", 32),
                                  ("1x320x64x64", 32), ("256x1024", 32),
                                  ("1x32x16x16", 8))
                 for t in (1, 2)]


def load_kernels(path):
    """The ``_kernels`` module of a source tree (or a shared object)."""
    if os.path.isdir(path):
        found = glob.glob(os.path.join(path, "fastgn", "_kernels*.so"))
        if not found:
            raise SystemExit(f"{path}: no built fastgn/_kernels*.so (run "
                             f"python setup.py build_ext --inplace there)")
        path = found[0]
    spec = importlib.util.spec_from_file_location("fastgn._kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)     # not entered in sys.modules
    return module


def parse_case(text):
    """``fwd:64x512x7x7:32:t=2:cl`` -> dict of the case's settings."""
    kind, shape, G, *opts = text.split(":")
    if kind not in ("fwd", "bwd"):
        raise SystemExit(f"case {text!r}: kind must be fwd or bwd")
    case = dict(kind=kind, shape=tuple(int(s) for s in shape.split("x")),
                G=int(G), threads=1, cl=False, dtype="float32", act=0)
    for opt in opts:
        if opt.startswith("t="):
            case["threads"] = int(opt[2:])
        elif opt == "cl":
            case["cl"] = True
        elif opt in ("float32", "float64") or opt == "float16" and \
                kind == "fwd":
            case["dtype"] = opt
        elif opt in _ACTS and kind == "fwd":
            case["act"] = _ACTS[opt]
        else:
            raise SystemExit(f"case {text!r}: unknown option {opt!r}")
    return case


def calls(case, old, new, cold=False):
    """(call of old, call of new, outputs of the first call): both on the
    same arrays; with ``cold``, on copies taken in turn (64 MiB in all)."""
    x, w, b, dy = make_inputs(case["shape"], case["G"], case["dtype"])
    N, C, G, t = case["shape"][0], case["shape"][1], case["G"], case["threads"]
    HW = int(np.prod(case["shape"][2:], dtype=np.int64))
    if case["cl"]:
        x, dy = to_channels_last(x), to_channels_last(dy)
    sdt = np.float32 if x.dtype == np.float16 else x.dtype
    mean, rstd = np.empty((N, G), sdt), np.empty((N, G), sdt)
    fwd = "forward_half" if x.dtype == np.float16 else "forward"
    getattr(old, fwd)(x, np.empty_like(x), w, b, N, C, HW, G, 1e-5,
                      case["cl"], 0, mean, rstd, t)
    copies = max(2, -(-(64 << 20) // (3 * x.nbytes))) if cold else 1
    sets = [(x.copy(), dy.copy(), np.empty_like(x), np.empty(C, x.dtype),
             np.empty(C, x.dtype)) for _ in range(copies)]
    # one turn for both builds: a call never gets the copy the other build's
    # call before it has just brought into the cache
    turn = itertools.cycle(sets)

    def call(k):
        if case["kind"] == "fwd":
            def run():
                xs, _, ys, _, _ = next(turn)
                getattr(k, fwd)(xs, ys, w, b, N, C, HW, G, 1e-5, case["cl"],
                                case["act"], None, None, t)
        else:
            def run():
                xs, dys, dxs, dws, dbs = next(turn)
                k.backward(dys, xs, mean, rstd, w, N, C, HW, G, case["cl"],
                           dxs, dws, dbs, t)
        return run
    outputs = sets[0][2:] if case["kind"] == "bwd" else sets[0][2:3]
    return call(old), call(new), outputs, len(sets)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("cases", nargs="*", default=DEFAULT_CASES)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget", type=float, default=0.6,
                        help="seconds of timing per repeat and case")
    parser.add_argument("--cold", action="store_true",
                        help="each call on the next of copies of the arrays "
                             "that fill 64 MiB, so inputs come from memory")
    args = parser.parse_intermixed_args(argv)
    old, new = load_kernels(args.old), load_kernels(args.new)
    for text in args.cases:
        case = parse_case(text)
        run_old, run_new, outputs, copies = calls(case, old, new, args.cold)
        for _ in range(copies):        # old's outputs in the first copy
            run_old()
        before = [a.copy() for a in outputs]
        for _ in range(copies):        # then new's
            run_new()
        same = all(np.array_equal(a, c) for a, c in zip(before, outputs))
        ratios = []
        for _ in range(args.repeats):
            tm = time_interleaved([Contender(("old",), run_old),
                                   Contender(("new",), run_new)],
                                  budget_s=args.budget)
            ratios.append(tm[("new",)].median_ns / tm[("old",)].median_ns)
        print(f"{text:<32} old {tm[('old',)].median_ns / 1e3:9.1f} us  "
              f"new/old " + " ".join(f"{r:.3f}" for r in ratios)
              + ("" if same else "  BITS DIFFER"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
