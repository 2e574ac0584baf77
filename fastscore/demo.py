"""The main job: train a small noise-conditional score network on a 2-D Gaussian mixture
with the fused anneal_dsm loss, sample it with fused annealed Langevin, and print sample
quality against the true mixture and time against eager PyTorch written NCSN's way (and
the reference backend); writes a PNG of the samples."""

from __future__ import annotations

import math
import time

import torch

import fastscore
from fastscore import losses, samplers
from fastscore.ops import derive_seed
from fastscore.sde import geometric_sigmas


class GaussianMixture2D:
    """Isotropic 2-D Gaussian mixture; ``score(x, sigma)`` is the exact score of the data
    convolved with N(0, sigma^2 I), i.e. what a perfect noise-conditional network learns."""

    def __init__(self, means, weights, std):
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


def default_mixture() -> GaussianMixture2D:
    angles = [math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)]
    return GaussianMixture2D([[4 * math.cos(a), 4 * math.sin(a)] for a in angles], [0.2, 0.3, 0.5], 0.5)


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


def eager_anneal_dsm(model, x, sigmas, generator):
    """NCSN's anneal_dsm_score_estimation as NCSN writes it (randn_like noise kept for backward)."""
    labels = torch.randint(0, len(sigmas), (x.shape[0],), generator=generator)
    used = sigmas[labels][:, None]
    noise = torch.randn(x.shape, generator=generator) * used
    perturbed = x + noise
    target = -1 / (used**2) * noise
    scores = model(perturbed, used[:, 0])
    return (0.5 * ((scores - target) ** 2).sum(-1) * used[:, 0] ** 2).mean()


def train(gmm, sigmas, steps, batch, fused: bool, seed: int = 0):
    torch.manual_seed(seed)
    model = NoiseConditionalScoreNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for k in range(steps):
        x = gmm.sample(batch, g)
        loss = (losses.anneal_dsm(model, x, sigmas, seed=derive_seed(seed, k)) if fused
                else eager_anneal_dsm(model, x, sigmas, g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model


def eager_annealed_langevin(score_fn, x, sigmas, n_steps_each, step_lr):
    """NCSN's anneal_Langevin_dynamics loop, eager PyTorch."""
    sig = sigmas.tolist()
    for sigma in sig:
        alpha = step_lr * (sigma / sig[-1]) ** 2
        t = torch.full((x.shape[0],), sigma)
        for _ in range(n_steps_each):
            x = x + alpha * score_fn(x, t) + math.sqrt(2 * alpha) * torch.randn_like(x)
    return x


def _quality(gmm, x):
    w = gmm.mode_weights(x)
    tv = 0.5 * (w - gmm.weights).abs().sum().item()
    near = torch.cdist(x, gmm.means).min(1)
    spread = x.sub(gmm.means[near.indices]).pow(2).mean().sqrt().item()  # per-coordinate RMS around the mode
    return w, tv, spread


def run(n_samples: int = 8192, n_levels: int = 10, n_steps_each: int = 100, train_steps: int = 800, batch: int = 2048,
        png: str | None = "demo.png"):
    torch.set_num_threads(2)
    gmm = default_mixture()
    sigmas = geometric_sigmas(8.0, 0.05, n_levels)
    step_lr = 0.1 * sigmas[-1].item() ** 2  # alpha_i / sigma_i^2 = 0.1 at every level
    print(f"fastscore {fastscore.__version__} demo: a 3-mode 2-D Gaussian mixture (weights "
          f"{_fmt(gmm.weights, '.2g')}, std {gmm.std:g}); backends here: {fastscore.available_backends()}")

    print(f"1. train a noise-conditional score network ({train_steps} Adam steps, batch {batch}, "
          f"{n_levels} noise levels, NCSN's anneal_dsm loss)")
    # Timings on a shared 2-core machine are noisy: each path runs twice, alternating with
    # the other, and the faster run counts. A short untimed run first warms everything up.
    for fused in (True, False):
        train(gmm, sigmas, 20, batch, fused)
    times = {"fused anneal_dsm": math.inf, "eager NCSN loss": math.inf}
    for _ in range(2):
        for label, fused in (("fused anneal_dsm", True), ("eager NCSN loss", False)):
            t0 = time.perf_counter()
            model = train(gmm, sigmas, train_steps, batch, fused)
            times[label] = min(times[label], time.perf_counter() - t0)
            if fused:
                fused_model = model
    for label, dt in times.items():
        print(f"   {label:18s} {dt:6.2f} s")

    print(f"2. sample {n_samples} points: annealed Langevin, {n_levels} levels x {n_steps_each} steps")
    x0 = fastscore.noise((n_samples, 2), seed=1) * sigmas[0]
    learned = lambda x, t: fused_model(x, t)  # noqa: E731
    configs = (("learned, fused", "auto", learned, "fused"), ("learned, eager", "auto", learned, "eager"),
               ("exact score, fused", "auto", gmm.score, "fused"),
               ("exact score, reference", "reference", gmm.score, "fused"))

    def sample(backend, score_fn, loop, n_steps):
        with fastscore.use_backend(backend):
            if loop == "fused":
                return samplers.annealed_langevin(score_fn, x0, sigmas, n_steps, step_lr, seed=1000)
            return eager_annealed_langevin(score_fn, x0.clone(), sigmas, n_steps, step_lr)

    best = {}
    with torch.no_grad():
        for _, backend, score_fn, loop in configs:  # warm-up, untimed
            sample(backend, score_fn, loop, 1)
        for _ in range(2):
            for label, backend, score_fn, loop in configs:
                t0 = time.perf_counter()
                x = sample(backend, score_fn, loop, n_steps_each)
                best[label] = (min(best.get(label, (math.inf,))[0], time.perf_counter() - t0), x)
    rows = [(label, *best[label]) for label, *_ in configs]

    se = math.sqrt(0.25 / n_samples)
    width = len(_fmt(gmm.weights))
    print(f"   {'':24s} {'mode weights':{width}s}  {'TV':>5s}  {'RMS spread':>10s}  {'time':>7s}")
    print(f"   {'true mixture':24s} {_fmt(gmm.weights)}  {0:5.3f}  {gmm.std:10.3f}")
    for label, dt, x in rows:
        w, tv, spread = _quality(gmm, x)
        print(f"   {label:24s} {_fmt(w)}  {tv:5.3f}  {spread:10.3f}  {dt:5.2f} s")
    print(f"   (a mode weight's sampling standard error is ~{se:.3f})")
    same = torch.equal(rows[2][2], rows[3][2])
    print(f"   exact-score samples, fused vs reference backend, bit-identical: {same}")
    print(f"3. time: training x{times['eager NCSN loss'] / times['fused anneal_dsm']:.2f} fused vs eager; "
          f"sampling x{rows[1][1] / rows[0][1]:.2f} fused vs eager, x{rows[3][1] / rows[2][1]:.2f} vs the "
          "reference backend (network / score evaluation included)")
    if png:
        _plot(png, gmm, rows[0][2])
    return rows


def _fmt(values, spec: str = ".3f") -> str:
    """[0.200, 0.300, 0.500]: a float32 tensor's values as written, not as float64 reprs."""
    return "[" + ", ".join(f"{v:{spec}}" for v in values.tolist()) + "]"


def _plot(path, gmm, x):
    from fastscore._optional import MissingOptionalDependency, require

    try:
        matplotlib = require("matplotlib", "the demo's PNG")
    except MissingOptionalDependency as e:
        print(f"   no PNG written: {e}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3, label="fastscore samples")
    ax.scatter(gmm.means[:, 0], gmm.means[:, 1], c="red", marker="x", label="true means")
    for m, w in zip(gmm.means.tolist(), gmm.weights.tolist()):
        ax.annotate(f"w={w:.1f}", m, textcoords="offset points", xytext=(8, 8))
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    ax.set_title("learned score, fused annealed Langevin")
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as e:
        print(f"   no PNG written: cannot write {path} ({e})")
        return
    finally:
        plt.close(fig)
    print(f"   wrote {path}")
