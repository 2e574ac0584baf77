"""Triton sliced score matching terms (kernels/hutchinson.py) against reference.sliced_score_terms,
the C++ op fastscore::sliced_score_terms(_backward) and torch autograd.

Forward: the float64 dot products differ from the reference's / the C++ op's only in
summation order, which rounding the terms to fp32 hides in every case tested here, so
fp32/fp16 terms are asserted bitwise; fp64 terms rtol 1e-12, dots rtol 1e-12.
Backward: the C++ op's operation order, so bit for bit the C++ op (fp32/fp16/fp64) when
the extension is built; bf16 within 1 ulp (the interpreter's fp32 -> bf16 store
truncates); fp64 against autograd through the reference, rtol 1e-10. Also: empty B, P,
D, non-contiguous inputs, errors, the public op on the triton backend and (in a
subprocess without the interpreter) the sm_90 PTX of both kernels.
"""

import pytest
import torch

from triton_support import (FORBIDDEN, assert_bits_equal, assert_exact_ptx, compile_ptx_in_subprocess,
                            require_interpreter, setup_triton)

triton = setup_triton()  # TRITON_INTERPRET=1 before the first `import triton`; repo root on sys.path

from fastscore import backends  # noqa: E402
from fastscore import reference as R  # noqa: E402
from kernels import hutchinson as KH  # noqa: E402

require_interpreter(KH.sliced_partials_kernel)

HAS_CPP = backends.HAS_EXTENSION and hasattr(torch.ops.fastscore, "sliced_score_terms")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="fastscore._C (the C++ op) is not built")


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str = "", fp64_rtol: float | None = 1e-12) -> None:
    """Bitwise for fp32/fp16/bf16 (and for fp64 when ``fp64_rtol`` is None), else rtol."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        f"{what}: {actual.shape}/{actual.dtype} vs {expected.shape}/{expected.dtype}"
    if actual.dtype == torch.float64 and fp64_rtol is not None:
        torch.testing.assert_close(actual, expected, rtol=fp64_rtol, atol=0, msg=lambda m: f"{what}: {m}")
        return
    assert_bits_equal(actual, expected, what, label="expected")


def make(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def rademacher(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(dtype)


def inputs(score_shape, P, dtype, seed=0, gaussian_v=False):
    """score [B, ...], jv and v [B, P, ...]: v Rademacher (the usual probes) or Gaussian."""
    B, rest = score_shape[0], tuple(score_shape[1:])
    score = make(score_shape, dtype, seed)
    jv = make((B, P) + rest, dtype, seed + 1, scale=0.7)
    v = make((B, P) + rest, dtype, seed + 2) if gaussian_v else rademacher((B, P) + rest, dtype, seed + 2)
    return score, jv, v


def ref_dots(score, v):
    cd = R.compute_dtype(score.dtype)
    B, P = v.shape[0], v.shape[1]
    return (v.to(cd).double().reshape(B, P, -1) * score.to(cd).double().reshape(B, 1, -1)).sum(-1)


# (score shape, P): (B, P, D) = (1, 1, 1), (3, 2, 5), (2, 4, 4096), score (4, 3, 7, 9) with
# jv (4, 1, 3, 7, 9), and (2, 3, 10000): P not a power of two (g / P inexact) and rows of
# two interpreter blocks (8192 elements each).
CASES = [((1, 1), 1), ((3, 5), 2), ((2, 4096), 4), ((4, 3, 7, 9), 1), ((2, 10000), 3)]
CASE_IDS = ["1x1x1", "3x2x5", "2x4x4096", "4x1x3x7x9", "2x3x10000"]


@pytest.mark.parametrize("variance_reduction", [False, True], ids=["plain", "vr"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_matches_reference(case, dtype, variance_reduction):
    score_shape, P = case
    for gaussian_v in (False, True):
        score, jv, v = inputs(score_shape, P, dtype, seed=3, gaussian_v=gaussian_v)
        terms, dots = KH.sliced_score_terms(score, jv, v, variance_reduction)
        assert dots.dtype == torch.float64 and dots.shape == (score_shape[0], P)
        assert_same(terms, R.sliced_score_terms(score, jv, v, variance_reduction), f"terms {dtype}")
        assert_same(dots, ref_dots(score, v), "dots")


@needs_cpp
@pytest.mark.parametrize("variance_reduction", [False, True], ids=["plain", "vr"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_cpp_op(case, dtype, variance_reduction):
    score_shape, P = case
    score, jv, v = inputs(score_shape, P, dtype, seed=5, gaussian_v=True)
    terms, dots = KH.sliced_score_terms(score, jv, v, variance_reduction)
    terms_c, dots_c = torch.ops.fastscore.sliced_score_terms(score, jv, v, variance_reduction)
    assert_same(terms, terms_c, "terms vs C++")
    assert_same(dots, dots_c, "dots vs C++")
    grad = make((score_shape[0],), terms.dtype, 7)
    gs, gj = KH.sliced_score_terms_backward(grad, score, v, dots, variance_reduction)
    gs_c, gj_c = torch.ops.fastscore.sliced_score_terms_backward(grad, score, v, dots, variance_reduction)
    assert gs.is_contiguous() and gj.is_contiguous()
    assert_same(gs, gs_c, "grad_score vs C++", fp64_rtol=None)  # same operation order: fp64 exact too
    assert_same(gj, gj_c, "grad_jv vs C++", fp64_rtol=None)


@pytest.mark.parametrize("variance_reduction", [False, True], ids=["plain", "vr"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward_matches_autograd_fp64(case, variance_reduction):
    score_shape, P = case
    score, jv, v = inputs(score_shape, P, torch.float64, seed=9, gaussian_v=True)
    score.requires_grad_(True)
    jv.requires_grad_(True)
    terms = R.sliced_score_terms(score, jv, v, variance_reduction)
    grad = make((score_shape[0],), torch.float64, 10)
    gs_ref, gj_ref = torch.autograd.grad(terms, (score, jv), grad)
    with torch.no_grad():
        _, dots = KH.sliced_score_terms(score.detach(), jv.detach(), v, variance_reduction)
        gs, gj = KH.sliced_score_terms_backward(grad, score.detach(), v, dots, variance_reduction)
    torch.testing.assert_close(gs, gs_ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gj, gj_ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("variance_reduction", [False, True], ids=["plain", "vr"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_noncontiguous(dtype, variance_reduction):
    """jv (and then score and v too) stored permuted: same results as contiguous copies."""
    B, P, D = 3, 4, 10
    score, jv, v = inputs((B, D), P, dtype, seed=11, gaussian_v=True)
    jv_nc = jv.permute(1, 0, 2).contiguous().permute(1, 0, 2)  # [B, P, D] view of a [P, B, D] buffer
    s_nc = score.t().contiguous().t()
    v_nc = v.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (jv_nc.is_contiguous() or s_nc.is_contiguous() or v_nc.is_contiguous())
    terms, dots = KH.sliced_score_terms(score, jv, v, variance_reduction)
    grad = make((B,), terms.dtype, 12)
    gs, gj = KH.sliced_score_terms_backward(grad, score, v, dots, variance_reduction)
    for s_, v_ in ((score, v), (s_nc, v_nc)):
        t2, d2 = KH.sliced_score_terms(s_, jv_nc, v_, variance_reduction)
        assert_same(t2, terms, "terms non-contiguous", fp64_rtol=None)
        assert_same(d2, dots, "dots non-contiguous", fp64_rtol=None)
        gs2, gj2 = KH.sliced_score_terms_backward(grad, s_, v_, dots.t().contiguous().t(), variance_reduction)
        assert gs2.is_contiguous() and gj2.is_contiguous()
        assert_same(gs2, gs, "grad_score non-contiguous", fp64_rtol=None)
        assert_same(gj2, gj, "grad_jv non-contiguous", fp64_rtol=None)
    assert_same(terms, R.sliced_score_terms(s_nc, jv_nc, v_nc, variance_reduction), "terms vs reference")


@pytest.mark.parametrize("variance_reduction", [False, True], ids=["plain", "vr"])
def test_bf16(variance_reduction):
    """Forward bitwise (bf16 loads widen exactly); backward within 1 ulp of the C++ op: the
    interpreter's fp32 -> bf16 store truncates instead of rounding to nearest."""
    score, jv, v = inputs((3, 37), 2, torch.bfloat16, seed=13, gaussian_v=True)
    terms, dots = KH.sliced_score_terms(score, jv, v, variance_reduction)
    assert_same(terms, R.sliced_score_terms(score, jv, v, variance_reduction), "terms bf16")
    if not HAS_CPP:
        return
    grad = make((3,), torch.float32, 14)
    got = KH.sliced_score_terms_backward(grad, score, v, dots, variance_reduction)
    want = torch.ops.fastscore.sliced_score_terms_backward(grad, score, v, dots, variance_reduction)
    for a, e in zip(got, want):
        assert a.dtype == torch.bfloat16 and a.shape == e.shape
        ulps = (a.view(torch.int16).to(torch.int32) - e.view(torch.int16).to(torch.int32)).abs()
        assert int(ulps.max()) <= 1


@needs_cpp
def test_grad_and_dots_dtypes():
    """grad and dots are read as float64 whatever their dtype or layout."""
    score, jv, v = inputs((4, 6), 3, torch.float16, seed=15, gaussian_v=True)
    _, dots = KH.sliced_score_terms(score, jv, v, False)
    for grad in (make((4,), torch.float64, 1), make((4,), torch.float16, 2), make((4, 1), torch.float32, 3)):
        for vr in (False, True):
            got = KH.sliced_score_terms_backward(grad, score, v, dots.float(), vr)
            want = torch.ops.fastscore.sliced_score_terms_backward(grad, score, v, dots.float(), vr)
            assert_same(got[0], want[0], f"grad_score {grad.dtype}")
            assert_same(got[1], want[1], f"grad_jv {grad.dtype}")


@pytest.mark.parametrize("score_shape,P", [((0, 5), 2), ((0,), 3), ((3, 0), 2), ((3, 5), 0)],
                         ids=["B0", "B0-1d", "D0", "P0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_empty(score_shape, P, dtype):
    B = score_shape[0]
    score = torch.empty(score_shape, dtype=dtype)
    jv = torch.empty((B, P) + tuple(score_shape[1:]), dtype=dtype)
    for vr in (False, True):
        terms, dots = KH.sliced_score_terms(score, jv, jv, vr)
        assert terms.dtype == R.compute_dtype(dtype) and terms.shape == (B,)
        assert dots.dtype == torch.float64 and dots.shape == (B, P)
        assert not terms.any() and not dots.any()
        gs, gj = KH.sliced_score_terms_backward(torch.ones(B), score, jv, dots, vr)
        assert gs.shape == score.shape and gs.dtype == dtype and not gs.any()
        assert gj.shape == jv.shape and gj.dtype == dtype and not gj.any()
        if HAS_CPP:
            tc, dc = torch.ops.fastscore.sliced_score_terms(score, jv, jv, vr)
            assert tc.shape == terms.shape and tc.dtype == terms.dtype and dc.shape == dots.shape


def test_score_1d():
    """score [B] (D = 1) with jv [B, P]."""
    score, jv, v = inputs((5,), 3, torch.float32, seed=17, gaussian_v=True)
    for vr in (False, True):
        terms, dots = KH.sliced_score_terms(score, jv, v, vr)
        assert_same(terms, R.sliced_score_terms(score, jv, v, vr), "terms 1-d")
        if HAS_CPP:
            grad = make((5,), torch.float32, 18)
            got = KH.sliced_score_terms_backward(grad, score, v, dots, vr)
            want = torch.ops.fastscore.sliced_score_terms_backward(grad, score, v, dots, vr)
            assert_same(got[0], want[0], "grad_score 1-d")
            assert_same(got[1], want[1], "grad_jv 1-d")


def test_bad_arguments():
    score, jv, v = inputs((3, 4), 2, torch.float32)
    with pytest.raises(ValueError, match="jv"):
        KH.sliced_score_terms(score, jv[:, :, :3], v[:, :, :3], False)
    with pytest.raises(ValueError, match="jv"):
        KH.sliced_score_terms(score, jv[0], v[0], False)
    with pytest.raises(ValueError, match="v must"):
        KH.sliced_score_terms(score, jv, v[:, :1], False)
    with pytest.raises(TypeError, match="dtype"):
        KH.sliced_score_terms(score, jv.double(), v.double(), False)
    dots = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="grad"):
        KH.sliced_score_terms_backward(torch.ones(2), score, v, dots, False)
    with pytest.raises(ValueError, match="dots"):
        KH.sliced_score_terms_backward(torch.ones(3), score, v, dots[:, :1], False)


def test_public_op_on_triton_backend():
    """fastscore.ops.sliced_score_terms through the triton custom op and its registered autograd."""
    from fastscore import ops

    score, jv, v = inputs((3, 2, 5), 2, torch.float64, seed=19, gaussian_v=True)
    s1, j1 = score.clone().requires_grad_(True), jv.clone().requires_grad_(True)
    s2, j2 = score.clone().requires_grad_(True), jv.clone().requires_grad_(True)
    grad = make((3,), torch.float64, 20)
    with backends.use_backend("triton"):
        terms = ops.sliced_score_terms(s1, j1, v, variance_reduction=False)
    expected = R.sliced_score_terms(s2, j2, v, False)
    torch.testing.assert_close(terms, expected, rtol=1e-12, atol=0)
    terms.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(j1.grad, j2.grad, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------------------
# PTX (sm_90, compiled without a GPU, in a process without the interpreter): no
# approximate, flush-to-zero or fused instruction in either kernel.
# ---------------------------------------------------------------------------------------
_PTX_BODY = r"""
from kernels.hutchinson import sliced_backward_kernel, sliced_partials_kernel
from kernels.ptx import compile_ptx

def fwd(dtype, vr):
    return compile_ptx(
        sliced_partials_kernel,
        {"part_ptr": "*fp64", "sq_ptr": "*fp64", "score_ptr": f"*{dtype}", "jv_ptr": f"*{dtype}",
         "v_ptr": f"*{dtype}", "P": "i64", "D": "i64", "n_blocks": "i64"},
        {"VARIANCE_REDUCTION": vr, "FP64": dtype == "fp64", "BLOCK": 1024},
    )

def bwd(dtype, vr, fp_fusion=False):
    cd = "fp64" if dtype == "fp64" else "fp32"
    return compile_ptx(
        sliced_backward_kernel,
        {"gs_ptr": f"*{dtype}", "gj_ptr": f"*{dtype}", "score_ptr": f"*{dtype}", "v_ptr": f"*{dtype}",
         "per_p_ptr": f"*{cd}", "coef_ptr": f"*{cd}", "P": "i64", "D": "i64", "n": "i64"},
        {"VARIANCE_REDUCTION": vr, "FP64": dtype == "fp64", "BLOCK": 1024},
        fp_fusion=fp_fusion,
    )

out = {
    "fwd_fp32_plain": fwd("fp32", False),
    "fwd_fp16_vr": fwd("fp16", True),
    "fwd_fp64_vr": fwd("fp64", True),
    "bwd_fp32_plain": bwd("fp32", False),
    "bwd_fp32_vr": bwd("fp32", True),
    "bwd_fp16_plain": bwd("fp16", False),
    "bwd_fp64_plain": bwd("fp64", False),
    "control_bwd_fused": bwd("fp32", False, fp_fusion=True),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ptx():
    return compile_ptx_in_subprocess(_PTX_BODY)


@pytest.mark.parametrize("name", ["fwd_fp32_plain", "fwd_fp16_vr", "fwd_fp64_vr",
                                  "bwd_fp32_plain", "bwd_fp32_vr", "bwd_fp16_plain", "bwd_fp64_plain"])
def test_ptx_has_only_ieee_rounded_float_ops(ptx, name):
    text = ptx[name]
    assert_exact_ptx(text, name)
    if name.startswith("fwd"):
        expected = ["mul.rn.f64", "add.rn.f64"]  # the float64 dot products
    else:
        width = "f64" if "fp64" in name else "f32"
        expected = [f"mul.rn.{width}"]  # per_p * v (and scale * s, c * v)
        if name.endswith("plain"):
            expected.append(f"add.rn.{width}")  # acc + c * v
    for op in expected:
        assert op in text, f"{name}: expected {op}"


def test_ptx_control_fusion_is_visible(ptx):
    # Without enable_fp_fusion=False the backward's acc + c*v becomes an fma: the check can see one.
    assert FORBIDDEN["fused multiply-add"].search(ptx["control_bwd_fused"])
