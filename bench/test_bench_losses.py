"""Score-matching losses (forward + backward) and the likelihood, fused vs the eager
formulations of NCSN, Song et al. 2019 (sliced score matching) and score_sde.

Liger-style: one ``setup_*`` per family yields the zero-arg callable that is timed.
Rows (suite "losses"):

    anneal_dsm       size 2048x2, 64x3x32x32, 16x3x256x256, a fresh seed per call (as in
                     training: fresh levels and noise). The loss machinery alone: the score is
                     a leaf tensor h shaped like x (``score_fn = lambda x, sigma: h``), so no
                     network is timed. fused = losses.anneal_dsm + backward; eager = NCSNv2's
                     anneal_dsm_score_estimation (randn_like noise, target, 0.5 |s - target|^2
                     sigma^2) + backward. Also reports bytes autograd saves for backward
                     (exact, saved_tensors_hooks) and the profiler's peak extra memory.
    noise_levels     the level index alone (2048 and 65536 rows): losses.row_labels vs
                     NCSNv2's torch.randint(0, L, (B,)).
    sliced_sm        a 2 -> 128 -> 128 -> 2 Softplus MLP at B = 4096 and a 3072 -> 256 -> 3072
                     Softplus MLP at B = 64 (CIFAR-shaped), P = 1 and 4 projections.
                     fused = losses.sliced_score_matching (model once, P batched VJPs, fused
                     reductions); eager = Song et al.'s sliced_score_estimation, which copies
                     the batch per projection. Forward + backward into the model.
    sliced_terms     the reductions alone at B = 4096, P = 4, D = 3072 on precomputed s, Jv, v:
                     ops.sliced_score_terms vs the eager sums, forward + backward.
    log_likelihood   2x4096 (B = 4096, D = 2), VPSDE, rtol = atol = 1e-5, analytic score.
                     fused = likelihood.log_likelihood (RK45 on the tensors); eager = score_sde's
                     likelihood.py: scipy solve_ivp(RK45) with a torch -> numpy round trip per
                     evaluation and the Hutchinson divergence by autograd, the same Rademacher
                     probe fixed over the solve. Reports NFE of both.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from fastscore import _peers, backends, likelihood, losses, ops
from fastscore.sde import VPSDE, geometric_sigmas

SEED = 1234
PROVIDERS = ("fused", "eager")


def fresh_seeds():
    """A new seed per call, as a training loop draws: with one fixed seed the levels repeat,
    and a CPU learns the branches of anything that searches them (a 2.5x faster search)."""
    return itertools.count(SEED)

DSM_SIZES = {"2048x2": (2048, 2), "64x3x32x32": (64, 3, 32, 32), "16x3x256x256": (16, 3, 256, 256)}
DSM_SIGMAS = geometric_sigmas(1.0, 0.01, 10)  # NCSN's CIFAR-10 levels

SLICED_MODELS = {"mlp2": (4096, 2, 128), "mlp3072": (64, 3072, 256)}  # (batch, D, hidden)
PROJECTIONS = (1, 4)
TERMS_SHAPE = (4096, 4, 3072)  # B, P, D (~200 MB per [B, P, D] tensor)
SMOKE_TERMS_SHAPE = (256, 4, 3072)

LIKELIHOOD_SIZES = {"2x4096": (4096, 2)}
RTOL = ATOL = 1e-5
S0 = 0.5  # data std of the analytic score


def _unavailable(provider: str) -> str | None:
    if provider == "fused":
        reasons = backends.not_supported_reasons("cpp", torch.device("cpu"))
        if reasons:
            return "backend 'cpp' unavailable: " + "; ".join(reasons)
    return None


def _describe(benchmark, op, group, size, provider, shape) -> None:
    """Skips an unavailable provider; names the row (suite "losses") in extra_info."""
    reason = _unavailable(provider)
    if reason:
        pytest.skip(reason)
    benchmark.group = group
    benchmark.extra_info.update(suite="losses", op=op, size=size, provider=provider, shape=list(shape),
                                numel=math.prod(shape), threads=torch.get_num_threads(), dtype="float32")


def _smoke(request) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


# --------------------------------------------------------------------------- memory


def saved_for_backward(fn, inputs=()) -> dict:
    """Run ``fn`` (forward only, returns the loss) and sum what autograd saves for backward:
    distinct storages (bytes), those that are not storages of ``inputs`` (new tensors the
    loss made and kept: a noise tensor, a residual), and how many of those have >= B*D
    elements, B*D being inputs[0].numel(). Returns the loss too."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen.setdefault(st.data_ptr(), (st.nbytes(), t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    own = {t.untyped_storage().data_ptr() for t in inputs}
    big = inputs[0].numel() if inputs else 0
    new = {k: v for k, v in seen.items() if k not in own}
    return {
        "loss": loss,
        "saved_bytes": sum(nb for nb, _ in seen.values()),
        "saved_new_bytes": sum(nb for nb, _ in new.values()),
        "saved_new_bxd": sum(1 for _, n in new.values() if big and n >= big),
    }


def profiler_peak(fn) -> dict:
    """Peak of (bytes allocated - bytes freed) on the CPU during ``fn``, from
    torch.profiler's memory events in time order, and what is still held at the end
    (the grads). Callers clear grads first: a step that frees old grads would hide them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cum = list(itertools.accumulate(e.nbytes() for e in events)) or [0]
    return {"peak_extra_bytes": max(0, max(cum)), "retained_bytes": cum[-1]}


def _memory_info(forward, step, inputs) -> dict:
    """saved_for_backward of ``forward`` plus profiler_peak of one ``step`` (fwd+bwd)."""
    info = saved_for_backward(forward, inputs)
    info.pop("loss").backward()
    for t in inputs:  # start the profiled step with no grads held, so its frees do not offset the peak
        t.grad = None
    info.update(profiler_peak(step))
    return info


# --------------------------------------------------------------------------- anneal_dsm


@contextlib.contextmanager
def setup_anneal_dsm(size: str, provider: str):
    """Yield (step, forward, inputs): step = zero grad, loss, backward."""
    shape = DSM_SIZES[size]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    h = torch.randn(shape, generator=gen).requires_grad_(True)  # the "network output", a leaf
    score_fn = lambda x_tilde, sigma: h  # noqa: E731
    seeds = fresh_seeds()
    if provider == "fused":
        forward = lambda: losses.anneal_dsm(score_fn, x, DSM_SIGMAS, seed=next(seeds))  # noqa: E731
    else:
        forward = lambda: _peers.anneal_dsm_score_estimation(score_fn, x, DSM_SIGMAS)  # noqa: E731

    def step():
        h.grad = None
        forward().backward()

    yield step, forward, (h, x)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(DSM_SIZES))
def test_anneal_dsm(benchmark, run_timed, size, provider):
    _describe(benchmark, "anneal_dsm", f"anneal_dsm fwd+bwd {size}", size, provider, DSM_SIZES[size])
    with setup_anneal_dsm(size, provider) as (step, forward, inputs):
        benchmark.extra_info.update(_memory_info(forward, step, inputs))
        run_timed(step)


LEVEL_ROWS = {"2048": 2048, "65536": 65536}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("rows", list(LEVEL_ROWS))
def test_noise_levels(benchmark, run_timed, rows, provider):
    """anneal_dsm's per-sample level index over NCSN's 10 levels, a fresh seed per call:
    fused = losses.row_labels (ops.philox_labels, one pass); eager = NCSNv2's
    torch.randint(0, L, (B,))."""
    B = LEVEL_ROWS[rows]
    _describe(benchmark, "noise_levels", f"noise levels {rows} rows", rows, provider, (B,))
    seeds = fresh_seeds()
    if provider == "fused":
        run_timed(lambda: losses.row_labels(next(seeds), 0, B, len(DSM_SIGMAS)))
    else:
        run_timed(lambda: torch.randint(0, len(DSM_SIGMAS), (B,)))


# --------------------------------------------------------------------------- a whole training step

TRAIN_SIZES = {"2048x2": (2048, 2), "64x3x32x32": (64, 3, 32, 32)}


def train_model(shape):
    """The demo's MLP (2-D) or a 3-convolution net (images): the network of a training step."""
    from fastscore.demo import NoiseConditionalScoreNet
    from fastscore.profile import SmallConvScoreNet

    torch.manual_seed(0)
    return NoiseConditionalScoreNet() if len(shape) == 2 else SmallConvScoreNet(shape[1])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(TRAIN_SIZES))
def test_train_step(benchmark, run_timed, size, provider):
    """zero_grad, anneal_dsm (fused, or NCSNv2's eager loss), backward, Adam: the network
    included, the step a user's training loop runs."""
    shape = TRAIN_SIZES[size]
    _describe(benchmark, "train_step", f"train step {size}", size, provider, shape)
    model = train_model(shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    sigmas = DSM_SIGMAS.float()
    seeds = fresh_seeds()

    def step():
        loss = (losses.anneal_dsm(model, x, DSM_SIGMAS, seed=next(seeds)) if provider == "fused"
                else _peers.anneal_dsm_score_estimation(model, x, sigmas))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    run_timed(step)


# --------------------------------------------------------------------------- sliced score matching


def mlp(d: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden), nn.Softplus(), nn.Linear(hidden, hidden), nn.Softplus(),
                         nn.Linear(hidden, d))


def eager_sliced_score_estimation(score_net, samples, n_particles=1):
    """Song et al. 2019 sliced_score_estimation (losses/sliced_sm.py) with Rademacher
    projections (as fastscore's default dist): the batch is copied once per projection."""
    dup_samples = samples.unsqueeze(0).expand(n_particles, *samples.shape).contiguous().view(-1, *samples.shape[1:])
    dup_samples.requires_grad_(True)
    vectors = torch.randint_like(dup_samples, low=0, high=2) * 2 - 1

    grad1 = score_net(dup_samples)
    gradv = torch.sum(grad1 * vectors)
    loss1 = torch.sum(grad1 * vectors, dim=-1) ** 2 * 0.5
    grad2 = torch.autograd.grad(gradv, dup_samples, create_graph=True)[0]
    loss2 = torch.sum(vectors * grad2, dim=-1)

    loss1 = loss1.view(n_particles, -1).mean(dim=0)
    loss2 = loss2.view(n_particles, -1).mean(dim=0)
    loss = loss1 + loss2
    return loss.mean()


@contextlib.contextmanager
def setup_sliced(model: str, projections: int, provider: str):
    batch, d, hidden = SLICED_MODELS[model]
    torch.manual_seed(0)
    net = mlp(d, hidden)
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(1))
    if provider == "fused":
        forward = lambda: losses.sliced_score_matching(net, x, n_projections=projections, seed=SEED)  # noqa: E731
    else:
        forward = lambda: eager_sliced_score_estimation(net, x, projections)  # noqa: E731

    def step():
        net.zero_grad(set_to_none=True)
        forward().backward()

    yield step, forward, tuple(net.parameters())


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("projections", PROJECTIONS)
@pytest.mark.parametrize("model", list(SLICED_MODELS))
def test_sliced_sm(benchmark, run_timed, model, projections, provider):
    reason = _unavailable(provider)
    if reason:
        pytest.skip(reason)
    batch, d, hidden = SLICED_MODELS[model]
    size = f"{model} B{batch} P{projections}"
    benchmark.group = f"sliced_sm fwd+bwd {size}"
    benchmark.extra_info.update(suite="losses", op="sliced_sm", size=size, provider=provider, batch=batch, dim=d,
                                hidden=hidden, projections=projections, threads=torch.get_num_threads(),
                                dtype="float32")
    with setup_sliced(model, projections, provider) as (step, forward, params):
        info = _memory_info(forward, step, params)
        info.pop("saved_new_bxd")  # params are small: the count says nothing here
        benchmark.extra_info.update(info)
        run_timed(step)


def eager_sliced_terms(s, jv, v):
    """The reductions of sliced_score_estimation on precomputed s [B, D], jv, v [B, P, D]:
    loss1 = 0.5 (v . s)^2, loss2 = v . jv, mean over projections, mean over the batch."""
    loss1 = torch.sum(s.unsqueeze(1) * v, dim=-1) ** 2 * 0.5
    loss2 = torch.sum(v * jv, dim=-1)
    return (loss1 + loss2).mean(dim=1).mean()


@contextlib.contextmanager
def setup_sliced_terms(shape, provider: str):
    B, P, D = shape
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(B, D, generator=gen).requires_grad_(True)
    jv = torch.randn(B, P, D, generator=gen).requires_grad_(True)
    v = ops.probes((B, P, D), SEED)
    if provider == "fused":
        forward = lambda: ops.sliced_score_terms(s, jv, v).mean()  # noqa: E731
    else:
        forward = lambda: eager_sliced_terms(s, jv, v)  # noqa: E731

    def step():
        s.grad = jv.grad = None
        forward().backward()

    yield step, forward, (s, jv, v)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sliced_terms(benchmark, run_timed, request, provider):
    reason = _unavailable(provider)
    if reason:
        pytest.skip(reason)
    shape = SMOKE_TERMS_SHAPE if _smoke(request) else TERMS_SHAPE
    size = "x".join(map(str, shape))
    benchmark.group = f"sliced_terms fwd+bwd {size}"
    benchmark.extra_info.update(suite="losses", op="sliced_terms", size=size, provider=provider, shape=list(shape),
                                threads=torch.get_num_threads(), dtype="float32",
                                bytes=4 * math.prod(shape) * 3)  # read jv, v; write grad_jv
    with setup_sliced_terms(shape, provider) as (step, forward, inputs):
        benchmark.extra_info.update(_memory_info(forward, step, inputs))
        run_timed(step)


# --------------------------------------------------------------------------- likelihood


class GaussianScore:
    """Exact score of data N(mu, s0^2 I) under the SDE: -(x - m_t mu) / (m_t^2 s0^2 + std_t^2),
    differentiable in x (the divergence is taken by autograd)."""

    def __init__(self, sde, d):
        self.sde = sde
        self.mu = torch.linspace(-1.0, 1.0, d)

    def __call__(self, x, t):
        m, std = self.sde.marginal_coef(t)
        m, std = m.to(x.dtype)[:, None], std.to(x.dtype)[:, None]
        return -(x - m * self.mu) / (m * m * S0**2 + std * std)

    def exact_logp(self, x):
        d = x.shape[1]
        return -0.5 * d * math.log(2 * math.pi * S0**2) - ((x - self.mu) ** 2).sum(1) / (2 * S0**2)


def scipy_log_likelihood(score_fn, sde, data, epsilon, rtol=1e-5, atol=1e-5, eps=1e-5):
    """score_sde's likelihood.py (get_likelihood_fn) on a [B, D] batch: scipy solve_ivp RK45
    on the flattened float64 state, one torch <-> numpy round trip per evaluation; the
    drift is the reverse SDE's probability flow and the divergence is Hutchinson's
    e^T d(drift)/dx e by autograd, with the probe ``epsilon`` fixed over the solve.
    Returns (log p per sample, nfev)."""
    from scipy import integrate

    def drift_fn(x, t):
        # score_sde: rsde = sde.reverse(score_fn, probability_flow=True); rsde.sde(x, t)[0]
        beta_t = sde.beta_0 + t * (sde.beta_1 - sde.beta_0)
        drift = -0.5 * beta_t[:, None] * x
        diffusion = torch.sqrt(beta_t)
        return drift - diffusion[:, None] ** 2 * score_fn(x, t) * 0.5

    def div_fn(x, t, eps_):
        with torch.enable_grad():
            x.requires_grad_(True)
            fn_eps = torch.sum(drift_fn(x, t) * eps_)
            grad_fn_eps = torch.autograd.grad(fn_eps, x)[0]
        x.requires_grad_(False)
        return torch.sum(grad_fn_eps * eps_, dim=tuple(range(1, len(x.shape))))

    shape = data.shape

    def ode_func(t, x):
        sample = torch.from_numpy(x[: -shape[0]].reshape(shape)).type(torch.float32)
        vec_t = torch.ones(sample.shape[0]) * t
        drift = drift_fn(sample, vec_t).detach().cpu().numpy().reshape((-1,))
        logp_grad = div_fn(sample, vec_t, epsilon).detach().cpu().numpy().reshape((-1,))
        return np.concatenate([drift, logp_grad], axis=0)

    with torch.no_grad():
        init = np.concatenate([data.detach().cpu().numpy().reshape((-1,)), np.zeros((shape[0],))], axis=0)
        solution = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
        zp = solution.y[:, -1]
        z = torch.from_numpy(zp[: -shape[0]].reshape(shape)).type(torch.float32)
        delta_logp = torch.from_numpy(zp[-shape[0]:].reshape((shape[0],))).type(torch.float32)
        return sde.prior_logp(z) + delta_logp, solution.nfev


@contextlib.contextmanager
def setup_likelihood(size: str, provider: str):
    """Yield fn returning (logp, nfe), and the exact log-density of the data."""
    B, D = LIKELIHOOD_SIZES[size]
    sde = VPSDE()
    score_fn = GaussianScore(sde, D)
    x = score_fn.mu + S0 * torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    if provider == "fused":
        fn = lambda: likelihood.log_likelihood(score_fn, sde, x, seed=SEED, rtol=RTOL, atol=ATOL)  # noqa: E731
    else:
        probe = ops.probes(x.shape, SEED)  # the probe log_likelihood draws: same trajectory
        fn = lambda: scipy_log_likelihood(score_fn, sde, x, probe, RTOL, ATOL)  # noqa: E731
    yield fn, score_fn.exact_logp(x)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(LIKELIHOOD_SIZES))
def test_log_likelihood(benchmark, run_long, size, provider):
    reason = _unavailable(provider)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"log_likelihood {size}"
    benchmark.extra_info.update(suite="losses", op="log_likelihood", size=size, provider=provider,
                                impl="likelihood.log_likelihood" if provider == "fused" else
                                "score_sde: scipy solve_ivp RK45, host round trip",
                                rtol=RTOL, atol=ATOL, sde="VPSDE", threads=torch.get_num_threads(), dtype="float32")
    with setup_likelihood(size, provider) as (fn, exact):
        logp, nfe = run_long(fn, fn, 1.0, budget_s=2.0, max_rounds=10)
    benchmark.extra_info.update(nfe=int(nfe), logp_mean=float(logp.mean()),
                                logp_max_abs_err_vs_exact=float((logp - exact).abs().max()))
    assert torch.isfinite(logp).all()
