"""Every public fastscore op on every CPU backend, beside eager PyTorch written the way
score_sde / NCSN code writes it and beside torch.compile of that same code.

Liger-style: ``setup(op, size, provider)`` builds the inputs and yields the zero-arg
callable that is timed; one parametrized test times it. Rows:

    op        langevin_step_, step_, perturb, noise, update (an ODE stage's drift
              f x - g^2/2 s, no noise), langevin_corrector_ (score_sde's SNR step)
    size      4x2 (where the kernel costs ~nothing: the per-call host cost),
              2x4096 (2-D toy batch: 4096 rows of 2), 64x3x32x32 (CIFAR batch), 16x3x256x256
    provider  cpp, reference  fastscore under fastscore.use_backend(provider), each call
                              with the next step seed of a run (derive_seed(SEED, k): the
                              full 64-bit seeds real samplers pass, not one fixed seed)
              eager           the score_sde / NCSN line (returns a new x, as they do)
              diffusers       (corrector only) diffusers' ScoreSdeVeScheduler.step_correct
              compile         torch.compile(eager function), default inductor,
                              dynamic=False (a sampler runs one shape)

Triton is left out on purpose: on CPU it only runs under TRITON_INTERPRET=1, which is a
correctness tool, not a performance path.

Bytes are the nominal useful bytes of the fused op, the same for every provider so GB/s
compare as "useful bytes per second": langevin_step_ / step_ read x and score and write x
(12 N), perturb reads x and writes out (8 N), noise writes (4 N), update reads x and
score and writes out (12 N), langevin_corrector_ reads score in pass 1 and x, score in
pass 2 and writes x (16 N). Eager rows move more.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import pytest
import torch

import fastscore
from fastscore import backends
from fastscore.ops import derive_seed

OPS = ("langevin_step_", "step_", "perturb", "noise", "update", "langevin_corrector_")
SIZES = {
    "4x2": (4, 2),
    "2x4096": (4096, 2),  # the 2-D toy batch: B = 4096 points, D = 2 (short rows)
    "64x3x32x32": (64, 3, 32, 32),
    "16x3x256x256": (16, 3, 256, 256),
}
PROVIDERS = ("cpp", "reference", "eager", "diffusers", "compile")
# Under --benchmark-disable (the CI smoke run, < 60 s) each compile row would cost a fresh
# inductor compile (1-2 s warm, ~10 s for the first one on a cold cache) to run once.
SMOKE_COMPILE_SIZE = "2x4096"
BYTES_PER_ELEMENT = {"langevin_step_": 12, "step_": 12, "perturb": 8, "noise": 4, "update": 12,
                     "langevin_corrector_": 16}
DRAWS_NOISE = {"langevin_step_": True, "step_": True, "perturb": True, "noise": True, "update": False,
               "langevin_corrector_": True}

SEED = 1234
EPS = 1e-3  # Langevin step size
A, B, C = 0.999, 1e-3, 0.05  # step_ coefficients (a != 1 so nobody folds the multiply away)
SIGMA = 0.5  # perturb noise level
DRIFT_F, DRIFT_G2 = -0.5, 4.0  # update: a VP-like drift coefficient and g^2
SNR = 0.16  # langevin_corrector_


# --------------------------------------------------------------------------- eager peers
# One module-level function per op, as the peer codebases write the update.


def eager_langevin_step(x, score):
    # NCSN anneal_Langevin_dynamics / score_sde LangevinCorrector
    return x + EPS * score + math.sqrt(2 * EPS) * torch.randn_like(x)


def eager_step(x, score):
    # a reverse-diffusion / Euler-Maruyama predictor: x_mean = a x + b s; x = x_mean + c z
    return A * x + B * score + C * torch.randn_like(x)


def eager_perturb(x):
    # DSM loss: perturbed = x + sigma * z
    return x + SIGMA * torch.randn_like(x)


def eager_noise(shape):
    return torch.randn(shape)


def eager_update(x, score):
    # score_sde's probability-flow drift: f(x, t) - 0.5 g(t)^2 score
    return DRIFT_F * x - 0.5 * DRIFT_G2 * score


def eager_langevin_corrector(x, score):
    # score_sde's LangevinCorrector.update_fn body (VE: alpha = 1)
    noise = torch.randn_like(x)
    grad_norm = torch.norm(score.reshape(score.shape[0], -1), dim=-1).mean()
    noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
    step_size = (SNR * noise_norm / grad_norm) ** 2 * 2
    x_mean = x + step_size * score
    return x_mean + torch.sqrt(step_size * 2) * noise


def diffusers_langevin_corrector(x, score):
    # diffusers ScoreSdeVeScheduler.step_correct, written out (randn_tensor -> randn_like)
    noise = torch.randn_like(x)
    grad_norm = torch.norm(score.reshape(score.shape[0], -1), dim=-1).mean()
    noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
    step_size = (SNR * noise_norm / grad_norm) ** 2 * 2
    step_size = step_size * torch.ones(x.shape[0]).to(x.device)
    step_size = step_size.flatten()
    while len(step_size.shape) < len(x.shape):
        step_size = step_size.unsqueeze(-1)
    prev_sample_mean = x + step_size * score
    return prev_sample_mean + ((step_size * 2) ** 0.5) * noise


EAGER = {"langevin_step_": eager_langevin_step, "step_": eager_step, "perturb": eager_perturb, "noise": eager_noise,
         "update": eager_update, "langevin_corrector_": eager_langevin_corrector}


def _unavailable(provider: str, op: str) -> str | None:
    if provider == "diffusers" and op != "langevin_corrector_":
        return "diffusers' formulation is benchmarked for the corrector only"
    if provider in ("cpp", "reference"):
        reasons = backends.not_supported_reasons(provider, torch.device("cpu"))
        if reasons:
            return f"backend {provider!r} unavailable: " + "; ".join(reasons)
    return None


@contextlib.contextmanager
def setup(op: str, size: str, provider: str):
    """Yield the zero-arg callable that runs ``op`` at ``size`` on ``provider``.

    The fastscore backend is selected around the timed loop (use_backend costs ~1 µs, a
    few % of a 15 µs row), not inside each call. In-place ops update a preallocated x
    with a fixed seed; the updates are contractive or slowly diffusing, so x stays finite.
    """
    shape = SIZES[size]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    score = torch.randn(shape, generator=gen)
    out = torch.empty_like(x)

    if provider in ("cpp", "reference"):
        ops = fastscore.ops
        seeds = itertools.cycle([derive_seed(SEED, k) for k in range(4096)])  # a sampler's step seeds
        fns = {
            "langevin_step_": lambda: ops.langevin_step_(x, score, EPS, seed=next(seeds)),
            "step_": lambda: ops.step_(x, score, A, B, C, seed=next(seeds)),
            "perturb": lambda: ops.perturb(x, SIGMA, seed=next(seeds)),
            "noise": lambda: fastscore.noise(shape, next(seeds)),
            "update": lambda: ops.update(x, score, DRIFT_F, -0.5 * DRIFT_G2, out=out),
            "langevin_corrector_": lambda: ops.langevin_corrector_(x, score, SNR, seed=next(seeds)),
        }
        with fastscore.use_backend(provider):
            yield fns[op]
        return

    f = diffusers_langevin_corrector if provider == "diffusers" else EAGER[op]
    if provider == "compile":
        f = torch.compile(f, dynamic=False)
    args = {"perturb": (x,), "noise": (shape,)}.get(op, (x, score))
    if provider == "compile":
        f(*args)  # compile once here; run_timed warms up further before timing
    yield lambda: f(*args)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("op", OPS)
def test_op(benchmark, run_timed, request, op, size, provider):
    reason = _unavailable(provider, op)
    if reason:
        pytest.skip(reason)
    if provider == "compile" and size != SMOKE_COMPILE_SIZE and request.config.getoption("benchmark_disable"):
        pytest.skip(f"--benchmark-disable smoke run: torch.compile is exercised once per op, at {SMOKE_COMPILE_SIZE}")
    n = math.prod(SIZES[size])
    benchmark.group = f"{op} {size}"
    benchmark.extra_info.update(
        suite="ops", op=op, size=size, provider=provider, shape=list(SIZES[size]), numel=n,
        bytes=BYTES_PER_ELEMENT[op] * n, normals=n if DRAWS_NOISE[op] else 0, threads=torch.get_num_threads(), dtype="float32",
    )
    with torch.no_grad(), setup(op, size, provider) as fn:
        run_timed(fn)


@pytest.mark.parametrize("size", list(SIZES))
def test_generator_at_size(benchmark, run_timed, size):
    """The noise stream alone at each size, into a preallocated buffer (fastscore._C.fill_noise_,
    the kernel the fused ops run): the summary's t/gen column divides each cpp row by it."""
    if not backends.HAS_EXTENSION:
        pytest.skip(f"fastscore._C is not built ({backends.EXTENSION_ERROR})")
    n = math.prod(SIZES[size])
    buf = torch.empty(n)
    seeds = itertools.cycle([derive_seed(SEED, k) % (1 << 63) for k in range(4096)])
    fill = backends._C.fill_noise_
    benchmark.group = f"generator {size}"
    benchmark.extra_info.update(
        suite="ops", op="generator", size=size, provider="cpp", impl="fastscore._C.fill_noise_ (preallocated)",
        shape=list(SIZES[size]), numel=n, bytes=4 * n, normals=n, threads=torch.get_num_threads(), dtype="float32",
    )
    run_timed(lambda: fill(buf, 0, None, next(seeds), None, 0))
