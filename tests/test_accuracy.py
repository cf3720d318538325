"""Accuracy with large offsets: the headline feature.

Naive one-pass statistics (E[x^2] - E[x]^2) or float32 accumulators fail all
of these by orders of magnitude. The reference is the float64 oracle run on
the very same input values (float32 inputs are widened exactly).
"""

import numpy as np
import pytest

import fastgn

gn = fastgn.group_norm


@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_large_offset(rng, oracle, channels_last):
    shape = (4, 32, 32, 32)
    x = (1e4 + rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y, mean, rstd = gn(x, 8, return_stats=True, channels_last=channels_last)
    assert y.dtype == np.float32
    ref, rm, rr = oracle(x.astype(np.float64), 8, channels_last=channels_last)
    err = np.max(np.abs(y.astype(np.float64) - ref))
    assert err <= 1e-5, f"max |y - y_f64| = {err:.3g}"
    # statistics: as good as rounding to float32 allows (plus a little)
    np.testing.assert_allclose(mean, rm, rtol=1e-7, atol=0)
    np.testing.assert_allclose(rstd, rr, rtol=1e-6)


@pytest.mark.parametrize("shape, G, channels_last", [
    ((4, 64, 1024), 8, False), ((2, 64, 56, 56), 32, False),
    ((16, 3, 64, 64), 1, False), ((4, 3, 128, 128), 3, True),
    ((2, 4, 128, 128), 1, True)], ids=str)
def test_float32_integer_valued(rng, oracle, shape, G, channels_last):
    """Integer-valued data (images, 0..255; channels-last: HWC): float32
    lanes summing many squares of few significant bits round alike, and
    had put these outputs 6.5e-7 to 1.8e-6 off (PyTorch: 1.6-4.5e-7); the
    lanes now go into float64 after 16 values each (at most 4e-7 off over
    eight seeds)."""
    x = rng.integers(0, 256, shape).astype(np.float32)
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y = gn(x, G, eps=0.0, channels_last=channels_last)
    ref = oracle(x.astype(np.float64), G, eps=0.0,
                 channels_last=channels_last)[0]
    err = np.max(np.abs(y.astype(np.float64) - ref))
    assert err <= 5e-7, f"max |y - y_f64| = {err:.3g}"


@pytest.mark.parametrize("shape", [(2, 8192, 8), (1, 4096, 16)])
def test_float32_channels_last_drift(rng, oracle, shape):
    """Channels-last data around a large offset whose first 64 positions sit
    far from the rest (a level that drifts across the image): statistics as
    good as for stationary data. The kernel takes its shift from the first
    positions and must notice when that shift is a poor one."""
    N, HW, C = shape
    x = 1e4 + rng.standard_normal(shape)
    x[:, :64] -= 1e4
    x = x.astype(np.float32)
    y, mean, rstd = gn(x, 4, return_stats=True, channels_last=True)
    ref, rm, rr = oracle(x.astype(np.float64), 4, channels_last=True)
    np.testing.assert_allclose(mean, rm, rtol=1e-7, atol=0)
    np.testing.assert_allclose(rstd, rr, rtol=3e-7)
    err = np.max(np.abs(y.astype(np.float64) - ref))
    assert err <= 3e-6, f"max |y - y_f64| = {err:.3g}"


@pytest.mark.parametrize("shape, G", [((4, 64, 8, 16), 4), ((2, 256, 1, 1), 8),
                                      ((2, 8, 64, 64), 2), ((1, 8, 64, 64), 1)])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_float32_nchw_outlying_start(rng, oracle, shape, G, num_threads):
    """NCHW data around a large offset whose first 16 values of every run of
    8192 (a small slab's first values, every statistics chunk's first
    values) sit far from the rest: statistics as good as for stationary
    data. The kernel takes its shift from a run's first values and must
    notice when that shift is a poor one."""
    x = 1e4 + rng.standard_normal(shape)
    slabs = x.reshape(shape[0] * G, -1)
    starts = np.arange(slabs.shape[1]) % 8192 < 16
    slabs[:, starts] -= 100.0
    x = x.astype(np.float32)
    y, mean, rstd = gn(x, G, return_stats=True, num_threads=num_threads)
    ref, rm, rr = oracle(x.astype(np.float64), G)
    np.testing.assert_allclose(mean, rm, rtol=1e-7, atol=0)
    np.testing.assert_allclose(rstd, rr, rtol=1e-6)
    # relative to the outliers' size (about 22), as rstd's error carries
    err = np.max(np.abs(y.astype(np.float64) - ref)) / np.max(np.abs(ref))
    assert err <= 1e-6, f"max |y - y_f64| / max |y_f64| = {err:.3g}"


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-7),
                                         (np.float64, 1e-15)], ids=str)
@pytest.mark.parametrize("shape, G", [((64, 1024), 32), ((32, 64, 2, 2), 8),
                                      ((16, 64), 1)])
def test_tiny_groups_outlying_first_value(rng, oracle, shape, G, dtype, rtol):
    """Groups of at most 64 values are summed in one pass shifted by their
    first value: with a first value far out (and a large offset) their
    statistics must still be those of float64 two-pass, to the rounding of
    the result dtype."""
    x = 1e4 + rng.standard_normal(shape)
    x.reshape(shape[0] * G, -1)[:, 0] += 1e3
    x = x.astype(dtype)
    y, mean, rstd = gn(x, G, return_stats=True)
    ref, rm, rr = oracle(x.astype(np.float64), G)
    np.testing.assert_allclose(mean, rm, rtol=rtol, atol=0)
    np.testing.assert_allclose(rstd, rr, rtol=rtol)
    err = np.max(np.abs(y.astype(np.float64) - ref)) / np.max(np.abs(ref))
    assert err <= (1e-6 if dtype == np.float32 else 1e-14), err


def test_float32_8M_element_group(rng, oracle_stats):
    """One slab of 8M float32 values around 1e3: stats to 1e-6 (relative)."""
    shape = (1, 8, 1024, 1024)
    x = rng.standard_normal(shape, dtype=np.float32)
    x += np.float32(1e3)
    y, mean, rstd = gn(x, 1, return_stats=True)
    rm, _, rr = oracle_stats(x, 1)
    assert mean.shape == (1, 1) and rstd.shape == (1, 1)
    # float32 rounding of the mean alone is 3e-8 relative at 1e3
    np.testing.assert_allclose(mean, rm, rtol=1e-6, atol=0)
    np.testing.assert_allclose(rstd, rr, rtol=1e-6, atol=0)
    # outputs, on a sample (the full float64 reference would be large)
    flat = x.reshape(-1)
    idx = rng.integers(0, flat.size, 200_000)
    ref = (flat[idx].astype(np.float64) - rm[0, 0]) * rr[0, 0]
    err = np.max(np.abs(y.reshape(-1)[idx] - ref))
    assert err <= 1e-5, f"max |y - y_f64| = {err:.3g}"


@pytest.mark.parametrize("channels_last", [False, True])
def test_float64_large_offset(rng, oracle, channels_last):
    shape = (4, 16, 16, 16)
    x = 1e6 + rng.standard_normal(shape)
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    w = rng.uniform(0.5, 2.0, 16)
    b = rng.standard_normal(16)
    y, mean, rstd = gn(x, 4, w, b, return_stats=True,
                       channels_last=channels_last)
    ref, rm, rr = oracle(x, 4, w, b, channels_last=channels_last)
    err = np.max(np.abs(y - ref))
    assert err <= 1e-9, f"max |y - y_oracle| = {err:.3g}"
    np.testing.assert_allclose(mean, rm, rtol=1e-15, atol=1e-9)
    np.testing.assert_allclose(rstd, rr, rtol=1e-9)


def test_float64_tiny_spread_around_offset(rng, oracle):
    """std 1e-4 around 1e4: var/mean^2 = 1e-16, below float64 epsilon."""
    shape = (3, 8, 20, 20)
    x = 1e4 + 1e-4 * rng.standard_normal(shape)
    y, mean, rstd = gn(x, 4, eps=0.0, return_stats=True)
    ref, rm, rr = oracle(x, 4, eps=0.0)
    # the input grid (ulp(1e4) = 1.8e-12) is 2e-8 of a standard deviation:
    # outputs are meaningful to ~1e-7 in units of the standard deviation
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-7)
    np.testing.assert_allclose(rstd, rr, rtol=1e-8)
    np.testing.assert_allclose(mean, rm, rtol=1e-15, atol=0)
    assert np.all((rstd > 5e3) & (rstd < 2e4))    # 1/std, not 1/sqrt(eps)...


def test_float32_tiny_spread_around_offset(rng, oracle):
    # std 0.01 around 1e3 in float32: the data sit on a 6e-5 grid
    x = (1e3 + 0.01 * rng.standard_normal((2, 8, 32, 32))).astype(np.float32)
    y, mean, rstd = gn(x, 2, eps=0.0, return_stats=True)
    ref, rm, rr = oracle(x, 2, eps=0.0)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(rstd, rr, rtol=1e-6)


def test_float32_huge_magnitude_does_not_overflow(rng, oracle):
    # x**2 ~ 1e36 and sums of squares exceed float32's 3.4e38
    x = (1e18 * rng.standard_normal((2, 4, 64, 64))).astype(np.float32)
    y, mean, rstd = gn(x, 2, return_stats=True)
    ref, rm, rr = oracle(x, 2)
    assert np.isfinite(y).all() and np.isfinite(rstd).all()
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6)
    np.testing.assert_allclose(rstd, rr, rtol=1e-6)


def test_float16_large_offset(rng, oracle):
    # float16 data near 1000 (grid 0.5): computed in float32, still exact-ish
    x = (1000 + 8 * rng.standard_normal((2, 8, 16, 16))).astype(np.float16)
    y = gn(x, 4)
    ref, _, _ = oracle(x, 4)
    np.testing.assert_allclose(y.astype(np.float64),
                               ref.astype(np.float16).astype(np.float64),
                               rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("scale", [1e-30, 1e-22, 1e19, 1e30], ids=str)
@pytest.mark.parametrize("shape,G,channels_last", [
    ((2, 4, 64, 64), 2, False),        # chunked slabs
    ((16, 64, 7, 7), 8, False),        # small slabs
    ((2, 32, 32, 8), 2, True),         # channels-last rows
    ((64, 256), 8, False),             # one value per channel
], ids=["chunked", "small_slabs", "nhwc", "rank2"])
def test_float32_extreme_magnitudes(oracle, scale, shape, G, channels_last):
    """Squares of such values overflow or go subnormal in float32: the
    statistics must still come out right (no inf rstd, no lost bits)."""
    rng = np.random.default_rng(7)
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    y, mean, rstd = gn(x, G, eps=0.0, return_stats=True,
                       channels_last=channels_last)
    ref, rm, rr = oracle(x, G, eps=0.0, channels_last=channels_last)
    assert np.isfinite(y).all() and np.isfinite(rstd).all()
    np.testing.assert_allclose(rstd, rr, rtol=1e-6)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("offset,scale", [(3.0, 0.0), (0.0, 1e-30),
                                          (0.0, 1e-16), (0.0, 1e-9)],
                         ids=["constant", "1e-30", "1e-16", "1e-9"])
@pytest.mark.parametrize("shape,G,channels_last", [
    ((2, 4, 64, 64), 2, False),
    ((16, 64, 7, 7), 8, False),
    ((2, 32, 32, 8), 2, True),
], ids=["chunked", "small_slabs", "nhwc"])
def test_float32_tiny_variance_beside_eps(oracle, offset, scale, shape, G,
                                          channels_last):
    """Groups whose float32 sums of squares go subnormal (or are 0: constant
    groups) are not summed again in float64 when eps dwarfs their variance:
    the result is the same to float32 rounding."""
    rng = np.random.default_rng(5)
    x = (offset + scale * rng.standard_normal(shape)).astype(np.float32)
    y, mean, rstd = gn(x, G, eps=1e-20, return_stats=True,
                       channels_last=channels_last)
    ref, rm, rr = oracle(x, G, eps=1e-20, channels_last=channels_last)
    # a mean near 0 is as good as its error against the spread (scale)
    np.testing.assert_allclose(mean, rm, rtol=1e-7, atol=1e-7 * scale)
    np.testing.assert_allclose(rstd, rr, rtol=1e-6)
    np.testing.assert_allclose(y, ref, rtol=0,
                               atol=1e-6 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("channels_last", [False, True],
                         ids=["nchw", "nhwc"])
@pytest.mark.parametrize("scale", [1e19, 1e30], ids=str)
@pytest.mark.parametrize("shape,G", [((2, 4, 64, 64), 2), ((16, 64, 7, 7), 2),
                                     ((16, 64, 7, 7), 64),
                                     ((16, 64, 2, 2), 8)], ids=str)
def test_float32_backward_extreme_magnitudes(scale, shape, G, channels_last):
    """dy * (x - mean) overflows float32 partial sums at these scales: the
    parameter gradients must still match the float64 formula (G = C: the
    slabs of one channel, summed several at a time; 2x2 maps channels-last:
    a sample's sums in one call with its groups' work)."""
    rng = np.random.default_rng(11)
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    dy = (scale * rng.standard_normal(shape)).astype(np.float32)
    _, mean, rstd = gn(x, G, return_stats=True)
    if channels_last:
        xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        dyl = np.ascontiguousarray(np.moveaxis(dy, 1, -1))
        dx, dw, db = fastgn.group_norm_backward(dyl, xl, mean, rstd, G,
                                                channels_last=True)
    else:
        dx, dw, db = fastgn.group_norm_backward(dy, x, mean, rstd, G)
    X = x.astype(np.float64).reshape(shape[0], G, -1)
    D = dy.astype(np.float64).reshape(X.shape)
    xhat = (X - mean.astype(np.float64)[..., None]) * \
        rstd.astype(np.float64)[..., None]
    want_dw = (D * xhat).reshape(shape[0], shape[1], -1).sum(axis=(0, 2))
    want_db = D.reshape(shape[0], shape[1], -1).sum(axis=(0, 2))
    assert np.isfinite(dx).all()
    np.testing.assert_allclose(dw, want_dw, rtol=1e-5)
    np.testing.assert_allclose(db, want_db, rtol=1e-5, atol=1e-6 * scale)
