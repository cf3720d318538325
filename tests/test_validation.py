"""Argument checking: exception type, a message naming the offending value,
and nothing written to ``out`` (or the input) when a call is rejected.

Runs on both backends: the checks must happen before any kernel runs.
"""

import copy
import re

import numpy as np
import pytest

import fastgn

gn = fastgn.group_norm
SENTINEL = -4242.5
_AUTO = object()


def _result_dtype(x):
    dt = getattr(x, "dtype", None)
    if dt is not None and dt.kind == "f" and dt.itemsize <= 8:
        return dt.newbyteorder("=")
    return np.dtype(np.float64)


def reject(exc, patterns, x, num_groups=2, *, out=_AUTO, **kwargs):
    """Call group_norm, expect ``exc`` whose message matches every regex in
    ``patterns``, and check that ``out`` and ``x`` were left alone.

    ``out`` defaults to a valid-looking output array filled with a sentinel.
    """
    if out is _AUTO:
        out = np.full(np.shape(x), SENTINEL, dtype=_result_dtype(x))
    out_before = copy.deepcopy(out)
    x_before = x.copy() if isinstance(x, np.ndarray) else None
    if out is not None:
        kwargs["out"] = out
    with pytest.raises(exc) as info:
        gn(x, num_groups, **kwargs)
    msg = str(info.value)
    for pat in patterns:
        assert re.search(pat, msg), f"{pat!r} not found in message {msg!r}"
    if isinstance(out, np.ndarray):
        np.testing.assert_array_equal(out, out_before,
                                      err_msg="out was written to")
    elif out is not None:
        assert out == out_before
    if x_before is not None:
        np.testing.assert_array_equal(x, x_before, err_msg="input modified")
    return info


def x_(shape=(2, 6, 5), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ================================================================ ValueError

@pytest.mark.parametrize("x", [np.array(1.5, np.float32), np.ones(5),
                               np.ones(0), np.array(3)],
                         ids=["0d", "1d", "1d_empty", "0d_int"])
def test_too_few_dimensions(x):
    reject(ValueError, [re.escape(str(x.shape))], x, 1)


def test_too_few_dimensions_list_and_scalar():
    reject(ValueError, [re.escape("(3,)")], [1.0, 2.0, 3.0], 1, out=None)
    reject(ValueError, [re.escape("()")], 2.5, 1, out=None)


@pytest.mark.parametrize("G", [0, -2, np.int64(-1)], ids=str)
def test_num_groups_not_positive(G):
    reject(ValueError, ["num_groups", rf"(?<![\d.]){int(G)}(?![\d.])"],
           x_(), G)


@pytest.mark.parametrize("shape,G,channels_last", [
    ((2, 6, 5), 4, False), ((2, 6, 5), 7, False), ((2, 5, 6), 4, True),
    ((3, 10), 3, False)])
def test_channels_not_divisible(shape, G, channels_last):
    C = shape[-1] if channels_last else shape[1]
    reject(ValueError, ["num_groups", rf"\b{C}\b", rf"\b{G}\b"],
           x_(shape), G, channels_last=channels_last)


def test_num_groups_huge_is_value_error_not_crash():
    G = 2 ** 70
    reject(ValueError, [str(G)], x_(), G)
    reject(ValueError, [str(2 ** 63)], x_(), np.uint64(2 ** 63))


@pytest.mark.parametrize("name", ["weight", "bias"])
@pytest.mark.parametrize("pshape", [(5,), (7,), (12,), (6, 1), (1, 6), ()],
                         ids=str)
def test_param_wrong_shape(name, pshape):
    p = np.ones(pshape, np.float32)
    reject(ValueError, [name, re.escape(str(pshape))], x_(), 2, **{name: p})


def test_param_shape_checked_against_channels_last_C():
    x = x_((2, 5, 6))           # C = 6 when channels_last, 5 otherwise
    gn(x, 2, np.ones(6), channels_last=True)
    reject(ValueError, ["weight", re.escape("(5,)")], x, 2,
           weight=np.ones(5), channels_last=True)


@pytest.mark.parametrize("eps,pat", [
    (-1e-3, "-0.001"), (-1, "-1"), (np.float32(-0.5), "-0.5"),
    (float("nan"), "(?i)nan"), (np.nan, "(?i)nan"), (float("inf"), "(?i)inf"),
    (-np.inf, "(?i)-inf")], ids=["neg", "neg_int", "neg_f32", "nan",
                                  "np_nan", "inf", "-inf"])
def test_eps_invalid(eps, pat):
    reject(ValueError, ["eps", pat], x_(), 2, eps=eps)


@pytest.mark.parametrize("oshape", [(2, 6, 4), (2, 5, 6), (6, 5), (1, 2, 6, 5),
                                    (2, 30)], ids=str)
def test_out_wrong_shape(oshape):
    out = np.full(oshape, SENTINEL, np.float32)
    reject(ValueError, ["out", re.escape(str(oshape))], x_(), 2, out=out)


def test_out_read_only():
    out = np.full((2, 6, 5), SENTINEL, np.float32)
    out.flags.writeable = False
    reject(ValueError, ["out", "(?i)read.?only|writ"], x_(), 2, out=out)


def test_in_place_on_read_only_input():
    x = x_()
    x.flags.writeable = False
    reject(ValueError, ["out", "(?i)read.?only|writ"], x, 2, out=x)


def test_eps_int_too_large_for_float():
    reject(ValueError, ["eps", "1000000"], x_(), 2, eps=10 ** 400)


@pytest.mark.parametrize("nt", [1025, 2 ** 70], ids=str)
def test_num_threads_too_many(nt):
    reject(ValueError, ["num_threads", str(nt)], x_(), 2, num_threads=nt)


@pytest.mark.parametrize("nt", [0, -1, np.int32(-3)], ids=str)
def test_num_threads_below_one(nt):
    reject(ValueError, ["num_threads", rf"(?<![\d.]){int(nt)}(?![\d.])"],
           x_(), 2, num_threads=nt)


@pytest.mark.parametrize("act", ["tanh", "gelu_tanh", "sigmoid", ""])
def test_unknown_activation(act):
    pats = ["relu", "silu", "gelu"]
    if act:
        pats.append(re.escape(act))
    reject(ValueError, pats, x_(), 2, activation=act)


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_out_sharing_memory_with_param(name):
    buf = np.full(2 * 6 * 5 + 3, SENTINEL, np.float32)
    out = buf[:60].reshape(2, 6, 5)
    p = buf[55:61]                          # overlaps the end of out
    assert np.shares_memory(out, p)
    before = buf.copy()
    reject(ValueError, ["out", name], x_(), 2, out=out, **{name: p})
    np.testing.assert_array_equal(buf, before)


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_in_place_with_param_inside_input(name):
    x = x_()
    p = x[0, :, 0]                          # a strided view into x itself
    reject(ValueError, ["out", name], x, 2, out=x, **{name: p})


def test_rejected_in_place_call_leaves_input_alone():
    x = x_()
    reject(ValueError, ["weight"], x, 2, weight=np.ones(5), out=x)


# ================================================================ TypeError

@pytest.mark.parametrize("G", [2.0, np.float64(2.0), True, np.bool_(True),
                               "2", None, [2]],
                         ids=["float", "np_float", "bool", "np_bool", "str",
                              "None", "list"])
def test_num_groups_not_integer(G):
    reject(TypeError, ["num_groups", re.escape(str(G))], x_(), G)


@pytest.mark.parametrize("G", [np.int64(2), np.int32(2), np.uint8(2),
                               np.intp(2)], ids=lambda g: type(g).__name__)
def test_numpy_integer_num_groups_accepted(G):
    x = x_()
    np.testing.assert_array_equal(gn(x, G), gn(x, 2))
    assert gn(x, G, return_stats=True)[1].shape == (2, 2)


_BAD_DTYPES = [np.complex64, np.complex128, "U3", "S3", "datetime64[s]",
               "timedelta64[ms]"]
if np.dtype(np.longdouble).itemsize > 8:
    _BAD_DTYPES.append(np.longdouble)


@pytest.mark.parametrize("dtype", _BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_unsupported_input_dtype(dtype):
    x = np.zeros((2, 4, 3), dtype=dtype)
    reject(TypeError, [re.escape(str(x.dtype))], x, 2)


def test_object_array_of_floats_rejected():
    x = np.empty((2, 4, 3), dtype=object)
    x[...] = 1.5
    reject(TypeError, ["object"], x, 2)


def test_complex_list_rejected():
    reject(TypeError, ["complex"], [[1j, 2.0], [3.0, 4.0]], 1, out=None)


@pytest.mark.parametrize("xdt,odt", [
    (np.float32, np.float64), (np.float64, np.float32),
    (np.float16, np.float32), (np.float32, np.float16),
    (np.int32, np.int32), (np.int64, np.float32), (np.float32, np.int32),
    (np.float32, np.complex64)], ids=lambda d: np.dtype(d).name)
def test_out_wrong_dtype(xdt, odt):
    x = x_(dtype=xdt) if np.dtype(xdt).kind == "f" else np.ones((2, 6, 5), xdt)
    out = np.full(x.shape, SENTINEL).astype(odt)
    reject(TypeError, ["out", np.dtype(odt).name], x, 2, out=out)


@pytest.mark.parametrize("out", [[0.0] * 60, (1.0, 2.0), "out"],
                         ids=["list", "tuple", "str"])
def test_out_not_ndarray(out):
    info = reject(TypeError, ["out"], x_(), 2, out=out)
    assert type(out).__name__ in str(info.value)


@pytest.mark.parametrize("eps", ["1e-5", b"1e-5"], ids=["str", "bytes"])
def test_eps_not_a_number(eps):
    reject(TypeError, ["eps", "1e-5"], x_(), 2, eps=eps)


@pytest.mark.parametrize("name", ["weight", "bias"])
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, object],
                         ids=lambda d: np.dtype(d).name)
def test_param_bad_dtype(name, dtype):
    p = np.ones(6, dtype=dtype)
    reject(TypeError, [name, np.dtype(dtype).name], x_(), 2, **{name: p})


@pytest.mark.parametrize("nt", [2.0, True, "2"], ids=["float", "bool", "str"])
def test_num_threads_not_integer(nt):
    reject(TypeError, ["num_threads", re.escape(str(nt))], x_(), 2,
           num_threads=nt)


@pytest.mark.parametrize("act", [1, True, ["relu"]],
                         ids=["int", "bool", "list"])
def test_activation_not_a_string(act):
    reject(TypeError, ["activation", re.escape(str(act))], x_(), 2,
           activation=act)


# ================================================================ backward

def _fwd(shape=(2, 6, 5), G=3):
    x = x_(shape, np.float64)
    y, mean, rstd = gn(x, G, return_stats=True)
    return x, mean, rstd


def test_backward_valid_call_works():
    x, mean, rstd = _fwd()
    dx, dw, db = fastgn.group_norm_backward(np.ones_like(x), x, mean, rstd, 3)
    assert dx.shape == x.shape and dw.shape == (6,) and db.shape == (6,)


@pytest.mark.parametrize("gshape", [(2, 6, 4), (2, 5, 6), (60,), (1, 2, 6, 5)],
                         ids=str)
def test_backward_grad_output_shape_mismatch(gshape):
    x, mean, rstd = _fwd()
    with pytest.raises(ValueError) as info:
        fastgn.group_norm_backward(np.ones(gshape), x, mean, rstd, 3)
    assert "grad_output" in str(info.value)
    assert str(gshape) in str(info.value)


@pytest.mark.parametrize("which", ["mean", "rstd"])
@pytest.mark.parametrize("sshape", [(2, 2), (3, 3), (6,), (2, 3, 1), (3, 2)],
                         ids=str)
def test_backward_stats_wrong_shape(which, sshape):
    x, mean, rstd = _fwd()
    stats = {"mean": mean, "rstd": rstd}
    stats[which] = np.ones(sshape)
    with pytest.raises(ValueError) as info:
        fastgn.group_norm_backward(np.ones_like(x), x, stats["mean"],
                                   stats["rstd"], 3)
    assert which in str(info.value)
    assert str(sshape) in str(info.value)
