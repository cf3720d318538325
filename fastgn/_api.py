"""Public functions and all argument checking.

Everything a caller can get wrong is checked here, in Python, before a kernel
runs or an output is written. The kernels (``fastgn._kernels`` or its NumPy
mirror ``fastgn._reference``) then see only C-contiguous, native-order
float32/float64 arrays with consistent shapes.
"""

import operator
import os
import sys
import warnings
from math import isfinite, prod

import numpy as np

from . import _reference

__all__ = ["group_norm", "group_norm_backward"]

ACTIVATIONS = ("relu", "silu", "gelu")
_ACT_CODE = {None: 0, "relu": 1, "silu": 2, "gelu": 3}

MAX_THREADS = 1024

_F2, _F4, _F8 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


def _import_kernels():
    """Import the compiled kernels.

    A source checkout without a built extension can shadow the installed
    package (``python -m fastgn`` run from the repository root puts the root
    first on ``sys.path``). Then the installed build of the same version is
    used: its directory joins this package's ``__path__``.
    """
    try:
        from . import _kernels
        return _kernels
    except ImportError:
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "_version.py")) as f:
            version = f.read()
        for entry in sys.path:
            cand = os.path.join(os.path.abspath(entry or os.curdir), "fastgn")
            try:
                if cand == here or not any(
                        name.startswith("_kernels.") and
                        name.endswith((".so", ".pyd"))
                        for name in os.listdir(cand)):
                    continue
                with open(os.path.join(cand, "_version.py")) as f:
                    if f.read() != version:
                        continue
            except OSError:
                continue
            sys.modules[__package__].__path__.append(cand)
            from . import _kernels
            return _kernels
        raise


def _load_backend():
    """Pick the kernels named by ``FASTGN_BACKEND`` (read once, at import)."""
    choice = os.environ.get("FASTGN_BACKEND", "").strip().lower()
    if choice == "python":
        return _reference, "python"
    if choice not in ("", "auto", "cython"):
        raise ValueError(f"FASTGN_BACKEND must be 'python', 'cython' or "
                         f"'auto', got {choice!r}")
    try:
        _kernels = _import_kernels()
    except ImportError as exc:
        if choice == "cython":
            raise
        warnings.warn(f"fastgn: compiled kernels unavailable ({exc}); using "
                      f"the pure-NumPy fallback", RuntimeWarning, stacklevel=3)
        return _reference, "python"
    return _kernels, ("openmp" if _kernels.OPENMP else "serial")


_kern, BACKEND = _load_backend()


def _set_backend(name):
    """Switch backend ("python" or "cython"); returns the previous name.

    For tests and benchmarks, which run both backends in one process.
    """
    global _kern, BACKEND
    previous = BACKEND
    if name == "python":
        _kern, BACKEND = _reference, "python"
    else:
        _kern = _import_kernels()
        BACKEND = "openmp" if _kern.OPENMP else "serial"
    return previous


# ---------------------------------------------------------------- checking

def _as_input(a, what):
    """``a`` as an ndarray plus its (compute dtype, result dtype)."""
    arr = a if type(a) is np.ndarray else np.asarray(a)
    dt = arr.dtype
    if dt is _F4:                       # the common case, checked first
        return arr, _F4, _F4
    kind, size = dt.kind, dt.itemsize
    if kind == "f" and size <= 8:       # any byte order
        if size == 8:
            return arr, _F8, _F8
        if size == 4:
            return arr, _F4, _F4
        return arr, _F4, _F2
    if kind in "biu":
        return arr, _F8, _F8
    raise TypeError(f"{what} must be a float16/32/64, integer or bool array, "
                    f"got dtype {dt}")


def _check_int(value, name):
    if type(value) is int:
        return value
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an integer, got "
                    f"{type(value).__name__} {value!r}")


def _check_threads(num_threads):
    if num_threads is None:
        return _kern.max_threads()
    n = _check_int(num_threads, "num_threads")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"num_threads must be None or between 1 and "
                         f"{MAX_THREADS}, got {n}")
    return n


def _check_groups(num_groups, C):
    if type(num_groups) is int and 0 < num_groups <= C and \
            C % num_groups == 0:
        return num_groups
    G = _check_int(num_groups, "num_groups")
    if G <= 0:
        raise ValueError(f"num_groups must be positive, got {G}")
    if C % G or G > max(C, 1):      # (with C == 0 only one group)
        if C == 0:
            raise ValueError(f"input has C=0 channels: num_groups must be "
                             f"1, got num_groups={G}")
        raise ValueError(f"number of channels C={C} is not divisible by "
                         f"num_groups={G}")
    return G


def _check_eps(eps):
    if type(eps) is float and 0.0 <= eps < float("inf"):
        return eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(
            eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a real number, got "
                        f"{type(eps).__name__} {eps!r}")
    try:
        value = float(eps)
    except OverflowError:       # an int too large for a float
        value = float("inf")
    if not (isfinite(value) and value >= 0.0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return value


def _check_activation(activation):
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation must be None or one of {ACTIVATIONS}, "
                        f"got {type(activation).__name__} {activation!r}")
    code = _ACT_CODE.get(activation)
    if code is None:
        raise ValueError(f"unknown activation {activation!r}; valid ones are "
                         f"None, {', '.join(map(repr, ACTIVATIONS))}")
    return code


def _check_param(p, name, C, cdt):
    """weight/bias: None or shape (C,), cast to the compute dtype."""
    if p is None:
        return None
    arr = _as_array(p)
    if arr.dtype is cdt and arr.shape == (C,) and arr.flags.c_contiguous \
            and arr.flags.aligned:
        return arr
    if arr.dtype.kind not in "fiub" or (arr.dtype.kind == "f" and
                                          arr.dtype.itemsize > 8):
        raise TypeError(f"{name} must be a float16/32/64, integer or bool "
                        f"array, got dtype {arr.dtype}")
    if arr.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) to match C={C}, got "
                         f"{arr.shape}")
    return _kernel_ready(arr, cdt)


def _as_array(p):
    """weight/bias as the caller passed them, as an array (None stays)."""
    return p if p is None or type(p) is np.ndarray else np.asarray(p)


def _check_out(out, shape, rdt, name="out"):
    if out is None:
        return None
    if type(out) is np.ndarray and out.dtype is rdt and out.shape == shape \
            and out.flags.writeable:
        return out      # the common case in one test (0.23 -> 0.16 us)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got "
                        f"{type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}, expected {shape}")
    if out.dtype.kind != rdt.kind or out.dtype.itemsize != rdt.itemsize:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {rdt}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def _dims(shape, channels_last):
    """(N, C, HW) of an input of ``shape``; HW is the spatial size."""
    if channels_last:
        return shape[0], shape[-1], prod(shape[1:-1])
    return shape[0], shape[1], prod(shape[2:])


def _kernel_ready(a, cdt, nt=1):
    """``a`` if it is aligned, C-contiguous, dtype ``cdt`` (native), else a
    copy: the kernels may assume all three.

    The caller may write into the array exactly when ``result is not a``.
    """
    if _is_plain(a, cdt):
        return a
    if cdt is _F4 and _is_plain(a, _F2):
        res = np.empty(a.shape, dtype=_F4)
        _kern.convert(a, res, nt)       # parallel, vectorized
        return res
    return np.array(a, dtype=cdt, order="C", copy=True)


def _half_ready(x, out, share):
    """Where the compiled float16 path may write, or None when it cannot
    run (fallback backend; x not aligned, C-contiguous, native). ``share``
    bit 1: out may overlap x."""
    if not hasattr(_kern, "forward_half") or not _is_plain(x, _F2):
        return None
    if out is not None and _is_plain(out, _F2) and \
            (out is x or not share & 1):
        return out
    return np.empty(x.shape, dtype=_F2)


def _is_plain(a, dt):
    """a is C-contiguous, aligned, of dtype dt (native byte order)."""
    flags = a.flags
    return a.dtype == dt and flags.c_contiguous and flags.aligned


def _from_f32(y, out, rdt, nt):
    """The float32 result ``y`` as float16, into ``out`` when given."""
    if out is not None and _is_plain(out, _F2):
        _kern.convert(y, out, nt)
        return out
    res = np.empty(y.shape, dtype=_F2)
    _kern.convert(y, res, nt)
    if out is None:
        return res
    np.copyto(out, res)
    return out


# ---------------------------------------------------------------- forward

def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *,
               out=None, return_stats=False, channels_last=False,
               activation=None, num_threads=None):
    """Group Normalization over the (n, g) slabs of ``input``.

    Parameters
    ----------
    input : array_like, shape (N, C, *spatial), or (N, *spatial, C)
        Data; ndim >= 2. float16/32/64 keep their dtype (float16 is computed
        in float32); bool and integers are promoted to float64.
    num_groups : int
        Number of groups G; C must be divisible by G.
    weight, bias : array_like, shape (C,), optional
        Per-channel scale (gamma) and shift (beta).
    eps : float, default 1e-5
        Added to the variance; finite and >= 0.
    out : ndarray, optional
        Result array of the input's shape and the result dtype. May be the
        input itself (in place). Untouched if an exception is raised.
    return_stats : bool, default False
        Also return ``mean`` and ``rstd = 1/sqrt(var + eps)``, shape (N, G),
        float32 for float16/32 input, float64 otherwise.
    channels_last : bool, default False
        Input is (N, *spatial, C) (NHWC) instead of (N, C, *spatial).
    activation : {None, 'relu', 'silu', 'gelu'}
        Activation fused into the same pass ('gelu' is the exact erf form).
    num_threads : int, optional
        Threads to use; None means OpenMP's default.

    Returns
    -------
    y : ndarray
        ``out`` if given, else a new array. ``(y, mean, rstd)`` when
        ``return_stats`` is true.
    """
    x, cdt, rdt = _as_input(input, "input")
    shape = x.shape
    if len(shape) < 2:
        raise ValueError(f"input must have at least 2 dimensions (N, C, ...), "
                         f"got shape {shape}")
    N, C, HW = _dims(shape, channels_last)
    G = _check_groups(num_groups, C)
    # (the defaults skip their checks' calls: 0.2 us of a 2.5 us small call)
    w = None if weight is None else _check_param(weight, "weight", C, cdt)
    b = None if bias is None else _check_param(bias, "bias", C, cdt)
    eps = _check_eps(eps)
    act = 0 if activation is None else _check_activation(activation)
    nt = _check_threads(num_threads)
    share = 0   # bits 1, 2, 4: out may overlap x, weight, bias
    if out is not None:     # what the caller passed, not our copies
        out = _check_out(out, shape, rdt)
        share = _kern.overlaps(out, x, _as_array(weight), _as_array(bias))
        for bit, pname in ((2, "weight"), (4, "bias")):
            if share & bit:
                raise ValueError(f"out must not share memory with {pname}")

    mean = rstd = None
    if return_stats:
        mean = np.empty((N, G), dtype=cdt)
        rstd = np.empty((N, G), dtype=cdt)
    if x.size == 0:
        y = np.empty(shape, dtype=rdt) if out is None else out
        if return_stats:
            mean.fill(np.nan)   # statistics of an empty slab are undefined
            rstd.fill(np.nan)
            return y, mean, rstd
        return y

    y = _half_ready(x, out, share) if x.dtype == _F2 else None
    if y is not None:
        if _kern.forward_half(x, y, w, b, N, C, HW, G, eps,
                              bool(channels_last), act, mean, rstd, nt):
            if out is not None and y is not out:
                np.copyto(out, y)
                y = out
            return (y, mean, rstd) if return_stats else y
    xk = _kernel_ready(x, cdt, nt)
    if out is not None and _is_plain(out, cdt) and \
            (out is x or not share & 1):
        y = out         # written directly; ``out is x`` is exactly in place
    elif xk is not x:
        y = xk          # our own copy: normalize it in place
    else:
        y = np.empty(shape, dtype=cdt)
    _kern.forward(xk, y, w, b, N, C, HW, G, eps, bool(channels_last), act,
                  mean, rstd, nt)
    if y.dtype != rdt:          # float16 computed in float32
        y = _from_f32(y, out, rdt, nt)
    elif out is not None and y is not out:
        np.copyto(out, y, casting="unsafe")
        y = out
    if return_stats:
        return y, mean, rstd
    return y


# ---------------------------------------------------------------- backward

def group_norm_backward(grad_output, input, mean, rstd, num_groups,
                        weight=None, *, channels_last=False, num_threads=None):
    """Gradients of :func:`group_norm` (without activation).

    Parameters
    ----------
    grad_output : array_like
        Gradient of the loss w.r.t. the output, the input's shape.
    input : array_like
        The forward input, shape (N, C, *spatial) or (N, *spatial, C).
    mean, rstd : array_like, shape (N, G)
        Statistics returned by ``group_norm(..., return_stats=True)``.
    num_groups : int
        Number of groups used in the forward call.
    weight : array_like, shape (C,), optional
        The forward weight; None means ones.
    channels_last : bool, default False
        Layout of ``input`` and ``grad_output``.
    num_threads : int, optional
        Threads to use; None means OpenMP's default.

    Returns
    -------
    grad_input, grad_weight, grad_bias : ndarray
        Shapes: the input's, (C,) and (C,); grad_weight and grad_bias are
        returned even when ``weight`` is None (as if it were ones).

    Notes
    -----
    A fused activation is not differentiated: call this with the gradient
    taken before the activation.
    """
    x, xc, xr = _as_input(input, "input")
    dy, gc, gr = _as_input(grad_output, "grad_output")
    cdt = xc if xc is gc else np.promote_types(xc, gc)
    rdt = xr if xr is gr else np.promote_types(xr, gr)
    shape = x.shape
    if len(shape) < 2:
        raise ValueError(f"input must have at least 2 dimensions (N, C, ...), "
                         f"got shape {shape}")
    if dy.shape != shape:
        raise ValueError(f"grad_output has shape {dy.shape}, expected the "
                         f"input's shape {shape}")
    N, C, HW = _dims(shape, channels_last)
    G = _check_groups(num_groups, C)
    stats = []
    for s, sname in ((mean, "mean"), (rstd, "rstd")):
        sa, _, _ = _as_input(s, sname)
        if sa.shape != (N, G):
            raise ValueError(f"{sname} must have shape ({N}, {G}) = (N, "
                             f"num_groups), got {sa.shape}")
        stats.append(_kernel_ready(sa, cdt))
    w = None if weight is None else _check_param(weight, "weight", C, cdt)
    nt = _check_threads(num_threads)

    dw = np.empty(C, dtype=cdt)
    db = np.empty(C, dtype=cdt)
    if x.size == 0:
        dw.fill(0)
        db.fill(0)
    elif (rdt is _F2 and hasattr(_kern, "backward_half")
          and _is_plain(x, _F2) and _is_plain(dy, _F2)):
        # converted a unit at a time where the kernels can, else as a whole
        dx = np.empty(shape, dtype=_F2)
        if _kern.backward_half(dy, x, stats[0], stats[1], w, N, C, HW, G,
                               bool(channels_last), dx, dw, db, nt):
            return dx, dw.astype(rdt), db.astype(rdt)
    dx = np.empty(shape, dtype=cdt)
    if x.size:
        _kern.backward(_kernel_ready(dy, cdt, nt), _kernel_ready(x, cdt, nt),
                       stats[0], stats[1], w, N, C, HW, G,
                       bool(channels_last), dx, dw, db, nt)
    if rdt != cdt:
        return _from_f32(dx, None, rdt, nt), dw.astype(rdt), db.astype(rdt)
    return dx, dw, db
