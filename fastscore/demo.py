"""The main job (``python -m fastscore demo``): train a small noise-conditional score network
with the fused anneal_dsm loss on two 2-D distributions (a 3-mode Gaussian mixture and a ring
of 8 Gaussians), sample it with three fastscore samplers (NCSN's annealed Langevin,
score_sde's predictor-corrector, k-diffusion's Euler ancestral), and print one table: sample
quality against the true distribution, and the time of every phase fused vs the eager loops
the peers publish (fastscore._peers) — with each sampler's own per-step cost measured apart
from the network's, because that is the part fused kernels replace. Writes a PNG.

Timings: each timed run goes twice, alternating fused and eager, and the faster counts (a
shared 2-core machine is noisy); ratios are only ever taken between runs of one process.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

import fastscore
from fastscore import _peers, backends, k_diffusion, losses, samplers
from fastscore.ops import derive_seed
from fastscore.sde import VESDE, geometric_sigmas

SIGMA_MAX, SIGMA_MIN, N_LEVELS = 8.0, 0.05, 10
BATCH = 2048  # training batch: the size where a loss's fixed cost shows


class GaussianMixture2D:
    """Isotropic 2-D Gaussian mixture; ``score(x, sigma)`` is the exact score of the data
    convolved with N(0, sigma^2 I), i.e. what a perfect noise-conditional network learns."""

    def __init__(self, name, means, weights, std):
        self.name = name
        self.means = torch.as_tensor(means, dtype=torch.float32)
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        self.std = float(std)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        var = self.std**2 + torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2  # [B or 1, 1]
        diff = self.means[None] - x[:, None]  # [B, K, 2]
        logits = torch.log(self.weights)[None] - (diff**2).sum(-1) / (2 * var)
        resp = torch.softmax(logits, dim=1)  # responsibilities [B, K]
        return (resp[..., None] * diff).sum(1) / var

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.std * torch.randn(n, 2, generator=generator)

    def mode_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Fraction of samples nearest to each mean."""
        nearest = torch.cdist(x, self.means).argmin(1)
        return torch.bincount(nearest, minlength=len(self.means)).float() / len(x)


def three_modes() -> GaussianMixture2D:
    angles = [math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)]
    return GaussianMixture2D("3-mode mixture", [[4 * math.cos(a), 4 * math.sin(a)] for a in angles],
                             [0.2, 0.3, 0.5], 0.5)


def ring_of_8() -> GaussianMixture2D:
    angles = [2 * math.pi * k / 8 for k in range(8)]
    return GaussianMixture2D("ring of 8", [[4 * math.cos(a), 4 * math.sin(a)] for a in angles], [1 / 8] * 8, 0.3)


DATASETS = {"mixture": three_modes, "ring": ring_of_8}


class NoiseConditionalScoreNet(torch.nn.Module):
    """A small NCSNv2-style network: s(x, sigma) = MLP(x, log sigma) / sigma."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 2))

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.net(torch.cat([x, torch.log(sigma)[:, None]], 1)) / sigma[:, None]


# --------------------------------------------------------------------------- quality


def energy_distance(x: torch.Tensor, y: torch.Tensor, blocks: int = 8) -> tuple[float, float]:
    """The energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (zero iff the laws agree), as the mean
    of unbiased estimates on ``blocks`` disjoint blocks of x and y, and the standard error
    of that mean (std of the block estimates / sqrt(blocks))."""
    m = min(len(x), len(y)) // blocks
    if m < 2:
        raise ValueError(f"need at least {2 * blocks} points per set, got {len(x)} and {len(y)}")
    est = []
    for b in range(blocks):
        xb, yb = x[b * m:(b + 1) * m].double(), y[b * m:(b + 1) * m].double()
        within = lambda a: torch.pdist(a).sum() * 2 / (m * (m - 1))  # noqa: E731  mean over pairs i != j
        est.append((2 * torch.cdist(xb, yb).mean() - within(xb) - within(yb)).item())
    est = torch.tensor(est)
    return est.mean().item(), (est.std() / math.sqrt(blocks)).item()


def mode_weight_error(gmm: GaussianMixture2D, x: torch.Tensor) -> float:
    """Total variation between the samples' mode weights and the true weights."""
    return 0.5 * (gmm.mode_weights(x) - gmm.weights).abs().sum().item()


# --------------------------------------------------------------------------- training


def _bar(n: int, desc: str, show: bool):
    if not show:
        return range(n)
    try:
        from tqdm.auto import trange
    except ImportError:
        return range(n)
    return trange(n, desc=desc, leave=False)


def train(gmm, steps: int, seed: int, fused: bool = True, progress: bool = False):
    """Adam on NCSN's anneal_dsm loss: fastscore's fused loss, or the eager peer loss."""
    torch.manual_seed(seed)
    model = NoiseConditionalScoreNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, N_LEVELS)
    data = torch.Generator().manual_seed(seed)
    for k in _bar(steps, f"train {gmm.name} ({'fused' if fused else 'eager'})", progress):
        x = gmm.sample(BATCH, data)
        loss = (losses.anneal_dsm(model, x, sigmas, seed=derive_seed(seed, k)) if fused
                else _peers.anneal_dsm_score_estimation(model, x, sigmas.float()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model


def _best_of_two(runs: dict) -> dict:
    """{label: fn} -> {label: (seconds, result)}: every fn twice, alternating, the faster kept."""
    best = {}
    for _ in range(2):
        for label, fn in runs.items():
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            if label not in best or dt < best[label][0]:
                best[label] = (dt, out)
    return best


def time_training(gmm, steps: int, seed: int) -> dict:
    """Seconds per step, fused vs eager: a whole training step (network, Adam) and the loss
    alone (forward + backward with the network's output a leaf tensor)."""
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, N_LEVELS)
    x = gmm.sample(BATCH, torch.Generator().manual_seed(seed))
    h = torch.zeros_like(x, requires_grad=True)  # stands for the network's output
    leaf = lambda x_tilde, sigma: h  # noqa: E731

    def loss_only(fused):
        def go():
            for k in range(steps):
                h.grad = None
                (losses.anneal_dsm(leaf, x, sigmas, seed=k) if fused
                 else _peers.anneal_dsm_score_estimation(leaf, x, sigmas.float())).backward()
        return go

    train(gmm, 3, seed, True), train(gmm, 3, seed, False)  # warm-up
    best = _best_of_two({"step fused": lambda: train(gmm, steps, seed, True),
                         "step eager": lambda: train(gmm, steps, seed, False),
                         "loss fused": loss_only(True), "loss eager": loss_only(False)})
    return {k: v[0] / steps for k, v in best.items()}


# --------------------------------------------------------------------------- sampling


@dataclass
class SamplerSpec:
    name: str
    n_steps: int  # sampler steps (each one fused op, one model evaluation)
    model: object  # score s(x, sigma) -> the function this sampler calls (score in time, denoiser)
    fused: object  # (model, seed) -> samples, via fastscore
    eager: object  # (model) -> samples, the peer's eager loop


def sampler_specs(n: int, steps: int, seed: int) -> list[SamplerSpec]:
    """The three samplers, each driven by a noise-conditional score s(x, sigma)."""
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, N_LEVELS)
    step_lr = 0.1 * SIGMA_MIN**2  # alpha_i / sigma_i^2 = 0.1 at every level
    x0 = fastscore.noise((n, 2), seed=seed) * SIGMA_MAX
    n_sde = N_LEVELS * steps  # the PC sampler's steps (one predictor + one corrector each)
    sde = VESDE(SIGMA_MIN, SIGMA_MAX, N=n_sde)
    peer_sde = _peers.VESDE(SIGMA_MIN, SIGMA_MAX, N=n_sde)
    n_karras = max(2 * steps, 10)
    karras = k_diffusion.get_sigmas_karras(n_karras, SIGMA_MIN, SIGMA_MAX)

    def in_time(s):  # score_sde's samplers evaluate the score at time t; sigma(t) is VE's
        return lambda x, t: s(x, SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t)

    def denoiser(s):  # k-diffusion's model is the denoiser D(x, sigma) = x + sigma^2 s(x, sigma)
        return lambda x, sigma: x + sigma[:, None] ** 2 * s(x, sigma)

    return [
        SamplerSpec("annealed Langevin", N_LEVELS * steps, lambda s: s,
                    lambda m, k: samplers.annealed_langevin(m, x0, sigmas, steps, step_lr, seed=k),
                    lambda m: _peers.anneal_langevin_dynamics(m, x0.clone(), sigmas.tolist(), steps, step_lr)),
        SamplerSpec("PC (reverse diffusion + Langevin)", 2 * n_sde, in_time,
                    lambda m, k: samplers.pc_sample(m, sde, (n, 2), snr=0.1, seed=k),
                    lambda m: _peers.pc_sampler(m, peer_sde, (n, 2), snr=0.1)),
        SamplerSpec("k-diffusion Euler ancestral", n_karras, denoiser,
                    lambda m, k: k_diffusion.sample_euler_ancestral(m, x0 * 1.0, karras, seed=k),
                    lambda m: _peers.sample_euler_ancestral(m, x0 * 1.0, karras)),
    ]


@dataclass
class SamplerResult:
    dataset: str
    sampler: str
    n_steps: int
    energy: tuple  # (energy distance, its standard error)
    mode_error: float
    fused_s: float  # whole run, learned network
    eager_s: float
    fused_free_s: float  # the same run with a free score (a cached tensor): the sampler alone
    eager_free_s: float

    @property
    def per_step_us(self):
        return 1e6 * self.fused_free_s / self.n_steps, 1e6 * self.eager_free_s / self.n_steps

    @property
    def network_share(self) -> float:
        return max(0.0, 1 - self.fused_free_s / self.fused_s)


def sample_all(gmm, model, specs, truth, n, seed, backend, progress) -> tuple[list[SamplerResult], dict]:
    cached = torch.zeros(n, 2)
    free = lambda x, sigma: cached  # noqa: E731  a model that costs nothing: what remains is the sampler
    results, samples = [], {}
    bar = _bar(len(specs), f"sample {gmm.name}", progress)
    for spec, _ in zip(specs, bar):
        learned = spec.model(model)
        def fused(score):
            return lambda: _with_backend(backend, lambda: spec.fused(score, seed))

        def eager(score):
            def go():
                torch.manual_seed(seed)
                return spec.eager(score)
            return go

        with torch.no_grad():
            fused(free)(), eager(free)()  # warm-up (first-call costs, plan caches)
            t = _best_of_two({"fused": fused(learned), "eager": eager(learned),
                              "fused free": fused(free), "eager free": eager(free)})
        x = t["fused"][1]
        samples[spec.name] = x
        results.append(SamplerResult(gmm.name, spec.name, spec.n_steps, energy_distance(x, truth),
                                     mode_weight_error(gmm, x), t["fused"][0], t["eager"][0],
                                     t["fused free"][0], t["eager free"][0]))
    return results, samples


def _with_backend(backend, fn):
    with fastscore.use_backend(backend) if backend != "auto" else contextlib.nullcontext():
        return fn()


# --------------------------------------------------------------------------- the main job


def run(train_steps: int = 1500, samples: int = 4096, steps: int = 20, seed: int = 0, backend: str = "auto",
        png: str | None = "demo.png", datasets=tuple(DATASETS), timing_steps: int = 50, progress: bool = True) -> dict:
    """Trains, samples, prints the table, writes the PNG; returns what it printed as data:
    {"training": {dataset: times}, "sampling": [SamplerResult], "floor": {dataset: energy}}."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if backend != "auto":
        backends.not_supported_reasons(backend, "cpu")  # an unknown name raises here
    print(f"fastscore {fastscore.__version__} demo on {backends.cpu_name()}, {torch.get_num_threads()} threads; "
          f"backend {backend} ({backends.resolve('cpu') if backend == 'auto' else backend} serves the CPU)")
    report = {"training": {}, "sampling": [], "floor": {}, "samples": {}}
    for name in datasets:
        gmm = DATASETS[name]()
        t0 = time.perf_counter()
        model = _with_backend(backend, lambda: train(gmm, train_steps, seed, fused=True, progress=progress))
        train_s = time.perf_counter() - t0
        times = _with_backend(backend, lambda: time_training(gmm, timing_steps, seed))
        times["train total fused"] = train_s
        report["training"][name] = times
        truth = gmm.sample(samples, torch.Generator().manual_seed(seed + 1))
        report["floor"][name] = energy_distance(gmm.sample(samples, torch.Generator().manual_seed(seed + 2)), truth)
        specs = sampler_specs(samples, steps, seed)
        results, xs = sample_all(gmm, model, specs, truth, samples, seed, backend, progress)
        report["sampling"] += results
        report["samples"][name] = (gmm, xs)
    print_table(report, train_steps, samples, steps)
    if png:
        plot(png, report["samples"])
    return report


def print_table(report, train_steps, samples, steps) -> None:
    print(f"\ntraining: {train_steps} Adam steps per dataset, batch {BATCH}, NCSN's anneal_dsm loss, "
          f"{N_LEVELS} levels {SIGMA_MAX:g}..{SIGMA_MIN:g}; time per step, fused vs NCSN's eager loss")
    print(f"  {'dataset':16s} {'loss fwd+bwd (network excluded)':>34s}   {'whole step (network, Adam)':>30s}")
    for name, t in report["training"].items():
        print(f"  {name:16s} {_vs(t['loss fused'] * 1e6, t['loss eager'] * 1e6, 'us'):>34s}   "
              f"{_vs(t['step fused'] * 1e3, t['step eager'] * 1e3, 'ms'):>30s}")
    print(f"\nsampling: {samples} points; quality against {samples} fresh points of the true distribution; "
          f"time of the whole run and of the sampler alone (score replaced by a cached tensor)")
    head = (f"  {'dataset':16s} {'sampler':34s} {'steps':>5s} {'energy dist +- s.e.':>20s} {'mode err':>8s} "
            f"{'run fused / eager':>20s} {'sampler per step fused / eager':>34s} {'network':>8s}")
    print(head)
    names = list(report["training"])
    for name in names:
        e, se = report["floor"][name]
        print(f"  {name:16s} {'(fresh data: the floor)':34s} {'':>5s} {_pm(e, se):>20s} {0.0:8.3f}")
        for r in (r for r in report["sampling"] if r.dataset == DATASETS[name]().name):
            f_us, e_us = r.per_step_us
            print(f"  {'':16s} {r.sampler:34s} {r.n_steps:5d} {_pm(*r.energy):>20s} {r.mode_error:8.3f} "
                  f"{_vs(r.fused_s, r.eager_s, 's'):>20s} {_vs(f_us, e_us, 'us'):>34s} {r.network_share:7.0%}")
    print("  (energy distance: 0 iff the laws agree; mode err: total variation of the mode weights; "
          "network: the score network's share of the fused run)")


def _vs(fused: float, eager: float, unit: str) -> str:
    return f"{_num(fused)} / {_num(eager)} {unit} (x{eager / fused:.1f})"


def _num(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _pm(v: float, se: float) -> str:
    return f"{v:.4f} +- {se:.4f}"


def plot(path, sample_sets) -> None:
    """Data vs samples: one row per dataset, one column for the data and one per sampler."""
    from fastscore._optional import MissingOptionalDependency, require

    try:
        matplotlib = require("matplotlib", "the demo's PNG")
    except MissingOptionalDependency as e:
        print(f"no PNG written: {e}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(sample_sets.values())
    cols = 1 + max(len(xs) for _, xs in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3 * cols, 3 * len(rows)), squeeze=False)
    for (gmm, xs), ax_row in zip(rows, axes):
        data = gmm.sample(len(next(iter(xs.values()))), torch.Generator().manual_seed(7))
        for ax, (title, x) in zip(ax_row, [("data: " + gmm.name, data)] + list(xs.items())):
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3)
            ax.scatter(gmm.means[:, 0], gmm.means[:, 1], c="red", marker="x", s=20)
            ax.set_title(title, fontsize=9)
            ax.set_xlim(-7, 7)
            ax.set_ylim(-7, 7)
            ax.set_aspect("equal")
    fig.suptitle("fastscore demo: learned score, fused samplers")
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    except OSError as e:
        print(f"no PNG written: cannot write {path} ({e})")
        return
    finally:
        plt.close(fig)
    print(f"wrote {path}")
