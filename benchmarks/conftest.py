"""Fixtures for the pytest-benchmark suite (see test_bench.py).

The arrays and helpers come from ``fastgn._bench`` so that these benchmarks
and ``python -m fastgn bench`` time exactly the same inputs.
"""

import functools

import numpy as np
import pytest

from fastgn import _api
from fastgn._bench import load_kernels, load_torch, make_inputs, python_backend

KERNELS = load_kernels()            # None when the extension is not built
TORCH, TORCH_NOTE = load_torch()


@functools.lru_cache(maxsize=4)     # the largest shape is 32 MiB per array
def _cached_inputs(shape, G, dtype):
    arrays = make_inputs(shape, G, dtype)
    for a in arrays:
        a.flags.writeable = False   # shared between tests: never mutate
    return arrays


@pytest.fixture
def arrays():
    """``arrays(shape, G, dtype="float32") -> (x, weight, bias, dy)``.

    Cached and read-only; copy before writing into them.
    """
    def get(shape, G, dtype="float32"):
        return _cached_inputs(tuple(shape), G, np.dtype(dtype).name)
    return get


@pytest.fixture(autouse=True)
def fastgn_backend():
    """Run every benchmark on the compiled kernels when they are built.

    Yields the backend name ('openmp', 'serial', or 'python' when the
    extension is missing, in which case the fastgn rows equal the reference).
    """
    previous = _api._set_backend("python" if KERNELS is None else "cython")
    try:
        yield _api.BACKEND
    finally:
        _api._set_backend(previous)


@pytest.fixture
def reference_backend(fastgn_backend):
    """Switch fastgn to the pure-NumPy reference kernels for one test."""
    with python_backend():
        yield


@pytest.fixture
def torch_module():
    """The torch module; skips the test when torch does not import."""
    if TORCH is None:
        pytest.skip(TORCH_NOTE)
    return TORCH
