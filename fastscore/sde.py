"""SDEs of score-based generative modelling with score_sde's semantics and defaults
(Song et al. 2021, sde_lib.py): VESDE, VPSDE, SubVPSDE, plus noise schedules.

Every SDE here has a drift linear in x, f(x, t) = f_t * x, and a scalar diffusion g_t,
so each method also has a coefficient form returning per-sample [B] tensors; the
fused samplers use those and never build a drift tensor. The score_sde methods
(``sde``, ``marginal_prob``, ``discretize``, ``reverse``) broadcast over any shape
[B, ...] instead of score_sde's fixed [:, None, None, None]. ``T`` is 1 throughout.
"""

from __future__ import annotations

import math

import torch

from fastscore import ops


def _bcast(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] to multiply x of shape [B, ...]."""
    return coef.reshape((-1,) + (1,) * (x.dim() - 1))


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int, dtype=torch.float32) -> torch.Tensor:
    """NCSN's noise levels: n values from sigma_max down to sigma_min, equal ratios."""
    if not (sigma_max > 0 and sigma_min > 0):
        raise ValueError(f"sigma_max and sigma_min must be > 0, got {sigma_max}, {sigma_min}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)).to(dtype)


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0, dtype=torch.float32) -> torch.Tensor:
    """Karras et al. (2022) rho-schedule, from sigma_max down to sigma_min (no trailing 0)."""
    if not (sigma_max > 0 and sigma_min > 0):
        raise ValueError(f"sigma_max and sigma_min must be > 0, got {sigma_max}, {sigma_min}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).to(dtype)


class SDE:
    """Base: dx = f_t x dt + g_t dw on t in [0, T], discretised in N steps."""

    T = 1.0

    def __init__(self, N: int):
        if N < 1:
            raise ValueError(f"N must be >= 1, got {N}")
        self.N = int(N)
        self._on_device = {}

    def on(self, name: str, device) -> torch.Tensor:
        """The discrete schedule ``name`` (e.g. "discrete_betas") on ``device``, copied there
        once and kept: a sampler's later runs (a CUDA-graph capture among them) find it there
        and copy nothing from the host."""
        key = (name, str(torch.device(device)))
        t = self._on_device.get(key)
        if t is None:
            t = self._on_device[key] = getattr(self, name).to(device)
        return t

    # Coefficient forms ([B] tensors) -------------------------------------------------
    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """f_t with f(x, t) = f_t * x."""
        raise NotImplementedError

    def diffusion_coef(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def marginal_coef(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean scale m_t, std s_t) of p_t(x_t | x_0) = N(m_t x_0, s_t^2 I)."""
        raise NotImplementedError

    def prior_std(self) -> float:
        raise NotImplementedError

    def discretize_coef(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_i, G_i) of the discrete step x_{i+1} = x_i + f_i x_i + G_i z (Euler-Maruyama)."""
        dt = 1.0 / self.N
        return self.drift_coef(t) * dt, self.diffusion_coef(t) * math.sqrt(dt)

    # score_sde's interface -----------------------------------------------------------
    def sde(self, x: torch.Tensor, t: torch.Tensor):
        return _bcast(self.drift_coef(t), x) * x, self.diffusion_coef(t)

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor):
        mean_scale, std = self.marginal_coef(t)
        return _bcast(mean_scale, x) * x, std

    def prior_sampling(self, shape, seed: int = 0, offset: int = 0, dtype=torch.float32, device="cpu"):
        """A prior draw from fastscore's noise stream (so a sampling run is fixed by seed; an
        int, or a one-element int64 tensor read on the device)."""
        return ops.noise(shape, seed, offset, dtype=dtype, device=device) * self.prior_std()

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per sample, summed over all non-batch dims."""
        s2 = self.prior_std() ** 2
        d = z[0].numel() if z.dim() > 0 else 1
        return -d / 2.0 * math.log(2 * math.pi * s2) - (z.reshape(z.shape[0], -1) ** 2).sum(1) / (2 * s2)

    def discretize(self, x: torch.Tensor, t: torch.Tensor):
        f_i, g_i = self.discretize_coef(t)
        return _bcast(f_i, x) * x, g_i

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """score_sde's index of t into the discrete schedules: (t * (N - 1) / T).long()."""
        return (t * (self.N - 1) / self.T).long()

    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """score_sde's reverse-time SDE / probability-flow ODE built from a score function."""

    def __init__(self, forward: SDE, score_fn, probability_flow: bool):
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, probability_flow
        self.N, self.T = forward.N, forward.T

    def sde(self, x, t):
        drift, diffusion = self.forward.sde(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        drift = drift - _bcast(diffusion, x) ** 2 * self.score_fn(x, t) * weight
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x, t):
        f, g = self.forward.discretize(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        rev_f = f - _bcast(g, x) ** 2 * self.score_fn(x, t) * weight
        return rev_f, torch.zeros_like(g) if self.probability_flow else g


class VPSDE(SDE):
    """Variance preserving (DDPM): beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        if not 0 <= beta_min <= beta_max:
            raise ValueError(f"need 0 <= beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_0, self.beta_1 = float(beta_min), float(beta_max)
        self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N)
        self.alphas = 1.0 - self.discrete_betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_1m_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)

    def beta(self, t):
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion_coef(self, t):
        return torch.sqrt(self.beta(t))

    def log_mean_coeff(self, t):
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def marginal_coef(self, t):
        lmc = self.log_mean_coeff(t)
        return torch.exp(lmc), torch.sqrt(1.0 - torch.exp(2.0 * lmc))

    def prior_std(self):
        return 1.0

    def discretize_coef(self, t):
        """DDPM's discretisation: x_{i+1} = sqrt(alpha_i) x_i + sqrt(beta_i) z."""
        idx = self.timestep(t)
        beta = self.on("discrete_betas", t.device)[idx]
        alpha = self.on("alphas", t.device)[idx]
        return torch.sqrt(alpha) - 1.0, torch.sqrt(beta)


class SubVPSDE(VPSDE):
    """score_sde's sub-VP SDE: VP drift, diffusion beta(t) (1 - e^{-2 int beta}).
    Its discrete schedules (used by the ancestral predictor and the correctors' alpha)
    are the VP ones; score_sde's subVPSDE has none, so its corrector cannot run on it."""

    def diffusion_coef(self, t):
        discount = 1.0 - torch.exp(-2.0 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t**2)
        return torch.sqrt(self.beta(t) * discount)

    def marginal_coef(self, t):
        lmc = self.log_mean_coeff(t)
        return torch.exp(lmc), 1.0 - torch.exp(2.0 * lmc)  # score_sde: std = 1 - e^{2 lmc} (no sqrt)

    def discretize_coef(self, t):
        return SDE.discretize_coef(self, t)


class VESDE(SDE):
    """Variance exploding (NCSN/SMLD): sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), N))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift_coef(self, t):
        return torch.zeros_like(t)

    def diffusion_coef(self, t):
        return self.sigma(t) * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))

    def marginal_coef(self, t):
        return torch.ones_like(t), self.sigma(t)

    def prior_std(self):
        return self.sigma_max

    def adjacent_sigmas(self, t):
        """(sigma_i, sigma_{i-1}) of the discrete schedule (sigma_{-1} = 0)."""
        idx = self.timestep(t)
        sig = self.on("discrete_sigmas", t.device)
        sigma = sig[idx]
        adjacent = torch.where(idx == 0, torch.zeros_like(t), sig[(idx - 1).clamp_min(0)])
        return sigma, adjacent

    def discretize_coef(self, t):
        """SMLD's discretisation: x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z."""
        sigma, adjacent = self.adjacent_sigmas(t)
        return torch.zeros_like(t), torch.sqrt(sigma**2 - adjacent**2)
