"""Forward pass of fastgn.group_norm against the float64 oracle (conftest).

Every test runs on both backends (autouse ``backend`` fixture).
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastgn
import fastgn._api as _api

gn = fastgn.group_norm

F16, F32, F64 = (np.dtype(np.float16), np.dtype(np.float32),
                 np.dtype(np.float64))

# (rtol, atol) against the float64 oracle, for outputs of magnitude ~1.
TOL = {F64: (1e-12, 1e-12), F32: (2e-6, 2e-6), F16: (1e-3, 2e-3)}


def assert_close(y, ref, dtype, scale=1.0):
    """``y`` (computed in ``dtype``) against the float64 oracle ``ref``."""
    dtype = np.dtype(dtype)
    rtol, atol = TOL[dtype]
    ref = np.asarray(ref, dtype=np.float64)
    if dtype == F16:                    # compare with the correctly rounded
        ref = ref.astype(F16).astype(np.float64)    # float16 result
    np.testing.assert_allclose(np.asarray(y, dtype=np.float64), ref,
                               rtol=rtol, atol=atol * scale)


def data(rng, shape, dtype=F32, offset=0.5, scale=2.0):
    return (offset + scale * rng.standard_normal(shape)).astype(dtype)


def params(rng, C, mode="both", dtype=F32):
    """(weight, bias) for affine ``mode`` in {none, weight, bias, both}."""
    w = b = None
    if mode in ("weight", "both"):
        w = rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C)
        w = w.astype(dtype)
    if mode in ("bias", "both"):
        b = rng.standard_normal(C).astype(dtype)
    return w, b


# ------------------------------------------------------------ basic values

SHAPES = [(6, 12), (3, 12, 7), (2, 12, 5, 6), (2, 12, 3, 4, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s)}")
@pytest.mark.parametrize("G", [1, 3, 12])
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("affine", ["none", "weight", "bias", "both"])
def test_matches_oracle(rng, oracle, shape, G, dtype, affine):
    x = data(rng, shape, dtype)
    x0 = x.copy()
    w, b = params(rng, shape[1], affine, dtype)
    y = gn(x, G, w, b)
    assert isinstance(y, np.ndarray)
    assert y.shape == shape and y.dtype == dtype
    assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(x, x0)        # input untouched
    ref, _, _ = oracle(x, G, w, b)
    assert_close(y, ref, dtype, scale=4.0)


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.25, 3.0])
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_eps_values(rng, oracle, eps, dtype):
    # a small spread makes eps matter
    x = data(rng, (3, 8, 4, 5), dtype, offset=-1.0, scale=0.3)
    y, mean, rstd = gn(x, 4, eps=eps, return_stats=True)
    ref, rm, rr = oracle(x, 4, eps=eps)
    assert_close(y, ref, dtype)
    assert_close(rstd, rr, dtype, scale=4.0)


def test_default_eps_is_1e_5(rng, oracle):
    x = data(rng, (2, 4, 3), F64, scale=0.01)
    ref, _, _ = oracle(x, 2, eps=1e-5)
    assert_close(gn(x, 2), ref, F64)
    # and it is really used: a different eps gives a different answer here
    assert not np.allclose(gn(x, 2, eps=0.0), ref, rtol=1e-6, atol=0)


def test_array_likes_accepted(oracle):
    x = [[[1.0, 2.0], [3.0, 5.0]], [[-1.0, 0.0], [4.0, 4.5]]]
    y = gn(x, 1, weight=[1.0, 2.0], bias=(0.5, -0.5))
    assert y.dtype == F64
    ref, _, _ = oracle(np.array(x), 1, [1.0, 2.0], [0.5, -0.5])
    assert_close(y, ref, F64)


def test_weight_dtype_is_cast_to_compute_dtype(rng, oracle):
    x = data(rng, (2, 6, 5), F32)
    w = rng.uniform(0.5, 2, 6)                  # float64 weights, float32 x
    b = rng.integers(-3, 3, 6)                  # integer bias
    y = gn(x, 3, w, b)
    assert y.dtype == F32
    ref, _, _ = oracle(x, 3, w.astype(F32), b.astype(F32))
    assert_close(y, ref, F32, scale=4.0)


# ------------------------------------------------------------ dtypes

@pytest.mark.parametrize("affine", ["none", "both"])
def test_float16_in_float16_out(rng, oracle, affine):
    x = data(rng, (3, 8, 6, 5), F16)
    w, b = params(rng, 8, affine, F16)
    y, mean, rstd = gn(x, 4, w, b, return_stats=True)
    assert y.dtype == F16 and y.shape == x.shape
    assert mean.dtype == F32 and rstd.dtype == F32
    ref, rm, rr = oracle(x, 4, w, b)
    assert_close(y, ref, F16)
    # statistics are float32 values, not float16 ones
    np.testing.assert_allclose(mean, rm, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(rstd, rr, rtol=2e-6)


class _HalfSpy:
    """Records what the compiled float16 path returned (True: it ran)."""

    def __init__(self, monkeypatch):
        self.ran = []
        real = _api._kern.forward_half

        def spy(*args):
            self.ran.append(real(*args))
            return self.ran[-1]
        monkeypatch.setattr(_api._kern, "forward_half", spy)


@pytest.mark.compiled_only
@pytest.mark.parametrize("shape,G,kind,channels_last", [
    ((3, 8, 6, 5), 4, "buf", False),          # small slabs, one call
    ((64, 32, 7, 7), 8, "buf", False),        # small slabs over threads
    ((5, 12, 17), 3, "buf", False),           # small: 68 values, runs of 17
    ((4, 24, 9), 2, "buf", False),            # small: runs of 9
    ((7, 64, 8, 4), 2, "buf", False),         # small: 1024 values
    ((3, 16, 128), 1, "buf", False),          # small: 2048 values
    ((5, 8, 40, 41), 4, "buf", False),        # a slab per unit, chunked
    ((3, 64, 10, 10), 2, "buf", False),       # small path: runs of 100
    ((4, 64, 19), 2, "buf", False),           # rank 3, odd lengths
    ((3, 6, 2500), 3, "buf", False),          # chunked, one channel each
    ((5, 3003), 1, "buf", False),             # chunked rank 2 (LayerNorm)
    ((4, 20000), 2, "buf", False),            # chunked rank 2, 2 chunks
    ((1, 4, 100, 100), 1, "split", False),    # one slab: split over threads
    ((3, 2, 201, 200), 1, "buf", False),      # 3 slabs on 2 threads
    ((1, 8, 260, 260), 2, "big", False),      # slabs above HALF_BUF values
    ((3, 6, 5, 8), 4, "buf", True),           # NHWC: one thread (small)
    ((2, 60, 60, 32), 8, "buf", True),        # a sample per thread, 2 chunks
    ((1, 50, 50, 16), 4, "split", True),      # one sample over threads
    ((1, 2100, 1000, 2), 1, "big", True),     # chunks of a large sample
    ((3, 40, 50, 24), 6, "buf", True),        # 3 samples on 2 threads
], ids=str)
@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("activation", [None, "silu", "gelu"])
@pytest.mark.parametrize("back", [False, True], ids=["fwd", "back"])
def test_float16_compiled_path_same_bits(rng, monkeypatch, shape, G, kind,
                                         channels_last, nt, activation,
                                         back):
    """float16 NCHW slabs are converted in registers (half_fused: slabs of
    any size, shared among the threads as float32 slabs are when too few)
    or go through float32 buffers per slab; channels-last chunks go
    through a buffer per thread. Each gives the bits of normalizing the
    float32 conversion and rounding once, in place and into out= as well,
    also when large slabs are applied last chunk first (back); shapes none
    suits take the fallback."""
    x = data(rng, shape, F16, offset=30.0)
    w, b = params(rng, shape[-1 if channels_last else 1], "both", F16)
    kw = dict(num_threads=nt, activation=activation, return_stats=True,
              channels_last=channels_last)
    r32, m32, s32 = gn(x.astype(F32), G, w.astype(F32), b.astype(F32), **kw)
    spy = _HalfSpy(monkeypatch)
    kern = _api._kern
    old = kern.back_bytes(0 if back else 1 << 62)
    try:
        y, m, s = gn(x, G, w, b, **kw)
        out = np.full(x.size + 1, 7.0, F16)[1:].reshape(shape)  # 2-byte off
        assert gn(x, G, w, b, out=out, **kw)[0] is out
        z = x.copy()
        assert gn(z, G, w, b, out=z, **kw)[0] is z
    finally:
        kern.back_bytes(old)
    # NCHW slabs through buffers: not above HALF_BUF values nor split
    ran = kind == "buf" or channels_last or kern.half_fused() or \
        kind == "split" and nt == 1
    assert spy.ran == [ran] * 3
    np.testing.assert_array_equal(y, r32.astype(F16))
    np.testing.assert_array_equal(m, m32)
    np.testing.assert_array_equal(s, s32)
    np.testing.assert_array_equal(out, y)
    np.testing.assert_array_equal(z, y)


def test_float16_large_values_do_not_overflow_internally(rng, oracle):
    # x*x overflows float16 (max 65504): the computation must not be float16
    x = (3000.0 + 500.0 * rng.standard_normal((2, 4, 16))).astype(F16)
    y = gn(x, 2)
    assert np.isfinite(y).all()
    ref, _, _ = oracle(x, 2)
    assert_close(y, ref, F16)


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint8, np.int16,
                                   np.int32, np.int64, np.uint64],
                         ids=lambda d: np.dtype(d).name)
def test_bool_and_integer_inputs_give_float64(rng, oracle, dtype):
    if dtype is np.bool_:
        x = rng.random((3, 6, 7)) < 0.4
    else:
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -1000), min(info.max, 1000),
                         (3, 6, 7)).astype(dtype)
    w, b = params(rng, 6, "both", F64)
    y, mean, rstd = gn(x, 3, w, b, return_stats=True)
    assert y.dtype == F64 and mean.dtype == F64 and rstd.dtype == F64
    ref, rm, rr = oracle(x, 3, w, b)
    assert_close(y, ref, F64, scale=4.0)
    assert_close(mean, rm, F64, scale=1e3)
    assert_close(rstd, rr, F64, scale=1e3)


def test_large_int64_values(oracle):
    x = (2**40 + np.arange(2 * 4 * 9, dtype=np.int64)).reshape(2, 4, 9)
    y = gn(x, 2)
    ref, _, _ = oracle(x, 2)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6)


# ------------------------------------------------------------ out=

@pytest.mark.parametrize("dtype", [F16, F32, F64, np.dtype(np.int32)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "fortran"])
def test_out_is_returned_and_filled(rng, oracle, dtype, layout):
    shape = (3, 6, 5, 4)
    x = (rng.integers(-50, 50, shape) if dtype.kind == "i"
         else data(rng, shape)).astype(dtype)
    x0 = x.copy()
    rdt = F64 if dtype.kind == "i" else dtype
    if layout == "contiguous":
        out = np.full(shape, np.nan, rdt)
    elif layout == "strided":
        out = np.full(shape[:-1] + (2 * shape[-1],), np.nan, rdt)[..., ::2]
    else:
        out = np.asfortranarray(np.full(shape, np.nan, rdt))
    w, b = params(rng, 6, "both", F64 if rdt == F64 else F32)
    y = gn(x, 3, w, b, out=out)
    assert y is out
    np.testing.assert_array_equal(x, x0)
    ref, _, _ = oracle(x, 3, w, b)
    assert_close(out, ref, rdt, scale=4.0)
    # same numbers as without out=
    np.testing.assert_array_equal(out, gn(x, 3, w, b))


def test_out_with_return_stats(rng, oracle):
    x = data(rng, (2, 8, 9), F64)
    out = np.empty_like(x)
    res = gn(x, 4, out=out, return_stats=True)
    assert isinstance(res, tuple) and len(res) == 3
    assert res[0] is out
    ref, rm, rr = oracle(x, 4)
    assert_close(out, ref, F64)
    assert_close(res[1], rm, F64)
    assert_close(res[2], rr, F64)


@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_in_place(rng, oracle, dtype, channels_last):
    x = data(rng, (3, 8, 7, 6), dtype)
    C = x.shape[-1] if channels_last else x.shape[1]
    w, b = params(rng, C, "both", F64 if dtype == F64 else F32)
    x0 = x.copy()
    expected = gn(x0, 2, w, b, channels_last=channels_last)
    y = gn(x, 2, w, b, out=x, channels_last=channels_last)
    assert y is x
    ref, _, _ = oracle(x0, 2, w, b, channels_last=channels_last)
    assert_close(x, ref, dtype, scale=4.0)
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("hw", [(2, 2), (2, 4), (4, 4), (3, 7), (7, 7),
                                (5, 13), (8, 8), (9, 14)])
def test_in_place_channel_runs_same_bits(rng, oracle, dtype, hw):
    """Small slabs whose channel runs are not a whole number of vectors
    (each run's last vector overlaps the one before it): in place gives the
    bits of a separate output, and both match the oracle."""
    x = data(rng, (5, 12) + hw, dtype, offset=50.0)
    w, b = params(rng, 12, "both", dtype)
    expected = gn(x, 3, w, b)
    y = x.copy()
    assert gn(y, 3, w, b, out=y) is y
    np.testing.assert_array_equal(y, expected)
    assert_close(y, oracle(x, 3, w, b)[0], dtype)


def assert_every_offset(oracle, x, G, w, b, dtype, in_place=False,
                        want=None, **kw):
    """group_norm(x, ...) into an output at every offset within a cache
    line (and, with ``in_place``, into x's values there) gets the bits of
    ``want`` (default: the first output), which matches the oracle;
    nothing outside it is written."""
    per_line = 64 // dtype.itemsize
    buf = np.empty(x.size + 2 * per_line, dtype)
    start = (-buf.ctypes.data % 64) // dtype.itemsize
    for k in range(per_line):
        buf.fill(-7.0)
        y = buf[start + k:start + k + x.size].reshape(x.shape)
        assert gn(x, G, w, b, out=y, **kw) is y
        assert (buf[:start + k] == -7.0).all()
        assert (buf[start + k + x.size:] == -7.0).all()
        if k == 0:
            want = y.copy() if want is None else want
            ref = oracle(x, G, w, b, **{key: v for key, v in kw.items()
                                        if key != "num_threads"})[0]
            assert_close(want, ref, dtype, scale=4.0)
        np.testing.assert_array_equal(y, want, err_msg=f"offset {k}")
        if in_place:
            y[...] = x
            assert gn(y, G, w, b, out=y, **kw) is y
            np.testing.assert_array_equal(y, want, err_msg=f"in place {k}")


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("Cg,hw", [(8, (3, 3)), (16, (1, 2)), (2, (2, 4)),
                                   (4, (1, 5)), (16, (3, 5)), (3, (2, 3)),
                                   (5, (1, 7)), (1, (4, 5))], ids=str)
@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_small_maps_output_at_every_offset(rng, oracle, dtype, Cg, hw,
                                           activation):
    """Slabs of channels shorter than a vector (3x3, 2x2 maps; the compiled
    backend picks each lane's scale and shift from a vector of the slab's
    channels and stores from the output's first line boundary on): an
    output at every offset within a line, and in place, get the bits of an
    aligned output, which matches the oracle; nothing outside it is
    written."""
    G = 3
    x = data(rng, (5, Cg * G) + hw, dtype, offset=20.0)
    w, b = params(rng, Cg * G, "both", dtype)
    assert_every_offset(oracle, x, G, w, b, dtype, in_place=True,
                        activation=activation)


@pytest.mark.parametrize("Cg", [4, 8, 12, 16, 17, 20, 24, 31, 32, 33, 48, 63, 64])
@pytest.mark.parametrize("G", [1, 5, 9, 32])
@pytest.mark.parametrize("activation", [None, "relu", "silu"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_rank2_groups_of_one_to_four_vectors(rng, oracle, Cg, G, activation,
                                             dtype):
    """Rank-2 groups of one vector to 64 values (the compiled backend's own
    path for them: group lengths compiled as constants, a short tail as the
    group's last vector, groups in blocks of a vector's float64 lanes):
    output and stats against the oracle, in place the bits of a separate
    output, and a constant group exactly its bias."""
    C = Cg * G
    x = data(rng, (7, C), dtype, offset=1e3, scale=3.0)
    x[2, :Cg] = -41.25
    w, b = params(rng, C, "both", dtype)
    y, mean, rstd = gn(x, G, w, b, activation=activation, return_stats=True)
    ref, rmean, rrstd = oracle(x, G, w, b, activation=activation)
    assert_close(y, ref, dtype)
    rtol = 1e-6 if dtype == F32 else 1e-13
    np.testing.assert_allclose(mean, rmean, rtol=rtol, atol=0)
    np.testing.assert_allclose(rstd, rrstd, rtol=rtol, atol=0)
    if activation is None:
        np.testing.assert_array_equal(y[2, :Cg], w[:Cg] * 0 + b[:Cg])
    z = x.copy()
    assert gn(z, G, w, b, activation=activation, out=z) is z
    np.testing.assert_array_equal(z, y)


class _KernelSpy:
    """Wraps the active kernel module and records forward()'s x and y."""

    def __init__(self, real):
        self._real = real
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def forward(self, *args):
        self.calls.append((args[0], args[1]))
        return self._real.forward(*args)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_in_place_kernel_writes_into_x(monkeypatch, rng, oracle, dtype):
    """out=x (float32/64, contiguous): the kernel reads and writes x itself,
    no temporary of x's size is made."""
    spy = _KernelSpy(_api._kern)
    monkeypatch.setattr(_api, "_kern", spy)
    x = data(rng, (2, 8, 16, 16), dtype)
    x0 = x.copy()
    y = gn(x, 4, out=x)
    assert y is x
    assert len(spy.calls) == 1
    xk, yk = spy.calls[0]
    assert xk is x and yk is x
    assert_close(x, oracle(x0, 4)[0], dtype)


def test_separate_out_kernel_writes_into_out(monkeypatch, rng):
    spy = _KernelSpy(_api._kern)
    monkeypatch.setattr(_api, "_kern", spy)
    x = data(rng, (2, 8, 16, 16), F32)
    out = np.empty_like(x)
    gn(x, 4, out=out)
    assert spy.calls[0][1] is out


@pytest.mark.parametrize("mode", ["in_place", "out"])
def test_no_full_size_temporary(backend, rng, traced_peak, mode):
    if backend == "python":
        pytest.skip("the NumPy fallback computes in float64 temporaries by "
                    "design")
    x = data(rng, (4, 32, 64, 64), F32)            # 2 MiB
    w, b = params(rng, 32, "both", F32)
    out = x if mode == "in_place" else np.empty_like(x)
    gn(x[:1, :, :4, :4].copy(), 4, w, b)           # warm up lazy init
    with traced_peak() as traced:
        y = gn(x, 8, w, b, out=out, return_stats=True)[0]
    peak = traced.peak
    assert y is out
    assert peak < x.nbytes // 8, (
        f"group_norm(out=...) allocated {peak} bytes for a {x.nbytes}-byte "
        f"input")


@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=str)
@pytest.mark.parametrize("overlap", ["shift_last_axis", "flat_forward",
                                     "flat_backward", "transposed_alias",
                                     "reversed_batch"])
def test_partially_overlapping_out(rng, oracle, dtype, overlap):
    N, C, H, W = 3, 6, 5, 5
    n = N * C * H * W
    if overlap == "shift_last_axis":
        buf = data(rng, (N, C, H, W + 1), dtype)
        x, out = buf[..., :-1], buf[..., 1:]
    elif overlap == "flat_forward":
        buf = data(rng, n + 7, dtype)
        x, out = buf[:n].reshape(N, C, H, W), buf[7:].reshape(N, C, H, W)
    elif overlap == "flat_backward":
        buf = data(rng, n + 7, dtype)
        x, out = buf[7:].reshape(N, C, H, W), buf[:n].reshape(N, C, H, W)
    elif overlap == "transposed_alias":     # same start, other strides
        x = data(rng, (N, C, H, W), dtype)
        out = x.transpose(0, 1, 3, 2)
    else:
        x = data(rng, (N, C, H, W), dtype)
        out = x[::-1]
    assert np.shares_memory(x, out)
    w, b = params(rng, C, "both", F64 if dtype == F64 else F32)
    xc = x.copy()
    expected = gn(xc, 3, w, b)
    y = gn(x, 3, w, b, out=out)
    assert y is out
    np.testing.assert_array_equal(out, expected)
    ref, _, _ = oracle(xc, 3, w, b)
    assert_close(out, ref, dtype, scale=4.0)


@pytest.mark.parametrize("kind", ["pickled", "dtype_metadata"])
def test_input_never_written_when_out_given(rng, kind):
    """A separate ``out`` must leave the input alone, whatever the input's
    dtype object is (pickling creates an equal but distinct float32 dtype)."""
    x0 = data(rng, (2, 4, 6), F32)
    if kind == "pickled":
        x = pickle.loads(pickle.dumps(x0))
    else:
        x = x0.astype(np.dtype(np.float32, metadata={"unit": "m"}))
    out = np.zeros((2, 4, 12), F32)[..., ::2]     # not C-contiguous
    y = gn(x, 2, out=out)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, gn(x0, 2))


@pytest.mark.parametrize("mode", ["in_place", "new", "contiguous_out"])
def test_equal_but_distinct_dtype_objects(rng, oracle, mode):
    x0 = data(rng, (2, 4, 6), F64)
    x = pickle.loads(pickle.dumps(x0))
    w = pickle.loads(pickle.dumps(rng.uniform(1, 2, 4)))
    expected = gn(x0, 2, w.copy())
    out = {"in_place": x, "new": None, "contiguous_out": np.empty_like(x0)}
    y = gn(x, 2, w, out=out[mode])
    if mode != "new":
        assert y is out[mode]
    if mode != "in_place":
        np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, expected)
    assert_close(y, oracle(x0, 2, w)[0], F64, scale=2.0)


# ------------------------------------------------------------ layouts

def _views(rng, dtype):
    """(name, non-contiguous x) pairs, all of shape (3, 8, 5, 6)."""
    N, C, H, W = 3, 8, 5, 6
    big = data(rng, (N + 2, 2 * C, H + 3, 2 * W), dtype)
    yield "slice", big[1:N + 1, ::2, 2:H + 2, 1::2]
    yield "transpose", data(rng, (C, N, H, W), dtype).transpose(1, 0, 2, 3)
    yield "nhwc_view", data(rng, (N, H, W, C), dtype).transpose(0, 3, 1, 2)
    yield "fortran", np.asfortranarray(data(rng, (N, C, H, W), dtype))
    yield "negative", data(rng, (N, C, H, W), dtype)[::-1, ::-1, :, ::-1]
    yield "broadcast", np.broadcast_to(data(rng, (1, C, H, W), dtype),
                                       (N, C, H, W))
    raw = bytearray(N * C * H * W * dtype.itemsize + 1)
    un = np.frombuffer(raw, dtype=dtype, offset=1).reshape(N, C, H, W)
    un[...] = data(rng, (N, C, H, W), dtype)
    assert not un.flags.aligned
    yield "unaligned", un


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_noncontiguous_inputs_bitwise_equal_contiguous(rng, oracle, dtype):
    w, b = params(rng, 8, "both", dtype)
    for name, x in _views(rng, dtype):
        xc = np.ascontiguousarray(x)
        y, m, r = gn(x, 4, w, b, return_stats=True)
        yc, mc, rc = gn(xc, 4, w, b, return_stats=True)
        assert y.flags.c_contiguous, name
        np.testing.assert_array_equal(y, yc, err_msg=name)
        np.testing.assert_array_equal(m, mc, err_msg=name)
        np.testing.assert_array_equal(r, rc, err_msg=name)
        assert_close(y, oracle(xc, 4, w, b)[0], dtype, scale=4.0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_noncontiguous_weight_and_bias(rng, dtype):
    x = data(rng, (2, 8, 9), dtype)
    wb = rng.standard_normal((8, 2)).astype(dtype)
    w, b = wb[:, 0], wb[::-1, 1]
    np.testing.assert_array_equal(gn(x, 2, w, b),
                                  gn(x, 2, w.copy(), b.copy()))


@pytest.mark.parametrize("dt", [">f4", ">f8", ">f2", ">i4"])
def test_big_endian_equals_native(rng, dt):
    big = np.dtype(dt)
    native = big.newbyteorder("=")
    x = (rng.integers(-100, 100, (3, 8, 4, 5)) if big.kind == "i"
         else data(rng, (3, 8, 4, 5), native)).astype(native)
    wdt = F64 if big.kind == "i" else (F32 if big.itemsize == 2 else native)
    w, b = params(rng, 8, "both", wdt)
    xb = x.astype(big)
    wbig = w.astype(w.dtype.newbyteorder(">"))
    bbig = b.astype(b.dtype.newbyteorder(">"))
    y, m, r = gn(xb, 2, wbig, bbig, return_stats=True)
    yn, mn, rn = gn(x, 2, w, b, return_stats=True)
    assert y.dtype == yn.dtype and y.dtype.isnative
    np.testing.assert_array_equal(y, yn)
    np.testing.assert_array_equal(m, mn)
    np.testing.assert_array_equal(r, rn)


# ------------------------------------------------------------ statistics

@pytest.mark.parametrize("dtype,stat_dtype", [
    (F16, F32), (F32, F32), (F64, F64), (np.dtype(np.int32), F64),
    (np.dtype(np.bool_), F64)], ids=["f16", "f32", "f64", "i32", "bool"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_return_stats(rng, oracle, dtype, stat_dtype, channels_last):
    shape = (4, 5, 6, 6) if channels_last else (4, 6, 5, 6)
    if dtype.kind == "b":
        x = rng.random(shape) < 0.3
    elif dtype.kind == "i":
        x = rng.integers(-20, 20, shape).astype(dtype)
    else:
        x = data(rng, shape, dtype)
    res = gn(x, 3, return_stats=True, channels_last=channels_last)
    assert isinstance(res, tuple) and len(res) == 3
    y, mean, rstd = res
    assert mean.shape == (4, 3) and rstd.shape == (4, 3)
    assert mean.dtype == stat_dtype and rstd.dtype == stat_dtype
    ref, rm, rr = oracle(x, 3, channels_last=channels_last)
    tol = F64 if stat_dtype == F64 else F32
    assert_close(mean, rm, tol, scale=10.0)
    assert_close(rstd, rr, tol)
    assert_close(y, ref, dtype if dtype.kind == "f" else F64)
    # without return_stats: just the array, identical values
    y2 = gn(x, 3, channels_last=channels_last)
    assert isinstance(y2, np.ndarray)
    np.testing.assert_array_equal(y2, y)


# ------------------------------------------------------------ threads

@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("case", [
    ((1, 4, 128, 128), 1, False),       # one big slab
    ((4, 32, 16, 16), 8, False),        # many slabs
    ((3, 10, 15, 32), 4, True),         # channels last
    ((5, 12), 6, False),                # rank 2, tiny slabs
    ((3, 768, 16), 1, False),           # small path: short runs, 12288
    ((2, 2560, 8, 8), 32, False),       # float32 small path, float64 not
], ids=["one_slab", "many_slabs", "nhwc", "rank2", "short_runs",
        "short_runs_2d"])
def test_num_threads_bitwise_identical(rng, oracle, dtype, case):
    shape, G, cl = case
    x = data(rng, shape, dtype, offset=3.0)
    C = shape[-1] if cl else shape[1]
    w, b = params(rng, C, "both", dtype)
    results = [gn(x, G, w, b, channels_last=cl, return_stats=True,
                  num_threads=nt) for nt in (1, 2, 3, 4)]
    for nt, (y, m, r) in zip((2, 3, 4), results[1:]):
        for got, want in zip((y, m, r), results[0]):
            np.testing.assert_array_equal(got, want,
                                          err_msg=f"num_threads={nt}")
    assert_close(results[0][0], oracle(x, G, w, b, channels_last=cl)[0],
                 dtype, scale=4.0)


@pytest.mark.parametrize("case", [
    ((1, 2, 256, 256), 1, False),       # fewer slabs than threads: split
    ((3, 6, 64, 64), 3, False),         # 9 slabs over 2..4 threads
    ((1, 3, 256, 256), 3, False),       # 3 long slabs on 2 threads: split
    ((1, 128, 128, 24), 3, True),       # one NHWC sample in many items
    ((2, 40, 40, 64), 8, True),
    ((3, 64, 64, 32), 8, True),         # 3 NHWC samples on 2 threads: split
    ((4096, 96), 4, False),             # HW == 1: channels-last memory
], ids=["split_nchw", "uneven", "uneven_split", "nhwc_one_sample", "nhwc",
        "nhwc_uneven_split", "rank2_big"])
def test_parallel_phases_repeatable(rng, case):
    """Multi-phase parallel paths (chunk moments, merge, apply) give the
    one-thread bits on every repetition: a missing barrier between phases
    shows up here as an occasional mismatch. Two inputs alternate so that a
    phase reading a reused, not yet rewritten buffer sees stale values."""
    shape, G, cl = case
    C = shape[-1] if cl else shape[1]
    w, b = params(rng, C, "both", F32)
    xs = [data(rng, shape, F32, offset=5.0), data(rng, shape, F32) * 3]
    want = [gn(x, G, w, b, channels_last=cl, return_stats=True,
               num_threads=1) for x in xs]
    for rep in range(40):
        nt = 2 + rep % 3
        got = gn(xs[rep % 2], G, w, b, channels_last=cl, return_stats=True,
                 num_threads=nt)
        for g_, w_ in zip(got, want[rep % 2]):
            np.testing.assert_array_equal(g_, w_, err_msg=f"rep {rep}, "
                                          f"num_threads={nt}")


@pytest.mark.parametrize("nt", [None, np.int64(2), 16])
def test_num_threads_values_accepted(rng, oracle, nt):
    x = data(rng, (3, 8, 9, 9), F64)
    y = gn(x, 4, num_threads=nt)
    assert_close(y, oracle(x, 4)[0], F64)
    np.testing.assert_array_equal(y, gn(x, 4, num_threads=1))


def test_under_threadpool_limits(rng, oracle):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = data(rng, (2, 16, 32, 32), F32)
    expected = gn(x, 4, num_threads=1)
    with threadpoolctl.threadpool_limits(limits=1):
        y = gn(x, 4)
        y2 = gn(x, 4, num_threads=2)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(y2, expected)
    assert_close(y, oracle(x, 4)[0], F32)


# ------------------------------------------------------------ special values

@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf],
                         ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("activation", [None, "relu", "silu", "gelu"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_nonfinite_poisons_exactly_its_group(rng, oracle, poison, activation,
                                             dtype, channels_last):
    N, C, H, W, G = 3, 8, 5, 5, 4
    x = data(rng, (N, C, H, W), dtype)
    x[1, 4, 2, 3] = poison                 # sample 1, group 2 (channels 4:6)
    bad = np.zeros(x.shape, bool)
    bad[1, 4:6] = True
    w, b = params(rng, C, "both", dtype)
    xin = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x
    y, mean, rstd = gn(xin, G, w, b, activation=activation,
                       channels_last=channels_last, return_stats=True)
    if channels_last:
        y = np.moveaxis(y, -1, 1)
    assert np.isnan(y[bad]).all()
    assert np.isfinite(y[~bad]).all()
    ref, rm, rr = oracle(x, G, w, b, activation=activation)
    assert_close(y[~bad], ref[~bad], dtype, scale=4.0)
    good = np.ones((N, G), bool)
    good[1, 2] = False
    assert_close(mean[good], rm[good], dtype)
    assert_close(rstd[good], rr[good], dtype)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("fill", [3.7, -1234.5678])
@pytest.mark.parametrize("channels_last", [False, True])
def test_constant_group_gives_exactly_bias(rng, oracle, dtype, fill,
                                           channels_last):
    N, C, H, W, G = 2, 6, 33, 65, 3       # group size 2 * 33 * 65 = 4290
    x = data(rng, (N, C, H, W), dtype)
    x[1, 2:4] = fill                       # sample 1, group 1
    w = rng.uniform(-3, 3, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    xin = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x
    y, mean, rstd = gn(xin, G, w, b, eps=1e-5, channels_last=channels_last,
                       return_stats=True)
    if channels_last:
        y = np.moveaxis(y, -1, 1)
    np.testing.assert_array_equal(
        y[1, 2:4], np.broadcast_to(b[2:4, None, None], (2, H, W)))
    assert mean[1, 1] == dtype.type(fill)
    np.testing.assert_allclose(rstd[1, 1], 1 / np.sqrt(1e-5), rtol=1e-6)
    ref, _, _ = oracle(x, G, w, b)
    assert_close(y, ref, dtype, scale=4.0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_constant_group_without_bias_is_zero(rng, dtype):
    x = np.full((2, 4, 10, 10), -0.1, dtype)
    y = gn(x, 2, rng.uniform(1, 2, 4).astype(dtype))
    np.testing.assert_array_equal(y, 0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_single_element_groups(rng, oracle, dtype):
    x = data(rng, (4, 6), dtype)                # G == C, no spatial dims
    w, b = params(rng, 6, "both", dtype)
    y = gn(x, 6, w, b)
    np.testing.assert_array_equal(y, np.broadcast_to(b, x.shape))


# ------------------------------------------------------------ empty

@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 4, 0), (0, 4), (2, 4, 0, 5),
                                   (0, 4, 2, 2)], ids=str)
@pytest.mark.parametrize("dtype", [F16, F32, F64, np.dtype(np.int32)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_empty_inputs(shape, dtype, channels_last):
    if channels_last:                          # keep C == 4 as the last axis
        shape = (shape[0],) + shape[2:] + (shape[1],)
    x = np.zeros(shape, dtype)
    rdt = F64 if dtype.kind == "i" else dtype
    sdt = F64 if dtype in (F64, np.dtype(np.int32)) else F32
    y, mean, rstd = gn(x, 2, np.ones(4), np.zeros(4), return_stats=True,
                       channels_last=channels_last)
    assert y.shape == shape and y.dtype == rdt and y.size == 0
    assert mean.shape == (shape[0], 2) and rstd.shape == (shape[0], 2)
    assert mean.dtype == sdt and rstd.dtype == sdt
    y2 = gn(x, 2, channels_last=channels_last)
    assert y2.shape == shape and y2.dtype == rdt
    out = np.empty(shape, rdt)
    assert gn(x, 2, out=out, channels_last=channels_last) is out


# ------------------------------------------------------------ consistency

def assert_alone_same_bits(x, G, w, b, rows, batch, **kw):
    """Each sample i in rows, normalized alone, gives the bits of its row
    of ``batch`` (y, mean, rstd of the whole x with the same arguments)."""
    for i in rows:
        for got, want in zip(gn(x[i:i + 1], G, w, b, return_stats=True,
                                **kw), batch):
            np.testing.assert_array_equal(got, want[i:i + 1])


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_size_independence(rng, dtype, channels_last):
    x = data(rng, (5, 8, 6, 7), dtype, offset=10.0)
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    w, b = params(rng, 8, "both", dtype)
    y, m, r = gn(x, 4, w, b, channels_last=channels_last, return_stats=True)
    assert_alone_same_bits(x, 4, w, b, range(5), (y, m, r),
                           channels_last=channels_last)
    yi = gn(x[1:4], 4, w, b, channels_last=channels_last)
    np.testing.assert_array_equal(yi, y[1:4])


@pytest.mark.compiled_only
@pytest.mark.parametrize("dtype,shape", [
    (F32, (6, 184, 100)),       # runs of 400 bytes (whole 16 bytes)
    (F64, (6, 846, 31)),
    (F16, (6, 384, 64)),        # float32's choice of path
], ids=str)
def test_batch_independence_across_the_streaming_size(rng, streaming, dtype,
                                                      shape):
    """A sample gives the same bits alone and in a batch whose arrays
    exceed the streaming size (set between the two here): slabs of
    2049-16384 values in channel runs under 512 bytes had taken the chunked
    path in such calls and the small-slab path in smaller ones, whose
    statistics round differently."""
    x = data(rng, shape, dtype, offset=3.0)
    w, b = params(rng, shape[1], "both", dtype)
    streaming.stream_bytes(4 * x[:1].size * max(x.itemsize, 4))
    batch = gn(x, 2, w, b, return_stats=True, num_threads=1)
    assert_alone_same_bits(x, 2, w, b, (0, shape[0] - 1), batch,
                           num_threads=1)


@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=str)
@pytest.mark.parametrize("shape,G", [
    ((4096, 64), 1),        # rank-2 items of many whole samples
    ((1000, 96), 3),        # items of 85 samples, the last one short
    ((700, 48), 8),         # groups of 6 values
], ids=str)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_rank2_many_samples_per_item(rng, oracle, dtype, shape, G,
                                     activation):
    """Rank-2 samples of few groups go many to a kernel call, with the
    weights repeated per sample: each row gives the bits it gives alone
    (weights misplaced by a sample fail this), at any thread count."""
    x = data(rng, shape, dtype, offset=4.0)
    w, b = params(rng, shape[1], "both", dtype)
    y, m, r = gn(x, G, w, b, num_threads=1, activation=activation,
                 return_stats=True)
    for nt in (2, 3):
        for got, want in zip(gn(x, G, w, b, num_threads=nt,
                                activation=activation, return_stats=True),
                             (y, m, r)):
            np.testing.assert_array_equal(got, want)
    assert_alone_same_bits(x, G, w, b, (0, 1, 84, 85, 86, shape[0] - 1),
                           (y, m, r), activation=activation)
    ref = oracle(x.astype(F64), G, w.astype(F64), b.astype(F64),
                 activation=activation)[0]
    assert_close(y, ref, dtype, scale=4.0)


@pytest.fixture
def streaming(backend):
    """The compiled kernels, restoring their streaming-store threshold."""
    kern = _api._kern
    old = kern.stream_bytes(0)
    try:
        yield kern
    finally:
        kern.stream_bytes(old)


def _sysfs_cache_bytes():
    """{level: bytes} of CPU 0's data (or unified) caches as Linux's sysfs
    describes them; {} elsewhere."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    sizes = {}
    if not os.path.isdir(base):
        return sizes
    for entry in os.listdir(base):
        d = os.path.join(base, entry)
        try:
            with open(os.path.join(d, "level")) as f:
                level = int(f.read())
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(d, "size")) as f:
                size = f.read().strip()
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and size.endswith("K"):
            sizes[level] = int(size[:len(size) - 1]) * 1024
    return sizes


@pytest.mark.compiled_only
def test_cache_sizes_and_streaming_threshold(backend):
    """The kernels read the cache sizes Linux reports (CPython's os.sysconf
    knows no cache names there: alone, it left the streaming threshold at
    its 32 MiB fallback on every machine), and streaming stores start where
    input plus output exceed the last level or the cap on the share of it
    one call may count on, whichever is less."""
    sizes = _sysfs_cache_bytes()
    if not sizes:
        pytest.skip("no cache description in sysfs on this machine")
    kern = _api._kern
    for level, size in sizes.items():
        assert kern._cache_bytes(level, -1) == size, level
    assert kern._cache_bytes(99, -1) == -1
    cap = kern.STREAM_CAP_BYTES
    assert 1 << 20 <= cap <= 64 << 20
    if sizes.get(3, 0) >= (1 << 20):
        assert kern.stream_bytes() == min(sizes[3], cap)


@pytest.mark.compiled_only
@pytest.mark.parametrize("dtype", [F32, F16], ids=str)
@pytest.mark.parametrize("shape,G", [
    ((4, 96, 7, 7), 2),            # slabs of 2352 values, runs of 196 bytes
    ((3, 160, 5, 5), 1),           # 4000 values, runs of 100 bytes
], ids=str)
@pytest.mark.parametrize("nt", [1, 2])
def test_short_runs_small_path_any_array_size(rng, oracle, streaming,
                                              dtype, shape, G, nt):
    """float32 slabs of short channel runs that streaming stores cannot
    take (not whole 16 bytes) go the small-slab way whether or not the
    call's arrays exceed the cache (forced here; float16 in registers
    there now): the same bits either way, float16 those of float32 on the
    same values rounded, and close to the oracle. (On these shapes the
    chunked path the large arrays had taken gives the same bits too.)"""
    x = data(rng, shape, dtype, offset=3.0)
    w, b = params(rng, shape[1], "both", F32 if dtype == F16 else dtype)
    streaming.stream_bytes(1 << 62)
    cached = gn(x, G, w, b, num_threads=nt)
    streaming.stream_bytes(0)
    big = gn(x, G, w, b, num_threads=nt)
    assert big.tobytes() == cached.tobytes()
    if dtype == F16:
        y32 = gn(x.astype(F32), G, w, b, num_threads=nt)
        assert big.tobytes() == y32.astype(F16).tobytes()
    assert_close(big, oracle(x.astype(F64), G, w.astype(F64),
                             b.astype(F64))[0], dtype)


@pytest.mark.compiled_only
@pytest.mark.parametrize("dtype,shape,G", [
    (F64, (5, 32, 7, 7), 2),       # 6 KiB slabs
    (F32, (4, 32, 7, 7), 1),       # 6 KiB slabs
    (F32, (5, 32, 7, 7), 2),       # 3 KiB slabs: pairs either way
], ids=str)
@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_small_slab_blocks_same_bits(rng, oracle, streaming, dtype, shape, G,
                                     nt, activation):
    """The small-slab path takes slabs of 6 KiB or more one at a time in
    arrays larger than the cache (forced here), two at a time otherwise:
    the same bits either way."""
    x = data(rng, shape, dtype, offset=3.0)
    w, b = params(rng, shape[1], "both", dtype)
    kw = dict(num_threads=nt, activation=activation)
    streaming.stream_bytes(1 << 62)
    cached = gn(x, G, w, b, **kw)
    streaming.stream_bytes(0)
    big = gn(x, G, w, b, **kw)
    assert big.tobytes() == cached.tobytes()
    assert_close(big, oracle(x, G, w, b, activation=activation)[0], dtype,
                 scale=4.0)


@pytest.mark.compiled_only
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("shape,G", [
    ((3, 8, 40, 41), 2),           # one slab per thread, odd run lengths
    ((1, 4, 100, 100), 1),         # split over threads (N*G < threads)
    ((2, 6, 3, 1001), 3),
    ((2, 3, 40, 41), 3),           # channels-last: rows of 3 channels
], ids=["per_slab", "split", "odd", "few_channels"])
@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("where", ["new", "out_offset", "in_place"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_streaming_stores_same_bits(rng, oracle, streaming, dtype, shape, G,
                                    nt, where, channels_last):
    """Outputs larger than the last-level cache are written with streaming
    stores: forced on small arrays here, with outputs at every 16-byte
    misalignment, they give the bits of the plain stores."""
    x = data(rng, shape, dtype, offset=100.0)
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    w, b = params(rng, shape[1], "both", dtype)
    kw = dict(num_threads=nt, channels_last=channels_last)
    streaming.stream_bytes(1 << 62)
    plain = gn(x, G, w, b, **kw)
    streaming.stream_bytes(0)
    if where == "new":
        y = gn(x, G, w, b, **kw)
    elif where == "in_place":
        y = x.copy()
        assert gn(y, G, w, b, out=y, **kw) is y
    else:
        for k in range(1, 16 // dtype.itemsize):
            buf = np.full(x.size + k + 1, -7.0, dtype)
            y = buf[k:k + x.size].reshape(x.shape)
            gn(x, G, w, b, out=y, **kw)
            assert buf[:k].tolist() == [-7.0] * k
            assert buf[-1] == -7.0
            np.testing.assert_array_equal(y, plain)
    np.testing.assert_array_equal(y, plain)
    assert_close(y, oracle(x, G, w, b, channels_last=channels_last)[0], dtype)


def assert_streamed_same_bits(oracle, streaming, x, G, w, b, nt,
                              activation, back=None):
    """The output and statistics of x in an array forced larger than the
    cache equal those of plain stores, at every offset of the output within
    a line (nothing written outside it) and in place; and the oracle's.
    ``back``: slabs applied from their last chunk (True) or first."""
    if back is not None:
        old = streaming.back_bytes(0 if back else 1 << 62)
        try:
            assert_streamed_same_bits(oracle, streaming, x, G, w, b, nt,
                                      activation)
        finally:
            streaming.back_bytes(old)
        return
    kw = dict(num_threads=nt, activation=activation)
    streaming.stream_bytes(1 << 62)
    plain, mean, rstd = gn(x, G, w, b, return_stats=True, **kw)
    streaming.stream_bytes(0)
    for k in range(64 // x.itemsize):
        buf = np.full(x.size + k + 1, -7.0, x.dtype)
        y = buf[k:k + x.size].reshape(x.shape)
        got = gn(x, G, w, b, out=y, return_stats=True, **kw)
        assert got[0] is y
        assert buf[:k].tolist() == [-7.0] * k and buf[-1] == -7.0
        for g, want in zip(got, (plain, mean, rstd)):
            np.testing.assert_array_equal(g, want)
    y = x.copy()
    gn(y, G, w, b, out=y, **kw)
    np.testing.assert_array_equal(y, plain)
    assert_close(plain, oracle(x, G, w, b, activation=activation)[0],
                 x.dtype, scale=4.0)


@pytest.mark.compiled_only
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("L", [16, 20, 24, 32, 40, 64])
@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("activation", [None, "relu", "silu", "gelu"])
def test_rank2_streaming_same_bits(rng, oracle, streaming, dtype, L, nt,
                                   activation):
    """Rank-2 groups of whole vectors in arrays larger than the cache
    (forced here) are streamed a line-aligned vector at a time (float64),
    the output's first and last values of each call stored plainly: the
    bits and statistics of the plain stores, at every offset of the output
    within a line, in place too, and nothing written outside it."""
    G = 6
    x = data(rng, (37, G * L), dtype, offset=50.0)
    w, b = params(rng, G * L, "both", dtype)
    assert_streamed_same_bits(oracle, streaming, x, G, w, b, nt, activation)


@pytest.mark.compiled_only
@pytest.mark.parametrize("dtype,shape,G", [
    (F32, (9, 64, 7, 7), 4),       # runs of 196 bytes, 3 KiB slabs
    (F32, (7, 48, 5, 5), 3),       # runs of 100 bytes
    (F32, (5, 32, 9, 9), 4),       # runs of 324 bytes
    (F32, (6, 24, 4, 4), 3),       # runs of one AVX-512 vector
    (F64, (7, 48, 5, 5), 3),       # runs of 200 bytes
], ids=str)
@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("activation", [None, "relu", "silu", "gelu"])
def test_small_runs_streaming_same_bits(rng, oracle, streaming, dtype, shape,
                                        G, nt, activation):
    """Small slabs of channel runs of a vector or more in arrays larger
    than the cache (forced here) are streamed a line-aligned vector at a
    time, a vector spanning two channels or two slabs taking each lane's
    own: the bits of the plain stores at every offset of the output within
    a line, in place too, and nothing written outside it."""
    x = data(rng, shape, dtype, offset=50.0)
    w, b = params(rng, shape[1], "both", dtype)
    assert_streamed_same_bits(oracle, streaming, x, G, w, b, nt, activation)


@pytest.mark.compiled_only
@pytest.mark.parametrize("dtype,shape,G,back", [
    (F32, (3, 8, 32, 32), 2, False),    # slabs of 4096 values, one chunk
    (F32, (2, 16, 24, 24), 2, False),   # 4608 values: two chunks
    (F32, (2, 16, 24, 24), 2, True),    # ... applied last chunk first
    (F32, (1, 8, 48, 48), 1, False),    # one slab: chunks shared (t=2)
    (F64, (3, 8, 20, 20), 4, False),
    (F32, (4, 16, 16, 16), 4, False),   # small slabs, the activation fused
    (F32, (8, 12, 3, 3), 4, False),     # small slabs of few channels
    (F64, (6, 8, 8, 8), 2, False),
], ids=str)
@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("activation", ["relu", "silu", "gelu"])
def test_activation_streaming_same_bits(rng, oracle, streaming, dtype, shape,
                                        G, back, nt, activation):
    """An activation in arrays larger than the cache (forced here) is
    computed into an L1 buffer a piece at a time and streamed out: the
    bits and statistics of the plain stores, at every offset of the output
    within a line, in place too, and nothing written outside it."""
    x = data(rng, shape, dtype, offset=50.0)
    w, b = params(rng, shape[1], "both", dtype)
    assert_streamed_same_bits(oracle, streaming, x, G, w, b, nt, activation,
                              back)


@pytest.mark.compiled_only
@pytest.mark.parametrize("shape,G,back", [
    ((3, 8, 64, 64), 2, False),     # slabs of 16384 values: two chunks
    ((2, 8, 48, 96), 2, False),     # 18432 values: three chunks
    ((2, 8, 48, 96), 2, True),      # ... applied last chunk first
    ((1, 8, 48, 48), 1, False),     # one slab: chunks shared (t=2)
    ((2, 6, 1, 9000), 3, False),    # runs of 9000 values
    ((3, 20000), 1, False),         # rank 2: each value its own weight
], ids=str)
@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_half_streaming_same_bits(rng, oracle, streaming, shape, G, back, nt,
                                  activation):
    """float16 slabs in arrays larger than the cache (forced here) are
    computed into an L1 buffer a piece at a time and streamed out (the
    AVX2 and AVX-512 copies): the bits and statistics of the plain
    stores, at every offset of the output within a line, in place too,
    and nothing written outside it."""
    x = data(rng, shape, F16, offset=30.0)
    w, b = params(rng, shape[1], "both", F16)
    assert_streamed_same_bits(oracle, streaming, x, G, w, b, nt, activation,
                              back)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("C,G", [(16, 4), (48, 3), (64, 64), (256, 32)])
@pytest.mark.parametrize("hw", [(5, 7), (2, 2)], ids=str)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_channels_last_output_at_every_offset(rng, oracle, dtype, C, G, hw,
                                              activation):
    """Channels-last rows of whole cache lines (C * itemsize a multiple of
    64) are written from the output's first line boundary on, with the
    per-channel vectors rotated to match (groups of 4, 8 and 16 channels
    by loops of their own): an output at every offset within a line gets
    the bits of an aligned one."""
    x = data(rng, (3, *hw, C), dtype, offset=3.0)
    w, b = params(rng, C, "both", dtype)
    assert_every_offset(oracle, x, G, w, b, dtype, channels_last=True,
                        activation=activation)


@pytest.mark.compiled_only
@pytest.mark.parametrize("shape,G", [
    ((3, 4, 5, 256), 32),           # rows wider than 8 vectors, a row a step
    ((2, 3, 3, 320), 32),
    ((4, 3, 5, 64), 8),             # rows of a few vectors, in columns
    ((3, 5, 4, 40), 4),             # rows of 40 taken as rows of 80
], ids=str)
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("nt", [1, 2])
def test_channels_last_requests_same_bits(rng, oracle, shape, G, dtype,
                                          activation, nt):
    """A channels-last apply of samples that fit L2 requests the next
    sample's values as it stores (a row at a time where rows are wide): an
    output at every offset in a line gets the bits of the apply without
    requests (back_bytes(0): no sample fits, chunks last read first)."""
    x = data(rng, shape, dtype, offset=3.0)
    w, b = params(rng, shape[-1], "both", dtype)
    kw = dict(channels_last=True, num_threads=nt, activation=activation)
    kern = _api._kern
    old = kern.back_bytes(0)
    try:
        want = gn(x, G, w, b, **kw)
    finally:
        kern.back_bytes(old)
    assert_every_offset(oracle, x, G, w, b, dtype, want=want, **kw)


@pytest.mark.compiled_only
@pytest.mark.parametrize("shape,G,channels_last", [
    ((1, 4, 300, 300), 2, True),    # one sample of 6 chunks, shared
    ((3, 12, 90, 100), 4, True),    # 3 samples on 2 threads: shared
    ((4, 8, 30, 31), 2, True),      # a sample per thread
    ((1, 4, 100, 100), 1, False),   # one slab of 5 chunks, shared
    ((3, 2, 60, 100), 1, False),    # 3 slabs on 2 threads: shared
    ((4, 4, 60, 60), 2, False),     # a slab per thread
], ids=str)
@pytest.mark.parametrize("nt", [1, 2, 3])
def test_backward_apply_order_same_bits(rng, oracle, backend, shape, G,
                                        channels_last, nt):
    """Slabs and channels-last samples larger than L2 are applied from their
    last chunk back (each thread its own chunks, mirrored): forced on small
    ones here, every value is written once, with the forward order's
    bits."""
    x = data(rng, shape, F32, offset=2.0)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x
    w, b = params(rng, shape[1], "both", F32)
    kw = dict(channels_last=channels_last, num_threads=nt)
    kern = _api._kern
    old = kern.back_bytes(1 << 62)
    try:
        fwd = gn(xl, G, w, b, **kw)
        kern.back_bytes(0)
        y = np.full_like(xl, np.nan)
        gn(xl, G, w, b, out=y, **kw)
    finally:
        kern.back_bytes(old)
    np.testing.assert_array_equal(y, fwd)
    y = np.moveaxis(y, -1, 1) if channels_last else y
    assert_close(y, oracle(x, G, w, b)[0], F32)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s)}")
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("G", [1, 4, 12])
def test_channels_last_matches_nchw(rng, oracle, shape, dtype, G):
    x = data(rng, shape, dtype)
    w, b = params(rng, shape[1], "both", dtype)
    y, m, r = gn(x, G, w, b, return_stats=True)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    yl, ml, rl = gn(xl, G, w, b, channels_last=True, return_stats=True)
    assert yl.shape == xl.shape
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), y, rtol=rtol,
                               atol=4 * atol)
    np.testing.assert_allclose(ml, m, rtol=rtol, atol=atol)
    np.testing.assert_allclose(rl, r, rtol=rtol, atol=atol)
    ref, _, _ = oracle(xl, G, w, b, channels_last=True)
    assert_close(yl, ref, dtype, scale=4.0)


@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=str)
@pytest.mark.parametrize("C,G,spatial", [
    (3, 1, (224, 5)), (3, 3, (7, 9)), (5, 5, (33,)), (6, 2, (4, 4)),
    (10, 5, (9, 7)), (20, 4, (3, 17)), (24, 6, (5, 5)), (40, 8, (31,)),
    (100, 10, (6, 6)),
], ids=str)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_channels_last_few_channels(rng, oracle, dtype, C, G, spatial,
                                    activation):
    """Rows of fewer channels than a vector, or not a multiple of one, are
    taken as wider rows of whole vectors, the positions left over as they
    are: against the oracle, each sample alone, one thread or two
    (streamed: test_streaming_stores_same_bits)."""
    x = data(rng, (4, *spatial, C), dtype, offset=5.0)
    w, b = params(rng, C, "both", dtype)
    kw = dict(channels_last=True, activation=activation)
    y = gn(x, G, w, b, **kw)
    ref = oracle(x, G, w, b, channels_last=True, activation=activation)[0]
    assert_close(y, ref, dtype, scale=4.0)
    for n in range(4):
        np.testing.assert_array_equal(gn(x[n:n + 1], G, w, b, **kw), y[n:n + 1])
    np.testing.assert_array_equal(gn(x, G, w, b, num_threads=2, **kw), y)


def test_channels_last_rank2_is_plain(rng):
    x = data(rng, (5, 6), F64)
    np.testing.assert_allclose(gn(x, 3, channels_last=True), gn(x, 3),
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "silu", "gelu"])
@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_activations(rng, oracle, activation, dtype, channels_last):
    x = data(rng, (3, 6, 7, 6), dtype)
    w, b = params(rng, 6, "both", F64 if dtype == F64 else F32)
    y = gn(x, 3, w, b, activation=activation, channels_last=channels_last)
    assert y.dtype == dtype and y.shape == x.shape
    ref, _, _ = oracle(x, 3, w, b, channels_last=channels_last,
                       activation=activation)
    assert_close(y, ref, dtype, scale=4.0)
    plain = oracle(x, 3, w, b, channels_last=channels_last)[0]
    assert not np.allclose(ref, plain)          # the activation did something
    if activation == "relu":
        assert (y >= 0).all()


def test_activation_none_is_identity(rng):
    x = data(rng, (2, 4, 5), F64)
    np.testing.assert_array_equal(gn(x, 2, activation=None), gn(x, 2))


@pytest.mark.parametrize("activation", ["relu", "silu", "gelu"])
def test_activation_extreme_values(oracle, activation):
    # large |v| after the affine step: no overflow, no NaN
    x = np.array([[[-1.0, 1.0]] * 2], dtype=np.float64).reshape(1, 2, 2)
    w = np.array([1e4, -800.0])
    y = gn(x, 2, w, activation=activation, eps=0.0)
    ref, _, _ = oracle(x, 2, w, activation=activation, eps=0.0)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_silu_within_ulps_over_the_exp_range(dtype):
    """Every output is exactly its bias (x-hat is -1, 1 and the weight 0),
    so the activation alone is measured: SiLU within 4 units in the last
    place of v / (1 + exp(-v)) computed in float64 with NumPy's exp (and
    rounded, for float32). float64: over the exp's whole range, where it
    overflows to inf and where its results go subnormal or to 0. float32:
    from -87 up (below: the next test)."""
    if dtype == F64:
        v = np.concatenate([np.linspace(-800, 800, 4001),
                            [-745.2, -745.1, -709.8, -709.78, -708.4,
                             709.7, 709.8, 1e-300, -1e-300]])
    else:
        v = np.concatenate([np.linspace(-87, 100, 4001),
                            [-86.9, 88.7, 1e-30, -1e-30]])
    v = np.concatenate([v, [-0.0, 0.0, -1.0, 1.0]])
    v = v.astype(dtype)
    C = v.size
    x = np.tile(np.array([-1.0, 1.0], dtype), (1, C, 1))      # (1, C, 2)
    w = np.zeros(C, dtype)
    plain = gn(x, C, w, v, eps=0.0)
    assert np.array_equal(plain[0, :, 0], v)    # the activation's input
    y = gn(x, C, w, v, eps=0.0, activation="silu")[0, :, 0]
    v64 = v.astype(np.float64)
    with np.errstate(over="ignore"):
        want = (v64 / (1.0 + np.exp(-v64))).astype(dtype)
    ulps = np.abs(y.astype(np.float64) - want) / np.spacing(
        np.abs(want).astype(dtype)).astype(np.float64)
    assert ulps.max() <= 4, (v[ulps.argmax()], y[ulps.argmax()],
                             want[ulps.argmax()])
    assert np.array_equal(np.signbit(y), np.signbit(want))


def test_silu_float32_below_the_exp_range():
    """float32 SiLU from v = -87 down to -inf: within 1e-36 of v / (1 +
    exp(-v)) in float64 (values under 6e-37 from -88 down, where the
    float32 exp gives inf from -v = 88.38 on: -0), NaN at -inf as in
    PyTorch. That exp had stopped at exp(88): v / 1.65e38, -0.006 for
    v = -1e36, -inf for -inf."""
    v = np.concatenate([np.linspace(-87, -110, 47),
                        [-1e4, -1e30, -1e36, -3.4e38, -np.inf]]).astype(F32)
    C = v.size
    x = np.tile(np.array([-1.0, 1.0], F32), (1, C, 1))
    y = gn(x, C, np.zeros(C, F32), v, eps=0.0, activation="silu")[0, :, 0]
    v64 = v.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        want = v64 / (1.0 + np.exp(-v64))
    assert np.isnan(want[-1]) and np.isnan(y[-1])
    err = np.abs(y[:-1].astype(np.float64) - want[:-1])
    assert err.max() <= 1e-36, (v[err.argmax()], y[err.argmax()])
    assert np.signbit(y[:-1]).all()


@pytest.mark.compiled_only
def test_gelu_float64_within_ulps_of_40_digits(backend):
    """float64 GELU (its own erfc, not 1 + erf) within 8 units in the last
    place of 0.5 v erfc(-v / sqrt(2)) at 40 digits, outputs the activation
    alone as in the SiLU test; v from -36 (smaller outputs go subnormal)
    to 40, with the ends of the erfc's range and the signs of zero."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    v = np.concatenate([np.linspace(-36, 40, 1501), np.linspace(-1, 1, 201),
                        [1e-300, -1e-300, 1e-10, -1e-10, 59.9, 60.1]])
    C = v.size
    x = np.tile(np.array([-1.0, 1.0]), (1, C, 1))
    y = gn(x, C, np.zeros(C), v, eps=0.0, activation="gelu")[0, :, 0]
    want = np.array([float(mp.mpf(a) / 2 * mp.erfc(-mp.mpf(a) / mp.sqrt(2)))
                     for a in v])
    ulps = np.abs(y - want) / np.spacing(np.abs(want))
    assert ulps.max() <= 8, (v[ulps.argmax()], y[ulps.argmax()],
                             want[ulps.argmax()])
    ends = np.array([0.0, -0.0, -40.0, -1e300, np.inf, np.nan])
    y = gn(np.tile(np.array([-1.0, 1.0]), (1, 6, 1)), 6, np.zeros(6), ends,
           eps=0.0, activation="gelu")[0, :, 0]
    np.testing.assert_array_equal(y, [0.0, -0.0, -0.0, -0.0, np.inf, np.nan])
    assert list(np.signbit(y[:4])) == [False, True, True, True]


# ------------------------------------------------------------ show_config

@pytest.mark.compiled_only
@pytest.mark.parametrize("cap,want", [
    ("x86-64-v3", ("x86-64-v3 (AVX2)", "x86-64 (SSE2)")),
    ("x86-64", ("x86-64 (SSE2)",)),
    ("bogus", None),
])
def test_max_simd_caps_the_level(tmp_path, backend, cap, want):
    """FASTGN_MAX_SIMD caps the vector-run kernels' level (dispatched x86-64
    builds; others report their build target); a bad value is named."""
    code = "import fastgn; print(fastgn.show_config(mode='dicts')['simd'])"
    res = subprocess.run([sys.executable, "-W", "always", "-c", code],
                         env=dict(os.environ, FASTGN_MAX_SIMD=cap),
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = res.stdout.strip()
    if want is None:
        assert "FASTGN_MAX_SIMD must be one of" in res.stderr
        assert got == "none"            # the NumPy fallback took over
    else:
        assert got in want or got.startswith("build target"), got



def test_show_config(backend, capsys):
    info = fastgn.show_config(mode="dicts")
    assert isinstance(info, dict)
    for key in ("version", "backend", "openmp_version", "max_threads",
                "compile_args"):
        assert key in info
    assert info["version"] == fastgn.__version__
    assert isinstance(info["openmp_version"], int)
    assert isinstance(info["max_threads"], int) and info["max_threads"] >= 1
    assert isinstance(info["compile_args"], list)
    assert all(isinstance(a, str) for a in info["compile_args"])
    assert isinstance(info["simd"], str) and info["simd"]
    if backend == "python":
        assert info["backend"] == "python"
        assert info["max_threads"] == 1
        assert info["simd"] == "none"
    else:
        assert info["simd"] != "none"
        assert info["backend"] in ("openmp", "serial")
        assert (info["openmp_version"] > 0) == (info["backend"] == "openmp")
        if info["backend"] == "serial":
            assert info["max_threads"] == 1
    capsys.readouterr()
    assert fastgn.show_config() is None
    printed = capsys.readouterr().out
    assert fastgn.__version__ in printed
    assert info["backend"] in printed
    for key in ("version", "backend", "max_threads", "simd"):
        assert key in printed
