"""Tests of the ``fastgn.GroupNorm`` layer."""

import math

import numpy as np
import pytest

import fastgn

ACTIVATIONS = [None, "relu", "silu", "gelu"]


def randomize(layer, rng):
    """Give an affine layer random, sign-mixed parameters."""
    C = layer.num_channels
    layer.weight = (rng.uniform(0.5, 1.5, C) *
                    rng.choice([-1, 1], C)).astype(layer.dtype)
    layer.bias = rng.standard_normal(C).astype(layer.dtype)


def np_activation(v, name):
    """float64 activations, independent of fastgn."""
    if name is None:
        return v
    if name == "relu":
        return np.maximum(v, 0.0)
    if name == "silu":
        return v / (1.0 + np.exp(-v))
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))


# ------------------------------------------------------- construction

@pytest.mark.backend_independent
@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((2.0, 8), {}, TypeError, "num_groups"),
    ((True, 8), {}, TypeError, "num_groups"),
    (("2", 8), {}, TypeError, "num_groups"),
    ((2, 8.0), {}, TypeError, "num_channels"),
    ((1, True), {}, TypeError, "num_channels"),
    ((2, None), {}, TypeError, "num_channels"),
    ((0, 8), {}, ValueError, "num_groups.*0"),
    ((-2, 8), {}, ValueError, "num_groups.*-2"),
    ((2, 0), {}, ValueError, "num_channels.*0"),
    ((2, -4), {}, ValueError, "num_channels.*-4"),
    ((3, 8), {}, ValueError, r"C=8.*num_groups=3"),
    ((16, 8), {}, ValueError, r"C=8.*num_groups=16"),
    ((2, 8, -1e-5), {}, ValueError, "eps"),
    ((2, 8, float("nan")), {}, ValueError, "eps"),
    ((2, 8, float("inf")), {}, ValueError, "eps"),
    ((2, 8, "1e-5"), {}, TypeError, "eps"),
    ((2, 8), {"activation": "tanh"}, ValueError, "tanh"),
    ((2, 8), {"activation": "SiLU"}, ValueError, "SiLU"),
    ((2, 8), {"activation": 2}, TypeError, "activation"),
    ((2, 8), {"dtype": np.int32}, TypeError, "dtype"),
    ((2, 8), {"dtype": np.complex64}, TypeError, "dtype"),
    ((2, 8), {"dtype": "bogus"}, TypeError, "dtype"),
    ((2, 8), {"dtype": object}, TypeError, "dtype"),
    ((2, 8), {"dtype": None}, TypeError, "dtype"),
    ((2, 8), {"dtype": np.longdouble}, TypeError, "dtype"),
])
def test_construction_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastgn.GroupNorm(*args, **kwargs)


@pytest.mark.backend_independent
def test_defaults():
    layer = fastgn.GroupNorm(4, 12)
    assert layer.num_groups == 4 and layer.num_channels == 12
    assert layer.eps == 1e-5 and layer.affine is True
    assert layer.channels_last is False and layer.activation is None
    assert layer.dtype == np.float32
    assert layer.weight.dtype == np.float32 and layer.weight.shape == (12,)
    assert layer.bias.dtype == np.float32 and layer.bias.shape == (12,)
    assert np.array_equal(layer.weight, np.ones(12))
    assert np.array_equal(layer.bias, np.zeros(12))
    assert layer.grad_weight is None and layer.grad_bias is None


@pytest.mark.backend_independent
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64,
                                   "float64", np.dtype("float16")])
def test_dtype(dtype):
    layer = fastgn.GroupNorm(2, 4, dtype=dtype)
    assert layer.dtype == np.dtype(dtype)
    assert layer.weight.dtype == np.dtype(dtype)
    assert layer.bias.dtype == np.dtype(dtype)


@pytest.mark.backend_independent
def test_affine_false_and_numpy_ints():
    layer = fastgn.GroupNorm(np.int64(2), np.int32(6), 0, affine=False,
                             channels_last=True, activation="gelu")
    assert layer.num_groups == 2 and type(layer.num_groups) is int
    assert layer.num_channels == 6 and layer.eps == 0.0
    assert layer.weight is None and layer.bias is None
    assert layer.channels_last is True and layer.activation == "gelu"
    assert layer.state_dict() == {}


@pytest.mark.backend_independent
def test_repr():
    layer = fastgn.GroupNorm(32, 320, activation="silu")
    assert repr(layer) == ("GroupNorm(32, 320, eps=1e-05, affine=True, "
                           "channels_last=False, activation='silu', "
                           "dtype=float32)")
    layer = fastgn.GroupNorm(2, 4, 0.001, affine=False, channels_last=True,
                             dtype=np.float64)
    assert repr(layer) == ("GroupNorm(2, 4, eps=0.001, affine=False, "
                           "channels_last=True, activation=None, "
                           "dtype=float64)")


# ------------------------------------------------------- inference

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("channels_last", [False, True],
                         ids=["nchw", "nhwc"])
def test_call_equals_group_norm(activation, channels_last):
    rng = np.random.default_rng(0)
    layer = fastgn.GroupNorm(4, 8, 1e-3, channels_last=channels_last,
                             activation=activation)
    randomize(layer, rng)
    shape = (3, 5, 6, 8) if channels_last else (3, 8, 5, 6)
    x = rng.standard_normal(shape).astype(np.float32)
    y = layer(x)
    expected = fastgn.group_norm(x, 4, layer.weight, layer.bias, 1e-3,
                                 channels_last=channels_last,
                                 activation=activation)
    assert y.dtype == np.float32
    assert np.array_equal(y, expected)
    # and it is the documented function: checked against plain NumPy
    xn = np.moveaxis(x, -1, 1) if channels_last else x
    xs = xn.astype(np.float64).reshape(3, 4, -1)
    xhat = ((xs - xs.mean(-1, keepdims=True)) /
            np.sqrt(xs.var(-1, keepdims=True) + 1e-3)).reshape(xn.shape)
    pre = xhat * layer.weight[:, None, None] + layer.bias[:, None, None]
    ref = np_activation(pre, activation)
    if channels_last:
        ref = np.moveaxis(ref, 1, -1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_call_out_and_threads():
    rng = np.random.default_rng(1)
    layer = fastgn.GroupNorm(2, 6, activation="relu")
    randomize(layer, rng)
    x = rng.standard_normal((2, 6, 7))
    expected = layer(x)
    out = np.empty_like(x)
    assert layer(x, out=out, num_threads=1) is out
    assert np.array_equal(out, expected)
    assert np.array_equal(layer(x, num_threads=2), expected)
    layer(x, out=x)                      # in place
    assert np.array_equal(x, expected)


def test_call_accepts_lists_and_float16():
    layer = fastgn.GroupNorm(1, 2, dtype=np.float16)
    y = layer([[1.0, 3.0], [2.0, 2.0]])
    np.testing.assert_allclose(y, [[-1, 1], [0, 0]], atol=1e-4)
    x16 = np.array([[1.0, 3.0]], np.float16)
    assert layer(x16).dtype == np.float16
    assert layer.forward(x16).dtype == np.float16


@pytest.mark.parametrize("channels_last", [False, True],
                         ids=["nchw", "nhwc"])
@pytest.mark.parametrize("method", ["__call__", "forward"])
def test_wrong_channel_count(channels_last, method):
    layer = fastgn.GroupNorm(2, 8, channels_last=channels_last)
    x = np.zeros((2, 4, 4, 6) if channels_last else (2, 6, 4, 4),
                 np.float32)
    with pytest.raises(ValueError, match=r"8 channels.*got 6"):
        getattr(layer, method)(x)
    with pytest.raises(ValueError):        # fewer than 2 dimensions
        getattr(layer, method)(np.zeros(8, np.float32))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_channels_last_matches_transposed(activation):
    rng = np.random.default_rng(2)
    nchw = fastgn.GroupNorm(3, 9, activation=activation, dtype=np.float64)
    randomize(nchw, rng)
    nhwc = fastgn.GroupNorm(3, 9, activation=activation, dtype=np.float64,
                            channels_last=True)
    nhwc.load_state_dict(nchw.state_dict())
    x = rng.standard_normal((2, 9, 4, 5))
    xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    dy = rng.standard_normal(x.shape)
    dyt = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))

    np.testing.assert_allclose(nhwc(xt), nchw(x).transpose(0, 2, 3, 1),
                               rtol=1e-12, atol=1e-12)
    y, yt = nchw.forward(x), nhwc.forward(xt)
    np.testing.assert_allclose(yt, y.transpose(0, 2, 3, 1), rtol=1e-12,
                               atol=1e-12)
    dx, dxt = nchw.backward(dy), nhwc.backward(dyt)
    np.testing.assert_allclose(dxt, dx.transpose(0, 2, 3, 1), rtol=1e-11,
                               atol=1e-12)
    np.testing.assert_allclose(nhwc.grad_weight, nchw.grad_weight,
                               rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(nhwc.grad_bias, nchw.grad_bias, rtol=1e-11,
                               atol=1e-12)


# ------------------------------------------------------- training

@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_equals_call(activation):
    rng = np.random.default_rng(3)
    layer = fastgn.GroupNorm(2, 4, activation=activation)
    randomize(layer, rng)
    x = rng.standard_normal((3, 4, 10)).astype(np.float32)
    y_call, y_fwd = layer(x), layer.forward(x)
    assert y_fwd.dtype == np.float32 and y_fwd.shape == x.shape
    # the activation is applied to the rounded pre-activation: ~1 ulp
    np.testing.assert_allclose(y_fwd, y_call, rtol=1e-6, atol=1e-6)


def test_backward_before_forward():
    layer = fastgn.GroupNorm(2, 4)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.ones((1, 4, 3), np.float32))
    layer(np.ones((1, 4, 3), np.float32))   # inference saves nothing
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.ones((1, 4, 3), np.float32))


@pytest.mark.parametrize("activation", [None, "silu"])
def test_backward_wrong_grad_shape(activation):
    layer = fastgn.GroupNorm(2, 4, activation=activation)
    layer.forward(np.random.default_rng(4).standard_normal((2, 4, 3)))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.ones((2, 4, 1)))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.ones((2, 4)))


def torch_module_grads(torch, x, dy, layer):
    """Output and gradients of torch.nn.GroupNorm (+ activation)."""
    F = torch.nn.functional
    tdtype = {np.dtype(np.float32): torch.float32,
              np.dtype(np.float64): torch.float64}[layer.dtype]
    mod = torch.nn.GroupNorm(layer.num_groups, layer.num_channels, layer.eps,
                             affine=layer.affine, dtype=tdtype)
    if layer.affine:
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(layer.weight))
            mod.bias.copy_(torch.from_numpy(layer.bias))
    xt = torch.from_numpy(x.copy()).requires_grad_()
    act = {None: lambda v: v, "relu": F.relu, "silu": F.silu,
           "gelu": F.gelu}[layer.activation]
    out = act(mod(xt))
    out.backward(torch.from_numpy(dy))
    grads = (None, None)
    if layer.affine:
        grads = (mod.weight.grad.numpy(), mod.bias.grad.numpy())
    return out.detach().numpy(), xt.grad.numpy(), *grads


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-4),
                                       (np.float64, 1e-10)],
                         ids=["f32", "f64"])
@pytest.mark.parametrize("affine", [True, False])
def test_forward_backward_vs_torch(activation, dtype, tol, affine):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    layer = fastgn.GroupNorm(4, 8, 1e-5, affine=affine,
                             activation=activation, dtype=dtype)
    if affine:
        randomize(layer, rng)
    x = (rng.standard_normal((3, 8, 5, 4)) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)

    y = layer.forward(x)
    dx = layer.backward(dy)
    ty, tdx, tdw, tdb = torch_module_grads(torch, x, dy, layer)

    assert y.dtype == dx.dtype == dtype
    np.testing.assert_allclose(y, ty, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, tdx, rtol=tol,
                               atol=tol * np.abs(tdx).max())
    if affine:
        assert layer.grad_weight.dtype == layer.grad_bias.dtype == dtype
        assert layer.grad_weight.shape == layer.grad_bias.shape == (8,)
        np.testing.assert_allclose(layer.grad_weight, tdw, rtol=tol,
                                   atol=tol * np.abs(tdw).max())
        np.testing.assert_allclose(layer.grad_bias, tdb, rtol=tol,
                                   atol=tol * np.abs(tdb).max())
    else:
        assert layer.grad_weight is None and layer.grad_bias is None


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_finite_differences(numeric_grad, activation):
    """Layer gradients, activation included, without torch."""
    rng = np.random.default_rng(6)
    layer = fastgn.GroupNorm(2, 4, 1e-3, activation=activation,
                             dtype=np.float64)
    randomize(layer, rng)
    x = rng.standard_normal((2, 4, 3))
    R = rng.standard_normal(x.shape)

    def loss():
        return float((R * layer(x)).sum())

    layer.forward(x)
    dx = layer.backward(R)
    h = 1e-6
    num_dx = numeric_grad(loss, x, h)
    num_dw = numeric_grad(loss, layer.weight, h)
    num_db = numeric_grad(loss, layer.bias, h)
    np.testing.assert_allclose(dx, num_dx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.grad_weight, num_dw, rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(layer.grad_bias, num_db, rtol=1e-6,
                               atol=1e-7)
    assert np.abs(dx).max() > 0.05


def test_backward_uses_forward_parameters():
    """Changing the weight between forward and backward does not matter."""
    rng = np.random.default_rng(7)
    layer = fastgn.GroupNorm(2, 4, activation="silu", dtype=np.float64)
    randomize(layer, rng)
    x = rng.standard_normal((2, 4, 5))
    dy = rng.standard_normal(x.shape)
    layer.forward(x)
    expected = layer.backward(dy)
    layer.forward(x)
    layer.weight *= 3.0                  # e.g. an optimizer step
    layer.bias += 1.0
    np.testing.assert_array_equal(layer.backward(dy), expected)


def test_backward_twice_and_refresh():
    rng = np.random.default_rng(8)
    layer = fastgn.GroupNorm(2, 4, dtype=np.float64)
    randomize(layer, rng)
    x1, x2 = rng.standard_normal((2, 2, 4, 3))
    dy = rng.standard_normal(x1.shape)
    layer.forward(x1)
    g1 = layer.backward(dy)
    np.testing.assert_array_equal(layer.backward(dy), g1)
    layer.forward(x2)                    # the newest forward counts
    g2 = layer.backward(dy)
    assert not np.allclose(g1, g2)
    layer.forward(x1)
    np.testing.assert_array_equal(layer.backward(dy), g1)


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_float16_training(activation):
    rng = np.random.default_rng(9)
    layer = fastgn.GroupNorm(2, 4, activation=activation, dtype=np.float16)
    randomize(layer, rng)
    x = rng.standard_normal((2, 4, 6)).astype(np.float16)
    dy = rng.standard_normal(x.shape).astype(np.float16)
    y = layer.forward(x)
    dx = layer.backward(dy)
    assert y.dtype == dx.dtype == np.float16
    assert layer.grad_weight.dtype == layer.grad_bias.dtype == np.float16
    ref = fastgn.GroupNorm(2, 4, activation=activation, dtype=np.float64)
    ref.load_state_dict(layer.state_dict())
    ref.forward(x.astype(np.float64))
    rdx = ref.backward(dy.astype(np.float64))
    np.testing.assert_allclose(y, ref(x.astype(np.float64)), rtol=1e-2,
                               atol=1e-2)
    np.testing.assert_allclose(dx, rdx, rtol=1e-2,
                               atol=1e-2 * np.abs(rdx).max())
    np.testing.assert_allclose(layer.grad_weight, ref.grad_weight,
                               rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(layer.grad_bias, ref.grad_bias, rtol=1e-2,
                               atol=1e-2)


# ------------------------------------------------------- state dicts

def test_load_state_dict_from_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    mod = torch.nn.GroupNorm(4, 8)
    with torch.no_grad():
        mod.weight.uniform_(-2.0, 2.0)
        mod.bias.normal_()
    layer = fastgn.GroupNorm(4, 8)
    layer.load_state_dict(mod.state_dict())
    assert layer.weight.dtype == layer.bias.dtype == np.float32
    assert np.array_equal(layer.weight, mod.weight.detach().numpy())
    assert np.array_equal(layer.bias, mod.bias.detach().numpy())
    # the layer owns its copies
    with torch.no_grad():
        mod.weight.zero_()
    assert np.abs(layer.weight).min() > 0

    torch.manual_seed(0)
    mod2 = torch.nn.GroupNorm(4, 8)
    mod2.load_state_dict({k: torch.from_numpy(v)
                          for k, v in layer.state_dict().items()})
    x = np.random.default_rng(10).standard_normal((3, 8, 6, 5))
    x = (x * 3 + 1).astype(np.float32)
    expected = mod2(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)

    # a float64 layer casts the float32 tensors
    layer64 = fastgn.GroupNorm(4, 8, dtype=np.float64)
    layer64.load_state_dict(mod2.state_dict())
    assert layer64.weight.dtype == np.float64
    np.testing.assert_array_equal(layer64.weight, layer.weight)


def test_load_state_dict_tensor_needing_detach():
    """Parameters that require grad (not just state_dict's detached ones)."""
    torch = pytest.importorskip("torch")
    mod = torch.nn.GroupNorm(2, 4, dtype=torch.float64)
    with torch.no_grad():
        mod.weight.copy_(torch.arange(1.0, 5.0))
    layer = fastgn.GroupNorm(2, 4)
    layer.load_state_dict({"weight": mod.weight, "bias": mod.bias})
    assert layer.weight.dtype == np.float32
    np.testing.assert_array_equal(layer.weight, [1, 2, 3, 4])


def test_state_dict_roundtrip():
    rng = np.random.default_rng(11)
    a = fastgn.GroupNorm(3, 6, dtype=np.float64)
    randomize(a, rng)
    sd = a.state_dict()
    assert set(sd) == {"weight", "bias"}
    np.testing.assert_array_equal(sd["weight"], a.weight)
    np.testing.assert_array_equal(sd["bias"], a.bias)
    sd["weight"][:] = 0                  # copies, not views
    assert np.abs(a.weight).min() > 0

    b = fastgn.GroupNorm(3, 6, dtype=np.float64)
    sd = a.state_dict()
    b.load_state_dict(sd)
    sd["bias"][:] = 123.0                # the loaded arrays are copies too
    np.testing.assert_array_equal(b.weight, a.weight)
    np.testing.assert_array_equal(b.bias, a.bias)
    x = rng.standard_normal((2, 6, 4))
    np.testing.assert_array_equal(b(x), a(x))

    # lists and other dtypes are cast
    c = fastgn.GroupNorm(1, 3)
    c.load_state_dict({"weight": [1, 2, 3], "bias": np.zeros(3, np.int64)})
    assert c.weight.dtype == c.bias.dtype == np.float32
    np.testing.assert_array_equal(c.weight, [1, 2, 3])
    assert c.weight.flags.c_contiguous and c.weight.flags.writeable

    d = fastgn.GroupNorm(1, 3, affine=False)
    d.load_state_dict({})
    assert d.weight is None


@pytest.mark.backend_independent
@pytest.mark.parametrize("sd,exc,match", [
    ({"weight": np.ones(8)}, KeyError, "missing.*bias"),
    ({"bias": np.ones(8)}, KeyError, "missing.*weight"),
    ({}, KeyError, "missing"),
    ({"weight": np.ones(8), "bias": np.ones(8),
      "running_mean": np.ones(8)}, KeyError, "unexpected.*running_mean"),
    ({"weight": np.ones(8), "bias": np.ones(8), "gamma": np.ones(8)},
     KeyError, "gamma"),
    ({"weight": np.ones(7), "bias": np.ones(8)}, ValueError,
     r"weight.*\(8,\).*\(7,\)"),
    ({"weight": np.ones(8), "bias": np.ones((1, 8))}, ValueError,
     r"bias.*\(8,\).*\(1, 8\)"),
    ({"weight": np.ones(8), "bias": np.float32(0)}, ValueError,
     r"bias.*\(8,\).*\(\)"),
    ({"weight": np.array(["a"] * 8), "bias": np.ones(8)}, TypeError,
     "weight"),
])
def test_bad_state_dicts(sd, exc, match):
    layer = fastgn.GroupNorm(4, 8)
    randomize(layer, np.random.default_rng(12))
    before = layer.state_dict()
    with pytest.raises(exc, match=match):
        layer.load_state_dict(sd)
    # nothing was changed
    np.testing.assert_array_equal(layer.weight, before["weight"])
    np.testing.assert_array_equal(layer.bias, before["bias"])


@pytest.mark.backend_independent
def test_bad_state_dict_for_affine_false():
    layer = fastgn.GroupNorm(4, 8, affine=False)
    with pytest.raises(KeyError, match="unexpected.*affine=False"):
        layer.load_state_dict({"weight": np.ones(8), "bias": np.zeros(8)})
    with pytest.raises(KeyError, match="bias"):
        layer.load_state_dict({"bias": np.zeros(8)})
    assert layer.weight is None and layer.bias is None


@pytest.mark.backend_independent
def test_bad_state_dict_from_wrong_torch_module():
    torch = pytest.importorskip("torch")
    layer = fastgn.GroupNorm(2, 8)
    with pytest.raises(ValueError, match=r"\(8,\).*\(4,\)"):
        layer.load_state_dict(torch.nn.GroupNorm(2, 4).state_dict())
    with pytest.raises(KeyError, match="running_mean"):
        layer.load_state_dict(torch.nn.BatchNorm2d(8).state_dict())
