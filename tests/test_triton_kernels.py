"""Triton backend (kernels/) against the eager reference, bit for bit, under the interpreter.

Covers: Philox words, each float32 helper on edge inputs, the noise stream over shapes,
offsets, strides and dtypes, the fused update (step_/perturb semantics) and, in a
subprocess without the interpreter, the sm_90 PTX of the kernels (no approximate, ftz
or fused instruction).
"""

import pytest
import torch

from triton_support import FORBIDDEN, assert_exact_ptx, compile_ptx_in_subprocess, require_interpreter, setup_triton

triton = setup_triton()  # TRITON_INTERPRET=1 before the first `import triton`; repo root on sys.path
import triton.language as tl  # noqa: E402

from fastscore import reference as R  # noqa: E402
from kernels import noise as KN  # noqa: E402
from kernels.noise import U_MIN, fill_noise_, log_f32, philox_words, sincos_2pi_f32, uniform_f32  # noqa: E402
from kernels.step import fused_update_  # noqa: E402

require_interpreter(KN.noise_kernel)

SEEDS = [0, 1, 3_000_000_000, 2**32 + 5, 2**63 + 7, 2**64 - 1]
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(INT_VIEW[t.dtype])


def assert_bitwise(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    diff = (bits(actual) != bits(expected)).reshape(-1)
    if diff.any():
        k = int(diff.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(diff.sum())}/{diff.numel()} elements differ; first at flat {k}: "
            f"{actual.reshape(-1)[k].item()!r} vs reference {expected.reshape(-1)[k].item()!r}"
        )


def words_as_int32(words) -> torch.Tensor:
    """reference.philox4x32's four int64 tensors in [0, 2**32) -> int32 [n, 4] bit patterns."""
    return torch.stack([(w - ((w >> 31) << 32)).to(torch.int32) for w in words], dim=-1)


# ---------------------------------------------------------------------------------------
# Philox words
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS + [-1])
def test_philox_words_match_reference(seed):
    # 3 ranges x 7 seeds x 50k = 1.05M counters, including counters >= 2**32 and a
    # range straddling 2**32 (the counter's high word changes mid-launch).
    for first in (0, 2**32 - 20_000, 2**40 + 12_345):
        n = 50_000
        got = philox_words(seed, first, n, "cpu")
        ref = words_as_int32(R.philox4x32(seed, torch.arange(first, first + n, dtype=torch.int64)))
        assert got.dtype == torch.int32 and got.shape == (n, 4)
        assert torch.equal(got, ref), f"seed={seed} first={first}"


def test_philox_words_one_big_launch():
    n = 1 << 20
    first = 2**32 - n // 2
    got = philox_words(2**63 + 7, first, n, "cpu")
    ref = words_as_int32(R.philox4x32(2**63 + 7, torch.arange(first, first + n, dtype=torch.int64)))
    assert torch.equal(got, ref)


def test_philox_words_empty():
    assert philox_words(3, 10, 0, "cpu").shape == (0, 4)


# ---------------------------------------------------------------------------------------
# Device helpers on edge inputs (uniform map, log, sin/cos incl. exact quadrant points)
# ---------------------------------------------------------------------------------------
@triton.jit
def _helpers_kernel(w_ptr, u_ptr, log_ptr, sin_ptr, cos_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w = tl.load(w_ptr + offs, mask=mask, other=0).to(tl.uint32, bitcast=True)
    u = uniform_f32(w)
    tl.store(u_ptr + offs, u, mask=mask)
    tl.store(log_ptr + offs, log_f32(tl.where(u < U_MIN, U_MIN, u)), mask=mask)
    s, c = sincos_2pi_f32(u)
    tl.store(sin_ptr + offs, s, mask=mask)
    tl.store(cos_ptr + offs, c, mask=mask)


def test_helpers_match_reference_on_edge_words():
    g = torch.Generator().manual_seed(1)
    rand = torch.randint(0, 2**32, (1 << 18,), generator=g, dtype=torch.int64)
    # Words whose int32 view lands near k * 2**29: u = k/4 exactly for some of them
    # (u = 1/4, 1/2 make cos, sin exactly -0 in the reference), on both sign paths.
    near = torch.cat([torch.arange(k * 2**29 - 300, k * 2**29 + 300) for k in range(1, 4)])
    special = torch.tensor([0, 1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32 - 2, 2**23, 2**24 + 1], dtype=torch.int64)
    w = torch.cat([rand, near, 2**32 - 1 - near, special])
    u_ref = R.uniform_f32(w)
    quarter = u_ref * 4 == torch.round(u_ref * 4)
    assert {0.0, 0.25, 0.5, 0.75} <= set(u_ref[quarter].tolist()), "edge words do not reach the quadrant points"

    n = w.numel()
    w32 = words_as_int32([w]).reshape(-1)
    u, lg, sn, cs = (torch.empty(n) for _ in range(4))
    block = 1 << 16
    _helpers_kernel[(triton.cdiv(n, block),)](w32, u, lg, sn, cs, n, BLOCK=block, enable_fp_fusion=False)
    assert_bitwise(u, u_ref, "uniform_f32")
    assert_bitwise(lg, R.log_f32(torch.clamp(u_ref, min=R.U_MIN)), "log_f32")
    sin_ref, cos_ref = R.sincos_2pi_f32(u_ref)
    assert_bitwise(sn, sin_ref, "sin 2 pi u")
    assert_bitwise(cs, cos_ref, "cos 2 pi u")
    # the signed zeros really are exercised
    assert (bits(sin_ref) == torch.iinfo(torch.int32).min).any()
    assert (bits(cos_ref) == torch.iinfo(torch.int32).min).any()


# ---------------------------------------------------------------------------------------
# The noise stream
# ---------------------------------------------------------------------------------------
SHAPES = [(0,), (1,), (7,), (3, 5), (2, 4096), (5, 3, 7, 9), (), (4, 0, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("offset", [0, 3, 2**33])
def test_noise_matches_reference(shape, offset):
    for seed in (0, 2**63 + 7):
        out = torch.full(shape, float("nan"))
        fill_noise_(out, seed, offset)
        assert_bitwise(out, R.noise(shape, seed, offset), f"shape={shape} offset={offset} seed={seed}")


def test_noise_large_offset_in_uint32_range():
    # base = offset * R in [2**31, 2**32): the interpreter stores such ints as uint32
    shape, offset = (3, 5), 429_496_730
    out = torch.empty(shape)
    fill_noise_(out, 9, offset)
    assert_bitwise(out, R.noise(shape, 9, offset))


def test_noise_one_million_elements():
    out = torch.empty(1000, 1000)
    fill_noise_(out, 2**32 + 5, 2**20)
    assert_bitwise(out, R.noise(out.shape, 2**32 + 5, 2**20))


def test_noise_non_contiguous_out():
    ref = R.noise((6, 9), 11, 5)
    out = torch.full((9, 6), float("nan")).t()  # shape (6, 9), transposed strides
    fill_noise_(out, 11, 5)
    assert not out.is_contiguous()
    assert_bitwise(out, ref, "transposed")

    big = torch.full((6, 18), float("nan"))
    view = big[:, ::2]  # shape (6, 9), strided columns
    fill_noise_(view, 11, 5)
    assert_bitwise(view, ref, "strided")
    assert torch.isnan(big[:, 1::2]).all(), "wrote outside the view"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_noise_dtypes_are_the_fp32_stream_converted(dtype):
    for shape, offset in (((5, 3, 7, 9), 2**33), ((7,), 3)):
        ref32 = torch.empty(shape)
        fill_noise_(ref32, 4, offset)
        out = torch.empty(shape, dtype=dtype)
        fill_noise_(out, 4, offset)
        assert_bitwise(out, ref32.to(dtype))
        assert_bitwise(out, R.noise(shape, 4, offset, dtype=dtype))


def test_noise_rows_split_like_one_batch():
    full = torch.empty(10, 3, 5)
    fill_noise_(full, 21, 100)
    part = torch.empty(4, 3, 5)
    fill_noise_(part, 21, 103)
    assert_bitwise(part, full[3:7])


# ---------------------------------------------------------------------------------------
# The fused update
# ---------------------------------------------------------------------------------------
def make_input(shape, dtype, layout, gen):
    """A tensor of ``shape``; layout "contig" or "strided" (a non-contiguous view)."""
    if layout == "contig" or len(shape) == 0:
        return torch.randn(shape, generator=gen).to(dtype)
    big = torch.randn((*shape[:-1], 2 * shape[-1]), generator=gen).to(dtype)
    t = big[..., ::2]
    assert t.shape == tuple(shape) and (t.numel() <= 1 or not t.is_contiguous())
    return t


def coefficients(per_sample, B, gen):
    """(a, b, c as the reference takes them, coef [3, K] float64 for the launcher)."""
    if per_sample:
        a, b, c = (torch.rand(B, generator=gen, dtype=torch.float64) * s + o for s, o in ((0.5, 0.75), (0.2, 0.0), (1.0, 0.1)))
        return a, b, c, torch.stack([a, b, c])
    a, b, c = 0.9987654321, -0.0123456789, 0.3141592653589793  # none exact in fp32
    return a, b, c, torch.tensor([[a], [b], [c]], dtype=torch.float64)


STEP_SHAPES = [(0,), (0, 3), (), (1,), (7,), (3, 5), (2, 4096), (5, 3, 7, 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("shape", STEP_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contig", "strided"])
def test_step_matches_reference(dtype, shape, layout):
    gen = torch.Generator().manual_seed(hash((str(dtype), shape, layout)) % 2**31)
    B = shape[0] if shape else 1
    seed, offset = 2**63 + 7, 2**33 + 1
    for per_sample in ([False, True] if shape else [False]):
        a, b, c, coef = coefficients(per_sample, B, gen)
        for with_score, with_mean, noise_mode in [
            (True, True, "stream"), (True, False, "stream"), (False, True, "stream"),
            (True, True, "tensor"), (True, True, "none"), (False, False, "none"),
        ]:
            what = f"per_sample={per_sample} score={with_score} mean={with_mean} noise={noise_mode}"
            x = make_input(shape, dtype, layout, gen)
            score = make_input(shape, dtype, layout, gen) if with_score else None
            cd = R.compute_dtype(dtype)
            z = make_input(shape, cd, layout, gen) if noise_mode == "tensor" else None
            mean_ref = torch.full(shape, float("nan"), dtype=dtype) if with_mean else None
            mean_got = make_input(shape, dtype, layout, gen).fill_(float("nan")) if with_mean else None
            x_ref, x_got = x.clone(), x.clone()
            if layout == "strided" and len(shape) > 0:
                x_got = make_input(shape, dtype, layout, gen).copy_(x)  # keep it non-contiguous
            R.step_(x_ref, score, a, b, c, seed, offset, x_mean=mean_ref, noise_tensor=z,
                    with_noise=noise_mode != "none")
            fused_update_(x_got, x_got, score, coef, seed, offset, z, mean_got, noise_mode != "none")
            assert_bitwise(x_got, x_ref, what)
            if with_mean:
                assert_bitwise(mean_got, mean_ref, what + " (mean)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_perturb_matches_reference(dtype):
    gen = torch.Generator().manual_seed(5)
    for shape, layout in (((5, 3, 7, 9), "contig"), ((6, 10), "strided"), ((), "contig")):
        x = make_input(shape, dtype, layout, gen)
        for mean_scale, sigma in ((1.0, 0.5), (0.8181818, 3.3e-3)):
            out = torch.empty(shape, dtype=dtype)
            coef = torch.tensor([[mean_scale], [0.0], [sigma]], dtype=torch.float64)
            fused_update_(out, x, None, coef, 17, 3, None, None, True)
            assert_bitwise(out, R.perturb(x, mean_scale, sigma, 17, 3), f"{shape} {layout}")
        # per-sample sigma
        if shape:
            sig = torch.rand(shape[0], generator=gen, dtype=torch.float64)
            coef = torch.stack([torch.ones_like(sig), torch.zeros_like(sig), sig])
            out = torch.empty(shape, dtype=dtype)
            fused_update_(out, x, None, coef, 17, 3, None, None, True)
            assert_bitwise(out, R.perturb(x, 1.0, sig, 17, 3), f"{shape} {layout} per-sample")


def test_step_out_of_place_leaves_x_and_rows_split():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(10, 3, 5, generator=gen)
    s = torch.randn(10, 3, 5, generator=gen)
    a, b, c, coef = coefficients(True, 10, gen)
    x0 = x.clone()
    full = torch.empty_like(x)
    fused_update_(full, x, s, coef, 5, 40, None, None, True)
    assert torch.equal(x, x0)
    part = torch.empty(4, 3, 5)
    fused_update_(part, x[3:7], s[3:7], coef[:, 3:7], 5, 43, None, None, True)
    assert_bitwise(part, full[3:7])


def test_step_rejects_bad_coef_and_shapes():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="coef"):
        fused_update_(x, x, None, torch.zeros(3, 2, dtype=torch.float64), 0, 0, None, None, True)
    with pytest.raises(ValueError, match="score"):
        fused_update_(x, x, torch.zeros(4, 2), torch.zeros(3, 1, dtype=torch.float64), 0, 0, None, None, True)


# ---------------------------------------------------------------------------------------
# PTX inspection (sm_90, compiled without a GPU, in a process without the interpreter)
# ---------------------------------------------------------------------------------------
_PTX_BODY = r"""
from kernels.ptx import noise_ptx, step_ptx
out = {
    "noise_fp32": noise_ptx("fp32"),
    "noise_fp16": noise_ptx("fp16"),
    "step_fp32": step_ptx("fp32"),
    "step_fp64": step_ptx("fp64", per_sample=False),
    "control_step_fused": step_ptx("fp32", fp_fusion=True),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ptx():
    return compile_ptx_in_subprocess(_PTX_BODY, check_compiler_api=True)


@pytest.mark.parametrize("name", ["noise_fp32", "noise_fp16", "step_fp32", "step_fp64"])
def test_ptx_has_only_ieee_rounded_float_ops(ptx, name):
    text = ptx[name]
    assert_exact_ptx(text, name)
    # the IEEE-rounded forms the math needs are there
    for op in ("div.rn.f32", "sqrt.rn.f32", "mul.rn.f32", "add.rn.f32", "mul.hi.u32"):
        assert op in text, f"{name}: expected {op}"


def test_ptx_control_fusion_is_visible(ptx):
    # Without enable_fp_fusion=False the same kernel gets fma: the check above can see one.
    assert FORBIDDEN["fused multiply-add"].search(ptx["control_step_fused"])
