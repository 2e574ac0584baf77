"""What the test files share: the backends under test, input makers, coefficient kinds,
the bitwise comparison, and the generated-code inspection (sm_90 PTX of the Triton
kernels, compiled without a GPU in a subprocess without the interpreter; nvcc PTX of the
CUDA sources).

tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton, so the triton
backend runs its kernels on CPU tensors here.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import fastscore
from fastscore import backends
from fastscore._common import seed_bits

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = [b for b in backends.available_backends("cpu") if b != "reference"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SEEDS = [0, 1, 2**32 + 5, 2**63 + 7, 2**64 - 1]


def skip_unsupported(backend: str, dtype=None, device="cpu") -> None:
    """Skip with the backend's own reasons when it cannot run these inputs."""
    reasons = backends.not_supported_reasons(backend, device, dtype)
    if reasons:
        pytest.skip("; ".join(reasons))


def make(shape, dtype=torch.float32, layout="contiguous", seed=0) -> torch.Tensor:
    """A standard-normal tensor of ``shape``: contiguous, "transposed" (last two dims
    swapped in memory) or "strided" (every other column of a wider tensor)."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    if layout == "contiguous" or len(shape) < 2:
        return torch.randn(shape, generator=g).to(dtype)
    if layout == "transposed":
        return torch.randn(shape[:-2] + (shape[-1], shape[-2]), generator=g).to(dtype).transpose(-1, -2)
    return torch.randn(shape[:-1] + (2 * shape[-1],), generator=g).to(dtype)[..., ::2]


COEF_KINDS = ("float", "0d", "per_sample", "table")


def coef_values(kind: str, rows: int, values=(0.9987654321, -0.0123456789, 0.3141592653589793)):
    """Coefficients in one of the forms a user passes: Python floats (none exact in fp32),
    0-d float64 tensors, per-sample [rows] tensors, or columns of one row of a precomputed
    [N, k, rows] device table (views with a stride, as samplers pass them)."""
    if kind == "float":
        return tuple(values)
    if kind == "0d":
        return tuple(torch.tensor(v, dtype=torch.float64) for v in values)
    g = torch.Generator().manual_seed(rows + len(values))
    per = [torch.rand(rows, generator=g, dtype=torch.float64) * 0.5 + abs(v) for v in values]
    if kind == "per_sample":
        return tuple(p.to(torch.float32) if i % 2 else p for i, p in enumerate(per))
    table = torch.zeros(3, rows, len(values), dtype=torch.float64)
    table[1] = torch.stack(per, 1)
    return tuple(table[1, :, i] for i in range(len(values)))  # stride len(values)


_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
             torch.bfloat16: torch.int16, torch.int32: torch.int32, torch.int64: torch.int64}


def assert_bits_equal(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Same dtype, shape and bit patterns; the message names the first differences."""
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    a = got.contiguous().view(_INT_VIEW[got.dtype]).reshape(-1)
    b = want.contiguous().view(_INT_VIEW[want.dtype]).reshape(-1)
    bad = (a != b).nonzero().reshape(-1)
    assert bad.numel() == 0, (f"{what}: {bad.numel()}/{a.numel()} elements differ, first at {bad[:5].tolist()}: "
                              f"{got.reshape(-1)[bad[:5]].tolist()} vs {want.reshape(-1)[bad[:5]].tolist()}")


def assert_matches(got, want, what=""):
    """Bitwise, except float64 reductions (sums in another order): rtol 1e-13."""
    if got.dtype == torch.float64:
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13, msg=lambda m: f"{what}: {m}")
    else:
        assert_bits_equal(got, want, what)


def run_both(backend: str, fn):
    """(fn() on ``backend``, fn() on the reference)."""
    with fastscore.use_backend("reference"):
        want = fn()
    with fastscore.use_backend(backend):
        got = fn()
    return got, want


def seed_as(seed: int, kind: str):
    """A seed as an int or as a one-element int64 tensor (its 64 bits in two's complement)."""
    return seed if kind == "int" else torch.tensor(seed_bits(seed), dtype=torch.int64)


# --------------------------------------------------------------------------- sample inputs of the registered ops


class Samples:
    """Tensors for the SAMPLE_INPUTS of the family test files (each op -> a list of argument
    tuples in its plain signature, run by tests/test_registration.py through opcheck)."""

    def __init__(self, dtype):
        g = torch.Generator().manual_seed(0)
        self.dtype = dtype
        self.cd = torch.float64 if dtype == torch.float64 else torch.float32
        self.x, self.s, self.y = (torch.randn(3, 5, generator=g).to(dtype) for _ in range(3))
        self.per = torch.rand(3, dtype=torch.float64, generator=g) + 0.1
        self.scalar = torch.tensor(0.3)
        self.noise = torch.randn(3, 5, generator=g).to(self.cd)
        self.ints = (None, 5, None, 2)  # (seed_t, seed, offset_t, offset)
        self.tensors = (torch.tensor(seed_bits(2**63 + 7)), 0, torch.tensor(2**33), 0)
        self.grad = dtype != torch.bfloat16  # bf16 inputs skip the gradient checks


# --------------------------------------------------------------------------- generated code

# Float instructions that would break bit-equality with the CPU (approximate, flush-to-zero,
# contracted multiply-add); integer mad.lo/mad.wide (address arithmetic) is fine.
FORBIDDEN = {
    "approximate instruction": re.compile(r"\.approx\b"),
    "flush-to-zero": re.compile(r"\.ftz\b"),
    "approximate fp32 divide (div.full)": re.compile(r"\bdiv\.full\b"),
    "fused multiply-add": re.compile(r"\b(?:fma|mad)\.rn?[a-z]*\.f(?:16|32|64)\b|\bfma\.rn\.|\bmad\.f"),
}


CXX_FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-pthread"]


def run_cpp_test(test: str, sources, tmp_path, *args: str, timeout: int = 900) -> str:
    """Builds tests/cpu/<test>.cpp with csrc/<sources> (the extension's flags, no torch) and
    runs it; returns its stdout after asserting it exited 0 and printed "PASS: 0 mismatching"."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found")
    csrc, exe = ROOT / "csrc", tmp_path / test
    build = subprocess.run([cxx, *CXX_FLAGS, f"-I{csrc}", str(ROOT / "tests" / "cpu" / f"{test}.cpp"),
                            *(str(csrc / f) for f in sources), "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0 and "PASS: 0 mismatching values" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
    return run.stdout


def forbidden_in(ptx: str) -> dict[str, list[str]]:
    hits = {}
    for what, pattern in FORBIDDEN.items():
        lines = [line.strip() for line in ptx.splitlines() if pattern.search(line)]
        if lines:
            hits[what] = lines[:5]
    return hits


def triton_ptx(kernels: dict) -> dict:
    """sm_90 PTX of Triton kernels, compiled in a subprocess without the interpreter.
    ``kernels``: name -> (module, kernel, signature, constexprs, fp_fusion); tuple arguments
    are signature tuples and their constexpr elements are keyed by (arg index, element)."""
    script = textwrap.dedent(r"""
        import importlib, json, os, shutil, sys
        assert "TRITON_INTERPRET" not in os.environ
        try:
            import triton
            from triton.backends import backends
            from triton.backends.compiler import GPUTarget
            from triton.compiler import ASTSource
        except Exception as e:
            print(json.dumps({"skip": f"triton compiler API unavailable: {e!r}"})); sys.exit(0)
        if "nvidia" not in backends:
            print(json.dumps({"skip": "triton has no nvidia backend"})); sys.exit(0)
        try:
            ptxas = triton.knobs.nvidia.ptxas.path
        except Exception:
            ptxas = shutil.which("ptxas")
        if not ptxas:
            print(json.dumps({"skip": "ptxas not found (needed for the PTX version)"})); sys.exit(0)
        def key(k):
            return tuple(k) if isinstance(k, list) else k
        out = {}
        for name, (module, kernel, signature, constexprs, fusion) in json.loads(sys.argv[1]).items():
            fn = getattr(importlib.import_module(module), kernel)
            names = list(fn.arg_names)
            sig = {k: (tuple(v) if isinstance(v, list) else v) for k, v in signature.items()}
            consts = {}
            for k, v in constexprs:
                k = key(k)
                if isinstance(k, str):
                    sig[k] = "constexpr"
                    k = (names.index(k),)
                consts[k] = tuple(v) if isinstance(v, list) else v
            src = ASTSource(fn=fn, signature=sig, constexprs=consts)
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                      options={"enable_fp_fusion": fusion, "num_warps": 4})
            out[name] = compiled.asm["ptx"]
        print(json.dumps(out))
    """)
    spec = {name: (mod, kern, sig, list(consts.items()), fusion) for name, (mod, kern, sig, consts, fusion)
            in kernels.items()}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(spec)], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"PTX compilation failed:\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


NVCC = shutil.which("nvcc")


def nvcc_ptx(source: pathlib.Path, out: pathlib.Path, *flags: str) -> str:
    """PTX of a CUDA source for sm_90 (the CPU wheel of torch lacks one generated c10/cuda
    header; tests/cuda_shim has it)."""
    from torch.utils.cpp_extension import include_paths

    incs = [f"-I{p}" for p in include_paths()] + [f"-I{ROOT / 'tests' / 'cuda_shim'}", f"-I{ROOT / 'csrc'}"]
    cmd = [NVCC, "-arch=sm_90", "-ptx", "-std=c++20", *flags, *incs, str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"nvcc failed on {source.name}:\n{proc.stderr[-4000:]}"
    return out.read_text()
