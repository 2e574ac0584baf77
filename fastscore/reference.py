"""Eager-PyTorch ground truth: the noise stream and every fused op, in the plain
signatures that every backend implements (C++ fastscore._C, CUDA, Triton kernels/).

Every other backend must reproduce these functions BIT FOR BIT for float32 (SPEC "Noise").
The stream:

Philox4x32-10 (Triton's constants). Key = (seed mod 2**64) split into (lo, hi) 32-bit
words, counter = (c_lo, c_hi, 0, 0). Element j of the stream is component j & 3 of the
four normals made from the words at counter j >> 2:

    u_i  = uniform(w_i)                       Triton's uint32 -> [0, 1) map
    r    = sqrt(-2 * log(max(u0, 1e-7)))      n0 = r * cos(2 pi u1), n1 = r * sin(2 pi u1)
    r'   = sqrt(-2 * log(max(u2, 1e-7)))      n2 = r' * cos(2 pi u3), n3 = r' * sin(2 pi u3)

log, sin and cos are fastscore's own float32 routines (``log_f32``, ``sincos_2pi_f32``):
only IEEE-rounded +, -, *, /, sqrt and integer/bit operations, evaluated in one fixed
order, so eager torch, C++, CUDA and Triton compute the same bits. Constants are given
as exact float32 values (hex) so no compiler rounds a decimal literal differently.

Rows: ``offset`` counts rows (dim 0). For a tensor of B rows of R elements, element k
of row r under offset o has global index j = (o + r) * R + k.

The plain signatures (SCHEMAS in fastscore/ops.py spell them as torch schemas):
a seed is (seed_t, seed) — a one-element int64 tensor read from memory, or else the int
``seed`` (its 64 bits as two's complement); an offset is (offset_t, offset) likewise.
A coefficient slot i is the float ``coef[i]``, or, when i appears in ``coef_slot`` (at
position j), the tensor ``coef_t[j]`` (0-d or per-sample [B], any float dtype); each value
is rounded once to the compute dtype. The fused update
``update_`` writes, for each output o (out, then out2 when given), with the n = K + 2
slots [a, b_1 .. b_K, c] starting at o * n:

    out_o = ((a x + b_1 y_1) + ... + b_K y_K) + c z      rounded in exactly that order

where the c term is dropped when that slot is the float 0.0 (then no noise is drawn).
"""

from __future__ import annotations

import math

import torch

from fastscore._common import compute_dtype, corrector_step_size, row_geometry, stream_label, uniform_f32  # noqa: F401
from fastscore._common import SPLITMIX_GAMMA, SPLITMIX_M1, SPLITMIX_M2, seed_bits

MASK32 = 0xFFFFFFFF
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10

# Exact float32 constants. csrc/philox.h and kernels/noise.py spell the same values.
U_MIN = float.fromhex("0x1.ad7f2ap-24")  # 1e-7 in fp32
SQRT2 = float.fromhex("0x1.6a09e6p+0")
LN2_HI = float.fromhex("0x1.62e3p-1")  # fdlibm's split of ln 2
LN2_LO = float.fromhex("0x1.2fefa2p-17")
# 2*atanh(s) = 2s + s*z*(L3 + z*(L5 + z*(L7 + z*L9))), z = s*s
LOG_L = [float.fromhex(h) for h in ("0x1.555556p-1", "0x1.99999ap-2", "0x1.24924ap-2", "0x1.c71c72p-3")]
# sin(pi/2 g) = g*(S1 + z*(S3 + ...)), cos(pi/2 g) = 1 + z*(C2 + ...), z = g*g, g in [0, 1/2]
SIN_S = [float.fromhex(h) for h in ("0x1.921fb6p+0", "-0x1.4abbcep-1", "0x1.466bc6p-4", "-0x1.32d2ccp-8", "0x1.507834p-13")]
COS_C = [float.fromhex(h) for h in ("-0x1.3bd3ccp+0", "0x1.03c1f0p-2", "-0x1.55d3c8p-6", "0x1.e1f506p-11", "-0x1.a6d1f2p-16")]


def philox4x32(seed: int, counters: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 words at int64 ``counters`` (>= 0); returns four int64 tensors in [0, 2**32).

    Products are taken in int64: the wrapped 64-bit pattern still holds the exact
    unsigned product, whose high and low words are masked out.
    """
    # Works for a Python int or an int64 tensor holding seed mod 2**64 (two's complement).
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    c0 = counters & MASK32
    c1 = (counters >> 32) & MASK32
    c2 = torch.zeros_like(counters)
    c3 = torch.zeros_like(counters)
    for _ in range(PHILOX_ROUNDS):
        p0 = c2 * PHILOX_ROUND_B
        p2 = c0 * PHILOX_ROUND_A
        c0, c1, c2, c3 = (
            ((p0 >> 32) & MASK32) ^ c1 ^ k0,
            p0 & MASK32,
            ((p2 >> 32) & MASK32) ^ c3 ^ k1,
            p2 & MASK32,
        )
        k0 = (k0 + PHILOX_KEY_A) & MASK32  # key words stay in [0, 2**32)
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def _f32(v: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32, device=like.device)


def log_f32(u: torch.Tensor) -> torch.Tensor:
    """log(u) for positive normal float32 u: exponent bits + 2*atanh series on the mantissa."""
    bits = u.view(torch.int32)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)  # [1, 2)
    big = m > _f32(SQRT2, u)
    m = torch.where(big, m * _f32(0.5, u), m)  # [sqrt(1/2), sqrt(2)]
    e = torch.where(big, e + 1, e)
    f = m - _f32(1.0, u)  # exact (Sterbenz)
    s = f / (m + _f32(1.0, u))
    z = s * s
    r = _f32(LOG_L[3], u)
    for c in reversed(LOG_L[:3]):
        r = r * z + _f32(c, u)
    r = z * r
    log_m = f - s * (f - r)  # = 2s + s*r
    ef = e.to(torch.float32)
    return ef * _f32(LN2_HI, u) + (log_m + ef * _f32(LN2_LO, u))


def sincos_2pi_f32(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin 2 pi u, cos 2 pi u) for u in [0, 1): quadrant from 4u (exact), then a
    polynomial in g in [0, 1/2] (the larger half folded by the exact 1 - f)."""
    t = u * _f32(4.0, u)
    q = t.to(torch.int32)  # truncation = floor, t >= 0
    f = t - q.to(torch.float32)
    swap = f > _f32(0.5, u)
    g = torch.where(swap, _f32(1.0, u) - f, f)
    z = g * g
    sp = _f32(SIN_S[4], u)
    for c in reversed(SIN_S[:4]):
        sp = sp * z + _f32(c, u)
    sp = g * sp
    cp = _f32(COS_C[4], u)
    for c in reversed(COS_C[:4]):
        cp = cp * z + _f32(c, u)
    cp = cp * z + _f32(1.0, u)
    s_f = torch.where(swap, cp, sp)  # sin(pi/2 f)
    c_f = torch.where(swap, sp, cp)  # cos(pi/2 f)
    odd = (q & 1) == 1
    s_q = torch.where(odd, c_f, s_f)
    c_q = torch.where(odd, s_f, c_f)
    sin = torch.where(q >= 2, -s_q, s_q)
    cos = torch.where((q == 1) | (q == 2), -c_q, c_q)
    return sin, cos


def sqrt_f32(v: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt. torch's vectorised CPU sqrt is off by an ulp for
    ~20% of inputs; sqrt in float64 rounded once to float32 is exact (53 >= 2*24 + 2)."""
    return torch.sqrt(v.double()).float()


def box_muller_f32(ua: torch.Tensor, ub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton's pair_uniform_to_normal with fastscore's log/sin/cos."""
    ua = torch.maximum(ua, _f32(U_MIN, ua))
    r = sqrt_f32(_f32(-2.0, ua) * log_f32(ua))
    sin, cos = sincos_2pi_f32(ub)
    return r * cos, r * sin


def normals_at(seed: int, counters: torch.Tensor) -> torch.Tensor:
    """The four float32 normals of each counter, shape counters.shape + (4,)."""
    w = philox4x32(seed, counters)
    u = [uniform_f32(wi) for wi in w]
    n0, n1 = box_muller_f32(u[0], u[1])
    n2, n3 = box_muller_f32(u[2], u[3])
    return torch.stack((n0, n1, n2, n3), dim=-1)


# --------------------------------------------------------------------------- laying out the stream


def _key(seed_t, seed):
    """The Philox key as an int (two's complement) or a 0-d int64 tensor (read lazily by torch ops)."""
    return seed if seed_t is None else seed_t.reshape(())


def lay_out_stream(shape, offset_t, offset, device, values_at, dtype) -> torch.Tensor:
    """Lays a per-counter stream over ``shape`` (C order), rows from the offset: element j
    is component j & 3 of ``values_at(counters)`` ([n, 4]) at counter j >> 2. A tensor
    offset stays on its device: the counters and the gather index are computed from it
    with torch ops, so nothing is read on the host."""
    shape = tuple(int(s) for s in shape)
    rows, per_row = row_geometry(shape)
    numel = rows * per_row
    if numel == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    if offset_t is None:
        j0 = int(offset) * per_row
        c_first, c_last = j0 >> 2, (j0 + numel - 1) >> 2
        counters = torch.arange(c_first, c_last + 1, dtype=torch.int64, device=device)
        start = j0 - 4 * c_first
        flat = values_at(counters).reshape(-1)[start:start + numel]
    else:
        j0 = offset_t.reshape(()).to(device) * per_row
        n_counters = ((numel + 2) >> 2) + 1  # whatever j0 & 3 is
        counters = (j0 >> 2) + torch.arange(n_counters, dtype=torch.int64, device=device)
        index = (j0 & 3) + torch.arange(numel, dtype=torch.int64, device=device)
        flat = values_at(counters).reshape(-1)[index]
    return flat.reshape(shape).to(dtype)


def noise(shape, seed, offset=0, dtype=torch.float32, device="cpu", seed_t=None, offset_t=None) -> torch.Tensor:
    """The stream laid out over ``shape`` (C order), rows starting at ``offset``."""
    key = _key(seed_t, seed_bits(seed) if seed_t is None else 0)
    return lay_out_stream(shape, offset_t, offset, device, lambda c: normals_at(key, c), dtype)


def rademacher(shape, seed, offset=0, dtype=torch.float32, device="cpu", seed_t=None, offset_t=None):
    """Rademacher probes from the same Philox words: element j is +1, or -1 when bit 31
    of word (j & 3) at counter j >> 2 is set (rows from ``offset``, as ``noise``)."""
    key = _key(seed_t, seed_bits(seed) if seed_t is None else 0)

    def signs(counters):
        return 1 - 2 * ((torch.stack(philox4x32(key, counters), -1) >> 31) & 1)

    return lay_out_stream(shape, offset_t, offset, device, signs, dtype)


NOISE_DISTS = ("gaussian", "rademacher")


def _stream_like(t, seed_t, seed, offset_t, offset, dist=0):
    make = noise if dist == 0 else rademacher
    return make(t.shape, seed, offset, torch.float32, t.device, seed_t=seed_t, offset_t=offset_t)


# --------------------------------------------------------------------------- the plain signatures


def fill_noise_(out, dist, seed_t, seed, offset_t, offset):
    """out <- the stream over out's shape (dist 0: normals, 1: Rademacher signs), converted
    to out's dtype (fp16/bf16 round the fp32 normal to nearest, fp64 is exact)."""
    if out.numel():
        out.copy_(_stream_like(out, seed_t, seed, offset_t, offset, dist))


def fill_philox_(out, seed_t, seed, counter):
    """out: int32 [n, 4]; row r gets the four words (bit patterns) of counter ``counter`` + r."""
    counters = torch.arange(counter, counter + out.shape[0], dtype=torch.int64, device=out.device)
    w = torch.stack(philox4x32(_key(seed_t, seed), counters), dim=1)
    out.copy_((w - ((w >> 31) << 32)).to(torch.int32))


def fill_labels_(out, n_levels, seed_t, seed, counter):
    """out: int64 [n]; row r gets the level index (stream_label) of word 0 at counter ``counter`` + r."""
    counters = torch.arange(counter, counter + out.shape[0], dtype=torch.int64, device=out.device)
    out.copy_(stream_label(philox4x32(_key(seed_t, seed), counters)[0], n_levels))


def _lsr(z, s):
    """Logical right shift of int64 bit patterns."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def derive_seeds(seed, n):
    """_common.derive_seed(seed, k) for k < n as int64 (two's complement) on seed's device:
    SplitMix64 in int64 arithmetic, which wraps modulo 2**64 like the uint64 original."""
    s = seed.reshape(()).to(torch.int64)
    k = torch.arange(1, n + 1, dtype=torch.int64, device=seed.device)
    z = s + k * seed_bits(SPLITMIX_GAMMA)
    z = (z ^ _lsr(z, 30)) * seed_bits(SPLITMIX_M1)
    z = (z ^ _lsr(z, 27)) * seed_bits(SPLITMIX_M2)
    return z ^ _lsr(z, 31)


def per_sample(coef, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float, 0-d or [B] coefficient as a tensor broadcastable over ``like`` ([B, 1, ...])."""
    if isinstance(coef, torch.Tensor):
        coef = coef.to(device=like.device, dtype=dtype)
        if coef.dim() == 1:
            return coef.reshape((-1,) + (1,) * (like.dim() - 1)) if like.dim() else coef.reshape(())
        return coef
    return torch.as_tensor(coef, dtype=dtype, device=like.device)


def slot_tensors(n_slots, coef_t, coef_slot) -> list:
    """The tensor of each coefficient slot, or None where the float stands."""
    by_slot = [None] * n_slots
    for i, t in zip(coef_slot, coef_t):
        by_slot[i] = t
    return by_slot


def has_noise_term(coef, by_slot, slot) -> bool:
    """The c slot of an output draws noise unless it is the float 0.0."""
    return by_slot[slot] is not None or coef[slot] != 0.0


def _combination(x, ys, coef, by_slot, base, z, cd):
    n = len(ys) + 2

    def c(i):
        t = by_slot[base + i]
        return per_sample(coef[base + i] if t is None else t, x, cd)

    m = c(0) * x.to(cd)
    for k, y in enumerate(ys):
        m = m + c(1 + k) * y.to(cd)
    if has_noise_term(coef, by_slot, base + n - 1):
        m = m + c(n - 1) * z
    return m


def combinations(x, ys, coef, coef_t, coef_slot, n_out, noise, seed_t, seed, offset_t, offset):
    """The n_out combinations of the fused update (module docstring), in the compute dtype."""
    cd = compute_dtype(x.dtype)
    n = len(ys) + 2
    if len(coef) != n * n_out:
        raise ValueError(f"coef: expected {n * n_out} slots for {len(ys)} tensors and {n_out} outputs, got {len(coef)}")
    by_slot = slot_tensors(len(coef), coef_t, coef_slot)
    z = None
    if any(has_noise_term(coef, by_slot, o * n + n - 1) for o in range(n_out)):
        z = (noise if noise is not None else _stream_like(x, seed_t, seed, offset_t, offset)).to(cd)
    return [_combination(x, ys, coef, by_slot, o * n, z, cd) for o in range(n_out)]


def update_(out, out2, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset):
    """out <- combination 0 of x and ys, out2 <- combination 1 (when given). out may be x."""
    vals = combinations(x, ys, coef, coef_t, coef_slot, 1 if out2 is None else 2, noise, seed_t, seed, offset_t,
                        offset)
    if out2 is not None:
        out2.copy_(vals[1])
    out.copy_(vals[0])


def step_(x, out2, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset):
    """In place: x <- combination 0 of x and ys; out2 <- combination 1 (when given)."""
    update_(x, out2, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset)


def lincomb(x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset):
    """Out of place and differentiable: combination 0 of x and ys, in x's dtype."""
    return combinations(x, ys, coef, coef_t, coef_slot, 1, noise, seed_t, seed, offset_t, offset)[0].to(x.dtype)


def row_sq_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-row sum of squares in float64 (values converted exactly from their dtype)."""
    rows, per_row = row_geometry(t.shape)
    return (t.double() ** 2).reshape(rows, per_row).sum(1)


def langevin_corrector_(x, x_mean, score, snr, alpha, alpha_t, per_sample, noise, seed_t, seed, offset_t, offset):
    """One LangevinCorrector step in place: x <- x + eps*score + sqrt(2 eps)*z. Pass 1
    reduces |score|^2 and |z|^2 per row; pass 2 is the fused update with those eps."""
    if x.numel() == 0:
        return
    z = (noise if noise is not None else _stream_like(x, seed_t, seed, offset_t, offset)).to(compute_dtype(x.dtype))
    eps = corrector_step_size(row_sq_norms(score), row_sq_norms(z), snr, alpha if alpha_t is None else alpha_t,
                              per_sample)
    coef_t, coef_slot = [eps, torch.sqrt(eps * 2.0)] + ([eps] if x_mean is not None else []), [1, 2, 4]
    update_(x, x_mean, x, [score], [1.0, 0.0, 0.0] * (1 if x_mean is None else 2), coef_t, coef_slot[:len(coef_t)],
            z, None, 0, None, 0)


def _inverse(sigma, sigma_t):
    """1/sigma in float64 (rounded to the compute dtype by the caller, as every kernel does)."""
    return 1.0 / sigma if sigma_t is None else 1.0 / sigma_t.double()


def _weight64(weight, weight_t, like):
    w = torch.as_tensor(weight if weight_t is None else weight_t, dtype=torch.float64, device=like.device)
    return w.reshape(-1) if w.dim() else w


def dsm_residual(score, sigma, sigma_t, noise, seed_t, seed, offset_t, offset):
    """d = score + z * (1/sigma) in the compute dtype (the product rounded first)."""
    cd = compute_dtype(score.dtype)
    z = noise if noise is not None else _stream_like(score, seed_t, seed, offset_t, offset)
    return score.to(cd) + z.to(cd) * per_sample(_inverse(sigma, sigma_t), score, cd)


def dsm_loss(score, sigma, sigma_t, weight, weight_t, noise, seed_t, seed, offset_t, offset):
    """Per-sample 0.5 * w * |score + z/sigma|^2 (float64 row sums, returned in the compute dtype)."""
    cd = compute_dtype(score.dtype)
    rows, _ = row_geometry(score.shape)
    if score.numel() == 0:
        return torch.zeros(rows, dtype=cd, device=score.device)
    d = dsm_residual(score, sigma, sigma_t, noise, seed_t, seed, offset_t, offset)
    return (0.5 * _weight64(weight, weight_t, score) * row_sq_norms(d)).to(cd).expand(rows)


def dsm_loss_backward(grad, score, sigma, sigma_t, weight, weight_t, noise, seed_t, seed, offset_t, offset):
    """d loss_b / d score = ((g_b * w_b) -> cd) * (score + z/sigma), z regenerated."""
    if score.numel() == 0:
        return torch.zeros_like(score)
    d = dsm_residual(score, sigma, sigma_t, noise, seed_t, seed, offset_t, offset)
    gc = (grad.double() * _weight64(weight, weight_t, score)).to(d.dtype)
    return (per_sample(gc, d, d.dtype) * d).to(score.dtype)


def sliced_score_terms(score, jv, v, variance_reduction):
    """Per-sample sliced score matching terms, mean over P projections, and the dots v.s:
    terms = (1/P) sum_p [ v_p . jv_p + 0.5 (v_p . s)^2 ]   (or + 0.5 |s|^2 with variance reduction)
    score [B, ...], jv and v [B, P, ...]; dot products in float64, terms in the compute dtype."""
    cd = compute_dtype(score.dtype)
    B, P, D = jv.shape[0], jv.shape[1], math.prod(score.shape[1:])  # D explicit: B may be 0
    s64 = score.to(cd).double().reshape(B, 1, D)
    v64 = v.to(cd).double().reshape(B, P, D)
    trace = (v64 * jv.to(cd).double().reshape(B, P, D)).sum(-1)
    dots = (v64 * s64).sum(-1)
    if variance_reduction:
        second = 0.5 * (s64[:, 0] ** 2).sum(-1)[:, None]
    else:
        second = 0.5 * dots**2
    if P == 0:
        return torch.zeros(B, dtype=cd, device=score.device), dots
    return (trace + second).mean(1).to(cd), dots


def sliced_score_terms_backward(grad, score, v, dots, variance_reduction):
    """(d terms / d score, d terms / d jv) with grad [B]: g/P * v for jv; g * s (variance
    reduction) or sum_p (g/P * dots_p) v_p for the score."""
    B, P = v.shape[0], v.shape[1]
    cd = compute_dtype(score.dtype)
    if P == 0:
        return torch.zeros_like(score), torch.zeros_like(v)
    g = grad.double().reshape(B, 1)
    gp = g / P
    shape_p = (B, P) + (1,) * (score.dim() - 1)
    grad_jv = (gp.to(cd).reshape((B, 1) + (1,) * (score.dim() - 1)) * v.to(cd)).to(v.dtype)
    if variance_reduction:
        grad_score = (g.to(cd).reshape((B,) + (1,) * (score.dim() - 1)) * score.to(cd)).to(score.dtype)
    else:
        c = (gp * dots.double()).to(cd).reshape(shape_p)
        grad_score = (c * v.to(cd)).sum(1).to(score.dtype)
    return grad_score, grad_jv
