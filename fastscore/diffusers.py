"""diffusers' schedulers with fused steps: drop-in subclasses of ``ScoreSdeVeScheduler``,
``EulerAncestralDiscreteScheduler`` and ``DPMSolverMultistepScheduler`` (diffusers 0.42).

    from fastscore.diffusers import DPMSolverMultistepScheduler
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

Each class keeps diffusers' name, config and every method but the step, so it loads from any
saved config, is an ``isinstance`` of the diffusers class and runs unchanged in diffusers'
pipelines. Its step is ONE fused op (``fastscore.ops.combine``): the update written as one
linear combination ``a*x + b1*y1 + b2*y2 + c*z`` with a second output where the step returns
two tensors (``prev_sample_mean``, ``pred_original_sample``, DPM-Solver's x0). The scalar
coefficients come from diffusers' own float32 expressions, evaluated once per step index in
``set_timesteps`` (DPM-Solver, Euler ancestral) or on the device (SDE-VE, whose coefficients
depend on the timestep value), so no step makes a host sync. The noise is drawn exactly as
diffusers draws it — the same ``randn_tensor`` call with the same ``generator``, at the same
point — and passed to the fused op: outputs equal diffusers' to float32 rounding and the
generator ends in the same state. Without a generator the noise is fastscore's stream instead
of torch's global RNG: draw k after ``set_timesteps`` uses seed ``derive_seed(noise_seed, k)``
(``scheduler.noise_seed``, 0 unless set), generated inside the fused op, batch-invariant
row by row. ``sample`` and ``model_output`` are never written.

What is not fused falls back to diffusers' own step: thresholding, solver_order 3, the
deprecated "dpmsolver"/"sde-dpmsolver", flow sigmas, learned variance, a "sample"
prediction for Euler ancestral, and a table made stale by editing ``sigmas`` by hand.
"""

from __future__ import annotations

import torch

from fastscore import ops
from fastscore._common import derive_seed
from fastscore._optional import require

require("diffusers", "fastscore.diffusers")

from diffusers import DPMSolverMultistepScheduler as _DPMSolverMultistep  # noqa: E402
from diffusers import EulerAncestralDiscreteScheduler as _EulerAncestralDiscrete  # noqa: E402
from diffusers import ScoreSdeVeScheduler as _ScoreSdeVe  # noqa: E402
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (  # noqa: E402
    EulerAncestralDiscreteSchedulerOutput)
from diffusers.schedulers.scheduling_sde_ve import SdeVeOutput  # noqa: E402
from diffusers.schedulers.scheduling_utils import SchedulerOutput  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

__all__ = ["ScoreSdeVeScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"]


class _StreamNoise:
    """Without a generator: the k-th draw since set_timesteps is the stream at
    derive_seed(noise_seed, k)."""

    noise_seed = 0

    def _reset_draws(self):
        self._fastscore_draws = 0

    def _next_seed(self):
        k = getattr(self, "_fastscore_draws", 0)
        self._fastscore_draws = k + 1
        return derive_seed(self.noise_seed, k)


def _noise(scheduler, generator, draw):
    """(noise tensor or None, stream seed): diffusers' own draw with a generator, else the
    stream (generated in the fused op)."""
    if generator is not None:
        return draw(), 0
    return None, scheduler._next_seed()


def _combine(x, terms, c=0.0, noise=(None, None), mean=None, dtype=None):
    """``a*x + sum b_k*y_k + c*z`` in one fused pass, computed in ``dtype`` (default x's),
    with x = (a, tensor), terms = [(b_k, y_k)] and noise = (z or None, stream seed or None:
    no noise term); ``mean`` = [a', b'_k...] also writes ``a'*x + sum b'_k*y_k`` as a second
    output. Returns out or (out, out2)."""
    (a, x), (z, seed) = x, noise
    dtype = dtype or x.dtype
    x = x.to(dtype)
    ys = [y.to(dtype) for _, y in terms]
    out2 = torch.empty_like(x, memory_format=torch.contiguous_format) if mean is not None else None
    noisy = z is not None or seed is not None
    out = ops.combine(x, ys, [a, *(b for b, _ in terms), c if noisy else 0.0], seed=seed or 0, noise=z, out2=out2,
                      coefs2=None if mean is None else [*mean, 0.0])
    return out if mean is None else (out, out2)


class ScoreSdeVeScheduler(_StreamNoise, _ScoreSdeVe):
    """diffusers' ScoreSdeVeScheduler (score_sde's VE predictor–corrector), fused:
    ``step_pred``: prev = x + g^2 m + g z and prev_sample_mean = x + g^2 m, one pass;
    ``step_correct``: prev = x + e m + sqrt(2e) z with diffusers' batch-coupled step size e
    (two norms, then one pass). The sigma lookup stays on the sample's device."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._reset_draws()

    def _diffusion_table(self, device, dtype):
        """(g, g^2) for every sigma index, on ``device``: step_pred's own expressions over all
        indices at once (elementwise, so a gather of them has the per-step bits), made once
        per sigma table instead of nine small ops a step."""
        key = (self.discrete_sigmas, device, dtype)
        cached = getattr(self, "_fastscore_diffusion", None)
        if cached is None or cached[0] is not key[0] or cached[1:3] != key[1:]:
            sigmas = self.discrete_sigmas.to(device)
            index = torch.arange(len(sigmas), device=device)
            adjacent = torch.where(index == 0, torch.zeros(len(sigmas), device=device, dtype=dtype), sigmas[index - 1])
            g = (sigmas ** 2 - adjacent ** 2) ** 0.5
            self._fastscore_diffusion = cached = (*key, g, g ** 2)  # diffusers squares the diffusion
        return cached[3], cached[4]

    def step_pred(self, model_output, timestep, sample, generator=None, return_dict=True):
        if self.timesteps is None:
            raise ValueError("`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler")
        # diffusers' float32 index arithmetic, on the sample's device (no round trip)
        timestep = timestep * torch.ones(sample.shape[0], device=sample.device)
        index = (timestep * (len(self.timesteps) - 1)).long()
        g_table, g2_table = self._diffusion_table(sample.device, timestep.dtype)
        g, g2 = g_table[index], g2_table[index]  # [B]
        noise = _noise(self, generator, lambda: randn_tensor(sample.shape, layout=sample.layout, generator=generator,
                                                             device=sample.device, dtype=sample.dtype))
        prev, mean = _combine((1.0, sample), [(g2, model_output)], g, noise, mean=[1.0, g2])
        if not return_dict:
            return (prev, mean)
        return SdeVeOutput(prev_sample=prev, prev_sample_mean=mean)

    def step_correct(self, model_output, sample, generator=None, return_dict=True):
        if self.timesteps is None:
            raise ValueError("`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler")
        if generator is not None:
            noise = randn_tensor(sample.shape, layout=sample.layout, generator=generator).to(sample.device)
        else:  # the norm needs the noise itself: the stream, written once
            noise = ops.noise(sample.shape, seed=self._next_seed(), device=sample.device)
        grad_norm = torch.norm(model_output.reshape(model_output.shape[0], -1), dim=-1).mean()
        noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
        # a 0-d device tensor: combine applies it to every row, as diffusers' [B] copy of it
        step_size = (self.config.snr * noise_norm / grad_norm) ** 2 * 2
        dtype = torch.promote_types(torch.promote_types(sample.dtype, model_output.dtype), noise.dtype)
        prev = _combine((1.0, sample), [(step_size, model_output)], (step_size * 2) ** 0.5, (noise, None),
                        dtype=dtype)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)


class EulerAncestralDiscreteScheduler(_StreamNoise, _EulerAncestralDiscrete):
    """diffusers' EulerAncestralDiscreteScheduler, fused: with s = sigma, dt = sigma_down - s,
    epsilon: prev = x + dt m + sigma_up z, pred_original_sample = x - s m;
    v_prediction: prev = (1 + dt s/(s^2+1)) x + dt/sqrt(s^2+1) m + sigma_up z,
    pred_original_sample = x/(s^2+1) - s/sqrt(s^2+1) m; one pass, in float32."""

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._fastscore_table = self._coefficients()
        self._reset_draws()

    def _coefficients(self):
        if self.config.prediction_type not in ("epsilon", "v_prediction"):
            return None
        sigmas, rows = self.sigmas, []  # CPU float32: diffusers' own 0-d expressions
        for k in range(len(sigmas) - 1):
            sigma_from, sigma_to = sigmas[k], sigmas[k + 1]
            sigma_up = (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5
            sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
            s, dt, up = float(sigma_from), float(sigma_down - sigma_from), float(sigma_up)
            if self.config.prediction_type == "epsilon":
                rows.append(((1.0, dt, up), (1.0, -s)))
            else:
                q = float((sigma_from ** 2 + 1) ** 0.5)
                rows.append(((1.0 + dt * s / (q * q), dt / q, up), (1.0 / (q * q), -s / q)))
        return rows

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        table = getattr(self, "_fastscore_table", None)
        if (isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)) or table is None
                or len(table) != len(self.sigmas) - 1 or not self.is_scale_input_called):
            # diffusers' errors and warnings, and what is not fused
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)  # one host read, on the first step only (as diffusers)
        (a, b, c), mean = table[self.step_index]
        noise = _noise(self, generator, lambda: randn_tensor(model_output.shape, dtype=model_output.dtype,
                                                             device=model_output.device, generator=generator))
        prev, pred = _combine((a, sample), [(b, model_output)], c, noise, mean=mean, dtype=torch.float32)
        prev = prev.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev, pred)
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=pred)


class DPMSolverMultistepScheduler(_StreamNoise, _DPMSolverMultistep):
    """diffusers' DPMSolverMultistepScheduler, fused for algorithm_type "dpmsolver++" and
    "sde-dpmsolver++", solver_order 1-2 (midpoint or heun), epsilon / sample / v_prediction.
    With x0 = p x + q m (the data prediction) and a step x' = A x + B0 x0 + B1 x0_prev + C z,
    one pass writes x' = (A + B0 p) x + B0 q m + B1 x0_prev + C z (in float32) and x0 (kept in
    ``model_outputs``, as diffusers keeps it)."""

    _FUSED_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")

    def set_timesteps(self, *args, **kwargs):
        super().set_timesteps(*args, **kwargs)
        self._fastscore_table = self._coefficients() if self._fused() else None
        self._reset_draws()

    def _fused(self):
        c = self.config
        return (c.algorithm_type in self._FUSED_ALGORITHMS and c.solver_order in (1, 2) and not c.thresholding
                and c.prediction_type in ("epsilon", "sample", "v_prediction") and not c.use_flow_sigmas
                and c.variance_type is None)

    def _coefficients(self):
        """Per step: (p, q) of x0 and the (A, B0, B1, C) of the first- and second-order update,
        from diffusers' float32 CPU expressions, combined in float64."""
        sigmas, sde = self.sigmas, self.config.algorithm_type == "sde-dpmsolver++"
        alpha_sigma = [self._sigma_to_alpha_sigma_t(s) for s in sigmas]
        lambdas = [torch.log(a) - torch.log(s) for a, s in alpha_sigma]
        rows = []
        for k in range(len(sigmas) - 1):
            (alpha_s0, sigma_s0), (alpha_t, sigma_t) = alpha_sigma[k], alpha_sigma[k + 1]
            h = lambdas[k + 1] - lambdas[k]
            if self.config.prediction_type == "epsilon":
                p, q = float(1 / alpha_s0), float(-sigma_s0 / alpha_s0)
            elif self.config.prediction_type == "v_prediction":
                p, q = float(alpha_s0), float(-sigma_s0)
            else:
                p, q = 0.0, 1.0
            if sde:
                A = float(sigma_t / sigma_s0 * torch.exp(-h))
                E = float(alpha_t * (1 - torch.exp(-2.0 * h)))
                C = float(sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)))
                first = (A, E, 0.0, C)
            else:
                A, E, C = float(sigma_t / sigma_s0), float(alpha_t * (torch.exp(-h) - 1.0)), 0.0
                first = (A, -E, 0.0, 0.0)
            second = None
            if k >= 1 and bool(torch.isfinite(h)):  # h = inf on a final sigma of 0: first order there
                r0 = float((lambdas[k] - lambdas[k - 1]) / h)
                midpoint = self.config.solver_type == "midpoint"
                if sde:
                    F = 0.5 * E if midpoint else float(alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0))
                    second = (A, E + F / r0, -F / r0, C)
                else:
                    F = -0.5 * E if midpoint else float(alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0))
                    second = (A, -E + F / r0, -F / r0, 0.0)
            rows.append(((p, q), first, second))
        return rows

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict=True):
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        table = getattr(self, "_fastscore_table", None)
        if table is None or not self._fused() or len(table) != len(self.sigmas) - 1:
            return super().step(model_output, timestep, sample, generator=generator, variance_noise=variance_noise,
                                return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)  # one host read, on the first step only (as diffusers)
        n = len(self.timesteps)
        lower_order_final = (self.step_index == n - 1) and (
            self.config.euler_at_final or (self.config.lower_order_final and n < 15)
            or self.config.final_sigmas_type == "zero")
        (p, q), first, second = table[self.step_index]
        use_first = self.config.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final
        if self.config.algorithm_type != "sde-dpmsolver++":
            noise = (None, None)
        elif variance_noise is not None:
            noise = (variance_noise.to(device=model_output.device, dtype=torch.float32), None)
        else:
            noise = _noise(self, generator, lambda: randn_tensor(model_output.shape, generator=generator,
                                                                 device=model_output.device, dtype=torch.float32))
        A, B0, B1, C = first if use_first else second
        prev_x0 = self.model_outputs[-1]
        terms = [(B0 * q, model_output)] + ([] if use_first else [(B1, prev_x0)])
        x0_dtype = torch.promote_types(sample.dtype, model_output.dtype)
        prev, x0 = _combine((A + B0 * p, sample), terms, C, noise, mean=[p, q] + [0.0] * (len(terms) - 1),
                            dtype=torch.float32)
        x0 = x0.to(x0_dtype)
        for i in range(self.config.solver_order - 1):
            self.model_outputs[i] = self.model_outputs[i + 1]
        self.model_outputs[-1] = x0
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        prev = prev.to(x0.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)
