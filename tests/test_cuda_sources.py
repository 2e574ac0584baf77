"""The CUDA sources, compiled here without a GPU: every csrc/cuda/*.cu must build to sm_90
PTX with nvcc, and the generated code must hold no approximate or flush-to-zero
instruction and no contracted float fma (SPEC "Noise": same bits as the CPU)."""

import pathlib
import re
import shutil
import subprocess

import pytest
from torch.utils.cpp_extension import include_paths

ROOT = pathlib.Path(__file__).resolve().parent.parent
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA sources cannot be compiled here")

# Float instructions that would break bit-equality with the CPU; integer mad.lo/mad.wide
# (address arithmetic) is fine.
FORBIDDEN = re.compile(r"\.approx|\.ftz|\b(?:fma|mad)\.rn?[a-z]*\.f(?:16|32|64)|\bfma\.rn\.|\bmad\.f")


def nvcc_ptx(source: pathlib.Path, out: pathlib.Path, *flags: str) -> str:
    # The CPU wheel of torch lacks one generated c10/cuda header; tests/cuda_shim has it.
    incs = [f"-I{p}" for p in include_paths()] + [f"-I{ROOT / 'tests' / 'cuda_shim'}", f"-I{ROOT / 'csrc'}"]
    cmd = [NVCC, "-arch=sm_90", "-ptx", "-std=c++20", *flags, *incs, str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"nvcc failed on {source.name}:\n{proc.stderr[-4000:]}"
    return out.read_text()


def test_there_are_cuda_sources():
    assert {p.name for p in CUDA_SOURCES} >= {"noise.cu", "step.cu"}


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
@pytest.mark.parametrize("flags", [("--fmad=false", "-O3"), ("-O3",)], ids=["setup-flags", "nvcc-defaults"])
def test_cuda_source_compiles_to_exact_ptx(source, flags, tmp_path):
    # With setup.py's flags and with nvcc's defaults (fmad on): the noise and update paths
    # use _rn intrinsics, so even a build that allows contraction keeps the same bits.
    ptx = nvcc_ptx(source, tmp_path / (source.stem + ".ptx"), *flags)
    assert ".entry" in ptx, "no kernel was generated"
    bad = sorted({m.group(0) for m in FORBIDDEN.finditer(ptx)})
    assert not bad, f"{source.name}: inexact instructions in PTX: {bad}"
    needed = ["mul.rn.f32", "add.rn.f32"]  # every float op an explicit round-to-nearest
    text = source.read_text()
    if "normals4" in text or "for_each_owned_element" in text:  # draws from the noise stream
        needed += ["mul.hi.u32", "div.rn.f32", "sqrt.rn.f32"]  # Philox, the exact Box-Muller
    for instruction in needed:
        assert instruction in ptx, f"{source.name}: expected {instruction} in PTX"


def test_the_check_can_see_a_contracted_fma(tmp_path):
    src = tmp_path / "axpy.cu"
    src.write_text("__global__ void axpy(float* y, const float* x, float a) {\n"
                   "  int i = threadIdx.x; y[i] = a * x[i] + y[i]; }\n")
    ptx = nvcc_ptx(src, tmp_path / "axpy.ptx", "-O3")
    assert FORBIDDEN.search(ptx), "control: nvcc's default contraction should produce an fma"
