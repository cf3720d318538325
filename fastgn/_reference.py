"""Pure-NumPy kernels: the fallback backend and the tests' oracle.

Each function mirrors a private kernel of ``fastgn._kernels`` with the same
signature, so ``fastgn._api`` can call either. Arguments arrive validated:
C-contiguous, native byte order, float32 or float64, shapes consistent.
Everything is computed in float64 with two-pass (corrected) statistics and
written into the caller's output arrays.
"""

import math

import numpy as np

OPENMP = False
OPENMP_VERSION = 0
SIMD = "none"

ACTIVATIONS = {None: 0, "relu": 1, "silu": 2, "gelu": 3}

_erfc = np.frompyfunc(math.erfc, 1, 1)


def max_threads():
    return 1


def overlaps(out, x, weight, bias):
    """Bits 1, 2, 4: x, weight, bias (None: no bit) may share memory with
    ``out``."""
    return sum(bit for bit, a in ((1, x), (2, weight), (4, bias))
               if a is not None and np.may_share_memory(out, a))


def convert(src, dst, num_threads):
    """dst[...] = src between float16 and float32 (NumPy's rounding)."""
    np.copyto(dst, src, casting="unsafe")


def _grouped(a, N, C, HW, G, channels_last):
    """View ``a`` as (N, G, Cg, HW) or (N, HW, G, Cg), plus the slab axes."""
    Cg = C // G
    if channels_last:
        return a.reshape(N, HW, G, Cg), (1, 3)
    return a.reshape(N, G, Cg, HW), (2, 3)


def _per_channel(v, G, channels_last):
    Cg = v.shape[0] // G
    v = np.asarray(v, dtype=np.float64)
    return v.reshape(1, 1, G, Cg) if channels_last else v.reshape(1, G, Cg, 1)


def _per_slab(s, channels_last):
    return s[:, None, :, None] if channels_last else s[:, :, None, None]


def activate(v, activation):
    """Apply activation code ``activation`` to the float64 array ``v``."""
    if activation == 1:
        return np.where(v < 0, 0.0, v)
    if activation == 2:
        with np.errstate(over="ignore"):
            return v / (1.0 + np.exp(-v))
    if activation == 3:     # erfc, not 1 + erf: keeps the digits of v < 0
        return 0.5 * v * _erfc(v / -math.sqrt(2.0)).astype(np.float64)
    return v


def forward(x, y, weight, bias, N, C, HW, G, eps, channels_last, activation,
            mean, rstd, num_threads):
    """y = act(weight * (x - mean) / sqrt(var + eps) + bias) per (n, g) slab."""
    xg, axes = _grouped(np.asarray(x, dtype=np.float64), N, C, HW, G,
                        channels_last)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mu = xg.mean(axis=axes, keepdims=True)
        d = xg - mu
        # Corrected two-pass: a constant slab gets its exact value as mean.
        mu = mu + d.mean(axis=axes, keepdims=True)
        d = xg - mu
        var = (d * d).mean(axis=axes, keepdims=True)
        rs = 1.0 / np.sqrt(var + eps)
        out = d * rs
        if weight is not None:
            out = out * _per_channel(weight, G, channels_last)
        if bias is not None:
            out = out + _per_channel(bias, G, channels_last)
        out = activate(out, activation)
    y[...] = out.reshape(y.shape)
    if mean is not None:
        mean[...] = mu.reshape(N, G)
        rstd[...] = rs.reshape(N, G)


def backward(dy, x, mean, rstd, weight, N, C, HW, G, channels_last,
             dx, dweight, dbias, num_threads):
    """Gradients of group_norm (no activation) w.r.t. input, weight, bias."""
    f8 = np.float64
    xg, axes = _grouped(np.asarray(x, dtype=f8), N, C, HW, G, channels_last)
    gg, _ = _grouped(np.asarray(dy, dtype=f8), N, C, HW, G, channels_last)
    mu = _per_slab(np.asarray(mean, dtype=f8), channels_last)
    rs = _per_slab(np.asarray(rstd, dtype=f8), channels_last)
    with np.errstate(invalid="ignore", over="ignore"):
        xhat = (xg - mu) * rs
        red = (0, 1) if channels_last else (0, 3)
        dbias[...] = gg.sum(axis=red).reshape(C)
        dweight[...] = (gg * xhat).sum(axis=red).reshape(C)
        gy = gg if weight is None else gg * _per_channel(weight, G,
                                                         channels_last)
        m1 = gy.mean(axis=axes, keepdims=True)
        m2 = (gy * xhat).mean(axis=axes, keepdims=True)
        dx[...] = (rs * (gy - m1 - xhat * m2)).reshape(dx.shape)
