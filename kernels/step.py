"""The fused update in Triton, bit for bit ``reference.update_``.

Math
----
For x of B rows of R elements (a 0-d x is one row of one element), in the compute dtype
cd (fp64 if x is fp64, else fp32), element i = r*R + k, up to K = 4 tensors y_k and one
or two outputs o, each with its coefficient slots [a, b_1 .. b_K, c]:

    out_o[i] = ((a x_i + b_1 y_1i) + ... + b_K y_Ki) + c z_i      (c term only when drawn)

each product and sum rounded to cd in exactly that order (no fma). A slot is a float,
a 0-d tensor or a per-row tensor (element i uses row i // R). z_i is the fastscore noise
stream at global index j = (offset + r)*R + k (the fp32 normal converted to cd), or an
explicit noise tensor.

This one kernel is every sampler's update (Langevin, Euler-Maruyama, reverse diffusion,
ancestral, the k-diffusion steps: ``step_``), noise perturbation (``lincomb``: a =
mean_scale, c = sigma) and ODE stages (no c term).

Why it is written the way it is
-------------------------------
* One pass: x, the y_k (and an explicit noise) are read once, the outputs written once;
  the noise is generated in registers, never stored.
* A program covers BLOCK Philox counters = 4*BLOCK consecutive stream elements, so each
  counter's four normals are made once and interleaved into element order
  (``noise.stream_block``). The offset may be a device tensor, so where element 0 sits in
  its counter is known only inside the kernel: the grid covers ``counter_span(n)``
  counters and masks the rest.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastscore._common import compute_dtype, counter_span, row_geometry

from ._common import as_int64, block_for, coef_args, coef_at, load_int, slot_values, stream_args, written
from .noise import GPU_BLOCK, stream_block

NOISE_NONE, NOISE_STREAM, NOISE_TENSOR = 0, 1, 2


@triton.jit
def _combination(x, y0, y1, y2, y3, z, vals, ptrs, strides, MODES: tl.constexpr, BASE: tl.constexpr,
                 K: tl.constexpr, DRAW: tl.constexpr, row, mask, cd: tl.constexpr):
    """((a x + b_1 y_1) + ... + b_K y_K) [+ c z] with the slots from BASE."""
    m = coef_at(vals, ptrs, strides, MODES, BASE, row, mask, cd) * x
    if K > 0:
        m = m + coef_at(vals, ptrs, strides, MODES, BASE + 1, row, mask, cd) * y0
    if K > 1:
        m = m + coef_at(vals, ptrs, strides, MODES, BASE + 2, row, mask, cd) * y1
    if K > 2:
        m = m + coef_at(vals, ptrs, strides, MODES, BASE + 3, row, mask, cd) * y2
    if K > 3:
        m = m + coef_at(vals, ptrs, strides, MODES, BASE + 4, row, mask, cd) * y3
    if DRAW:
        m = m + coef_at(vals, ptrs, strides, MODES, BASE + K + 1, row, mask, cd) * z
    return m


@triton.jit
def _load_y(ys, k: tl.constexpr, K: tl.constexpr, i, mask, cd: tl.constexpr):
    if k < K:
        y = tl.load(ys[k] + i, mask=mask, other=0.0).to(cd)
    else:
        y = 0.0
    return y


@triton.jit(do_not_specialize=["seed", "offset", "n", "R"])
def update_kernel(
    out_ptr, out2_ptr, x_ptr, ys, noise_ptr,  # ys: tuple of K pointers
    vals, ptrs, strides,  # coefficient slots: tuples of NOUT * (K + 2)
    seed_ptr, seed, offset_ptr, offset, n, R,
    K: tl.constexpr, NOUT: tl.constexpr, MODES: tl.constexpr, DRAW0: tl.constexpr, DRAW1: tl.constexpr,
    NOISE: tl.constexpr, SEED_PTR: tl.constexpr, OFFSET_PTR: tl.constexpr, CD: tl.constexpr, BLOCK: tl.constexpr,
):
    base = load_int(offset_ptr, offset, OFFSET_PTR) * as_int64(R)  # global index of element 0
    n = as_int64(n)
    first = (base >> 2) + tl.program_id(0).to(tl.int64) * BLOCK  # first counter of this program
    i = first * 4 + tl.arange(0, 4 * BLOCK).to(tl.int64) - base  # element index in x
    mask = (i >= 0) & (i < n)
    i = tl.where(mask, i, 0)  # keep masked lanes' addresses (and i // R) in range
    row = i // as_int64(R)
    if CD == 64:
        cd = tl.float64
    else:
        cd = tl.float32

    x = tl.load(x_ptr + i, mask=mask, other=0.0).to(cd)
    y0 = _load_y(ys, 0, K, i, mask, cd)
    y1 = _load_y(ys, 1, K, i, mask, cd)
    y2 = _load_y(ys, 2, K, i, mask, cd)
    y3 = _load_y(ys, 3, K, i, mask, cd)
    if NOISE == 1:  # NOISE_STREAM
        z = stream_block(load_int(seed_ptr, seed, SEED_PTR), first, BLOCK).to(cd)  # fp32 normal -> cd (exact)
    elif NOISE == 2:  # NOISE_TENSOR
        z = tl.load(noise_ptr + i, mask=mask, other=0.0).to(cd)
    else:
        z = 0.0
    out = _combination(x, y0, y1, y2, y3, z, vals, ptrs, strides, MODES, 0, K, DRAW0, row, mask, cd)
    if NOUT == 2:
        out2 = _combination(x, y0, y1, y2, y3, z, vals, ptrs, strides, MODES, K + 2, K, DRAW1, row, mask, cd)
        tl.store(out2_ptr + i, out2.to(out2_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + i, out.to(out_ptr.dtype.element_ty), mask=mask)


def _draws(values, n_terms, o) -> bool:
    c = values[o * (n_terms + 2) + n_terms + 1]
    return isinstance(c, torch.Tensor) or c != 0.0


def _launch(out, out2, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset) -> None:
    n = x.numel()
    if n == 0:
        return
    K, n_out = len(ys), 1 if out2 is None else 2
    values = slot_values(coef, coef_t, coef_slot)
    draw = [_draws(values, K, o) for o in range(n_out)] + [False]
    noise_mode = NOISE_NONE if not any(draw) else NOISE_STREAM if noise is None else NOISE_TENSOR
    x_c = x.contiguous()
    out_c = out if out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype, device=out.device)
    if out is x and out_c is not out:
        out_c.copy_(x)
        x_c = out_c
    out2_c = None
    if out2 is not None:
        out2_c = out2 if out2.is_contiguous() else torch.empty(out2.shape, dtype=out2.dtype, device=out2.device)
    coefs, modes = coef_args(values, x)
    args, flags = stream_args(seed_t, seed, offset_t, offset, x.device)
    _, R = row_geometry(x.shape)
    block = block_for(x.device, counter_span(n), GPU_BLOCK)
    update_kernel[(triton.cdiv(counter_span(n), block),)](
        out_c, out2_c, x_c, tuple(y.contiguous() for y in ys), noise.contiguous() if noise is not None else None,
        *coefs, *args, n, R,
        K=K, NOUT=n_out, MODES=modes, DRAW0=draw[0], DRAW1=draw[1], NOISE=noise_mode,
        CD=64 if compute_dtype(x.dtype) == torch.float64 else 32, BLOCK=block,
        enable_fp_fusion=False, **flags,
    )
    if out_c is not out:
        out.copy_(out_c)
    if out2_c is not None and out2_c is not out2:
        out2.copy_(out2_c)
    written(out_c, out2_c)


def step_(x, out2, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset) -> None:
    """In place: x <- combination 0 (reference.step_); out2 <- combination 1 when given."""
    _launch(x, out2, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset)


def update_(out, out2, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset) -> None:
    """out <- combination 0 of x and ys (x untouched); out2 <- combination 1 when given."""
    _launch(out, out2, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset)


def lincomb(x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset) -> torch.Tensor:
    """A new contiguous tensor: combination 0 of x and ys (reference.lincomb)."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(out, None, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset)
    return out
