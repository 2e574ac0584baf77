"""The loops fastscore replaces, as the peer codebases publish them (eager PyTorch, one
kernel per operator, the noise from torch's generator): what the benchmarks, the demo and
gpucheck compare with. Device-aware as the originals are (everything on x's device).

* NCSN (Song & Ermon 2019): ``anneal_langevin_dynamics``; NCSNv2's
  ``anneal_dsm_score_estimation``.
* score_sde (Song et al. 2021): ``VESDE`` and ``pc_sampler`` with the
  ``ReverseDiffusionPredictor`` and ``LangevinCorrector`` update functions.
* k-diffusion 0.1.1.post1: ``sample_euler_ancestral`` (with its default noise sampler),
  written out so that it runs where k-diffusion is not installed.
"""

from __future__ import annotations

import math

import torch


def _b(v, x):
    """score_sde's v[:, None, None, None], for any rank of x."""
    return v.view((-1,) + (1,) * (x.dim() - 1))


# --------------------------------------------------------------------------- NCSN


@torch.no_grad()
def anneal_langevin_dynamics(scorenet, x_mod, sigmas, n_steps_each=100, step_lr=2e-5):
    """NCSN's anneal_Langevin_dynamics (runners/anneal_runner.py), minus its image logging:
    alpha_i = step_lr (sigma_i / sigma_L)^2, x = x + alpha grad + sqrt(2 alpha) z. The score
    takes the [B] noise level. ``sigmas``: a list of floats."""
    for sigma in sigmas:
        labels = torch.ones(x_mod.shape[0], device=x_mod.device) * sigma
        step_size = step_lr * (sigma / sigmas[-1]) ** 2
        for _ in range(n_steps_each):
            noise = torch.randn_like(x_mod) * math.sqrt(step_size * 2)
            grad = scorenet(x_mod, labels)
            x_mod = x_mod + step_size * grad + noise
    return x_mod


def anneal_dsm_score_estimation(scorenet, samples, sigmas, labels=None, anneal_power=2.0):
    """NCSNv2's anneal_dsm_score_estimation (losses/dsm.py): a random level per sample,
    perturbed = x + sigma z, target = -z / sigma, loss 1/2 ||s - target||^2 sigma^power."""
    if labels is None:
        labels = torch.randint(0, len(sigmas), (samples.shape[0],), device=samples.device)
    used_sigmas = sigmas[labels].view(samples.shape[0], *([1] * len(samples.shape[1:])))
    noise = torch.randn_like(samples) * used_sigmas
    perturbed_samples = samples + noise
    target = - 1 / (used_sigmas ** 2) * noise
    scores = scorenet(perturbed_samples, used_sigmas.view(samples.shape[0]))
    target = target.view(target.shape[0], -1)
    scores = scores.view(scores.shape[0], -1)
    loss = 1 / 2. * ((scores - target) ** 2).sum(dim=-1) * used_sigmas.squeeze() ** anneal_power
    return loss.mean(dim=0)


# --------------------------------------------------------------------------- score_sde


class VESDE:
    """score_sde's sde_lib.VESDE (the parts the PC sampler uses), as published."""

    def __init__(self, sigma_min=0.01, sigma_max=50.0, N=1000):
        self.sigma_min, self.sigma_max, self.N, self.T = sigma_min, sigma_max, N, 1.0
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), N))

    def prior_sampling(self, shape):
        return torch.randn(*shape) * self.sigma_max

    def discretize(self, x, t):
        """SMLD(NCSN) discretization."""
        timestep = (t * (self.N - 1) / self.T).long()
        sigma = self.discrete_sigmas.to(t.device)[timestep]
        adjacent_sigma = torch.where(timestep == 0, torch.zeros_like(t),
                                     self.discrete_sigmas[timestep - 1].to(t.device))
        f = torch.zeros_like(x)
        G = torch.sqrt(sigma ** 2 - adjacent_sigma ** 2)
        return f, G

    def reverse_discretize(self, score_fn, x, t):
        """SDE.reverse(score_fn).discretize (probability_flow=False)."""
        f, G = self.discretize(x, t)
        rev_f = f - _b(G, x) ** 2 * score_fn(x, t)
        return rev_f, G


def langevin_corrector(sde, score_fn, x, t, snr, n_steps=1):
    """score_sde's LangevinCorrector.update_fn (sampling.py), VE branch (alpha = 1)."""
    alpha = torch.ones_like(t)
    for _ in range(n_steps):
        grad = score_fn(x, t)
        noise = torch.randn_like(x)
        grad_norm = torch.norm(grad.reshape(grad.shape[0], -1), dim=-1).mean()
        noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
        step_size = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
        x_mean = x + _b(step_size, x) * grad
        x = x_mean + _b(torch.sqrt(step_size * 2), x) * noise
    return x, x_mean


def reverse_diffusion_predictor(sde, score_fn, x, t):
    """score_sde's ReverseDiffusionPredictor.update_fn."""
    f, G = sde.reverse_discretize(score_fn, x, t)
    z = torch.randn_like(x)
    x_mean = x - f
    x = x_mean + _b(G, x) * z
    return x, x_mean


@torch.no_grad()
def pc_sampler(score_fn, sde, shape, snr=0.16, n_steps=1, eps=1e-3, denoise=True, x=None, device="cpu"):
    """score_sde's get_pc_sampler(...).pc_sampler with the two update functions above."""
    x = sde.prior_sampling(shape).to(device) if x is None else x.clone()
    timesteps = torch.linspace(sde.T, eps, sde.N, device=x.device)
    for i in range(sde.N):
        t = timesteps[i]
        vec_t = torch.ones(shape[0], device=t.device) * t
        x, x_mean = langevin_corrector(sde, score_fn, x, vec_t, snr, n_steps)
        x, x_mean = reverse_diffusion_predictor(sde, score_fn, x, vec_t)
    return x_mean if denoise else x


# --------------------------------------------------------------------------- k-diffusion


def _get_ancestral_step(sigma_from, sigma_to, eta=1.):
    if not eta:
        return sigma_to, 0.
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, eta=1., s_noise=1.):
    """k-diffusion's sample_euler_ancestral with its default noise sampler (randn_like) and
    no callback or progress bar: its two host reads per step included."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = _get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        d = (x - denoised) / sigmas[i]  # to_d
        dt = sigma_down - sigmas[i]
        x = x + d * dt
        if sigmas[i + 1] > 0:
            x = x + torch.randn_like(x) * s_noise * sigma_up
    return x
