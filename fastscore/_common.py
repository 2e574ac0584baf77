"""Definitions every backend shares, in one leaf module (it imports nothing of fastscore):
the seed as 64 bits, the step-seed function, row geometry, the compute dtype, and the
Langevin corrector's step-size rule. The reference backend, the Triton launchers and the
op layer all import these, so each is written once in Python (C++ and CUDA spell them
once more, in csrc/op_common.h and csrc/philox.h).
"""

from __future__ import annotations

import numbers

import torch

MASK64 = (1 << 64) - 1
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX_M1 = 0xBF58476D1CE4E5B9
SPLITMIX_M2 = 0x94D049BB133111EB


def seed_bits(seed: int) -> int:
    """THE place a Python seed becomes its 64 bits: seed mod 2**64, as the two's-complement
    int64 that schemas, kernels and int64 tensors carry (kernels reinterpret it as uint64)."""
    s = int(seed) & MASK64
    return s - (1 << 64) if s >> 63 else s


def derive_seed(seed: int, k: int) -> int:
    """Seed of the k-th draw of a run (sampler step, loss component): the k-th SplitMix64
    output from state ``seed`` — a pure integer function, so one seed fixes a whole run.
    Returns an int in [0, 2**64); ``fastscore.ops.derive_seeds`` gives the same values as
    an int64 tensor (two's complement) on a device."""
    z = (int(seed) + (k + 1) * SPLITMIX_GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * SPLITMIX_M1) & MASK64
    z = ((z ^ (z >> 27)) * SPLITMIX_M2) & MASK64
    return z ^ (z >> 31)


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def row_geometry(shape) -> tuple[int, int]:
    """(rows, elements per row) of a shape; a 0-d tensor is one row of one element."""
    numel = 1
    for s in shape:
        numel *= int(s)
    rows = int(shape[0]) if len(shape) > 0 else 1
    return rows, (numel // rows if rows > 0 else 0)


def counter_span(numel: int) -> int:
    """Philox counters that ``numel`` consecutive stream elements can touch, whatever their
    first element's position j & 3 inside a counter (which a device offset hides from the
    host): ((3 + numel - 1) >> 2) + 1. Grids are sized by it; the extra lanes are masked."""
    return ((numel + 2) >> 2) + 1 if numel > 0 else 0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Math precision of a storage dtype: fp64 for fp64, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def corrector_step_size(sq_score, sq_noise, snr, alpha, per_sample: bool):
    """score_sde's LangevinCorrector rule from per-row sums of squares (float64 [B]):
    eps = (snr * |z| / |s|)**2 * 2 * alpha, with batch means of the norms ("batch", as
    score_sde and diffusers) or per row ("per_sample"). A zero score norm gives eps = 0
    (score_sde would produce inf/NaN). ``alpha``: float, 0-d or [B] tensor. Returns float64
    eps of shape [B]; device ops only (no host read)."""
    g, n = torch.sqrt(sq_score), torch.sqrt(sq_noise)
    if not per_sample:
        g, n = g.mean(), n.mean()
    ratio = torch.where(g > 0, snr * n / torch.where(g > 0, g, torch.ones_like(g)), torch.zeros_like(g))
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(device=g.device, dtype=torch.float64)
    eps = ratio * ratio * 2.0 * alpha
    return eps.expand(sq_score.shape) if eps.dim() == 0 else eps


UNIFORM_SCALE = float.fromhex("0x1.fffffep-32")  # Triton's 4.6566127342e-10 in fp32


def uniform_f32(w: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float of Philox words (int64 in [0, 2**32) or int32 bit
    patterns): int32 view x, x < 0 -> ~x, then float(x) * 0x1.fffffep-32, in [0, 1)."""
    x = (w - ((w >> 31) << 32)).to(torch.int32) if w.dtype != torch.int32 else w
    x = x ^ (x >> 31)  # ~x where x < 0
    return x.to(torch.float32) * UNIFORM_SCALE  # an fp32 value: the product is fp32's


def stream_label(w: torch.Tensor, n_levels: int) -> torch.Tensor:
    """The level index a Philox word names among n_levels (int64): floor(U * n_levels) in
    float64, U = uniform_f32(w), at most n_levels - 1 (the float64 product can round up to
    n_levels only past 2**53 levels). Every backend's fill_labels_ computes exactly this."""
    return (uniform_f32(w).double() * n_levels).long().clamp_(max=n_levels - 1)
