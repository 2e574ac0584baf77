"""dsm_loss: the fused denoising score matching loss and its fused backward on every backend
against the reference. The backward is elementwise in the reference's operation order, so
it is bitwise (fp64 too); the forward's float64 row sums differ from the reference's only
in summation order (bitwise after rounding to fp32, 1e-13 for fp64)."""

import math

import pytest
import torch

import fastscore
from fastscore import ops, reference
from support import DTYPES, FAST, assert_bits_equal, assert_matches, make, run_both, seed_as, skip_unsupported

SAMPLE_INPUTS = {  # the registered ops of the family, for tests/test_registration.py
    "dsm_loss": lambda t: [(t.s.clone().requires_grad_(t.grad), 0.0, t.per, 0.0, t.per, None, *t.ints),
                           (t.s.clone(), 0.5, None, 2.0, None, t.noise, *t.tensors)],
    "dsm_loss_backward": lambda t: [(torch.rand(3).to(t.cd), t.s, 0.0, t.per, 1.0, None, None, *t.ints)],
}

MANY_SHORT_ROWS = (400, 3)  # the CPU kernels' short-row path over two chunks
SHAPES = [(1, 1), (3, 5), (2, 40000), (3, 33333), (4, 3, 7, 9), MANY_SHORT_ROWS]


def coefs(kind, rows):
    if kind == "float":
        return 0.37, 0.8  # 1/0.37 is not an fp32 value
    if kind == "0d":
        return torch.tensor(0.37, dtype=torch.float64), torch.tensor(0.8)
    return torch.linspace(0.01, 50.0, rows, dtype=torch.float64), torch.linspace(0.5, 2.0, rows) ** 2


def loss_and_grad(score, sigma, weight, seed, offset, noise=None):
    s = score.clone().requires_grad_(True)
    loss = ops.dsm_loss(s, sigma, seed=seed, offset=offset, weight=weight, noise=noise)
    g = make((score.shape[0],), loss.dtype, "contiguous", 99)
    (grad,) = torch.autograd.grad(loss, s, g)
    return loss.detach(), grad


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["float", "0d", "per_sample"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_dsm_matches_reference(backend, dtype, shape, kind, layout):
    skip_unsupported(backend, dtype)
    if backend == "triton" and shape == MANY_SHORT_ROWS:
        pytest.skip("the interpreter runs a program per row (18 s here); its row logic is covered by (3, 5)")
    sigma, weight = coefs(kind, shape[0])
    got, want = run_both(backend, lambda: loss_and_grad(make(shape, dtype, layout, 1), sigma, weight, 2**63 + 3,
                                                        2**33))
    assert_matches(got[0], want[0], "loss")
    assert_bits_equal(got[1], want[1], "grad")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seed_kind", ["int", "tensor"])
def test_explicit_noise_and_tensor_seeds(backend, seed_kind):
    score = make((3, 2, 11), torch.float32, "contiguous", 8)
    noise = make((3, 2, 11), torch.float32, "transposed", 10) * 1.5
    for z in (None, noise):
        got, want = run_both(backend, lambda: loss_and_grad(score, torch.tensor([0.2, 0.5, 1.0]), None,
                                                            seed_as(2**64 - 5, seed_kind),
                                                            7 if seed_kind == "int" else torch.tensor(7), noise=z))
        assert_matches(got[0], want[0], "loss")
        assert_bits_equal(got[1], want[1], "grad")
    with fastscore.use_backend(backend):  # the stream is not used with explicit noise
        a = ops.dsm_loss(score, 0.5, seed=1, noise=noise)
        b = ops.dsm_loss(score, 0.5, seed=2, offset=5, noise=noise)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,)], ids=str)
def test_empty(backend, shape):
    with fastscore.use_backend(backend):
        loss = ops.dsm_loss(torch.empty(shape), 0.5)
    assert loss.shape == (shape[0],) and torch.equal(loss, torch.zeros(shape[0]))


@pytest.mark.parametrize("backend", FAST)
def test_dsm_fused_backward_gradcheck(backend):
    s = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.2, 0.7, 1.3], dtype=torch.float64)
    with fastscore.use_backend(backend):
        assert torch.autograd.gradcheck(lambda t: ops.dsm_loss(t, sigma, seed=3, weight=sigma**2), (s,))


def test_dsm_loss_is_the_definition_and_pairs_with_perturb():
    x = torch.randn(5, 8, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    x_tilde = ops.perturb(x, sigma, seed=4, offset=1)
    z = (x_tilde - x) / sigma[:, None]  # the z perturb drew
    s = torch.randn(5, 8, dtype=torch.float64)
    want = 0.5 * ((s + z / sigma[:, None]) ** 2).sum(1)
    assert torch.allclose(ops.dsm_loss(s, sigma, seed=4, offset=1), want, rtol=1e-12)


def test_dsm_backward_keeps_no_noise_tensor():
    """The autograd graph of the fused loss saves score and coefficient tensors, never z."""
    s = torch.randn(64, 3, 32, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        ops.dsm_loss(s, torch.full((64,), 0.5), seed=1)
    big = [shape for shape in saved if math.prod(shape) >= s.numel()]
    assert big == [s.shape]  # only the score itself (a view of the input), no B x D noise


def test_autograd_cross_check_fp64():
    """fp64: the forward against the closed form and the fused backward against autograd."""
    shape, seed, offset = (4, 3, 50), 21, 6
    score = make(shape, torch.float64, "contiguous", 17).requires_grad_(True)
    sigma, w = coefs("per_sample", 4)
    z = reference.noise(shape, seed, offset, dtype=torch.float64)
    d = score + z / sigma.reshape(4, 1, 1)
    loss = 0.5 * w.double() * (d * d).reshape(4, -1).sum(1)
    g = make((4,), torch.float64, "contiguous", 18)
    (expected,) = torch.autograd.grad(loss, score, g)
    s2 = score.detach().clone().requires_grad_(True)
    got = ops.dsm_loss(s2, sigma, seed=seed, offset=offset, weight=w)
    torch.testing.assert_close(got.detach(), loss.detach(), rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(got, s2, g)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
