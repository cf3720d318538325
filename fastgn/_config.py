"""Build and run-time configuration report."""

import platform
import sys

import numpy as np

from . import _api
from ._version import __version__


def show_config(mode="stdout"):
    """Print, or return, how fastgn was built and what it will run.

    Parameters
    ----------
    mode : {'stdout', 'dicts'}, default 'stdout'
        'stdout' prints a report; 'dicts' returns it as a dict instead
        (as ``numpy.show_config`` does).

    Returns
    -------
    dict or None
        Keys: version, backend ('openmp', 'serial' or 'python'),
        openmp_version (the ``_OPENMP`` date, 0 if none), max_threads,
        simd (the vector code the kernels run on this CPU, 'none' for the
        NumPy backend), compile_args, python, numpy, machine.
    """
    kern = _api._kern
    info = {
        "version": __version__,
        "backend": _api.BACKEND,
        "openmp_version": int(kern.OPENMP_VERSION),
        "max_threads": int(kern.max_threads()),
        "simd": str(getattr(kern, "SIMD", "none")),
        "compile_args": list(getattr(kern, "COMPILE_ARGS", [])),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
    }
    if mode == "dicts":
        return info
    if mode != "stdout":
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    width = max(map(len, info))
    for key, value in info.items():
        if isinstance(value, list):
            value = " ".join(value) or "-"
        print(f"{key:<{width}} : {value}")
    return None
