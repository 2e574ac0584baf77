"""Denoising score matching loss in Triton, matching ``reference.dsm_loss`` / ``dsm_loss_backward``.

Math
----
score s has B rows of R elements (R = numel // B); cd is the compute dtype (fp64 for
fp64 s, else fp32). sigma and w are floats or 0-d / per-sample [B] tensors. z is
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
* inv_sigma = 1/sigma is taken in float64 (on the host for a float, by a device op for a
  tensor) and rounded to cd once, as ``reference.per_sample``, so the kernel multiplies by
  exactly the reference's value. Nothing is read on the host.
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

from fastscore._common import compute_dtype, counter_span, row_geometry

from ._common import as_int64, block_for, coef_args, coef_at, load_int, stream_args
from .noise import GPU_BLOCK, row_block_elements, row_block_grid, stream_block


@triton.jit(do_not_specialize=["seed", "offset", "R", "n_blocks"])
def dsm_loss_kernel(
    part_ptr, score_ptr, noise_ptr,  # part: float64 [rows, n_blocks]
    vals, ptrs, strides,  # one coefficient slot: inv_sigma
    seed_ptr, seed, offset_ptr, offset, R, n_blocks,
    MODES: tl.constexpr, NOISE_TENSOR: tl.constexpr, SEED_PTR: tl.constexpr, OFFSET_PTR: tl.constexpr,
    CD: tl.constexpr, BLOCK: tl.constexpr,
):
    """Partial sum over block ``blk`` of row ``row`` of float64(d)^2, d = s + z*inv_sigma."""
    pid = tl.program_id(0).to(tl.int64)
    base = load_int(offset_ptr, offset, OFFSET_PTR) * as_int64(R)
    row, first, i, mask = row_block_elements(base, R, n_blocks, BLOCK)
    if CD == 64:
        cd = tl.float64
    else:
        cd = tl.float32
    inv = coef_at(vals, ptrs, strides, MODES, 0, row, True, cd)
    s = tl.load(score_ptr + i, mask=mask, other=0.0).to(cd)
    if NOISE_TENSOR:
        z = tl.load(noise_ptr + i, mask=mask, other=0.0).to(cd)
    else:
        z = stream_block(load_int(seed_ptr, seed, SEED_PTR), first, BLOCK).to(cd)  # fp32 normal -> cd (exact)
    d = s + z * inv
    d = tl.where(mask, d, 0.0).to(tl.float64)  # exact widening; masked lanes add nothing
    tl.store(part_ptr + pid, tl.sum(d * d, axis=0))


@triton.jit(do_not_specialize=["seed", "offset", "n", "R"])
def dsm_loss_backward_kernel(
    out_ptr, score_ptr, noise_ptr, scale_ptr,  # scale: [rows] in cd
    vals, ptrs, strides,  # one coefficient slot: inv_sigma
    seed_ptr, seed, offset_ptr, offset, n, R,
    MODES: tl.constexpr, NOISE_TENSOR: tl.constexpr, SEED_PTR: tl.constexpr, OFFSET_PTR: tl.constexpr,
    CD: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[i] = scale_r * (s_i + z_i * inv_sigma_r), r = i // R. Program p covers the BLOCK
    counters from (base >> 2) + p*BLOCK (4*BLOCK stream elements, masked to [0, n))."""
    base = load_int(offset_ptr, offset, OFFSET_PTR) * as_int64(R)
    n = as_int64(n)
    first = (base >> 2) + tl.program_id(0).to(tl.int64) * BLOCK
    i = first * 4 + tl.arange(0, 4 * BLOCK).to(tl.int64) - base  # element index in score
    mask = (i >= 0) & (i < n)
    i = tl.where(mask, i, 0)  # keep masked lanes' addresses (and i // R) in range
    row = i // as_int64(R)
    if CD == 64:
        cd = tl.float64
    else:
        cd = tl.float32
    inv = coef_at(vals, ptrs, strides, MODES, 0, row, mask, cd)
    scale = tl.load(scale_ptr + row, mask=mask, other=0.0)
    s = tl.load(score_ptr + i, mask=mask, other=0.0).to(cd)
    if NOISE_TENSOR:
        z = tl.load(noise_ptr + i, mask=mask, other=0.0).to(cd)
    else:
        z = stream_block(load_int(seed_ptr, seed, SEED_PTR), first, BLOCK).to(cd)  # fp32 normal -> cd (exact)
    d = s + z * inv
    tl.store(out_ptr + i, (scale * d).to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------
# Launchers (the plain signatures of fastscore/ops.py SCHEMAS)
# ---------------------------------------------------------------------------------------
def _inverse(sigma, sigma_t, score):
    """1/sigma in float64 (host float, or a device op on the tensor), a coefficient slot."""
    return 1.0 / sigma if sigma_t is None else (1.0 / sigma_t.double()).to(compute_dtype(score.dtype))


def _weight64(weight, weight_t):
    return weight if weight_t is None else weight_t.double()


def dsm_loss(score, sigma, sigma_t, weight, weight_t, noise, seed_t, seed, offset_t, offset) -> torch.Tensor:
    """Per-sample loss [rows] in the compute dtype: ((0.5 * w) * sum_k float64(d)^2) -> cd
    with d = score + z * inv_sigma (reference.dsm_loss)."""
    rows, R = row_geometry(score.shape)
    cd = compute_dtype(score.dtype)
    if score.numel() == 0:
        return torch.zeros(rows, dtype=cd, device=score.device)
    coefs, modes = coef_args([_inverse(sigma, sigma_t, score)], score)
    args, flags = stream_args(seed_t, seed, offset_t, offset, score.device)
    block, n_blocks = row_block_grid(R, score.device)
    part = torch.empty((rows, n_blocks), dtype=torch.float64, device=score.device)
    dsm_loss_kernel[(rows * n_blocks,)](
        part, score.contiguous(), noise.contiguous() if noise is not None else None, *coefs, *args, R, n_blocks,
        MODES=modes, NOISE_TENSOR=noise is not None, CD=64 if cd == torch.float64 else 32, BLOCK=block,
        enable_fp_fusion=False, **flags,
    )
    return (0.5 * _weight64(weight, weight_t) * part.sum(1)).to(cd)


def dsm_loss_backward(grad, score, sigma, sigma_t, weight, weight_t, noise, seed_t, seed, offset_t,
                      offset) -> torch.Tensor:
    """d loss / d score (contiguous, score's dtype): ((float64(g_r) * w_r) -> cd) * d
    (reference.dsm_loss_backward), z regenerated. ``grad``: one entry per row."""
    rows, R = row_geometry(score.shape)
    out = torch.empty(score.shape, dtype=score.dtype, device=score.device)
    n = score.numel()
    if n == 0:
        return out
    cd = compute_dtype(score.dtype)
    scale = (grad.to(device=score.device, dtype=torch.float64).reshape(-1) * _weight64(weight, weight_t))
    scale = scale.to(cd).expand(rows).contiguous()
    coefs, modes = coef_args([_inverse(sigma, sigma_t, score)], score)
    args, flags = stream_args(seed_t, seed, offset_t, offset, score.device)
    block = block_for(score.device, counter_span(n), GPU_BLOCK)
    dsm_loss_backward_kernel[(triton.cdiv(counter_span(n), block),)](
        out, score.contiguous(), noise.contiguous() if noise is not None else None, scale, *coefs, *args, n, R,
        MODES=modes, NOISE_TENSOR=noise is not None, CD=64 if cd == torch.float64 else 32, BLOCK=block,
        enable_fp_fusion=False, **flags,
    )
    return out
