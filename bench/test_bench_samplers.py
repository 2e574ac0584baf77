"""Whole samplers, fused vs the loops score_sde / NCSN write, and their cost per step.

Two tests, Liger-style (``setup(...)`` builds the inputs and yields the timed callable):

``test_sampler`` (suite "samplers"): a whole sampling run on a cheap analytic score, the
exact score of Gaussian data N(mu, s0^2 I) diffused to t (``GaussianScore``), so the
sampler machinery, not a network, is what is timed:
    op        annealed_langevin   NCSN: 10 levels x 100 steps (step_lr 2e-5)
              pc                  score_sde: reverse-diffusion predictor + Langevin
                                  corrector (snr 0.16, one corrector step), VESDE, N = 1000
    size      2x4096, 64x3x32x32 (fp32, 2 threads)
    provider  fused      fastscore.samplers under the default backend (cpp)
              reference  the same call under fastscore.use_backend("reference") — eager
                         ground truth, ~13 ms per PC step at 64x3x32x32, so it runs
                         REFERENCE_STEPS steps (1 level x 50, N = 50)
              eager      the loop as NCSN / score_sde write it (below, from the papers' code)
Every row reports ``steps`` and the summary ``us_per_step``; speed-ups compare per step.

``test_sampler_step`` (suite "sampler_step"): the sampler's own cost per step with a
ZERO-cost score (score_fn returns a preallocated tensor): the fused sampler (Python loop
+ fused ops) vs the eager loop, same step counts, µs per step.

Under --benchmark-disable (CI smoke) every row runs once with a few steps (SMOKE_*).
"""

from __future__ import annotations

import contextlib
import math
import time

import pytest
import torch

import fastscore
from fastscore import _peers as peers
from fastscore import backends, ops, samplers
from fastscore.sde import VESDE

# 2x4096: 4096 points in 2-D; 4x2 (per-step rows only): where the kernels cost nothing, the
# sampler's host cost per step, which bounds GPU throughput for small models
SIZES = {"4x2": (4, 2), "2x4096": (4096, 2), "64x3x32x32": (64, 3, 32, 32)}
WHOLE_RUN_SIZES = ("2x4096", "64x3x32x32")
SAMPLERS = ("annealed_langevin", "pc")
PROVIDERS = ("fused", "reference", "eager")
SEED = 1234

# NCSN (Song & Ermon 2019): 10 geometric levels 1 -> 0.01, 100 steps each, step_lr 2e-5.
SIGMA_MAX, SIGMA_MIN, N_LEVELS, STEPS_EACH, STEP_LR = 1.0, 0.01, 10, 100, 2e-5
# score_sde (Song et al. 2021) VE PC sampler: N = 1000, snr 0.16, one corrector step.
PC_N, SNR, PC_EPS = 1000, 0.16, 1e-3
VE_SIGMA_MIN, VE_SIGMA_MAX = 0.01, 50.0
S0 = 0.5  # data std

REFERENCE_STEPS = 50  # reference backend: 1 level x 50 steps, N = 50
SMOKE_STEPS = {"fused": 10, "eager": 10, "reference": 4}  # --benchmark-disable
WARMUP_STEPS = 5  # the long rows warm up on a short run of the same code (conftest run_long)
LONG_BUDGET_S = 5.0  # timed seconds per whole-run row (1 to 5 rounds of one run each)
STEP_BUDGET_S = 1.5

# Zero-cost score rows: step counts per size so one call lasts ~10-200 ms.
STEP_ROW_STEPS = {"4x2": 2000, "2x4096": 1000, "64x3x32x32": 100}
STEP_ROW_LEVELS = 10  # annealed Langevin: levels x (steps / levels)


# --------------------------------------------------------------------------- scores


class GaussianScore:
    """Exact score of data N(mu, s0^2 I) diffused to t: x_t ~ N(m_t mu, (m_t^2 s0^2 + std_t^2) I),
    score = -(x - m_t mu) / (m_t^2 s0^2 + std_t^2), elementwise. ``sde=None``: t is the noise
    level sigma (m = 1, std = sigma), as annealed Langevin passes it. A few [B]-sized ops
    plus two passes over x: the same cheap score for every provider."""

    def __init__(self, shape, sde=None):
        gen = torch.Generator().manual_seed(7)
        self.mu = torch.randn(shape[1:], generator=gen)
        self.sde = sde
        self.view = (-1,) + (1,) * (len(shape) - 1)

    def __call__(self, x, t):
        if self.sde is None or isinstance(self.sde, VESDE):  # m_t = 1
            std = t if self.sde is None else self.sde.sigma(t)
            return (x - self.mu) * (-1.0 / (S0**2 + std * std)).view(self.view)
        m, std = self.sde.marginal_coef(t)
        return (x - m.view(self.view) * self.mu) * (-1.0 / (m * m * S0**2 + std * std)).view(self.view)


class ZeroCostScore:
    """score_fn that returns one preallocated tensor: only the sampler's own work is timed.
    Random values of unit scale, so the corrector's SNR rule sees a non-zero norm."""

    def __init__(self, shape):
        self.s = torch.randn(shape, generator=torch.Generator().manual_seed(11))

    def __call__(self, x, t):
        return self.s


# --------------------------------------------------------------------------- eager peers
# The loops as the peer codebases write them (fastscore/_peers.py, from their published code).

eager_annealed_langevin = peers.anneal_langevin_dynamics
EagerVESDE = peers.VESDE
eager_pc_sampler = peers.pc_sampler


# --------------------------------------------------------------------------- setup


def _unavailable(provider: str) -> str | None:
    name = {"fused": "cpp", "reference": "reference"}.get(provider)
    if name is not None:
        reasons = backends.not_supported_reasons(name, torch.device("cpu"))
        if reasons:
            return f"backend {name!r} unavailable: " + "; ".join(reasons)
    return None


def _levels(steps: int) -> tuple[int, int]:
    """Annealed Langevin's (levels, steps each) for a step count: 10 x (steps / 10) for
    multiples of 100 (NCSN's 10 x 100), else 1 x steps (the reference's 1 x 50, smoke runs)."""
    return (N_LEVELS, steps // N_LEVELS) if steps % 100 == 0 else (1, steps)


def _sampler_fn(op, provider, shape, score_fn, steps, x0):
    """Zero-arg callable running ``op`` for ``steps`` steps (PC: sde.N = steps; annealed
    Langevin: ``_levels(steps)``) from the fixed start x0."""
    levels, each = _levels(steps)
    if op == "annealed_langevin":
        sigmas = torch.exp(torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), levels))
        if provider == "eager":
            sig = sigmas.tolist()
            return (lambda: eager_annealed_langevin(score_fn, x0, sig, each, STEP_LR)), levels * each
        return (lambda: samplers.annealed_langevin(score_fn, x0, sigmas, each, STEP_LR, seed=SEED)), levels * each
    if provider == "eager":
        sde = EagerVESDE(VE_SIGMA_MIN, VE_SIGMA_MAX, steps)
        return (lambda: eager_pc_sampler(score_fn, sde, shape, SNR, 1, PC_EPS, x=x0)), steps
    sde = VESDE(VE_SIGMA_MIN, VE_SIGMA_MAX, steps)
    return (lambda: samplers.pc_sample(score_fn, sde, shape, snr=SNR, eps=PC_EPS, seed=SEED, x_init=x0)), steps


def _x0(op, shape):
    gen = torch.Generator().manual_seed(3)
    scale = SIGMA_MAX if op == "annealed_langevin" else VE_SIGMA_MAX  # the prior's std
    return torch.randn(shape, generator=gen) * scale


@contextlib.contextmanager
def setup(op: str, size: str, provider: str, steps: int, score: str = "analytic"):
    """Yield (fn, steps, warm): the zero-arg sampler run, the steps it takes, and a
    short warm-up run of the same code. ``score``: "analytic" (``GaussianScore`` at the
    sampler's own t) or "zero" (``ZeroCostScore``)."""
    shape = SIZES[size]
    if score == "zero":
        score_fn = ZeroCostScore(shape)
    else:
        score_fn = GaussianScore(shape, None if op == "annealed_langevin" else
                                 VESDE(VE_SIGMA_MIN, VE_SIGMA_MAX))
    x0 = _x0(op, shape)
    fn, n = _sampler_fn(op, provider, shape, score_fn, steps, x0)
    warm, _ = _sampler_fn(op, provider, shape, score_fn, min(steps, WARMUP_STEPS), x0)
    ctx = fastscore.use_backend("reference") if provider == "reference" else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        yield fn, n, warm


def ops_only_us_per_step(op: str, size: str, score: torch.Tensor, repeats: int = 5) -> float:
    """µs per step of the fused ops a sampler step runs, called back to back with fixed
    float coefficients and seed (no sampler loop): langevin_step_ for annealed Langevin;
    langevin_corrector_ + step_ for PC. Best of ``repeats`` batches. The sampler row's
    µs/step minus this is the Python loop's own cost (``loop_us_per_step``)."""
    x = _x0(op, SIZES[size]).mul_(0.0)
    n = STEP_ROW_STEPS[size]
    if op == "annealed_langevin":
        def one():
            ops.langevin_step_(x, score, 1e-4, seed=SEED)
    else:
        def one():
            ops.langevin_corrector_(x, score, SNR, seed=SEED)
            ops.step_(x, score, 1.0, 1e-4, 1e-2, seed=SEED + 1)
    with torch.no_grad():
        one()
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                one()
            best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def _describe(benchmark, suite, op, size, provider, steps, score):
    benchmark.group = f"{suite} {op} {size}"
    benchmark.extra_info.update(
        suite=suite, op=op, size=size, provider=provider, score=score, steps=steps,
        shape=list(SIZES[size]), numel=math.prod(SIZES[size]), threads=torch.get_num_threads(), dtype="float32",
        score_evals_per_step=2 if op == "pc" else 1,
    )


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", WHOLE_RUN_SIZES)
@pytest.mark.parametrize("op", SAMPLERS)
def test_sampler(benchmark, run_long, request, op, size, provider):
    """A whole sampling run on the analytic score; µs per step in the summary."""
    reason = _unavailable(provider)
    if reason:
        pytest.skip(reason)
    if request.config.getoption("benchmark_disable"):
        steps = SMOKE_STEPS[provider]
    elif provider == "reference":
        steps = REFERENCE_STEPS
    else:
        steps = N_LEVELS * STEPS_EACH if op == "annealed_langevin" else PC_N
    with setup(op, size, provider, steps) as (fn, n, warm):
        _describe(benchmark, "samplers", op, size, provider, n, "analytic")
        if op == "annealed_langevin":
            benchmark.extra_info.update(levels=_levels(n)[0], steps_each=_levels(n)[1])
        x = run_long(fn, warm, n / min(n, WARMUP_STEPS), LONG_BUDGET_S)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("provider", ("fused", "eager"))
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("op", SAMPLERS)
def test_sampler_step(benchmark, run_long, request, op, size, provider):
    """The sampler's own cost per step: zero-cost score, fused sampler vs eager loop."""
    reason = _unavailable(provider)
    if reason:
        pytest.skip(reason)
    steps = SMOKE_STEPS[provider] if request.config.getoption("benchmark_disable") else STEP_ROW_STEPS[size]
    smoke = request.config.getoption("benchmark_disable")
    with setup(op, size, provider, steps, score="zero") as (fn, n, warm):
        _describe(benchmark, "sampler_step", op, size, provider, n, "zero")
        if provider == "fused" and not smoke:
            benchmark.extra_info["ops_us_per_step"] = ops_only_us_per_step(op, size, ZeroCostScore(SIZES[size]).s)
        x = run_long(fn, warm, n / min(n, WARMUP_STEPS), STEP_BUDGET_S)
    assert torch.isfinite(x).all()
