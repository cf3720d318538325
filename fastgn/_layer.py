"""``GroupNorm``: a stateful layer around :func:`fastgn.group_norm`.

Holds the parameters, runs inference through the fused kernels, and offers a
``forward``/``backward`` pair for training (including a differentiated
activation) plus PyTorch-compatible ``state_dict``/``load_state_dict``.
"""

import math

import numpy as np

from . import _reference
from ._api import (_as_input, _check_activation, _check_eps,
                   _check_groups, _check_int, group_norm, group_norm_backward)

__all__ = ["GroupNorm"]

_DTYPES = (np.float16, np.float32, np.float64)

_erfc = np.frompyfunc(math.erfc, 1, 1)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _activation_grad(v, code):
    """Derivative of activation ``code`` at the float64 array ``v``."""
    if code == 1:                                   # relu (0 at v == 0)
        return (v > 0).astype(np.float64)
    if code == 2:                                   # silu
        with np.errstate(over="ignore"):
            s = 1.0 / (1.0 + np.exp(-v))
        return s * (1.0 + v * (1.0 - s))
    if code == 3:                                   # exact gelu
        cdf = 0.5 * _erfc(-v * _INV_SQRT2).astype(np.float64)
        return cdf + v * (_INV_SQRT_2PI * np.exp(-0.5 * v * v))
    return np.ones_like(v)


def _check_dtype(dtype):
    try:    # (np.dtype(None) would be float64: not accepted here)
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.type not in _DTYPES:
        raise TypeError(f"dtype must be float16, float32 or float64, got "
                        f"{dtype!r}")
    return dt


def _to_numpy(value):
    """A state-dict value (ndarray, array_like or torch tensor) as ndarray."""
    if hasattr(value, "detach"):                    # torch.Tensor, duck-typed
        value = value.detach().cpu()
        try:
            return value.numpy()
        except TypeError:                           # e.g. bfloat16
            return value.float().numpy()
    return np.asarray(value)


class GroupNorm:
    """Group Normalization layer, like ``torch.nn.GroupNorm``.

    Parameters
    ----------
    num_groups : int
        Number of groups G; must divide ``num_channels``.
    num_channels : int
        Number of channels C expected in the input.
    eps : float, default 1e-5
        Added to the variance; finite and >= 0.
    affine : bool, default True
        Learnable per-channel ``weight`` (ones) and ``bias`` (zeros).
    channels_last : bool, default False
        Inputs are (N, *spatial, C) instead of (N, C, *spatial).
    activation : {None, 'relu', 'silu', 'gelu'}
        Activation applied after the affine transform ('gelu' is exact).
    dtype : {float32, float16, float64}
        dtype of ``weight`` and ``bias``.

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
        The parameters (None when ``affine`` is false).
    grad_weight, grad_bias : ndarray of shape (C,) or None
        Set by :meth:`backward` (None when ``affine`` is false).

    Notes
    -----
    The result dtype follows the input, as in :func:`fastgn.group_norm`.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *,
                 channels_last=False, activation=None, dtype=np.float32):
        C = _check_int(num_channels, "num_channels")
        if C <= 0:
            raise ValueError(f"num_channels must be positive, got {C}")
        self.num_groups = _check_groups(num_groups, C)
        self.num_channels = C
        self.eps = _check_eps(eps)
        self._act = _check_activation(activation)
        self.activation = activation
        self.affine = bool(affine)
        self.channels_last = bool(channels_last)
        self.dtype = _check_dtype(dtype)
        if self.affine:
            self.weight = np.ones(C, dtype=self.dtype)
            self.bias = np.zeros(C, dtype=self.dtype)
        else:
            self.weight = self.bias = None
        self.grad_weight = self.grad_bias = None
        self._saved = None

    def __repr__(self):
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, "
                f"eps={self.eps!r}, affine={self.affine}, "
                f"channels_last={self.channels_last}, "
                f"activation={self.activation!r}, dtype={self.dtype.name})")

    def _check_channels(self, x):
        x = x if isinstance(x, np.ndarray) else np.asarray(x)
        if x.ndim >= 2:   # fewer dimensions: group_norm raises the error
            axis = -1 if self.channels_last else 1
            if x.shape[axis] != self.num_channels:
                layout = "last" if self.channels_last else "1"
                raise ValueError(
                    f"expected input with {self.num_channels} channels on "
                    f"axis {layout}, got {x.shape[axis]} (input shape "
                    f"{x.shape})")
        return x

    def __call__(self, x, *, out=None, num_threads=None):
        """Inference: ``group_norm`` with this layer's parameters.

        Parameters
        ----------
        x : array_like, shape (N, C, *spatial), or (N, *spatial, C)
            Input; C must equal ``num_channels``.
        out : ndarray, optional
            Result array (may be ``x`` itself), as in ``group_norm``.
        num_threads : int, optional
            Threads to use; None means OpenMP's default.

        Returns
        -------
        ndarray
            The normalized (and activated) input.
        """
        x = self._check_channels(x)
        return group_norm(x, self.num_groups, self.weight, self.bias,
                          self.eps, channels_last=self.channels_last,
                          activation=self.activation, out=out,
                          num_threads=num_threads)

    def forward(self, x, *, num_threads=None):
        """Like calling the layer, but saves what :meth:`backward` needs.

        The input is kept by reference: do not modify it before
        :meth:`backward`.

        Parameters
        ----------
        x : array_like
            Input, as for :meth:`__call__`.
        num_threads : int, optional
            Threads to use; None means OpenMP's default.

        Returns
        -------
        ndarray
            The layer's output.
        """
        x = self._check_channels(x)
        y, mean, rstd = group_norm(
            x, self.num_groups, self.weight, self.bias, self.eps,
            channels_last=self.channels_last, return_stats=True,
            num_threads=num_threads)
        pre = None
        if self._act:
            pre = y     # the pre-activation output, for the derivative
            y = _reference.activate(pre.astype(np.float64),
                                    self._act).astype(pre.dtype)
        weight = None if self.weight is None else self.weight.copy()
        self._saved = (x, pre, mean, rstd, weight)
        return y

    def backward(self, grad_output, *, num_threads=None):
        """Gradients for the last :meth:`forward` call.

        Sets ``grad_weight`` and ``grad_bias`` (dtype ``self.dtype``; None
        when ``affine`` is false).

        Parameters
        ----------
        grad_output : array_like
            Gradient of the loss w.r.t. the output, the input's shape.
        num_threads : int, optional
            Threads to use; None means OpenMP's default.

        Returns
        -------
        ndarray
            Gradient w.r.t. the input; dtype as for
            :func:`fastgn.group_norm_backward`.
        """
        if self._saved is None:
            raise RuntimeError("GroupNorm.backward() called before "
                               "forward(): call forward(x) first (calling "
                               "the layer does not save what backward needs)")
        x, pre, mean, rstd, weight = self._saved
        g = grad_output
        if pre is not None:
            g, gc, gr = _as_input(grad_output, "grad_output")
            if g.shape != pre.shape:
                raise ValueError(f"grad_output has shape {g.shape}, expected "
                                 f"the input's shape {pre.shape}")
            g = (np.asarray(g, dtype=np.float64) *
                 _activation_grad(pre.astype(np.float64), self._act))
            g = g.astype(gc)
        dx, dw, db = group_norm_backward(
            g, x, mean, rstd, self.num_groups, weight,
            channels_last=self.channels_last, num_threads=num_threads)
        if pre is not None:     # the dtype grad_output itself would give
            rdt = np.promote_types(_as_input(x, "input")[2], gr)
            if dx.dtype != rdt:
                dx = dx.astype(rdt)
        if self.affine:
            self.grad_weight = dw.astype(self.dtype, copy=False)
            self.grad_bias = db.astype(self.dtype, copy=False)
        else:
            self.grad_weight = self.grad_bias = None
        return dx

    def state_dict(self):
        """Copies of the parameters: ``{'weight': ..., 'bias': ...}``.

        Empty when ``affine`` is false.
        """
        if not self.affine:
            return {}
        return {"weight": self.weight.copy(), "bias": self.bias.copy()}

    def load_state_dict(self, state_dict):
        """Load parameters, e.g. from ``torch.nn.GroupNorm().state_dict()``.

        Values may be arrays, array_likes or torch tensors; they are cast to
        ``self.dtype``. Nothing is changed if an error is raised.

        Parameters
        ----------
        state_dict : mapping
            Exactly the keys 'weight' and 'bias' (none when ``affine`` is
            false), each of shape (num_channels,).

        Raises
        ------
        KeyError
            Missing or unexpected keys.
        TypeError, ValueError
            A value that is not a real array, or of the wrong shape.
        """
        keys = set(state_dict.keys())
        expected = {"weight", "bias"} if self.affine else set()
        missing = sorted(expected - keys)
        unexpected = sorted(map(str, keys - expected))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            note = " (the layer has affine=False)" if not self.affine else ""
            raise KeyError(f"GroupNorm.load_state_dict: {', '.join(parts)}"
                           f"{note}")
        new = {}
        C = self.num_channels
        for name in sorted(expected):
            arr = _to_numpy(state_dict[name])
            if arr.dtype.kind not in "fiub":
                raise TypeError(f"state_dict[{name!r}] must be a real "
                                f"array, got dtype {arr.dtype}")
            if arr.shape != (C,):
                raise ValueError(f"state_dict[{name!r}] must have shape "
                                 f"({C},) (num_channels), got {arr.shape}")
            new[name] = np.array(arr, dtype=self.dtype, order="C")
        if self.affine:
            self.weight, self.bias = new["weight"], new["bias"]

