"""The C header compiles to register-resident vector code for every ISA.

GCC keeps a GNU C vector type wider than the target's registers in memory
and expands each operation on it piecewise through the stack (64-byte
vectors in AVX2 code ran 2-5x slower than plain loops). It says so under
-Wvector-operation-performance: the header must compile without that
warning for the dispatched build and for single-ISA builds.
"""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HEADER = Path(__file__).resolve().parent.parent / "fastgn" / "_simd.h"

pytestmark = [
    pytest.mark.backend_independent,
    pytest.mark.skipif(
        shutil.which("gcc") is None or not HEADER.exists()
        or platform.machine() != "x86_64" or sys.platform != "linux",
        reason="needs gcc, the source tree and x86-64 Linux"),
]


@pytest.mark.parametrize("flags", [
    [],                                          # the wheel: dispatched
    ["-DFASTGN_CPU_BY_FEATURES"],                # GCC 11's level tests
    ["-DFASTGN_NO_CLONES"],                      # baseline x86-64 only
    ["-DFASTGN_NO_CLONES", "-march=x86-64-v3"],  # AVX2 native build
    ["-DFASTGN_NO_CLONES", "-march=x86-64-v4"],  # AVX-512 native build
])
def test_vector_types_fit_registers(tmp_path, flags):
    src = tmp_path / "simd.c"
    src.write_text(f'#include "{HEADER}"\n')
    cmd = ["gcc", "-O3", "-fno-math-errno", "-fopenmp", "-c", str(src),
           "-o", str(tmp_path / "simd.o"),
           "-Werror=vector-operation-performance", *flags]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
