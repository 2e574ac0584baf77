"""Compile fastscore's Triton kernels to sm_90 PTX without a GPU, for inspection.

There is no GPU here, so the GPU-side guarantee of SPEC "Noise" (no approximate or
flush-to-zero instruction, no contracted fma in the noise path) is checked on the
generated PTX: ``noise_ptx()`` and ``step_ptx()`` return it as text.

Must run in a process WITHOUT ``TRITON_INTERPRET=1``: the interpreter replaces jit
functions by Python ones that cannot be compiled. Tests call it in a subprocess, e.g.
``python -c "from kernels.ptx import noise_ptx; print(noise_ptx())"``.
"""

from __future__ import annotations

import os

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SM90 = GPUTarget("cuda", 90, 32)


def compile_ptx(kernel, signature: dict, constexprs: dict, target: GPUTarget = SM90,
                fp_fusion: bool = False) -> str:
    """PTX of ``kernel`` (a @triton.jit function) for ``target``.

    ``signature`` maps every non-constexpr argument to a Triton type string ("*fp32",
    "i64", ...); ``constexprs`` maps constexpr arguments to their values. ``fp_fusion``
    stays False as in every launch; True exists only as a control for tests (it must
    make fma appear, proving the inspection can see one).
    """
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_ptx needs a process without TRITON_INTERPRET=1")
    sig = dict(signature)
    for name in constexprs:
        sig[name] = "constexpr"
    src = ASTSource(fn=kernel, signature=sig, constexprs=dict(constexprs))
    # Same options as the launchers: enable_fp_fusion=False keeps a*b+c two roundings.
    compiled = triton.compile(src, target=target, options={"enable_fp_fusion": fp_fusion, "num_warps": 4})
    return compiled.asm["ptx"]


def noise_ptx(dtype: str = "fp32", block: int = 256) -> str:
    """PTX of kernels.noise.noise_kernel storing ``dtype`` ("fp32", "fp16", "fp64", "bf16")."""
    from .noise import noise_kernel

    return compile_ptx(
        noise_kernel,
        {"out_ptr": f"*{dtype}", "seed": "i64", "base": "i64", "n": "i64"},
        {"BLOCK": block},
    )


def philox_ptx(block: int = 256) -> str:
    """PTX of kernels.noise.philox_kernel."""
    from .noise import philox_kernel

    return compile_ptx(philox_kernel, {"out_ptr": "*i32", "seed": "i64", "first": "i64", "n": "i64"},
                       {"BLOCK": block})


def step_ptx(dtype: str = "fp32", per_sample: bool = True, block: int = 256, fp_fusion: bool = False) -> str:
    """PTX of kernels.step.fused_update_kernel, all features on (score, stream noise,
    mean output); ``dtype`` is the storage dtype, the compute dtype follows it."""
    from .step import fused_update_kernel

    cd = "fp64" if dtype == "fp64" else "fp32"
    return compile_ptx(
        fused_update_kernel,
        {
            "out_ptr": f"*{dtype}", "mean_ptr": f"*{dtype}", "x_ptr": f"*{dtype}",
            "score_ptr": f"*{dtype}", "noise_ptr": f"*{dtype}", "coef_ptr": f"*{cd}",
            "seed": "i64", "base": "i64", "n": "i64", "R": "i64", "K": "i64",
        },
        {"HAS_SCORE": True, "NOISE_MODE": 1, "WRITE_MEAN": True, "PER_SAMPLE": per_sample, "BLOCK": block},
        fp_fusion=fp_fusion,
    )


if __name__ == "__main__":  # python -m kernels.ptx [noise|step|philox] > kernel.ptx
    import sys

    which = sys.argv[1] if len(sys.argv) > 1 else "noise"
    print({"noise": noise_ptx, "step": step_ptx, "philox": philox_ptx}[which]())
