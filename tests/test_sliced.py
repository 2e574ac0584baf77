"""sliced_score_terms: the fused per-sample reductions of sliced score matching and their
fused backward on every backend against the reference (terms: float64 sums in another
order, bitwise after rounding to fp32; backward: the same elementwise operation order),
and against torch autograd of the written formula."""

import pytest
import torch

import fastscore
from fastscore import ops, reference
from support import DTYPES, FAST, assert_matches, make, run_both, skip_unsupported

SAMPLE_INPUTS = {  # the registered ops of the family, for tests/test_registration.py
    "sliced_score_terms": lambda t: [
        (t.s.clone().requires_grad_(t.grad), torch.randn(3, 2, 5).to(t.dtype).requires_grad_(t.grad),
         torch.randn(3, 2, 5).to(t.dtype), False),
        (t.s.clone(), torch.randn(3, 4, 5).to(t.dtype), torch.randn(3, 4, 5).to(t.dtype), True),
    ],
    "sliced_score_terms_backward": lambda t: [(torch.rand(3).to(t.cd), t.s, torch.randn(3, 2, 5).to(t.dtype),
                                               torch.randn(3, 2, dtype=torch.float64), False)],
}


def inputs(score_shape, P, dtype, seed=0, gaussian_v=False, layout="contiguous"):
    """score [B, ...], jv and v [B, P, ...]: v Rademacher (the usual probes) or Gaussian."""
    B, rest = score_shape[0], tuple(score_shape[1:])
    score = make(score_shape, dtype, layout, seed)
    jv = make((B, P) + rest, dtype, layout, seed + 1) * 0.7
    v = make((B, P) + rest, dtype, layout, seed + 2) if gaussian_v else ops.probes((B, P) + rest, seed, dtype=dtype)
    return score, jv, v


# (score shape, P): P not a power of two (g / P inexact), rows longer than an interpreter block.
CASES = [((1, 1), 1), ((3, 5), 2), ((2, 4096), 4), ((4, 3, 7, 9), 1), ((2, 10000), 3), ((5,), 3)]


def terms_and_grads(score, jv, v, vr):
    s, j = score.clone().requires_grad_(True), jv.clone().requires_grad_(True)
    terms = ops.sliced_score_terms(s, j, v, vr)
    g = make((score.shape[0],), terms.dtype, "contiguous", 7)
    gs, gj = torch.autograd.grad(terms, (s, j), g)
    return terms.detach(), gs, gj


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("vr", [False, True], ids=["plain", "vr"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_sliced_matches_reference(backend, dtype, case, vr, layout):
    skip_unsupported(backend, dtype)
    score_shape, P = case
    got, want = run_both(backend, lambda: terms_and_grads(*inputs(score_shape, P, dtype, 3, True, layout), vr))
    for name, a, b in zip(("terms", "grad_score", "grad_jv"), got, want):
        assert_matches(a, b, name)


@pytest.mark.parametrize("backend", ["reference"] + FAST)
@pytest.mark.parametrize("vr", [False, True], ids=["plain", "vr"])
def test_fused_backward_matches_autograd_of_the_formula_fp64(backend, vr):
    score, jv, v = inputs((3, 17), 4, torch.float64, seed=9, gaussian_v=True)
    s, j = score.clone().requires_grad_(True), jv.clone().requires_grad_(True)
    trace = (v * j).sum(-1)
    second = 0.5 * (s**2).sum(-1)[:, None] if vr else 0.5 * (v * s[:, None]).sum(-1) ** 2
    want = (trace + second).mean(1)
    g = make((3,), torch.float64, "contiguous", 7)  # the weights terms_and_grads uses
    ws, wj = torch.autograd.grad(want, (s, j), g)
    with fastscore.use_backend(backend):
        terms, gs, gj = terms_and_grads(score, jv, v, vr)
    for a, b in ((terms, want.detach()), (gs, ws), (gj, wj)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if backend != "reference":  # on a corner (gradcheck evaluates the op twice per input element)
        sc, jc, vc = (t[:2, :3, :5].clone() if t.dim() == 3 else t[:2, :5].clone() for t in (score, jv, v))
        with fastscore.use_backend(backend):
            assert torch.autograd.gradcheck(lambda a, b: ops.sliced_score_terms(a, b, vc, vr),
                                            (sc.requires_grad_(), jc.requires_grad_()))


@pytest.mark.parametrize("backend", FAST + ["reference"])
@pytest.mark.parametrize("score_shape,P", [((0, 5), 2), ((0,), 3), ((3, 0), 2), ((3, 5), 0)], ids=str)
def test_empty(backend, score_shape, P):
    B = score_shape[0]
    score = torch.empty(score_shape)
    jv = torch.empty((B, P) + tuple(score_shape[1:]))
    with fastscore.use_backend(backend):
        for vr in (False, True):
            terms = ops.sliced_score_terms(score, jv, jv, vr)
            assert terms.shape == (B,) and not terms.any()


def test_reference_terms_are_the_definition():
    score, jv, v = inputs((4, 6), 3, torch.float64, seed=5)
    terms, dots = reference.sliced_score_terms(score, jv, v, False)
    want = ((v * jv).sum(-1) + 0.5 * (v * score[:, None]).sum(-1) ** 2).mean(1)
    torch.testing.assert_close(terms, want, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(dots, (v * score[:, None]).sum(-1), rtol=1e-14, atol=1e-14)
