"""Shared fixtures for the fastgn test suite.

* ``backend`` (autouse): every test runs once per backend, ids ``cython`` and
  ``python``. Mark a test ``@pytest.mark.backend_independent`` to run it only
  once, on whatever backend fastgn picked at import, or
  ``@pytest.mark.compiled_only`` to run it on the compiled backend only.
  If the compiled extension ``fastgn._kernels`` cannot be imported, the
  ``cython`` variants *fail* (the suite tests the installed, built package);
  with ``FASTGN_BACKEND=python`` in the environment they are skipped instead.
* ``oracle``: an independent float64 reference implementation (it does not use
  ``fastgn._reference``).
* ``torch``: the torch module, or a skip when torch is not installed.
"""

import contextlib
import importlib
import math
import os
import tracemalloc
import types
import zlib

import numpy as np
import pytest

import fastgn
import fastgn._api as _api

BACKENDS = ("cython", "python")

_FORCED = os.environ.get("FASTGN_BACKEND", "").strip().lower()

_KERNELS_ERROR = None
_KERNELS_FILE = None
if _FORCED != "python":
    try:
        _KERNELS_FILE = importlib.import_module("fastgn._kernels").__file__
    except ImportError as exc:      # pragma: no cover - depends on the build
        _KERNELS_ERROR = exc


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "backend_independent: run the test once, not once per backend")
    config.addinivalue_line(
        "markers",
        "compiled_only: run the test on the compiled backend only (a path "
        "the NumPy fallback does not have)")
    config.addinivalue_line(
        "markers", "huge: needs more than 8 GB of memory; skipped unless "
        "--run-huge is given")


def pytest_addoption(parser):
    parser.addoption("--run-huge", action="store_true", default=False,
                     help="run the tests marked 'huge' (> 8 GB of memory)")


def pytest_report_header(config):
    if _FORCED == "python":
        state = "not used (FASTGN_BACKEND=python)"
    elif _KERNELS_ERROR is None:
        state = _KERNELS_FILE
    else:
        state = f"NOT importable ({_KERNELS_ERROR})"
    where = os.path.dirname(fastgn.__file__)
    return [f"fastgn {fastgn.__version__} from {where}",
            f"fastgn._kernels: {state}; FASTGN_BACKEND={_FORCED or '(unset)'}"]


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("backend_independent"):
        return
    names = ("cython",) if metafunc.definition.get_closest_marker(
        "compiled_only") else BACKENDS
    metafunc.parametrize("backend", names, indirect=True, ids=names)


@pytest.fixture(autouse=True)
def backend(request):
    """Switch fastgn to the requested backend for one test, then restore."""
    name = getattr(request, "param", None)
    if name is None:                # backend_independent test
        yield _api.BACKEND
        return
    if name == "cython":
        if _FORCED == "python":
            pytest.skip("FASTGN_BACKEND=python: the compiled backend is "
                        "disabled for this run")
        if _KERNELS_ERROR is not None:
            pytest.fail(
                "the compiled extension fastgn._kernels cannot be imported "
                f"({_KERNELS_ERROR!r}). fastgn was imported from "
                f"{os.path.dirname(fastgn.__file__)}: either the extension "
                "is not built, or a source tree without a built extension "
                "is shadowing the installed package (run pytest from outside "
                "the source tree and without PYTHONPATH pointing at it). Set "
                "FASTGN_BACKEND=python to test only the NumPy fallback.",
                pytrace=False)
    previous = _api._set_backend(name)
    try:
        yield name
    finally:
        _api._set_backend(previous)   # any non-"python" name means compiled


@pytest.fixture
def rng(request):
    """A generator seeded from the test id: reproducible, varied per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


# ------------------------------------------------------------------ oracle

_verf = np.vectorize(math.erf, otypes=[np.float64])


def _act(v, activation):
    if activation is None:
        return v
    if activation == "relu":
        return np.maximum(v, 0.0)       # propagates NaN
    if activation == "silu":
        with np.errstate(over="ignore"):
            return v * (1.0 / (1.0 + np.exp(-v)))
    if activation == "gelu":
        return 0.5 * v * (1.0 + _verf(v * (1.0 / math.sqrt(2.0))))
    raise AssertionError(activation)


def _slabs(x, G, channels_last):
    """float64 copy of ``x`` as (N, G, group_size), channels first."""
    x = np.asarray(x, dtype=np.float64)
    if channels_last:
        x = np.moveaxis(x, -1, 1)
    N, C = x.shape[:2]
    return np.ascontiguousarray(x).reshape(N, G, -1), x.shape


def oracle_stats(x, G, eps=1e-5, channels_last=False):
    """(mean, var, rstd) per (n, g) slab, float64, two-pass."""
    xs, _ = _slabs(x, G, channels_last)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        n = xs.shape[-1]
        mean = xs.sum(axis=-1) / n
        # second pass on the deviations (plus the usual correction term)
        dev = xs - mean[..., None]
        mean = mean + dev.sum(axis=-1) / n
        dev = xs - mean[..., None]
        var = np.einsum("ngk,ngk->ng", dev, dev) / n
        rstd = 1.0 / np.sqrt(var + eps)
    return mean, var, rstd


def oracle(x, G, w=None, b=None, eps=1e-5, channels_last=False,
           activation=None):
    """float64 Group Norm: returns (y, mean, rstd)."""
    xs, cf_shape = _slabs(x, G, channels_last)
    mean, _, rstd = oracle_stats(x, G, eps, channels_last)
    C = cf_shape[1]
    with np.errstate(invalid="ignore", over="ignore"):
        y = ((xs - mean[..., None]) * rstd[..., None]).reshape(cf_shape)
        bshape = (1, C) + (1,) * (len(cf_shape) - 2)
        if w is not None:
            y = y * np.asarray(w, dtype=np.float64).reshape(bshape)
        if b is not None:
            y = y + np.asarray(b, dtype=np.float64).reshape(bshape)
        y = _act(y, activation)
    if channels_last:
        y = np.moveaxis(y, 1, -1)
    return np.ascontiguousarray(y), mean, rstd


@pytest.fixture(scope="session", name="oracle")
def oracle_fixture():
    return oracle


@pytest.fixture(scope="session", name="oracle_stats")
def oracle_stats_fixture():
    return oracle_stats


@contextlib.contextmanager
def _traced_peak():
    """Record the peak of Python-tracked allocations inside the block."""
    rec = types.SimpleNamespace(peak=None)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield rec
        rec.peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()


@pytest.fixture(scope="session")
def traced_peak():
    """``with traced_peak() as t: ...`` then ``t.peak`` bytes (NumPy's
    array allocations are tracked by tracemalloc)."""
    return _traced_peak


def _numeric_grad(f, a, h):
    """Central differences of the scalar f() with respect to the array a,
    perturbing a in place one element at a time (restored afterwards)."""
    g = np.empty(a.shape, dtype=np.float64)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        up = f()
        a[i] = old - h
        down = f()
        a[i] = old
        g[i] = (up - down) / (2 * h)
    return g


@pytest.fixture(scope="session")
def numeric_grad():
    """``numeric_grad(f, a, h)``: float64 finite-difference gradient."""
    return _numeric_grad
