"""Argument checks of the public API, each naming the bad argument (SPEC "Errors"), and the
normalisation of seeds, offsets and coefficients into what every backend takes.

Nothing here reads device data on the host: a coefficient or seed that lives on a device
is passed on as a tensor (its sign is checked only for eager CPU tensors, where reading it
costs no sync), so the checks are safe inside CUDA-graph capture and torch.compile.
"""

from __future__ import annotations

import numbers

import torch

from fastscore._common import is_int, seed_bits

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_Tensor = torch.Tensor


def float_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def like(t, x: torch.Tensor, name: str, same_dtype: bool = True, x_name: str = "x") -> None:
    if (type(t) is _Tensor and t.dtype is x.dtype and t.is_cpu and x.is_cpu and t.shape == x.shape
            and t.dtype in FLOAT_DTYPES):
        return  # the common case, in a few attribute reads
    float_tensor(t, name)
    if t.shape != x.shape:
        raise ValueError(f"{name} must have the shape of {x_name} {tuple(x.shape)}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on the device of {x_name} ({x.device}), got {t.device}")
    if same_dtype and t.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of {x_name} ({x.dtype}), got {t.dtype}")


def batched(t, name: str) -> None:
    float_tensor(t, name)
    if t.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension [B, ...]")


def no_grad(op: str, *tensors) -> None:
    """In-place sampler updates are not differentiable: refuse inputs that require grad."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"{op} is an in-place sampler update and is not differentiable; inputs require grad "
            "(run it under torch.no_grad(), or use perturb for a differentiable update)"
        )


def not_aliased(t, x: torch.Tensor, name: str, hint: str = "") -> None:
    """t and x must not start at the same address (meta and traced tensors have none)."""
    if t is None or not t.numel() or t.device.type == "meta" or torch.compiler.is_compiling():
        return
    if t.data_ptr() == x.data_ptr():
        raise ValueError(f"{name} must not share memory with x{hint}")


def _eager_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def coef(v, name: str, x: torch.Tensor, nonnegative: bool = False, positive: bool = False):
    """A coefficient as a Python float, or a float tensor that is 0-d or per-sample [B]
    (B = x.shape[0]) on x's device — passed on as it is, never copied."""
    if type(v) is float and (v > 0 if positive else v >= 0 if nonnegative else True):
        return v  # the common case; anything else gets the full checks below
    if isinstance(v, torch.Tensor):
        if v.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a float or a floating tensor, got {v.dtype}")
        if v.dim() == 1:
            if x.dim() == 0 or v.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{name} must be a scalar or a 1-D per-sample tensor of length x.shape[0]"
                    f" = {x.shape[0] if x.dim() else '(0-d x)'}, got shape {tuple(v.shape)}")
        elif v.dim() != 0:
            raise ValueError(f"{name} must be a scalar, a 0-d tensor or a 1-D per-sample tensor, "
                             f"got shape {tuple(v.shape)}")
        if v.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {v.device}")
        # The sign of a device tensor would need a host sync, and a traced graph cannot
        # branch on data: only eager CPU tensors are checked.
        if (nonnegative or positive) and _eager_cpu(v) and v.numel():
            low = v.min()  # one reduction (a NaN propagates and fails both tests)
            if not bool(low > 0 if positive else low >= 0):
                raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} (and not NaN), "
                                 f"got {v[~(v > 0) if positive else ~(v >= 0)].reshape(-1)[0].item()}")
        return v
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise TypeError(f"{name} must be a float or a tensor, got {type(v).__name__}")
    v = float(v)
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonnegative and not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _int_tensor(t: torch.Tensor, name: str, device) -> torch.Tensor:
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or t.numel() != 1:
        raise TypeError(f"{name} must be an int or a one-element integer tensor, got {t.dtype} {tuple(t.shape)}")
    if device is not None and t.device.type != "cpu" and t.device != torch.device(device):
        raise ValueError(f"{name} must be on the CPU or on the device of the data ({device}), got {t.device}")
    return t if t.dtype == torch.int64 else t.to(torch.int64)


def seed(v, device=None) -> tuple[torch.Tensor | None, int]:
    """(tensor or None, int): a tensor seed is read by the kernels from memory; an int is
    reduced to its 64 bits here (``seed_bits``)."""
    if type(v) is int:
        return None, seed_bits(v)
    if isinstance(v, torch.Tensor):
        return _int_tensor(v, "seed", device), 0
    if not is_int(v):
        raise TypeError(f"seed must be an int or a one-element integer tensor, got {type(v).__name__}")
    return None, seed_bits(v)


def offset(v, device=None) -> tuple[torch.Tensor | None, int]:
    """(tensor or None, int): the row offset, an int >= 0 or a one-element integer tensor."""
    if isinstance(v, torch.Tensor):
        return _int_tensor(v, "offset", device), 0
    if not is_int(v) or v < 0 or v >= 1 << 63:
        raise ValueError(f"offset must be a non-negative int (rows) or a one-element integer tensor, got {v!r}")
    return None, int(v)


def shape(s, name: str = "shape") -> tuple[int, ...]:
    s = tuple(s)
    if all(type(d) is int and d >= 0 for d in s):
        return s
    if any(not is_int(d) or d < 0 for d in s):
        raise ValueError(f"{name} must be non-negative ints, got {s}")
    return tuple(int(d) for d in s)


def dtype(d, name: str = "dtype") -> torch.dtype:
    if d not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be one of {FLOAT_DTYPES}, got {d}")
    return d


def callable_(fn, name: str, how: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable as {how}, got {type(fn).__name__}")


def scored(score_fn, x: torch.Tensor, *args, cast: bool = False) -> torch.Tensor:
    """score_fn(x, *args), checked to return a tensor shaped like x (``cast``: in x's dtype)."""
    s = score_fn(x, *args)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got "
                         f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
    return s.to(x.dtype) if cast and s.dtype != x.dtype else s
