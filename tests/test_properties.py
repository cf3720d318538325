"""Property-based tests: random shapes / options against the float64 oracle."""

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastgn

gn = fastgn.group_norm

SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, database=None,
    # the autouse ``backend`` fixture is function-scoped but example-invariant
    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def problems(draw):
    rank = draw(st.integers(2, 5))
    N = draw(st.integers(1, 3))
    G = draw(st.integers(1, 6))
    C = G * draw(st.integers(1, 4))
    spatial = tuple(draw(st.lists(st.integers(1, 5), min_size=rank - 2,
                                  max_size=rank - 2)))
    channels_last = draw(st.booleans())
    shape = (N,) + spatial + (C,) if channels_last else (N, C) + spatial
    return dict(
        shape=shape, G=G, C=C, channels_last=channels_last,
        dtype=np.dtype(draw(st.sampled_from([np.float32, np.float64]))),
        affine=draw(st.sampled_from(["none", "weight", "bias", "both"])),
        eps=draw(st.sampled_from([0.0, 1e-5, 1.0])),
        offset=draw(st.sampled_from([0.0, -3.0, 100.0, 1e4])),
        scale=draw(st.sampled_from([1e-2, 1.0, 50.0])),
        activation=draw(st.sampled_from([None, "relu", "silu", "gelu"])),
        return_stats=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _tolerance(p):
    """(rtol, atol) for outputs and stats given the data's offset/scale."""
    ratio = max(1.0, abs(p["offset"]) / p["scale"])
    if p["dtype"] == np.float64:
        return 1e-12, 1e-12 * ratio
    return 2e-6, 2e-6 + 1e-9 * ratio      # 1e-5 at ratio 1e4 (headline)


@SETTINGS
@given(p=problems())
def test_group_norm_matches_oracle(oracle, oracle_stats, p):
    # too extreme for float32 to be meaningful
    assume(not (p["dtype"] == np.float32
                and abs(p["offset"]) / p["scale"] > 1e4))
    rng = np.random.default_rng(p["seed"])
    dt = p["dtype"]
    x = (p["offset"] + p["scale"] * rng.standard_normal(p["shape"])).astype(dt)
    C = p["C"]
    w = b = None
    if p["affine"] in ("weight", "both"):
        w = rng.uniform(-2, 2, C).astype(dt)
    if p["affine"] in ("bias", "both"):
        b = rng.standard_normal(C).astype(dt)
    x0 = x.copy()
    res = gn(x, p["G"], w, b, eps=p["eps"], channels_last=p["channels_last"],
             activation=p["activation"], return_stats=p["return_stats"])
    np.testing.assert_array_equal(x, x0)
    if p["return_stats"]:
        y, mean, rstd = res
        assert mean.shape == rstd.shape == (p["shape"][0], p["G"])
        assert mean.dtype == rstd.dtype == dt
    else:
        assert isinstance(res, np.ndarray)
        y = res
    assert y.shape == x.shape and y.dtype == dt

    ref, rm, rr = oracle(x, p["G"], w, b, eps=p["eps"],
                         channels_last=p["channels_last"],
                         activation=p["activation"])
    # with eps == 0 a (nearly) constant slab has an undefined result: only
    # compare slabs whose variance is well above the data's quantization
    _, var, _ = oracle_stats(x, p["G"], 0.0, p["channels_last"])
    keep = (var > (1e-3 * p["scale"]) ** 2) if p["eps"] == 0 else \
        np.ones_like(var, bool)
    mask = np.broadcast_to(keep.reshape(keep.shape + (1, 1)),
                           keep.shape + (C // p["G"], y[0].size // C))
    if p["channels_last"]:
        ys = np.moveaxis(y, -1, 1)
        refs = np.moveaxis(ref, -1, 1)
    else:
        ys, refs = y, ref
    ys = ys.reshape(ys.shape[0], p["G"], C // p["G"], -1)
    refs = refs.reshape(ys.shape)
    rtol, atol = _tolerance(p)
    scale_w = 1.0 if w is None else max(1.0, float(np.max(np.abs(w))))
    np.testing.assert_allclose(ys[mask], refs[mask], rtol=rtol,
                               atol=atol * scale_w)
    if p["return_stats"]:
        mtol = 1e-15 if dt == np.float64 else 1e-7
        np.testing.assert_allclose(
            mean, rm, rtol=mtol, atol=atol * p["scale"])
        np.testing.assert_allclose(rstd[keep], rr[keep], rtol=10 * rtol)


@SETTINGS
@given(p=problems(), nt=st.integers(1, 4))
def test_deterministic_and_batch_independent(p, nt):
    rng = np.random.default_rng(p["seed"])
    x = (p["offset"] + p["scale"] * rng.standard_normal(p["shape"])
         ).astype(p["dtype"])
    kw = dict(eps=1e-5, channels_last=p["channels_last"],
              activation=p["activation"])
    y = gn(x, p["G"], **kw)
    np.testing.assert_array_equal(gn(x, p["G"], num_threads=nt, **kw), y)
    np.testing.assert_array_equal(gn(x[-1:], p["G"], **kw), y[-1:])


@SETTINGS
@given(p=problems())
def test_channels_last_is_a_layout_only(p):
    rng = np.random.default_rng(p["seed"])
    x = (p["offset"] + p["scale"] * rng.standard_normal(p["shape"])
         ).astype(p["dtype"])
    axis_c = -1 if p["channels_last"] else 1
    other = np.ascontiguousarray(np.moveaxis(x, axis_c, 1 if axis_c == -1
                                             else -1))
    y, m, r = gn(x, p["G"], channels_last=p["channels_last"],
                 return_stats=True)
    y2, m2, r2 = gn(other, p["G"], channels_last=not p["channels_last"],
                    return_stats=True)
    rtol, atol = _tolerance(p)
    np.testing.assert_allclose(np.moveaxis(y2, 1 if axis_c == -1 else -1,
                                           axis_c), y, rtol=rtol, atol=atol)
    np.testing.assert_allclose(r2, r, rtol=10 * rtol)


@st.composite
def half_problems(draw):
    """Shapes around the float16 kernels' boundaries: runs shorter and longer
    than a vector (8, 16 values), slabs around FG_SHIFT_ALL (64), the small
    path's 2048 and a chunk (8192), rank 2 with large groups."""
    G = draw(st.integers(1, 4))
    Cg = draw(st.sampled_from([1, 2, 3, 4, 7, 16, 33]))
    HW = draw(st.sampled_from([1, 5, 8, 9, 15, 16, 17, 31, 49, 64, 100, 257,
                               1000, 3000, 9000]))
    N = draw(st.integers(1, 3))
    channels_last = draw(st.booleans())
    spatial = (HW,) if draw(st.booleans()) or HW == 1 else (1, HW)
    C = G * Cg
    shape = (N,) + spatial + (C,) if channels_last else (N, C) + spatial
    if HW == 1:         # rank 2: groups of up to 9001 values
        C = G * draw(st.sampled_from([Cg, 64, 65, 2049, 3003, 9001]))
        shape, channels_last = (N, C), False
    return dict(shape=shape, G=G, C=C, channels_last=channels_last,
                activation=draw(st.sampled_from([None, "relu", "silu",
                                                 "gelu"])),
                offset=draw(st.sampled_from([0.0, 30.0, -500.0])),
                nt=draw(st.integers(1, 3)), affine=draw(st.booleans()),
                seed=draw(st.integers(0, 2**32 - 1)))


@SETTINGS
@given(p=half_problems())
def test_float16_is_float32_rounded_once(p):
    """Every float16 path (converted in registers or through buffers) gives
    the bits of normalizing the float32 conversion and rounding once."""
    rng = np.random.default_rng(p["seed"])
    x = (p["offset"] + 4 * rng.standard_normal(p["shape"])).astype(np.float16)
    w = b = None
    if p["affine"]:
        w = rng.uniform(-2, 2, p["C"]).astype(np.float16)
        b = rng.uniform(-1, 1, p["C"]).astype(np.float16)
    kw = dict(channels_last=p["channels_last"], activation=p["activation"],
              num_threads=p["nt"], return_stats=True)
    y, m, r = gn(x, p["G"], w, b, **kw)
    y32, m32, r32 = gn(x.astype(np.float32), p["G"],
                       None if w is None else w.astype(np.float32),
                       None if b is None else b.astype(np.float32), **kw)
    np.testing.assert_array_equal(y, y32.astype(np.float16))
    np.testing.assert_array_equal(m, m32)
    np.testing.assert_array_equal(r, r32)
