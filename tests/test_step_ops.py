"""step_, langevin_step_ and perturb: every backend against the reference, elementwise.

The fused update is evaluated in the same order everywhere (fp32 math, fp64 for fp64),
so results must be bit-identical, not merely close, for every storage dtype.
"""

import math

import pytest
import torch

import fastscore
from fastscore import ops, reference
from fastscore.backends import available_backends

FAST = [b for b in available_backends("cpu") if b != "reference"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def skip_unsupported(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16 arithmetic")


def make(shape, dtype, layout, seed):
    """A tensor of ``shape``: contiguous, or a non-contiguous view with the same values."""
    g = torch.Generator().manual_seed(seed)
    if layout == "contiguous" or len(shape) < 2:
        return torch.randn(shape, generator=g).to(dtype)
    # Transposed storage: same logical shape, last two dims swapped in memory.
    t = torch.randn(shape[:-2] + (shape[-1], shape[-2]), generator=g).to(dtype)
    return t.transpose(-1, -2)


def coefs(kind, rows, dtype=torch.float32):
    """(a, b, c) as floats or per-sample [rows] tensors (positive c for the Langevin form)."""
    if kind == "scalar":
        return 0.9, 0.013, 0.17
    g = torch.Generator().manual_seed(rows)
    return (torch.rand(rows, generator=g).to(dtype) + 0.5, torch.rand(rows, generator=g).to(dtype) * 0.1,
            torch.rand(rows, generator=g).to(dtype))


SHAPES = [(0, 5), (1,), (7,), (3, 5), (2, 4096), (4, 3, 9, 11), (5, 1, 1)]


def assert_same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    bad = ~((got == want) | (got.isnan() & want.isnan()))
    idx = bad.reshape(-1).nonzero().reshape(-1)
    assert idx.numel() == 0, f"{idx.numel()} mismatches, first {idx[:5].tolist()}: " \
        f"{got.reshape(-1)[idx[:5]].tolist()} vs {want.reshape(-1)[idx[:5]].tolist()}"


def run_both(backend, fn):
    with fastscore.use_backend("reference"):
        want = fn()
    with fastscore.use_backend(backend):
        got = fn()
    return got, want


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("coef_kind", ["scalar", "per_sample"])
def test_step_matches_reference(backend, dtype, shape, layout, coef_kind):
    skip_unsupported(backend, dtype)
    a, b, c = coefs(coef_kind, shape[0])

    def run():
        x = make(shape, dtype, layout, 0)
        s = make(shape, dtype, layout, 1)
        mean = torch.empty_like(x)
        ops.step_(x, s, a, b, c, seed=2**40 + 3, offset=6, x_mean=mean)
        return torch.stack([x, mean]) if x.numel() else x

    got, want = run_both(backend, run)
    assert_same(got, want)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["no_score", "ode_c0", "explicit_noise", "tensor_seed", "zero_dim"])
def test_step_variants_match_reference(backend, dtype, variant):
    skip_unsupported(backend, dtype)
    shape = () if variant == "zero_dim" else (6, 37)

    def run():
        x = make(shape, dtype, "contiguous", 2)
        s = make(shape, dtype, "contiguous", 3)
        if variant == "no_score":
            ops.step_(x, None, 0.5, 0.0, 1.5, seed=1)
        elif variant == "ode_c0":
            ops.step_(x, s, 1.0, -0.25, 0.0, seed=1)
        elif variant == "explicit_noise":
            ops.step_(x, s, 1.0, 0.1, 0.3, noise=make(shape, torch.float32, "contiguous", 4))
        elif variant == "tensor_seed":
            ops.step_(x, s, 1.0, 0.1, 0.3, seed=torch.tensor(77), offset=torch.tensor(2))
        else:
            ops.step_(x, s, 1.0, 0.1, 0.3, seed=5, offset=3)
        return x

    got, want = run_both(backend, run)
    assert_same(got, want)


def test_c_zero_draws_no_noise():
    x = torch.randn(4, 8)
    s = torch.randn(4, 8)
    y = x.clone()
    ops.step_(y, s, 1.0, 0.5, 0.0, seed=3)
    assert torch.equal(y, x + 0.5 * s)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("coef_kind", ["scalar", "per_sample"])
def test_langevin_step_matches_reference_and_definition(backend, dtype, coef_kind):
    skip_unsupported(backend, dtype)
    eps = 0.003 if coef_kind == "scalar" else torch.tensor([0.001, 0.002, 0.0, 0.004])

    def run():
        x = make((4, 3, 5), dtype, "transposed", 5)
        ops.langevin_step_(x, make((4, 3, 5), dtype, "transposed", 6), eps, seed=8, offset=1)
        return x

    got, want = run_both(backend, run)
    assert_same(got, want)
    # And the definition x + eps*s + sqrt(2 eps)*z (float64 check, fp32-level tolerance).
    if dtype == torch.float32:
        x0, s0 = make((4, 3, 5), dtype, "transposed", 5), make((4, 3, 5), dtype, "transposed", 6)
        e = torch.as_tensor(eps, dtype=torch.float64).reshape(-1, 1, 1)
        z = reference.noise((4, 3, 5), 8, 1).double()
        expect = x0.double() + e * s0.double() + torch.sqrt(2 * e) * z
        assert torch.allclose(got.double(), expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3), (1,), (9, 5), (3, 4, 5)])
@pytest.mark.parametrize("coef_kind", ["scalar", "per_sample"])
def test_perturb_matches_reference(backend, dtype, shape, coef_kind):
    skip_unsupported(backend, dtype)
    a, _, c = coefs(coef_kind, shape[0])
    got, want = run_both(backend, lambda: ops.perturb(make(shape, dtype, "transposed", 7), c, seed=11, offset=2,
                                                        mean_scale=a))
    assert_same(got, want)


def test_perturb_uses_the_stream_and_mean_scale():
    x = torch.randn(5, 6)
    out = ops.perturb(x, 0.5, seed=4, offset=3, mean_scale=0.8)
    z = reference.noise((5, 6), 4, 3)
    assert torch.allclose(out, 0.8 * x + 0.5 * z, rtol=1e-6, atol=1e-6)
    # offset counts rows: rows [3, 8) of a draw from 0 are the same z.
    assert torch.equal(z, reference.noise((8, 6), 4, 0)[3:])


@pytest.mark.parametrize("backend", FAST)
def test_perturb_gradients_match_reference(backend):
    def run():
        x = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        sigma = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64, requires_grad=True)
        out = ops.perturb(x, sigma, seed=3, mean_scale=0.7)
        (out * torch.arange(28, dtype=torch.float64).reshape(4, 7)).sum().backward()
        return torch.cat([out.detach().reshape(-1), x.grad.reshape(-1), sigma.grad])

    got, want = run_both(backend, run)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 5), (1,), (3, 5), (2, 4096), (4, 3, 9, 11)])
@pytest.mark.parametrize("coef_kind", ["scalar", "per_sample"])
@pytest.mark.parametrize("variant", ["drift", "noisy", "out_given"])
def test_update_matches_reference_and_leaves_x(backend, dtype, shape, coef_kind, variant):
    skip_unsupported(backend, dtype)
    a, b, c = coefs(coef_kind, shape[0])
    c = 0.0 if variant == "drift" else c

    def run():
        x = make(shape, dtype, "transposed", 8)
        s = make(shape, dtype, "transposed", 9)
        x0 = x.clone()
        out = make(shape, dtype, "transposed", 10) if variant == "out_given" else None
        got = ops.update(x, s, a, b, c, seed=21, offset=4, out=out)
        assert torch.equal(x, x0) and (out is None or got is out)
        return got

    got, want = run_both(backend, run)
    assert_same(got, want)
