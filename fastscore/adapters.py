"""Adapters: other projects' models as fastscore score functions score_fn(x, t).

- ``from_denoiser(D)``: a k-diffusion-style denoiser D(x, sigma) -> E[x0 | x] gives the
  score of the sigma-perturbed data by Tweedie's formula, (D(x, sigma) - x) / sigma^2;
  t is sigma (σ-indexed samplers: annealed_langevin, langevin).
- ``from_eps_model(eps_model, sde)``: an epsilon-prediction network eps(x, t) (DDPM,
  score_sde's VP models) gives score = -eps / std_t, std_t the SDE's marginal std at t.
"""

from __future__ import annotations

import torch

from fastscore.sde import SDE, _bcast


def from_denoiser(denoiser):
    """score_fn(x, sigma) = (denoiser(x, sigma) - x) / sigma^2, sigma a [B] tensor."""
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(x, sigma), got {type(denoiser).__name__}")

    def score_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return (denoiser(x, sigma) - x) / _bcast(sigma, x) ** 2

    return score_fn


def from_eps_model(eps_model, sde: SDE):
    """score_fn(x, t) = -eps_model(x, t) / std_t with std_t = sde.marginal_coef(t)[1]."""
    if not callable(eps_model):
        raise TypeError(f"eps_model must be callable as eps_model(x, t), got {type(eps_model).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a fastscore.sde.SDE, got {type(sde).__name__}")

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        std = sde.marginal_coef(t)[1].to(x.dtype)
        return -eps_model(x, t) / _bcast(std, x)

    return score_fn
