"""fastscore.k_diffusion against k-diffusion 0.1.1.post1 itself (installed --no-deps, its
sampling module loaded by tests/k_diffusion_upstream.py):
* schedules and helpers equal bit for bit;
* every sampler with a closed-form Gaussian denoiser and the same explicit noise: every
  step's x (the callback's) within float32 (float64) rounding, the model shown the same
  sigmas bit for bit, the noise_sampler called with the same arguments, callbacks with the
  same keys, x never modified, a callback's tensors never written afterwards;
* with fastscore's stream noise: sampled moments of Gaussian data against the analytic
  target, the tolerance from the sample size plus the discretisation bias of k-diffusion's
  own run with its own noise; dpmpp_sde's two draws correlated as the Brownian tree's;
* same seed -> same samples, row shards under ``offset`` equal the one-call batch, every
  backend equals the reference; bad input raises naming the argument.
"""

import math

import pytest
import torch

import fastscore
from fastscore import backends
from fastscore import k_diffusion as F
from fastscore._common import seed_bits
from k_diffusion_upstream import load_k_sampling
from support import assert_bits_equal

K = load_k_sampling()

MU, S0 = 0.3, 1.5  # the data: N(MU, S0^2) per element


def denoiser(x, sigma):
    """E[x0 | x] for x0 ~ N(MU, S0^2), x = x0 + sigma * n: the exact denoiser."""
    s = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return MU + S0 ** 2 / (S0 ** 2 + s ** 2) * (x - MU)


# (sampler, keyword arguments, takes a noise_sampler)
CASES = [
    ("sample_euler", {}, False),
    ("sample_heun", {}, False),
    ("sample_dpm_2", {}, False),
    ("sample_lms", {}, False),
    ("sample_lms", {"order": 2}, False),
    ("sample_dpmpp_2m", {}, False),
    ("sample_euler_ancestral", {}, True),
    ("sample_euler_ancestral", {"eta": 3.0, "s_noise": 0.9}, True),
    ("sample_dpm_2_ancestral", {}, True),
    ("sample_dpm_2_ancestral", {"eta": 3.0}, True),
    ("sample_dpmpp_2s_ancestral", {}, True),
    ("sample_dpmpp_2s_ancestral", {"eta": 0.0}, True),
    ("sample_dpmpp_sde", {}, True),
    ("sample_dpmpp_sde", {"r": 0.3, "eta": 0.5, "s_noise": 1.1}, True),
    ("sample_dpmpp_2m_sde", {}, True),
    ("sample_dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.7}, True),
    ("sample_dpmpp_3m_sde", {}, True),
    ("sample_dpmpp_3m_sde", {"eta": 0.0}, True),
]
IDS = [f"{name[7:]}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for name, kw, _ in CASES]
# the cases whose noise reaches x (none with eta = 0; dpm_2_ancestral with eta = 3 steps
# down to sigma_down = 0 every step, where it draws nothing)
STOCHASTIC = [c for c in CASES if c[2] and c[1].get("eta") != 0.0 and c[:2] != ("sample_dpm_2_ancestral", {"eta": 3.0})]
STOCHASTIC_IDS = [i for i, c in zip(IDS, CASES) if c in STOCHASTIC]


# --------------------------------------------------------------------------- schedules and helpers


@pytest.mark.parametrize("name,args", [
    ("get_sigmas_karras", (10, 0.03, 80.0)), ("get_sigmas_karras", (7, 0.002, 120.0, 3.0)),
    ("get_sigmas_karras", (5, torch.tensor(0.03), torch.tensor(14.6))),
    ("get_sigmas_exponential", (10, 0.03, 80.0)), ("get_sigmas_polyexponential", (9, 0.1, 10.0, 2.0)),
    ("get_sigmas_vp", (10,)), ("get_sigmas_vp", (6, 10.0, 0.2, 1e-2)),
])
def test_schedules_equal_k_diffusion_bit_for_bit(name, args):
    got, want = getattr(F, name)(*args), getattr(K, name)(*args)
    assert_bits_equal(got, want, name)
    assert got[-1] == 0 and got.shape == (args[0] + 1,)


def test_helpers_equal_k_diffusion():
    s = torch.tensor([5.0, 2.0, 0.5, 0.0])
    for eta in (0.0, 1.0, 3.0):
        for i in range(3):
            for a, b in zip(F.get_ancestral_step(s[i], s[i + 1], eta), K.get_ancestral_step(s[i], s[i + 1], eta)):
                assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), (eta, i)
    assert F.get_ancestral_step(2.0, 1.0, 0.5) == K.get_ancestral_step(2.0, 1.0, 0.5)
    x, d = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    assert torch.equal(F.to_d(x, s[:3], d), K.to_d(x, s[:3], d))
    assert torch.equal(F.to_d(x, s[1], d), K.to_d(x, s[1], d))
    assert torch.equal(F.append_zero(s[:2]), K.append_zero(s[:2]))
    t = K.get_sigmas_karras(8, 0.1, 10.0).numpy()
    for order, i, j in [(1, 0, 0), (2, 3, 1), (4, 5, 0), (4, 7, 3), (3, 7, 2)]:
        assert F.linear_multistep_coeff(order, t, i, j) == K.linear_multistep_coeff(order, t, i, j)
    with pytest.raises(ValueError, match="Order 3 too high for step 1"):
        F.linear_multistep_coeff(3, t, 1, 0)


# --------------------------------------------------------------------------- step-by-step parity


class Recorder:
    """The model (recording the sigmas it is shown), the noise_sampler (recording its
    arguments; draws from its own generator, so both libraries get the same noise) and the
    callback (recording clones of what it is handed, and the tensors themselves)."""

    def __init__(self, x):
        self.sigmas, self.noise_args, self.calls, self.handed = [], [], [], []
        self.generator, self.x = torch.Generator().manual_seed(11), x

    def model(self, x, sigma):
        self.sigmas.append(sigma.clone())
        return denoiser(x, sigma)

    def noise_sampler(self, sigma, sigma_next):
        self.noise_args.append((sigma.clone(), sigma_next.clone()))
        return torch.randn(self.x.shape, generator=self.generator, dtype=self.x.dtype)

    def callback(self, info):
        self.calls.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in info.items()})
        self.handed.append(info)


def run_recorded(lib, name, kwargs, noisy, x, sigmas):
    rec = Recorder(x)
    kw = dict(kwargs, noise_sampler=rec.noise_sampler) if noisy else dict(kwargs)
    out = getattr(lib, name)(rec.model, x, sigmas, callback=rec.callback, disable=True, **kw)
    return out, rec


def rounding_tolerance(dtype, n_steps, scale):
    """Both libraries compute each step's update with a handful of roundings (k-diffusion
    3-6 chained ops, fastscore one rounding per term: SPEC's rearrangement), each at most u
    of the magnitudes involved, none amplified by the coefficients (all <= 1 in size on x).
    Bound: n_steps * 16 u * max|x|."""
    return n_steps * 16 * torch.finfo(dtype).eps * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kwargs,noisy", CASES, ids=IDS)
def test_sampler_matches_k_diffusion_step_by_step(name, kwargs, noisy, dtype):
    x = (torch.randn(4, 3, 6, 5, generator=torch.Generator().manual_seed(1)) * 80).to(dtype)
    sigmas = K.get_sigmas_karras(10, 0.03, 80.0).to(dtype)
    x_in = x.clone()
    want, peer = run_recorded(K, name, kwargs, noisy, x, sigmas)
    got, ours = run_recorded(F, name, kwargs, noisy, x, sigmas)
    assert torch.equal(x, x_in), "x was modified"
    assert got.dtype == dtype and got.shape == x.shape
    tol = rounding_tolerance(dtype, 10, max(c["x"].abs().max().item() for c in peer.calls))
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    # the callback: k-diffusion's dict once per step, each step's x within rounding
    assert len(ours.calls) == len(peer.calls) == 10
    for step, (a, b) in enumerate(zip(ours.calls, peer.calls)):
        assert a.keys() == b.keys() == {"x", "i", "sigma", "sigma_hat", "denoised"} and a["i"] == b["i"] == step
        assert torch.equal(a["sigma"], b["sigma"]) and torch.equal(a["sigma_hat"], b["sigma_hat"]), step
        torch.testing.assert_close(a["x"], b["x"], rtol=0, atol=tol)
    # what was handed to the callback was not written afterwards
    for clone, handed in zip(ours.calls, ours.handed):
        assert torch.equal(clone["x"], handed["x"]) and torch.equal(clone["denoised"], handed["denoised"])
    # the model saw the same sigmas, bit for bit; the noise sampler the same arguments
    assert len(ours.sigmas) == len(peer.sigmas)
    for a, b in zip(ours.sigmas, peer.sigmas):
        assert_bits_equal(a, b, "model sigma")
    assert len(ours.noise_args) == len(peer.noise_args)
    for a, b in zip(ours.noise_args, peer.noise_args):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("name", ["sample_euler", "sample_heun", "sample_dpm_2"])
def test_churn_draws_the_stream_and_keeps_the_peers_law(name):
    """With s_churn > 0 the churn noise is the stream's (k-diffusion: randn_like): the sigmas
    shown to the model are k-diffusion's exactly, and the x handed to the callback differs
    from the un-churned run only at churned steps."""
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2)) * 80
    sigmas = K.get_sigmas_karras(10, 0.03, 80.0)
    kw = {"s_churn": 8.0, "s_tmin": 0.5, "s_tmax": 30.0}
    _, peer = run_recorded(K, name, kw, False, x, sigmas)
    _, ours = run_recorded(F, name, kw, False, x, sigmas)
    for a, b in zip(ours.sigmas, peer.sigmas):
        assert_bits_equal(a, b, "model sigma")
    churned = [0.5 <= float(s) <= 30.0 for s in sigmas[:-1]]
    assert any(churned) and not all(churned)
    for step, (a, b) in enumerate(zip(ours.calls, peer.calls)):
        assert torch.equal(a["sigma_hat"], b["sigma_hat"])
        assert (a["sigma_hat"] > a["sigma"]) == churned[step]


def test_buffer_reuse_without_callback_gives_the_same_samples():
    x = torch.randn(3, 2, 9, generator=torch.Generator().manual_seed(3)) * 80
    sigmas = F.get_sigmas_karras(12, 0.03, 80.0)
    for name in ("sample_heun", "sample_lms", "sample_dpmpp_sde", "sample_dpmpp_3m_sde", "sample_dpm_2_ancestral"):
        with_cb = getattr(F, name)(denoiser, x, sigmas, callback=lambda d: None, disable=True, seed=5)
        without = getattr(F, name)(denoiser, x, sigmas, disable=True, seed=5)
        assert torch.equal(with_cb, without), name


# --------------------------------------------------------------------------- statistics with the stream noise


def moments(x):
    x = x.double().reshape(-1)
    return x.mean().item(), x.var().item()


@pytest.mark.filterwarnings("ignore:Should have t")  # torchsde, on k-diffusion's float32 tree ends
@pytest.mark.parametrize("name,kwargs,noisy", CASES + [("sample_euler", {"s_churn": 10.0}, False)],
                         ids=IDS + ["euler-s_churn=10"])
def test_stream_samples_have_the_target_moments(name, kwargs, noisy):
    """N(MU, S0^2) data, 30 Karras steps: mean and variance of M = 32768 elements against the
    analytic target, within 4 standard errors (mean: S0/sqrt(M); variance:
    S0^2 sqrt(2/M)) plus the discretisation bias k-diffusion itself shows with its own
    noise (measured from its own run of the same size, so its standard error is added too);
    and against k-diffusion's run directly (a two-sample test)."""
    n_rows, dim = 4096, 8
    m = n_rows * dim
    x = torch.randn(n_rows, dim, generator=torch.Generator().manual_seed(4)) * 80.0
    sigmas = K.get_sigmas_karras(30, 0.02, 80.0)
    torch.manual_seed(12)  # k-diffusion's default noise: torch's global RNG, Brownian trees seeded from it
    peer = getattr(K, name)(denoiser, x, sigmas, disable=True, **kwargs)
    ours = getattr(F, name)(denoiser, x, sigmas, disable=True, seed=12, **kwargs)
    (pm, pv), (om, ov) = moments(peer), moments(ours)
    se_mean, se_var = S0 / math.sqrt(m), S0 ** 2 * math.sqrt(2.0 / m)
    assert abs(om - MU) <= 4 * se_mean + abs(pm - MU) + 4 * se_mean, (om, pm)
    assert abs(ov - S0 ** 2) <= 4 * se_var + abs(pv - S0 ** 2) + 4 * se_var, (ov, pv)
    assert abs(om - pm) <= 4 * math.sqrt(2) * se_mean and abs(ov - pv) <= 4 * math.sqrt(2) * se_var, (om, pm, ov, pv)


@pytest.mark.parametrize("lib", ["fastscore", "k-diffusion"])
@pytest.mark.parametrize("r", [0.5, 0.3])
def test_dpmpp_sde_draws_are_one_brownian_path(lib, r):
    """One dpmpp_sde step with D = 0 from x = 0: the model sees x2 = c1 z1, then x' = c2 z2
    (the final Euler step), so corr(x2, x') is the correlation of the step's two draws —
    for increments of one Brownian path over [sigma_s, sigma] inside [sigma', sigma]:
    rho = sqrt((sigma - sigma_s) / (sigma - sigma')), sigma_s = sigma^(1-r) sigma'^r.
    Independent draws would give 0. Tolerance: 5 standard errors, (1 - rho^2)/sqrt(M)."""
    seen = []

    def model(x, sigma):
        seen.append(x.clone())
        return torch.zeros_like(x)

    m = 1 << 16
    sigma, sigma_next = 10.0, 1.0
    sigmas = torch.tensor([sigma, sigma_next, 0.0])
    x = torch.zeros(256, m // 256)
    if lib == "fastscore":
        F.sample_dpmpp_sde(model, x, sigmas, disable=True, r=r, seed=3)
    else:
        torch.manual_seed(3)
        K.sample_dpmpp_sde(model, x, sigmas, disable=True, r=r)
    z1, z2 = seen[1].reshape(-1).double(), seen[2].reshape(-1).double()
    corr = (torch.dot(z1, z2) / (z1.norm() * z2.norm())).item()
    sigma_s = sigma ** (1 - r) * sigma_next ** r
    rho = math.sqrt((sigma - sigma_s) / (sigma - sigma_next))
    assert abs(corr - rho) <= 5 * (1 - rho ** 2) / math.sqrt(m), (corr, rho)


# --------------------------------------------------------------------------- seeds, shards, backends


@pytest.mark.parametrize("name,kwargs,noisy", STOCHASTIC, ids=STOCHASTIC_IDS)
def test_seeds_and_row_shards(name, kwargs, noisy):
    x = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(5)) * 80
    sigmas = F.get_sigmas_karras(6, 0.03, 80.0)
    sampler = getattr(F, name)
    full = sampler(denoiser, x, sigmas, disable=True, seed=9, **kwargs)
    assert torch.equal(full, sampler(denoiser, x, sigmas, disable=True, seed=9, **kwargs))
    assert torch.equal(full, sampler(denoiser, x, sigmas, disable=True, seed=torch.tensor(seed_bits(9)), **kwargs))
    assert not torch.equal(full, sampler(denoiser, x, sigmas, disable=True, seed=10, **kwargs))
    shard = sampler(denoiser, x[2:5], sigmas, disable=True, seed=9, offset=2, **kwargs)
    assert torch.equal(shard, full[2:5])


@pytest.mark.parametrize("backend", [b for b in backends.available_backends("cpu") if b != "reference"])
@pytest.mark.parametrize("name", ["sample_lms", "sample_dpmpp_sde", "sample_dpmpp_3m_sde", "sample_heun"])
def test_every_backend_equals_the_reference(name, backend):
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(6)) * 80
    sigmas = F.get_sigmas_karras(5, 0.03, 80.0)
    with fastscore.use_backend("reference"):
        want = getattr(F, name)(denoiser, x, sigmas, disable=True, seed=1)
    with fastscore.use_backend(backend):
        got = getattr(F, name)(denoiser, x, sigmas, disable=True, seed=1)
    assert_bits_equal(got, want, f"{name} on {backend}")


def test_half_precision_runs_within_half_rounding():
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(7)) * 80
    sigmas = F.get_sigmas_karras(10, 0.03, 80.0)
    want = F.sample_dpmpp_2m(denoiser, x, sigmas, disable=True)
    for dtype in (torch.float16, torch.bfloat16):
        got = F.sample_dpmpp_2m(denoiser, x.to(dtype), sigmas, disable=True)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, rtol=0, atol=rounding_tolerance(dtype, 10, 80 * 4))


# --------------------------------------------------------------------------- errors


def test_bad_input_names_the_argument():
    x, sigmas = torch.randn(2, 3), F.get_sigmas_karras(4, 0.1, 10.0)
    with pytest.raises(ValueError, match="sigmas"):
        F.sample_euler(denoiser, x, sigmas[None])
    with pytest.raises(TypeError, match="model"):
        F.sample_euler(None, x, sigmas)
    with pytest.raises(TypeError, match="x must be a floating"):
        F.sample_dpmpp_2m(denoiser, torch.ones(2, 3, dtype=torch.int64), sigmas)
    with pytest.raises(ValueError, match="solver_type"):
        F.sample_dpmpp_2m_sde(denoiser, x, sigmas, solver_type="rk4")
    with pytest.raises(ValueError, match="order"):
        F.sample_lms(denoiser, x, sigmas, order=5)
    with pytest.raises(ValueError, match="model.*shaped like x"):
        F.sample_euler(lambda x, s: x[:1], x, sigmas)
    with pytest.raises(TypeError, match="seed"):
        F.sample_euler_ancestral(denoiser, x, sigmas, seed=1.5)
    with pytest.raises(ValueError, match="offset"):
        F.sample_euler_ancestral(denoiser, x, sigmas, offset=-1)


@pytest.mark.parametrize("name,kwargs,noisy", CASES[::2], ids=IDS[::2])
def test_a_model_that_returns_its_input_is_safe(name, kwargs, noisy):
    """A model may return x itself (or a view): reused buffers must not alias it."""
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(8)) * 10
    sigmas = K.get_sigmas_karras(6, 0.03, 10.0)
    rec = Recorder(x)
    kw = dict(kwargs, noise_sampler=rec.noise_sampler) if noisy else dict(kwargs)
    got = getattr(F, name)(lambda v, s: v[:], x, sigmas, disable=True, **kw)
    rec_k = Recorder(x)
    kw_k = dict(kwargs, noise_sampler=rec_k.noise_sampler) if noisy else dict(kwargs)
    want = getattr(K, name)(lambda v, s: v[:], x, sigmas, disable=True, **kw_k)
    torch.testing.assert_close(got, want, rtol=0, atol=rounding_tolerance(torch.float32, 6, 40.0))
