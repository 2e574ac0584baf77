"""What every Triton kernel family shares: block sizes, integer arguments read from memory
(seed, offset), coefficient slots, and the host-side packing of both for a launch.

A seed or offset reaches a kernel as a pointer to a one-element int64 tensor on the data's
device, loaded inside the kernel — never read on the host, so a CUDA-graph replay after
``seed_t.fill_(s)`` draws seed s — or as an int (a Python int, or a CPU tensor when the data
is on the GPU: host memory, read without a sync).

A coefficient slot is a float argument (fp32 compute), a 0-d tensor, or a per-row tensor
with a stride (a column of a [N, 3] table is a view with stride 3). Triton has no fp64
scalar arguments, so for fp64 data a float becomes a 0-d fp64 tensor on the device (the
only launch that copies a value to the device; fp64 is the exception on a GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Under the interpreter each program instance costs ~8 ms but a big block vectorises
# within one: one big block, capped, there; a small block on the GPU (occupancy).
INTERPRETER_MAX_BLOCK = 8192

COEF_VALUE, COEF_SCALAR, COEF_ROW = 0, 1, 2


def block_for(device, work: int, gpu_block: int) -> int:
    """Elements (or counters) per program for ``work`` of them on ``device``."""
    if torch.device(device).type != "cpu":
        return gpu_block
    return min(max(triton.next_power_of_2(max(int(work), 1)), 16), INTERPRETER_MAX_BLOCK)


@triton.jit
def as_int64(v):
    """A scalar int argument as int64. Via uint64 because the interpreter stores Python
    ints in [2**31, 2**32) as uint32 data typed i64, so ``.to(tl.int64)`` would be a
    no-op and later signed shifts would read them as negative int32; compiled, this is
    a sign extension (i32) or nothing (i64)."""
    return v.to(tl.uint64).to(tl.int64)


@triton.jit
def load_int(ptr, value, FROM_PTR: tl.constexpr):
    """An int64 kernel input: loaded from ``ptr`` (a device tensor) or the int ``value``."""
    if FROM_PTR:
        v = tl.load(ptr)
    else:
        v = as_int64(value)
    return v


@triton.jit
def coef_at(vals, ptrs, strides, MODES: tl.constexpr, j: tl.constexpr, row, mask, cd: tl.constexpr):
    """Coefficient slot ``j`` for the elements of rows ``row``, rounded once to ``cd``."""
    if MODES[j] == 0:  # COEF_VALUE
        c = vals[j]
    elif MODES[j] == 1:  # COEF_SCALAR
        c = tl.load(ptrs[j])
    else:  # COEF_ROW
        c = tl.load(ptrs[j] + row * strides[j], mask=mask, other=0.0)
    return c.to(cd)


def _host_int(t: torch.Tensor) -> int:
    # Only ever a CPU tensor here (host memory: no device sync); device tensors are loaded
    # inside the kernel.
    return int(t)


def int_arg(t, value: int, device):
    """(pointer tensor or None, int, FROM_PTR) for an int64 input of a kernel on ``device``."""
    if t is None:
        return None, int(value), False
    if t.device.type == "cpu" and torch.device(device).type != "cpu":
        return None, _host_int(t), False
    return t, 0, True


def stream_args(seed_t, seed, offset_t, offset, device):
    """The launch arguments of a stream position: (seed_ptr, seed, offset_ptr, offset) and
    the constexprs SEED_PTR, OFFSET_PTR."""
    sp, s, s_from = int_arg(seed_t, seed, device)
    op, o, o_from = int_arg(offset_t, offset, device)
    return (sp, s, op, o), {"SEED_PTR": s_from, "OFFSET_PTR": o_from}


def coef_args(values, x: torch.Tensor):
    """Coefficient slots (floats or tensors) -> the tuples (vals, ptrs, strides) and MODES."""
    fp64 = x.dtype == torch.float64
    vals, ptrs, strides, modes = [], [], [], []
    for v in values:
        if not isinstance(v, torch.Tensor):
            if not fp64:
                vals.append(float(v))
                ptrs.append(None)
                strides.append(0)
                modes.append(COEF_VALUE)
                continue
            v = torch.tensor(v, dtype=torch.float64, device=x.device)
        vals.append(None)
        ptrs.append(v)
        strides.append(v.stride(0) if v.dim() == 1 else 0)
        modes.append(COEF_ROW if v.dim() == 1 else COEF_SCALAR)
    return (tuple(vals), tuple(ptrs), tuple(strides)), tuple(modes)


def written(*tensors) -> None:
    """Bumps the version counters of tensors a kernel wrote in place, as the dispatcher
    does for a registered op: autograd then refuses a saved tensor that a plain call
    changed (a second bump on the registered path is harmless)."""
    for t in tensors:
        if t is not None:
            torch.autograd.graph.increment_version(t)


def slot_values(coef, coef_t, coef_slot):
    """The plain signature's (coef, coef_t, coef_slot) as one value per slot."""
    values = list(coef)
    for i, t in zip(coef_slot, coef_t):
        values[i] = t
    return values
