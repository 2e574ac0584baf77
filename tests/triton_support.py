"""Shared set-up for the Triton test files (tests/test_triton_*.py).

* :func:`setup_triton` / :func:`require_interpreter`: the module header of every Triton
  test file (TRITON_INTERPRET=1, ``importorskip("triton")``, the repository root on
  ``sys.path``, module-level skip when the kernels are not interpreted).
* :data:`FORBIDDEN` and :func:`assert_exact_ptx`: the sm_90 PTX check (no approximate,
  flush-to-zero or fused instruction).
* :func:`compile_ptx_in_subprocess`: compiles kernels to sm_90 PTX in a fresh process
  without the interpreter and returns the JSON the per-file body prints.

This module does not import triton at import time: tests/conftest.py sets TRITON_INTERPRET
before collection, and :func:`setup_triton` sets it again before the first import.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def setup_triton():
    """Set TRITON_INTERPRET=1, import triton (or skip the module) and put the repository
    root on ``sys.path``. Returns the triton module."""
    # Must precede the first `import triton` (conftest.py sets it too).
    os.environ["TRITON_INTERPRET"] = "1"
    triton = pytest.importorskip("triton")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return triton


def require_interpreter(kernel) -> None:
    """Skip the calling test module unless ``kernel`` runs under the Triton interpreter."""
    import triton

    if not isinstance(kernel, triton.runtime.interpreter.InterpretedFunction):
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; the kernels cannot run on CPU",
                    allow_module_level=True)


# ---------------------------------------------------------------------------------------
# PTX inspection (sm_90, compiled without a GPU, in a process without the interpreter)
# ---------------------------------------------------------------------------------------
FORBIDDEN = {
    "approximate instruction": re.compile(r"\.approx\b"),
    "flush-to-zero": re.compile(r"\.ftz\b"),
    "approximate fp32 divide (div.full)": re.compile(r"\bdiv\.full\b"),
    "fused multiply-add": re.compile(r"\b(?:fma|mad)\.[\w.]*\bf(?:16|32|64)\b|\bfma\."),
}


def assert_exact_ptx(text: str, name: str) -> None:
    """``text`` targets sm_90 and has no instruction matching :data:`FORBIDDEN`."""
    assert ".target sm_90" in text
    for what, pattern in FORBIDDEN.items():
        hits = [line.strip() for line in text.splitlines() if pattern.search(line)]
        assert not hits, f"{name}: {what}: {hits[:5]}"


_PTX_PROLOGUE = textwrap.dedent(
    r"""
    import json, os, shutil, sys
    sys.path.insert(0, sys.argv[1])
    assert "TRITON_INTERPRET" not in os.environ
    try:
        import triton
        from triton.backends import backends
    {extra_imports}
    except Exception as e:  # pragma: no cover
        print(json.dumps({{"skip": f"triton compiler API unavailable: {{e!r}}"}})); sys.exit(0)
    if "nvidia" not in backends:
        print(json.dumps({{"skip": "triton has no nvidia backend"}})); sys.exit(0)
    try:
        ptxas = triton.knobs.nvidia.ptxas.path
    except Exception:
        ptxas = shutil.which("ptxas")
    if not ptxas:
        print(json.dumps({{"skip": "ptxas not found (needed for the PTX version)"}})); sys.exit(0)
    """
)

_COMPILER_API_IMPORTS = (
    "    from triton.backends.compiler import GPUTarget  # noqa: F401\n"
    "    from triton.compiler import ASTSource  # noqa: F401"
)


def compile_ptx_in_subprocess(body: str, check_compiler_api: bool = False) -> dict:
    """Run ``body`` after the common prologue (triton importable, nvidia backend, ptxas) in
    a subprocess without TRITON_INTERPRET, cwd and ``sys.path[0]`` the repository root.

    ``body`` must end by printing one JSON object (the PTX texts by name), which is
    returned. When the prologue cannot compile (no nvidia backend, no ptxas, ...) the
    calling test is skipped with its reason. ``check_compiler_api`` also treats a missing
    ``GPUTarget`` / ``ASTSource`` as a reason to skip.
    """
    script = _PTX_PROLOGUE.format(extra_imports=_COMPILER_API_IMPORTS if check_compiler_api else "")
    script += textwrap.dedent(body)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT)], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"PTX compilation failed:\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


# ---------------------------------------------------------------------------------------
# Bitwise comparison of float tensors
# ---------------------------------------------------------------------------------------
def _int_view():
    import torch

    return {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
            torch.bfloat16: torch.int16}


def assert_bits_equal(actual, expected, what: str = "", label: str = "reference") -> None:
    """``actual`` and ``expected`` (same dtype) hold the same bit patterns, element by element;
    the message names the first difference (``label`` names ``expected``)."""
    int_view = _int_view()
    a = actual.contiguous().view(int_view[actual.dtype]).reshape(-1)
    e = expected.contiguous().view(int_view[expected.dtype]).reshape(-1)
    diff = a != e
    if diff.any():
        k = int(diff.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(diff.sum())}/{diff.numel()} elements differ; first at flat {k}: "
            f"{actual.reshape(-1)[k].item()!r} vs {label} {expected.reshape(-1)[k].item()!r}"
        )


def randn(shape, dtype, seed, transposed=False):
    """Standard normal ``shape`` tensor of ``dtype`` from seed ``seed``; ``transposed``: same
    logical shape (2-d), stored transposed (non-contiguous)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if transposed:  # same logical shape, stored transposed (non-contiguous)
        return torch.randn(tuple(reversed(shape)), generator=g).to(dtype).t()
    return torch.randn(shape, generator=g).to(dtype)
