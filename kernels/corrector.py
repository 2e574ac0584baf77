"""score_sde's LangevinCorrector step in Triton, matching ``reference.langevin_corrector_``.

Math
----
x has B rows of R elements (a 0-d x is one row of one element); s = score; z is the
fastscore noise stream at global index j = (offset + r)*R + k (the float32 normal), or
an explicit noise tensor (already in the compute dtype cd: fp64 for fp64 x, else fp32).

    pass 1 (kernel):  S_r = sum_k float64(s_rk)^2,   Z_r = sum_k float64(z_rk)^2
    host:             g_r = sqrt(S_r), n_r = sqrt(Z_r)      (batch mode: g, n = means over rows)
                      eps_r = (snr * n_r / g_r)^2 * 2 * alpha_r      (0 when g_r == 0)
                      = reference.corrector_step_size(S, Z, snr, alpha, per_sample)
    pass 2 (kernel):  x_mean = 1*x + eps_r*s,   x <- x_mean + sqrt(2 eps_r)*z
                      = kernels.step.fused_update_ with coef [3, B] = (1, eps, sqrt(eps*2))

Two passes, and z is regenerated in pass 2 instead of being stored (B*R*4 bytes saved,
one read of the noise traded for a second Philox evaluation).

Why it is written the way it is
-------------------------------
* The sums are float64 (each value converted exactly, squared and summed in fp64), so
  they differ from the reference's torch sum only by summation order (~1e-16 relative);
  after the coefficients are rounded to fp32 (fp32/fp16/bf16 x) that difference is gone,
  and the whole step is bitwise the reference's. For fp64 x it is ~1e-16 relative.
* The grid is one flattened axis over (row, block of the row) pairs — no per-axis grid
  limit on long rows or many rows. A program covers BLOCK Philox counters = 4*BLOCK
  consecutive stream elements starting at the counter holding its row's first element
  plus its block's shift, so each counter's four normals are made once
  (``kernels.noise.stream_block``); lanes outside the row are masked to 0. Each program
  writes its two partial sums to a float64 [B, n_blocks, 2] buffer; torch finishes the
  row sums (``.sum(1)``) and the step size, on the device.
* The step-size rule is not re-implemented: the host calls reference.corrector_step_size,
  so every backend shares its operation order.
* Every launch passes ``enable_fp_fusion=False`` (no fma contraction of the sums or of
  the update); scalar int arguments go through ``as_int64`` (interpreter pitfall for
  ints in [2**31, 2**32)).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastscore import reference

from .noise import row_block_elements, row_block_grid, row_geometry, seed_arg, stream_block
from .step import fused_update_


@triton.jit(do_not_specialize=["seed", "base", "R", "n_blocks"])
def row_sq_sums_kernel(
    part_ptr, score_ptr, noise_ptr,  # part: float64 [rows, n_blocks, 2]
    seed, base, R, n_blocks,  # base = offset * R: global stream index of element 0
    NOISE_TENSOR: tl.constexpr, BLOCK: tl.constexpr,
):
    """Partial sums of squares (fp64) of score and z over block ``blk`` of row ``row``:
    the 4*BLOCK stream elements from counter (row_j >> 2) + blk*BLOCK, row_j = base + row*R."""
    pid = tl.program_id(0).to(tl.int64)
    row, first, i, mask = row_block_elements(base, R, n_blocks, BLOCK)

    s = tl.load(score_ptr + i, mask=mask, other=0.0).to(tl.float64)
    if NOISE_TENSOR:
        z = tl.load(noise_ptr + i, mask=mask, other=0.0).to(tl.float64)
    else:
        z = stream_block(seed, first, BLOCK).to(tl.float64)  # fp32 normal -> fp64 (exact)
        z = tl.where(mask, z, 0.0)
    tl.store(part_ptr + 2 * pid, tl.sum(s * s, axis=0))
    tl.store(part_ptr + 2 * pid + 1, tl.sum(z * z, axis=0))


def _check_like(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.shape != x.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(x.shape)} (the shape of x)")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device}, expected {x.device} (the device of x)")


def row_sq_sums(score: torch.Tensor, noise: torch.Tensor | None, seed: int, offset: int) -> torch.Tensor:
    """float64 [rows, 2]: per-row sums of squares of ``score`` and of z (the stream at
    rows from ``offset``, or ``noise``), as reference.row_sq_norms up to summation order."""
    rows, R = row_geometry(score.shape)
    if score.numel() == 0:
        return torch.zeros((rows, 2), dtype=torch.float64, device=score.device)
    base = int(offset) * R
    block, n_blocks = row_block_grid(base, R, rows, score.device)
    part = torch.empty((rows, n_blocks, 2), dtype=torch.float64, device=score.device)
    score_c = score.contiguous()
    noise_c = noise.contiguous() if noise is not None else score_c  # dummy is never read
    row_sq_sums_kernel[(rows * n_blocks,)](
        part, score_c, noise_c, seed_arg(seed), base, R, n_blocks,
        NOISE_TENSOR=noise is not None, BLOCK=block,
        enable_fp_fusion=False,
    )
    return part.sum(1)


def langevin_corrector_(x, score, alpha, snr: float, seed: int, offset: int, per_sample: bool, noise,
                        x_mean) -> None:
    """x <- x + eps*score + sqrt(2 eps)*z in place (reference.langevin_corrector_);
    x_mean <- x + eps*score if given.

    ``alpha``: float64 tensor with 1 or x.shape[0] entries. ``noise``: optional explicit
    z in the compute dtype (replaces the stream; seed/offset then unused). x, score,
    noise and x_mean may be non-contiguous. Empty x is a no-op.
    """
    _check_like("score", score, x)
    for name, t in (("noise", noise), ("x_mean", x_mean)):
        if t is not None:
            _check_like(name, t, x)
    if x.numel() == 0:
        return
    rows, _ = row_geometry(x.shape)
    alpha = torch.as_tensor(alpha, dtype=torch.float64).to(x.device).reshape(-1)
    if alpha.numel() not in (1, rows):
        raise ValueError(f"alpha must have 1 or {rows} (x.shape[0]) entries, got {alpha.numel()}")

    sq = row_sq_sums(score, noise, seed, offset)
    eps = reference.corrector_step_size(sq[:, 0], sq[:, 1], float(snr),
                                        alpha if alpha.numel() > 1 else alpha[0], bool(per_sample))
    eps = eps.expand(rows) if eps.dim() == 0 else eps.reshape(-1)
    coef = torch.stack((torch.ones_like(eps), eps, torch.sqrt(eps * 2.0)))  # float64 [3, rows]
    fused_update_(x, x, score, coef, seed, offset, noise, x_mean, True)
