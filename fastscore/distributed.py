"""Sampling and losses under torch.distributed (SPEC "Distributed"), on any backend (NCCL
on GPUs, gloo on CPUs).

The noise stream is indexed by row: a sampler or loss run on rows [a, b) of a batch with
``offset=a`` draws exactly those rows of the whole batch's draw. So each rank runs its
contiguous block of rows with its global offset, and

* ``sample(sampler, ...)`` gathered over W ranks equals ``sampler(...)`` in one process, row
  for row (bit for bit on one device type);
* ``loss(loss_fn, score_fn, x_local, ...)`` is the rank's share of the whole batch's mean
  loss, scaled so that DDP's gradient average is one process's gradient on the whole batch.

Rows are split like ``torch.tensor_split``: rank r of W gets rows [r*n//W + min(r, n%W) ...),
the first n % W ranks one more. Samplers whose rows interact cannot be sharded this way and
are refused with the reason: the Langevin corrector's "batch" step size (a batch mean of
norms; use ``step_size_mode="per_sample"``) and the adaptive rk45 ODE solver (one step size
for the batch; use a fixed-step method).
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist

__all__ = ["shard_rows", "sample", "loss", "gather_rows"]

_BATCH_ARGS = ("x0", "x", "shape")  # the parameter that carries the batch, by sampler family


def _world(group):
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("fastscore.distributed needs an initialised process group "
                           "(torch.distributed.init_process_group)")
    return dist.get_rank(group), dist.get_world_size(group)


def shard_rows(n: int, rank: int | None = None, world_size: int | None = None, group=None) -> tuple[int, int]:
    """Rows [start, stop) of an n-row batch that ``rank`` of ``world_size`` owns (both
    default to the process group's)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if rank is None or world_size is None:
        r, w = _world(group)
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    q, extra = divmod(n, world_size)
    start = rank * q + min(rank, extra)
    return start, start + q + (rank < extra)


def gather_rows(local: torch.Tensor, n: int, group=None) -> torch.Tensor:
    """The n-row tensor whose ``shard_rows`` blocks are the ranks' ``local`` tensors, on
    every rank (all_gather of blocks padded to the largest; the sizes are known to every
    rank, so nothing but the data is exchanged)."""
    rank, world = _world(group)
    sizes = [b - a for a, b in (shard_rows(n, r, world) for r in range(world))]
    if local.shape[0] != sizes[rank]:
        raise ValueError(f"local must have the {sizes[rank]} rows of rank {rank}, got {local.shape[0]}")
    padded = local.new_zeros((max(sizes),) + tuple(local.shape[1:]))
    padded[:local.shape[0]] = local
    blocks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(blocks, padded.contiguous(), group=group)
    return torch.cat([b[:s] for b, s in zip(blocks, sizes)])


def _refuse_coupled_rows(sampler, args):
    name = getattr(sampler, "__name__", "")
    if name == "pc_sample" and args["corrector"] == "langevin" and args["step_size_mode"] == "batch" \
            and args["n_corrector_steps"] > 0:
        raise ValueError("pc_sample's Langevin corrector with step_size_mode='batch' takes its step size from "
                         "batch means, which couples the rows: pass step_size_mode='per_sample' to shard it")
    if name == "ode_sample" and args["method"] == "rk45":
        raise ValueError("ode_sample's rk45 picks one step size for the whole batch, which couples the rows: "
                         "use method='heun' or 'euler' to shard it")


def sample(sampler, *args, gather: bool = True, group=None, **kwargs) -> torch.Tensor:
    """Runs ``sampler(*args, **kwargs)`` (a fastscore sampler or k-diffusion drop-in) on this
    rank's rows with the global offset. The batch is the sampler's ``x0``/``x`` tensor (its
    rows are split; ``x_init`` too) or its ``shape`` (the first dimension is split).
    Returns the whole batch on every rank (``gather``) or this rank's rows."""
    signature = inspect.signature(sampler)
    batch_arg = next((a for a in _BATCH_ARGS if a in signature.parameters), None)
    if batch_arg is None or "offset" not in signature.parameters:
        raise TypeError(f"sampler must take the batch as one of {_BATCH_ARGS} and an offset: "
                        f"{getattr(sampler, '__name__', sampler)!r} does not")
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    _refuse_coupled_rows(sampler, bound.arguments)
    batch = bound.arguments[batch_arg]
    n = int(batch[0]) if batch_arg == "shape" else batch.shape[0]
    start, stop = shard_rows(n, group=group)
    if batch_arg == "shape":
        bound.arguments["shape"] = (stop - start,) + tuple(batch[1:])
    else:
        bound.arguments[batch_arg] = batch[start:stop]
    if bound.arguments.get("x_init") is not None:
        bound.arguments["x_init"] = bound.arguments["x_init"][start:stop]
    bound.arguments["offset"] = bound.arguments["offset"] + start
    local = sampler(*bound.args, **bound.kwargs)
    return gather_rows(local, n, group) if gather else local


def loss(loss_fn, score_fn, x, *args, batch_sizes=None, offset: int = 0, group=None, **kwargs) -> torch.Tensor:
    """This rank's part of a fastscore loss (``fastscore.losses.*``) on a batch split over
    ranks: ``x`` is this rank's block; the whole batch is the ranks' blocks in rank order
    (all of ``x.shape[0]`` rows unless ``batch_sizes`` lists every rank's). Runs ``loss_fn``
    with the block's global row offset and scales its mean by this block's share, so the
    mean over ranks (what DDP averages into the gradients) is the whole batch's loss."""
    rank, world = _world(group)
    sizes = [x.shape[0]] * world if batch_sizes is None else list(batch_sizes)
    if len(sizes) != world or sizes[rank] != x.shape[0]:
        raise ValueError(f"batch_sizes must list the {world} ranks' batch sizes with x.shape[0] = {x.shape[0]} "
                         f"at rank {rank}, got {batch_sizes!r}")
    local = loss_fn(score_fn, x, *args, offset=offset + sum(sizes[:rank]), **kwargs)
    return local * (x.shape[0] * world / sum(sizes))
