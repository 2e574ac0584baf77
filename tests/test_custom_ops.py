"""The ops as torch custom ops: opcheck (schema, fake, autograd registration) and
torch.compile(fullgraph=True) tracing through them without recompiling per seed."""

import pytest
import torch

import fastscore
from fastscore import ops
from fastscore.backends import HAS_EXTENSION, available_backends

needs_ext = pytest.mark.skipif(not HAS_EXTENSION, reason="fastscore._C not built")


def seed_t(seed, offset):
    return torch.tensor([seed, offset], dtype=torch.int64)


def sample_inputs():
    """(op, args) pairs covering dtypes, per-sample coefficients, optional arguments."""
    out = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(3, 5, dtype=dtype)
        s = torch.randn(3, 5, dtype=dtype)
        scalar = torch.tensor([[1.0], [0.1], [0.2]], dtype=torch.float64)
        per = torch.rand(3, 3, dtype=torch.float64)
        cd = torch.float64 if dtype == torch.float64 else torch.float32
        out += [
            ("step_", (x.clone(), s, scalar, seed_t(1, 2), None, None, True)),
            ("step_", (x.clone(), s, per, seed_t(1, 0), None, torch.empty_like(x), True)),
            ("step_", (x.clone(), None, per, seed_t(5, 0), torch.randn(3, 5, dtype=cd), None, True)),
            ("step_", (x.clone(), s, scalar, seed_t(5, 0), None, None, False)),
            ("step_scalar_", (x.clone(), s, 1.0, 0.1, 0.2, 7, 3, torch.empty_like(x), True)),
            ("perturb", (x.clone().requires_grad_(dtype != torch.bfloat16), scalar, seed_t(3, 1), None)),
            ("perturb", (x.clone(), per, seed_t(3, 1), torch.randn(3, 5, dtype=cd))),
            ("fill_noise_", (torch.empty(4, 6, dtype=dtype), seed_t(9, 1))),
            ("update_", (torch.empty_like(x), x, s, per, seed_t(4, 1), None, True)),
            ("update_", (torch.empty_like(x), x, None, scalar, seed_t(4, 1), torch.randn(3, 5, dtype=cd), True)),
            ("langevin_corrector_", (x.clone(), s, torch.rand(3, dtype=torch.float64), 0.16, seed_t(2, 3), False,
                                     None, torch.empty_like(x))),
            ("langevin_corrector_", (x.clone(), s, torch.ones(1, dtype=torch.float64), 0.2, seed_t(2, 0), True,
                                     torch.randn(3, 5, dtype=cd), None)),
            ("langevin_corrector_scalar_", (x.clone(), s, 0.9, 0.16, 5, 2, True, torch.empty_like(x))),
            ("perturb_scalar", (x.clone(), 0.8, 0.3, 2**40, 3)),
            ("dsm_loss", (s.clone().requires_grad_(dtype != torch.bfloat16), per[:2].abs() + 0.1, seed_t(6, 1),
                          None)),
            ("dsm_loss", (s.clone(), torch.tensor([[2.0], [0.5]], dtype=torch.float64), seed_t(6, 0),
                          torch.randn(3, 5, dtype=cd))),
            ("dsm_loss_backward", (torch.rand(3, dtype=cd), s, per[:2].abs() + 0.1, seed_t(6, 1), None)),
            ("sliced_score_terms", (s.clone().requires_grad_(dtype != torch.bfloat16),
                                    torch.randn(3, 2, 5, dtype=dtype).requires_grad_(dtype != torch.bfloat16),
                                    torch.randn(3, 2, 5, dtype=dtype), False)),
            ("sliced_score_terms", (s.clone(), torch.randn(3, 4, 5, dtype=dtype), torch.randn(3, 4, 5, dtype=dtype),
                                    True)),
            ("sliced_score_terms_backward", (torch.rand(3, dtype=cd), s, torch.randn(3, 2, 5, dtype=dtype),
                                             torch.randn(3, 2, dtype=torch.float64), False)),
        ]
    out.append(("fill_philox_", (torch.empty(8, 4, dtype=torch.int32), seed_t(9, 2**33))))
    return out


@needs_ext
@pytest.mark.parametrize("case", range(len(sample_inputs())))
def test_opcheck_compiled_ops(case):
    name, args = sample_inputs()[case]
    torch.library.opcheck(getattr(torch.ops.fastscore, name).default, args)


@pytest.mark.skipif("triton" not in available_backends("cpu"), reason="triton interpreter unavailable")
def test_opcheck_triton_ops():
    x = torch.randn(3, 5)
    coef = torch.rand(3, 3, dtype=torch.float64)
    # test_aot_dispatch_dynamic is skipped: the interpreter launch is not traceable by AOT.
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.fastscore.triton_step_.default,
                          (x.clone(), torch.randn(3, 5), coef, seed_t(1, 0), None, torch.empty_like(x), True),
                          test_utils=tests)
    torch.library.opcheck(torch.ops.fastscore.triton_perturb.default, (x, coef, seed_t(1, 0), None), test_utils=tests)
    torch.library.opcheck(torch.ops.fastscore.triton_fill_noise_.default, (torch.empty(3, 4), seed_t(2, 1)),
                          test_utils=tests)
    torch.library.opcheck(torch.ops.fastscore.triton_update_.default,
                          (torch.empty(3, 5), x, torch.randn(3, 5), coef, seed_t(1, 0), None, True), test_utils=tests)
    torch.library.opcheck(torch.ops.fastscore.triton_langevin_corrector_.default,
                          (x.clone(), torch.randn(3, 5), torch.rand(3, dtype=torch.float64), 0.16, seed_t(1, 0), False,
                           None, torch.empty_like(x)), test_utils=tests)
    torch.library.opcheck(torch.ops.fastscore.triton_dsm_loss.default,
                          (torch.randn(3, 5, requires_grad=True), coef[:2].abs() + 0.1, seed_t(4, 2), None),
                          test_utils=tests)
    torch.library.opcheck(torch.ops.fastscore.triton_sliced_score_terms.default,
                          (torch.randn(3, 5, requires_grad=True), torch.randn(3, 2, 5, requires_grad=True),
                           torch.randn(3, 2, 5), False), test_utils=tests)


def _sampler_step(x, s, seed, eps):
    ops.langevin_step_(x, s, eps, seed=seed)
    ops.step_(x, s, 0.9, 0.1, 0.2, seed=seed, offset=x.shape[0])
    return ops.perturb(x, 0.3, seed=seed, offset=2 * x.shape[0]) + 0.0


@needs_ext
def test_compile_fullgraph_matches_eager_without_recompiling_per_seed():
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(_sampler_step, fullgraph=True, backend=counter)
    for seed in (1, 2, 2**40 + 3):
        x0, s = torch.randn(4, 9), torch.randn(4, 9)
        x_eager = x0.clone()
        want = _sampler_step(x_eager, s, torch.tensor(seed), torch.tensor(0.01))
        x_comp = x0.clone()
        got = compiled(x_comp, s, torch.tensor(seed), torch.tensor(0.01))
        assert torch.equal(got, want) and torch.equal(x_comp, x_eager)
    assert counter.frame_count == 1


@needs_ext
def test_compile_inductor_runs_the_fused_ops():
    torch._dynamo.reset()
    compiled = torch.compile(_sampler_step, fullgraph=True)
    x0, s = torch.randn(3, 5), torch.randn(3, 5)
    x1, x2 = x0.clone(), x0.clone()
    want = _sampler_step(x1, s, torch.tensor(7), torch.tensor(0.02))
    got = compiled(x2, s, torch.tensor(7), torch.tensor(0.02))
    assert torch.equal(x1, x2) and torch.allclose(got, want)


@needs_ext
def test_compiled_perturb_gradient_matches_eager():
    def loss(x, sigma, seed):
        return (ops.perturb(x, sigma, seed=seed) ** 2).sum()

    x = torch.randn(4, 6, requires_grad=True)
    sigma = torch.rand(4)
    g_eager, = torch.autograd.grad(loss(x, sigma, torch.tensor(3)), x)
    torch._dynamo.reset()
    g_comp, = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x, sigma, torch.tensor(3)), x)
    assert torch.allclose(g_eager, g_comp)


def test_profiler_sees_each_op():
    x, s = torch.randn(2, 8), torch.randn(2, 8)
    with torch.profiler.profile() as prof:
        ops.langevin_step_(x, s, 0.1, seed=1)
        ops.step_(x, s, 1.0, 0.1, 0.1, seed=1)
        ops.perturb(x, 0.1, seed=1)
        fastscore.noise((3,), seed=1)
    names = {e.key for e in prof.key_averages()}
    for op in ("langevin_step_", "step_", "perturb", "noise"):
        assert f"fastscore::{op}" in names
