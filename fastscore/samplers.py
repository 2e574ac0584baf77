"""Samplers: Langevin, NCSN annealed Langevin, score-SDE predictor-corrector and the
probability-flow ODE, each step ONE fused op from fastscore.ops; and ``capture``, which
replays a whole sampling run as one CUDA graph with fresh noise per seed.

Conventions (SPEC "Samplers", "Capturable sampling"):
- ``score_fn(x, t)``: x [B, ...], t a [B] tensor (sigma for sigma-indexed samplers, time
  for SDE samplers), returns the score shaped like x.
- ``seed`` fixes a whole run: an int, or a one-element int64 tensor on the data's device.
  The op of fused step k draws its noise under ``derive_seed(seed, k)`` (SplitMix64, a pure
  integer function; ``ops.derive_seeds`` makes the same seeds on the device), the prior
  under ``seed``. An int seed and the same seed as a tensor give the same samples.
  ``offset`` (rows) is passed to every op, so rows [a, b) sampled with offset a equal rows
  [a, b) of one run over the whole batch (except under the "batch" step-size rule of the
  Langevin corrector, whose step size is a batch mean: use ``step_size_mode="per_sample"``).
- Device state: every schedule, coefficient table and step seed is built once, before the
  loop, by torch ops on the data's device (SDE schedules are copied there once and kept), and
  the loop passes views of them to the fused ops. No host read of device data happens inside
  a run: every sampler but the adaptive rk45 runs to completion on the `meta` device (rk45
  makes one accept/reject decision per step on the host). On the CPU the tables are read as
  Python floats (host memory), the cheapest form for the eager C++ door.
- ``callback(i, x)`` after each step; ``progress=True`` shows a tqdm bar.
"""

from __future__ import annotations

import math

import torch

from fastscore import _checks, ops
from fastscore._common import derive_seed, is_int, seed_bits
from fastscore._ode import ProbabilityFlow, solve_rk45
from fastscore.sde import SDE, VESDE, VPSDE

step_seed = derive_seed  # the seed of step k of a run: derive_seed(seed, k)

__all__ = ["langevin", "annealed_langevin", "pc_sample", "euler_maruyama", "reverse_diffusion", "ancestral",
           "ode_sample", "predictor_step_", "corrector_step_", "capture", "step_seed"]


def _progress(n: int, show: bool, desc: str):
    if show:
        from fastscore._optional import require

        return require("tqdm.auto", "progress=True (a progress bar)").trange(n, desc=desc)
    return range(n)


# --------------------------------------------------------------------------- device state


def _on_host(device) -> bool:
    """CPU data outside tracing: tables and seeds are read as Python numbers (host memory)."""
    return torch.device(device).type == "cpu" and not torch.compiler.is_compiling()


def _rows(table: torch.Tensor) -> list:
    """A [N, k] table as N per-step tuples: Python floats on the host, else 0-d views."""
    if _on_host(table.device):
        return [tuple(r) for r in table.tolist()]
    return [tuple(row.unbind()) for row in table.unbind()]


def _step_seeds(seed, n: int, device) -> list:
    """The seeds of steps 0 .. n-1: ints for an int seed; for a tensor seed, derived on its
    device (ops.derive_seeds) and passed as views (read back only on the host)."""
    if isinstance(seed, torch.Tensor):
        _checks.seed(seed, device)
        seeds = ops.derive_seeds(seed.reshape(()), n)
        return seeds.tolist() if _on_host(seeds.device) else list(seeds.unbind())
    if not is_int(seed):
        raise TypeError(f"seed must be an int or a one-element integer tensor, got {type(seed).__name__}")
    return [derive_seed(seed, k) for k in range(n)]


def _score(score_fn, x, t):
    return _checks.scored(score_fn, x, t, cast=True)


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


# --------------------------------------------------------------------------- Langevin


@torch.no_grad()
def langevin(score_fn, x0, step_size, n_steps, seed=0, offset=0, t=None, callback=None, progress=False):
    """Unadjusted Langevin: x <- x + eps*score(x, t) + sqrt(2 eps)*z, ``n_steps`` times.
    ``t`` is what score_fn receives (a [B] tensor; default zeros). Returns the final x."""
    _checks.callable_(score_fn, "score_fn", "score_fn(x, t)")
    _check_x0(x0)
    _check_positive(step_size, "step_size")
    _check_count(n_steps, "n_steps", 0)
    x = x0.clone()
    t = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) if t is None else t
    seeds = _step_seeds(seed, n_steps, x.device)
    for k in _progress(n_steps, progress, "langevin"):
        ops.langevin_step_(x, _score(score_fn, x, t), float(step_size), seed=seeds[k], offset=offset)
        if callback is not None:
            callback(k, x)
    return x


def _noise_levels(sigmas, device) -> torch.Tensor:
    """sigmas as a float64 [L] tensor on ``device`` (checked where it is host data)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    if sig.dim() != 1 or sig.numel() == 0 or (_on_host(sig.device) and not bool((sig > 0).all())):
        raise ValueError("sigmas must be a non-empty sequence of positive noise levels")
    return sig.to(device)


@torch.no_grad()
def annealed_langevin(score_fn, x0, sigmas, n_steps_each=100, step_lr=2e-5, seed=0, offset=0, denoise=False,
                      callback=None, progress=False):
    """NCSN's annealed Langevin dynamics: for each sigma_i, n_steps_each Langevin steps with
    alpha_i = step_lr * sigma_i^2 / sigma_L^2 on score_fn(x, sigma_i). ``denoise=True``
    adds NCSNv2's final x + sigma_L^2 * score(x, sigma_L). Returns the final x."""
    _checks.callable_(score_fn, "score_fn", "score_fn(x, t)")
    _check_x0(x0)
    sig = _noise_levels(sigmas, x0.device)
    _check_count(n_steps_each, "n_steps_each")
    _check_positive(step_lr, "step_lr")
    x = x0.clone(memory_format=torch.contiguous_format)
    L, B = sig.shape[0], x.shape[0]
    ratio = sig / sig[-1]
    alpha = step_lr * (ratio * ratio)
    steps = _rows(torch.stack([torch.ones_like(alpha), alpha, torch.sqrt(2.0 * alpha)], 1))  # (1, alpha, sqrt(2 alpha))
    levels = sig.to(x.dtype)[:, None].expand(L, B).unbind()  # the [B] sigma score_fn sees, views
    seeds = _step_seeds(seed, L * n_steps_each, x.device)
    k = 0
    for i in _progress(L, progress, "annealed_langevin"):
        a, b, c = steps[i]
        for _ in range(n_steps_each):
            ops.step_(x, _score(score_fn, x, levels[i]), a, b, c, seed=seeds[k], offset=offset)
            k += 1
            if callback is not None:
                callback(k - 1, x)
    if denoise:  # NCSNv2: x + sigma_L^2 * score(x, sigma_L), no noise
        last = _rows((sig[-1:] * sig[-1:])[:, None])[0][0]
        ops.step_(x, _score(score_fn, x, levels[-1]), 1.0, last, 0.0)
    return x


# --------------------------------------------------------------------------- predictor-corrector

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "ancestral")
CORRECTORS = ("langevin", "ald")


def _predictor_table(sde: SDE, name: str, t: torch.Tensor) -> torch.Tensor:
    """[len(t), 3]: (a, b, c) of x <- a*x + b*score + c*z at each time in t, written from
    score_sde's predictors with the drift's linear form f(x, t) = f_t x. t is score_sde's
    float32 grid, so discrete-schedule indices match score_sde's exactly."""
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
            beta = sde.on("discrete_betas", t.device)[sde.timestep(t)]
            a, b, c = 1.0 / torch.sqrt(1.0 - beta), beta / torch.sqrt(1.0 - beta), torch.sqrt(beta)
        else:
            raise ValueError(f"predictor='ancestral' supports VESDE and VPSDE (as score_sde), got {type(sde).__name__}")
    else:
        raise ValueError(f"predictor must be one of {PREDICTORS} or None, got {name!r}")
    return torch.stack([torch.as_tensor(v, dtype=t.dtype, device=t.device).expand(t.shape) for v in (a, b, c)], 1)


def _corrector_alphas(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """score_sde's alpha: the VP alphas at t's timestep, 1 for VE."""
    if isinstance(sde, VPSDE):
        return sde.on("alphas", t.device)[sde.timestep(t)]
    return torch.ones_like(t)


def _ald_table(sde: SDE, t: torch.Tensor, snr: float) -> torch.Tensor:
    """AnnealedLangevinDynamics: eps = (snr * std_t)^2 * 2 * alpha, x + eps s + sqrt(2 eps) z."""
    std = sde.marginal_coef(t)[1]
    eps = (snr * std) ** 2 * 2 * _corrector_alphas(sde, t).to(t.dtype)
    return torch.stack([torch.ones_like(eps), eps, torch.sqrt(eps * 2)], 1)


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
    a, b, c = _rows(_predictor_table(sde, predictor, _t_grid(t, sde)))[0]
    return ops.step_(x, score, a, b, c, seed=seed, offset=offset, x_mean=x_mean, noise=noise)


def corrector_step_(x, score, sde, t, corrector="langevin", snr=0.16, seed=0, offset=0, step_size_mode="batch",
                    x_mean=None, noise=None):
    """One corrector step of score_sde in place at time ``t``: "langevin" (SNR rule) or
    "ald" (annealed Langevin dynamics), as one fused op."""
    t = _t_grid(t, sde)
    if corrector == "langevin":
        return ops.langevin_corrector_(x, score, float(snr), seed=seed, offset=offset,
                                       alpha=float(_corrector_alphas(sde, t)[0]), step_size_mode=step_size_mode,
                                       x_mean=x_mean, noise=noise)
    if corrector == "ald":
        a, b, c = _rows(_ald_table(sde, t, float(snr)))[0]
        return ops.step_(x, score, a, b, c, seed=seed, offset=offset, x_mean=x_mean, noise=noise)
    raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")


def _check_sde_args(score_fn, sde, shape, eps):
    _checks.callable_(score_fn, "score_fn", "score_fn(x, t)")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a fastscore.sde.SDE (VESDE, VPSDE, SubVPSDE), got {type(sde).__name__}")
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 1 or any(
            not isinstance(s, int) or s < 0 for s in shape):
        raise ValueError(f"shape must be a tuple of non-negative ints [B, ...], got {shape!r}")
    if not (isinstance(eps, (int, float)) and 0 < eps < sde.T):
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps!r}")


def _initial_x(sde, shape, seed, offset, device, dtype, x_init):
    if x_init is None:
        return sde.prior_sampling(tuple(shape), seed=seed, offset=offset, dtype=dtype, device=device)
    _check_x0(x_init)
    return x_init.clone(memory_format=torch.contiguous_format)


@torch.no_grad()
def pc_sample(score_fn, sde, shape, predictor="reverse_diffusion", corrector="langevin", snr=0.16,
              n_corrector_steps=1, denoise=True, eps=1e-3, seed=0, offset=0, step_size_mode="batch",
              device="cpu", dtype=torch.float32, x_init=None, callback=None, progress=False):
    """score_sde's predictor-corrector sampler: from the prior at T down to ``eps`` over
    sde.N steps, each step ``n_corrector_steps`` corrector steps then one predictor step,
    every one a single fused op. Returns x, or (``denoise``, score_sde's default) the last
    update's noise-free mean. ``x_init`` replaces the prior draw."""
    _check_sde_args(score_fn, sde, shape, eps)
    if predictor is not None and predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS} or None, got {predictor!r}")
    if corrector is not None and corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS} or None, got {corrector!r}")
    _check_count(n_corrector_steps, "n_corrector_steps", 0)
    _check_positive(snr, "snr", allow_zero=True)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if step_size_mode not in ops.STEP_SIZE_MODES:
        raise ValueError(f"step_size_mode must be one of {ops.STEP_SIZE_MODES}, got {step_size_mode!r}")
    x = _initial_x(sde, shape, seed, offset, device, dtype, x_init)
    N, B = sde.N, x.shape[0]
    n_corr = n_corrector_steps if corrector is not None else 0
    # Device state, once: score_sde's float32 time grid, the [B] times score_fn sees, the tables.
    timesteps = torch.linspace(sde.T, eps, N, dtype=torch.float32, device=x.device)
    times = timesteps.to(x.dtype)[:, None].expand(N, B).unbind()
    pred = _rows(_predictor_table(sde, predictor, timesteps)) if predictor is not None else None
    if corrector == "langevin":
        corr = _rows(_corrector_alphas(sde, timesteps).to(torch.float64)[:, None])
    elif corrector == "ald":
        corr = _rows(_ald_table(sde, timesteps, float(snr)))
    seeds = _step_seeds(seed, N * (n_corr + (predictor is not None)), x.device)
    # With denoise, the last update of the run also writes its mean: that is the sample.
    x_mean = torch.empty_like(x) if denoise and (predictor is not None or n_corr) else None
    k = 0
    for i in _progress(N, progress, "pc_sample"):
        last = i == N - 1
        for j in range(n_corr):
            s = _score(score_fn, x, times[i])
            mean = x_mean if last and predictor is None and j == n_corr - 1 else None
            if corrector == "langevin":
                ops.langevin_corrector_(x, s, float(snr), seed=seeds[k], offset=offset, alpha=corr[i][0],
                                        step_size_mode=step_size_mode, x_mean=mean)
            else:
                a, b, c = corr[i]
                ops.step_(x, s, a, b, c, seed=seeds[k], offset=offset, x_mean=mean)
            k += 1
        if predictor is not None:
            a, b, c = pred[i]
            ops.step_(x, _score(score_fn, x, times[i]), a, b, c, seed=seeds[k], offset=offset,
                      x_mean=x_mean if last else None)
            k += 1
        if callback is not None:
            callback(i, x)
    return x_mean if x_mean is not None else x


def euler_maruyama(score_fn, sde, shape, denoise=True, eps=1e-3, seed=0, offset=0, device="cpu", dtype=torch.float32,
                   x_init=None, callback=None, progress=False):
    """score_sde's Euler-Maruyama predictor alone over sde.N steps (pc_sample with
    corrector=None); returns x, or the last step's mean when ``denoise``."""
    return pc_sample(score_fn, sde, shape, predictor="euler_maruyama", corrector=None, denoise=denoise, eps=eps,
                     seed=seed, offset=offset, device=device, dtype=dtype, x_init=x_init, callback=callback,
                     progress=progress)


def reverse_diffusion(score_fn, sde, shape, denoise=True, eps=1e-3, seed=0, offset=0, device="cpu",
                      dtype=torch.float32, x_init=None, callback=None, progress=False):
    """score_sde's reverse-diffusion predictor alone over sde.N steps (pc_sample with
    corrector=None); returns x, or the last step's mean when ``denoise``."""
    return pc_sample(score_fn, sde, shape, predictor="reverse_diffusion", corrector=None, denoise=denoise, eps=eps,
                     seed=seed, offset=offset, device=device, dtype=dtype, x_init=x_init, callback=callback,
                     progress=progress)


def ancestral(score_fn, sde, shape, denoise=True, eps=1e-3, seed=0, offset=0, device="cpu", dtype=torch.float32,
              x_init=None, callback=None, progress=False):
    """score_sde's ancestral-sampling predictor alone over sde.N steps (VE and VP SDEs);
    returns x, or the last step's mean when ``denoise``."""
    return pc_sample(score_fn, sde, shape, predictor="ancestral", corrector=None, denoise=denoise, eps=eps,
                     seed=seed, offset=offset, device=device, dtype=dtype, x_init=x_init, callback=callback,
                     progress=progress)


# --------------------------------------------------------------------------- probability-flow ODE

ODE_METHODS = ("rk45", "heun", "euler")


@torch.no_grad()
def ode_sample(score_fn, sde, shape, method="rk45", rtol=1e-5, atol=1e-5, seed=0, offset=0, eps=1e-3,
               n_steps=None, device="cpu", dtype=torch.float32, x_init=None, callback=None, return_nfe=False):
    """Probability-flow ODE dx/dt = f_t x - g_t^2 / 2 * score(x, t) from the prior at T down to
    ``eps``, solved on the tensor's device. "rk45": adaptive Dormand-Prince with scipy's RK45
    step control and one batched RMS error norm (one host decision per attempted step);
    "heun" and "euler": ``n_steps`` (default sde.N) uniform steps, one (Euler) or two (Heun)
    fused ops per step, nothing read on the host. Returns x (and the number of score
    evaluations with ``return_nfe``)."""
    _check_sde_args(score_fn, sde, shape, eps)
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    _check_positive(rtol, "rtol")
    _check_positive(atol, "atol")
    x = _initial_x(sde, shape, seed, offset, device, dtype, x_init)
    if method == "rk45":
        x, nfe = solve_rk45(ProbabilityFlow(score_fn, sde, x, 7), x, sde.T, eps, rtol, atol, callback)
    else:
        n = sde.N if n_steps is None else n_steps
        _check_count(n, "n_steps")
        x, nfe = _solve_fixed(score_fn, sde, x, sde.T, eps, n, method, callback)
    return (x, nfe) if return_nfe else x


def _solve_fixed(score_fn, sde, x, t0, t1, n, method, callback):
    """Uniform steps of size h = (t1 - t0)/n. Euler: x <- (1 + h f) x - (h g^2/2) s. Heun:
    y = x + h d1 (d1 = f x - g^2/2 s, kept as a second output), then
    x <- x + h/2 d1 + h/2 (f' y - g'^2/2 s') — each one fused op, the tables made once."""
    h = (t1 - t0) / n
    B = x.shape[0]
    t = t0 + h * torch.arange(n + 1, dtype=torch.float64, device=x.device)
    f, g2 = sde.drift_coef(t), sde.diffusion_coef(t) ** 2
    times = t.to(x.dtype)[:, None].expand(n + 1, B).unbind()
    if method == "euler":
        steps = _rows(torch.stack([1.0 + h * f, -0.5 * h * g2], 1)[:n])
        for i in range(n):
            a, b = steps[i]
            ops.step_(x, _score(score_fn, x, times[i]), a, b, 0.0)
            if callback is not None:
                callback(i, x)
        return x, n
    zero = torch.zeros_like(f)
    first = _rows(torch.stack([1.0 + h * f, -0.5 * h * g2, zero, f, -0.5 * g2, zero], 1)[:n])
    second = _rows(torch.stack([torch.ones_like(f), zero + 0.5 * h, 0.5 * h * f, -0.25 * h * g2, zero], 1)[1:])
    y, d1 = torch.empty_like(x), torch.empty_like(x)
    for i in range(n):
        c = first[i]
        ops.combine(x, [_score(score_fn, x, times[i])], c[:3], out=y, out2=d1, coefs2=c[3:])
        ops.combine(x, [d1, y, _score(score_fn, y, times[i + 1])], second[i], out=x)
        if callback is not None:
            callback(i, x)
    return x, 2 * n


# --------------------------------------------------------------------------- capture


class CaptureError(RuntimeError):
    """A sampling run could not be captured into a CUDA graph; the message says why."""


class CapturedRun:
    """``run(seed) -> x``: the run of ``sampler(*args, **kwargs, seed=seed)`` with everything
    but the seed fixed (see ``capture``)."""

    def __init__(self, sampler, args, kwargs):
        if not callable(sampler):
            raise TypeError(f"sampler must be callable, got {type(sampler).__name__}")
        if "seed" in kwargs:
            raise ValueError("seed is the argument of run(seed); do not fix it in capture()")
        self.sampler, self.args, self.kwargs = sampler, args, kwargs
        self.device = _device_of(args, kwargs)
        self.seed = torch.zeros((), dtype=torch.int64, device=self.device)  # the graph reads it
        self.graph, self.out, self.pool = None, None, None

    def _run(self):
        return self.sampler(*self.args, **self.kwargs, seed=self.seed)

    def __call__(self, seed) -> torch.Tensor:
        if isinstance(seed, torch.Tensor):
            self.seed.copy_(seed.reshape(()))
        elif is_int(seed):
            self.seed.fill_(seed_bits(seed))
        else:
            raise TypeError(f"seed must be an int or a one-element integer tensor, got {type(seed).__name__}")
        if self.device.type != "cuda":
            return self._run()  # the same op sequence, run eagerly
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.out

    def _capture(self):
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up: kernels compiled, schedules on the device, caches filled
            for _ in range(2):
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph, pool=self.pool):
                self.out = self._run()
        except Exception as e:  # noqa: BLE001 - reworded below, the original attached
            self.graph = None
            raise CaptureError(_explain_capture_failure(e)) from e
        if not isinstance(self.out, torch.Tensor):
            raise CaptureError("the sampler must return a tensor")


def _device_of(args, kwargs) -> torch.device:
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device(kwargs.get("device", "cpu"))


def _explain_capture_failure(e: Exception) -> str:
    text = str(e)
    if "operation not permitted when stream is capturing" in text or "StreamCaptureUnsupported" in text \
            or "capturing" in text.lower():
        why = ("the run made a host synchronisation or a host-to-device copy while capturing: a score "
               "function that calls .item()/.tolist()/.cpu(), prints a CUDA tensor, branches on a tensor's "
               "value (data-dependent control flow), or uses a CPU tensor (e.g. sigmas or a table passed as a "
               "list or CPU tensor: pass them on the GPU)")
    else:
        why = "the run failed while being captured"
    return f"fastscore.samplers.capture: {why}. Original error: {type(e).__name__}: {text}"


def capture(sampler, *args, **kwargs) -> CapturedRun:
    """Fix every argument of ``sampler`` but the seed; returns ``run`` with ``run(seed) -> x``.

    On CUDA the first call warms up on a side stream (twice, so every lazy initialisation and
    device copy of a schedule happens outside the capture), then records the whole run —
    every step, the score model included — into one ``torch.cuda.CUDAGraph``; each call writes
    the seed into a device int64 tensor and replays the graph, so each seed gets its own noise
    with no Python and no host sync per step. The returned tensor is the graph's static
    output, overwritten by the next call (clone it to keep it). The graph's memory comes from
    its private pool (``run.pool``: None, a fresh one per capture), held as long as ``run``.
    On other devices ``run(s)`` runs the sampler eagerly with the seed as a tensor.
    Either way ``run(s)`` equals ``sampler(*args, **kwargs, seed=s)`` bit for bit.

    Raises CaptureError (with the reason) when the run cannot be captured: a host sync, a
    CPU tensor or data-dependent control flow in the score function, or tables on the host.
    """
    return CapturedRun(sampler, args, kwargs)
