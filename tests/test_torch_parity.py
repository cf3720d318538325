"""Forward parity with PyTorch's group norm (CPU).

torch accumulates float32 statistics less carefully than fastgn, so the data
here have moderate offsets; the accuracy tests compare against a float64
oracle instead.
"""

import math

import numpy as np
import pytest

import fastgn

torch = pytest.importorskip("torch")
F = torch.nn.functional

gn = fastgn.group_norm

TOL = {np.float64: dict(rtol=1e-10, atol=1e-10),
       np.float32: dict(rtol=1e-5, atol=1e-5)}

CASES = [((4, 6), 3), ((3, 8, 10), 4), ((2, 16, 7, 9), 4),
         ((2, 12, 5, 4, 3), 6),
         ((1, 32, 16, 16), 32), ((3, 6, 11, 11), 1)]
CASE_IDS = [f"{len(s)}d-G{g}" for s, g in CASES]


def make(rng, shape, dtype, affine):
    x = (0.5 + 1.5 * rng.standard_normal(shape)).astype(dtype)
    C = shape[1]
    w = rng.uniform(-2, 2, C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    return x, w, b


def t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


@pytest.fixture(autouse=True)
def _torch_single_thread():
    # deterministic, and no oversubscription of the 2 cores with fastgn's
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("shape,G", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64],
                         ids=["f32", "f64"])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_matches_F_group_norm(rng, shape, G, dtype, affine):
    x, w, b = make(rng, shape, dtype, affine)
    want = F.group_norm(t(x), G, t(w), t(b), eps=1e-5).numpy()
    got = gn(x, G, w, b, eps=1e-5)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("shape,G", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64],
                         ids=["f32", "f64"])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_stats_match_native_group_norm(rng, shape, G, dtype, eps):
    x, w, b = make(rng, shape, dtype, True)
    N, C = shape[:2]
    HxW = math.prod(shape[2:])
    out, mean, rstd = torch.ops.aten.native_group_norm(
        t(x), t(w), t(b), N, C, HxW, G, eps)
    y, m, r = gn(x, G, w, b, eps=eps, return_stats=True)
    assert m.shape == tuple(mean.shape) == (N, G)
    assert m.dtype == mean.numpy().dtype and r.dtype == rstd.numpy().dtype
    np.testing.assert_allclose(y, out.numpy(), **TOL[dtype])
    np.testing.assert_allclose(m, mean.numpy(), **TOL[dtype])
    np.testing.assert_allclose(r, rstd.numpy(), **TOL[dtype])


@pytest.mark.parametrize("activation,fn", [
    ("relu", F.relu), ("silu", F.silu),
    ("gelu", lambda v: F.gelu(v, approximate="none"))],
    ids=["relu", "silu", "gelu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64],
                         ids=["f32", "f64"])
@pytest.mark.parametrize("shape,G", CASES[1:4], ids=CASE_IDS[1:4])
def test_fused_activation(rng, activation, fn, dtype, shape, G):
    x, w, b = make(rng, shape, dtype, True)
    want = fn(F.group_norm(t(x), G, t(w), t(b), eps=1e-5)).numpy()
    got = gn(x, G, w, b, activation=activation)
    np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("shape,G", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64],
                         ids=["f32", "f64"])
def test_channels_last_vs_torch_nchw(rng, shape, G, dtype):
    x, w, b = make(rng, shape, dtype, True)
    out, mean, rstd = torch.ops.aten.native_group_norm(
        t(x), t(w), t(b), shape[0], shape[1], math.prod(shape[2:]), G, 1e-5)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y, m, r = gn(xl, G, w, b, channels_last=True, return_stats=True)
    np.testing.assert_allclose(np.moveaxis(y, -1, 1), out.numpy(),
                               **TOL[dtype])
    np.testing.assert_allclose(m, mean.numpy(), **TOL[dtype])
    np.testing.assert_allclose(r, rstd.numpy(), **TOL[dtype])


def test_torch_channels_last_memory_format(rng):
    """A torch channels_last tensor's buffer is fastgn's NHWC layout."""
    x, w, b = make(rng, (2, 8, 6, 5), np.float32, True)
    xt = t(x).contiguous(memory_format=torch.channels_last)
    want = F.group_norm(xt, 4, t(w), t(b))
    nhwc = xt.permute(0, 2, 3, 1).numpy()       # a view of xt's memory
    assert nhwc.flags.c_contiguous
    got = gn(nhwc, 4, w, b, channels_last=True)
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(),
                               **TOL[np.float32])
