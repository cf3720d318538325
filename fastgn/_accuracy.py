"""``python -m fastgn accuracy``: float32 error against a float64 oracle.

The README's accuracy table comes from here: x = offset + randn in float32,
and integers 0..255 as float32 (image data: values of few significant bits,
whose float32 sums round alike), each contender's output compared with the
float64 two-pass result computed on the same float32 values.
"""

import numpy as np

from ._api import group_norm


def _oracle(x64, G):
    N = x64.shape[0]
    g = x64.reshape(N, G, -1)
    mu = g.mean(-1, keepdims=True)
    var = ((g - mu) ** 2).mean(-1, keepdims=True)
    return ((g - mu) / np.sqrt(var + 1e-5)).reshape(x64.shape)


def _numpy_f32(x, G):
    """The textbook NumPy expression evaluated in float32."""
    N = x.shape[0]
    g = x.reshape(N, G, -1)
    mu = g.mean(-1, keepdims=True)
    var = g.var(-1, keepdims=True)
    return ((g - mu) / np.sqrt(var + np.float32(1e-5))).reshape(x.shape)


def contenders():
    yield "fastgn", lambda x, G: group_norm(x, G)
    yield "NumPy float32", _numpy_f32
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return
    yield (f"PyTorch {torch.__version__}",
           lambda x, G: F.group_norm(torch.from_numpy(x), G).numpy())


def run(offsets=(0.0, 1e2, 1e4), shape=(4, 32, 32, 32), G=8, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for name, fn in contenders():
        errs = []
        for off in offsets + (None,):
            if off is None:
                x = rng.integers(0, 256, shape).astype(np.float32)
            else:
                x = (off + rng.standard_normal(shape)).astype(np.float32)
            with np.errstate(all="ignore"):
                y = np.asarray(fn(x, G), dtype=np.float64)
            errs.append(float(np.max(np.abs(y - _oracle(
                x.astype(np.float64), G)))))
        rows.append((name, errs))
    head = ["contender"] + [f"offset {o:g}" for o in offsets] + [
        "integers 0..255"]
    print(f"max |y - y_float64| on float32 offset + randn and on integers, "
          f"shape {shape}, G={G}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, errs in rows:
        print(f"| {name} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
    return 0
