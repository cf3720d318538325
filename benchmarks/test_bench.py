"""pytest-benchmark suite: fastgn vs the NumPy reference, PyTorch, the floor.

Run ``pytest benchmarks --benchmark-enable`` to time (groups are named by
operation, shape and thread count, so contenders print side by side), or
``--benchmark-disable`` for a smoke test that runs each body once.

pytest-benchmark times one test after another, so on a noisy machine its
comparisons are weaker than ``python -m fastgn bench``, which interleaves
the contenders round-robin in one process.
"""

import numpy as np
import pytest

from fastgn import group_norm, group_norm_backward
from fastgn._bench import (MISSING_FEATURE, SHAPES, dims, load_kernels,
                           make_floor, probe, shape_str, to_channels_last,
                           usable_cores)

KERNELS = load_kernels()            # None when the extension is not built

THREADS = sorted({1, KERNELS.max_threads() if KERNELS else usable_cores()})
SHAPE_PARAMS = [pytest.param(s, G, id=f"{shape_str(s)}-G{G}")
                for s, G in SHAPES]
SPATIAL_SHAPE_PARAMS = [p for p in SHAPE_PARAMS if len(p.values[0]) > 2]


def _rounds(x):
    """Rounds for pedantic runs: more for small arrays."""
    return 100 if x.nbytes < 2**20 else 20


def _torch_tensors(torch, *arrays):
    # writable copies: torch.from_numpy warns on read-only arrays
    return [torch.from_numpy(np.array(a)) for a in arrays]


def _require(feature):
    """Skip (do not fail) when this build lacks a keyword or function."""
    reason = probe(feature)
    if reason:
        pytest.skip(f"feature not available: {reason}")


def _check(result, x):
    y = result[0] if isinstance(result, tuple) else result
    assert y.shape == x.shape


# ------------------------------------------------------------------ forward

FORWARD = ["fastgn", "fastgn_out", "fastgn_inplace", "reference", "torch",
           "floor"]


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("contender", FORWARD)
@pytest.mark.parametrize("shape,G", SHAPE_PARAMS)
def test_forward(benchmark, request, arrays, shape, G, contender, threads):
    benchmark.group = f"forward {shape_str(shape)} G={G} threads={threads}"
    x, w, b, _ = arrays(shape, G)

    if contender == "fastgn":
        result = benchmark(group_norm, x, G, w, b, num_threads=threads)
    elif contender == "fastgn_out":
        y = np.empty_like(x)
        result = benchmark(group_norm, x, G, w, b, out=y, num_threads=threads)
        assert result is y
    elif contender == "fastgn_inplace":
        def inplace(a):
            return group_norm(a, G, w, b, out=a, num_threads=threads)
        result = benchmark.pedantic(inplace, setup=lambda: ((x.copy(),), {}),
                                    rounds=_rounds(x), warmup_rounds=1)
    elif contender == "reference":
        request.getfixturevalue("reference_backend")
        result = benchmark(group_norm, x, G, w, b)
    elif contender == "torch":
        torch = request.getfixturevalue("torch_module")
        torch.set_num_threads(threads)
        xt, wt, bt = _torch_tensors(torch, x, w, b)
        result = benchmark(torch.nn.functional.group_norm, xt, G, wt, bt)
    else:
        floor, label = make_floor(x, threads, KERNELS)
        benchmark.extra_info["floor"] = label
        benchmark(floor)
        return
    _check(result, x)


# ------------------------------------------------------------ channels_last

@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("contender", ["fastgn_nchw", "fastgn_nhwc",
                                       "torch_channels_last"])
@pytest.mark.parametrize("shape,G", SPATIAL_SHAPE_PARAMS)
def test_channels_last(benchmark, request, arrays, shape, G, contender,
                       threads):
    benchmark.group = (f"channels_last {shape_str(shape)} G={G} "
                       f"threads={threads}")
    x, w, b, _ = arrays(shape, G)
    xcl = to_channels_last(x)
    if contender == "fastgn_nchw":
        result = benchmark(group_norm, x, G, w, b, num_threads=threads)
    elif contender == "fastgn_nhwc":
        _require(lambda: group_norm(xcl, G, w, b, channels_last=True))
        result = benchmark(group_norm, xcl, G, w, b, channels_last=True,
                           num_threads=threads)
        x = xcl
    else:
        torch = request.getfixturevalue("torch_module")
        torch.set_num_threads(threads)
        fmt = torch.channels_last if len(shape) == 4 else \
            torch.channels_last_3d
        xt, wt, bt = _torch_tensors(torch, x, w, b)
        xt = xt.contiguous(memory_format=fmt)
        result = benchmark(torch.nn.functional.group_norm, xt, G, wt, bt)
    _check(result, x)


# --------------------------------------------------------------------- silu

@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("contender", ["fastgn", "fastgn_silu", "torch_silu"])
@pytest.mark.parametrize("shape,G", SHAPE_PARAMS)
def test_silu(benchmark, request, arrays, shape, G, contender, threads):
    benchmark.group = f"silu {shape_str(shape)} G={G} threads={threads}"
    x, w, b, _ = arrays(shape, G)
    if contender == "fastgn":
        result = benchmark(group_norm, x, G, w, b, num_threads=threads)
    elif contender == "fastgn_silu":
        _require(lambda: group_norm(x, G, w, b, activation="silu"))
        result = benchmark(group_norm, x, G, w, b, activation="silu",
                           num_threads=threads)
    else:
        torch = request.getfixturevalue("torch_module")
        torch.set_num_threads(threads)
        F = torch.nn.functional
        xt, wt, bt = _torch_tensors(torch, x, w, b)
        result = benchmark(lambda: F.silu(F.group_norm(xt, G, wt, bt)))
    _check(result, x)


# -------------------------------------------------------------- activations

ACT_SHAPES = [p for p in SHAPE_PARAMS
              if shape_str(p.values[0]) in ("64x512x7x7", "8x64x56x56")]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("contender", ["none", "relu", "silu", "gelu",
                                       "torch_silu", "torch_gelu"])
@pytest.mark.parametrize("shape,G", ACT_SHAPES)
def test_activations(benchmark, request, arrays, shape, G, contender, dtype):
    """Each fused activation against plain GN (one thread), float32 and
    float64: a 7x7 map takes the small slabs' activation loop, float64's
    SiLU and GELU their own vectorized exp and erfc."""
    benchmark.group = f"activation {shape_str(shape)} G={G} {dtype}"
    x, w, b, _ = arrays(shape, G, dtype)
    if contender.startswith("torch"):
        torch = request.getfixturevalue("torch_module")
        torch.set_num_threads(1)
        F = torch.nn.functional
        act = F.silu if contender == "torch_silu" else F.gelu
        xt, wt, bt = _torch_tensors(torch, x, w, b)
        result = benchmark(lambda: act(F.group_norm(xt, G, wt, bt)))
    else:
        act = None if contender == "none" else contender
        result = benchmark(group_norm, x, G, w, b, activation=act,
                           num_threads=1)
    _check(result, x)


# ----------------------------------------------------------------- backward

@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("contender", ["fastgn_forward", "fastgn_backward",
                                       "torch_backward"])
@pytest.mark.parametrize("shape,G", SHAPE_PARAMS)
def test_backward(benchmark, request, arrays, shape, G, contender, threads):
    benchmark.group = f"backward {shape_str(shape)} G={G} threads={threads}"
    x, w, b, dy = arrays(shape, G)
    if contender == "fastgn_forward":
        result = benchmark(group_norm, x, G, w, b, num_threads=threads)
    elif contender == "fastgn_backward":
        try:
            _, mean, rstd = group_norm(x, G, w, b, return_stats=True)
        except MISSING_FEATURE as exc:
            pytest.skip(f"feature not available: {exc}")
        _require(lambda: group_norm_backward(dy, x, mean, rstd, G, w))
        result = benchmark(group_norm_backward, dy, x, mean, rstd, G, w,
                           num_threads=threads)
        assert result[1].shape == result[2].shape == (shape[1],)
    else:
        torch = request.getfixturevalue("torch_module")
        torch.set_num_threads(threads)
        N, C, HW = dims(shape)
        xt, wt, bt, dyt = _torch_tensors(torch, x, w, b, dy)
        _, mt, rt = torch.ops.aten.native_group_norm(xt, wt, bt, N, C, HW, G,
                                                     1e-5)
        result = benchmark(torch.ops.aten.native_group_norm_backward, dyt, xt,
                           mt, rt, wt, N, C, HW, G, [True, True, True])
    _check(result, x)


# ------------------------------------------------------------ data patterns

@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("contender", ["fastgn_random", "fastgn_zeros",
                                       "fastgn_nan", "torch_zeros"])
@pytest.mark.parametrize("shape,G", SPATIAL_SHAPE_PARAMS)
def test_data_patterns(benchmark, request, arrays, shape, G, contender,
                       threads):
    """All-zero input (padding, masked samples: every group constant) and a
    NaN in every group should cost what random input does: neither needs
    the float64 re-summation that float32 overflow and underflow take (both
    took it, at 20-33x the random input's time)."""
    benchmark.group = f"patterns {shape_str(shape)} G={G} threads={threads}"
    x, w, b, _ = arrays(shape, G)
    if contender == "fastgn_random":
        result = benchmark(group_norm, x, G, w, b, num_threads=threads)
    elif contender == "fastgn_zeros":
        zeros = np.zeros_like(x)
        result = benchmark(group_norm, zeros, G, w, b, num_threads=threads)
        np.testing.assert_array_equal(result, np.broadcast_to(
            b.reshape((-1,) + (1,) * (len(shape) - 2)), shape))
    elif contender == "fastgn_nan":
        nans = x.copy()
        nans.reshape(shape[0] * G, -1)[:, 0] = np.nan
        result = benchmark(group_norm, nans, G, w, b, num_threads=threads)
        assert np.isnan(result).all()
    else:
        torch = request.getfixturevalue("torch_module")
        torch.set_num_threads(threads)
        zt, wt, bt = _torch_tensors(torch, np.zeros_like(x), w, b)
        result = benchmark(torch.nn.functional.group_norm, zt, G, wt, bt)
    _check(result, x)


# ------------------------------------------------- large outputs, short runs

@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("contender", ["fastgn_out", "floor"])
@pytest.mark.parametrize("shape,G,channels_last", [
    pytest.param((64, 1024, 7, 7), 16, False, id="64x1024x7x7-G16"),
    pytest.param((64, 64, 33, 33), 2, False, id="64x64x33x33-G2"),
    pytest.param((64, 33, 33, 66), 2, True, id="64x33x33x66-G2-nhwc"),
    pytest.param((32, 256, 28, 28), 32, False, id="32x256x28x28-G32"),
])
def test_large_output_runs(benchmark, arrays, shape, G, channels_last,
                           contender, threads):
    """Outputs past the streaming threshold whose channel runs (rows, for
    channels-last) are not whole multiples of 16 bytes: streaming stores
    there shared lines with plain ones and took 5-8.5x the plain stores'
    time. They now stream only on whole runs (the last shape); the others
    should sit near the floor."""
    benchmark.group = (f"large output {shape_str(shape)} G={G} "
                       f"threads={threads}")
    x = np.array(arrays(shape, G)[0])
    y = np.empty_like(x)
    if contender == "floor":
        floor, label = make_floor(x, threads, KERNELS, y)
        benchmark.extra_info["floor"] = label
        benchmark.pedantic(floor, rounds=_rounds(x))
        return
    result = benchmark.pedantic(
        group_norm, (x, G), dict(out=y, channels_last=channels_last,
                                 num_threads=threads), rounds=_rounds(x))
    _check(result, x)


# ------------------------------------------------- the A/B script

def test_ab_script_same_build(capsys):
    """benchmarks/ab.py, one build against itself: it runs both kernels on
    forward and backward cases, warm and --cold, and finds the same bits."""
    if KERNELS is None:
        pytest.skip("extension not built")
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(
        "fastgn_ab", os.path.join(os.path.dirname(__file__), "ab.py"))
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    so = KERNELS.__file__
    cases = ["fwd:2x32x9x9:8:t=2", "bwd:4x16x5x5:4:cl", "fwd:8x64:8:silu"]
    assert ab.main([so, so, *cases, "--repeats", "1",
                    "--budget", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ab.main([so, so, "--cold", cases[1], "--repeats", "1",
                    "--budget", "0.01"]) == 0
    lines += capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == cases + cases[1:2]
    assert all("new/old" in line and "BITS DIFFER" not in line
               for line in lines), lines


# ------------------------------------------------- python -m fastgn bench

def test_bench_past_l3(capsys, monkeypatch):
    """--past-l3 times the target shapes with N multiplied past the L3
    (here a pretended 1 MiB one): 256x1024 (1 MiB) becomes 512x1024, the
    small call is left out, and the verdicts are computed as usual."""
    from fastgn import _bench
    for text, size in [("32768K", 32 * 2**20), ("1M", 2**20),
                       ("unknown", _bench.L3_BYTES)]:
        monkeypatch.setattr(_bench, "l3_size", lambda: text)
        assert _bench.l3_bytes() == size
    monkeypatch.setattr(_bench, "L3_BYTES", 2**20)
    monkeypatch.setattr(_bench, "l3_bytes", lambda: 2**20)
    assert _bench.main(["--quick", "--past-l3", "--no-extras", "--shapes",
                        "256x1024", "1x32x16x16"]) == 0
    out = capsys.readouterr().out
    assert "inputs of at least 2 MiB (2x the L3): 512x1024" in out
    rows = [ln.split() for ln in out.splitlines()]
    assert any(r[:1] == ["512x1024"] for r in rows)
    assert not any(r[:1] in (["256x1024"], ["1x32x16x16"]) for r in rows)
    assert "SKIP  small call" in out
    assert "out= <= 1.25x the streaming floor" in out
    with pytest.raises(SystemExit, match="leaves no shape"):
        _bench.main(["--quick", "--past-l3", "--shapes", "1x32x16x16"])
