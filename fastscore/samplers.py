"""Samplers: Langevin, NCSN annealed Langevin, score-SDE predictor-corrector and the
probability-flow ODE, each step ONE fused op from fastscore.ops.

Conventions (SPEC "Samplers"):
- ``score_fn(x, t)``: x [B, ...], t a [B] tensor (sigma for sigma-indexed samplers,
  time for SDE samplers), returns the score shaped like x.
- ``seed`` fixes a whole run: the op of fused step k draws its noise under
  ``step_seed(seed, k)`` (SplitMix64, a pure integer function), the prior under ``seed``.
  ``offset`` (rows) is passed to every op, so rows [a, b) sampled with offset a equal
  rows [a, b) of one run over the whole batch (except under the "batch" step-size rule
  of the Langevin corrector, whose step size is a batch mean: use
  ``step_size_mode="per_sample"`` to shard it).
- Schedules are turned into host floats once, before the loop: no ``.item()`` or
  branch on device values per step (the adaptive ODE solver makes one host decision
  per step, accept or reject).
- ``callback(i, x)`` after each step (x_mean where the sampler has one is not passed);
  ``progress=True`` shows a tqdm bar when tqdm is installed.
"""

from __future__ import annotations

import math

import torch

from fastscore import ops
from fastscore.sde import SDE, VESDE, VPSDE, SubVPSDE

step_seed = ops.derive_seed


def _progress(n: int, show: bool, desc: str):
    if show:
        from fastscore._optional import require

        return require("tqdm.auto", "progress=True (a progress bar)").trange(n, desc=desc)
    return range(n)


def _check_score_fn(score_fn):
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")


def _check_x0(x0):
    if not isinstance(x0, torch.Tensor) or x0.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x0 must be a float32 or float64 tensor, got {getattr(x0, 'dtype', type(x0).__name__)}")
    if x0.dim() == 0:
        raise ValueError("x0 must have a batch dimension [B, ...]")


def _check_count(v, name, minimum=1):
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")


def _check_positive(v, name, allow_zero=False):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v >= 0 if allow_zero else v > 0):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {v!r}")


def _score(score_fn, x, t):
    s = score_fn(x, t)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got "
                         f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
    return s if s.dtype == x.dtype else s.to(x.dtype)


# --------------------------------------------------------------------------- Langevin


@torch.no_grad()
def langevin(score_fn, x0, step_size, n_steps, seed=0, offset=0, t=None, callback=None, progress=False):
    """Unadjusted Langevin: x <- x + eps*score(x, t) + sqrt(2 eps)*z, ``n_steps`` times.
    ``t`` is what score_fn receives (a [B] tensor; default zeros). Returns the final x."""
    _check_score_fn(score_fn)
    _check_x0(x0)
    _check_positive(step_size, "step_size")
    _check_count(n_steps, "n_steps", 0)
    x = x0.clone()
    t = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) if t is None else t
    for k in _progress(n_steps, progress, "langevin"):
        ops.langevin_step_(x, _score(score_fn, x, t), float(step_size), seed=step_seed(seed, k), offset=offset)
        if callback is not None:
            callback(k, x)
    return x


@torch.no_grad()
def annealed_langevin(score_fn, x0, sigmas, n_steps_each=100, step_lr=2e-5, seed=0, offset=0, denoise=False,
                      callback=None, progress=False):
    """NCSN's annealed Langevin dynamics: for each sigma_i, n_steps_each Langevin steps with
    alpha_i = step_lr * sigma_i^2 / sigma_L^2 on score_fn(x, sigma_i). ``denoise=True``
    adds NCSNv2's final x + sigma_L^2 * score(x, sigma_L). Returns the final x."""
    _check_score_fn(score_fn)
    _check_x0(x0)
    sig = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).tolist()]
    if not sig or any(not s > 0 for s in sig):
        raise ValueError("sigmas must be a non-empty sequence of positive noise levels")
    _check_count(n_steps_each, "n_steps_each")
    _check_positive(step_lr, "step_lr")
    x = x0.clone(memory_format=torch.contiguous_format)
    B = x.shape[0]
    ts = [torch.full((B,), s, dtype=x.dtype, device=x.device) for s in sig]
    k = 0
    for i in _progress(len(sig), progress, "annealed_langevin"):
        alpha = step_lr * (sig[i] / sig[-1]) ** 2
        for _ in range(n_steps_each):
            ops.langevin_step_(x, _score(score_fn, x, ts[i]), alpha, seed=step_seed(seed, k), offset=offset)
            k += 1
            if callback is not None:
                callback(k - 1, x)
    if denoise:
        ops.step_(x, _score(score_fn, x, ts[-1]), 1.0, sig[-1] ** 2, 0.0)
    return x


# --------------------------------------------------------------------------- predictor-corrector

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "ancestral")
CORRECTORS = ("langevin", "ald")


def _predictor_table(sde: SDE, name: str, t: torch.Tensor) -> list[tuple[float, float, float]]:
    """(a, b, c) of x <- a*x + b*score + c*z for each time in t, written from score_sde's
    predictors with the drift's linear form f(x, t) = f_t x. t is score_sde's float32
    grid, so discrete-schedule indices match score_sde's exactly."""
    n = sde.N
    if name == "euler_maruyama":  # x + [f x - g^2 s] dt + g sqrt(|dt|) z with dt = -1/N
        f, g = sde.drift_coef(t), sde.diffusion_coef(t)
        a, b, c = 1.0 - f / n, g**2 / n, g / math.sqrt(n)
    elif name == "reverse_diffusion":  # x - [f_i x - G_i^2 s] + G_i z
        f, g = sde.discretize_coef(t)
        a, b, c = 1.0 - f, g**2, g
    elif name == "ancestral":
        if isinstance(sde, VESDE):
            sigma, adjacent = sde.adjacent_sigmas(t)
            a = torch.ones_like(t)
            b = sigma**2 - adjacent**2
            c = torch.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
        elif type(sde) is VPSDE:
            beta = sde.discrete_betas[sde.timestep(t)]
            a, b, c = 1.0 / torch.sqrt(1.0 - beta), beta / torch.sqrt(1.0 - beta), torch.sqrt(beta)
        else:
            raise ValueError(f"predictor='ancestral' supports VESDE and VPSDE (as score_sde), got {type(sde).__name__}")
    else:
        raise ValueError(f"predictor must be one of {PREDICTORS} or None, got {name!r}")
    return list(zip(a.tolist(), b.tolist(), c.tolist()))


def _corrector_alphas(sde: SDE, t: torch.Tensor) -> list[float]:
    """score_sde's alpha: the VP alphas at t's timestep, 1 for VE."""
    if isinstance(sde, VPSDE):
        return sde.alphas[sde.timestep(t)].tolist()
    return [1.0] * len(t)


def _ald_table(sde: SDE, t: torch.Tensor, snr: float) -> list[tuple[float, float, float]]:
    """AnnealedLangevinDynamics: eps = (snr * std_t)^2 * 2 * alpha, x + eps s + sqrt(2 eps) z."""
    std = sde.marginal_coef(t)[1]
    alpha = torch.tensor(_corrector_alphas(sde, t), dtype=t.dtype)
    eps = (snr * std) ** 2 * 2 * alpha
    return list(zip([1.0] * len(t), eps.tolist(), torch.sqrt(eps * 2).tolist()))


def _t_grid(t, sde: SDE) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)[:1].cpu()
    if not (0 <= float(t[0]) <= sde.T):
        raise ValueError(f"t must be in [0, T={sde.T}], got {float(t[0])}")
    return t


def predictor_step_(x, score, sde, t, predictor="reverse_diffusion", seed=0, offset=0, x_mean=None, noise=None):
    """One predictor step of score_sde in place at time ``t`` (a float, shared by the
    batch): x <- a x + b score + c z as one fused op; x_mean gets a x + b score."""
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    a, b, c = _predictor_table(sde, predictor, _t_grid(t, sde))[0]
    return ops.step_(x, score, a, b, c, seed=seed, offset=offset, x_mean=x_mean, noise=noise)


def corrector_step_(x, score, sde, t, corrector="langevin", snr=0.16, seed=0, offset=0, step_size_mode="batch",
                    x_mean=None, noise=None):
    """One corrector step of score_sde in place at time ``t``: "langevin" (SNR rule) or
    "ald" (annealed Langevin dynamics), as one fused op."""
    t = _t_grid(t, sde)
    if corrector == "langevin":
        return ops.langevin_corrector_(x, score, float(snr), seed=seed, offset=offset, alpha=_corrector_alphas(sde, t)[0],
                                       step_size_mode=step_size_mode, x_mean=x_mean, noise=noise)
    if corrector == "ald":
        a, b, c = _ald_table(sde, t, float(snr))[0]
        return ops.step_(x, score, a, b, c, seed=seed, offset=offset, x_mean=x_mean, noise=noise)
    raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")


def _check_sde_args(score_fn, sde, shape, eps):
    _check_score_fn(score_fn)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a fastscore.sde.SDE (VESDE, VPSDE, SubVPSDE), got {type(sde).__name__}")
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 1 or any(
            not isinstance(s, int) or s < 0 for s in shape):
        raise ValueError(f"shape must be a tuple of non-negative ints [B, ...], got {shape!r}")
    if not (isinstance(eps, (int, float)) and 0 < eps < sde.T):
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps!r}")


@torch.no_grad()
def pc_sample(score_fn, sde, shape, predictor="reverse_diffusion", corrector="langevin", snr=0.16,
              n_corrector_steps=1, denoise=True, eps=1e-3, seed=0, offset=0, step_size_mode="batch",
              device="cpu", dtype=torch.float32, x_init=None, callback=None, progress=False):
    """score_sde's predictor-corrector sampler: from the prior at T down to ``eps`` over
    sde.N steps, each step ``n_corrector_steps`` corrector steps then one predictor step,
    every one a single fused op. Returns x, or the last step's noise-free mean x_mean
    when ``denoise`` (score_sde's default). ``x_init`` replaces the prior draw."""
    _check_sde_args(score_fn, sde, shape, eps)
    if predictor is not None and predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS} or None, got {predictor!r}")
    if corrector is not None and corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS} or None, got {corrector!r}")
    _check_count(n_corrector_steps, "n_corrector_steps", 0)
    _check_positive(snr, "snr", allow_zero=True)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if x_init is None:
        x = sde.prior_sampling(tuple(shape), seed=seed, offset=offset, dtype=dtype, device=device)
    else:
        _check_x0(x_init)
        x = x_init.clone()
    timesteps = torch.linspace(sde.T, eps, sde.N, dtype=torch.float32)  # score_sde's grid, in fp32
    pred = _predictor_table(sde, predictor, timesteps) if predictor is not None else None
    corr_alpha = _corrector_alphas(sde, timesteps) if corrector == "langevin" else None
    corr_ald = _ald_table(sde, timesteps, snr) if corrector == "ald" else None
    x_mean = torch.empty_like(x) if denoise else None
    B = x.shape[0]
    vec_ts = list(timesteps.to(device=x.device, dtype=x.dtype)[:, None].expand(sde.N, B))  # views, made once
    snr = float(snr)
    k = 0
    for i in _progress(sde.N, progress, "pc_sample"):
        vec_t = vec_ts[i]
        last = i == sde.N - 1
        for j in range(n_corrector_steps if corrector is not None else 0):
            s = _score(score_fn, x, vec_t)
            mean_out = x_mean if (last and predictor is None and j == n_corrector_steps - 1) else None
            if corr_alpha is not None:
                ops.langevin_corrector_(x, s, snr, seed=step_seed(seed, k), offset=offset,
                                        alpha=corr_alpha[i], step_size_mode=step_size_mode, x_mean=mean_out)
            else:
                a, b, c = corr_ald[i]
                ops.step_(x, s, a, b, c, seed=step_seed(seed, k), offset=offset, x_mean=mean_out)
            k += 1
        if pred is not None:
            a, b, c = pred[i]
            ops.step_(x, _score(score_fn, x, vec_t), a, b, c, seed=step_seed(seed, k), offset=offset,
                      x_mean=x_mean if last else None)
            k += 1
        if callback is not None:
            callback(i, x)
    if denoise and x_mean is not None and (predictor is not None or (corrector is not None and n_corrector_steps)):
        return x_mean
    return x


def _predictor_only(name):
    def sample(score_fn, sde, shape, denoise=True, eps=1e-3, seed=0, offset=0, device="cpu", dtype=torch.float32,
               x_init=None, callback=None, progress=False):
        return pc_sample(score_fn, sde, shape, predictor=name, corrector=None, denoise=denoise, eps=eps, seed=seed,
                         offset=offset, device=device, dtype=dtype, x_init=x_init, callback=callback,
                         progress=progress)

    sample.__name__ = name
    sample.__doc__ = (f"score_sde's {name} predictor alone over sde.N steps (pc_sample with corrector=None); "
                      "returns x, or the last step's mean when ``denoise``.")
    return sample


euler_maruyama = _predictor_only("euler_maruyama")
reverse_diffusion = _predictor_only("reverse_diffusion")
ancestral = _predictor_only("ancestral")


# --------------------------------------------------------------------------- probability-flow ODE

ODE_METHODS = ("rk45", "heun", "euler")

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
        return ops.update(y, _score(self.score_fn, y, t_vec), f, -0.5 * g2, out=self.stages[out_stage])


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


@torch.no_grad()
def ode_sample(score_fn, sde, shape, method="rk45", rtol=1e-5, atol=1e-5, seed=0, offset=0, eps=1e-3,
               n_steps=None, device="cpu", dtype=torch.float32, x_init=None, callback=None, return_nfe=False):
    """Probability-flow ODE from the prior at T down to ``eps``, solved on the tensor's device.
    "rk45": adaptive Dormand-Prince with scipy's RK45 step control and one batched RMS
    error norm over the whole batch (one host decision per attempted step); "heun" and
    "euler": ``n_steps`` (default sde.N) uniform steps. Returns x (and the number of
    score evaluations with ``return_nfe``)."""
    _check_sde_args(score_fn, sde, shape, eps)
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    _check_positive(rtol, "rtol")
    _check_positive(atol, "atol")
    if x_init is None:
        x = sde.prior_sampling(tuple(shape), seed=seed, offset=offset, dtype=dtype, device=device)
    else:
        _check_x0(x_init)
        x = x_init.clone(memory_format=torch.contiguous_format)
    if method == "rk45":
        x, nfe = solve_rk45(ProbabilityFlow(score_fn, sde, x, 7), x, sde.T, eps, rtol, atol, callback)
    else:
        n = sde.N if n_steps is None else n_steps
        _check_count(n, "n_steps")
        x, nfe = _solve_fixed(score_fn, sde, x, sde.T, eps, n, method, callback)
    return (x, nfe) if return_nfe else x


def _solve_fixed(score_fn, sde, x, t0, t1, n, method, callback):
    field = ProbabilityFlow(score_fn, sde, x, 2)
    h = (t1 - t0) / n
    y_euler = torch.empty_like(x)
    for i in range(n):
        t = t0 + i * h
        field(x, t, 0)
        if method == "euler":
            _combine(x, field.stages, [1.0], h, out=x)
        else:  # Heun: trapezoid of the slopes at t and at the Euler point
            _combine(x, field.stages, [1.0], h, out=y_euler)
            field(y_euler, t + h, 1)
            _combine(x, field.stages, [0.5, 0.5], h, out=x)
        if callback is not None:
            callback(i, x)
    return x, field.nfe


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
