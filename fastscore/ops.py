"""fastscore's op layer: the one dispatch point between the public API and the backends.

Public ops: noise, philox_words, probes (the stream); step_, langevin_step_, update,
perturb (the fused update a*x + b*score + c*z); langevin_corrector_; dsm_loss;
sliced_score_terms. Each (1) checks its arguments once, naming the bad one, (2) packs
coefficients into float64 tensors (rows of [3, K], K = 1 or B) and seed/offset into an
int64 [2] CPU tensor, (3) runs the backend chosen by ``fastscore.backends``.

The seed travels as a tensor so that under torch.compile a new seed is new data, not a
new graph: pass ``seed=torch.tensor(s)`` inside compiled code to never recompile. Eager
CPU calls with plain floats and ints take a lean path (``_lean_cpu_call``): scalar
variants of the ops, no tensors built, and for step_ no dispatcher at all.

Compiled kernels are torch custom ops in the namespace ``fastscore``, defined (schema
and CPU kernel) in csrc/*.cpp with CUDA kernels in csrc/cuda/; their fake (meta)
kernels and autograd are registered here. The Triton ones (``triton_*``) are Python
custom ops wrapping the launchers in kernels/, which import triton only when called.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch

from fastscore import backends, reference

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SEED_MOD = 1 << 64


# --------------------------------------------------------------------------- checks


def _check_float_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def _check_like(t, x: torch.Tensor, name: str, same_dtype: bool = True) -> None:
    _check_float_tensor(t, name)
    if t.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")
    if same_dtype and t.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")


def _check_no_grad(name: str, *tensors) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"{name} is an in-place sampler update and is not differentiable; inputs require grad "
            "(run it under torch.no_grad(), or use perturb for a differentiable update)"
        )


def _coef_column(v, name: str, x: torch.Tensor, nonnegative: bool):
    """A coefficient as a float (scalar) or a float64 [B] tensor on x's device."""
    if isinstance(v, torch.Tensor):
        if v.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a float or a floating tensor, got {v.dtype}")
        if v.dim() == 0:
            v = v.to(torch.float64, copy=False)
        elif v.dim() != 1 or x.dim() == 0 or v.shape[0] != x.shape[0]:
            raise ValueError(
                f"{name} must be a scalar or a 1-D per-sample tensor of length x.shape[0]"
                f" = {x.shape[0] if x.dim() else '(0-d x)'}, got shape {tuple(v.shape)}"
            )
        elif v.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {v.device}")
        # Checking the sign of a CUDA tensor would sync the host, and a traced graph
        # cannot branch on data: eager CPU tensors are checked.
        if (nonnegative and v.device.type == "cpu" and not torch.compiler.is_compiling()
                and bool((~(v >= 0)).any())):
            raise ValueError(f"{name} must be >= 0 (and not NaN), got {v.min().item()}")
        return v.to(torch.float64)
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise TypeError(f"{name} must be a float or a tensor, got {type(v).__name__}")
    v = float(v)
    if nonnegative and not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _pack_coef(x: torch.Tensor, a, b, c) -> torch.Tensor:
    """float64 [3, K]: rows (a, b, c); K = B if any is a per-sample [B] tensor, else 1."""
    vals = (a, b, c)
    if not any(isinstance(v, torch.Tensor) for v in vals):
        return torch.tensor([[a], [b], [c]], dtype=torch.float64, device=x.device)
    per_sample = any(isinstance(v, torch.Tensor) and v.dim() == 1 for v in vals)
    k = x.shape[0] if per_sample else 1
    cols = [v.to(x.device).reshape(-1).expand(k) if isinstance(v, torch.Tensor)
            else torch.full((k,), v, dtype=torch.float64, device=x.device) for v in vals]
    return torch.stack(cols)


_M64 = (1 << 64) - 1


def derive_seed(seed: int, k: int) -> int:
    """Seed of the k-th draw of a run (sampler step, loss component): the k-th SplitMix64
    output from state ``seed`` — a pure integer function, so one seed fixes a whole run."""
    z = (int(seed) + (k + 1) * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _seed_int64(seed) -> int:
    """seed mod 2**64 as the two's-complement int64 the kernels take."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int or a one-element integer tensor, got {type(seed).__name__}")
    s = int(seed) % _SEED_MOD
    return s - _SEED_MOD if s >= 1 << 63 else s


def _seed_tensor(seed, offset) -> torch.Tensor:
    """int64 [2] CPU: (seed mod 2**64 as two's complement, offset in rows)."""
    if isinstance(offset, torch.Tensor):
        if offset.dtype.is_floating_point or offset.numel() != 1:
            raise TypeError("offset must be a non-negative int or a one-element integer tensor")
        offset = offset.reshape(1).to(device="cpu", dtype=torch.int64)
    elif not isinstance(offset, numbers.Integral) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset must be a non-negative int (rows), got {offset!r}")
    if isinstance(seed, torch.Tensor):
        if seed.dtype.is_floating_point or seed.dtype == torch.bool or seed.numel() != 1:
            raise TypeError(f"seed must be an int or a one-element integer tensor, got {seed.dtype} {tuple(seed.shape)}")
        seed = seed.reshape(1).to(device="cpu", dtype=torch.int64)
        off = offset if isinstance(offset, torch.Tensor) else torch.tensor([int(offset)], dtype=torch.int64)
        return torch.cat([seed, off])
    s = _seed_int64(seed)
    if isinstance(offset, torch.Tensor):
        return torch.cat([torch.tensor([s], dtype=torch.int64), offset])
    return torch.tensor([s, int(offset)], dtype=torch.int64)


def _profiled(name: str):
    """Run the op inside record_function("fastscore::<name>") when a profiler is on
    (free otherwise), and inside an NVTX range for CUDA tensors."""
    label = f"fastscore::{name}"

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            if torch.compiler.is_compiling() or not torch.autograd.profiler._is_profiler_enabled:
                return fn(*args, **kwargs)
            with torch.profiler.record_function(label):
                return fn(*args, **kwargs)

        return inner

    return wrap


# --------------------------------------------------------------------------- backends
# Each backend implements the same four calls on already-checked, packed arguments.


class _Reference:
    @staticmethod
    def _coef_row(coef: torch.Tensor, i: int):
        return coef[i] if coef.shape[1] != 1 else coef[i, 0]

    @staticmethod
    def _seed(seed_t):
        return seed_t[0], int(seed_t[1])

    def fill_noise_(self, out, seed_t):
        seed, offset = self._seed(seed_t)
        out.copy_(reference.noise(out.shape, seed, offset, dtype=torch.float32, device=out.device))

    def fill_philox_(self, out, seed_t):
        seed, first = self._seed(seed_t)
        counters = torch.arange(first, first + out.shape[0], dtype=torch.int64, device=out.device)
        w = torch.stack(reference.philox4x32(seed, counters), dim=1)
        out.copy_((w - ((w >> 31) << 32)).to(torch.int32))

    def step_(self, x, score, coef, seed_t, noise, x_mean, with_noise):
        seed, offset = self._seed(seed_t)
        a, b, c = (self._coef_row(coef, i) for i in range(3))
        reference.step_(x, score, a, b, c, seed, offset, x_mean, noise, with_noise)

    def update_(self, out, x, score, coef, seed_t, noise, with_noise):
        seed, offset = self._seed(seed_t)
        a, b, c = (self._coef_row(coef, i) for i in range(3))
        out.copy_(reference.fused_update(x, score, a, b, c, seed, offset, noise, with_noise)[0])

    def langevin_corrector_(self, x, score, alpha, snr, seed_t, per_sample, noise, x_mean):
        seed, offset = self._seed(seed_t)
        reference.langevin_corrector_(x, score, snr, seed, offset, alpha if alpha.numel() > 1 else alpha[0],
                                      per_sample, x_mean, noise)

    def dsm_loss(self, score, coef, seed_t, noise):
        seed, offset = self._seed(seed_t)
        return reference.dsm_loss(score, self._coef_row(coef, 0), self._coef_row(coef, 1), seed, offset, noise)

    def dsm_loss_backward(self, grad, score, coef, seed_t, noise):
        seed, offset = self._seed(seed_t)
        return reference.dsm_loss_backward(grad, score, self._coef_row(coef, 0), self._coef_row(coef, 1), seed, offset,
                                           noise)

    def sliced_score_terms(self, score, jv, v, variance_reduction):
        return reference.sliced_score_terms(score, jv, v, variance_reduction)

    def perturb(self, x, coef, seed_t, noise):
        seed, offset = self._seed(seed_t)
        return reference.perturb(x, self._coef_row(coef, 0), self._coef_row(coef, 2), seed, offset, noise)


class _Compiled:
    """fastscore._C: the CPU kernels (cpp) and, when built with CUDA, the CUDA kernels."""

    def fill_noise_(self, out, seed_t):
        torch.ops.fastscore.fill_noise_(out, seed_t)

    def fill_philox_(self, out, seed_t):
        torch.ops.fastscore.fill_philox_(out, seed_t)

    def step_(self, x, score, coef, seed_t, noise, x_mean, with_noise):
        torch.ops.fastscore.step_(x, score, coef, seed_t, noise, x_mean, with_noise)

    def perturb(self, x, coef, seed_t, noise):
        return torch.ops.fastscore.perturb(x, coef, seed_t, noise)

    def dsm_loss(self, score, coef, seed_t, noise):
        return torch.ops.fastscore.dsm_loss(score, coef, seed_t, noise)

    def sliced_score_terms(self, score, jv, v, variance_reduction):
        return torch.ops.fastscore.sliced_score_terms(score, jv, v, variance_reduction)[0]

    def dsm_loss_backward(self, grad, score, coef, seed_t, noise):
        return torch.ops.fastscore.dsm_loss_backward(grad, score, coef, seed_t, noise)

    def update_(self, out, x, score, coef, seed_t, noise, with_noise):
        torch.ops.fastscore.update_(out, x, score, coef, seed_t, noise, with_noise)

    def langevin_corrector_(self, x, score, alpha, snr, seed_t, per_sample, noise, x_mean):
        torch.ops.fastscore.langevin_corrector_(x, score, alpha, snr, seed_t, per_sample, noise, x_mean)

    @staticmethod
    def langevin_corrector_scalar_(x, score, alpha, snr, seed, offset, per_sample, x_mean):
        _CORRECTOR_SCALAR(x, score, alpha, snr, seed, offset, per_sample, x_mean)

    @staticmethod
    def step_scalar_(x, score, a, b, c, seed, offset, x_mean, with_noise):
        _STEP_SCALAR(x, score, a, b, c, seed, offset, x_mean, with_noise)


_STEP_SCALAR = torch.ops.fastscore.step_scalar_.default if backends.HAS_EXTENSION else None
# The same kernel called without the dispatcher (~2 us less per call), for the lean
# eager path only: its arguments are checked by _lean_cpu_call first.
_STEP_FAST = __import__("fastscore._C", fromlist=["step_fast"]).step_fast if backends.HAS_EXTENSION else None
_UPDATE_FAST = __import__("fastscore._C", fromlist=["update_fast"]).update_fast if backends.HAS_EXTENSION else None
_CORRECTOR_SCALAR = torch.ops.fastscore.langevin_corrector_scalar_.default if backends.HAS_EXTENSION else None
_PERTURB_SCALAR = torch.ops.fastscore.perturb_scalar.default if backends.HAS_EXTENSION else None


def _seed_ints(seed_t: torch.Tensor) -> tuple[int, int]:
    s, o = seed_t.tolist()
    return s, o


@torch.library.custom_op("fastscore::triton_fill_noise_", mutates_args=("out",))
def _triton_fill_noise_(out: torch.Tensor, seed: torch.Tensor) -> None:
    from fastscore.kernels import noise as kn

    kn.fill_noise_(out, *_seed_ints(seed))


@torch.library.custom_op("fastscore::triton_step_", mutates_args=("x", "x_mean"))
def _triton_step_(x: torch.Tensor, score: torch.Tensor | None, coef: torch.Tensor, seed: torch.Tensor,
                  noise: torch.Tensor | None, x_mean: torch.Tensor | None, with_noise: bool) -> None:
    from fastscore.kernels import step as ks

    ks.fused_update_(x, x, score, coef, *_seed_ints(seed), noise, x_mean, with_noise)


@torch.library.custom_op("fastscore::triton_perturb", mutates_args=())
def _triton_perturb(x: torch.Tensor, coef: torch.Tensor, seed: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    from fastscore.kernels import step as ks

    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    ks.fused_update_(out, x, None, coef, *_seed_ints(seed), noise, None, True)
    return out


@torch.library.custom_op("fastscore::triton_langevin_corrector_", mutates_args=("x", "x_mean"))
def _triton_langevin_corrector_(x: torch.Tensor, score: torch.Tensor, alpha: torch.Tensor, snr: float,
                                seed: torch.Tensor, per_sample: bool, noise: torch.Tensor | None,
                                x_mean: torch.Tensor | None) -> None:
    from fastscore.kernels import corrector as kc

    kc.langevin_corrector_(x, score, alpha, snr, *_seed_ints(seed), per_sample, noise, x_mean)


@torch.library.custom_op("fastscore::triton_update_", mutates_args=("out",))
def _triton_update_(out: torch.Tensor, x: torch.Tensor, score: torch.Tensor | None, coef: torch.Tensor,
                    seed: torch.Tensor, noise: torch.Tensor | None, with_noise: bool) -> None:
    from fastscore.kernels import step as ks

    ks.fused_update_(out, x, score, coef, *_seed_ints(seed), noise, None, with_noise)


@torch.library.custom_op("fastscore::triton_dsm_loss", mutates_args=())
def _triton_dsm_loss(score: torch.Tensor, coef: torch.Tensor, seed: torch.Tensor,
                     noise: torch.Tensor | None) -> torch.Tensor:
    from fastscore.kernels import dsm as kd

    return kd.dsm_loss(score, coef, *_seed_ints(seed), noise)


@torch.library.custom_op("fastscore::triton_dsm_loss_backward", mutates_args=())
def _triton_dsm_loss_backward(grad: torch.Tensor, score: torch.Tensor, coef: torch.Tensor, seed: torch.Tensor,
                              noise: torch.Tensor | None) -> torch.Tensor:
    from fastscore.kernels import dsm as kd

    return kd.dsm_loss_backward(grad, score, coef, *_seed_ints(seed), noise)


@torch.library.custom_op("fastscore::triton_sliced_score_terms", mutates_args=())
def _triton_sliced_score_terms(score: torch.Tensor, jv: torch.Tensor, v: torch.Tensor,
                               variance_reduction: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from fastscore.kernels import hutchinson as kh

    return kh.sliced_score_terms(score, jv, v, variance_reduction)


@torch.library.custom_op("fastscore::triton_sliced_score_terms_backward", mutates_args=())
def _triton_sliced_score_terms_backward(grad: torch.Tensor, score: torch.Tensor, v: torch.Tensor, dots: torch.Tensor,
                                        variance_reduction: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from fastscore.kernels import hutchinson as kh

    return kh.sliced_score_terms_backward(grad, score, v, dots, variance_reduction)


class _Triton:
    def sliced_score_terms(self, score, jv, v, variance_reduction):
        return _triton_sliced_score_terms(score, jv, v, variance_reduction)[0]

    def dsm_loss(self, score, coef, seed_t, noise):
        return _triton_dsm_loss(score, coef, seed_t, noise)

    def dsm_loss_backward(self, grad, score, coef, seed_t, noise):
        return _triton_dsm_loss_backward(grad, score, coef, seed_t, noise)

    def update_(self, out, x, score, coef, seed_t, noise, with_noise):
        _triton_update_(out, x, score, coef, seed_t, noise, with_noise)

    def langevin_corrector_(self, x, score, alpha, snr, seed_t, per_sample, noise, x_mean):
        _triton_langevin_corrector_(x, score, alpha, snr, seed_t, per_sample, noise, x_mean)

    def fill_noise_(self, out, seed_t):
        _triton_fill_noise_(out, seed_t)

    def fill_philox_(self, out, seed_t):
        from fastscore.kernels import noise as kn

        s, first = _seed_ints(seed_t)
        out.copy_(kn.philox_words(s, first, out.shape[0], out.device))

    def step_(self, x, score, coef, seed_t, noise, x_mean, with_noise):
        _triton_step_(x, score, coef, seed_t, noise, x_mean, with_noise)

    def perturb(self, x, coef, seed_t, noise):
        return _triton_perturb(x, coef, seed_t, noise)


IMPLS = {"reference": _Reference(), "cpp": _Compiled(), "cuda": _Compiled(), "triton": _Triton()}


def _impl(device: torch.device):
    return IMPLS[backends.resolve(device)]


# --------------------------------------------------------------------------- fakes, autograd


def _fake_step_(x, score, coef, seed, noise, x_mean, with_noise):
    return None


def _fake_dsm_loss(score, coef, seed, noise):
    rows = score.shape[0] if score.dim() else 1
    return score.new_empty((rows,), dtype=reference.compute_dtype(score.dtype))


def _fake_dsm_loss_backward(grad, score, coef, seed, noise):
    return torch.empty_like(score, memory_format=torch.contiguous_format)


def _dsm_setup(ctx, inputs, output):
    score, coef, seed, noise = inputs
    ctx.save_for_backward(score, coef, seed, noise)  # no noise tensor: z is regenerated


def _dsm_backward_for(backward_op):
    def backward(ctx, grad):
        score, coef, seed, noise = ctx.saved_tensors
        grad_score = backward_op(grad, score, coef, seed, noise) if ctx.needs_input_grad[0] else None
        return grad_score, None, None, None

    return backward


def _fake_sliced_terms(score, jv, v, variance_reduction):
    cd = reference.compute_dtype(score.dtype)
    return score.new_empty((jv.shape[0],), dtype=cd), score.new_empty(jv.shape[:2], dtype=torch.float64)


def _fake_sliced_terms_backward(grad, score, v, dots, variance_reduction):
    return (torch.empty_like(score, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _sliced_setup(ctx, inputs, output):
    score, jv, v, variance_reduction = inputs
    ctx.variance_reduction = variance_reduction
    ctx.save_for_backward(score, v, output[1])


def _sliced_backward_for(backward_op):
    def backward(ctx, grad_terms, grad_dots):
        score, v, dots = ctx.saved_tensors
        grad_score, grad_jv = backward_op(grad_terms, score, v, dots, ctx.variance_reduction)
        return grad_score, grad_jv, None, None

    return backward


def _fake_update_(out, x, score, coef, seed, noise, with_noise):
    return None


def _fake_corrector_(x, score, alpha, snr, seed, per_sample, noise, x_mean):
    return None


def _fake_perturb(x, coef, seed, noise):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _per_sample_row(coef: torch.Tensor, i: int, like: torch.Tensor) -> torch.Tensor:
    return reference.per_sample(coef[i] if coef.shape[1] != 1 else coef[i, 0], like, reference.compute_dtype(like.dtype))


def _perturb_setup(ctx, inputs, output):
    x, coef, seed, noise = inputs
    ctx.save_for_backward(x, coef, seed, noise)


def _perturb_backward(ctx, grad):
    """out = a*x + c*z: dx = a*g, dnoise = c*g, da = sum_row(g*x), dc = sum_row(g*z)."""
    x, coef, seed, noise = ctx.saved_tensors
    cd = reference.compute_dtype(x.dtype)
    g = grad.to(cd)
    grad_x = (_per_sample_row(coef, 0, x) * g).to(x.dtype) if ctx.needs_input_grad[0] else None
    grad_noise = (_per_sample_row(coef, 2, x) * g).to(noise.dtype) if noise is not None and ctx.needs_input_grad[3] else None
    grad_coef = None
    if ctx.needs_input_grad[1]:
        z = noise.to(cd) if noise is not None else _noise_like(x, seed, cd)
        dims = tuple(range(1, x.dim()))
        rows = [(g * x.to(cd)).sum(dims), torch.zeros(g.shape[:1], dtype=cd, device=g.device), (g * z).sum(dims)]
        grad_coef = torch.stack(rows).to(coef.dtype)
        if coef.shape[1] == 1:
            grad_coef = grad_coef.sum(1, keepdim=True)
    return grad_x, grad_coef, None, grad_noise


def _noise_like(x: torch.Tensor, seed_t: torch.Tensor, dtype) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if out.numel():
        _impl(x.device).fill_noise_(out, seed_t)
    return out.to(dtype)


def _register_meta_and_autograd() -> None:
    torch.library.register_fake("fastscore::triton_step_")(_fake_step_)
    torch.library.register_fake("fastscore::triton_perturb")(_fake_perturb)
    torch.library.register_fake("fastscore::triton_fill_noise_")(lambda out, seed: None)
    torch.library.register_fake("fastscore::triton_langevin_corrector_")(_fake_corrector_)
    torch.library.register_fake("fastscore::triton_update_")(_fake_update_)
    torch.library.register_fake("fastscore::triton_sliced_score_terms")(_fake_sliced_terms)
    torch.library.register_fake("fastscore::triton_sliced_score_terms_backward")(_fake_sliced_terms_backward)
    torch.library.register_autograd("fastscore::triton_sliced_score_terms",
                                    _sliced_backward_for(_triton_sliced_score_terms_backward),
                                    setup_context=_sliced_setup)
    torch.library.register_fake("fastscore::triton_dsm_loss")(_fake_dsm_loss)
    torch.library.register_fake("fastscore::triton_dsm_loss_backward")(_fake_dsm_loss_backward)
    torch.library.register_autograd("fastscore::triton_dsm_loss", _dsm_backward_for(_triton_dsm_loss_backward),
                                    setup_context=_dsm_setup)
    torch.library.register_autograd("fastscore::triton_perturb", _perturb_backward, setup_context=_perturb_setup)
    if backends.HAS_EXTENSION:
        torch.library.register_fake("fastscore::step_")(_fake_step_)
        torch.library.register_fake("fastscore::step_scalar_")(lambda x, score, a, b, c, seed, offset, x_mean, w: None)
        torch.library.register_fake("fastscore::perturb")(_fake_perturb)
        torch.library.register_fake("fastscore::perturb_scalar")(
            lambda x, mean_scale, sigma, seed, offset: torch.empty_like(x, memory_format=torch.contiguous_format))
        torch.library.register_fake("fastscore::fill_noise_")(lambda out, seed: None)
        torch.library.register_fake("fastscore::fill_philox_")(lambda out, seed: None)
        torch.library.register_fake("fastscore::langevin_corrector_")(_fake_corrector_)
        torch.library.register_fake("fastscore::langevin_corrector_scalar_")(
            lambda x, score, alpha, snr, seed, offset, per_sample, x_mean: None)
        torch.library.register_fake("fastscore::update_")(_fake_update_)
        torch.library.register_fake("fastscore::sliced_score_terms")(_fake_sliced_terms)
        torch.library.register_fake("fastscore::sliced_score_terms_backward")(_fake_sliced_terms_backward)
        torch.library.register_autograd("fastscore::sliced_score_terms",
                                        _sliced_backward_for(torch.ops.fastscore.sliced_score_terms_backward),
                                        setup_context=_sliced_setup)
        torch.library.register_fake("fastscore::dsm_loss")(_fake_dsm_loss)
        torch.library.register_fake("fastscore::dsm_loss_backward")(_fake_dsm_loss_backward)
        torch.library.register_autograd("fastscore::dsm_loss", _dsm_backward_for(torch.ops.fastscore.dsm_loss_backward),
                                        setup_context=_dsm_setup)
        torch.library.register_autograd("fastscore::perturb", _perturb_backward, setup_context=_perturb_setup)


_register_meta_and_autograd()


# --------------------------------------------------------------------------- public ops


@_profiled("noise")
def noise(shape, seed, offset=0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The noise stream over ``shape`` (rows from ``offset``): N(0, 1) float32 values,
    bit-identical on every backend, converted to ``dtype``."""
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    shape = tuple(shape)
    if any((not isinstance(s, numbers.Integral)) or s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative ints, got {shape}")
    seed_t = _seed_tensor(seed, offset)
    out = torch.empty(shape, dtype=torch.float32, device=device)
    if out.numel():
        _impl(out.device).fill_noise_(out, seed_t)
    return out if dtype == torch.float32 else out.to(dtype)


def philox_words(seed, first_counter: int, n: int, device="cpu") -> torch.Tensor:
    """Raw Philox4x32-10 words (int32 bit patterns, [n, 4]) of counters first..first+n-1."""
    out = torch.empty((n, 4), dtype=torch.int32, device=device)
    if n:
        _impl(out.device).fill_philox_(out, _seed_tensor(seed, first_counter))
    return out


def _check_step_args(x, score, noise, x_mean):
    _check_float_tensor(x, "x")
    if score is not None:
        _check_like(score, x, "score")
    if noise is not None:
        _check_like(noise, x, "noise", same_dtype=False)
    if x_mean is not None:
        _check_like(x_mean, x, "x_mean")
        if x_mean.data_ptr() == x.data_ptr() and x.numel():
            raise ValueError("x_mean must not share memory with x")
    if x.requires_grad and x.is_leaf and torch.is_grad_enabled():
        raise RuntimeError("x is a leaf that requires grad; step_ updates x in place (use perturb, or torch.no_grad())")
    _check_no_grad("step_", x, score, noise, x_mean)


def _run_step(x, score, a, b, c, seed, offset, noise, x_mean, with_noise):
    impl = _impl(x.device)
    if noise is not None:
        noise = noise.to(reference.compute_dtype(x.dtype))
    # Eager fast path: plain floats and ints straight to the kernel, no tensors built.
    # Under torch.compile the tensor form keeps a new seed from recompiling.
    elif (type(a) is float and type(b) is float and type(c) is float and hasattr(impl, "step_scalar_")
          and type(seed) is int and type(offset) is int and not torch.compiler.is_compiling()):
        if offset < 0:
            raise ValueError(f"offset must be a non-negative int (rows), got {offset!r}")
        impl.step_scalar_(x, score, a, b, c, _seed_int64(seed), offset, x_mean, with_noise)
        return x
    seed_t = _seed_tensor(seed, offset)
    if x.numel():
        impl.step_(x, score, _pack_coef(x, a, b, c), seed_t, noise, x_mean, with_noise)
    return x


@_profiled("step_")
def step_(x, score, a, b, c, seed=0, offset=0, x_mean=None, noise=None):
    """In place: x <- a*x + b*score + c*z, z the noise stream at (seed, offset rows) or
    the explicit ``noise`` tensor; ``x_mean`` (optional) receives a*x + b*score.
    a, b, c: floats or per-sample [B] tensors. A scalar c == 0 skips the RNG (ODE step).
    ``score=None`` drops the b term. Returns x."""
    if (noise is None and x_mean is None and type(a) is float and type(b) is float and type(c) is float
            and _lean_cpu_call(x, score, seed, offset)):
        _STEP_FAST(x, score, a, b, c, seed, offset)
        return x
    _check_step_args(x, score, noise, x_mean)
    a = _coef_column(a, "a", x, nonnegative=False)
    b = _coef_column(b, "b", x, nonnegative=False)
    c = _coef_column(c, "c", x, nonnegative=False)
    with_noise = noise is not None or isinstance(c, torch.Tensor) or c != 0.0
    return _run_step(x, score, a, b, c, seed, offset, noise, x_mean, with_noise)


@_profiled("update")
def update(x, score, a, b, c=0.0, seed=0, offset=0, out=None, noise=None):
    """Out of place: a*x + b*score + c*z into ``out`` (a new tensor if None); x is not
    modified. An ODE stage's drift is ``update(y, score, f_t, -g_t**2 / 2)``."""
    if (noise is None and type(a) is float and type(b) is float and type(c) is float
            and _lean_cpu_call(x, score, seed, offset)
            and (out is None or (type(out) is torch.Tensor and out.shape == x.shape and out.dtype == x.dtype
                                 and out.device.type == "cpu" and not out.requires_grad
                                 and (out.data_ptr() != x.data_ptr() or not x.numel())))):
        out = torch.empty_like(x) if out is None else out
        _UPDATE_FAST(out, x, score, a, b, c, seed, offset)
        return out
    _check_step_args(x, score, noise, None)
    if out is None:
        out = torch.empty_like(x)
    else:
        _check_like(out, x, "out")
        if out.data_ptr() == x.data_ptr() and x.numel():
            raise ValueError("out must not share memory with x (use step_ for an in-place update)")
    a = _coef_column(a, "a", x, nonnegative=False)
    b = _coef_column(b, "b", x, nonnegative=False)
    c = _coef_column(c, "c", x, nonnegative=False)
    with_noise = noise is not None or isinstance(c, torch.Tensor) or c != 0.0
    if noise is not None:
        noise = noise.to(reference.compute_dtype(x.dtype))
    if x.numel():
        _impl(x.device).update_(out, x, score, _pack_coef(x, a, b, c), _seed_tensor(seed, offset), noise, with_noise)
    return out


def _lean_cpu_call(x, score, seed, offset) -> bool:
    """True when an eager call can go straight to the C++ kernel with every check done
    here in a few attribute reads: plain CPU tensors of one float dtype and shape,
    int seed/offset, no autograd, the cpp backend selected. Anything else takes the
    general path (which names the bad argument)."""
    return (_STEP_SCALAR is not None and type(x) is torch.Tensor and type(score) is torch.Tensor
            and type(seed) is int and type(offset) is int and 0 <= seed < 1 << 63 and offset >= 0
            and x.dtype in FLOAT_DTYPES and score.dtype == x.dtype and score.shape == x.shape
            and x.device.type == "cpu" and score.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or score.requires_grad))
            and backends.serves_cpu_with_cpp() and not torch.compiler.is_compiling())


@_profiled("langevin_step_")
def langevin_step_(x, score, step_size, seed=0, offset=0, noise=None):
    """In place: x <- x + eps*score + sqrt(2 eps)*z (unadjusted Langevin); eps >= 0,
    a float or a per-sample [B] tensor. Returns x."""
    if noise is None and type(step_size) is float and step_size >= 0 and _lean_cpu_call(x, score, seed, offset):
        _STEP_FAST(x, score, 1.0, step_size, math.sqrt(2.0 * step_size), seed, offset)
        return x
    _check_step_args(x, score, noise, None)
    if score is None:
        raise TypeError("score must be a tensor shaped like x, got None")
    eps = _coef_column(step_size, "step_size", x, nonnegative=True)
    noise_scale = torch.sqrt(2.0 * eps) if isinstance(eps, torch.Tensor) else math.sqrt(2.0 * eps)
    return _run_step(x, score, 1.0, eps, noise_scale, seed, offset, noise, None, True)


@_profiled("perturb")
def perturb(x, sigma, seed=0, offset=0, mean_scale=1.0, noise=None):
    """mean_scale*x + sigma*z (out of place, differentiable in x, sigma, mean_scale);
    sigma >= 0, floats or per-sample [B] tensors. The same (seed, offset) gives
    ``dsm_loss`` the same z."""
    if (noise is None and type(sigma) is float and type(mean_scale) is float and sigma >= 0
            and _lean_cpu_call(x, x, seed, offset)):  # x needs no grad here: no autograd graph to build
        return _PERTURB_SCALAR(x, mean_scale, sigma, seed, offset)
    _check_float_tensor(x, "x")
    if noise is not None:
        _check_like(noise, x, "noise", same_dtype=False)
        noise = noise.to(reference.compute_dtype(x.dtype))
    sigma = _coef_column(sigma, "sigma", x, nonnegative=True)
    mean_scale = _coef_column(mean_scale, "mean_scale", x, nonnegative=False)
    coef = _pack_coef(x, mean_scale, 0.0, sigma)
    seed_t = _seed_tensor(seed, offset)
    out = _impl(x.device).perturb(x, coef, seed_t, noise)
    return out.to(x.dtype)


STEP_SIZE_MODES = ("batch", "per_sample")


@_profiled("langevin_corrector_")
def langevin_corrector_(x, score, snr, seed=0, offset=0, alpha=1.0, step_size_mode="batch", x_mean=None, noise=None):
    """score_sde's LangevinCorrector step, in place: eps = (snr*|z|/|score|)^2 * 2*alpha,
    x_mean = x + eps*score, x = x_mean + sqrt(2 eps)*z. Norms are batch means
    (``step_size_mode="batch"``, as score_sde and diffusers) or per sample
    (``"per_sample"``); they are reduced in the same pass that draws z (float64 sums),
    and the second pass regenerates z instead of storing it. ``alpha``: float or [B]
    tensor (score_sde passes the VP alphas, 1 for VE). A zero score norm gives eps = 0.
    Returns x."""
    if (noise is None and x_mean is None and type(alpha) is float and type(snr) is float and alpha >= 0
            and snr >= 0 and step_size_mode in STEP_SIZE_MODES and _lean_cpu_call(x, score, seed, offset)):
        _CORRECTOR_SCALAR(x, score, alpha, snr, seed, offset, step_size_mode == "per_sample", None)
        return x
    _check_step_args(x, score, noise, x_mean)
    if score is None:
        raise TypeError("score must be a tensor shaped like x, got None")
    if step_size_mode not in STEP_SIZE_MODES:
        raise ValueError(f"step_size_mode must be one of {STEP_SIZE_MODES}, got {step_size_mode!r}")
    snr = _coef_column(snr, "snr", x, nonnegative=True)
    if isinstance(snr, torch.Tensor):
        raise TypeError("snr must be a float")
    alpha = _coef_column(alpha, "alpha", x, nonnegative=True)
    per_sample = step_size_mode == "per_sample"
    impl = _impl(x.device)
    if noise is not None:
        noise = noise.to(reference.compute_dtype(x.dtype))
    elif (type(alpha) is float and type(seed) is int and type(offset) is int and offset >= 0
          and hasattr(impl, "langevin_corrector_scalar_") and not torch.compiler.is_compiling()):
        impl.langevin_corrector_scalar_(x, score, alpha, snr, _seed_int64(seed), offset, per_sample, x_mean)
        return x
    alpha_t = alpha.reshape(-1) if isinstance(alpha, torch.Tensor) else torch.tensor([alpha], dtype=torch.float64)
    if x.numel():
        impl.langevin_corrector_(x, score, alpha_t, snr, _seed_tensor(seed, offset), per_sample, noise, x_mean)
    return x


@_profiled("dsm_loss")
def dsm_loss(score, sigma, seed=0, offset=0, weight=None, noise=None):
    """Per-sample denoising score matching loss 0.5 * weight * |score + z/sigma|^2 ([B],
    fp32; fp64 for fp64 score), z regenerated from (seed, offset) — the z that
    ``perturb(x, sigma, seed, offset)`` added — so no noise tensor is stored, in the
    forward or in the fused backward. Differentiable w.r.t. score. sigma > 0 and weight:
    floats or per-sample [B] tensors (treated as constants)."""
    _check_float_tensor(score, "score")
    if score.dim() == 0:
        raise ValueError("score must have a batch dimension [B, ...]")
    if noise is not None:
        _check_like(noise, score, "noise", same_dtype=False)
        noise = noise.to(reference.compute_dtype(score.dtype))
    sigma = _coef_column(sigma, "sigma", score, nonnegative=True)
    if isinstance(sigma, float) and sigma == 0.0:
        raise ValueError("sigma must be > 0 (the loss divides by it)")
    if (isinstance(sigma, torch.Tensor) and sigma.device.type == "cpu" and not torch.compiler.is_compiling()
            and bool((sigma == 0).any())):
        raise ValueError("sigma must be > 0 (the loss divides by it)")
    weight = _coef_column(1.0 if weight is None else weight, "weight", score, nonnegative=True)
    inv_sigma = 1.0 / sigma
    per = any(isinstance(v, torch.Tensor) and v.dim() == 1 for v in (inv_sigma, weight))
    k = score.shape[0] if per else 1
    cols = [v.to(score.device).reshape(-1).expand(k) if isinstance(v, torch.Tensor)
            else torch.full((k,), v, dtype=torch.float64, device=score.device) for v in (inv_sigma, weight)]
    coef = torch.stack(cols).detach()
    return _impl(score.device).dsm_loss(score, coef, _seed_tensor(seed, offset), noise)


PROBE_DISTS = ("rademacher", "gaussian")


@_profiled("probes")
def probes(shape, seed, offset=0, dist="rademacher", dtype=torch.float32, device="cpu"):
    """Hutchinson probes from the noise stream's Philox words: "gaussian" is ``noise``;
    "rademacher" is +1, or -1 where bit 31 of the word behind element j (word j & 3 of
    counter j >> 2) is set. Rows from ``offset``, as every stream."""
    if dist == "gaussian":
        return noise(shape, seed, offset, dtype=dtype, device=device)
    if dist != "rademacher":
        raise ValueError(f"dist must be one of {PROBE_DISTS}, got {dist!r}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    shape = tuple(shape)
    if any((not isinstance(s, numbers.Integral)) or s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative ints, got {shape}")
    rows, per_row = reference.row_geometry(shape)
    numel = rows * per_row
    if numel == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    _seed_tensor(seed, offset)  # argument checks
    j0 = int(offset) * per_row
    c_first, c_last = j0 >> 2, (j0 + numel - 1) >> 2
    words = philox_words(seed, c_first, c_last - c_first + 1, device=device).reshape(-1)
    start = j0 - 4 * c_first
    signs = 1 - 2 * (words[start:start + numel] < 0).to(torch.int8)  # int32 < 0  <=>  bit 31 set
    return signs.reshape(shape).to(dtype)


@_profiled("sliced_score_terms")
def sliced_score_terms(score, jv, v, variance_reduction=False):
    """Per-sample sliced score matching terms in one fused pass, mean over P probes:
    (1/P) sum_p [v_p . jv_p + 0.5 (v_p . s)^2], or with ``variance_reduction`` the
    0.5 |s|^2 form. score [B, ...]; jv (J v or J^T v) and probes v [B, P, ...].
    Differentiable in score and jv (fused backward); v is a constant."""
    _check_float_tensor(score, "score")
    if score.dim() == 0:
        raise ValueError("score must have a batch dimension [B, ...]")
    _check_float_tensor(jv, "jv")
    _check_float_tensor(v, "v")
    want = (score.shape[0], jv.shape[1] if jv.dim() > 1 else -1) + tuple(score.shape[1:])
    if jv.dim() != score.dim() + 1 or tuple(jv.shape) != want:
        raise ValueError(f"jv must have shape [B, P, ...] = {want[:1] + ('P',) + want[2:]}, got {tuple(jv.shape)}")
    if v.shape != jv.shape:
        raise ValueError(f"v must have the shape of jv {tuple(jv.shape)}, got {tuple(v.shape)}")
    for t, name in ((jv, "jv"), (v, "v")):
        if t.dtype != score.dtype:
            raise TypeError(f"{name} must have the dtype of score ({score.dtype}), got {t.dtype}")
        if t.device != score.device:
            raise ValueError(f"{name} must be on the device of score ({score.device}), got {t.device}")
    return _impl(score.device).sliced_score_terms(score, jv, v.detach(), bool(variance_reduction))
