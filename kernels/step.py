"""The fused update step in Triton, bit for bit ``reference.fused_update``.

Math
----
For x of B rows of R elements (a 0-d x is one row of one element), in the compute
dtype cd (fp64 if x is fp64, else fp32), element i = r*R + k:

    mean_i = (a_r * x_i) + (b_r * s_i)          b term only when a score is given
    out_i  = mean_i + (c_r * z_i)               c term only when with_noise

each product and sum rounded to cd in exactly that order (no fma). Coefficients are a
[3, K] tensor of rows (a, b, c): K = 1 scalars, K = B per-sample (element i uses
column i // R). z_i is the fastscore noise stream at global index j = (offset + r)*R + k
(= offset*R + i; fp32 normal converted to cd), or an explicit noise tensor.

This single kernel is every sampler's update (Langevin, annealed Langevin,
Euler-Maruyama, reverse diffusion, ancestral: ``step_``), noise perturbation
(``perturb``: a = mean_scale, no score, c = sigma) and ODE steps (with_noise=False).

Why it is written the way it is
-------------------------------
* One pass: x, score (and an explicit noise) are read once, out (and mean) written
  once; the noise is generated in registers, never stored.
* A program covers BLOCK Philox counters = 4*BLOCK consecutive stream elements, so each
  counter's four normals are made once and interleaved into element order
  (``kernels.noise.stream_block``); the block's first and last counters may straddle the
  tensor's ends, hence the mask.
* Launched with ``enable_fp_fusion=False`` so ``mean + c*z`` is not contracted to an
  fma; the coefficients are converted to cd once on the host so the kernel multiplies
  by exactly the value the reference does (fp64 -> fp32 rounding of a Python float).
* Results are stored in the destination's dtype (one rounding, as ``x.copy_(out)``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .noise import as_int64, counters_per_program, row_geometry, seed_arg, stream_block

NOISE_NONE = tl.constexpr(0)  # with_noise=False: out = mean, no RNG
NOISE_PHILOX = tl.constexpr(1)  # z from the stream
NOISE_TENSOR = tl.constexpr(2)  # z from an explicit tensor


@triton.jit(do_not_specialize=["seed", "base", "n", "R"])
def fused_update_kernel(
    out_ptr, mean_ptr, x_ptr, score_ptr, noise_ptr, coef_ptr,  # coef: [3, K] in cd
    seed, base, n, R, K,  # base = offset * R: global index of element 0
    HAS_SCORE: tl.constexpr, NOISE_MODE: tl.constexpr, WRITE_MEAN: tl.constexpr,
    PER_SAMPLE: tl.constexpr, BLOCK: tl.constexpr,
):
    base = as_int64(base)
    n = as_int64(n)
    first = (base >> 2) + tl.program_id(0).to(tl.int64) * BLOCK  # first counter of this program
    i = first * 4 + tl.arange(0, 4 * BLOCK).to(tl.int64) - base  # element index in x
    mask = (i >= 0) & (i < n)
    i = tl.where(mask, i, 0)  # keep masked lanes' addresses (and i // R) in range
    cd = coef_ptr.dtype.element_ty

    if PER_SAMPLE:
        row = i // as_int64(R)
        a = tl.load(coef_ptr + row, mask=mask, other=0.0)
        b = tl.load(coef_ptr + K + row, mask=mask, other=0.0)
        c = tl.load(coef_ptr + 2 * K + row, mask=mask, other=0.0)
    else:
        a = tl.load(coef_ptr)
        b = tl.load(coef_ptr + 1)
        c = tl.load(coef_ptr + 2)

    x = tl.load(x_ptr + i, mask=mask, other=0.0).to(cd)
    mean = a * x
    if HAS_SCORE:
        s = tl.load(score_ptr + i, mask=mask, other=0.0).to(cd)
        mean = mean + b * s
    if WRITE_MEAN:
        tl.store(mean_ptr + i, mean.to(mean_ptr.dtype.element_ty), mask=mask)

    if NOISE_MODE == NOISE_NONE:
        out = mean
    else:
        if NOISE_MODE == NOISE_PHILOX:
            z = stream_block(seed, first, BLOCK).to(cd)  # fp32 normal -> cd (exact)
        else:
            z = tl.load(noise_ptr + i, mask=mask, other=0.0).to(cd)
        out = mean + c * z
    tl.store(out_ptr + i, out.to(out_ptr.dtype.element_ty), mask=mask)


def _check_like(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.shape != x.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(x.shape)} (the shape of x)")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device}, expected {x.device} (the device of x)")


def fused_update_(
    out: torch.Tensor,
    x: torch.Tensor,
    score: torch.Tensor | None,
    coef: torch.Tensor,
    seed: int,
    offset: int,
    noise: torch.Tensor | None,
    mean: torch.Tensor | None,
    with_noise: bool,
) -> None:
    """out <- a*x + b*score + c*z (reference.fused_update); mean <- a*x + b*score if given.

    ``coef`` is a [3, K] (rows a, b, c) tensor, K = 1 or x.shape[0]; ``out`` may be
    ``x`` itself (in place). score/noise/mean may be None; any tensor may be
    non-contiguous. ``noise`` replaces the stream (seed/offset then unused);
    ``with_noise=False`` drops the c term (no RNG).
    """
    _check_like("out", out, x)
    for name, t in (("score", score), ("noise", noise), ("mean", mean)):
        if t is not None:
            _check_like(name, t, x)
    rows, per_row = row_geometry(x.shape)
    if coef.dim() != 2 or coef.shape[0] != 3 or coef.shape[1] not in (1, rows):
        raise ValueError(f"coef must have shape [3, 1] or [3, {rows}] (x.shape[0]), got {tuple(coef.shape)}")
    n = x.numel()
    if n == 0:
        return

    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    coef = coef.to(device=x.device, dtype=cd).contiguous()  # rounded to cd once, here
    K = coef.shape[1]
    x_c = x.contiguous()
    score_c = score.contiguous() if score is not None else x_c  # dummies are never read
    noise_c = noise.contiguous() if (with_noise and noise is not None) else x_c
    out_c = out if out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype, device=out.device)
    mean_c = None
    if mean is not None:
        mean_c = mean if mean.is_contiguous() else torch.empty(mean.shape, dtype=mean.dtype, device=mean.device)

    if not with_noise:
        noise_mode = 0
    elif noise is None:
        noise_mode = 1
    else:
        noise_mode = 2
    base = int(offset) * per_row
    n_counters = ((base + n - 1) >> 2) - (base >> 2) + 1
    block = counters_per_program(x.device, n_counters)
    grid = (triton.cdiv(n_counters, block),)
    fused_update_kernel[grid](
        out_c, mean_c if mean_c is not None else out_c, x_c, score_c, noise_c, coef,
        seed_arg(seed), base, n, per_row, K,
        HAS_SCORE=score is not None, NOISE_MODE=noise_mode, WRITE_MEAN=mean is not None,
        PER_SAMPLE=K > 1, BLOCK=block,
        enable_fp_fusion=False,
    )
    if out_c is not out:
        out.copy_(out_c)
    if mean_c is not None and mean_c is not mean:
        mean.copy_(mean_c)
