"""Sliced score matching (Hutchinson) terms in Triton, matching ``reference.sliced_score_terms``
and the C++ op ``fastscore::sliced_score_terms(_backward)`` (csrc/sliced.cpp).

Math
----
score s [B, D...]; jv (J v or J^T v) and probes v [B, P, D...], one dtype; D = numel / B;
cd is the compute dtype (fp64 for fp64 storage, else fp32).

    forward:  dot_bp   = sum_k float64(cd(v_bpk)) * float64(cd(s_bk))          (kernel: float64
              trace_bp = sum_k float64(cd(v_bpk)) * float64(cd(jv_bpk))          partials per
              sq_b     = sum_k float64(cd(s_bk))^2   (variance reduction only)   (b, p, block))
              terms_b  = (sum_p (trace_bp + second_bp) / P) -> cd,               (host, torch)
                         second_bp = 0.5 * sq_b  or  0.5 * (dot_bp * dot_bp)
              returns (terms [B] in cd, dots float64 [B, P])
    backward: gp_b     = float64(g_b) / P                                      (host, torch,
              per_p_b  = gp_b -> cd                                              [B] / [B, P]
              c_bp     = (gp_b * dots_bp) -> cd    (scale_b = g_b -> cd with VR)  in cd)
              grad_jv[b,p,k] = (per_p_b * cd(v_bpk)) -> dtype                  (kernel)
              grad_s[b,k]    = (scale_b * cd(s_bk)) -> dtype                   with VR, else
                             = (((0 + c_b0 v_b0k) + c_b1 v_b1k) + ...) -> dtype   in cd, p in order

= csrc/sliced.cpp operation for operation in the backward, so the backward is bit for
bit the C++ op (fp32/fp16, fp64 too); the forward's float64 sums differ from the C++
op's and the reference's only in summation order (~1e-16 relative), which rounding the
terms to fp32 almost always hides.

Why it is written the way it is
-------------------------------
* Forward grid: one flattened axis over (b, block of D) pairs; a program loads its
  block of s once and loops over the P probes, writing float64 partial sums
  [B, P, n_blocks, 2] (v.jv, v.s) and, with variance reduction, [B, n_blocks] (s.s);
  torch finishes the sums on the device. Every value is converted to cd first, then
  widened to float64 exactly (an identity for fp32/fp64 storage, exact for fp16/bf16).
* Backward grid: flat over the B*D elements of score; each lane loops over p in order,
  reading v once to write grad_jv[b, p, k] and to accumulate grad_s[b, k] in cd — the
  C++ op's order (acc = 0; acc += c_p * v_p), so even signed zeros agree.
* The float64 division by P happens on the host against a full tensor of P, never a
  Python scalar: ATen's CUDA division by a CPU scalar multiplies by the reciprocal,
  which can differ from the C++ op's ``x / double(P)`` in the last bit.
* Every launch passes ``enable_fp_fusion=False`` (no fma contraction of the dot
  products or of acc + c*v); scalar int arguments go through ``as_int64``.
* Under the interpreter, fp32 -> bf16 stores truncate instead of rounding to nearest,
  so a bf16 gradient can be 1 ulp off there (compiled casts round to nearest).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastscore._common import compute_dtype

from ._common import as_int64, block_for

GPU_BLOCK = 1024  # elements per program on the GPU


@triton.jit
def _to_cd(x, FP64: tl.constexpr):
    """x in the compute dtype: fp64 for fp64 storage, else fp32 (exact widening)."""
    if FP64:
        y = x.to(tl.float64)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit(do_not_specialize=["P", "D", "n_blocks"])
def sliced_partials_kernel(
    part_ptr, sq_ptr,  # part: float64 [B, P, n_blocks, 2] (v.jv, v.s); sq: float64 [B, n_blocks]
    score_ptr, jv_ptr, v_ptr,  # contiguous: score [B, D], jv and v [B, P, D]
    P, D, n_blocks,
    VARIANCE_REDUCTION: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr,
):
    """Partial float64 dot products over block ``blk`` of D for sample ``b``, every probe."""
    pid = tl.program_id(0).to(tl.int64)
    P = as_int64(P)
    D = as_int64(D)
    nb = as_int64(n_blocks)
    b = pid // nb
    blk = pid - b * nb
    k = blk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = k < D
    k = tl.where(mask, k, 0)  # keep masked lanes' addresses in range

    s = _to_cd(tl.load(score_ptr + b * D + k, mask=mask, other=0.0), FP64).to(tl.float64)
    if VARIANCE_REDUCTION:
        tl.store(sq_ptr + pid, tl.sum(s * s, axis=0))
    for p in range(P):
        row = b * P + p
        vv = _to_cd(tl.load(v_ptr + row * D + k, mask=mask, other=0.0), FP64).to(tl.float64)
        jj = _to_cd(tl.load(jv_ptr + row * D + k, mask=mask, other=0.0), FP64).to(tl.float64)
        out = part_ptr + (row * nb + blk) * 2
        tl.store(out, tl.sum(vv * jj, axis=0))
        tl.store(out + 1, tl.sum(vv * s, axis=0))


@triton.jit(do_not_specialize=["P", "D", "n"])
def sliced_backward_kernel(
    gs_ptr, gj_ptr,  # outputs: grad_score [B, D] (score's dtype), grad_jv [B, P, D] (v's dtype)
    score_ptr, v_ptr,  # contiguous inputs
    per_p_ptr, coef_ptr,  # in cd: per_p [B]; coef = scale [B] (VR) or c [B, P]
    P, D, n,  # n = B * D
    VARIANCE_REDUCTION: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr,
):
    """Element i = (b, k) of score: grad_jv[b, :, k] and grad_score[b, k]."""
    P = as_int64(P)
    D = as_int64(D)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = i < as_int64(n)
    i = tl.where(mask, i, 0)  # keep masked lanes' addresses (and b) in range
    b = i // D
    k = i - b * D

    per_p = tl.load(per_p_ptr + b, mask=mask, other=0.0)
    acc = tl.zeros_like(per_p)
    for p in range(P):
        row = b * P + p
        vv = _to_cd(tl.load(v_ptr + row * D + k, mask=mask, other=0.0), FP64)
        tl.store(gj_ptr + row * D + k, (per_p * vv).to(gj_ptr.dtype.element_ty), mask=mask)
        if not VARIANCE_REDUCTION:
            c = tl.load(coef_ptr + row, mask=mask, other=0.0)
            acc = acc + c * vv
    if VARIANCE_REDUCTION:
        scale = tl.load(coef_ptr + b, mask=mask, other=0.0)
        acc = scale * _to_cd(tl.load(score_ptr + i, mask=mask, other=0.0), FP64)
    tl.store(gs_ptr + i, acc.to(gs_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------
def _geometry(score: torch.Tensor, jv: torch.Tensor) -> tuple[int, int, int]:
    """(B, P, D); shapes were checked by fastscore.ops."""
    B, P = int(jv.shape[0]), int(jv.shape[1])
    return B, P, (score.numel() // B if B > 0 else 0)


def sliced_score_terms(score: torch.Tensor, jv: torch.Tensor, v: torch.Tensor,
                       variance_reduction: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(terms [B] in the compute dtype, dots float64 [B, P]):
    terms_b = (1/P) sum_p [v_bp . jv_bp + 0.5 (v_bp . s_b)^2]  (or + 0.5 |s_b|^2 with
    ``variance_reduction``), dots_bp = v_bp . s_b, all dot products in float64.
    Inputs may be non-contiguous; empty B, P or D gives zeros."""
    B, P, D = _geometry(score, jv)
    cd = compute_dtype(score.dtype)
    dev = score.device
    if B == 0 or P == 0 or D == 0:
        return torch.zeros(B, dtype=cd, device=dev), torch.zeros((B, P), dtype=torch.float64, device=dev)
    vr = bool(variance_reduction)
    block = block_for(dev, D, GPU_BLOCK)
    n_blocks = triton.cdiv(D, block)
    part = torch.empty((B, P, n_blocks, 2), dtype=torch.float64, device=dev)
    sq = torch.empty((B, n_blocks) if vr else (1,), dtype=torch.float64, device=dev)
    sliced_partials_kernel[(B * n_blocks,)](
        part, sq, score.contiguous(), jv.contiguous(), v.contiguous(),
        P, D, n_blocks,
        VARIANCE_REDUCTION=vr, FP64=cd == torch.float64, BLOCK=block,
        enable_fp_fusion=False,
    )
    sums = part.sum(2)  # [B, P, 2]
    trace, dots = sums[..., 0], sums[..., 1].contiguous()
    second = 0.5 * sq.sum(1)[:, None] if vr else 0.5 * (dots * dots)
    acc = (trace + second).sum(1)
    terms = (acc / torch.full_like(acc, float(P))).to(cd)  # IEEE x / P on every device
    return terms, dots


def sliced_score_terms_backward(grad: torch.Tensor, score: torch.Tensor, v: torch.Tensor, dots: torch.Tensor,
                                variance_reduction: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_score like score, grad_jv like v), contiguous, storage dtypes:
    grad_jv = ((g/P) -> cd) * v; grad_score = (g -> cd) * s with ``variance_reduction``,
    else sum_p ((g/P * dots_p) -> cd) * v_p in cd, p in order (csrc/sliced.cpp)."""
    B, P, D = _geometry(score, v)
    dev = score.device
    grad_score = torch.empty(score.shape, dtype=score.dtype, device=dev)
    grad_jv = torch.empty(v.shape, dtype=v.dtype, device=dev)
    if B == 0 or P == 0 or D == 0:
        return grad_score.zero_(), grad_jv.zero_()
    cd = compute_dtype(score.dtype)
    vr = bool(variance_reduction)
    g64 = grad.to(device=dev, dtype=torch.float64).reshape(B)
    gp = g64 / torch.full_like(g64, float(P))  # IEEE g / P on every device (as the C++ op)
    per_p = gp.to(cd).contiguous()
    if vr:
        coef = g64.to(cd).contiguous()
    else:
        coef = (gp[:, None] * dots.to(device=dev, dtype=torch.float64).reshape(B, P)).to(cd).contiguous()
    n = B * D
    block = block_for(dev, n, GPU_BLOCK)
    sliced_backward_kernel[(triton.cdiv(n, block),)](
        grad_score, grad_jv, score.contiguous(), v.contiguous(), per_p, coef,
        P, D, n,
        VARIANCE_REDUCTION=vr, FP64=cd == torch.float64, BLOCK=block,
        enable_fp_fusion=False,
    )
    return grad_score, grad_jv
