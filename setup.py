"""Builds fastscore and its extension fastscore._C with torch.utils.cpp_extension + ninja.

The C++ CPU sources are always built; the CUDA sources (csrc/cuda/*.cu) too when torch
has CUDA and nvcc is found. That choice is made inside build_extensions(), never at
import, so a machine without CUDA (or without a compiler, with FASTSCORE_PYTHON_ONLY=1)
still installs. Environment:
  FASTSCORE_PYTHON_ONLY=1   no extension: the pure-Python reference (and Triton) backends
  FASTSCORE_CUDA=0|1        force the CUDA sources off / on (default: auto)
  DEBUG=1                   -O0 -g
  MAX_JOBS, TORCH_CUDA_ARCH_LIST   honoured by torch's ninja build

Project metadata (name, version, dependencies, extras) is in pyproject.toml. torch is the
user's, not a build requirement: install it first, then pip install --no-build-isolation .
"""

import glob
import importlib.util
import os
import sys

import setuptools
from setuptools import setup

_NO_TORCH = (
    "fastscore: this build cannot import torch, which it compiles against and never installs itself "
    "(an isolated build cannot see yours): install torch first, then pip install --no-build-isolation ."
)


def _flag(name, default="0"):
    return os.environ.get(name, default).lower() in ("1", "true", "yes", "on")


def build_extensions():
    if _flag("FASTSCORE_PYTHON_ONLY"):
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        sys.exit(_NO_TORCH)

    debug = _flag("DEBUG")
    # No -march=native: the noise generator picks its AVX-512 / AVX2 / scalar kernels at
    # run time (csrc/cpu_stream_simd.h; each SIMD function carries its own target
    # attribute); -ffp-contract=off keeps a*b+c from becoming an fma, which would change
    # the bits that every backend must agree on.
    # -g0: Python's own CFLAGS carry -g, whose debug info of the per-ISA loop templates made
    # the library ~50 MB and the build a quarter slower; DEBUG=1 builds -O0 -g.
    cxx = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    # -fopenmp: at::parallel_for is a header template; without it the loop runs serially.
    cxx += ["-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
    sources = sorted(glob.glob("csrc/*.cpp"))
    want_cuda = os.environ.get("FASTSCORE_CUDA", "auto").lower()
    use_cuda = (
        want_cuda in ("1", "true", "on")
        or (want_cuda == "auto" and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None)
    ) and want_cuda not in ("0", "false", "off")
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        ext_type = cpp_extension.CUDAExtension
        # --fmad=false: no contracted fma anywhere (the noise path also uses _rn intrinsics).
        nvcc = ["-O3", "--fmad=false"]
        args = {"cxx": cxx, "nvcc": nvcc}
    else:
        ext_type = cpp_extension.CppExtension
        args = {"cxx": cxx}
    ext = ext_type("fastscore._C", sources, include_dirs=[os.path.abspath("csrc")], extra_compile_args=args,
                   extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": _persistent_editable_temp(cpp_extension.BuildExtension.with_options(use_ninja=True))}


def _persistent_editable_temp(base):
    """setuptools' editable build (PEP 660, pip install -e .) compiles in a new temporary
    directory each time, so ninja would rebuild every object on every install; a fixed
    folder under build/ (as a non-editable in-tree build uses) keeps rebuilds incremental."""

    class build_ext(base):
        def finalize_options(self):
            super().finalize_options()
            if getattr(self, "editable_mode", False):
                here = os.path.dirname(os.path.abspath(__file__))
                self.build_temp = os.path.join(here, "build", f"editable-temp.{sys.implementation.cache_tag}")

    return build_ext


def check_wheel_support():
    """setuptools < 70.1 builds wheels (and their metadata) only with the separate `wheel`
    package, which a --no-build-isolation build does not install: say so instead of
    "error: invalid command 'bdist_wheel'"."""
    building = any(cmd in sys.argv for cmd in ("dist_info", "bdist_wheel", "editable_wheel"))
    old = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit()) < (70, 1)
    if building and old and importlib.util.find_spec("wheel") is None:
        sys.exit(f"fastscore: setuptools {setuptools.__version__} needs the `wheel` package to build a wheel: "
                 "pip install -U 'setuptools>=70.1' (or pip install wheel), then build again")


check_wheel_support()
ext_modules, cmdclass = build_extensions()

# name, version, dependencies and extras: pyproject.toml.
setup(
    packages=["fastscore", "fastscore.kernels"],
    package_dir={"fastscore": "fastscore", "fastscore.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
