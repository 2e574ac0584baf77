"""Denoising score matching loss in Triton, matching ``reference.dsm_loss`` / ``dsm_loss_backward``.

Math
----
score s has B rows of R elements (R = numel // B); cd is the compute dtype (fp64 for
fp64 s, else fp32). coef is float64 [2, K] with rows (inv_sigma, w), K = 1 or B. z is
the fastscore noise stream at global index j = (offset + r)*R + k (the float32 normal),
or an explicit noise tensor (already in cd) — the z that perturb drew for x + sigma z,
regenerated here, never stored.

    d_rk    = s_rk + (z_rk * inv_sigma_r)                  in cd, product rounded first
    forward:  S_r = sum_k float64(d_rk)^2                  (kernel: float64 partials per
              loss_r = ((0.5 * w_r) * S_r) -> cd            (row, block); torch .sum(1))
    backward: scale_r = (float64(g_r) * w_r) -> cd          (host, [B] in cd)
              grad_s_rk = (scale_r * d_rk) -> dtype of s    (kernel, one rounding each)

= reference.dsm_residual / dsm_loss / dsm_loss_backward (and csrc/dsm.cpp).

Why it is written the way it is
-------------------------------
* The backward is elementwise and stores each element with the reference's exact
  operation order, so it is bit for bit the reference for fp32/fp16 (fp64 too). The
  forward's row sums are float64 (each d converted exactly, squared and summed in fp64),
  differing from the reference's torch sum only in summation order (~1e-16 relative),
  which rounding the loss to fp32 almost always hides; for fp64 it is ~1e-16 relative.
* inv_sigma is converted to cd once on the host (the fp32 rounding of the float64
  value, as ``reference.per_sample``), so the kernel multiplies by exactly that value.
* Forward grid: one flattened axis over (row, block of the row) pairs, as
  kernels/corrector.py — a program covers BLOCK Philox counters = 4*BLOCK consecutive
  stream elements from the counter holding its row's first element plus its block's
  shift (``kernels.noise.stream_block``: each counter's four normals made once), lanes
  outside the row masked to 0; partial sums go to a float64 [B, n_blocks] buffer.
* Backward grid: flat over the tensor, as kernels/step.py (no wasted lanes on short
  rows); the row of an element is i // R.
* Every launch passes ``enable_fp_fusion=False`` (no fma contraction of s + z*inv, of
  the squares' sum, or of the scale); scalar int arguments go through ``as_int64``
  (interpreter pitfall for ints in [2**31, 2**32)).
* Under the interpreter, fp32 -> bf16 stores truncate instead of rounding to nearest,
  so a bf16 gradient can be 1 ulp off there (compiled casts round to nearest); loads of
  bf16 (fp32 widening) are exact, so the bf16 forward is unaffected.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .noise import as_int64, counters_per_program, row_block_elements, row_block_grid, row_geometry, seed_arg, stream_block


@triton.jit(do_not_specialize=["seed", "base", "R", "n_blocks"])
def dsm_loss_kernel(
    part_ptr, score_ptr, noise_ptr, inv_ptr,  # part: float64 [rows, n_blocks]; inv: [K] in cd
    seed, base, R, n_blocks,  # base = offset * R: global stream index of element 0
    NOISE_TENSOR: tl.constexpr, PER_SAMPLE: tl.constexpr, BLOCK: tl.constexpr,
):
    """Partial sum over block ``blk`` of row ``row`` of float64(d)^2, d = s + z*inv_sigma:
    the 4*BLOCK stream elements from counter (row_j >> 2) + blk*BLOCK, row_j = base + row*R."""
    pid = tl.program_id(0).to(tl.int64)
    row, first, i, mask = row_block_elements(base, R, n_blocks, BLOCK)
    cd = inv_ptr.dtype.element_ty

    if PER_SAMPLE:
        inv = tl.load(inv_ptr + row)
    else:
        inv = tl.load(inv_ptr)
    s = tl.load(score_ptr + i, mask=mask, other=0.0).to(cd)
    if NOISE_TENSOR:
        z = tl.load(noise_ptr + i, mask=mask, other=0.0).to(cd)
    else:
        z = stream_block(seed, first, BLOCK).to(cd)  # fp32 normal -> cd (exact)
    d = s + z * inv
    d = tl.where(mask, d, 0.0).to(tl.float64)  # exact widening; masked lanes add nothing
    tl.store(part_ptr + pid, tl.sum(d * d, axis=0))


@triton.jit(do_not_specialize=["seed", "base", "n", "R"])
def dsm_loss_backward_kernel(
    out_ptr, score_ptr, noise_ptr, inv_ptr, scale_ptr,  # inv: [K] in cd; scale: [rows] in cd
    seed, base, n, R,  # base = offset * R: global index of element 0
    NOISE_TENSOR: tl.constexpr, PER_SAMPLE: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[i] = scale_r * (s_i + z_i * inv_sigma_r), r = i // R. Program p covers the BLOCK
    counters from (base >> 2) + p*BLOCK (4*BLOCK stream elements, masked to [0, n))."""
    base = as_int64(base)
    n = as_int64(n)
    first = (base >> 2) + tl.program_id(0).to(tl.int64) * BLOCK
    i = first * 4 + tl.arange(0, 4 * BLOCK).to(tl.int64) - base  # element index in score
    mask = (i >= 0) & (i < n)
    i = tl.where(mask, i, 0)  # keep masked lanes' addresses (and i // R) in range
    row = i // as_int64(R)
    cd = inv_ptr.dtype.element_ty

    if PER_SAMPLE:
        inv = tl.load(inv_ptr + row, mask=mask, other=0.0)
    else:
        inv = tl.load(inv_ptr)
    scale = tl.load(scale_ptr + row, mask=mask, other=0.0)
    s = tl.load(score_ptr + i, mask=mask, other=0.0).to(cd)
    if NOISE_TENSOR:
        z = tl.load(noise_ptr + i, mask=mask, other=0.0).to(cd)
    else:
        z = stream_block(seed, first, BLOCK).to(cd)  # fp32 normal -> cd (exact)
    d = s + z * inv
    tl.store(out_ptr + i, (scale * d).to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _checked_coef(coef: torch.Tensor, score: torch.Tensor, rows: int) -> torch.Tensor:
    if coef.dim() != 2 or coef.shape[0] != 2 or coef.shape[1] not in (1, rows):
        raise ValueError(f"dsm coef must have shape [2, 1] or [2, {rows}] (score.shape[0]), got {tuple(coef.shape)}")
    return coef.to(device=score.device, dtype=torch.float64)


def _checked_noise(noise: torch.Tensor | None, score: torch.Tensor) -> torch.Tensor | None:
    if noise is None:
        return None
    if noise.shape != score.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(score.shape)} (the shape of score)")
    if noise.device != score.device:
        raise ValueError(f"noise is on {noise.device}, expected {score.device} (the device of score)")
    return noise.contiguous()


def dsm_loss(score: torch.Tensor, coef: torch.Tensor, seed: int, offset: int, noise) -> torch.Tensor:
    """Per-sample loss [rows] in the compute dtype: ((0.5 * w) * sum_k float64(d)^2) -> cd
    with d = score + z * inv_sigma (reference.dsm_loss). ``coef``: float64 [2, K], rows
    (inv_sigma, w), K = 1 or rows. ``noise``: explicit z (replaces the stream) or None.
    score may be non-contiguous; an empty score gives zeros."""
    rows, R = row_geometry(score.shape)
    cd = _compute_dtype(score.dtype)
    if score.numel() == 0:
        return torch.zeros(rows, dtype=cd, device=score.device)
    coef = _checked_coef(coef, score, rows)
    noise_c = _checked_noise(noise, score)
    K = coef.shape[1]
    inv = coef[0].to(cd).contiguous()  # rounded to cd once, here
    base = int(offset) * R
    # Counters a row spans depend on where its first element sits within a counter
    # (j & 3); that alignment is periodic in the row with period 4.
    block, n_blocks = row_block_grid(base, R, rows, score.device)
    part = torch.empty((rows, n_blocks), dtype=torch.float64, device=score.device)
    score_c = score.contiguous()
    dsm_loss_kernel[(rows * n_blocks,)](
        part, score_c, noise_c if noise_c is not None else score_c, inv,  # dummy noise is never read
        seed_arg(seed), base, R, n_blocks,
        NOISE_TENSOR=noise_c is not None, PER_SAMPLE=K > 1, BLOCK=block,
        enable_fp_fusion=False,
    )
    w64 = coef[1] if K > 1 else coef[1, 0]
    return (0.5 * w64 * part.sum(1)).to(cd)


def dsm_loss_backward(grad: torch.Tensor, score: torch.Tensor, coef: torch.Tensor, seed: int, offset: int,
                      noise) -> torch.Tensor:
    """d loss / d score (contiguous, score's dtype): ((float64(g_r) * w_r) -> cd) * d
    (reference.dsm_loss_backward), z regenerated. ``grad``: one entry per row."""
    rows, R = row_geometry(score.shape)
    out = torch.empty(score.shape, dtype=score.dtype, device=score.device)
    n = score.numel()
    if n == 0:
        return out
    if grad.numel() != rows:
        raise ValueError(f"dsm grad must have one entry per row ({rows}), got {grad.numel()}")
    coef = _checked_coef(coef, score, rows)
    noise_c = _checked_noise(noise, score)
    cd = _compute_dtype(score.dtype)
    K = coef.shape[1]
    inv = coef[0].to(cd).contiguous()
    w64 = coef[1] if K > 1 else coef[1, 0]
    scale = (grad.to(device=score.device, dtype=torch.float64).reshape(-1) * w64).to(cd).contiguous()
    base = int(offset) * R
    n_counters = ((base + n - 1) >> 2) - (base >> 2) + 1
    block = counters_per_program(score.device, n_counters)
    grid = (triton.cdiv(n_counters, block),)
    score_c = score.contiguous()
    dsm_loss_backward_kernel[grid](
        out, score_c, noise_c if noise_c is not None else score_c, inv, scale,
        seed_arg(seed), base, n, R,
        NOISE_TENSOR=noise_c is not None, PER_SAMPLE=K > 1, BLOCK=block,
        enable_fp_fusion=False,
    )
    return out
