"""Tests of ``fastgn.group_norm_backward``.

Checked against an independent float64 formula, against ``torch.autograd``
(when torch is installed), and against finite differences. Every test is
backend-agnostic: the conftest (if present) runs each on every backend.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgn

# (NCHW shape, num_groups) for ranks 2..5
SHAPES = {
    2: ((5, 12), 3),
    3: ((3, 6, 7), 2),
    4: ((2, 8, 5, 3), 4),
    5: ((2, 6, 3, 2, 3), 3),
}


def to_layout(a, channels_last):
    """An NCHW-ordered array in the requested layout (contiguous)."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if channels_last \
        else a


def from_layout(a, channels_last):
    return np.moveaxis(a, -1, 1) if channels_last else a


def ref_stats(x, G, eps):
    """float64 mean and rstd, shape (N, G), of an NCHW array."""
    xs = np.asarray(x, np.float64).reshape(x.shape[0], G, -1)
    mean = xs.mean(axis=-1)
    var = ((xs - mean[..., None]) ** 2).mean(axis=-1)
    return mean, 1.0 / np.sqrt(var + eps)


def ref_backward(dy, x, G, weight, eps):
    """Independent float64 gradients of group_norm for NCHW arrays.

    Returns (dx, dweight, dbias, mags) where ``mags`` holds the magnitudes
    of the terms summed into dx and dweight (the scales of rounding error).
    """
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    N, C = x.shape[:2]
    bshape = (1, C) + (1,) * (x.ndim - 2)
    mean, rstd = ref_stats(x, G, eps)
    xs = x.reshape(N, G, -1)
    xhat_s = (xs - mean[..., None]) * rstd[..., None]
    xhat = xhat_s.reshape(x.shape)
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    g = dy * w.reshape(bshape)
    gs = g.reshape(N, G, -1)
    m1 = gs.mean(axis=-1, keepdims=True)
    m2 = (gs * xhat_s).mean(axis=-1, keepdims=True)
    dx = rstd[..., None] * (gs - m1 - xhat_s * m2)
    dx_mag = rstd[..., None] * (np.abs(gs) + np.abs(m1) + np.abs(xhat_s * m2))
    axes = (0,) + tuple(range(2, x.ndim))
    dw = (dy * xhat).sum(axis=axes)
    db = dy.sum(axis=axes)
    mags = {"dx": dx_mag.reshape(x.shape),
            "dw": np.abs(dy * xhat).sum(axis=axes),
            "db": np.abs(dy).sum(axis=axes)}
    return dx.reshape(x.shape), dw, db, mags


def check_close(actual, expected, tol, mag=None):
    """|actual - expected| <= tol * (|expected| + mag) elementwise.

    ``mag`` (scalar or array): the size of the terms that cancelled into
    ``expected``; defaults to the largest |expected|.
    """
    expected = np.asarray(expected, np.float64)
    if mag is None:
        mag = np.abs(expected).max()
    err = np.abs(np.asarray(actual, np.float64) - expected)
    bound = tol * (np.abs(expected) + mag)
    bad = err > bound
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} elements off; worst error "
        f"{err.max():.3g}, bound there {bound.ravel()[err.argmax()]:.3g}")


def make_data(shape, dtype, rng, with_weight):
    """x (offset, scaled), dy, weight for an NCHW shape."""
    x = (rng.standard_normal(shape) * 1.7 + 0.4).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    w = None
    if with_weight:
        w = (rng.uniform(0.5, 1.5, C) * rng.choice([-1, 1], C)).astype(dtype)
    return x, dy, w


def layout_inputs(shape, G, dtype, seed, channels_last):
    """make_data's x, dy, w for an NCHW shape, x and dy in the layout
    (xl, dyl) and the forward's mean and rstd of xl."""
    x, dy, w = make_data(shape, dtype, np.random.default_rng(seed), True)
    xl, dyl = to_layout(x, channels_last), to_layout(dy, channels_last)
    _, mean, rstd = fastgn.group_norm(xl, G, w, return_stats=True,
                                      channels_last=channels_last)
    return x, dy, w, xl, dyl, mean, rstd


def assert_dx_at_every_offset(want, dyl, xl, mean, rstd, w, G,
                              channels_last, nts=(1,)):
    """The kernel's backward into a dx at every offset within a cache line,
    at each thread count of nts: nothing outside dx is written, and dx (and
    dw, db where want holds them) has want's bits."""
    kern = fastgn._api._kern
    N, C = xl.shape[0], xl.shape[-1 if channels_last else 1]
    HW = xl.size // (N * C)
    per_line = 64 // xl.itemsize
    buf = np.empty(xl.size + 2 * per_line, xl.dtype)
    start = (-buf.ctypes.data % 64) // xl.itemsize
    for nt in nts:
        for k in range(per_line):
            buf.fill(-7.0)
            dx = buf[start + k:start + k + xl.size].reshape(xl.shape)
            dw, db = np.empty(C, xl.dtype), np.empty(C, xl.dtype)
            kern.backward(dyl, xl, mean, rstd, w, N, C, HW, G, channels_last,
                          dx, dw, db, nt)
            assert (buf[:start + k] == -7.0).all()
            assert (buf[start + k + xl.size:] == -7.0).all()
            for got, exp in zip((dx, dw, db), want):
                assert got.tobytes() == exp.tobytes(), (nt, k)


# ------------------------------------------------------- vs the formula

@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("channels_last", [False, True],
                         ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5),
                                       (np.float64, 1e-10)],
                         ids=["f32", "f64"])
@pytest.mark.parametrize("with_weight", [True, False],
                         ids=["weight", "noweight"])
def test_matches_formula(rank, channels_last, dtype, tol, with_weight):
    shape, G = SHAPES[rank]
    rng = np.random.default_rng(rank * 10 + channels_last)
    eps = 1e-5
    x, dy, w = make_data(shape, dtype, rng, with_weight)
    xl, dyl = to_layout(x, channels_last), to_layout(dy, channels_last)

    _, mean, rstd = fastgn.group_norm(xl, G, w, None, eps, return_stats=True,
                                      channels_last=channels_last)
    ref_mean, ref_rstd = ref_stats(x, G, eps)
    check_close(mean, ref_mean, tol, mag=1.0)
    check_close(rstd, ref_rstd, tol)

    dx, dw, db = fastgn.group_norm_backward(dyl, xl, mean, rstd, G, w,
                                            channels_last=channels_last)
    for a in (dx, dw, db):
        assert a.dtype == dtype
    assert dx.shape == xl.shape
    assert dw.shape == db.shape == (shape[1],)

    rdx, rdw, rdb, mags = ref_backward(dy, x, G, w, eps)
    check_close(from_layout(dx, channels_last), rdx, tol, mag=mags["dx"])
    check_close(dw, rdw, tol, mag=mags["dw"])
    check_close(db, rdb, tol, mag=mags["db"])


@pytest.mark.parametrize("Cg", [8, 12, 16, 17, 20, 24, 31, 32, 33, 48, 63, 64, 100, 128])
@pytest.mark.parametrize("G", [1, 5, 9, 32])
@pytest.mark.parametrize("N", [1, 40])
def test_rank2_groups_of_one_to_four_vectors(Cg, G, N):
    """Rank-2 float32 groups of 8-128 values (the compiled backend's own
    backward for them: float32 lanes, a tail as the group's last vector,
    groups in blocks of a vector's float64 lanes, groups shorter than an
    AVX-512 vector by the AVX2 copy; N=40: parameter-gradient rows
    accumulated over blocks of samples) against the formula."""
    rng = np.random.default_rng(Cg * 100 + G + N)
    x, dy, w = make_data((N, Cg * G), np.float32, rng, True)
    _, mean, rstd = fastgn.group_norm(x, G, w, return_stats=True)
    dx, dw, db = fastgn.group_norm_backward(dy, x, mean, rstd, G, w)
    rdx, rdw, rdb, mags = ref_backward(dy, x, G, w, 1e-5)
    # (dw of a value next to its group's mean carries the mean's float32
    # rounding: measured against the largest term, not its own)
    check_close(dx, rdx, 1e-5, mag=mags["dx"])
    check_close(dw, rdw, 1e-5, mag=mags["dw"].max())
    check_close(db, rdb, 1e-6, mag=mags["db"])


def backward_nonfinite_as_float64(dy, x, mean, rstd, G, w):
    """The backward's gradients, after checking that their infinities and
    NaNs are those of the same call on float64 copies."""
    got = fastgn.group_norm_backward(dy, x, mean, rstd, G, w)
    ref = fastgn.group_norm_backward(*(a.astype(np.float64) for a in (
        dy, x, mean, rstd)), G, w.astype(np.float64))
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b))
    return got


@pytest.mark.parametrize("Cg", [12, 20, 33])
def test_rank2_infinite_input_counted_once(Cg):
    """An infinite x at any position of a rank-2 group (with finite stats
    passed in) gives the infinities and NaNs of the float64 gradients: a
    group's tail, the last vector overlapping values already summed, adds
    nothing for those values."""
    rng = np.random.default_rng(Cg)
    G = 3
    x, dy, w = make_data((2, Cg * G), np.float32, rng, True)
    _, mean, rstd = fastgn.group_norm(x, G, w, return_stats=True)
    for c in range(Cg):
        xi = x.copy()
        xi[1, c] = np.inf
        backward_nonfinite_as_float64(dy, xi, mean, rstd, G, w)


@pytest.mark.parametrize("shape,G", [
    ((3, 8, 3, 3), 2),          # runs of 9: under an AVX-512 vector
    ((3, 64, 2, 2), 8),         # runs of 4, several to a vector
    ((2, 6, 3, 3), 6),          # slabs of one run under a vector
    ((3, 16, 4, 4), 4),         # one vector (AVX-512), two (AVX2)
    ((3, 8, 5, 5), 2),          # a vector and a masked last one
    ((3, 8, 7, 7), 2),
], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonfinite_x_stays_in_its_slab(shape, G, dtype):
    """An infinite or NaN x (with the clean stats passed in), at a slab's
    first, a middle and its last value, gives the gradients' infinities and
    NaNs of float64 data, and every other slab's dx and every other
    channel's dweight, dbias keep the bits of the clean input: runs summed
    by vectors that reach into the next runs add nothing from them."""
    rng = np.random.default_rng(sum(shape) + G)
    x, dy, w = make_data(shape, dtype, rng, True)
    _, mean, rstd = fastgn.group_norm(x, G, w, return_stats=True)
    clean = fastgn.group_norm_backward(dy, x, mean, rstd, G, w)
    N, C = shape[:2]
    Cg = C // G
    L = Cg * int(np.prod(shape[2:]))
    for n, g, pos, val in [(1, 1, 0, np.inf), (1, 1, L // 2, np.nan),
                           (1, 1, L - 1, -np.inf), (0, G - 1, 0, np.nan),
                           (N - 1, 0, L - 1, np.inf)]:
        xi = x.copy()
        xi.reshape(N, G, L)[n, g, pos] = val
        got = backward_nonfinite_as_float64(dy, xi, mean, rstd, G, w)
        slab = np.zeros((N, G), bool)
        slab[n, g] = True
        keep = ~np.repeat(slab, Cg, axis=1)
        assert got[0][keep].tobytes() == clean[0][keep].tobytes()
        c = np.isfinite(xi[n].reshape(C, -1)).all(axis=1)
        assert got[1][c].tobytes() == clean[1][c].tobytes()
        assert got[2][c].tobytes() == clean[2][c].tobytes()
        # (the poisoned channel's sums are taken again in float64)
        np.testing.assert_allclose(got[2], clean[2], rtol=1e-6)


def test_weight_none_equals_ones():
    rng = np.random.default_rng(1)
    x, dy, _ = make_data((2, 6, 4, 4), np.float64, rng, False)
    _, mean, rstd = fastgn.group_norm(x, 3, return_stats=True)
    a = fastgn.group_norm_backward(dy, x, mean, rstd, 3)
    b = fastgn.group_norm_backward(dy, x, mean, rstd, 3, np.ones(6))
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-14, atol=1e-14)


def test_weight_scales_grad_input_only():
    """dx is linear in the weight; dweight and dbias do not depend on it."""
    rng = np.random.default_rng(2)
    x, dy, w = make_data((3, 8, 5), np.float64, rng, True)
    _, mean, rstd = fastgn.group_norm(x, 4, return_stats=True)
    dx1, dw1, db1 = fastgn.group_norm_backward(dy, x, mean, rstd, 4, w)
    dx2, dw2, db2 = fastgn.group_norm_backward(dy, x, mean, rstd, 4, 3 * w)
    np.testing.assert_allclose(dx2, 3 * dx1, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dw2, dw1, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(db2, db1, rtol=1e-13, atol=1e-13)


def test_grad_input_sums_to_zero_per_slab():
    """A shift of a whole slab does not change the output: sum(dx) == 0."""
    rng = np.random.default_rng(3)
    x, dy, w = make_data((2, 8, 6, 6), np.float64, rng, True)
    _, mean, rstd = fastgn.group_norm(x, 2, w, return_stats=True)
    dx, _, _ = fastgn.group_norm_backward(dy, x, mean, rstd, 2, w)
    sums = dx.reshape(2, 2, -1).sum(axis=-1)
    assert np.abs(sums).max() < 1e-11


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(N=st.integers(1, 3), G=st.integers(1, 4), Cg=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 4), min_size=0, max_size=3),
       channels_last=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_random_shapes_match_formula(N, G, Cg, spatial, channels_last, seed):
    shape = (N, G * Cg, *spatial)
    rng = np.random.default_rng(seed)
    x, dy, w = make_data(shape, np.float64, rng, True)
    xl, dyl = to_layout(x, channels_last), to_layout(dy, channels_last)
    _, mean, rstd = fastgn.group_norm(xl, G, w, return_stats=True,
                                      channels_last=channels_last)
    dx, dw, db = fastgn.group_norm_backward(dyl, xl, mean, rstd, G, w,
                                            channels_last=channels_last)
    rdx, rdw, rdb, mags = ref_backward(dy, x, G, w, 1e-5)
    # (one-element slabs: rstd ~316 and dx is an exact cancellation to 0)
    check_close(from_layout(dx, channels_last), rdx, 1e-10, mag=mags["dx"])
    check_close(dw, rdw, 1e-10, mag=mags["dw"])
    check_close(db, rdb, 1e-12, mag=mags["db"])


# ------------------------------------------------------- vs torch.autograd

def torch_grads(x, dy, G, w, b, eps, channels_last):
    """Gradients by torch.autograd; x and dy in the requested layout."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    xt = torch.from_numpy(np.array(x)).requires_grad_()
    wt = None if w is None else torch.from_numpy(np.array(w)).requires_grad_()
    bt = None if b is None else torch.from_numpy(np.array(b)).requires_grad_()
    inp = xt
    if channels_last:   # NHWC data viewed as NCHW
        inp = xt.permute(0, xt.ndim - 1, *range(1, xt.ndim - 1))
    out = F.group_norm(inp, G, wt, bt, eps)
    if channels_last:
        out = out.permute(0, *range(2, out.ndim), 1)
    out.backward(torch.from_numpy(np.array(dy)))
    return (out.detach().numpy(), xt.grad.numpy(),
            None if wt is None else wt.grad.numpy(),
            None if bt is None else bt.grad.numpy())


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("channels_last", [False, True],
                         ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-4),
                                       (np.float64, 1e-10)],
                         ids=["f32", "f64"])
@pytest.mark.parametrize("with_weight", [True, False],
                         ids=["weight", "noweight"])
def test_matches_torch_autograd(rank, channels_last, dtype, tol,
                                with_weight):
    pytest.importorskip("torch")
    shape, G = SHAPES[rank]
    rng = np.random.default_rng(100 + rank)
    eps = 1e-5
    x, dy, w = make_data(shape, dtype, rng, with_weight)
    b = None if w is None else rng.standard_normal(shape[1]).astype(dtype)
    xl, dyl = to_layout(x, channels_last), to_layout(dy, channels_last)

    y, mean, rstd = fastgn.group_norm(xl, G, w, b, eps, return_stats=True,
                                      channels_last=channels_last)
    dx, dw, db = fastgn.group_norm_backward(dyl, xl, mean, rstd, G, w,
                                            channels_last=channels_last)
    ty, tdx, tdw, tdb = torch_grads(xl, dyl, G, w, b, eps, channels_last)

    np.testing.assert_allclose(y, ty, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, tdx, rtol=tol,
                               atol=tol * np.abs(tdx).max())
    if w is not None:
        np.testing.assert_allclose(dw, tdw, rtol=tol,
                                   atol=tol * np.abs(tdw).max())
        np.testing.assert_allclose(db, tdb, rtol=tol,
                                   atol=tol * np.abs(tdb).max())


# ------------------------------------------------------- finite differences

@pytest.mark.parametrize("channels_last", [False, True],
                         ids=["nchw", "nhwc"])
def test_finite_differences(numeric_grad, channels_last):
    rng = np.random.default_rng(7)
    shape, G, eps = (2, 4, 3), 2, 1e-3
    x = to_layout(rng.standard_normal(shape), channels_last)
    w = rng.standard_normal(4)
    b = rng.standard_normal(4)
    R = rng.standard_normal(x.shape)     # L = sum(R * group_norm(x))

    def loss():
        return float((R * fastgn.group_norm(
            x, G, w, b, eps, channels_last=channels_last)).sum())

    _, mean, rstd = fastgn.group_norm(x, G, w, b, eps, return_stats=True,
                                      channels_last=channels_last)
    dx, dw, db = fastgn.group_norm_backward(R, x, mean, rstd, G, w,
                                            channels_last=channels_last)
    h = 1e-5
    num_dx = numeric_grad(loss, x, h)
    num_dw = numeric_grad(loss, w, h)
    num_db = numeric_grad(loss, b, h)
    np.testing.assert_allclose(dx, num_dx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, num_dw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, num_db, rtol=1e-6, atol=1e-7)
    assert np.abs(dx).max() > 0.1     # the check is not vacuous


# ------------------------------------------------------- threads, dtypes

@pytest.mark.parametrize("channels_last", [False, True],
                         ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_bitwise_identical(channels_last, dtype):
    rng = np.random.default_rng(11)
    x, dy, w = make_data((5, 24, 9, 7), dtype, rng, True)
    xl, dyl = to_layout(x, channels_last), to_layout(dy, channels_last)
    _, mean, rstd = fastgn.group_norm(xl, 6, w, return_stats=True,
                                      channels_last=channels_last,
                                      num_threads=1)
    results = [fastgn.group_norm_backward(dyl, xl, mean, rstd, 6, w,
                                          channels_last=channels_last,
                                          num_threads=nt)
               for nt in (1, 2, 3)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.dtype == b.dtype
            assert a.tobytes() == b.tobytes()


@pytest.mark.compiled_only
@pytest.mark.parametrize("shape,G,channels_last", [
    ((1, 16, 64, 80), 4, True),     # NHWC: one sample, phases split
    ((3, 16, 64, 80), 4, True),     # a sample per thread, or split (N % nt)
    ((12, 4096), 2, True),          # HW == 1, Cg 2048: sums in 2 pieces
    ((5, 2050), 2, False),          # HW == 1, Cg 1025: a piece of one
    ((40, 3073), 1, False),         # HW == 1, G = 1, row blocks of 2
    ((1, 16, 64, 64), 1, False),    # NCHW: one slab, by channel ranges
    ((3, 4, 128, 128), 1, False),   # 3 slabs on 2 threads: split
    ((1, 5, 128, 128), 1, False),   # uneven channel ranges
    ((1, 6, 128, 128), 3, False),
], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_backward_paths_bitwise_identical(shape, G, channels_last,
                                                dtype):
    """Backward paths whose work is shared among the threads phase by
    phase (channels-last samples of several chunks; NCHW slabs by channel
    ranges, even or not) or goes a unit per thread: the same bits for every
    thread count, matching the formula."""
    rng = np.random.default_rng(13)
    x, dy, w = make_data(shape, dtype, rng, True)
    xl, dyl = to_layout(x, channels_last), to_layout(dy, channels_last)
    _, mean, rstd = fastgn.group_norm(xl, G, w, return_stats=True,
                                      channels_last=channels_last)
    results = [fastgn.group_norm_backward(dyl, xl, mean, rstd, G, w,
                                          channels_last=channels_last,
                                          num_threads=nt)
               for nt in (1, 2, 3, 4)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()
    rdx, rdw, rdb, mags = ref_backward(dy, x, G, w, 1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    dx, dw, db = results[0]
    check_close(from_layout(dx, channels_last), rdx, tol, mag=mags["dx"])
    check_close(dw, rdw, tol, mag=mags["dw"])
    check_close(db, rdb, tol, mag=mags["db"])


@pytest.mark.compiled_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_blocks_same_bits_split_or_not(dtype):
    """NCHW parameter-gradient sums go in rows per block of samples: slab
    by slab (a block and a range of groups per unit), or, slabs shared by
    channel ranges (33 slabs of 2 channels, 64K values, on 16 threads), per
    sample and folded into the blocks' rows after. The same bits either
    way (a sample left out of the fold fails this)."""
    rng = np.random.default_rng(17)
    x, dy, w = make_data((33, 2, 256, 128), dtype, rng, True)
    _, mean, rstd = fastgn.group_norm(x, 1, w, return_stats=True)
    results = [fastgn.group_norm_backward(dy, x, mean, rstd, 1, w,
                                          num_threads=nt)
               for nt in (1, 16, 5)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()
    rdx, rdw, rdb, mags = ref_backward(dy, x, 1, w, 1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    check_close(results[0][1], rdw, tol, mag=mags["dw"])
    check_close(results[0][2], rdb, tol, mag=mags["db"])


@pytest.mark.parametrize("shape,G", [
    ((40, 64, 50), 64),         # InstanceNorm of sequences: 16 slabs a step
    ((9, 40, 16), 40),          # one channel of one float32 vector (AVX-512)
    ((7, 24, 7, 7), 24),        # one channel of 49 values: a masked tail
    ((5, 12, 17), 12),          # one value past a vector
    ((5, 16, 256), 16),         # one channel at the batched limit (2 KiB)
    ((5, 16, 257), 16),         # ... and past it
    ((11, 24, 3, 3), 24),       # one channel under a vector (value by value)
    ((6, 10, 2), 10),           # ... of two values
    ((24, 96, 3, 3), 32),       # slabs of 27 values, runs under 32
    ((20, 30, 5, 5), 10),       # 75 values, groups of 3 channels
    ((18, 8, 9, 11), 2),        # 396 values: 2 slabs a step
], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt", [1, 2])
def test_small_slabs_batch_alone_same_bits(shape, G, dtype, nt):
    """Small NCHW slabs go several at a time through each step of the
    backward (sums, coefficients, row sums, dx): each sample's dx has the
    bits it has alone, and all match the formula."""
    rng = np.random.default_rng(23)
    x, dy, w = make_data(shape, dtype, rng, True)
    _, mean, rstd = fastgn.group_norm(x, G, w, return_stats=True)
    dx, dw, db = fastgn.group_norm_backward(dy, x, mean, rstd, G, w,
                                            num_threads=nt)
    for n in (0, 1, shape[0] // 2, shape[0] - 1):
        alone = fastgn.group_norm_backward(dy[n:n + 1], x[n:n + 1],
                                           mean[n:n + 1], rstd[n:n + 1], G,
                                           w, num_threads=nt)[0]
        assert alone.tobytes() == dx[n:n + 1].tobytes()
    rdx, rdw, rdb, mags = ref_backward(dy, x, G, w, 1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    check_close(dx, rdx, tol, mag=mags["dx"])
    check_close(dw, rdw, tol, mag=mags["dw"])
    check_close(db, rdb, tol, mag=mags["db"])


def assert_samples_match(shape, G, dtype, seed, every_offset=False):
    """Channels-last backward of make_data's arrays (seed) for an NCHW
    shape: each sample's dx has the bits it has alone, the call's results
    those at two threads (and, every_offset, with dx at every offset in a
    line), and all match the formula."""
    x, dy, w, xl, dyl, mean, rstd = layout_inputs(shape, G, dtype, seed, True)
    dx, dw, db = fastgn.group_norm_backward(dyl, xl, mean, rstd, G, w,
                                            channels_last=True)
    for n in range(shape[0]):
        alone = fastgn.group_norm_backward(dyl[n:n + 1], xl[n:n + 1],
                                           mean[n:n + 1], rstd[n:n + 1], G,
                                           w, channels_last=True)[0]
        assert alone.tobytes() == dx[n:n + 1].tobytes()
    two = fastgn.group_norm_backward(dyl, xl, mean, rstd, G, w,
                                     channels_last=True, num_threads=2)
    for a, b in zip(two, (dx, dw, db)):
        assert a.tobytes() == b.tobytes()
    if every_offset:
        assert_dx_at_every_offset((dx, dw, db), dyl, xl, mean, rstd, w, G,
                                  True)
    rdx, rdw, rdb, mags = ref_backward(dy, x, G, w, 1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    check_close(from_layout(dx, True), rdx, tol, mag=mags["dx"])
    check_close(dw, rdw, tol, mag=mags["dw"])
    check_close(db, rdb, tol, mag=mags["db"])


@pytest.mark.parametrize("C,G,spatial", [
    (3, 1, (224, 5)), (3, 3, (7, 9)), (5, 5, (33,)), (6, 2, (4, 4)),
    (20, 4, (3, 17)), (40, 8, (31,)), (100, 10, (6, 6)),
], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_few_channels(C, G, spatial, dtype):
    """Channels-last rows of fewer channels than a vector, or not a
    multiple of one, taken as wider rows: each sample's dx has the bits it
    has alone and at two threads, and all match the formula."""
    assert_samples_match((4, C, *spatial), G, dtype, 29)


@pytest.mark.parametrize("C,G,spatial", [
    (256, 32, (2, 2)), (128, 32, (3, 3)), (512, 32, (2, 2)), (64, 8, (1,)),
    (96, 24, (2, 3)), (256, 16, (3, 3)), (48, 3, (2, 2)), (64, 4, (3, 3)),
], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_few_positions(C, G, spatial, dtype, backend):
    """Channels-last samples of a few positions (one call a sample: the
    per-group work of fg_bwd_rows_one dominates), groups of 4-16
    channels: they match the formula, and each sample's dx has the bits
    it has alone, at two threads and written at every offset in a line."""
    assert_samples_match((5, C, *spatial), G, dtype, 31,
                         every_offset=backend == "cython")


@pytest.mark.compiled_only
@pytest.mark.parametrize("shape,G,channels_last", [
    ((3, 8, 40, 41), 2, False),     # a slab per thread, odd run lengths
    ((6, 20, 8, 6), 20, False),     # slabs of one channel, several a step
    ((6, 20, 2, 2), 20, False),     # ... under a vector
    ((1, 16, 64, 64), 1, False),    # one slab split by channel ranges
    ((3, 40, 9, 7), 5, True),       # NHWC, rows of 40 channels
    ((1, 64, 48, 48), 4, True),     # NHWC, one sample split in phases
    ((2, 3, 40, 41), 3, True),      # NHWC rows of 3 channels, widened
], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt", [1, 2])
def test_streaming_dx_same_bits(shape, G, channels_last, dtype, nt):
    """dx larger than the cache is written with streaming stores: forced on
    small arrays here (outputs at every offset within 16 bytes, through the
    kernel), they give the bits of the plain stores."""
    x, dy, w, xl, dyl, mean, rstd = layout_inputs(shape, G, dtype, 17,
                                                  channels_last)
    kern = fastgn._api._kern
    N, C = shape[0], shape[1]
    HW = int(np.prod(shape[2:]))
    old = kern.stream_bytes(1 << 62)
    try:
        plain = fastgn.group_norm_backward(dyl, xl, mean, rstd, G, w,
                                           channels_last=channels_last,
                                           num_threads=nt)
        kern.stream_bytes(0)
        streamed = fastgn.group_norm_backward(dyl, xl, mean, rstd, G, w,
                                              channels_last=channels_last,
                                              num_threads=nt)
        for a, b in zip(plain, streamed):
            assert a.tobytes() == b.tobytes()
        for k in range(1, 16 // x.itemsize):
            buf = np.full(x.size + k + 1, -7.0, dtype)
            dx = buf[k:k + x.size].reshape(xl.shape)
            dw, db = np.empty(C, dtype), np.empty(C, dtype)
            kern.backward(dyl, xl, mean, rstd, w, N, C, HW, G, channels_last,
                          dx, dw, db, nt)
            assert buf[:k].tolist() == [-7.0] * k and buf[-1] == -7.0
            assert dx.tobytes() == plain[0].tobytes()
    finally:
        kern.stream_bytes(old)
    rdx = ref_backward(dy, x, G, w, 1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    check_close(from_layout(streamed[0], channels_last), rdx[0], tol,
                mag=rdx[3]["dx"])


@pytest.mark.compiled_only
@pytest.mark.parametrize("shape,G,channels_last", [
    ((3, 48, 5, 7), 3, True),       # NHWC rows of 3 (float64: 6) lines
    ((2, 16, 9, 11), 4, True),      # rows of one line (float32)
    ((2, 4, 60, 70), 2, False),     # NCHW channel runs of 4200 values
    ((3, 10, 50), 10, False),       # slabs of one channel, several a step
    ((3, 24, 3, 3), 3, False),      # runs under a vector: 8 channels of 9
    ((2, 48, 2, 2), 3, False),      # 16 channels of 4
    ((3, 12, 1, 5), 3, False),      # a slab of 20 values
    ((2, 9, 2, 3), 3, False),       # 3 channels of 6
], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dx_at_every_offset(shape, G, channels_last, dtype):
    """dx is written from its first cache-line boundary on (NCHW runs
    peeled, channels-last vectors rotated, runs shorter than a vector by
    whole vectors of the slab): a dx at every offset within a line gets the
    same bits."""
    x, dy, w, xl, dyl, mean, rstd = layout_inputs(shape, G, dtype, 19,
                                                  channels_last)
    want = fastgn.group_norm_backward(dyl, xl, mean, rstd, G, w,
                                      channels_last=channels_last)[0]
    rdx = ref_backward(dy, x, G, w, 1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    check_close(from_layout(want, channels_last), rdx[0], tol,
                mag=rdx[3]["dx"])
    assert_dx_at_every_offset((want,), dyl, xl, mean, rstd, w, G,
                              channels_last)


@pytest.mark.compiled_only
@pytest.mark.parametrize("shape,G", [
    ((3, 256, 4, 5), 32),           # rows wider than 8 vectors, a row a step
    ((2, 320, 3, 3), 32),
    ((4, 64, 3, 5), 8),             # rows of a few vectors, in columns
    ((3, 40, 5, 4), 4),             # rows of 40 taken as rows of 80
], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_requests_same_bits(shape, G, dtype):
    """The channels-last backward of samples that fit L2 requests the next
    sample's dy and x during dx: a dx at every offset in a line gets the
    bits of the backward without requests (back_bytes(0))."""
    x, dy, w, xl, dyl, mean, rstd = layout_inputs(shape, G, dtype, 23, True)
    kern = fastgn._api._kern
    old = kern.back_bytes(0)
    try:
        want = fastgn.group_norm_backward(dyl, xl, mean, rstd, G, w,
                                          channels_last=True)
    finally:
        kern.back_bytes(old)
    rdx = ref_backward(dy, x, G, w, 1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    check_close(from_layout(want[0], True), rdx[0], tol, mag=rdx[3]["dx"])
    assert_dx_at_every_offset(want, dyl, xl, mean, rstd, w, G, True,
                              nts=(1, 2))


@pytest.mark.compiled_only
@pytest.mark.parametrize("shape,G", [
    ((2, 4, 60, 70), 2),            # channel runs of 4200 values
    ((3, 8, 9, 11), 2),             # runs of 99
    ((2, 6, 8, 10), 3),             # runs of 80: five float32 vectors
    ((2, 4, 7, 10), 2),             # runs of 70
    ((2, 4, 5, 7), 2),              # runs of 35
], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inputs_at_every_offset(shape, G, dtype):
    """The sums read dy and x by aligned lines where either starts off one
    (joining two lines a vector): dy and x at every offset, the same or
    not, give the bits of aligned ones."""
    rng = np.random.default_rng(23)
    x, dy, w = make_data(shape, dtype, rng, True)
    _, mean, rstd = fastgn.group_norm(x, G, w, return_stats=True)
    kern = fastgn._api._kern
    N, C, HW = shape[0], shape[1], int(np.prod(shape[2:]))
    per_line = 64 // x.itemsize

    def at(a, k):
        buf = np.full(a.size + 2 * per_line, np.nan, dtype)
        start = (-buf.ctypes.data % 64) // a.itemsize
        out = buf[start + k:start + k + a.size].reshape(a.shape)
        out[...] = a
        return out

    def run(dyk, xk):
        dx = np.empty_like(x)
        dw, db = np.empty(C, dtype), np.empty(C, dtype)
        kern.backward(dyk, xk, mean, rstd, w, N, C, HW, G, False, dx, dw,
                      db, 1)
        return dx.tobytes() + dw.tobytes() + db.tobytes()

    want = run(at(dy, 0), at(x, 0))
    for k in range(1, per_line):
        assert run(at(dy, k), at(x, k)) == want, k
        assert run(at(dy, k), at(x, (k + 3) % per_line)) == want, k
    rdx = ref_backward(dy, x, G, w, 1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    got = fastgn.group_norm_backward(at(dy, 4), at(x, 4), mean, rstd, G, w)
    check_close(got[0], rdx[0], tol, mag=rdx[3]["dx"])


@pytest.mark.parametrize("channels_last", [False, True],
                         ids=["nchw", "nhwc"])
def test_float16(channels_last):
    rng = np.random.default_rng(12)
    x, dy, w = make_data((2, 8, 4, 5), np.float16, rng, True)
    xl, dyl = to_layout(x, channels_last), to_layout(dy, channels_last)
    y, mean, rstd = fastgn.group_norm(xl, 4, w, return_stats=True,
                                      channels_last=channels_last)
    assert y.dtype == np.float16
    dx, dw, db = fastgn.group_norm_backward(dyl, xl, mean, rstd, 4, w,
                                            channels_last=channels_last)
    for a in (dx, dw, db):
        assert a.dtype == np.float16
    # float16 data is exact in float64: compare with the formula
    rdx, rdw, rdb, mags = ref_backward(dy, x, 4, w, 1e-5)
    check_close(from_layout(dx, channels_last), rdx, 2e-3, mag=mags["dx"])
    check_close(dw, rdw, 2e-3, mag=mags["dw"])
    check_close(db, rdb, 2e-3, mag=mags["db"])


def _float32_route(dy, x, mean, rstd, G, w, nt, channels_last=False):
    """float16 gradients as whole float32 arrays give them (the definition
    of the float16 backward's bits)."""
    g32 = fastgn.group_norm_backward(
        dy.astype(np.float32), x.astype(np.float32), mean, rstd, G,
        w.astype(np.float32), channels_last=channels_last, num_threads=nt)
    return [a.astype(np.float16) for a in g32]


@pytest.mark.parametrize("shape,G,channels_last", [
    ((8, 64, 12, 14), 32, False),   # a sample's slabs a unit
    ((2, 64, 64, 64), 32, False),   # 4 slabs a unit (GR 8), two samples
    ((40, 24, 5, 5), 6, False),     # row blocks of two samples
    ((3, 2, 256, 128), 1, False),   # slabs of 64K: split among threads
    ((1, 16, 600, 500), 2, False),  # slabs above the buffers' limit
    ((4, 10, 6, 7), 5, True),       # channels-last, a sample a unit
    ((3, 16, 64, 80), 4, True),     # 2 chunks a sample; split on 2 threads
    ((2, 8, 300, 200), 2, True),    # samples above the buffers' limit
    ((6, 48), 4, False),            # rank 2
    ((40, 3073), 1, False),         # rank 2, row blocks of 2, Cg > 1024
    ((256, 1024), 32, False),       # rank 2, row blocks of 16
    ((17, 20000), 2, False),        # rank 2, rows above the buffers' limit
], ids=str)
@pytest.mark.parametrize("nt", [1, 2, 3])
def test_float16_bits_of_float32_route(shape, G, channels_last, nt):
    """float16 NCHW slabs, rank-2 row blocks and channels-last samples go
    through float32 buffers a unit at a time (else whole arrays are
    converted): the bits of converting whole arrays, computing in float32
    and rounding back."""
    rng = np.random.default_rng(31)
    x, dy, w = make_data(shape, np.float16, rng, True)
    x, dy = to_layout(x, channels_last), to_layout(dy, channels_last)
    _, mean, rstd = fastgn.group_norm(x, G, w, return_stats=True,
                                      channels_last=channels_last)
    got = fastgn.group_norm_backward(dy, x, mean, rstd, G, w,
                                     channels_last=channels_last,
                                     num_threads=nt)
    want = _float32_route(dy, x, mean, rstd, G, w, nt, channels_last)
    for a, b in zip(got, want):
        assert a.dtype == np.float16
        assert a.tobytes() == b.tobytes()


@pytest.mark.compiled_only
@pytest.mark.parametrize("channels_last", [False, True],
                         ids=["nchw", "nhwc"])
def test_float16_backward_memory(traced_peak, channels_last):
    """The float16 backward converts a unit's slabs (a sample, when
    channels-last) at a time: beside the inputs, dx and at most three
    float32 copies of a sample a thread (whole float32 copies of dy, x and
    dx took 6x the input's bytes)."""
    rng = np.random.default_rng(32)
    x, dy, w = make_data((8, 64, 56, 56), np.float16, rng, True)
    x, dy = to_layout(x, channels_last), to_layout(dy, channels_last)
    _, mean, rstd = fastgn.group_norm(x, 32, w, return_stats=True,
                                      channels_last=channels_last)
    for nt in (1, 2):
        fastgn.group_norm_backward(dy, x, mean, rstd, 32, w,
                                   channels_last=channels_last,
                                   num_threads=nt)
        with traced_peak() as t:
            fastgn.group_norm_backward(dy, x, mean, rstd, 32, w,
                                       channels_last=channels_last,
                                       num_threads=nt)
        peak = t.peak
        # dx, and at most three float32 copies of a sample a thread
        limit = x.nbytes + nt * 3 * 4 * (x.size // x.shape[0])
        assert peak < 1.05 * limit + (1 << 16), (nt, peak / x.nbytes)


@pytest.mark.compiled_only
def test_channels_last_backward_temporaries(traced_peak):
    """Channels-last chunk sums are kept a sample a thread (all of them
    only when the threads share a sample's phases), the parameter
    gradients' sums a row block of samples: beside dx, well under the
    per-sample sums (2*C doubles a sample) that 128x256x2x2 had paid
    page faults for in every call (6x the time). With every chunk's sums
    as well, 256x256x3x3's temporaries had been the size of its input."""
    rng = np.random.default_rng(33)
    x, dy, w = make_data((64, 256, 3, 3), np.float32, rng, True)
    x, dy = to_layout(x, True), to_layout(dy, True)
    _, mean, rstd = fastgn.group_norm(x, 32, w, return_stats=True,
                                      channels_last=True)
    for nt in (1, 2):
        with traced_peak() as t:
            fastgn.group_norm_backward(dy, x, mean, rstd, 32, w,
                                       channels_last=True, num_threads=nt)
        peak = t.peak
        per_sample = 2 * 8 * x.shape[0] * x.shape[-1]
        limit = 1.05 * x.nbytes + 0.3 * per_sample + (1 << 16)
        assert peak < limit, (nt, peak / x.nbytes)


def test_mixed_precision_promotes():
    """float32 input with float64 grad_output gives float64 gradients."""
    rng = np.random.default_rng(13)
    x, dy, w = make_data((2, 4, 6), np.float32, rng, True)
    _, mean, rstd = fastgn.group_norm(x, 2, w, return_stats=True)
    dx, dw, db = fastgn.group_norm_backward(dy.astype(np.float64), x, mean,
                                            rstd, 2, w)
    assert dx.dtype == dw.dtype == db.dtype == np.float64


def test_noncontiguous_inputs():
    rng = np.random.default_rng(14)
    x, dy, w = make_data((2, 6, 5, 4), np.float64, rng, True)
    _, mean, rstd = fastgn.group_norm(x, 3, w, return_stats=True)
    expected = fastgn.group_norm_backward(dy, x, mean, rstd, 3, w)
    # Fortran-ordered and strided views of the same values
    xf = np.asfortranarray(x)
    big = np.zeros((2, 6, 5, 8))
    big[..., ::2] = dy
    dys = big[..., ::2]
    wf = np.repeat(w, 2)[::2]
    got = fastgn.group_norm_backward(dys, xf, mean.T.copy().T, rstd, 3, wf)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    # non-native byte order
    got = fastgn.group_norm_backward(dy.astype(">f8"), x.astype(">f8"),
                                     mean.astype(">f8"), rstd, 3,
                                     w.astype(">f8"))
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


def test_inputs_not_modified():
    rng = np.random.default_rng(15)
    x, dy, w = make_data((2, 6, 3, 3), np.float32, rng, True)
    _, mean, rstd = fastgn.group_norm(x, 3, w, return_stats=True)
    copies = [a.copy() for a in (dy, x, mean, rstd, w)]
    fastgn.group_norm_backward(dy, x, mean, rstd, 3, w)
    for a, c in zip((dy, x, mean, rstd, w), copies):
        assert np.array_equal(a, c)


def test_empty_batch():
    x = np.zeros((0, 4, 3), np.float32)
    mean = rstd = np.zeros((0, 2), np.float32)
    dx, dw, db = fastgn.group_norm_backward(x, x, mean, rstd, 2)
    assert dx.shape == (0, 4, 3)
    assert np.array_equal(dw, np.zeros(4)) and np.array_equal(db, np.zeros(4))


# ------------------------------------------------------- errors

@pytest.fixture
def small():
    rng = np.random.default_rng(16)
    x, dy, w = make_data((2, 6, 4), np.float64, rng, True)
    _, mean, rstd = fastgn.group_norm(x, 3, w, return_stats=True)
    return x, dy, w, mean, rstd


@pytest.mark.parametrize("bad_shape", [(2, 4), (3, 3), (2,), (2, 3, 1),
                                       (6,)])
@pytest.mark.parametrize("which", ["mean", "rstd"])
def test_stats_wrong_shape(small, which, bad_shape):
    x, dy, w, mean, rstd = small
    bad = np.ones(bad_shape)
    args = (bad, rstd) if which == "mean" else (mean, bad)
    with pytest.raises(ValueError, match=which):
        fastgn.group_norm_backward(dy, x, *args, 3, w)


@pytest.mark.parametrize("dy_shape", [(2, 6, 5), (2, 6), (1, 6, 4),
                                      (2, 4, 6)])
def test_grad_output_wrong_shape(small, dy_shape):
    x, _, w, mean, rstd = small
    with pytest.raises(ValueError, match="grad_output"):
        fastgn.group_norm_backward(np.ones(dy_shape), x, mean, rstd, 3, w)


def test_grad_output_layout_mismatch(small):
    """NCHW grad_output for a channels_last input of another shape."""
    x, dy, w, mean, rstd = small
    with pytest.raises(ValueError, match="grad_output"):
        fastgn.group_norm_backward(dy, np.moveaxis(x, 1, -1), mean, rstd, 3,
                                   w, channels_last=True)


def test_other_argument_errors(small):
    x, dy, w, mean, rstd = small
    with pytest.raises(ValueError, match="weight"):
        fastgn.group_norm_backward(dy, x, mean, rstd, 3, w[:4])
    with pytest.raises(ValueError, match="divisible"):
        fastgn.group_norm_backward(dy, x, mean, rstd, 4, w)
    with pytest.raises(TypeError, match="num_groups"):
        fastgn.group_norm_backward(dy, x, mean, rstd, 3.0, w)
    with pytest.raises(ValueError, match="num_threads"):
        fastgn.group_norm_backward(dy, x, mean, rstd, 3, w, num_threads=0)
    with pytest.raises(TypeError, match="grad_output"):
        fastgn.group_norm_backward(dy.astype(complex), x, mean, rstd, 3, w)
    with pytest.raises(ValueError, match="2 dimensions"):
        fastgn.group_norm_backward(dy[0, 0], x[0, 0], mean, rstd, 3, w)
