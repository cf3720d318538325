"""Adversarial property-based fuzzing against the float64 oracle.

Complements test_properties.py with what a pipeline feeds in practice:
float16, strided / negative-stride / big-endian views, out= and in place,
offsets up to 1e6, spreads down to 1e-4, groups of one value, constant groups,
NaN/Inf planted in one group, and the backward pass.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastgn

SETTINGS = settings(
    max_examples=80, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture])

F2, F4, F8 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


@st.composite
def cases(draw):
    rank = draw(st.integers(2, 5))
    G = draw(st.integers(1, 4))
    C = G * draw(st.integers(1, 3))           # C/G == 1: groups of size 1..
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=rank - 2,
                                  max_size=rank - 2)))
    if rank == 2 and C == G:
        spatial = ()                          # .. and groups of one value
    dtype = draw(st.sampled_from([F2, F4, F8]))
    offset = draw(st.sampled_from([0.0, 1e2, 1e4, 1e6] if dtype == F8
                                  else [0.0, 1e2] if dtype == F2
                                  else [0.0, 1e2, 1e4]))
    spread = draw(st.sampled_from([1e-4, 1.0, 30.0] if dtype == F8
                                  else [1.0, 30.0] if dtype == F2
                                  else [1e-2, 1.0, 30.0]))
    return dict(
        N=draw(st.integers(1, 3)), C=C, G=G, spatial=spatial, dtype=dtype,
        channels_last=draw(st.booleans()), offset=offset, spread=spread,
        eps=draw(st.sampled_from([1e-5, 1e-12, 10.0])),
        view=draw(st.sampled_from(["contiguous", "strided", "negative",
                                   "fortran", "big_endian"])),
        mode=draw(st.sampled_from(["new", "out", "in_place"])),
        planted=draw(st.sampled_from([None, "constant", "nan", "inf"])),
        activation=draw(st.sampled_from([None, "relu", "silu", "gelu"])),
        affine=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)))


def _make(c, rng):
    shape = ((c["N"],) + c["spatial"] + (c["C"],) if c["channels_last"]
             else (c["N"], c["C"]) + c["spatial"])
    x = c["offset"] + c["spread"] * rng.standard_normal(shape)
    x = x.astype(c["dtype"])
    if c["view"] == "strided":
        big = np.zeros(shape[:-1] + (2 * shape[-1],), c["dtype"])
        big[..., ::2] = x
        x = big[..., ::2]
    elif c["view"] == "negative":
        x = np.ascontiguousarray(x[::-1])[::-1]
    elif c["view"] == "fortran":
        x = np.asfortranarray(x)
    elif c["view"] == "big_endian":
        x = x.astype(x.dtype.newbyteorder(">"))
    return x


def _slab_index(c, g):
    """Index of group g of sample 0 in the input's own layout."""
    Cg = c["C"] // c["G"]
    ch = slice(g * Cg, (g + 1) * Cg)
    return (0, Ellipsis, ch) if c["channels_last"] else (0, ch)


def _tol(c):
    ratio = c["offset"] / c["spread"]
    if c["dtype"] == F8:
        return 1e-11 + 1e-15 * ratio
    if c["dtype"] == F4:
        return 2e-5 + 1e-9 * ratio
    return 2e-2


@SETTINGS
@given(c=cases())
def test_forward_fuzz(oracle, c):
    rng = np.random.default_rng(c["seed"])
    x = _make(c, rng)
    G, C, dt = c["G"], c["C"], c["dtype"]
    if c["planted"] is not None:
        val = {"constant": 3.5, "nan": np.nan, "inf": np.inf}[c["planted"]]
        idx = _slab_index(c, G - 1)
        if c["planted"] == "constant":
            x[idx] = val
        else:
            x[idx].flat[0] = val     # writes through the view
    w = rng.uniform(-2, 2, C).astype(dt) if c["affine"] else None
    b = rng.standard_normal(C).astype(dt) if c["affine"] else None
    x_before = x.copy()
    ref, _, _ = oracle(x, G, w, b, eps=c["eps"],
                       channels_last=c["channels_last"],
                       activation=c["activation"])
    kw = dict(eps=c["eps"], channels_last=c["channels_last"],
              activation=c["activation"])
    if c["mode"] == "new":
        y = fastgn.group_norm(x, G, w, b, **kw)
        np.testing.assert_array_equal(x, x_before)
    elif c["mode"] == "out":
        out = np.full(x.shape, -7, dtype=dt)
        y = fastgn.group_norm(x, G, w, b, out=out, **kw)
        assert y is out
        np.testing.assert_array_equal(x, x_before)
    else:
        y = fastgn.group_norm(x, G, w, b, out=x, **kw)
        assert y is x
    assert y.shape == x.shape
    assert y.dtype.kind == "f" and y.dtype.itemsize == dt.itemsize
    y64 = np.asarray(y, dtype=np.float64)
    tol = _tol(c) * (1.0 if w is None else 2.0)
    if c["planted"] in ("nan", "inf"):
        idx = _slab_index(c, G - 1)
        assert np.isnan(y64[idx]).all()
        keep = np.ones(y64.shape, bool)
        keep[idx] = False
        np.testing.assert_allclose(y64[keep], ref[keep], rtol=tol, atol=tol)
    elif c["planted"] == "constant" and c["eps"] >= 1e-5:
        idx = _slab_index(c, G - 1)
        if c["activation"] in (None, "relu"):
            # weight * 0 + bias exactly (relu of it is exact too)
            np.testing.assert_array_equal(y64[idx], ref[idx].astype(dt))
        np.testing.assert_allclose(y64, ref, rtol=tol, atol=tol)
    elif c["planted"] is None:
        np.testing.assert_allclose(y64, ref, rtol=tol, atol=tol)


@SETTINGS
@given(c=cases())
def test_backward_fuzz(c):
    """group_norm_backward against the float64 formula with the same stats."""
    if c["dtype"] == F2 or c["planted"] is not None:
        return
    rng = np.random.default_rng(c["seed"])
    x = _make(c, rng)
    G, C, dt = c["G"], c["C"], c["dtype"]
    w = rng.uniform(0.5, 2, C).astype(dt) if c["affine"] else None
    _, mean, rstd = fastgn.group_norm(x, G, w, eps=c["eps"],
                                      channels_last=c["channels_last"],
                                      return_stats=True)
    dy = rng.standard_normal(x.shape).astype(dt)
    dx, dw, db = fastgn.group_norm_backward(
        dy, x, mean, rstd, G, w, channels_last=c["channels_last"])
    # float64 formula on channels-first (N, G, Cg, rest)
    cf = (lambda a: np.moveaxis(np.asarray(a, np.float64), -1, 1)) \
        if c["channels_last"] else (lambda a: np.asarray(a, np.float64))
    X, D = cf(x), cf(dy)
    N = X.shape[0]
    Xg = X.reshape(N, G, C // G, -1)
    Dg = D.reshape(Xg.shape)
    mu = mean.astype(np.float64)[:, :, None, None]
    rs = rstd.astype(np.float64)[:, :, None, None]
    xhat = (Xg - mu) * rs
    wv = np.ones(C) if w is None else w.astype(np.float64)
    gy = Dg * wv.reshape(1, G, C // G, 1)
    m1 = gy.mean(axis=(2, 3), keepdims=True)
    m2 = (gy * xhat).mean(axis=(2, 3), keepdims=True)
    want_dx = (rs * (gy - m1 - xhat * m2)).reshape(X.shape)
    want_dw = (Dg * xhat).sum(axis=(0, 3)).reshape(C)
    want_db = Dg.sum(axis=(0, 3)).reshape(C)
    got_dx = cf(dx)
    tol = 1e-9 if dt == F8 else 2e-4
    scale = max(1.0, float(np.max(np.abs(want_dx))))
    np.testing.assert_allclose(got_dx, want_dx, rtol=tol, atol=tol * scale)
    n_per_c = X.size / C
    np.testing.assert_allclose(dw, want_dw, rtol=tol,
                               atol=tol * np.sqrt(n_per_c) * 4)
    np.testing.assert_allclose(db, want_db, rtol=tol,
                               atol=tol * np.sqrt(n_per_c) * 4)
