"""langevin_corrector_: score_sde's LangevinCorrector step, fused in two passes.

The step size is a reduction (float64 sums of squares); backends sum in different
orders, so fp64 storage agrees to ~1e-15 relative, while for fp32/fp16/bf16 storage the
coefficients are rounded to fp32 and the results are bit-identical."""

import math

import pytest
import torch

import fastscore
from fastscore import ops, reference
from support import FAST, assert_bits_equal, assert_matches, seed_as, skip_unsupported

SAMPLE_INPUTS = {  # the registered ops of the family, for tests/test_registration.py
    "langevin_corrector_": lambda t: [
        (t.x.clone(), torch.empty_like(t.x), t.s, 0.16, 0.0, t.per, False, None, *t.ints),
        (t.x.clone(), None, t.s, 0.2, 0.8, None, True, t.noise, *t.tensors),
    ],
}


def inputs(shape, dtype, seed=0, transposed=False):
    g = torch.Generator().manual_seed(seed)
    if transposed and len(shape) >= 2:
        x = torch.randn(shape[:-2] + (shape[-1], shape[-2]), generator=g).to(dtype).transpose(-1, -2)
        s = torch.randn(shape[:-2] + (shape[-1], shape[-2]), generator=g).to(dtype).transpose(-1, -2) * 3
        return x, s
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype) * 3


def score_sde_corrector(x, grad, noise, snr, alpha):
    """score_sde's LangevinCorrector.update_fn body, written from the published code."""
    grad_norm = torch.norm(grad.reshape(grad.shape[0], -1), dim=-1).mean()
    noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
    step_size = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
    x_mean = x + step_size[:, None, None, None] * grad
    x = x_mean + torch.sqrt(step_size * 2)[:, None, None, None] * noise
    return x, x_mean


def test_matches_score_sde_equations():
    x, s = inputs((6, 3, 4, 4), torch.float64)
    alpha = torch.rand(6, dtype=torch.float64)
    z = reference.noise(x.shape, 5, 0).double()
    want_x, want_mean = score_sde_corrector(x, s, z, 0.16, alpha)
    got_mean = torch.empty_like(x)
    ops.langevin_corrector_(x, s, 0.16, seed=5, alpha=alpha, x_mean=got_mean)
    assert torch.allclose(x, want_x, rtol=1e-12, atol=1e-12)
    assert torch.allclose(got_mean, want_mean, rtol=1e-12, atol=1e-12)


def test_per_sample_mode_uses_each_rows_norms():
    x, s = inputs((5, 40), torch.float64, seed=1)
    x0 = x.clone()
    z = reference.noise(x.shape, 2, 3).double()
    ops.langevin_corrector_(x, s, 0.2, seed=2, offset=3, step_size_mode="per_sample")
    eps = (0.2 * z.norm(dim=1) / s.norm(dim=1)) ** 2 * 2
    assert torch.allclose(x, x0 + eps[:, None] * s + torch.sqrt(2 * eps)[:, None] * z, rtol=1e-12, atol=1e-12)


def test_zero_score_does_not_move():
    x = torch.randn(3, 8)
    x0 = x.clone()
    ops.langevin_corrector_(x, torch.zeros(3, 8), 0.16, seed=1)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 40000), (4, 3, 7, 9)])
@pytest.mark.parametrize("mode", ["batch", "per_sample"])
@pytest.mark.parametrize("alpha_kind", ["scalar", "per_sample"])
def test_backends_match_reference(backend, dtype, shape, mode, alpha_kind):
    skip_unsupported(backend, dtype)
    alpha = 0.7 if alpha_kind == "scalar" else torch.linspace(0.5, 1.0, shape[0])
    results = []
    for b in ("reference", backend):
        x, s = inputs(shape, dtype, seed=3, transposed=True)
        mean = torch.empty_like(x)
        with fastscore.use_backend(b):
            ops.langevin_corrector_(x, s, 0.16, seed=2**35 + 1, offset=7, alpha=alpha, step_size_mode=mode,
                                    x_mean=mean)
        results.append(torch.stack([x, mean]))
    want, got = results
    assert_matches(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(500, 2), (3001, 2), (700, 7), (600, 12), (4096, 16), (70001, 1)])
@pytest.mark.parametrize("mode", ["batch", "per_sample"])
def test_cpp_short_rows_match_reference(shape, dtype, mode):
    """Thousands of short rows (the C++ short-row reduction), with numel below and inside
    the sizes for which the C++ kernel keeps pass 1's noise for pass 2 (2**10..2**24)."""
    skip_unsupported("cpp", dtype)
    results = []
    for b in ("reference", "cpp"):
        x, s = inputs(shape, dtype, seed=5)
        mean = torch.empty_like(x)
        with fastscore.use_backend(b):
            ops.langevin_corrector_(x, s, 0.16, seed=2**63 + 5, offset=3, step_size_mode=mode, x_mean=mean)
        results.append(torch.stack([x, mean]))
    assert_matches(results[1], results[0])


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(70001, 2), (16, 3, 64, 64), (2, 70001), (3, 50000)])
def test_cpp_per_sample_one_pass_matches_reference(shape, dtype, threads):
    """Per-sample step sizes from 2**17 elements: the C++ kernel updates each row in the
    task that summed it — short rows a chunk at a time, long rows a whole row per task
    (rows of several reduction blocks; 3 rows on 2 threads keep the two passes) — with the
    stream's z, an explicit z, x_mean, per-sample alpha and a transposed x."""
    skip_unsupported("cpp", dtype)
    alpha = torch.linspace(0.5, 1.5, shape[0], dtype=torch.float64)
    z = ops.noise(shape, 11, 0, dtype=dtype).to(torch.float64 if dtype == torch.float64 else torch.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for noise in (None, z):
            results = []
            for b in ("reference", "cpp"):
                x, s = inputs(shape, dtype, seed=7, transposed=noise is not None)
                mean = torch.empty_like(x)
                with fastscore.use_backend(b):
                    ops.langevin_corrector_(x, s, 0.16, seed=2**63 + 9, offset=2, alpha=alpha,
                                            step_size_mode="per_sample", x_mean=mean, noise=noise)
                results.append(torch.stack([x, mean]))
            assert_matches(results[1], results[0], f"noise={'given' if noise is not None else 'stream'}")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(4097, 4096), (2**20 + 1, 16)])
def test_cpp_batches_above_the_kept_noise_size_draw_the_same_z(shape):
    """Above 2**24 elements the C++ kernel draws z again in pass 2 instead of keeping it:
    the same result as passing that z explicitly (the stream itself is compared with the
    reference in test_noise and test_cpu_rng; the reference is too slow at this size)."""
    skip_unsupported("cpp")
    x, s = inputs(shape, torch.float32, seed=3)
    y = x.clone()
    with fastscore.use_backend("cpp"):
        ops.langevin_corrector_(x, s, 0.16, seed=2**64 - 3, offset=1)
        ops.langevin_corrector_(y, s, 0.16, noise=ops.noise(shape, 2**64 - 3, 1))
    assert_bits_equal(x, y)


@pytest.mark.parametrize("backend", FAST)
def test_explicit_noise_and_empty(backend):
    with fastscore.use_backend(backend):
        x, s = inputs((4, 9), torch.float32)
        z = torch.randn(4, 9)
        x_ref = x.clone()
        ops.langevin_corrector_(x, s, 0.3, noise=z)
        with fastscore.use_backend("reference"):
            ops.langevin_corrector_(x_ref, s, 0.3, noise=z)
        assert torch.equal(x, x_ref)
        e = torch.empty(0, 3)
        assert ops.langevin_corrector_(e, torch.empty(0, 3), 0.1).shape == (0, 3)


def test_stationary_variance_of_corrector_on_gaussian():
    """Many corrector steps on the exact score of N(0, v) leave N(0, v) roughly
    invariant; the per-step SNR rule gives eps ~ 2 snr^2 v, whose ULA bias is a
    variance of v / (1 - eps / (2 v)) (the ULA fixed point for a Gaussian)."""
    v, snr, n = 4.0, 0.16, 20000
    x = fastscore.noise((n, 1), seed=1) * math.sqrt(v)
    for k in range(200):
        ops.langevin_corrector_(x, -x / v, snr, seed=100 + k, step_size_mode="batch")
    eps = 2 * (snr**2) * v  # |z| ~ |x|/sqrt(v) on average, so (snr |z| / |x/v|)^2 ~ snr^2 v
    expected = v / (1 - eps / (2 * v))
    var = x.double().var().item()
    # sd of a sample variance is v * sqrt(2 / n); 5 sigma plus 2% for the eps approximation.
    assert abs(var - expected) < 5 * expected * math.sqrt(2 / n) + 0.02 * expected


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("seed_kind", ["int", "tensor"])
def test_tensor_seed_alpha_and_zero_d(backend, seed_kind):
    for shape in ((), (3, 7), (2, 5, 3)):
        results = []
        for b in ("reference", backend):
            x, s = inputs(shape, torch.float32, seed=4)
            mean = torch.empty_like(x)
            alpha = torch.tensor(0.8, dtype=torch.float64)
            off = 2**33 + 1 if seed_kind == "int" else torch.tensor(2**33 + 1)
            with fastscore.use_backend(b):
                ops.langevin_corrector_(x, s, 0.16, seed=seed_as(2**63 + 3, seed_kind), offset=off, alpha=alpha,
                                        x_mean=mean)
            results.append(torch.stack([x, mean]))
        assert_matches(results[1], results[0], str(shape))


@pytest.mark.parametrize("backend", FAST)
def test_zero_score_row_gives_zero_step_per_row(backend):
    x, s = inputs((3, 8), torch.float32, seed=14)
    s[1] = 0.0
    x0 = x.clone()
    with fastscore.use_backend(backend):
        ops.langevin_corrector_(x, s, 0.16, seed=2, step_size_mode="per_sample")
    assert torch.equal(x[1], x0[1]) and not torch.equal(x[0], x0[0])  # eps = 0: no drift and no noise


def test_closed_form_batch_and_per_sample():
    """eps = (snr * |z| / |s|)^2 * 2 * alpha with torch.linalg.norm (batch means and per row)."""
    shape, seed, offset, snr = (4, 3, 50), 21, 6, 0.16
    x, score = inputs(shape, torch.float64, seed=17)
    alpha = torch.linspace(0.5, 1.5, 4, dtype=torch.float64)
    z = reference.noise(shape, seed, offset, dtype=torch.float64)
    gs = torch.linalg.norm(score.reshape(4, -1), dim=1)
    ns = torch.linalg.norm(z.reshape(4, -1), dim=1)
    for per_sample in (False, True):
        g, n = (gs, ns) if per_sample else (gs.mean(), ns.mean())
        eps = ((snr * n / g) ** 2 * 2 * alpha).reshape(4, 1, 1)
        got, mean = x.clone(), torch.empty_like(x)
        ops.langevin_corrector_(got, score, snr, seed=seed, offset=offset, alpha=alpha,
                                step_size_mode="per_sample" if per_sample else "batch", x_mean=mean)
        torch.testing.assert_close(mean, x + eps * score, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got, x + eps * score + torch.sqrt(2 * eps) * z, rtol=1e-12, atol=1e-12)


def test_cpp_kept_noise_buffer_reused_across_sizes_and_dtypes():
    """The C++ kernel keeps pass 1's z in memory its thread reuses from call to call: calls
    that grow it, fit in it, and change the dtype give the bits of the same z passed in."""
    skip_unsupported("cpp")
    with fastscore.use_backend("cpp"):
        for k, (shape, dtype) in enumerate([((8, 300), torch.float32), ((64, 3000), torch.float32),
                                            ((8, 300), torch.float32), ((64, 3000), torch.float64),
                                            ((3, 2000), torch.bfloat16)]):
            x, s = inputs(shape, dtype, seed=k)
            y = x.clone()
            ops.langevin_corrector_(x, s, 0.16, seed=40 + k, offset=k)
            ops.langevin_corrector_(y, s, 0.16, noise=ops.noise(shape, 40 + k, k, dtype=reference.compute_dtype(dtype)))
            assert_bits_equal(x, y, f"call {k}: {shape} {dtype}")
