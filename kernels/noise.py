"""The fastscore noise stream in Triton, bit for bit ``fastscore/reference.py``.

Math (SPEC "Noise"; reference.py is the ground truth, csrc/philox.h the C++/CUDA twin)
-----------------------------------------------------------------------------------
Key (k0, k1) = (seed mod 2**64) split into low/high 32-bit words. Counter c (int64)
is the Philox4x32-10 block (c_lo, c_hi, 0, 0); ``tl.randint4x(seed, c)`` computes
exactly that (Triton's constants), giving four uint32 words w0..w3.

    u_i  = float(x_i) * 0x1.fffffep-32,   x_i = int32(w_i), negative -> ~x_i
    r    = sqrt(-2 * log(max(u0, 1e-7)))       n0 = r * cos(2 pi u1)   n1 = r * sin(2 pi u1)
    r'   = sqrt(-2 * log(max(u2, 1e-7)))       n2 = r'* cos(2 pi u3)   n3 = r'* sin(2 pi u3)

    log(u):   u = 2^e * m, m folded into [sqrt(1/2), sqrt(2)];  s = (m - 1) / (m + 1)
              log m = 2 atanh(s) = f - s*(f - z*P(z)),  z = s*s,  P = L3 + z(L5 + z(L7 + z L9))
              log u = e*LN2_HI + (log m + e*LN2_LO)
    sincos:   t = 4u (exact), q = floor(t) (quadrant), f = t - q (exact), g = min(f, 1 - f)
              sin(pi/2 g) = g*S(g^2),  cos(pi/2 g) = 1 + g^2*C(g^2), swapped when f > 1/2,
              then rotated by q quarter turns (sign flips and swaps only).

Element j (int64, flat C order, global across the batch) is component j & 3 of the
normals at counter j >> 2. A tensor of B rows of R elements under row ``offset`` o
holds element k of row r at j = (o + r) * R + k.

Why it is written the way it is
-------------------------------
* Bitwise agreement with the eager reference needs every float op IEEE-rounded and in
  the same order: only ``+ - *``, ``tl.div_rn``, ``tl.sqrt_rn``, bit casts, integer ops
  and ``tl.where``. Plain ``/`` on floats compiles to an approximate divide, ``tl.log``,
  ``tl.sin``, ``tl.cos`` and ``tl.randn`` differ between devices, and fused
  multiply-adds change the rounding, so every launch passes ``enable_fp_fusion=False``.
* Negation flips the sign bit (``_neg``; PTX ``neg.f32``), never ``0 - x``: sin/cos are
  exactly 0 at u = 1/4, 1/2 and the reference, C++ and CUDA negate those to -0.
* Constants are the exact float32 values of reference.py (hex), so no compiler ever
  rounds a decimal literal.
* A program handles BLOCK consecutive counters = 4*BLOCK consecutive stream elements;
  the four normals of a counter are computed once and interleaved into element order,
  so loads and stores stay contiguous (no 4x redundant Philox/Box-Muller work).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastscore._common import SPLITMIX_GAMMA, SPLITMIX_M1, SPLITMIX_M2, counter_span, row_geometry

from ._common import as_int64, block_for, load_int, stream_args, written

# ---------------------------------------------------------------------------------------
# Exact float32 constants (same hex spelling as reference.py and csrc/philox.h).
# tl.constexpr so jit functions may read them as globals.
# ---------------------------------------------------------------------------------------
_h = float.fromhex
UNIFORM_SCALE = tl.constexpr(_h("0x1.fffffep-32"))  # Triton's 4.6566127342e-10 in fp32
U_MIN = tl.constexpr(_h("0x1.ad7f2ap-24"))  # 1e-7 in fp32
SQRT2 = tl.constexpr(_h("0x1.6a09e6p+0"))
LN2_HI = tl.constexpr(_h("0x1.62e3p-1"))
LN2_LO = tl.constexpr(_h("0x1.2fefa2p-17"))
L3 = tl.constexpr(_h("0x1.555556p-1"))
L5 = tl.constexpr(_h("0x1.99999ap-2"))
L7 = tl.constexpr(_h("0x1.24924ap-2"))
L9 = tl.constexpr(_h("0x1.c71c72p-3"))
S1 = tl.constexpr(_h("0x1.921fb6p+0"))
S3 = tl.constexpr(_h("-0x1.4abbcep-1"))
S5 = tl.constexpr(_h("0x1.466bc6p-4"))
S7 = tl.constexpr(_h("-0x1.32d2ccp-8"))
S9 = tl.constexpr(_h("0x1.507834p-13"))
C2 = tl.constexpr(_h("-0x1.3bd3ccp+0"))
C4 = tl.constexpr(_h("0x1.03c1f0p-2"))
C6 = tl.constexpr(_h("-0x1.55d3c8p-6"))
C8 = tl.constexpr(_h("0x1.e1f506p-11"))
C10 = tl.constexpr(_h("-0x1.a6d1f2p-16"))
SIGN_BIT = tl.constexpr(-(2**31))  # 0x80000000 as int32
GAMMA = tl.constexpr(SPLITMIX_GAMMA)  # SplitMix64 (the step seeds), uint64 constants
M1 = tl.constexpr(SPLITMIX_M1)
M2 = tl.constexpr(SPLITMIX_M2)
del _h

GPU_BLOCK = 256  # counters per program on the GPU


# ---------------------------------------------------------------------------------------
# Device helpers: exact ports of reference.py
# ---------------------------------------------------------------------------------------
@triton.jit
def _neg(x):
    """-x by flipping the sign bit (exact, and -(+0) = -0 on every backend)."""
    return (x.to(tl.int32, bitcast=True) ^ SIGN_BIT).to(tl.float32, bitcast=True)


@triton.jit
def uniform_f32(w):
    """Triton's uint_to_uniform_float: int32 view, negative -> ~x, float(x) * scale."""
    x = w.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, ~x, x)
    return x.to(tl.float32) * UNIFORM_SCALE


@triton.jit
def log_f32(u):
    """log(u) for positive normal float32 u: exponent bits + 2*atanh series on the mantissa."""
    bits = u.to(tl.int32, bitcast=True)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)  # [1, 2)
    big = m > SQRT2
    m = tl.where(big, m * 0.5, m)  # [sqrt(1/2), sqrt(2)]
    e = tl.where(big, e + 1, e)
    f = m - 1.0  # exact (Sterbenz)
    s = tl.div_rn(f, m + 1.0)
    z = s * s
    r = L9 * z + L7  # constant first: L9 * z == z * L9 (commutative), same rounding
    r = r * z + L5
    r = r * z + L3
    r = z * r
    log_m = f - s * (f - r)  # = 2s + s*r
    ef = e.to(tl.float32)
    return ef * LN2_HI + (log_m + ef * LN2_LO)


@triton.jit
def sincos_2pi_f32(u):
    """(sin 2 pi u, cos 2 pi u) for u in [0, 1): quadrant from 4u (exact), then a
    polynomial in g in [0, 1/2] (the larger half folded by the exact 1 - f)."""
    t = u * 4.0
    q = t.to(tl.int32)  # truncation = floor, t >= 0
    f = t - q.to(tl.float32)
    swap = f > 0.5
    g = tl.where(swap, 1.0 - f, f)
    z = g * g
    sp = S9 * z + S7
    sp = sp * z + S5
    sp = sp * z + S3
    sp = sp * z + S1
    sp = g * sp
    cp = C10 * z + C8
    cp = cp * z + C6
    cp = cp * z + C4
    cp = cp * z + C2
    cp = cp * z + 1.0
    s_f = tl.where(swap, cp, sp)  # sin(pi/2 f)
    c_f = tl.where(swap, sp, cp)  # cos(pi/2 f)
    odd = (q & 1) == 1
    s_q = tl.where(odd, c_f, s_f)
    c_q = tl.where(odd, s_f, c_f)
    sin = tl.where(q >= 2, _neg(s_q), s_q)
    cos = tl.where((q == 1) | (q == 2), _neg(c_q), c_q)
    return sin, cos


@triton.jit
def box_muller_f32(ua, ub):
    """Triton's pair_uniform_to_normal with fastscore's log/sin/cos: (r cos, r sin)."""
    ua = tl.where(ua < U_MIN, U_MIN, ua)  # max(u, 1e-7); u is never NaN
    r = tl.sqrt_rn(-2.0 * log_f32(ua))
    sin, cos = sincos_2pi_f32(ub)
    return r * cos, r * sin


@triton.jit
def normals4(seed, counter):
    """The four float32 normals of int64 ``counter`` (a block) under ``seed``."""
    w0, w1, w2, w3 = tl.randint4x(seed, counter)
    n0, n1 = box_muller_f32(uniform_f32(w0), uniform_f32(w1))
    n2, n3 = box_muller_f32(uniform_f32(w2), uniform_f32(w3))
    return n0, n1, n2, n3


@triton.jit
def interleave4(a, b, c, d, BLOCK: tl.constexpr):
    """Four [BLOCK] blocks -> one [4*BLOCK] block whose element 4t + k is input k at t
    (join adds a minor dim: join(join(a, c), join(b, d))[t, p, r] is input 2p + r)."""
    return tl.reshape(tl.join(tl.join(a, c), tl.join(b, d)), (4 * BLOCK,))


@triton.jit
def row_block_elements(base, R, n_blocks, BLOCK: tl.constexpr):
    """The elements one program of a per-row reduction covers: program (row, blk) takes
    the 4*BLOCK stream elements from counter (row_j >> 2) + blk*BLOCK, row_j = base + row*R
    the global index of the row's element 0. Returns (row, first counter, flat index i,
    in-row mask); masked lanes point at the row's element 0 so addresses stay in range."""
    pid = tl.program_id(0).to(tl.int64)
    R = as_int64(R)
    nb = as_int64(n_blocks)
    row = pid // nb
    blk = pid - row * nb
    row_j = as_int64(base) + row * R
    first = (row_j >> 2) + blk * BLOCK
    k = first * 4 + tl.arange(0, 4 * BLOCK).to(tl.int64) - row_j  # element index within the row
    mask = (k >= 0) & (k < R)
    return row, first, row * R + tl.where(mask, k, 0), mask


@triton.jit
def stream_block(seed, first_counter, BLOCK: tl.constexpr):
    """Stream elements 4*first_counter ... 4*(first_counter + BLOCK) - 1, in order."""
    counter = first_counter + tl.arange(0, BLOCK).to(tl.int64)
    n0, n1, n2, n3 = normals4(seed, counter)
    return interleave4(n0, n1, n2, n3, BLOCK)


def row_block_grid(R: int, device) -> tuple[int, int]:
    """(BLOCK counters per program, programs per row) for row_block_elements: a row of R
    elements spans at most counter_span(R) counters, wherever its element 0 sits within a
    counter (which a device offset hides from the host)."""
    n_counters = counter_span(R)
    block = block_for(device, n_counters, GPU_BLOCK)
    return block, triton.cdiv(n_counters, block)


@triton.jit
def sign_block(seed, first_counter, BLOCK: tl.constexpr):
    """Rademacher probes of stream elements 4*first_counter ... : -1 where bit 31 of the
    element's Philox word is set, else +1 (float32)."""
    counter = first_counter + tl.arange(0, BLOCK).to(tl.int64)
    w0, w1, w2, w3 = tl.randint4x(seed, counter)
    w = interleave4(w0, w1, w2, w3, BLOCK).to(tl.int32, bitcast=True)
    return tl.where(w < 0, -1.0, 1.0)


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["seed", "offset", "R", "n"])
def noise_kernel(out_ptr, seed_ptr, seed, offset_ptr, offset, R, n,
                 DIST: tl.constexpr, SEED_PTR: tl.constexpr, OFFSET_PTR: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = stream[base + i] for i < n, base = offset * R (DIST 0: normals, 1: signs).
    Program p covers the BLOCK counters from (base >> 2) + p*BLOCK, i.e. 4*BLOCK stream
    elements, some of them outside [base, base+n): masked."""
    seed = load_int(seed_ptr, seed, SEED_PTR)
    base = load_int(offset_ptr, offset, OFFSET_PTR) * as_int64(R)
    n = as_int64(n)
    first = (base >> 2) + tl.program_id(0).to(tl.int64) * BLOCK
    if DIST == 0:
        z = stream_block(seed, first, BLOCK)
    else:
        z = sign_block(seed, first, BLOCK)
    i = first * 4 + tl.arange(0, 4 * BLOCK).to(tl.int64) - base  # output index of each element
    mask = (i >= 0) & (i < n)
    tl.store(out_ptr + tl.where(mask, i, 0), z.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed", "first", "n"])
def philox_kernel(out_ptr, seed_ptr, seed, first, n, SEED_PTR: tl.constexpr, BLOCK: tl.constexpr):
    """out[t, k] = word k (bit pattern as int32) of Philox at counter first + t, t < n."""
    seed = load_int(seed_ptr, seed, SEED_PTR)
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    w0, w1, w2, w3 = tl.randint4x(seed, as_int64(first) + t)
    w = interleave4(w0, w1, w2, w3, BLOCK).to(tl.int32, bitcast=True)
    idx = tl.program_id(0).to(tl.int64) * (4 * BLOCK) + tl.arange(0, 4 * BLOCK).to(tl.int64)
    tl.store(out_ptr + idx, w, mask=idx < 4 * as_int64(n))


@triton.jit(do_not_specialize=["seed", "first", "n", "n_levels"])
def labels_kernel(out_ptr, seed_ptr, seed, first, n, n_levels, SEED_PTR: tl.constexpr, BLOCK: tl.constexpr):
    """out[t] = floor(uniform_f32(word 0 at counter first + t) * n_levels) in float64, at most
    n_levels - 1 (fastscore._common.stream_label), t < n."""
    seed = load_int(seed_ptr, seed, SEED_PTR)
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    w0, _, _, _ = tl.randint4x(seed, as_int64(first) + t)
    levels = as_int64(n_levels)
    v = uniform_f32(w0).to(tl.float64) * levels.to(tl.float64)
    tl.store(out_ptr + t, tl.minimum(v.to(tl.int64), levels - 1), mask=t < as_int64(n))


@triton.jit(do_not_specialize=["n"])
def derive_seeds_kernel(out_ptr, seed_ptr, n, BLOCK: tl.constexpr):
    """out[k] = SplitMix64's k-th output from state *seed_ptr (fastscore._common.derive_seed),
    in uint64 arithmetic, stored as its int64 bit pattern."""
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    s = tl.load(seed_ptr).to(tl.uint64)
    z = s + (k + 1).to(tl.uint64) * GAMMA
    z = (z ^ (z >> 30)) * M1
    z = (z ^ (z >> 27)) * M2
    z = z ^ (z >> 31)
    tl.store(out_ptr + k, z.to(tl.int64, bitcast=True), mask=k < as_int64(n))


# ---------------------------------------------------------------------------------------
# Launchers (the plain signatures of fastscore/ops.py SCHEMAS)
# ---------------------------------------------------------------------------------------
def fill_noise_(out, dist, seed_t, seed, offset_t, offset) -> None:
    """Fill ``out`` (any shape/strides, fp32/fp16/bf16/fp64) with the stream, rows from the
    offset: normals (dist 0, fp16/bf16 round the fp32 normal to nearest, fp64 is exact) or
    Rademacher signs (dist 1)."""
    n = out.numel()
    if n == 0:
        return
    _, R = row_geometry(out.shape)
    target = out if out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype, device=out.device)
    args, flags = stream_args(seed_t, seed, offset_t, offset, out.device)
    block = block_for(out.device, counter_span(n), GPU_BLOCK)
    noise_kernel[(triton.cdiv(counter_span(n), block),)](target, *args, R, n, DIST=int(dist), BLOCK=block,
                                                         enable_fp_fusion=False, **flags)
    if target is not out:
        out.copy_(target)
    written(target)


def fill_philox_(out, seed_t, seed, counter) -> None:
    """out: int32 [n, 4], the bit patterns of Philox words (w0..w3) at counters counter + r."""
    n = out.shape[0]
    if n == 0:
        return
    (sp, s, _, _), flags = stream_args(seed_t, seed, None, 0, out.device)
    block = block_for(out.device, n, GPU_BLOCK)
    philox_kernel[(triton.cdiv(n, block),)](out, sp, s, int(counter), n, SEED_PTR=flags["SEED_PTR"], BLOCK=block,
                                            enable_fp_fusion=False)
    written(out)


def fill_labels_(out, n_levels, seed_t, seed, counter) -> None:
    """out: int64 [n], the level index of word 0 at counters counter + r (stream_label)."""
    n = out.shape[0]
    if n == 0:
        return
    (sp, s, _, _), flags = stream_args(seed_t, seed, None, 0, out.device)
    block = block_for(out.device, n, GPU_BLOCK)
    labels_kernel[(triton.cdiv(n, block),)](out, sp, s, int(counter), n, int(n_levels), SEED_PTR=flags["SEED_PTR"],
                                            BLOCK=block, enable_fp_fusion=False)
    written(out)


def derive_seeds(seed, n) -> torch.Tensor:
    """int64 [n] on seed's device: the step seeds of a run from the one-element seed tensor."""
    out = torch.empty(n, dtype=torch.int64, device=seed.device)
    if n:
        block = block_for(seed.device, n, GPU_BLOCK)
        derive_seeds_kernel[(triton.cdiv(n, block),)](out, seed, n, BLOCK=block)
    return out
