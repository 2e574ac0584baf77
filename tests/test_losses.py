"""Losses and likelihood: fused ops against the reference and autograd, and the
statistical properties that define them, with tolerances from the sample size."""

import math

import pytest
import torch

import fastscore
from fastscore import likelihood, losses, ops
from fastscore import sde as S
from fastscore.backends import available_backends

FAST = [b for b in available_backends("cpu") if b != "reference"]


# ---------------------------------------------------------------- losses


class GaussianModel(torch.nn.Module):
    """score(x) = -P (x - mu) with P = L L^T positive definite: the score of N(mu, P^-1)."""

    def __init__(self, d):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
        self.L = torch.nn.Parameter(torch.eye(d, dtype=torch.float64))

    def precision(self):
        return self.L @ self.L.T

    def forward(self, x):
        return -(x - self.mu) @ self.precision()


def test_exact_score_matching_recovers_mean_and_covariance():
    """Score matching coincides with maximum likelihood for Gaussians: the minimiser is the
    sample mean and sample covariance (estimated within optimiser tolerance)."""
    g = torch.Generator().manual_seed(0)
    A = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.2, 0.5]], dtype=torch.float64)
    x = torch.randn(2000, 3, generator=g, dtype=torch.float64) @ A.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    model = GaussianModel(3)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = losses.score_matching(model, x)
        loss.backward()
        return loss

    opt.step(closure)
    cov = torch.linalg.inv(model.precision().detach())
    assert torch.allclose(model.mu.detach(), x.mean(0), atol=1e-5)
    assert torch.allclose(cov, torch.cov(x.T, correction=0), atol=1e-5)


@pytest.mark.parametrize("variance_reduction", [False, True])
@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_sliced_score_matching_is_unbiased(variance_reduction, dist):
    """Mean over many seeds of the sliced loss and of its parameter gradient equals the
    exact loss and gradient within 5 standard errors of that mean."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(16, 3, dtype=torch.float64)

    def loss_and_grad(fn):
        net.zero_grad()
        loss = fn()
        loss.backward()
        return torch.cat([loss.detach().reshape(1), net[0].weight.grad.reshape(-1)])

    exact = loss_and_grad(lambda: losses.score_matching(net, x))
    draws = torch.stack([loss_and_grad(lambda: losses.sliced_score_matching(
        net, x, n_projections=2, dist=dist, variance_reduction=variance_reduction, seed=k)) for k in range(300)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert ((mean - exact).abs() <= 5 * se + 1e-10).all(), (mean - exact) / se


def test_sliced_vjp_and_jvp_modes_agree():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Softplus(), torch.nn.Linear(8, 4)).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    grads = []
    for mode in ("vjp", "jvp"):
        net.zero_grad()
        losses.sliced_score_matching(net, x, n_projections=3, seed=2, mode=mode).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_dsm_minimiser_over_linear_scores_is_the_perturbed_score():
    """For data N(m, C) and a linear score s(x) = W x + b, the DSM minimiser is the score
    of the perturbed data N(m, C + sigma^2 I): W = -(C + sigma^2)^-1, b = -W m. Solved in
    closed form (least squares on the DSM regression) with many noise draws."""
    sigma, n = 0.5, 200000
    g = torch.Generator().manual_seed(2)
    C = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    m = torch.tensor([1.0, -1.0], dtype=torch.float64)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(C).T + m
    x_tilde = ops.perturb(x, sigma, seed=9)
    target = -(x_tilde - x) / sigma**2  # = -z / sigma, what dsm_loss regresses s onto
    features = torch.cat([x_tilde, torch.ones(n, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(features, target).solution  # minimises the DSM loss over (W, b)
    W = coef[:2].T
    W_true = -torch.linalg.inv(C + sigma**2 * torch.eye(2, dtype=torch.float64))
    # Regression coefficients have standard errors ~ 1/(sigma sqrt(n lambda_min)) ~ 0.01.
    assert torch.allclose(W, W_true, atol=0.03)
    # And the fused loss is minimal there: perturbing W raises it.
    def dsm(Wm):
        return losses.denoising_score_matching(lambda xt: xt @ Wm.T - m @ Wm.T, x, sigma, seed=9).item()
    best = dsm(W_true)
    assert best < dsm(W_true * 1.1) and best < dsm(W_true * 0.9)


def test_anneal_dsm_matches_ncsn_formulation():
    torch.manual_seed(3)
    net = torch.nn.Linear(6, 6).double()
    score_fn = lambda x, s: net(x) / s[:, None]
    x = torch.randn(32, 6, dtype=torch.float64)
    sigmas = S.geometric_sigmas(1.0, 0.01, 10, dtype=torch.float64)
    labels = torch.randint(0, 10, (32,))
    loss = losses.anneal_dsm(score_fn, x, sigmas, seed=4, labels=labels)
    # NCSN's anneal_dsm_score_estimation with the same z.
    used = sigmas[labels][:, None]
    z = fastscore.noise(x.shape, seed=4, dtype=torch.float64)
    perturbed = x + z * used
    target = -1 / used**2 * (perturbed - x)
    want = (0.5 * ((score_fn(perturbed, used[:, 0]) - target) ** 2).sum(-1) * used[:, 0] ** 2).mean()
    assert torch.allclose(loss, want, rtol=1e-6)
    # Random labels from the stream are uniform over levels.
    u = losses.row_uniforms(ops.derive_seed(0, 0), 0, 100000)
    counts = torch.bincount((u.double() * 10).long(), minlength=10).double()
    assert (counts - 10000).abs().max() < 5 * math.sqrt(10000 * 0.9)


@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_sde_score_loss_matches_score_sde(likelihood_weighting):
    torch.manual_seed(4)
    net = torch.nn.Linear(5, 5).double()
    score_fn = lambda x, t: net(x) * (1 + t[:, None])
    vp = S.VPSDE()
    x = torch.randn(16, 5, dtype=torch.float64)
    loss = losses.sde_score_loss(score_fn, vp, x, seed=6, likelihood_weighting=likelihood_weighting)
    t = (losses.row_uniforms(ops.derive_seed(6, 0), 0, 16).double() * (1 - 1e-5) + 1e-5)
    z = fastscore.noise(x.shape, seed=6, dtype=torch.float64)
    mean, std = vp.marginal_prob(x, t)
    score = score_fn(mean + std[:, None] * z, t)
    if likelihood_weighting:
        g2 = vp.sde(torch.zeros_like(x), t)[1] ** 2
        want = (0.5 * ((score + z / std[:, None]) ** 2).sum(-1) * g2).mean()
    else:
        want = (0.5 * ((score * std[:, None] + z) ** 2).sum(-1)).mean()
    assert torch.allclose(loss, want, rtol=1e-6)


def test_training_step_compiles_fullgraph():
    if "cpp" not in FAST:
        pytest.skip("fastscore._C not built")
    net = torch.nn.Linear(4, 4)

    def step(x, sigma, seed):
        x_tilde = ops.perturb(x, sigma, seed=seed)
        return ops.dsm_loss(net(x_tilde), sigma, seed=seed).mean()

    x, sigma = torch.randn(8, 4), torch.rand(8) + 0.1
    eager = step(x, sigma, torch.tensor(3))
    eager.backward()
    g_eager = net.weight.grad.clone()
    net.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)(x, sigma, torch.tensor(3))
    compiled.backward()
    assert torch.allclose(compiled, eager) and torch.allclose(net.weight.grad, g_eager)


def test_tensor_seeds_draw_the_int_seeds_choices():
    """A one-element tensor seed gives the losses the bits of the int seed: the per-sample
    choices' seed is derived on the tensor's device (tests/test_meta.py: without a host read)."""
    x, h = torch.randn(64, 2), torch.randn(64, 2)
    sigmas = S.geometric_sigmas(5.0, 0.1, 7)
    for seed in (9, 2**63 + 5):
        tensor_seed = torch.tensor(seed - (1 << 64) if seed >> 63 else seed)
        for loss in (lambda s: losses.anneal_dsm(lambda x_tilde, sigma: h * sigma[:, None], x, sigmas, seed=s),
                     lambda s: losses.sde_score_loss(lambda x_t, t: h * t[:, None], S.VPSDE(), x, seed=s)):
            assert torch.equal(loss(tensor_seed), loss(seed)), seed


def test_anneal_dsm_compiles_fullgraph_after_an_eager_step():
    """An eager step first (it keeps the level table), then torch.compile(fullgraph=True):
    the table's cache key (a tensor version) is not read while tracing, and a tensor seed is
    derived in the graph, so nothing breaks it; loss and gradient equal eager's."""
    if "cpp" not in FAST:
        pytest.skip("fastscore._C not built")
    net = torch.nn.Linear(3, 2)
    sigmas = S.geometric_sigmas(1.0, 0.01, 10)
    x = torch.randn(16, 2)

    def step(x, seed):
        return losses.anneal_dsm(lambda x_tilde, sigma: net(torch.cat([x_tilde, sigma[:, None]], 1)), x, sigmas,
                                 seed=seed)

    def loss_and_grad(fn, seed):
        net.zero_grad()
        loss = fn(x, seed)
        loss.backward()
        return loss.detach(), net.weight.grad.clone()

    seeds = (5, torch.tensor(6), torch.tensor(7))
    eager = [loss_and_grad(step, s) for s in seeds]
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    for s, (loss, grad) in zip(seeds, eager):  # an int seed, then tensor seeds
        got_loss, got_grad = loss_and_grad(compiled, s)
        assert torch.allclose(got_loss, loss) and torch.allclose(got_grad, grad), s
    assert not torch.equal(eager[1][0], eager[2][0])  # a new tensor seed is new data: new levels and noise


# ---------------------------------------------------------------- likelihood

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
COV = torch.tensor([[0.5, 0.3], [0.3, 0.4]], dtype=torch.float64)


def gaussian_parts(sde):
    def cov_t(t):
        m, s = sde.marginal_coef(t.double())
        return m, m[:, None, None] ** 2 * COV + (s**2)[:, None, None] * torch.eye(2, dtype=torch.float64)

    def score_fn(x, t):
        m, c = cov_t(t)
        return -torch.linalg.solve(c, (x.double() - m[:, None] * MU)[..., None])[..., 0].to(x.dtype)

    def logp_at(t):
        def logp(z):
            m, c = cov_t(torch.full((z.shape[0],), t, dtype=torch.float64))
            return torch.distributions.MultivariateNormal(m[:, None] * MU, c).log_prob(z.double())
        return logp

    return score_fn, logp_at


@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp"])
def test_log_likelihood_exact_trace_matches_analytic_density(sde_name):
    sde = {"vp": S.VPSDE(), "ve": S.VESDE(sigma_max=10.0), "subvp": S.SubVPSDE()}[sde_name]
    score_fn, logp_at = gaussian_parts(sde)
    x = fastscore.noise((32, 2), seed=1, dtype=torch.float64) @ torch.linalg.cholesky(COV).T + MU
    eps = 1e-5
    lp, nfe = likelihood.log_likelihood(score_fn, sde, x, trace="exact", rtol=1e-7, atol=1e-7, eps=eps,
                                        prior_logp=logp_at(sde.T))
    # The flow maps p_eps onto p_T exactly; error is the ODE's, ~ tolerance.
    assert (lp - logp_at(eps)(x)).abs().max().item() < 1e-4
    assert nfe > 0


def test_log_likelihood_rademacher_is_unbiased():
    vp = S.VPSDE()
    score_fn, logp_at = gaussian_parts(vp)
    x = fastscore.noise((4, 2), seed=2, dtype=torch.float64) @ torch.linalg.cholesky(COV).T + MU
    exact = logp_at(1e-5)(x)
    draws = torch.stack([likelihood.log_likelihood(score_fn, vp, x, seed=k, prior_logp=logp_at(1.0))[0]
                         for k in range(60)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert ((mean - exact).abs() <= 5 * se + 1e-3).all(), ((mean - exact), se)


def test_bits_per_dim_conventions():
    logp = torch.tensor([-10.0, -20.0])
    x = torch.zeros(2, 3, 2, 2)
    assert torch.allclose(likelihood.bits_per_dim(logp, x), -logp / (12 * math.log(2)))
    assert torch.allclose(likelihood.bits_per_dim(logp, x, n_bits=8), -logp / (12 * math.log(2)) + 7)
    assert torch.allclose(likelihood.bits_per_dim(logp, x, n_bits=8, centered=False), -logp / (12 * math.log(2)) + 8)


# ---------------------------------------------------------------- errors

_f = lambda x, *a: x
BAD = [
    ("score_fn", TypeError, lambda: losses.score_matching(None, torch.zeros(2, 2))),
    ("x must be", TypeError, lambda: losses.score_matching(_f, torch.zeros(2, 2, dtype=torch.int64))),
    ("x must be", ValueError, lambda: losses.score_matching(_f, torch.zeros(0, 2))),
    ("n_projections", ValueError, lambda: losses.sliced_score_matching(_f, torch.zeros(2, 2), n_projections=0)),
    ("dist", ValueError, lambda: losses.sliced_score_matching(_f, torch.zeros(2, 2), dist="uniform")),
    ("mode", ValueError, lambda: losses.sliced_score_matching(_f, torch.zeros(2, 2), mode="hvp")),
    ("sigma", ValueError, lambda: losses.denoising_score_matching(_f, torch.zeros(2, 2), -0.1)),
    ("sigma", ValueError, lambda: losses.denoising_score_matching(_f, torch.zeros(2, 2), 0.0)),
    ("sigmas", ValueError, lambda: losses.anneal_dsm(_f, torch.zeros(2, 2), [1.0, -1.0])),
    ("labels", ValueError, lambda: losses.anneal_dsm(_f, torch.zeros(2, 2), [1.0], labels=torch.zeros(3).long())),
    ("sde", TypeError, lambda: losses.sde_score_loss(_f, "vp", torch.zeros(2, 2))),
    ("eps", ValueError, lambda: losses.sde_score_loss(_f, S.VPSDE(), torch.zeros(2, 2), eps=2.0)),
    ("score_fn must return", ValueError, lambda: losses.denoising_score_matching(lambda x: x[:1], torch.zeros(2, 2), 0.1)),
    ("trace", ValueError, lambda: likelihood.log_likelihood(_f, S.VPSDE(), torch.zeros(2, 2), trace="exactly")),
    ("x must be", ValueError, lambda: likelihood.log_likelihood(_f, S.VPSDE(), torch.zeros(2))),
    ("rtol", ValueError, lambda: likelihood.log_likelihood(_f, S.VPSDE(), torch.zeros(2, 2), rtol=0)),
    ("logp", ValueError, lambda: likelihood.bits_per_dim(torch.zeros(3), torch.zeros(2, 2))),
    ("jv", ValueError, lambda: ops.sliced_score_terms(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))),
    ("v must", ValueError, lambda: ops.sliced_score_terms(torch.zeros(2, 3), torch.zeros(2, 1, 3), torch.zeros(2, 2, 3))),
    ("dist", ValueError, lambda: ops.probes((2, 2), seed=0, dist="bernoulli")),
    ("weight", ValueError, lambda: ops.dsm_loss(torch.zeros(2, 2), 0.1, weight=-1.0)),
]


@pytest.mark.parametrize("case", range(len(BAD)), ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD)])
def test_bad_input_is_named(case):
    name, exc, call = BAD[case]
    with pytest.raises(exc, match=name):
        call()


@pytest.mark.parametrize("backend", FAST + ["reference"])
@pytest.mark.parametrize("shape", [(64, 2), (4, 3, 8, 8)], ids=str)
def test_training_step_keeps_no_noise_tensor(backend, shape):
    """What autograd keeps for the backward of anneal_dsm: the score (a leaf here, so no
    network) and per-sample vectors, never a B x D noise or residual tensor."""
    x = torch.randn(shape)
    h = torch.randn(shape, requires_grad=True)
    saved = []
    with fastscore.use_backend(backend), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                                          lambda t: t):
        loss = losses.anneal_dsm(lambda x_tilde, sigma: h, x, S.geometric_sigmas(5.0, 0.1, 10), seed=3)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert big and all(t.untyped_storage().data_ptr() == h.untyped_storage().data_ptr() for t in big)
    loss.backward()
    assert h.grad is not None and h.grad.shape == shape


@pytest.mark.parametrize("n_levels", [1, 2, 3, 10, 1000])
def test_stream_labels_equal_the_float_formula(n_levels):
    """row_labels equals floor(U * L) in float64, U = row_uniforms, on 10^5 rows (every
    backend's kernel: tests/test_noise.py)."""
    u = losses.row_uniforms(11, 7, 100_000).double()
    assert torch.equal(losses.row_labels(11, 7, 100_000, n_levels), (u * n_levels).long().clamp(max=n_levels - 1))


def test_anneal_dsm_draws_the_row_labels():
    """The loss picks exactly the levels row_labels names."""
    x, h = torch.randn(300, 2), torch.randn(300, 2)
    sigmas = S.geometric_sigmas(5.0, 0.1, 7)
    labels = losses.row_labels(ops.derive_seed(9, 0), 4, 300, 7)
    got = losses.anneal_dsm(lambda x_tilde, sigma: h, x, sigmas, seed=9, offset=4)
    want = losses.anneal_dsm(lambda x_tilde, sigma: h, x, sigmas, seed=9, offset=4, labels=labels)
    assert torch.equal(got, want)
