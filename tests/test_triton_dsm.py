"""Triton DSM loss (kernels/dsm.py) against reference.dsm_loss / dsm_loss_backward.

Backward: bit for bit for fp32/fp16 (elementwise, same rounding order), rtol 1e-12 for
fp64; bf16 within 1 ulp (the interpreter's fp32 -> bf16 store truncates). Forward: the
float64 row sums differ from the reference's only in summation order, which rounding to
fp32 hides in every case tested here, so fp32/fp16/bf16 are asserted bitwise; fp64 rtol
1e-12. Also: edge geometries, explicit noise, errors, an autograd cross-check and (in a
subprocess without the interpreter) the sm_90 PTX of both kernels.
"""

import pytest
import torch

from triton_support import (FORBIDDEN, assert_bits_equal, assert_exact_ptx, compile_ptx_in_subprocess,
                            randn, require_interpreter, setup_triton)

triton = setup_triton()  # TRITON_INTERPRET=1 before the first `import triton`; repo root on sys.path

from fastscore import reference as R  # noqa: E402
from kernels import dsm as KD  # noqa: E402

require_interpreter(KD.dsm_loss_kernel)


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str = "", fp64_rtol: float = 1e-12) -> None:
    """Bitwise for fp32/fp16/bf16, rtol ``fp64_rtol`` for fp64."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        f"{what}: {actual.shape}/{actual.dtype} vs {expected.shape}/{expected.dtype}"
    if actual.dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=fp64_rtol, atol=0, msg=lambda m: f"{what}: {m}")
        return
    assert_bits_equal(actual, expected, what)


make = randn  # (shape, dtype, seed, transposed=False)


def make_coef(kind, rows):
    """float64 [2, K] (inv_sigma, w) and the reference's (inv_sigma, weight) arguments."""
    if kind == "scalar":
        coef = torch.tensor([[1.0 / 0.37], [0.8]], dtype=torch.float64)  # 1/0.37 is not an fp32 value
        return coef, float(coef[0, 0]), float(coef[1, 0])
    inv = 1.0 / torch.linspace(0.01, 50.0, rows, dtype=torch.float64)
    w = torch.linspace(0.5, 2.0, rows, dtype=torch.float64) ** 2
    return torch.stack((inv, w)), inv, w


def both(score, coef_kind, seed, offset, noise=None, grad=None):
    """(loss, grad_score) from the Triton launchers and from the reference."""
    rows = score.shape[0]
    coef, inv, w = make_coef(coef_kind, rows)
    if grad is None:
        grad = make((rows,), R.compute_dtype(score.dtype), 99)
    loss_t = KD.dsm_loss(score, coef, seed, offset, noise)
    loss_r = R.dsm_loss(score, inv, w, seed, offset, noise)
    gs_t = KD.dsm_loss_backward(grad, score, coef, seed, offset, noise)
    gs_r = R.dsm_loss_backward(grad, score, inv, w, seed, offset, noise)
    assert gs_t.is_contiguous()
    return loss_t, loss_r, gs_t, gs_r


SHAPES = [(1, 1), (3, 5), (2, 40000), (4, 3, 7, 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("coef_kind,offset,seed", [
    ("scalar", 0, 0),
    ("per_sample", 2**33, 3_000_000_000),
    ("scalar", 2**33, 2**64 - 1),
    ("per_sample", 0, 12345),
])
def test_matches_reference(dtype, shape, coef_kind, offset, seed):
    score = make(shape, dtype, 1)
    loss_t, loss_r, gs_t, gs_r = both(score, coef_kind, seed, offset)
    assert_same(loss_t, loss_r, f"loss {dtype} {shape}")
    assert_same(gs_t, gs_r, f"grad {dtype} {shape}", fp64_rtol=1e-15)  # same op order: fp64 exact too


def test_bf16():
    """Forward bitwise (bf16 loads widen exactly); backward within 1 ulp: the interpreter's
    fp32 -> bf16 store truncates instead of rounding to nearest (compiled casts round)."""
    score = make((3, 37), torch.bfloat16, 2)
    loss_t, loss_r, gs_t, gs_r = both(score, "per_sample", 7, 5)
    assert_same(loss_t, loss_r, "loss bf16")
    a = gs_t.view(torch.int16).to(torch.int32)
    e = gs_r.view(torch.int16).to(torch.int32)
    assert int((a - e).abs().max()) <= 1
    torch.testing.assert_close(gs_t.float(), gs_r.float(), rtol=2 ** -7, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("coef_kind", ["scalar", "per_sample"])
def test_transposed_noncontiguous(dtype, coef_kind):
    score = make((6, 9), dtype, 3, transposed=True)
    assert not score.is_contiguous()
    loss_t, loss_r, gs_t, gs_r = both(score, coef_kind, 11, 5)
    assert_same(loss_t, loss_r, "loss")
    assert_same(gs_t, gs_r, "grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("coef_kind", ["scalar", "per_sample"])
def test_explicit_noise(dtype, coef_kind):
    shape = (3, 2, 11)
    score = make(shape, dtype, 8)
    noise = make(shape, R.compute_dtype(dtype), 10) * 1.5
    loss_t, loss_r, gs_t, gs_r = both(score, coef_kind, 99, 2**33, noise=noise)
    assert_same(loss_t, loss_r, "loss")
    assert_same(gs_t, gs_r, "grad")
    # The stream is not used: another seed/offset gives the same result.
    coef, _, _ = make_coef(coef_kind, 3)
    assert_same(KD.dsm_loss(score, coef, 1, 0, noise), loss_t, "loss seed-independent")
    grad = make((3,), R.compute_dtype(dtype), 99)
    assert_same(KD.dsm_loss_backward(grad, score, coef, 1, 0, noise), gs_t, "grad seed-independent")


def test_explicit_noise_noncontiguous():
    score = make((5, 7), torch.float32, 11)
    noise = make((5, 7), torch.float32, 13, transposed=True)
    loss_t, loss_r, gs_t, gs_r = both(score, "per_sample", 0, 0, noise=noise)
    assert_same(loss_t, loss_r, "loss")
    assert_same(gs_t, gs_r, "grad")


def test_grad_dtypes():
    """grad is read as float64 whatever its dtype."""
    score = make((4, 10), torch.float16, 12)
    for grad in (make((4,), torch.float64, 5), make((4,), torch.float16, 6), make((4,), torch.float32, 7)):
        _, _, gs_t, gs_r = both(score, "per_sample", 3, 1, grad=grad)
        assert_same(gs_t, gs_r, f"grad {grad.dtype}")


def test_misaligned_rows_multi_block():
    """Rows that start mid-counter and span several interpreter blocks (R > 4*8192)."""
    score = make((3, 33333), torch.float32, 14)
    loss_t, loss_r, gs_t, gs_r = both(score, "per_sample", 77, 1)
    assert_same(loss_t, loss_r, "loss")
    assert_same(gs_t, gs_r, "grad")


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_empty(shape, dtype):
    score = torch.empty(shape, dtype=dtype)
    rows = shape[0]
    coef = torch.ones((2, 1), dtype=torch.float64)
    loss = KD.dsm_loss(score, coef, 0, 0, None)
    assert loss.dtype == R.compute_dtype(dtype) and loss.shape == (rows,)
    assert torch.equal(loss, torch.zeros(rows, dtype=loss.dtype))
    if rows > 0:  # reference.row_sq_norms cannot reshape 0 rows ([0, -1] is ambiguous)
        assert_same(loss, R.dsm_loss(score, 1.0, 1.0, 0, 0), "loss")
    gs = KD.dsm_loss_backward(torch.ones(rows), score, coef, 0, 0, None)
    assert gs.shape == shape and gs.dtype == dtype


def test_autograd_cross_check():
    """fp64: the forward against the closed form and the backward against torch autograd."""
    shape, seed, offset = (4, 3, 50), 21, 6
    score = make(shape, torch.float64, 17).requires_grad_(True)
    coef, inv, w = make_coef("per_sample", 4)
    z = R.noise(shape, seed, offset, dtype=torch.float64)
    d = score + z * inv.reshape(4, 1, 1)
    loss = 0.5 * w * (d * d).reshape(4, -1).sum(1)
    grad = make((4,), torch.float64, 18)
    (expected_grad,) = torch.autograd.grad(loss, score, grad)
    with torch.no_grad():
        torch.testing.assert_close(KD.dsm_loss(score.detach(), coef, seed, offset, None), loss.detach(),
                                   rtol=1e-12, atol=0)
        torch.testing.assert_close(KD.dsm_loss_backward(grad, score.detach(), coef, seed, offset, None),
                                   expected_grad, rtol=1e-12, atol=1e-15)


def test_bad_arguments():
    score = torch.zeros(3, 4)
    ok = torch.ones((2, 1), dtype=torch.float64)
    with pytest.raises(ValueError, match="coef"):
        KD.dsm_loss(score, torch.ones((2, 2), dtype=torch.float64), 0, 0, None)
    with pytest.raises(ValueError, match="coef"):
        KD.dsm_loss_backward(torch.ones(3), score, torch.ones((3, 1), dtype=torch.float64), 0, 0, None)
    with pytest.raises(ValueError, match="grad"):
        KD.dsm_loss_backward(torch.ones(2), score, ok, 0, 0, None)
    with pytest.raises(ValueError, match="noise"):
        KD.dsm_loss(score, ok, 0, 0, torch.zeros(4, 3))


# ---------------------------------------------------------------------------------------
# PTX (sm_90, compiled without a GPU, in a process without the interpreter): no
# approximate, flush-to-zero or fused instruction in either kernel.
# ---------------------------------------------------------------------------------------
_PTX_BODY = r"""
from kernels.dsm import dsm_loss_backward_kernel, dsm_loss_kernel
from kernels.ptx import compile_ptx

def fwd(dtype, noise_tensor, per_sample):
    cd = "fp64" if dtype == "fp64" else "fp32"
    return compile_ptx(
        dsm_loss_kernel,
        {"part_ptr": "*fp64", "score_ptr": f"*{dtype}", "noise_ptr": f"*{cd}", "inv_ptr": f"*{cd}",
         "seed": "i64", "base": "i64", "R": "i64", "n_blocks": "i64"},
        {"NOISE_TENSOR": noise_tensor, "PER_SAMPLE": per_sample, "BLOCK": 256},
    )

def bwd(dtype, noise_tensor, per_sample, fp_fusion=False):
    cd = "fp64" if dtype == "fp64" else "fp32"
    return compile_ptx(
        dsm_loss_backward_kernel,
        {"out_ptr": f"*{dtype}", "score_ptr": f"*{dtype}", "noise_ptr": f"*{cd}", "inv_ptr": f"*{cd}",
         "scale_ptr": f"*{cd}", "seed": "i64", "base": "i64", "n": "i64", "R": "i64"},
        {"NOISE_TENSOR": noise_tensor, "PER_SAMPLE": per_sample, "BLOCK": 256},
        fp_fusion=fp_fusion,
    )

out = {
    "fwd_fp32_stream": fwd("fp32", False, True),
    "fwd_fp16_stream": fwd("fp16", False, False),
    "fwd_fp64_tensor": fwd("fp64", True, True),
    "bwd_fp32_stream": bwd("fp32", False, True),
    "bwd_fp16_stream": bwd("fp16", False, False),
    "bwd_fp64_stream": bwd("fp64", False, True),
    "control_bwd_fused": bwd("fp32", False, True, fp_fusion=True),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ptx():
    return compile_ptx_in_subprocess(_PTX_BODY)


@pytest.mark.parametrize("name", ["fwd_fp32_stream", "fwd_fp16_stream", "fwd_fp64_tensor",
                                  "bwd_fp32_stream", "bwd_fp16_stream", "bwd_fp64_stream"])
def test_ptx_has_only_ieee_rounded_float_ops(ptx, name):
    text = ptx[name]
    assert_exact_ptx(text, name)
    width = "f64" if "fp64" in name else "f32"
    expected = [f"mul.rn.{width}", f"add.rn.{width}"]  # z * inv_sigma, s + ..., scale * d
    if name.startswith("fwd"):
        expected += ["mul.rn.f64", "add.rn.f64"]  # the float64 sums of squares
    if name.endswith("stream"):
        expected += ["div.rn.f32", "sqrt.rn.f32", "mul.hi.u32"]  # the stream is generated in place
    for op in expected:
        assert op in text, f"{name}: expected {op}"


def test_ptx_control_fusion_is_visible(ptx):
    # Without enable_fp_fusion=False the backward gets fma: the check above can see one.
    assert FORBIDDEN["fused multiply-add"].search(ptx["control_bwd_fused"])
