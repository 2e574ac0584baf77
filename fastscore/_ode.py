"""The probability-flow ODE's adaptive solver: Dormand-Prince 5(4) with scipy's RK45 step
control, on the tensor's device, for ``samplers.ode_sample(method="rk45")`` and
``likelihood.log_likelihood``. Its one host decision per attempted step (accept or reject,
from one RMS error norm) is documented; everything else stays on the device."""

from __future__ import annotations

import math

import torch

from fastscore import _checks, ops
from fastscore.sde import SDE

# Dormand-Prince 5(4), as scipy's RK45: nodes C, stage matrix A, 5th-order weights B,
# error weights E (5th minus 4th order), last stage = first of the next step (FSAL).
_DP_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0]
_DP_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
]
_DP_B = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]
_DP_E = [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]


class ProbabilityFlow:
    """dx/dt = f_t x - g_t^2 / 2 * score(x, t): each evaluation is one fused ``update``
    into a preallocated stage buffer (no drift temporaries), counting evaluations."""

    def __init__(self, score_fn, sde: SDE, like: torch.Tensor, n_stages: int):
        self.score_fn, self.sde = score_fn, sde
        self.stages = torch.empty((n_stages,) + tuple(like.shape), dtype=like.dtype, device=like.device)
        self.nfe = 0

    def __call__(self, y: torch.Tensor, t: float, out_stage: int) -> torch.Tensor:
        B = y.shape[0]
        t_vec = torch.full((B,), t, dtype=y.dtype, device=y.device)
        t64 = torch.tensor([t], dtype=torch.float64)
        f = float(self.sde.drift_coef(t64)[0])
        g2 = float(self.sde.diffusion_coef(t64)[0]) ** 2
        self.nfe += 1
        return ops.update(y, _checks.scored(self.score_fn, y, t_vec, cast=True), f, -0.5 * g2, out=self.stages[out_stage])


def _combine(y: torch.Tensor, stages: torch.Tensor, weights: list[float], h: float, out: torch.Tensor):
    """out = y + h * sum_j w_j stages[j]: one fused pass (BLAS gemv over the stage buffer)."""
    k = len(weights)
    w = torch.tensor([h * wj for wj in weights], dtype=y.dtype, device=y.device)
    mat = stages[:k].reshape(k, -1).t()
    if out is y:
        y.reshape(-1).addmv_(mat, w)
    else:
        torch.addmv(y.reshape(-1), mat, w, out=out.reshape(-1))
    return out


def _rms(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((v * v).mean())


def solve_rk45(field, y, t0, t1, rtol, atol, callback=None):
    """Dormand-Prince 5(4) from t0 to t1 on y (any shape), scipy's RK45 controller:
    initial step from scipy's select_initial_step, error norm = RMS over all elements of
    err / (atol + rtol * max(|y|, |y_new|)), safety 0.9, factors in [0.2, 10].
    ``field(y, t, k)`` writes dy/dt into ``field.stages[k]`` (7 stages) and counts
    ``field.nfe``. Returns (y(t1), number of field evaluations)."""
    direction = 1.0 if t1 > t0 else -1.0
    y = y.clone()
    y_new = torch.empty_like(y)
    field(y, t0, 0)
    h = direction * _initial_step(field, y, t0, t1, rtol, atol)
    t, i = t0, 0
    rejected = False
    while direction * (t1 - t) > 0:
        min_step = 10 * abs(math.nextafter(t, direction * math.inf) - t)
        t_new = t + direction * max(abs(h), min_step)
        if direction * (t_new - t1) > 0:
            t_new = t1  # land exactly on the end, as scipy does
        h = t_new - t
        for s in range(1, 6):
            _combine(y, field.stages, _DP_A[s], h, out=y_new)
            field(y_new, t + _DP_C[s] * h, s)
        _combine(y, field.stages, _DP_B, h, out=y_new)
        field(y_new, t + h, 6)
        err = _combine(torch.zeros_like(y), field.stages, _DP_E, h, out=torch.empty_like(y))
        scale = atol + torch.maximum(y.abs(), y_new.abs()) * rtol
        error_norm = float(_rms(err / scale))  # the one host sync of the step
        if error_norm < 1:
            factor = 10.0 if error_norm == 0 else min(10.0, 0.9 * error_norm ** -0.2)
            if rejected:
                factor = min(1.0, factor)
            t = t_new
            y, y_new = y_new, y
            field.stages[0].copy_(field.stages[6])  # FSAL
            h = h * factor
            rejected = False
            if callback is not None:
                callback(i, y)
            i += 1
        else:
            h = h * max(0.2, 0.9 * error_norm ** -0.2)
            rejected = True
    return y, field.nfe


def _initial_step(field, y, t0, t1, rtol, atol):
    """scipy.integrate._ivp.common.select_initial_step for order 4 (error estimator order)."""
    f0 = field.stages[0]
    scale = atol + y.abs() * rtol
    d0, d1 = float(_rms(y / scale)), float(_rms(f0 / scale))
    interval = abs(t1 - t0)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, interval)
    direction = 1.0 if t1 > t0 else -1.0
    y1 = _combine(y, field.stages, [1.0], direction * h0, out=torch.empty_like(y))
    f1 = field(y1, t0 + direction * h0, 1)
    d2 = float(_rms((f1 - f0) / scale)) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1, interval)
