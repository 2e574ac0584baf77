"""Log-likelihood through the probability-flow ODE (score_sde's likelihood.py), solved
on the tensor's device with fastscore's Dormand-Prince (fastscore/_ode.py).

    d x / dt     = f_t x - g_t^2 / 2 * s(x, t)
    d logp / dt  = div(drift) = f_t D - g_t^2 / 2 * tr(ds/dx)
    log p_0(x)   = log p_T(x(T)) + integral_eps^T div(drift) dt

tr(ds/dx) is the Hutchinson-Skilling estimate e^T (ds/dx) e with one probe e per sample,
fixed over the solve as score_sde does (Rademacher or Gaussian, from the noise stream),
or exact (``trace="exact"``: D vector-Jacobian products, small D only). The state is
one [B, D + 1] tensor (x and the log-density change), so the step control is one RMS
error norm over all of it, as scipy's solve_ivp on score_sde's flattened vector.
"""

from __future__ import annotations

import math

import torch

from fastscore import ops
from fastscore._ode import solve_rk45
from fastscore.sde import SDE

TRACES = ("rademacher", "gaussian", "exact")


class AugmentedFlow:
    """The probability-flow field with the divergence as an extra column; each evaluation
    writes its stage with one fused ``update`` (drift) and one fused dot product (trace)."""

    def __init__(self, score_fn, sde: SDE, shape, probe, dtype, device):
        self.score_fn, self.sde, self.shape, self.probe = score_fn, sde, tuple(shape), probe
        B, D = self.shape[0], math.prod(self.shape[1:])
        self.D = D
        self.stages = torch.empty((7, B, D + 1), dtype=dtype, device=device)
        self.nfe = 0

    def _trace(self, x, s):
        B, D = x.shape[0], self.D
        if self.probe is None:  # exact: D batched VJPs with the unit vectors
            basis = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, 1, D).expand(D, B, D)
            rows = torch.autograd.grad(s, x, grad_outputs=basis.reshape((D,) + tuple(x.shape)), is_grads_batched=True)[0]
            return rows.reshape(D, B, D).diagonal(dim1=0, dim2=2).sum(-1)
        vjp = torch.autograd.grad(s, x, grad_outputs=self.probe)[0]  # J^T e
        return torch.linalg.vecdot(self.probe.reshape(B, -1), vjp.reshape(B, -1))  # e^T J e, one fused reduction

    def __call__(self, y: torch.Tensor, t: float, out_stage: int) -> torch.Tensor:
        B = y.shape[0]
        t64 = torch.tensor([t], dtype=torch.float64)
        f = float(self.sde.drift_coef(t64)[0])
        g2 = float(self.sde.diffusion_coef(t64)[0]) ** 2
        with torch.enable_grad():
            x = y[:, : self.D].reshape(self.shape).detach().requires_grad_(True)
            s = self.score_fn(x, torch.full((B,), t, dtype=y.dtype, device=y.device))
            if not isinstance(s, torch.Tensor) or s.shape != x.shape:
                raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}")
            trace = self._trace(x, s)
        stage = self.stages[out_stage]
        ops.update(x.detach().reshape(B, -1), s.detach().reshape(B, -1), f, -0.5 * g2, out=stage[:, : self.D])
        stage[:, self.D] = f * self.D - 0.5 * g2 * trace.detach()
        self.nfe += 1
        return stage


@torch.no_grad()
def log_likelihood(score_fn, sde, x, seed=0, offset=0, trace="rademacher", rtol=1e-5, atol=1e-5, eps=1e-5,
                   prior_logp=None):
    """(log p(x) per sample [B], number of score evaluations) under the model's
    probability-flow ODE: x integrated from t = eps to T, log p_T of the end point
    (``sde.prior_logp``, or the given ``prior_logp(z)``) plus the integrated divergence."""
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a fastscore.sde.SDE, got {type(sde).__name__}")
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be a float32 or float64 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [B, D, ...], got shape {tuple(x.shape)}")
    if trace not in TRACES:
        raise ValueError(f"trace must be one of {TRACES}, got {trace!r}")
    for v, name in ((rtol, "rtol"), (atol, "atol")):
        if not (isinstance(v, (int, float)) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if not (isinstance(eps, (int, float)) and 0 < eps < sde.T):
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps!r}")
    probe = None if trace == "exact" else ops.probes(x.shape, seed, offset, trace, dtype=x.dtype, device=x.device)
    field = AugmentedFlow(score_fn, sde, x.shape, probe, x.dtype, x.device)
    B = x.shape[0]
    y0 = torch.cat([x.reshape(B, -1), torch.zeros(B, 1, dtype=x.dtype, device=x.device)], dim=1)
    y, nfe = solve_rk45(field, y0, eps, sde.T, rtol, atol)
    z = y[:, : field.D].reshape(x.shape)
    return (sde.prior_logp(z) if prior_logp is None else prior_logp(z)) + y[:, field.D], nfe


def bits_per_dim(logp: torch.Tensor, x: torch.Tensor, n_bits: int | None = None, centered: bool = True):
    """-log p / (D ln 2). With ``n_bits`` (discrete data rescaled to a continuous range),
    score_sde's offset is added: n_bits - 1 for data centred in [-1, 1], n_bits for [0, 1]."""
    if x.dim() < 1 or logp.shape != x.shape[:1]:
        raise ValueError(f"logp must have shape [B] = {tuple(x.shape[:1])}, got {tuple(logp.shape)}")
    bpd = -logp / (x[0].numel() * math.log(2))
    if n_bits is not None:
        bpd = bpd + (n_bits - 1 if centered else n_bits)
    return bpd
