"""Score matching losses on fused kernels; each returns the mean loss over the batch,
differentiable in the model's parameters.

Call conventions (SPEC "Losses"): ``score_matching``, ``sliced_score_matching`` and
``denoising_score_matching`` call ``score_fn(x)``; ``anneal_dsm`` calls
``score_fn(x_tilde, sigma)`` with sigma a [B] tensor; ``sde_score_loss`` calls
``score_fn(x_t, t)``.

Randomness comes from the noise stream: one integer ``seed`` (and ``offset`` in rows)
fixes every draw, and a batch split across calls or ranks draws exactly its rows of
the whole batch's draw. Per-sample random choices (noise level index, time) are taken
from Philox words of ``derive_seed(seed, k)`` at counter offset + row.
"""

from __future__ import annotations

import torch

from fastscore import ops
from fastscore._common import uniform_f32
from fastscore.sde import SDE

SLICED_DISTS = ("rademacher", "gaussian")
JACOBIAN_MODES = ("vjp", "jvp")


def _check_x(x):
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [B, ...], got shape {tuple(x.shape)}")


def _check_fn(score_fn):
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")


def _scored(score_fn, x, *args):
    s = score_fn(x, *args)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got "
                         f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
    return s


def _denoising_loss(score_fn, x, sigma, weight, seed, offset, mean_scale=1.0, score_arg=None):
    """mean_b 0.5 w_b |s(x~_b) + z_b / sigma_b|^2 with x~ = m x + sigma z: ``perturb`` then the
    fused ``dsm_loss`` under one (seed, offset), so both see the same z and none is stored."""
    # sigma and weight are this module's own (a checked level table, an SDE's schedule): the
    # unchecked doors skip a reduction and a host read per coefficient per step.
    x_tilde = ops._perturb(x.detach(), sigma, seed, offset, mean_scale)
    s = _scored(score_fn, x_tilde, *(() if score_arg is None else (score_arg,)))
    return ops._dsm_loss(s, sigma, seed, offset, weight, mean=True)


def _choice_seed(seed):
    """derive_seed(seed, 0), the seed of the per-sample choices (level, time): an int for an
    int seed; for a tensor seed, derived where it lives (ops.derive_seeds), so neither a
    device seed nor one being traced is read on the host."""
    if isinstance(seed, torch.Tensor):
        return ops.derive_seeds(seed.reshape(()), 1)[0]
    return ops.derive_seed(seed, 0)


def row_uniforms(seed: int, offset: int, rows: int, device="cpu") -> torch.Tensor:
    """One U[0, 1) float32 per row: Triton's uniform map of word 0 at counter offset + row."""
    return uniform_f32(ops.philox_words(seed, offset, rows, device=device)[:, 0])


def row_labels(seed: int, offset: int, rows: int, n_levels: int, device="cpu") -> torch.Tensor:
    """One level index in [0, n_levels) per row, int64: floor(U * n_levels) in float64, U the
    row's uniform (``row_uniforms``) — one fused pass (ops.philox_labels)."""
    return ops.philox_labels(seed, offset, rows, n_levels, device=device)


def score_matching(score_fn, x):
    """Hyvärinen's exact score matching: E[0.5 |s(x)|^2 + tr(ds/dx)]. The trace is exact:
    D vector-Jacobian products with the unit vectors, batched in one autograd call
    (``is_grads_batched``), so the cost is O(D) backward passes — for small D only."""
    _check_fn(score_fn)
    _check_x(x)
    x = x.detach().requires_grad_(True)
    s = _scored(score_fn, x)
    B, D = x.shape[0], x[0].numel()
    basis = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, 1, D).expand(D, B, D).reshape((D,) + tuple(x.shape))
    rows = torch.autograd.grad(s, x, grad_outputs=basis, is_grads_batched=True, create_graph=True)[0]
    trace = rows.reshape(D, B, D).diagonal(dim1=0, dim2=2).sum(-1)  # sum_i d s_i / d x_i
    return (0.5 * (s.reshape(B, -1) ** 2).sum(-1) + trace).mean()


def sliced_score_matching(score_fn, x, n_projections=1, dist="rademacher", variance_reduction=False, seed=0,
                          offset=0, mode="vjp"):
    """Sliced score matching (Song et al. 2019): E_v[v^T (ds/dx) v + 0.5 (v^T s)^2], or the
    variance-reduced E_v[v^T (ds/dx) v] + 0.5 |s|^2. The n_projections probes per sample
    come from the stream (shape [B, P, ...], rows from ``offset``) and are handled in one
    batched call: ``mode="vjp"`` runs the model once and takes P vector-Jacobian products
    in one batched backward (no copy of the batch per projection); ``mode="jvp"`` uses
    forward-mode JVPs (torch.func), which keeps no backward graph of the double
    derivative. The per-sample reductions are one fused op (``sliced_score_terms``)."""
    _check_fn(score_fn)
    _check_x(x)
    if not isinstance(n_projections, int) or isinstance(n_projections, bool) or n_projections < 1:
        raise ValueError(f"n_projections must be an int >= 1, got {n_projections!r}")
    if dist not in SLICED_DISTS:
        raise ValueError(f"dist must be one of {SLICED_DISTS}, got {dist!r}")
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"mode must be one of {JACOBIAN_MODES}, got {mode!r}")
    B, P = x.shape[0], n_projections
    v = ops.probes((B, P) + tuple(x.shape[1:]), seed, offset, dist, dtype=x.dtype, device=x.device)
    v_first = v.transpose(0, 1)  # [P, B, ...]: one probe batch per projection
    if mode == "vjp":
        x = x.detach().requires_grad_(True)
        s = _scored(score_fn, x)
        jv = torch.autograd.grad(s, x, grad_outputs=v_first.contiguous(), is_grads_batched=True, create_graph=True)[0]
    else:
        x = x.detach()
        s = _scored(score_fn, x)

        def jvp_one(probe):
            return torch.func.jvp(score_fn, (x,), (probe,))[1]

        jv = torch.func.vmap(jvp_one)(v_first.contiguous())
    return ops.sliced_score_terms(s, jv.transpose(0, 1), v, variance_reduction).mean()


def denoising_score_matching(score_fn, x, sigma, seed=0, offset=0):
    """Vincent's DSM at one noise level: x~ = x + sigma z, loss 0.5 |s(x~) + z / sigma|^2.
    z comes from (seed, offset) in ``perturb`` and is regenerated by the fused
    ``dsm_loss`` (forward and backward): no noise tensor is kept."""
    _check_fn(score_fn)
    _check_x(x)
    if isinstance(sigma, torch.Tensor) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a positive float, got {sigma!r}")
    return _denoising_loss(score_fn, x, float(sigma), 1.0, seed, offset)


def anneal_dsm(score_fn, x, sigmas, seed=0, offset=0, anneal_power=2.0, labels=None):
    """NCSN's anneal_dsm_score_estimation: a noise level index per sample (uniform, from
    the stream, or ``labels``), x~ = x + sigma z, loss 0.5 sigma^anneal_power
    |s(x~, sigma) + z / sigma|^2 (lambda(sigma) = sigma^2 by default), mean over the batch."""
    _check_fn(score_fn)
    _check_x(x)
    table, table_x = _level_table(sigmas, x, anneal_power)
    B = x.shape[0]
    if labels is None:  # the stream's labels: one fused pass
        rows = ops.philox_labels(_choice_seed(seed), offset, B, len(table_x), device=x.device)
    elif not isinstance(labels, torch.Tensor) or labels.shape != (B,) or labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"labels must be an integer tensor of shape [{B}]")
    else:
        rows = labels.to(x.device)
    picked = torch.index_select(table, 0, rows)  # [B, 2]: sigma, weight (column views)
    return _denoising_loss(score_fn, x, picked[:, 0], picked[:, 1], seed, offset,
                           score_arg=torch.index_select(table_x, 0, rows))


_LAST_LEVELS: list = [None]  # (sigmas, key, tables): the last level table, checked and converted once


def _level_table(sigmas, x, power):
    """(table [L, 2] float64 of (sigma, sigma^power), sigmas in x.dtype), checked, on x's
    device. A training loop passes the same tensor every step, so the last one's tables are
    kept (keyed by identity, version, device, dtype, power): no conversion, check or host
    read per step."""
    # (While compiling, neither: a tensor's version and values are no guards to trace.)
    compiling = torch.compiler.is_compiling()
    key = None if compiling else (getattr(sigmas, "_version", None), x.device, x.dtype, power)
    last = _LAST_LEVELS[0]
    if not compiling and last is not None and last[0] is sigmas and last[1] == key:
        return last[2]
    levels = torch.as_tensor(sigmas, dtype=torch.float64, device=x.device)
    # (The sign check reads the levels: on the host only, never a sync on a device.)
    if levels.dim() != 1 or len(levels) == 0 or (levels.is_cpu and not compiling and not bool((levels > 0).all())):
        raise ValueError("sigmas must be a non-empty 1-D sequence of positive noise levels")
    table = torch.stack([levels, levels * levels if power == 2.0 else levels**power], 1)  # [L, 2]
    tables = (table, levels.to(x.dtype))
    if isinstance(sigmas, torch.Tensor) and not compiling:
        _LAST_LEVELS[0] = (sigmas, key, tables)
    return tables


def sde_score_loss(score_fn, sde, x, seed=0, offset=0, likelihood_weighting=False, eps=1e-5, reduce_mean=False):
    """score_sde's get_sde_loss_fn (continuous time): t ~ U(eps, T) per sample, x_t = m_t x
    + s_t z, loss ||s(x_t, t) s_t + z||^2 summed (x0.5) or averaged over dims; with
    likelihood weighting ||s + z / s_t||^2 g(t)^2. Both are the fused dsm_loss with
    sigma = s_t and a per-sample weight; z is never stored."""
    _check_fn(score_fn)
    _check_x(x)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a fastscore.sde.SDE, got {type(sde).__name__}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps!r}")
    B, D = x.shape[0], x[0].numel()
    t = row_uniforms(_choice_seed(seed), offset, B, device=x.device).double() * (sde.T - eps) + eps
    mean_scale, std = sde.marginal_coef(t)
    weight = sde.diffusion_coef(t) ** 2 if likelihood_weighting else std**2
    if reduce_mean:  # score_sde's mean over dims instead of 0.5 * sum
        weight = weight * (2.0 / D)
    return _denoising_loss(score_fn, x, std, weight, seed, offset, mean_scale=mean_scale, score_arg=t.to(x.dtype))
