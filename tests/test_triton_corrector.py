"""Triton LangevinCorrector (kernels/corrector.py) against reference.langevin_corrector_.

fp32/fp16/bf16: bit for bit (the fp64 row sums differ from the reference's only in
summation order, which vanishes when the coefficients are rounded to fp32); fp64: rtol
1e-12. Also: the pass-1 sums themselves, edge geometries, the closed form, and (in a
subprocess without the interpreter) the sm_90 PTX of the pass-1 kernel.
"""

import pytest
import torch

from triton_support import (assert_bits_equal, assert_exact_ptx, compile_ptx_in_subprocess, randn, require_interpreter,
                            setup_triton)

triton = setup_triton()  # TRITON_INTERPRET=1 before the first `import triton`; repo root on sys.path

from fastscore import reference as R  # noqa: E402
from kernels import corrector as KC  # noqa: E402

require_interpreter(KC.row_sq_sums_kernel)

SNR = 0.16


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Bitwise for fp32/fp16/bf16, rtol 1e-12 for fp64."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if actual.dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-13, msg=lambda m: f"{what}: {m}")
        return
    assert_bits_equal(actual, expected, what)


make = randn  # (shape, dtype, seed, transposed=False)


def make_alpha(kind, rows):
    if kind == "scalar":
        return torch.tensor([0.7], dtype=torch.float64)
    return torch.linspace(0.5, 1.5, rows, dtype=torch.float64)


def run_both(x, score, alpha, seed, offset, per_sample, noise=None, with_mean=False, mean_like=None):
    """(x, x_mean) from the Triton launcher and from the reference, on copies of x."""
    x_t, x_r = x.clone(), x.clone()
    if with_mean:
        like = x if mean_like is None else mean_like
        m_t, m_r = torch.full_like(like, float("nan")), torch.full_like(like, float("nan"))
    else:
        m_t = m_r = None
    KC.langevin_corrector_(x_t, score, alpha, SNR, seed, offset, per_sample, noise, m_t)
    R.langevin_corrector_(x_r, score, SNR, seed, offset, alpha if alpha.numel() > 1 else alpha[0],
                          per_sample, m_r, noise)
    return x_t, x_r, m_t, m_r


SHAPES = [(1,), (3, 5), (2, 40000), (4, 3, 7, 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("per_sample,alpha_kind,with_mean,offset,seed", [
    (False, "scalar", False, 0, 0),
    (True, "per_sample", True, 2**33, 3_000_000_000),
    (False, "per_sample", True, 3, 2**64 - 1),
    (True, "scalar", False, 7, 12345),
])
def test_matches_reference(dtype, shape, per_sample, alpha_kind, with_mean, offset, seed):
    x, score = make(shape, dtype, 1), make(shape, dtype, 2)
    alpha = make_alpha(alpha_kind, shape[0])
    x_t, x_r, m_t, m_r = run_both(x, score, alpha, seed, offset, per_sample, with_mean=with_mean)
    assert_same(x_t, x_r, f"x {dtype} {shape}")
    if with_mean:
        assert_same(m_t, m_r, f"x_mean {dtype} {shape}")


# Triton's interpreter converts fp32 -> bf16 by truncation, not round-to-nearest-even, so
# every bf16 store of kernels/noise.py and kernels/step.py (pass 2 here) can be 1 ulp off
# the reference on CPU; compiled (GPU) casts round to nearest. Not a corrector issue.
BF16_INTERPRETER = pytest.param(torch.bfloat16, marks=pytest.mark.xfail(
    reason="interpreter fp32->bf16 cast truncates (kernels.step store), not RNE", strict=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, BF16_INTERPRETER, torch.float64])
@pytest.mark.parametrize("per_sample", [False, True])
def test_transposed_noncontiguous(dtype, per_sample):
    shape = (6, 9)
    x, score = make(shape, dtype, 3, transposed=True), make(shape, dtype, 4, transposed=True)
    assert not x.is_contiguous() and not score.is_contiguous()
    x_mean_like = make(shape, dtype, 5, transposed=True)  # non-contiguous x_mean too
    x_t, x_r, m_t, m_r = run_both(x, score, make_alpha("per_sample", 6), 11, 5, per_sample, with_mean=True,
                                  mean_like=x_mean_like)
    assert_same(x_t, x_r, "x")
    assert_same(m_t, m_r, "x_mean")


def test_in_place_on_noncontiguous_view():
    base = make((9, 6), torch.float32, 6)
    x = base.t()  # a view: the update must land in base
    score = make((6, 9), torch.float32, 7)
    expected = x.clone()
    R.langevin_corrector_(expected, score, SNR, 4, 0, 1.0, False)
    KC.langevin_corrector_(x, score, torch.tensor([1.0], dtype=torch.float64), SNR, 4, 0, False, None, None)
    assert_same(base.t(), expected, "view")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("per_sample", [False, True])
def test_explicit_noise(dtype, per_sample):
    shape = (3, 2, 11)
    cd = R.compute_dtype(dtype)
    x, score = make(shape, dtype, 8), make(shape, dtype, 9)
    noise = make(shape, cd, 10) * 1.5
    x_t, x_r, m_t, m_r = run_both(x, score, make_alpha("scalar", 3), 99, 2**33, per_sample, noise=noise,
                                  with_mean=True)
    assert_same(x_t, x_r, "x")
    assert_same(m_t, m_r, "x_mean")
    # The stream is not used: a different seed gives the same result.
    x_s = x.clone()
    KC.langevin_corrector_(x_s, score, make_alpha("scalar", 3), SNR, 1, 0, per_sample, noise, None)
    assert_same(x_s, x_t, "seed-independent")


def test_explicit_noise_noncontiguous():
    shape = (5, 7)
    x, score = make(shape, torch.float32, 11), make(shape, torch.float32, 12)
    noise = make(shape, torch.float32, 13, transposed=True)
    x_t, x_r, _, _ = run_both(x, score, make_alpha("per_sample", 5), 0, 0, True, noise=noise)
    assert_same(x_t, x_r, "x")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_d(dtype):
    x, score = torch.tensor(0.3, dtype=dtype), torch.tensor(-1.2, dtype=dtype)
    for per_sample in (False, True):
        x_t, x_r, m_t, m_r = run_both(x, score, make_alpha("scalar", 1), 5, 2**33, per_sample, with_mean=True)
        assert_same(x_t, x_r, "x")
        assert_same(m_t, m_r, "x_mean")


def test_zero_score_row_gives_zero_step():
    x, score = make((3, 8), torch.float32, 14), make((3, 8), torch.float32, 15)
    score[1] = 0.0
    x_t, x_r, _, _ = run_both(x, score, make_alpha("scalar", 3), 2, 0, True)
    assert_same(x_t, x_r, "x")
    assert torch.equal(x_t[1], x[1])  # eps = 0: no drift and no noise
    score.zero_()
    x_t, x_r, _, _ = run_both(x, score, make_alpha("scalar", 3), 2, 0, False)
    assert_same(x_t, x_r, "x (all zero)")
    assert torch.equal(x_t, x)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0)])
def test_empty_is_noop(shape):
    x = torch.empty(shape)
    m = torch.empty(shape)
    KC.langevin_corrector_(x, torch.empty(shape), torch.tensor([1.0], dtype=torch.float64), SNR, 0, 0, False,
                           None, m)
    assert x.shape == shape


@pytest.mark.parametrize("shape,offset", [((3, 5), 0), ((2, 40000), 2**33), ((3, 33333), 1), ((4, 3, 7, 9), 3)])
def test_row_sums(shape, offset):
    """Pass 1 alone: fp64 sums vs reference.row_sq_norms (order differs; misaligned rows,
    multi-block rows and the stream at large offsets)."""
    score = make(shape, torch.float16, 16)
    sq = KC.row_sq_sums(score, None, 77, offset)
    z = R.noise(shape, 77, offset)
    torch.testing.assert_close(sq[:, 0], R.row_sq_norms(score), rtol=1e-14, atol=0)
    torch.testing.assert_close(sq[:, 1], R.row_sq_norms(z), rtol=1e-14, atol=0)


def test_closed_form():
    """eps = (snr * |z| / |s|)^2 * 2 * alpha with torch.linalg.norm (batch means and per row)."""
    shape, seed, offset = (4, 3, 50), 21, 6
    x, score = make(shape, torch.float64, 17), make(shape, torch.float64, 18)
    alpha = make_alpha("per_sample", 4)
    z = R.noise(shape, seed, offset, dtype=torch.float64)
    gs = torch.linalg.norm(score.reshape(4, -1), dim=1)
    ns = torch.linalg.norm(z.reshape(4, -1), dim=1)
    for per_sample in (False, True):
        g, n = (gs, ns) if per_sample else (gs.mean(), ns.mean())
        eps = ((SNR * n / g) ** 2 * 2 * alpha).reshape(4, 1, 1)
        expected_mean = x + eps * score
        expected = expected_mean + torch.sqrt(2 * eps) * z
        x_t, m_t = x.clone(), torch.empty_like(x)
        KC.langevin_corrector_(x_t, score, alpha, SNR, seed, offset, per_sample, None, m_t)
        torch.testing.assert_close(x_t, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m_t, expected_mean, rtol=1e-12, atol=1e-12)


def test_bad_arguments():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="alpha"):
        KC.langevin_corrector_(x, torch.ones(3, 4), torch.ones(2, dtype=torch.float64), SNR, 0, 0, False, None, None)
    with pytest.raises(ValueError, match="score"):
        KC.langevin_corrector_(x, torch.ones(4, 3), torch.ones(1, dtype=torch.float64), SNR, 0, 0, False, None, None)


# ---------------------------------------------------------------------------------------
# PTX of the pass-1 kernel (sm_90, compiled without a GPU, in a process without the
# interpreter): no approximate, flush-to-zero or fused instruction.
# ---------------------------------------------------------------------------------------
_PTX_BODY = r"""
from kernels.corrector import row_sq_sums_kernel
from kernels.ptx import compile_ptx
out = {}
for dtype, noise_tensor in (("fp32", False), ("fp16", False), ("fp64", True)):
    cd = "fp64" if dtype == "fp64" else "fp32"
    out[f"{dtype}_{'tensor' if noise_tensor else 'stream'}"] = compile_ptx(
        row_sq_sums_kernel,
        {"part_ptr": "*fp64", "score_ptr": f"*{dtype}", "noise_ptr": f"*{cd}",
         "seed": "i64", "base": "i64", "R": "i64", "n_blocks": "i64"},
        {"NOISE_TENSOR": noise_tensor, "BLOCK": 256},
    )
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ptx():
    return compile_ptx_in_subprocess(_PTX_BODY)


@pytest.mark.parametrize("name", ["fp32_stream", "fp16_stream", "fp64_tensor"])
def test_ptx_pass1_has_only_ieee_rounded_float_ops(ptx, name):
    text = ptx[name]
    assert_exact_ptx(text, name)
    for op in ("mul.rn.f64", "add.rn.f64"):  # the sums are float64
        assert op in text, f"{name}: expected {op}"
    if name.endswith("stream"):
        for op in ("div.rn.f32", "sqrt.rn.f32", "mul.hi.u32"):  # the stream is generated in place
            assert op in text, f"{name}: expected {op}"
