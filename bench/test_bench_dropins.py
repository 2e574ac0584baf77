"""The drop-ins against the libraries they replace, per step, side by side in one run
(suite "dropins"): each fastscore.k_diffusion sampler against k-diffusion's own function,
and each fastscore.diffusers scheduler step against the original's.

    op        k-diffusion: euler, euler_ancestral, heun, dpm_2, dpm_2_ancestral, lms,
              dpmpp_2s_ancestral, dpmpp_sde, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde
              (a whole run of ``steps`` Karras steps 80 -> 0.03, called as users call them:
              default noise, no callback, disable=True);
              diffusers: EulerAncestral, DPM++2M, SDE-DPM++2M (the standard loop over
              ``steps`` timesteps, ``step`` only), ScoreSdeVe (step_correct + step_pred)
    size      4x2 (the host cost per step), 2x4096, 64x3x32x32, 16x3x256x256 (fp32, 2 threads)
    provider  fused   fastscore (stream noise: no generator for the diffusers rows)
              peer    the original (k-diffusion 0.1.1.post1: its default noise —
                      randn_like, or a Brownian tree for the dpmpp SDE samplers; diffusers
                      0.42.1 without a generator: torch's global RNG)

The model is ZERO-cost (returns a preallocated tensor), so what is timed is the sampler:
the per-step update, its noise and its Python. Every row reports ``steps``; the summary's
``us_per_step`` and x-vs-peer compare per step.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

import pytest
import torch

SIZES = {"4x2": (4, 2), "2x4096": (4096, 2), "64x3x32x32": (64, 3, 32, 32), "16x3x256x256": (16, 3, 256, 256)}
K_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
              "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde")
D_SCHEDULERS = ("EulerAncestral", "DPM++2M", "SDE-DPM++2M", "ScoreSdeVe")
PROVIDERS = ("fused", "peer")
STEPS = {"4x2": 200, "2x4096": 20, "64x3x32x32": 20, "16x3x256x256": 5}
SMOKE_STEPS = 3


def _k_diffusion():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        return importlib.import_module("k_diffusion_upstream").load_k_sampling()
    finally:
        sys.path.pop(0)


class ZeroCostDenoiser:
    """model(x, sigma) -> one preallocated tensor (random, unit scale)."""

    def __init__(self, shape):
        self.out = torch.randn(shape, generator=torch.Generator().manual_seed(3))

    def __call__(self, x, sigma, *args, **kwargs):
        return self.out


def _steps(request, size):
    return SMOKE_STEPS if request.config.getoption("benchmark_disable") else STEPS[size]


@contextlib.contextmanager
def k_setup(op, size, provider, steps):
    from fastscore import k_diffusion as F

    lib = F if provider == "fused" else _k_diffusion()
    shape = SIZES[size]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 80.0
    sigmas = F.get_sigmas_karras(steps, 0.03, 80.0)
    model, sampler = ZeroCostDenoiser(shape), getattr(lib, f"sample_{op}")
    yield lambda: sampler(model, x, sigmas, disable=True)


def _diffusers_scheduler(op, provider):
    if provider == "fused":
        from fastscore import diffusers as lib
    else:
        import diffusers as lib
    if op == "ScoreSdeVe":
        return lib.ScoreSdeVeScheduler()
    if op == "EulerAncestral":
        return lib.EulerAncestralDiscreteScheduler()
    algorithm = "sde-dpmsolver++" if op.startswith("SDE") else "dpmsolver++"
    return lib.DPMSolverMultistepScheduler(algorithm_type=algorithm)


@contextlib.contextmanager
def d_setup(op, size, provider, steps):
    scheduler = _diffusers_scheduler(op, provider)
    shape = SIZES[size]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = ZeroCostDenoiser(shape).out

    if op == "ScoreSdeVe":
        def run():
            scheduler.set_timesteps(steps)
            scheduler.set_sigmas(steps)
            sample = x
            for t in scheduler.timesteps:
                sample = scheduler.step_correct(out, sample).prev_sample
                sample = scheduler.step_pred(out, t, sample).prev_sample
            return sample
    else:
        def run():
            scheduler.set_timesteps(steps)
            sample = x
            for t in scheduler.timesteps:
                scheduler.scale_model_input(sample, t)  # diffusers' loop calls it (and warns without)
                sample = scheduler.step(out, t, sample).prev_sample
            return sample
    yield run


@pytest.mark.filterwarnings("ignore:Should have t")  # torchsde, on k-diffusion's float32 tree ends
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("op", K_SAMPLERS + D_SCHEDULERS)
def test_dropin(benchmark, run_timed, request, op, size, provider):
    if op in D_SCHEDULERS:
        pytest.importorskip("diffusers")
    steps = _steps(request, size)
    benchmark.group = f"dropin {op} {size}"
    peer = "k-diffusion 0.1.1.post1" if op in K_SAMPLERS else "diffusers 0.42.1"
    benchmark.extra_info.update(suite="dropins", op=op, size=size, provider=provider, steps=steps, peer=peer,
                                threads=torch.get_num_threads(), dtype="float32")
    setup = k_setup if op in K_SAMPLERS else d_setup
    with torch.no_grad(), setup(op, size, provider, steps) as fn:
        run_timed(fn, budget_s=1.5)
