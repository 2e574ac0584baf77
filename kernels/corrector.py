"""score_sde's LangevinCorrector step in Triton, matching ``reference.langevin_corrector_``.

Math
----
x has B rows of R elements (a 0-d x is one row of one element); s = score; z is the
fastscore noise stream at global index j = (offset + r)*R + k (the float32 normal), or
an explicit noise tensor (already in the compute dtype cd: fp64 for fp64 x, else fp32).

    pass 1 (kernel):  S_r = sum_k float64(s_rk)^2,   Z_r = sum_k float64(z_rk)^2
    device ops:       eps_r = fastscore._common.corrector_step_size(S, Z, snr, alpha, per_sample)
    pass 2 (kernel):  x_mean = 1*x + eps_r*s,   x <- x_mean + sqrt(2 eps_r)*z
                      = step.update_kernel with per-row coefficient tensors (1, eps, sqrt(eps*2))

Two passes, and z is regenerated in pass 2 instead of being stored (B*R*4 bytes saved,
one read of the noise traded for a second Philox evaluation). Nothing is read on the
host: the step size stays on the device between the passes.

Why it is written the way it is
-------------------------------
* The sums are float64 (each value converted exactly, squared and summed in fp64), so
  they differ from the reference's torch sum only by summation order (~1e-16 relative);
  after the coefficients are rounded to fp32 (fp32/fp16/bf16 x) that difference is gone,
  and the whole step is bitwise the reference's. For fp64 x it is ~1e-16 relative.
* The grid is one flattened axis over (row, block of the row) pairs — no per-axis grid
  limit on long rows or many rows. A program covers BLOCK Philox counters = 4*BLOCK
  consecutive stream elements from the counter holding its row's first element plus its
  block's shift (``noise.row_block_elements``), lanes outside the row masked to 0. Each
  program writes its two partial sums to a float64 [B, n_blocks, 2] buffer; torch
  finishes the row sums (``.sum(1)``) and the step size, on the device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastscore._common import corrector_step_size, row_geometry

from ._common import as_int64, load_int, stream_args
from .noise import row_block_elements, row_block_grid, stream_block
from .step import step_


@triton.jit(do_not_specialize=["seed", "offset", "R", "n_blocks"])
def row_sq_sums_kernel(
    part_ptr, score_ptr, noise_ptr,  # part: float64 [rows, n_blocks, 2]
    seed_ptr, seed, offset_ptr, offset, R, n_blocks,
    NOISE_TENSOR: tl.constexpr, SEED_PTR: tl.constexpr, OFFSET_PTR: tl.constexpr, BLOCK: tl.constexpr,
):
    """Partial sums of squares (fp64) of score and z over block ``blk`` of row ``row``."""
    pid = tl.program_id(0).to(tl.int64)
    base = load_int(offset_ptr, offset, OFFSET_PTR) * as_int64(R)
    row, first, i, mask = row_block_elements(base, R, n_blocks, BLOCK)

    s = tl.load(score_ptr + i, mask=mask, other=0.0).to(tl.float64)
    if NOISE_TENSOR:
        z = tl.load(noise_ptr + i, mask=mask, other=0.0).to(tl.float64)
    else:
        z = stream_block(load_int(seed_ptr, seed, SEED_PTR), first, BLOCK).to(tl.float64)  # exact widening
        z = tl.where(mask, z, 0.0)
    tl.store(part_ptr + 2 * pid, tl.sum(s * s, axis=0))
    tl.store(part_ptr + 2 * pid + 1, tl.sum(z * z, axis=0))


def row_sq_sums(score, noise, seed_t, seed, offset_t, offset) -> torch.Tensor:
    """float64 [rows, 2]: per-row sums of squares of ``score`` and of z (the stream at rows
    from the offset, or ``noise``), as reference.row_sq_norms up to summation order."""
    rows, R = row_geometry(score.shape)
    block, n_blocks = row_block_grid(R, score.device)
    part = torch.empty((rows, n_blocks, 2), dtype=torch.float64, device=score.device)
    args, flags = stream_args(seed_t, seed, offset_t, offset, score.device)
    row_sq_sums_kernel[(rows * n_blocks,)](
        part, score.contiguous(), noise.contiguous() if noise is not None else None, *args, R, n_blocks,
        NOISE_TENSOR=noise is not None, BLOCK=block, enable_fp_fusion=False, **flags,
    )
    return part.sum(1)


def langevin_corrector_(x, x_mean, score, snr, alpha, alpha_t, per_sample, noise, seed_t, seed, offset_t,
                        offset) -> None:
    """x <- x + eps*score + sqrt(2 eps)*z in place (reference.langevin_corrector_);
    x_mean <- x + eps*score if given."""
    if x.numel() == 0:
        return
    sq = row_sq_sums(score, noise, seed_t, seed, offset_t, offset)
    eps = corrector_step_size(sq[:, 0], sq[:, 1], snr, alpha if alpha_t is None else alpha_t, per_sample)
    coef_t = [eps, torch.sqrt(eps * 2.0)] + ([eps] if x_mean is not None else [])
    step_(x, x_mean, [score], [1.0, 0.0, 0.0] * (1 if x_mean is None else 2), coef_t, [1, 2, 4][:len(coef_t)],
          noise, seed_t, seed, offset_t, offset)
