"""Build the fastgn Cython extension, with OpenMP when the compiler has it.

Environment switches (all off by default):
  FASTGN_NO_OPENMP=1  build the serial extension (no -fopenmp)
  FASTGN_NATIVE=1     add -march=native (the wheel then runs only on CPUs
                      like the build machine's)
  FASTGN_DEBUG=1      Cython bounds/wraparound checks on, -O1 -g
  FASTGN_SANITIZE=1   AddressSanitizer + UBSan (-fsanitize=address,undefined)
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _openmp_flags(compiler):
    """(compile, link) flags that build and link an OpenMP probe, else None."""
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    flags = ["-fopenmp"]
    probe = textwrap.dedent("""
        #include <omp.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            return n > 0 && omp_get_max_threads() > 0 ? 0 : 1;
        }
        """)
    tmp = tempfile.mkdtemp(prefix="fastgn-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(probe)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objs, "probe", output_dir=tmp,
                                 extra_postargs=flags)
        subprocess.run([os.path.join(tmp, "probe")], check=True)
    except Exception as exc:  # any failure means: no usable OpenMP
        warnings.warn(f"fastgn: OpenMP probe failed ({exc}); building the "
                      f"serial extension")
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return flags, flags


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        # The flags come from the environment, which the build directory
        # does not record: always recompile rather than reuse stale objects.
        self.force = True

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        # -fno-math-errno: the kernels never read errno, and without it GCC
        # keeps sqrt scalar (a branch to libm for errno) in vector loops.
        cflags = ["/O2"] if msvc else ["-O3", "-fno-math-errno"]
        lflags = []
        if _flag("FASTGN_DEBUG"):
            cflags = ["-O1", "-g"] if not msvc else ["/Od"]
        if _flag("FASTGN_SANITIZE") and not msvc:
            san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                   "-g"]
            cflags += san
            lflags += san
        if _flag("FASTGN_NATIVE") and not msvc:
            # opt-in only; one copy of the kernels for this CPU (the
            # per-level copies need the baseline target to compile)
            cflags += ["-march=native", "-DFASTGN_NO_CLONES"]
        omp = None
        if _flag("FASTGN_NO_OPENMP"):
            warnings.warn("fastgn: FASTGN_NO_OPENMP set; building the serial "
                          "extension")
        else:
            omp = _openmp_flags(self.compiler)
        if omp is not None:
            cflags += omp[0]
            lflags += omp[1]
        elif not msvc:
            cflags.append("-fopenmp-simd")  # vectorize reductions, no runtime
        for ext in self.extensions:
            ext.extra_compile_args = cflags
            ext.extra_link_args = lflags
            ext.define_macros.append(
                ("FASTGN_COMPILE_ARGS", '"%s"' % " ".join(cflags)))
        super().build_extensions()


debug = _flag("FASTGN_DEBUG")
directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": debug,
    "initializedcheck": debug,
    "cdivision": True,      # C float semantics (1/0 = inf) are intended
    "embedsignature": True,
}

extensions = [
    Extension(
        "fastgn._kernels",
        ["fastgn/_kernels.pyx"],
        include_dirs=[numpy.get_include(), "fastgn"],
        depends=["fastgn/_simd.h", "fastgn/_openmp.pxd"],
        libraries=[] if sys.platform == "win32" else ["m"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    # force: the directives depend on FASTGN_DEBUG, which Cython's
    # timestamp check on the generated C file does not see.
    ext_modules=cythonize(extensions, compiler_directives=directives,
                          force=True),
    cmdclass={"build_ext": BuildExt},
)
