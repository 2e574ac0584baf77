"""k-diffusion's samplers as fastscore drop-ins: the names, signatures, defaults and numerics
of ``k_diffusion.sampling`` (0.1.1.post1), each step ONE fused op (two for two-stage
methods), plus keyword-only ``seed`` and ``offset``.

    from fastscore import k_diffusion as K        # instead of: from k_diffusion import sampling as K
    sigmas = K.get_sigmas_karras(20, 0.03, 80.0)
    x = K.sample_dpmpp_2m(model, x, sigmas)        # model(x, sigma * s_in, **extra_args) -> denoised

What matches k-diffusion, and what is fastscore's:
* The model is a denoiser called exactly as k-diffusion calls it, ``model(x, sigma * s_in,
  **extra_args)``, at the same sigmas; ``callback`` gets k-diffusion's dict (x, i, sigma,
  sigma_hat, denoised) once per step; ``disable`` controls the tqdm bar; schedules
  (``get_sigmas_*``) are k-diffusion's expressions, bit for bit.
* Each update is the same linear combination of x, the denoised outputs (and history) and the
  noise, rearranged into one fused op with coefficients computed once before the loop from
  k-diffusion's own scalar expressions (so results equal k-diffusion's to float32 rounding;
  float64 inputs are computed in float64). The branches k-diffusion takes per step (the last
  step to sigma = 0, churn, sigma_down == 0) depend on the schedule only: they are decided
  once from a host copy of sigmas (one read, cached per sigmas tensor so a CUDA-graph capture
  of the run makes none), never by reading a device sigma inside the loop.
* Noise: with ``noise_sampler`` given it is called exactly as k-diffusion calls it. Without
  it, the noise comes from fastscore's stream under (``seed``, ``offset``): batch- and
  device-invariant and shardable by ``offset`` (rows). Where k-diffusion's default is a
  Brownian tree (``sample_dpmpp_sde``: two draws per step over nested sigma intervals), the
  stream noise is built with the same joint law (z2 = rho z1 + sqrt(1 - rho^2) xi). k-diffusion's
  euler/heun/dpm_2 draw ``randn_like`` every step even with ``s_churn = 0``; fastscore draws
  only when churn is applied.
* The input x is never modified, the model's outputs are never written, and a tensor handed
  to ``callback`` is never written afterwards (buffers are reused only without a callback).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from fastscore import ops
from fastscore.samplers import _on_host, _step_seeds

__all__ = ["get_sigmas_karras", "get_sigmas_exponential", "get_sigmas_polyexponential", "get_sigmas_vp",
           "append_zero", "get_ancestral_step", "to_d", "linear_multistep_coeff", "sample_euler",
           "sample_euler_ancestral", "sample_heun", "sample_dpm_2", "sample_dpm_2_ancestral", "sample_lms",
           "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde", "sample_dpmpp_2m", "sample_dpmpp_2m_sde",
           "sample_dpmpp_3m_sde"]


# --------------------------------------------------------------------------- k-diffusion's helpers


def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7., device='cpu'):
    """Constructs the noise schedule of Karras et al. (2022)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


def get_sigmas_exponential(n, sigma_min, sigma_max, device='cpu'):
    """Constructs an exponential noise schedule."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp()
    return append_zero(sigmas)


def get_sigmas_polyexponential(n, sigma_min, sigma_max, rho=1., device='cpu'):
    """Constructs an polynomial in log sigma noise schedule."""
    ramp = torch.linspace(1, 0, n, device=device) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return append_zero(sigmas)


def get_sigmas_vp(n, beta_d=19.9, beta_min=0.1, eps_s=1e-3, device='cpu'):
    """Constructs a continuous VP noise schedule."""
    t = torch.linspace(1, eps_s, n, device=device)
    sigmas = torch.sqrt(torch.exp(beta_d * t ** 2 / 2 + beta_min * t) - 1)
    return append_zero(sigmas)


def _append_dims(x, target_dims):
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def to_d(x, sigma, denoised):
    """Converts a denoiser output to a Karras ODE derivative."""
    return (x - denoised) / _append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta=1.):
    """Calculates the noise level (sigma_down) to step down to and the amount
    of noise to add (sigma_up) when doing an ancestral sampling step."""
    if not eta:
        return sigma_to, 0.
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _ancestral(sigma_from, sigma_to, eta):
    """get_ancestral_step over schedule vectors, with torch.minimum for the host's min."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    up = torch.minimum(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - up ** 2) ** 0.5, up


def linear_multistep_coeff(order, t, i, j):
    """k-diffusion's LMS coefficient: the integral of the j-th Lagrange basis polynomial on the
    nodes t[i], t[i-1], ... over [t[i], t[i+1]] (scipy's quad, as k-diffusion, when installed;
    else the same integral in closed form, which differs by ~1e-7 relative)."""
    if order - 1 > i:
        raise ValueError(f'Order {order} too high for step {i}')

    def fn(tau):
        prod = 1.
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    try:
        from scipy import integrate
    except ImportError:
        import numpy as np

        nodes = [float(t[i - k]) for k in range(order) if k != j]
        poly = np.poly1d([1.0])
        for node in nodes:
            poly *= np.poly1d([1.0, -node]) / (float(t[i - j]) - node)
        integral = poly.integ()
        return float(integral(float(t[i + 1])) - integral(float(t[i])))
    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


# --------------------------------------------------------------------------- the machinery


def _trange(n, disable):
    if disable is True:
        return range(n)
    try:
        from tqdm.auto import trange
    except ImportError:
        if disable is False:
            from fastscore._optional import require

            require("tqdm.auto", "disable=False (a progress bar)")
        return range(n)
    return trange(n, disable=disable)


_HOST_SIGMAS: OrderedDict = OrderedDict()  # a device sigmas tensor -> its host copy (few entries)


def _host_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """A CPU copy of the schedule, for the decisions and tables made before the loop. A device
    schedule is read once and the copy kept (keyed by the tensor's storage and version), so a
    later run of the same schedule — a CUDA-graph capture among them — reads nothing."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or sigmas.numel() < 1:
        raise ValueError("sigmas must be a 1-D tensor of noise levels (e.g. from get_sigmas_karras)")
    if sigmas.device.type == "cpu":
        return sigmas.detach()
    key = (sigmas.data_ptr(), sigmas._version, sigmas.numel(), sigmas.dtype, str(sigmas.device))
    host = _HOST_SIGMAS.get(key)
    if host is None:
        if sigmas.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("fastscore.k_diffusion: the schedule was not seen before the capture; run the "
                               "sampler once first (fastscore.samplers.capture does) or pass sigmas on the CPU")
        host = sigmas.detach().cpu()
        _HOST_SIGMAS[key] = host
        while len(_HOST_SIGMAS) > 16:
            _HOST_SIGMAS.popitem(last=False)
    return host


_PLANS: OrderedDict = OrderedDict()  # (sampler, settings, schedule[, devices]) -> its plan


def _remember(key, make):
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = make()
        while len(_PLANS) > 128:
            _PLANS.popitem(last=False)
    return plan


def _plan(run, name, settings, build):
    """A sampler's per-step plan for one schedule, built once and kept (LRU): a later call with
    the same schedule and settings — a CUDA-graph capture among them — computes, reads and
    copies nothing. ``build(host_sigmas)`` returns (rows, sigma_values): rows of Python floats
    (the decisions and coefficients, from k-diffusion's own 0-d expressions on the host copy)
    and, per step, the 0-d noise levels the model (and a noise_sampler) is shown.
    Returns (rows, coefs, sigmas): coefs are the rows where the kernels read them (Python
    floats for host data, else 0-d views of one float64 table on the data's device); sigmas
    the per-step levels as 0-d views of one tensor where ``sigmas`` lives, in its dtype."""
    host, x, sig = run.host, run.input, run.sigmas
    key = (name, settings, tuple(host.tolist()), host.dtype)
    rows, values = _remember(key, lambda: build(host))
    on_host = _on_host(x.device)

    def place():
        coefs = [tuple(r) for r in rows]
        if not on_host and rows:
            coefs = [tuple(r.unbind()) for r in torch.tensor(rows, dtype=torch.float64).to(x.device).unbind()]
        levels = []
        if values:
            table = torch.stack([torch.stack(list(v)) for v in values]).to(sig.device, sig.dtype)
            levels = [tuple(r.unbind()) for r in table.unbind()]
        return coefs, levels

    coefs, levels = _remember(key + (str(x.device), on_host, str(sig.device), sig.dtype), place)
    return rows, coefs, levels


class _Run:
    """What every sampler shares: the model call, the callback, the noise, the output buffers."""

    def __init__(self, model, x, sigmas, extra_args, callback, noise_sampler, seed, offset, n_draws):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, sigma, **extra_args), got {type(model).__name__}")
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.dim() == 0:
            raise TypeError("x must be a floating tensor [B, ...]")
        self.model, self.extra_args, self.callback = model, extra_args or {}, callback
        self.noise_sampler = noise_sampler
        self.host = _host_sigmas(sigmas)
        self.sigmas, self.input, self.offset = sigmas, x, offset
        self.s_in = x.new_ones([x.shape[0]])
        self.seeds = _step_seeds(seed, n_draws, x.device) if noise_sampler is None else None
        self.draws = 0
        self.spare = []  # buffers this run owns and may overwrite (never the input, never a callback's)

    def denoise(self, x, sigma):
        """model(x, sigma * s_in, **extra_args); sigma a 0-d tensor as k-diffusion computes it."""
        denoised = self.model(x, sigma * self.s_in, **self.extra_args)
        if not isinstance(denoised, torch.Tensor) or denoised.shape != x.shape:
            got = tuple(denoised.shape) if isinstance(denoised, torch.Tensor) else type(denoised).__name__
            raise ValueError(f"model(x, sigma) must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        if denoised.dtype != x.dtype:
            return denoised.to(x.dtype)
        if denoised.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            return denoised.clone()  # the model returned (a view of) x: a buffer this run may reuse
        return denoised

    def report(self, x, i, sigma, sigma_hat, denoised):
        if self.callback is not None:
            self.callback({'x': x, 'i': i, 'sigma': sigma, 'sigma_hat': sigma_hat, 'denoised': denoised})

    def buffer(self, x):
        """A tensor to write the next x into: one this run owns when nothing else holds it."""
        if self.callback is None and self.spare:
            return self.spare.pop()
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def release(self, t):
        """t (an x this run wrote) is no longer needed: reuse it, unless a callback saw it."""
        if self.callback is None and t is not self.input:
            self.spare.append(t)

    def noise(self, sigma, sigma_next):
        """(noise tensor or None, seed): the noise_sampler's draw, or the next stream seed."""
        if self.noise_sampler is not None:
            return self.noise_sampler(sigma, sigma_next), 0
        seed = self.seeds[self.draws]
        self.draws += 1
        return None, seed

    def combine(self, x, ys, coefs, noisy=None, out2=None, coefs2=None):
        """One fused op, a*x + sum b_k y_k (+ c z when noisy = (noise, seed)), into a fresh or
        reused buffer; coefs = [a, *b] (+ [c] when noisy)."""
        out = self.buffer(x)
        z, seed = noisy if noisy is not None else (None, 0)
        if noisy is None:
            coefs = [*coefs, 0.0]
        ops.combine(x, ys, coefs, seed=seed, offset=self.offset, out=out, noise=z, out2=out2, coefs2=coefs2)
        return out

    def step_to(self, x, new):
        """x is replaced by new: the old x may be reused."""
        self.release(x)
        return new


def _f(v) -> float:
    return float(v)


# --------------------------------------------------------------------------- samplers


def _euler_family(kind, model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise, seed,
                  offset):
    """sample_euler / sample_heun / sample_dpm_2: an optional churn, then one (Euler) or two
    (Heun, DPM-2) fused updates per step."""
    n = len(sigmas) - 1
    run = _Run(model, x, sigmas, extra_args, callback, None, seed, offset, n)

    def build(host):
        rows, levels = [], []
        for i in range(n):
            s, sn = host[i], host[i + 1]
            gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= float(s) <= s_tmax else 0.
            sh = s * (gamma + 1)
            churn = (float(gamma > 0), _f(s_noise * (sh ** 2 - s ** 2) ** 0.5) if gamma > 0 else 0.0)
            a = _f(sn / sh)
            if kind == "euler" or float(sn) == 0:  # x' = (sigma'/sigma_hat) x + (1 - sigma'/sigma_hat) D
                rows.append(churn + (a, 1 - a, 0.0, 0.0, 0.0, 0.0))
                mid = sn
            elif kind == "heun":  # x2 as Euler; x' = x_hat + (d + d2)/2 dt, x2 eliminated
                dt = _f(sn - sh)
                rows.append(churn + (a, 1 - a, a, dt / (2 * _f(sn)) - dt / _f(sh), -dt / (2 * _f(sn)), 1.0))
                mid = sn
            else:  # dpm_2: to the midpoint sigma in log space (k-diffusion's lerp), then the full step
                mid = sh.log().lerp(sn.log(), 0.5).exp()
                am, dt = _f(mid / sh), _f(sn - sh)
                rows.append(churn + (am, 1 - am, 1 + dt / _f(sh), dt * (1 / _f(mid) - 1 / _f(sh)), -dt / _f(mid),
                                     1.0))
            levels.append((sh, mid))
        return rows, levels

    rows, coefs, levels = _plan(run, kind, (s_churn, s_tmin, s_tmax, s_noise), build)
    for i in _trange(n, disable):
        _, churn, a, b, a2, b2, b3, _ = coefs[i]
        sigma_hat, sigma_mid = levels[i]
        x_hat = x
        if rows[i][0]:  # x_hat = x + s_noise sqrt(sigma_hat^2 - sigma^2) z
            x_hat = run.combine(x, [], [1.0, churn], noisy=run.noise(sigmas[i], sigmas[i + 1]))
        denoised = run.denoise(x_hat, sigma_hat)
        run.report(x_hat, i, sigmas[i], sigma_hat, denoised)
        new = run.combine(x_hat, [denoised], [a, b])
        if rows[i][-1]:  # the second stage
            x2 = new
            new = run.combine(x_hat, [denoised, run.denoise(x2, sigma_mid)], [a2, b2, b3])
            run.release(x2)
        if x_hat is not x:
            run.release(x_hat)
        x = run.step_to(x, new)
    return x


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                 s_tmax=float('inf'), s_noise=1., *, seed=0, offset=0):
    """Implements Algorithm 2 (Euler steps) from Karras et al. (2022): one fused op per step
    (and one more where churn applies)."""
    return _euler_family("euler", model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise,
                         seed, offset)


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                s_tmax=float('inf'), s_noise=1., *, seed=0, offset=0):
    """Implements Algorithm 2 (Heun steps) from Karras et al. (2022): two fused ops per step."""
    return _euler_family("heun", model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise,
                         seed, offset)


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                 s_tmax=float('inf'), s_noise=1., *, seed=0, offset=0):
    """A sampler inspired by DPM-Solver-2 and Algorithm 2 from Karras et al. (2022): two fused
    ops per step."""
    return _euler_family("dpm_2", model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise,
                         seed, offset)


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                           noise_sampler=None, *, seed=0, offset=0):
    """Ancestral sampling with Euler method steps: x' = (sigma_d/sigma) x + (1 - sigma_d/sigma) D
    + s_noise sigma_u z, one fused op."""
    n = len(sigmas) - 1
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, seed, offset, n)

    def build(host):
        down, up = _ancestral(host[:-1], host[1:], eta)
        ratios = [_f(down[i] / host[i]) for i in range(n)]
        return [(r, 1 - r, _f(s_noise * up[i]), float(host[i + 1] > 0)) for i, r in enumerate(ratios)], []

    rows, coefs, _ = _plan(run, "euler_ancestral", (eta, s_noise), build)
    for i in _trange(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(x, i, sigmas[i], sigmas[i], denoised)
        a, b, c, _ = coefs[i]
        if rows[i][-1]:  # noise unless sigma' = 0
            new = run.combine(x, [denoised], [a, b, c], noisy=run.noise(sigmas[i], sigmas[i + 1]))
        else:
            new = run.combine(x, [denoised], [a, b])
        x = run.step_to(x, new)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                           noise_sampler=None, *, seed=0, offset=0):
    """Ancestral sampling with DPM-Solver second-order steps: two fused ops per step (one, and
    no noise, where sigma_down = 0)."""
    n = len(sigmas) - 1
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, seed, offset, n)

    def build(host):
        down, up = _ancestral(host[:-1], host[1:], eta)
        rows, levels = [], []
        for i in range(n):
            s, sd = host[i], down[i]
            if float(sd) == 0:  # Euler to sigma_down = 0: x' = D, no noise
                rows.append((0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
                levels.append((s,))
                continue
            mid = s.log().lerp(sd.log(), 0.5).exp()
            am, dt = _f(mid / s), _f(sd - s)
            rows.append((am, 1 - am, 1 + dt / _f(s), dt * (1 / _f(mid) - 1 / _f(s)), -dt / _f(mid),
                         _f(s_noise * up[i]), 1.0))
            levels.append((mid,))
        return rows, levels

    rows, coefs, levels = _plan(run, "dpm_2_ancestral", (eta, s_noise), build)
    for i in _trange(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(x, i, sigmas[i], sigmas[i], denoised)
        a, b, a2, b2, b3, c, _ = coefs[i]
        new = run.combine(x, [denoised], [a, b])
        if rows[i][-1]:
            x2 = new
            denoised_2 = run.denoise(x2, levels[i][0])
            new = run.combine(x, [denoised, denoised_2], [a2, b2, b3, c], noisy=run.noise(sigmas[i], sigmas[i + 1]))
            run.release(x2)
        x = run.step_to(x, new)
    return x


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4, *, seed=0, offset=0):
    """Linear multistep: x' = x + sum_j c_j d_{i-j} with d_i = (x - D)/sigma, one fused op that
    also writes d_i as its second output: x' = (1 + c_0/sigma) x - (c_0/sigma) D +
    sum_{j>0} c_j d_{i-j}."""
    if not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"order must be an int in [1, 4], got {order!r}")
    n = len(sigmas) - 1
    run = _Run(model, x, sigmas, extra_args, callback, None, seed, offset, 0)

    def build(host):
        t = host.numpy()  # k-diffusion's sigmas_cpu: its coefficients, from the same array
        rows = []
        for i in range(n):
            cur = min(i + 1, order)
            c = [linear_multistep_coeff(cur, t, i, j) for j in range(cur)]
            rows.append(tuple(c) + (0.0,) * (order - cur) + (1.0 / float(t[i]),))
        return rows, []

    _, coefs, _ = _plan(run, "lms", (order,), build)
    ds, spare = [], []  # the last order - 1 derivatives, newest first; retired ones to reuse
    for i in _trange(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(x, i, sigmas[i], sigmas[i], denoised)
        *c, inv = coefs[i]
        c0_inv, hist = c[0] * inv, ds[:min(i + 1, order) - 1]
        d = spare.pop() if spare else torch.empty_like(x, memory_format=torch.contiguous_format)
        new = run.combine(x, [denoised, *hist], [1 + c0_inv, -c0_inv, *c[1:len(hist) + 1]], out2=d,
                          coefs2=[inv, -inv, *[0.0] * len(hist), 0.0])
        ds = [d] + ds
        if len(ds) > order - 1:
            spare.append(ds.pop())
        x = run.step_to(x, new)
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                              noise_sampler=None, *, seed=0, offset=0):
    """Ancestral sampling with DPM-Solver++(2S) second-order steps: two fused ops per step."""
    n = len(sigmas) - 1
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, seed, offset, n)

    def build(host):
        down, up = _ancestral(host[:-1], host[1:], eta)
        rows, levels = [], []
        for i in range(n):
            s, sd = host[i], down[i]
            c, noisy = _f(s_noise * up[i]), float(host[i + 1] > 0)
            if float(sd) == 0:  # Euler to sigma_down = 0: x' = D (+ noise if sigma' > 0)
                rows.append((0.0, 1.0, 0.0, 0.0, c, noisy, 0.0))
                levels.append((s,))
                continue
            t, t_next = -s.log(), -sd.log()
            h = t_next - t
            s_mid = t + h * 0.5
            rows.append((_f(s_mid.neg().exp() / t.neg().exp()), -_f((-h * 0.5).expm1()),
                         _f(t_next.neg().exp() / t.neg().exp()), -_f((-h).expm1()), c, noisy, 1.0))
            levels.append((s_mid.neg().exp(),))
        return rows, levels

    rows, coefs, levels = _plan(run, "dpmpp_2s_ancestral", (eta, s_noise), build)
    for i in _trange(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(x, i, sigmas[i], sigmas[i], denoised)
        a, b, a2, b2, c, _, _ = coefs[i]
        x2 = None
        if rows[i][-1]:
            x2 = run.combine(x, [denoised], [a, b])
            a, b, denoised = a2, b2, run.denoise(x2, levels[i][0])
        if rows[i][-2]:
            new = run.combine(x, [denoised], [a, b, c], noisy=run.noise(sigmas[i], sigmas[i + 1]))
        else:
            new = run.combine(x, [denoised], [a, b])
        if x2 is not None:
            run.release(x2)
        x = run.step_to(x, new)
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                     noise_sampler=None, r=1 / 2, *, seed=0, offset=0):
    """DPM-Solver++ (stochastic): two fused ops per step. The two draws of a step are increments
    of one Brownian path over nested sigma intervals (k-diffusion's BrownianTreeNoiseSampler);
    the stream noise gets that law from two independent normals, z2 = rho z1 + sqrt(1 - rho^2)
    xi, with z1 carried from the first fused op to the second as its second output."""
    n = len(sigmas) - 1
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, seed, offset, 2 * n)

    def build(host):
        rows, levels = [], []
        for i in range(n):
            s, sn = host[i], host[i + 1]
            if float(sn) == 0:  # Euler to 0: x' = D, no noise
                rows.append((0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
                levels.append((s, s, s, s))
                continue
            t, t_next = -s.log(), -sn.log()
            h = t_next - t
            s_mid = t + h * r
            fac = 1 / (2 * r)
            sf_t, sf_s, sf_n = t.neg().exp(), s_mid.neg().exp(), t_next.neg().exp()
            sd, su = _ancestral(sf_t, sf_s, eta)
            s_ = -sd.log()
            a1, b1, c1 = _f(s_.neg().exp() / sf_t), -_f((t - s_).expm1()), _f(s_noise * su)
            sd2, su2 = _ancestral(sf_t, sf_n, eta)
            t_next_ = -sd2.log()
            a2, bb, c2 = _f(t_next_.neg().exp() / sf_t), -_f((t - t_next_).expm1()), _f(s_noise * su2)
            rho = math.sqrt(_f((sf_t - sf_s) / (sf_t - sf_n)))  # the tree's correlation (identity transform)
            rows.append((a1, b1, c1, a2, bb * (1 - fac), bb * fac, c2 * rho, c2 * math.sqrt(max(0.0, 1 - rho * rho)),
                         c2, 1.0))
            levels.append((sf_s, sf_t, sf_s, sf_n))  # the model's stage-2 sigma, then the noise_sampler's
        return rows, levels

    rows, coefs, levels = _plan(run, "dpmpp_sde", (eta, s_noise, r), build)
    for i in _trange(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(x, i, sigmas[i], sigmas[i], denoised)
        a1, b1, c1, a2, b_d, b_d2, c_rho, c_xi, c2, _ = coefs[i]
        if not rows[i][-1]:
            x = run.step_to(x, run.combine(x, [denoised], [a1, b1]))
            continue
        sigma_mid, sf_t, sf_s, sf_n = levels[i]
        if noise_sampler is not None:  # k-diffusion's two calls, in its order
            x2 = run.combine(x, [denoised], [a1, b1, c1], noisy=run.noise(sf_t, sf_s))
            denoised_2 = run.denoise(x2, sigma_mid)
            new = run.combine(x, [denoised, denoised_2], [a2, b_d, b_d2, c2], noisy=run.noise(sf_t, sf_n))
        else:
            z1 = torch.empty_like(x, memory_format=torch.contiguous_format)
            x2 = run.combine(x, [denoised], [a1, b1, c1], noisy=run.noise(sf_t, sf_s), out2=z1,
                             coefs2=[0.0, 0.0, 1.0])
            denoised_2 = run.denoise(x2, sigma_mid)
            new = run.combine(x, [denoised, denoised_2, z1], [a2, b_d, b_d2, c_rho, c_xi],
                              noisy=run.noise(sf_t, sf_n))
        run.release(x2)
        x = run.step_to(x, new)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, *, seed=0, offset=0):
    """DPM-Solver++(2M): x' = a x + b D + b_old D_old, one fused op per step."""
    n = len(sigmas) - 1
    run = _Run(model, x, sigmas, extra_args, callback, None, seed, offset, 0)

    def build(host):
        rows = []
        for i in range(n):
            t, t_next = -host[i].log(), -host[i + 1].log()
            h = t_next - t
            a, e = _f(t_next.neg().exp() / t.neg().exp()), -_f((-h).expm1())
            if i == 0 or float(host[i + 1]) == 0:
                rows.append((a, e, 0.0, 0.0))
            else:
                r_ = _f((t - (-host[i - 1].log())) / h)
                rows.append((a, e * (1 + 1 / (2 * r_)), -e / (2 * r_), 1.0))
        return rows, []

    rows, coefs, _ = _plan(run, "dpmpp_2m", (), build)
    old_denoised = None
    for i in _trange(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(x, i, sigmas[i], sigmas[i], denoised)
        a, b, b_old, _ = coefs[i]
        if rows[i][-1]:
            new = run.combine(x, [denoised, old_denoised], [a, b, b_old])
        else:
            new = run.combine(x, [denoised], [a, b])
        old_denoised = denoised
        x = run.step_to(x, new)
    return x


def _sde_multistep(kind, model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type,
                   seed, offset):
    """sample_dpmpp_2m_sde / sample_dpmpp_3m_sde: one fused op per step over x, D and up to two
    previous D's, plus the noise (i.i.d. per step: the Brownian tree's law on disjoint
    intervals)."""
    n = len(sigmas) - 1
    run = _Run(model, x, sigmas, extra_args, callback, noise_sampler, seed, offset, n)

    def build(host):
        rows = []  # (a, b, b1, b2, c, histories used, update): update 0 -> x' = D
        h_1 = h_2 = None
        for i in range(n):
            s, sn = host[i], host[i + 1]
            if float(sn) == 0:
                rows.append((0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
                continue
            h = -sn.log() - (-s.log())
            c = _f(sn * (-2 * h * eta).expm1().neg().sqrt() * s_noise) if eta else 0.0
            if kind == "2m":
                eta_h = eta * h
                a, phi = _f(sn / s * (-eta_h).exp()), -_f((-h - eta_h).expm1())
                if h_1 is None:
                    rows.append((a, phi, 0.0, 0.0, c, 0.0, 1.0))
                else:
                    r_ = _f(h_1 / h)
                    psi = _f((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) if solver_type == 'heun' else 0.5 * phi
                    rows.append((a, phi + psi / r_, -psi / r_, 0.0, c, 1.0, 1.0))
            else:
                h_eta = h * (eta + 1)
                a, phi1 = _f((-h_eta).exp()), -_f((-h_eta).expm1())
                phi2_t = (-h_eta).expm1() / h_eta + 1
                phi2, phi3 = _f(phi2_t), _f(phi2_t / h_eta - 0.5)
                if h_2 is not None:
                    r0, r1 = _f(h_1 / h), _f(h_2 / h)
                    q, w = r0 / (r0 + r1), 1 / (r0 + r1)
                    A0, A1 = (phi2 * (1 + q) - phi3 * w) / r0, (phi3 * w - phi2 * q) / r1
                    rows.append((a, phi1 + A0, A1 - A0, -A1, c, 2.0, 1.0))
                elif h_1 is not None:
                    r_ = _f(h_1 / h)
                    rows.append((a, phi1 + phi2 / r_, -phi2 / r_, 0.0, c, 1.0, 1.0))
                else:
                    rows.append((a, phi1, 0.0, 0.0, c, 0.0, 1.0))
            h_1, h_2 = h, h_1
        return rows, []

    rows, coefs, _ = _plan(run, f"dpmpp_{kind}_sde", (eta, s_noise, solver_type), build)
    history = []  # previous denoised outputs, newest first
    for i in _trange(n, disable):
        denoised = run.denoise(x, sigmas[i])
        run.report(x, i, sigmas[i], sigmas[i], denoised)
        if not rows[i][-1]:
            run.release(x)
            x = denoised
        else:
            a, b, b1, b2, c, _, _ = coefs[i]
            used = int(rows[i][5])
            ys, coefs_i = [denoised, *history[:used]], [a, b, b1, b2][:2 + used]
            if eta:
                new = run.combine(x, ys, coefs_i + [c], noisy=run.noise(sigmas[i], sigmas[i + 1]))
            else:
                new = run.combine(x, ys, coefs_i)
            x = run.step_to(x, new)
        history = [denoised, *history][:2]
    return x
@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                        noise_sampler=None, solver_type='midpoint', *, seed=0, offset=0):
    """DPM-Solver++(2M) SDE."""
    if solver_type not in {'heun', 'midpoint'}:
        raise ValueError('solver_type must be \'heun\' or \'midpoint\'')
    return _sde_multistep("2m", model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler,
                          solver_type, seed, offset)


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                        noise_sampler=None, *, seed=0, offset=0):
    """DPM-Solver++(3M) SDE."""
    return _sde_multistep("3m", model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler,
                          "midpoint", seed, offset)
