"""The registered ops of every backend namespace: torch.library.opcheck (schema, fake,
autograd registration, AOT) over one list of sample inputs per op, torch.compile
(fullgraph) tracing through them with one graph for many tensor seeds, and the profiler
labels."""

import pytest
import torch
import torch._dynamo.testing

import fastscore
from fastscore import backends, ops
from fastscore.ops import SCHEMAS
from support import FAST, Samples

import test_corrector  # noqa: E402  (each family's SAMPLE_INPUTS)
import test_dsm
import test_noise
import test_sliced
import test_step


def namespaces():
    """(namespace, opcheck tests it supports) of the backends runnable here."""
    out = [("fastscore_reference", None)]
    if backends.HAS_EXTENSION:
        out.append(("fastscore", None))
    if "triton" in FAST:  # the interpreter's launch is not traceable by AOT dispatch
        out.append(("fastscore_triton", ("test_schema", "test_autograd_registration", "test_faketensor")))
    return out


def sample_inputs(dtype):
    """op -> argument tuples in the plain signature, from each family's test file."""
    out = {}
    for module in (test_noise, test_step, test_corrector, test_dsm, test_sliced):
        for op, make in module.SAMPLE_INPUTS.items():
            out[op] = make(Samples(dtype))
    return out


def test_every_op_has_sample_inputs():
    assert set(sample_inputs(torch.float32)) == set(SCHEMAS)


@pytest.mark.parametrize("namespace,utils", namespaces(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("op", sorted(SCHEMAS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_opcheck(namespace, utils, op, dtype):
    if namespace == "fastscore_triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16 arithmetic")
    kwargs = {} if utils is None else {"test_utils": utils}
    for args in sample_inputs(dtype)[op]:
        torch.library.opcheck(getattr(getattr(torch.ops, namespace), op).default, args, **kwargs)


def _sampler_step(x, s, seed, eps):
    ops.langevin_step_(x, s, eps, seed=seed)
    ops.step_(x, s, 0.9, 0.1, 0.2, seed=seed, offset=x.shape[0])
    return ops.perturb(x, 0.3, seed=seed, offset=2 * x.shape[0]) + 0.0


@pytest.mark.parametrize("backend", [b for b in ["reference"] + FAST if b != "triton"])
def test_compile_fullgraph_matches_eager_without_recompiling_per_seed(backend):
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    with fastscore.use_backend(backend):
        compiled = torch.compile(_sampler_step, fullgraph=True, backend=counter)
        for seed in (1, 2, 2**40 + 3, -5):
            x0, s = torch.randn(4, 9), torch.randn(4, 9)
            x_eager = x0.clone()
            want = _sampler_step(x_eager, s, torch.tensor(seed), torch.tensor(0.01))
            x_comp = x0.clone()
            got = compiled(x_comp, s, torch.tensor(seed), torch.tensor(0.01))
            assert torch.equal(got, want) and torch.equal(x_comp, x_eager)
    assert counter.frame_count == 1


@pytest.mark.skipif(not backends.HAS_EXTENSION, reason="fastscore._C not built")
def test_compile_inductor_runs_the_fused_ops():
    torch._dynamo.reset()
    compiled = torch.compile(_sampler_step, fullgraph=True)
    x0, s = torch.randn(3, 5), torch.randn(3, 5)
    x1, x2 = x0.clone(), x0.clone()
    want = _sampler_step(x1, s, torch.tensor(7), torch.tensor(0.02))
    got = compiled(x2, s, torch.tensor(7), torch.tensor(0.02))
    assert torch.equal(x1, x2) and torch.allclose(got, want)


@pytest.mark.skipif(not backends.HAS_EXTENSION, reason="fastscore._C not built")
def test_compiled_perturb_and_dsm_gradients_match_eager():
    def loss(x, sigma, seed):
        x_tilde = ops.perturb(x, sigma, seed=seed)
        return (x_tilde**2).sum() + ops.dsm_loss(x_tilde, sigma, seed=seed).sum()

    x = torch.randn(4, 6, requires_grad=True)
    sigma = torch.rand(4) + 0.1
    g_eager, = torch.autograd.grad(loss(x, sigma, torch.tensor(3)), x)
    torch._dynamo.reset()
    g_comp, = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x, sigma, torch.tensor(3)), x)
    assert torch.allclose(g_eager, g_comp)


def test_profiler_sees_each_op():
    x, s = torch.randn(2, 8), torch.randn(2, 8)
    with torch.profiler.profile() as prof:
        ops.langevin_step_(x, s, 0.1, seed=1)
        ops.step_(x, s, 1.0, 0.1, 0.1, seed=1)
        ops.update(x, s, 1.0, 0.1)
        ops.combine(x, [s], [1.0, 0.1, 0.1])
        ops.perturb(x, 0.1, seed=1)
        ops.langevin_corrector_(x, s, 0.1)
        ops.dsm_loss(s, 0.5)
        ops.sliced_score_terms(s, s[:, None], s[:, None])
        fastscore.noise((3,), seed=1)
        ops.derive_seeds(torch.tensor(1), 3)
    names = {e.key for e in prof.key_averages()}
    for op in ("langevin_step_", "step_", "update", "combine", "perturb", "langevin_corrector_", "dsm_loss",
               "sliced_score_terms", "noise", "derive_seeds"):
        assert f"fastscore::{op}" in names, (op, sorted(n for n in names if "fastscore" in n))
