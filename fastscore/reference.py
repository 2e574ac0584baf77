"""Eager-PyTorch ground truth: the noise stream and the fused updates.

Every other backend (C++, CUDA, Triton) must reproduce these functions BIT FOR BIT
for float32 (see SPEC "Noise"). The definitions:

Philox4x32-10 (Triton's constants). Key = (seed mod 2**64) split into (lo, hi)
32-bit words, counter = (c_lo, c_hi, 0, 0). Element j of the stream is component
j & 3 of the four normals made from the words at counter j >> 2:

    u_i  = uniform(w_i)                       Triton's uint32 -> [0, 1) map
    r    = sqrt(-2 * log(max(u0, 1e-7)))      n0 = r * cos(2 pi u1), n1 = r * sin(2 pi u1)
    r'   = sqrt(-2 * log(max(u2, 1e-7)))      n2 = r' * cos(2 pi u3), n3 = r' * sin(2 pi u3)

log, sin and cos are fastscore's own float32 routines (``log_f32``, ``sincos_2pi_f32``):
only IEEE-rounded +, -, *, /, sqrt and integer/bit operations, evaluated in one fixed
order, so eager torch, C++, CUDA and Triton compute the same bits. Constants are given
as exact float32 values (hex) so no compiler rounds a decimal literal differently.

Rows: ``offset`` counts rows (dim 0). For a tensor of B rows of R elements, element k
of row r under offset o has global index j = (o + r) * R + k.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10

# Exact float32 constants. csrc/philox.h and kernels/noise.py spell the same values.
UNIFORM_SCALE = float.fromhex("0x1.fffffep-32")  # Triton's 4.6566127342e-10 in fp32
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


def uniform_f32(w: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float: int32 view x, x<0 -> ~x, then float(x) * scale."""
    x = (w - ((w >> 31) << 32)).to(torch.int32)
    x = torch.where(x < 0, ~x, x)
    return x.to(torch.float32) * _f32(UNIFORM_SCALE, w)


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


def row_geometry(shape) -> tuple[int, int]:
    """(rows, elements per row) of a shape; a 0-d tensor is one row of one element."""
    numel = 1
    for s in shape:
        numel *= int(s)
    rows = int(shape[0]) if len(shape) > 0 else 1
    return rows, (numel // rows if rows > 0 else 0)


def lay_out_stream(shape, offset, device, values_at, dtype) -> torch.Tensor:
    """Lays a per-counter stream over ``shape`` (C order), rows from ``offset``: element j
    is component j & 3 of ``values_at(counters)`` ([n, 4]) at counter j >> 2."""
    shape = tuple(int(s) for s in shape)
    rows, per_row = row_geometry(shape)
    numel = rows * per_row
    if numel == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    j0 = int(offset) * per_row
    c_first, c_last = j0 >> 2, (j0 + numel - 1) >> 2
    counters = torch.arange(c_first, c_last + 1, dtype=torch.int64, device=device)
    start = j0 - 4 * c_first
    return values_at(counters).reshape(-1)[start : start + numel].reshape(shape).to(dtype)


def noise(shape, seed: int, offset: int = 0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The stream laid out over ``shape`` (C order), rows starting at ``offset``."""
    return lay_out_stream(shape, offset, device, lambda c: normals_at(seed, c), dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Math precision of a storage dtype: fp64 for fp64, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample(coef, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A scalar or [B] coefficient as a tensor broadcastable over ``like`` ([B, 1, ...])."""
    if isinstance(coef, torch.Tensor) and coef.dim() == 1:
        return coef.to(dtype).reshape((-1,) + (1,) * (like.dim() - 1))
    return torch.as_tensor(coef, dtype=dtype, device=like.device)


def fused_update(x, score, a, b, c, seed, offset=0, noise_tensor=None, with_noise=True):
    """(out, mean) with mean = a*x + b*score and out = mean + c*z, in the compute dtype,
    each product and sum rounded in that order. ``score=None`` drops the b term;
    ``with_noise=False`` drops the c term (no RNG)."""
    cd = compute_dtype(x.dtype)
    mean = per_sample(a, x, cd) * x.to(cd)
    if score is not None:
        mean = mean + per_sample(b, x, cd) * score.to(cd)
    if not with_noise:
        return mean, mean
    if noise_tensor is None:
        z = noise(x.shape, seed, offset, dtype=torch.float32, device=x.device).to(cd)
    else:
        z = noise_tensor.to(cd)
    return mean + per_sample(c, x, cd) * z, mean


def step_(x, score, a, b, c, seed, offset=0, x_mean=None, noise_tensor=None, with_noise=True):
    out, mean = fused_update(x, score, a, b, c, seed, offset, noise_tensor, with_noise)
    if x_mean is not None:
        x_mean.copy_(mean)
    x.copy_(out)
    return x


def perturb(x, mean_scale, sigma, seed, offset=0, noise_tensor=None):
    out, _ = fused_update(x, None, mean_scale, 0.0, sigma, seed, offset, noise_tensor)
    return out.to(x.dtype)


def corrector_step_size(sq_score, sq_noise, snr, alpha, per_sample: bool):
    """score_sde's LangevinCorrector rule from per-row sums of squares (float64 [B]):
    eps = (snr * |z| / |s|)**2 * 2 * alpha, with batch means of the norms ("batch", as
    score_sde and diffusers) or per row ("per_sample"). A zero score norm gives eps = 0
    (score_sde would produce inf/NaN). Returns float64 eps ([B] or 0-d)."""
    g, n = torch.sqrt(sq_score), torch.sqrt(sq_noise)
    if not per_sample:
        g, n = g.mean(), n.mean()
    ratio = torch.where(g > 0, snr * n / torch.where(g > 0, g, torch.ones_like(g)), torch.zeros_like(g))
    return ratio * ratio * 2.0 * torch.as_tensor(alpha, dtype=torch.float64, device=g.device)


def row_sq_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-row sum of squares in float64 (values converted exactly from their dtype)."""
    rows, per_row = row_geometry(t.shape)
    return (t.double() ** 2).reshape(rows, per_row).sum(1)


def langevin_corrector_(x, score, snr, seed, offset=0, alpha=1.0, per_sample=False, x_mean=None,
                        noise_tensor=None):
    """One LangevinCorrector step in place: x <- x + eps*score + sqrt(2 eps)*z. Pass 1
    reduces |score|^2 and |z|^2 per row; pass 2 is the fused update with those eps."""
    if noise_tensor is None:
        z = noise(x.shape, seed, offset, dtype=torch.float32, device=x.device)
    else:
        z = noise_tensor
    z = z.to(compute_dtype(x.dtype))
    eps = corrector_step_size(row_sq_norms(score), row_sq_norms(z), snr, alpha, per_sample)
    if eps.dim() == 0 and x.dim() > 0:
        eps = eps.expand(x.shape[0])
    eps = eps.reshape(-1) if x.dim() > 0 else eps.reshape(())
    return step_(x, score, 1.0, eps, torch.sqrt(eps * 2.0), seed, offset, x_mean, noise_tensor=z)


def dsm_residual(score, inv_sigma, seed, offset=0, noise_tensor=None):
    """d = score + z / sigma in the compute dtype (z * (1/sigma), then the sum)."""
    cd = compute_dtype(score.dtype)
    z = noise(score.shape, seed, offset, device=score.device) if noise_tensor is None else noise_tensor
    return score.to(cd) + z.to(cd) * per_sample(inv_sigma, score, cd)


def _row_weight(weight, like):
    w = torch.as_tensor(weight, dtype=torch.float64, device=like.device)
    return w.reshape(-1) if w.dim() else w


def dsm_loss(score, inv_sigma, weight, seed, offset=0, noise_tensor=None):
    """Per-sample 0.5 * w * |score + z/sigma|^2 (float64 row sums, returned in the compute dtype)."""
    d = dsm_residual(score, inv_sigma, seed, offset, noise_tensor)
    return (0.5 * _row_weight(weight, score) * row_sq_norms(d)).to(d.dtype)


def dsm_loss_backward(grad, score, inv_sigma, weight, seed, offset=0, noise_tensor=None):
    """d loss_b / d score = (g_b * w_b) * (score + z/sigma), z regenerated."""
    d = dsm_residual(score, inv_sigma, seed, offset, noise_tensor)
    gc = (grad.double() * _row_weight(weight, score)).to(d.dtype)
    return (per_sample(gc, d, d.dtype) * d).to(score.dtype)


def rademacher(shape, seed, offset=0, dtype=torch.float32, device="cpu"):
    """Rademacher probes from the same Philox words: element j is +1, or -1 when bit 31
    of word (j & 3) at counter j >> 2 is set (rows from ``offset``, as ``noise``)."""
    def signs(counters):
        return 1 - 2 * ((torch.stack(philox4x32(seed, counters), -1) >> 31) & 1)

    return lay_out_stream(shape, offset, device, signs, dtype)


def sliced_score_terms(score, jv, v, variance_reduction=False):
    """Per-sample sliced score matching terms, mean over P projections:
    (1/P) sum_p [ v_p . jv_p + 0.5 (v_p . s)^2 ]   (or + 0.5 |s|^2 with variance reduction)
    score [B, ...], jv and v [B, P, ...]; dot products in float64, result in the compute dtype."""
    cd = compute_dtype(score.dtype)
    B, P = jv.shape[0], jv.shape[1]
    s64 = score.to(cd).double().reshape(B, 1, -1)
    v64 = v.to(cd).double().reshape(B, P, -1)
    trace = (v64 * jv.to(cd).double().reshape(B, P, -1)).sum(-1)
    if variance_reduction:
        second = 0.5 * (s64[:, 0] ** 2).sum(-1)[:, None]
    else:
        second = 0.5 * (v64 * s64).sum(-1) ** 2
    return (trace + second).mean(1).to(cd)
