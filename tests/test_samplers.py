"""Samplers: reproducibility, sharding, backend bit-equality, parity with score_sde's
equations, and statistics against analytic targets with tolerances from the sample size
plus a stated discretisation allowance."""

import math

import numpy as np
import pytest
import torch

import fastscore
from fastscore import adapters, samplers
from fastscore import sde as S
from fastscore.backends import available_backends
from fastscore.demo import three_modes

FAST = [b for b in available_backends("cpu") if b != "reference"]

# Gaussian data N(MU, COV) in 2-D: every perturbed score is exact and linear.
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[0.6, 0.25], [0.25, 0.4]], dtype=torch.float64)


def gaussian_score(sde):
    """Exact score of p_t: x_t ~ N(m_t MU, m_t^2 COV + s_t^2 I)."""

    def score_fn(x, t):
        m, s = sde.marginal_coef(t.double())
        cov = m[:, None, None] ** 2 * COV + (s**2)[:, None, None] * torch.eye(2, dtype=torch.float64)
        r = (x.double() - m[:, None] * MU)[..., None]
        return -torch.linalg.solve(cov, r)[..., 0].to(x.dtype)

    return score_fn


def check_gaussian(x, mean, cov, n_sigma=5.0, allowance=0.03):
    """Sample mean/covariance vs target: n_sigma standard errors of the estimators
    (mean: sqrt(C_ii/n); covariance: sqrt((C_ii C_jj + C_ij^2)/n)) plus an allowance for
    the samplers' discretisation bias at N = 1000 steps (~ max step / variance)."""
    x = x.double()
    n = x.shape[0]
    m_hat = x.mean(0)
    c_hat = torch.cov(x.T)
    se_m = torch.sqrt(torch.diag(cov) / n)
    d = torch.diag(cov)
    se_c = torch.sqrt((d[:, None] * d[None, :] + cov**2) / n)
    assert ((m_hat - mean).abs() <= n_sigma * se_m + allowance).all(), (m_hat, mean)
    assert ((c_hat - cov).abs() <= n_sigma * se_c + allowance).all(), (c_hat, cov)


# ---------------------------------------------------------------- reproducibility


def test_same_seed_same_samples_and_different_seed_differs():
    vp = S.VPSDE(N=50)
    a = samplers.pc_sample(gaussian_score(vp), vp, (64, 2), seed=3)
    b = samplers.pc_sample(gaussian_score(vp), vp, (64, 2), seed=3)
    c = samplers.pc_sample(gaussian_score(vp), vp, (64, 2), seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_step_seed_is_a_pure_integer_function():
    assert samplers.step_seed(0, 0) == 0xE220A8397B1DCDAF  # SplitMix64's first output from state 0
    assert len({samplers.step_seed(7, k) for k in range(1000)}) == 1000


@pytest.mark.parametrize("run", ["langevin", "annealed", "pc_ald", "pc_langevin_per_sample", "em_only", "ode"])
def test_sharded_rows_equal_one_call(run):
    ve = S.VESDE(sigma_max=5.0, N=30)
    score = gaussian_score(ve)
    gmm = three_modes()

    def sample(rows, offset):
        shape = (rows, 2)
        if run == "langevin":
            x0 = fastscore.noise(shape, seed=9, offset=offset)
            return samplers.langevin(lambda x, t: -x, x0, 0.05, 20, seed=5, offset=offset)
        if run == "annealed":
            x0 = fastscore.noise(shape, seed=9, offset=offset) * 8
            return samplers.annealed_langevin(gmm.score, x0, S.geometric_sigmas(8, 0.1, 4), 5, 1e-3, seed=5,
                                              offset=offset, denoise=True)
        if run == "pc_ald":
            return samplers.pc_sample(score, ve, shape, corrector="ald", seed=5, offset=offset)
        if run == "pc_langevin_per_sample":
            return samplers.pc_sample(score, ve, shape, step_size_mode="per_sample", seed=5, offset=offset)
        if run == "em_only":
            return samplers.euler_maruyama(score, ve, shape, seed=5, offset=offset)
        return samplers.ode_sample(score, ve, shape, method="heun", n_steps=10, seed=5, offset=offset)

    whole = sample(10, 0)
    parts = torch.cat([sample(4, 0), sample(6, 4)])
    if run == "ode":  # rows are independent ODEs; fixed steps, row-wise score
        assert torch.allclose(parts, whole, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(parts, whole)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("corrector", ["langevin", "ald"])
def test_every_backend_gives_the_same_samples(backend, corrector):
    vp = S.VPSDE(N=40)  # beta_max / N < 1: the discrete VP schedule needs N > 20

    def run():
        # 4 rows: Triton's interpreter runs the corrector's reduction a program per row
        return samplers.pc_sample(gaussian_score(vp), vp, (4, 2), corrector=corrector, n_corrector_steps=2, seed=11)

    with fastscore.use_backend("reference"):
        want = run()
    with fastscore.use_backend(backend):
        got = run()
    assert torch.equal(got, want)


# ---------------------------------------------------------------- parity with score_sde


def score_sde_predictor(name, sde, x, score, t, z):
    """score_sde's predictor update_fn bodies (predictors.py), with the score given."""
    vec_t = torch.full((x.shape[0],), t)
    if name == "euler_maruyama":
        dt = -1.0 / sde.N
        drift, diffusion = sde.sde(x, vec_t)
        drift = drift - diffusion[:, None] ** 2 * score
        x_mean = x + drift * dt
        return x_mean + diffusion[:, None] * math.sqrt(-dt) * z, x_mean
    if name == "reverse_diffusion":
        f, g = sde.discretize(x, vec_t)
        rev_f = f - g[:, None] ** 2 * score
        x_mean = x - rev_f
        return x_mean + g[:, None] * z, x_mean
    timestep = (vec_t * (sde.N - 1) / sde.T).long()
    if isinstance(sde, S.VESDE):
        sigma = sde.discrete_sigmas[timestep]
        adjacent = torch.where(timestep == 0, torch.zeros_like(vec_t), sde.discrete_sigmas[timestep - 1])
        x_mean = x + score * (sigma**2 - adjacent**2)[:, None]
        std = torch.sqrt((adjacent**2 * (sigma**2 - adjacent**2)) / (sigma**2))
        return x_mean + std[:, None] * z, x_mean
    beta = sde.discrete_betas[timestep]
    x_mean = (x + beta[:, None] * score) / torch.sqrt(1.0 - beta)[:, None]
    return x_mean + torch.sqrt(beta)[:, None] * z, x_mean


def score_sde_ald(sde, x, score, t, z, snr):
    """score_sde's AnnealedLangevinDynamics.update_fn body (one step)."""
    vec_t = torch.full((x.shape[0],), t)
    alpha = sde.alphas[(vec_t * (sde.N - 1) / sde.T).long()] if isinstance(sde, S.VPSDE) else torch.ones_like(vec_t)
    std = sde.marginal_prob(x, vec_t)[1]
    step_size = (snr * std) ** 2 * 2 * alpha
    x_mean = x + step_size[:, None] * score
    return x_mean + z * torch.sqrt(step_size * 2)[:, None], x_mean


SDES = {"ve": lambda: S.VESDE(N=100), "vp": lambda: S.VPSDE(N=100), "subvp": lambda: S.SubVPSDE(N=100)}


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name", samplers.PREDICTORS)
@pytest.mark.parametrize("t", [1.0, 0.5, 0.013])
def test_predictor_matches_score_sde(sde_name, name, t):
    sde = SDES[sde_name]()
    if name == "ancestral" and sde_name == "subvp":
        with pytest.raises(ValueError, match="ancestral"):
            samplers.predictor_step_(torch.zeros(2, 2), torch.zeros(2, 2), sde, t, name)
        return
    g = torch.Generator().manual_seed(0)
    x, s, z = (torch.randn(16, 2, generator=g) for _ in range(3))
    want_x, want_mean = score_sde_predictor(name, sde, x, s, t, z)
    got, got_mean = x.clone(), torch.empty_like(x)
    samplers.predictor_step_(got, s, sde, t, name, x_mean=got_mean, noise=z)
    assert torch.allclose(got, want_x, rtol=1e-5, atol=1e-5)
    assert torch.allclose(got_mean, want_mean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_correctors_match_score_sde(sde_name):
    sde = SDES[sde_name]()
    g = torch.Generator().manual_seed(1)
    x, s, z = (torch.randn(16, 2, generator=g) for _ in range(3))
    want_x, want_mean = score_sde_ald(sde, x, s, 0.4, z, 0.16)
    got, got_mean = x.clone(), torch.empty_like(x)
    samplers.corrector_step_(got, s, sde, 0.4, "ald", snr=0.16, x_mean=got_mean, noise=z)
    assert torch.allclose(got, want_x, rtol=1e-5, atol=1e-5) and torch.allclose(got_mean, want_mean, rtol=1e-5, atol=1e-5)
    # LangevinCorrector: score_sde's formula, batch-mean norms, alpha from the VP schedule.
    vec_t = torch.full((16,), 0.4)
    alpha = sde.alphas[sde.timestep(vec_t)] if isinstance(sde, S.VPSDE) else torch.ones(16)
    eps = (0.16 * z.norm(dim=1).mean() / s.norm(dim=1).mean()) ** 2 * 2 * alpha
    got = x.clone()
    samplers.corrector_step_(got, s, sde, 0.4, "langevin", snr=0.16, noise=z)
    assert torch.allclose(got, x + eps[:, None] * s + torch.sqrt(2 * eps)[:, None] * z, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("predictor,corrector", [("reverse_diffusion", "langevin"), ("euler_maruyama", None),
                                                 ("ancestral", "ald")])
def test_pc_sample_recovers_gaussian_data(sde_name, predictor, corrector):
    sde = {"ve": S.VESDE(sigma_max=20.0, N=1000), "vp": S.VPSDE(N=1000), "subvp": S.SubVPSDE(N=1000)}[sde_name]
    if predictor == "ancestral" and sde_name == "subvp":
        predictor = "reverse_diffusion"  # score_sde has no ancestral step for sub-VP
    x = samplers.pc_sample(gaussian_score(sde), sde, (4000, 2), predictor=predictor, corrector=corrector, seed=1)
    check_gaussian(x, MU, COV)


@pytest.mark.parametrize("method", ["rk45", "heun"])
def test_ode_sample_recovers_gaussian_data(method):
    vp = S.VPSDE(N=200)
    x = samplers.ode_sample(gaussian_score(vp), vp, (4000, 2), method=method, seed=2)
    check_gaussian(x, MU, COV)


def test_ula_stationary_variance_on_standard_normal():
    """ULA on N(0, 1) with step eps has stationary law N(0, 1 / (1 - eps/2)), not N(0, 1)."""
    eps, n = 0.2, 20000
    x = samplers.langevin(lambda x, t: -x, fastscore.noise((n, 1), seed=4), eps, 300, seed=8)
    target = 1 / (1 - eps / 2)
    assert abs(x.double().var().item() - target) < 5 * target * math.sqrt(2 / n)
    assert abs(x.double().mean().item()) < 5 / math.sqrt(n)


def test_annealed_langevin_mode_weights_on_mixture():
    gmm = three_modes()
    n = 8192
    sigmas = S.geometric_sigmas(8.0, 0.05, 10)
    x0 = fastscore.noise((n, 2), seed=1) * 8.0
    x = samplers.annealed_langevin(gmm.score, x0, sigmas, 100, 0.1 * 0.05**2, seed=3)
    w = gmm.mode_weights(x)
    # 5 standard errors of a proportion plus 0.03: annealed Langevin's known mode bias
    # at 100 steps per level (NCSN discusses it); no sample is left between modes.
    se = torch.sqrt(gmm.weights * (1 - gmm.weights) / n)
    assert ((w - gmm.weights).abs() <= 5 * se + 0.03).all(), w
    assert (torch.cdist(x, gmm.means).min(1).values < 4 * gmm.std).float().mean() > 0.99


def test_adapters_give_the_exact_score():
    vp = S.VPSDE()
    t = torch.tensor([0.3, 0.7])
    x = torch.randn(2, 2)
    m, s = vp.marginal_coef(t)
    # For data at a point mu: eps = (x - m mu)/s, D(x, sigma) = mu.
    eps_model = lambda x, t: (x - vp.marginal_coef(t)[0][:, None] * MU.float()) / vp.marginal_coef(t)[1][:, None]
    score = adapters.from_eps_model(eps_model, vp)(x, t)
    assert torch.allclose(score, -(x - m[:, None] * MU.float()) / (s[:, None] ** 2), rtol=1e-5)
    denoiser = lambda x, sigma: MU.float().expand_as(x)
    sig = torch.tensor([0.5, 2.0])
    assert torch.allclose(adapters.from_denoiser(denoiser)(x, sig), (MU.float() - x) / sig[:, None] ** 2)


# ---------------------------------------------------------------- rk45 vs scipy


def test_rk45_matches_tight_solution_with_no_more_evaluations_than_scipy():
    scipy_integrate = pytest.importorskip("scipy.integrate")
    vp = S.VPSDE(N=1000)
    score = gaussian_score(vp)
    x0 = fastscore.noise((64, 2), seed=6).double()

    def drift_np(t, y):
        x = torch.from_numpy(y).reshape(64, 2)
        tv = torch.full((64,), t, dtype=torch.float64)
        return (vp.drift_coef(tv)[:, None] * x - 0.5 * vp.diffusion_coef(tv)[:, None] ** 2 * score(x, tv)).reshape(-1).numpy()

    ref = scipy_integrate.solve_ivp(drift_np, (1.0, 1e-3), x0.reshape(-1).numpy(), rtol=1e-5, atol=1e-5, method="RK45")
    tight = scipy_integrate.solve_ivp(drift_np, (1.0, 1e-3), x0.reshape(-1).numpy(), rtol=1e-11, atol=1e-11,
                                      method="DOP853")
    x, nfe = samplers.ode_sample(score, vp, (64, 2), rtol=1e-5, atol=1e-5, x_init=x0, return_nfe=True)
    assert nfe <= ref.nfev, (nfe, ref.nfev)
    exact = torch.from_numpy(tight.y[:, -1]).reshape(64, 2)
    assert (x - exact).abs().max().item() < 1e-3  # global error of a 1e-5 local tolerance
    assert torch.allclose(x, torch.from_numpy(ref.y[:, -1]).reshape(64, 2), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- errors


def _vp():
    return S.VPSDE(N=5)


BAD = [
    ("score_fn", TypeError, lambda: samplers.langevin(None, torch.zeros(2, 2), 0.1, 3)),
    ("x0", TypeError, lambda: samplers.langevin(lambda x, t: x, torch.zeros(2, 2, dtype=torch.int64), 0.1, 3)),
    ("x0", ValueError, lambda: samplers.langevin(lambda x, t: x, torch.tensor(1.0), 0.1, 3)),
    ("step_size", ValueError, lambda: samplers.langevin(lambda x, t: x, torch.zeros(2, 2), -0.1, 3)),
    ("n_steps", ValueError, lambda: samplers.langevin(lambda x, t: x, torch.zeros(2, 2), 0.1, -1)),
    ("score_fn must return", ValueError, lambda: samplers.langevin(lambda x, t: x[:1], torch.zeros(2, 2), 0.1, 3)),
    ("sigmas", ValueError, lambda: samplers.annealed_langevin(lambda x, t: x, torch.zeros(2, 2), [1.0, -0.5])),
    ("sigmas", ValueError, lambda: samplers.annealed_langevin(lambda x, t: x, torch.zeros(2, 2), [])),
    ("step_lr", ValueError, lambda: samplers.annealed_langevin(lambda x, t: x, torch.zeros(2, 2), [1.0], step_lr=0)),
    ("n_steps_each", ValueError, lambda: samplers.annealed_langevin(lambda x, t: x, torch.zeros(2, 2), [1.0], 0)),
    ("sde", TypeError, lambda: samplers.pc_sample(lambda x, t: x, "vp", (2, 2))),
    ("shape", ValueError, lambda: samplers.pc_sample(lambda x, t: x, _vp(), (2, -2))),
    ("predictor", ValueError, lambda: samplers.pc_sample(lambda x, t: x, _vp(), (2, 2), predictor="heun")),
    ("corrector", ValueError, lambda: samplers.pc_sample(lambda x, t: x, _vp(), (2, 2), corrector="mala")),
    ("snr", ValueError, lambda: samplers.pc_sample(lambda x, t: x, _vp(), (2, 2), snr=-1.0)),
    ("eps", ValueError, lambda: samplers.pc_sample(lambda x, t: x, _vp(), (2, 2), eps=0.0)),
    ("n_corrector_steps", ValueError, lambda: samplers.pc_sample(lambda x, t: x, _vp(), (2, 2), n_corrector_steps=-1)),
    ("dtype", TypeError, lambda: samplers.pc_sample(lambda x, t: x, _vp(), (2, 2), dtype=torch.float16)),
    ("ancestral", ValueError, lambda: samplers.ancestral(lambda x, t: x, S.SubVPSDE(N=5), (2, 2))),
    ("method", ValueError, lambda: samplers.ode_sample(lambda x, t: x, _vp(), (2, 2), method="rk4")),
    ("rtol", ValueError, lambda: samplers.ode_sample(lambda x, t: x, _vp(), (2, 2), rtol=-1e-3)),
    ("n_steps", ValueError, lambda: samplers.ode_sample(lambda x, t: x, _vp(), (2, 2), method="euler", n_steps=0)),
    ("sde", TypeError, lambda: samplers.euler_maruyama(lambda x, t: x, None, (2, 2))),
    ("t must be", ValueError, lambda: samplers.predictor_step_(torch.zeros(2, 2), torch.zeros(2, 2), _vp(), 2.0)),
    ("sigma_min", ValueError, lambda: S.VESDE(sigma_min=-1.0)),
    ("beta_min", ValueError, lambda: S.VPSDE(beta_min=5.0, beta_max=1.0)),
    ("N must", ValueError, lambda: S.VPSDE(N=0)),
    ("sigma_max", ValueError, lambda: S.geometric_sigmas(-1.0, 0.1, 3)),
    ("eps_model", TypeError, lambda: adapters.from_eps_model(3, _vp())),
    ("denoiser", TypeError, lambda: adapters.from_denoiser(None)),
]


@pytest.mark.parametrize("case", range(len(BAD)), ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD)])
def test_bad_input_is_named(case):
    name, exc, call = BAD[case]
    with pytest.raises(exc, match=name):
        call()


def test_callback_and_progress_and_float64():
    seen = []
    ve = S.VESDE(N=7)
    x = samplers.pc_sample(gaussian_score(ve), ve, (3, 2), dtype=torch.float64, callback=lambda i, x: seen.append(i),
                           progress=True)
    assert seen == list(range(7)) and x.dtype == torch.float64 and torch.isfinite(x).all()
