"""fastscore's op layer: the one dispatch point between the public API and the backends.

Public ops: ``noise``, ``probes``, ``philox_words``, ``derive_seed(s)`` (the stream);
``step_``, ``langevin_step_``, ``update``, ``perturb``, ``combine`` (the fused update
a*x + sum_k b_k*y_k + c*z); ``langevin_corrector_``; ``dsm_loss``; ``sliced_score_terms``.

Every op has one description here: its schema (SCHEMAS, defined into the namespaces of
all backends), its public function (checks that name the bad argument, then one call),
its fake (meta) kernel and its autograd, side by side. Every backend implements the same
plain signature (fastscore/reference.py documents it). A call takes one of two doors,
chosen in ``_call`` by one predicate:
  * the plain door — the backend's function called directly (the C++ one without the
    dispatcher) — for eager calls that need neither autograd nor tracing;
  * the registered op ``torch.ops.<namespace>.<op>`` — for autograd, torch.compile,
    opcheck, meta tensors and tensor subclasses.
Seeds, offsets and coefficients may be Python numbers or tensors; tensors are passed on
as they are and read by the kernels from memory, so nothing here reads device data on
the host: a launch is safe inside CUDA-graph capture, and under torch.compile a new seed
(``seed=torch.tensor(k)``) is new data, not a new graph.
"""

from __future__ import annotations

import functools
import math

import torch

from fastscore import _checks, backends, reference
from fastscore._common import compute_dtype, derive_seed, row_geometry, seed_bits

__all__ = ["noise", "probes", "philox_words", "philox_labels", "derive_seed", "derive_seeds", "step_",
           "langevin_step_", "update", "perturb", "combine", "langevin_corrector_", "dsm_loss", "sliced_score_terms"]

# --------------------------------------------------------------------------- the op surface

_STREAM = "Tensor? seed_t, int seed, Tensor? offset_t, int offset"
_COEFS = "float[] coef, Tensor[] coef_t, int[] coef_slot"
SCHEMAS = {  # op: (family: the file of each backend that implements it, schema)
    "fill_noise_": ("noise", f"(Tensor(a!) out, int dist, {_STREAM}) -> ()"),
    "fill_philox_": ("noise", "(Tensor(a!) out, Tensor? seed_t, int seed, int counter) -> ()"),
    "fill_labels_": ("noise", "(Tensor(a!) out, int n_levels, Tensor? seed_t, int seed, int counter) -> ()"),
    "derive_seeds": ("noise", "(Tensor seed, int n) -> Tensor"),
    "step_": ("step", f"(Tensor(a!) x, Tensor(b!)? out2, Tensor[] ys, {_COEFS}, Tensor? noise, {_STREAM}) -> ()"),
    "update_": ("step", f"(Tensor(a!) out, Tensor(b!)? out2, Tensor x, Tensor[] ys, {_COEFS}, Tensor? noise, "
                        f"{_STREAM}) -> ()"),
    "lincomb": ("step", f"(Tensor x, Tensor[] ys, {_COEFS}, Tensor? noise, {_STREAM}) -> Tensor"),
    "langevin_corrector_": ("corrector", "(Tensor(a!) x, Tensor(b!)? x_mean, Tensor score, float snr, float alpha, "
                                         f"Tensor? alpha_t, bool per_sample, Tensor? noise, {_STREAM}) -> ()"),
    "dsm_loss": ("dsm", "(Tensor score, float sigma, Tensor? sigma_t, float weight, Tensor? weight_t, Tensor? noise, "
                        f"{_STREAM}) -> Tensor"),
    "dsm_loss_backward": ("dsm", "(Tensor grad, Tensor score, float sigma, Tensor? sigma_t, float weight, "
                                 f"Tensor? weight_t, Tensor? noise, {_STREAM}) -> Tensor"),
    "sliced_score_terms": ("sliced", "(Tensor score, Tensor jv, Tensor v, bool variance_reduction) -> (Tensor, Tensor)"),
    "sliced_score_terms_backward": ("sliced", "(Tensor grad, Tensor score, Tensor v, Tensor dots, "
                                              "bool variance_reduction) -> (Tensor, Tensor)"),
}
NAMESPACES = tuple(dict.fromkeys(b.namespace for b in backends.REGISTRY.values()))
_LIBS = {ns: torch.library.Library(ns, "FRAGMENT") for ns in NAMESPACES}  # kept alive: they own the ops
for _lib in _LIBS.values():
    for _name, (_, _args) in SCHEMAS.items():
        _lib.define(_name + _args)
for _name in SCHEMAS:
    # The reference runs anywhere; the Triton launchers run on CUDA (and on CPU under the
    # interpreter). fastscore:: gets its CPU and CUDA kernels from csrc/ (fastscore._C).
    _LIBS["fastscore_reference"].impl(_name, getattr(reference, _name), "CompositeExplicitAutograd")
    for _key in ("CPU", "CUDA"):
        _LIBS["fastscore_triton"].impl(_name, (lambda op: lambda *a: getattr(backends.REGISTRY["triton"].plain, op)(*a))(
            _name), _key)


def _fake(name):
    """Registers a fake (meta) kernel for op ``name`` in every namespace."""
    def register(fn):
        for ns in NAMESPACES:
            torch.library.register_fake(f"{ns}::{name}", fn, lib=_LIBS[ns])
        return fn

    return register


_PLAIN_AUTOGRAD = {}  # op -> (setup_context, backward_for) for the plain door with autograd


def _autograd(name, backward_for, setup_context, plain=False):
    """Registers autograd for op ``name`` in every namespace; ``backward_for(kernels)``
    gives the backward that calls those kernels (``torch.ops.<ns>`` here). With ``plain``,
    eager calls that need autograd take the same setup and backward around the backend's
    plain kernels (``_PlainAutograd``) — for ops whose differentiable inputs are all
    top-level tensors."""
    for ns in NAMESPACES:
        torch.library.register_autograd(f"{ns}::{name}", backward_for(getattr(torch.ops, ns)),
                                        setup_context=setup_context, lib=_LIBS[ns])
    if plain:
        _PLAIN_AUTOGRAD[name] = (setup_context, backward_for)


class _PlainAutograd(torch.autograd.Function):
    """An op's registered setup_context and backward around its plain kernels: the
    autograd of the registered op without torch.library's Python wrapper (argument
    defaults, redispatch), which costs more than the kernels of a training step's loss
    at the sizes of a 2-D toy batch."""

    @staticmethod
    def forward(ctx, op, kernels, mean, *args):
        out = getattr(kernels, op)(*args)
        setup, backward_for = _PLAIN_AUTOGRAD[op]
        setup(ctx, args, out)
        ctx.fastscore_backward, ctx.fastscore_op = backward_for(kernels), op
        if mean:  # the batch mean of a per-sample output, without a node of its own
            ctx.rows = out.shape[0]
            return out.mean()
        if isinstance(out, tuple):
            ctx.mark_non_differentiable(*out[1:])  # auxiliary outputs (the sliced dots)
        return out

    @staticmethod
    def backward(ctx, *grads):
        if hasattr(ctx, "rows"):  # what MeanBackward would hand on: g / B per row, in g's dtype
            grads = (grads[0].expand(ctx.rows) / ctx.rows,)
        if torch.autograd.profiler._is_profiler_enabled or grads[0].is_cuda:
            g = _labelled(f"fastscore::{ctx.fastscore_op}_backward", grads[0],
                          lambda *a: ctx.fastscore_backward(ctx, *a), grads)
        else:
            g = ctx.fastscore_backward(ctx, *grads)
        return (None, None, None) + tuple(g)


# --------------------------------------------------------------------------- the one dispatch point

# Every registered op, looked up once (a cache filled while tracing would be a guard that fails).
_REGISTERED = {(ns, op): getattr(getattr(torch.ops, ns), op).default for ns in NAMESPACES for op in SCHEMAS}


# Looked up once: an eager call at 4x2 costs ~5 µs, and each attribute chain ~0.05 µs of it.
_Tensor = torch.Tensor
_is_compiling = torch.compiler.is_compiling
_functorch_active = torch._C._are_functorch_transforms_active
_profiler = torch.autograd.profiler  # its _is_profiler_enabled is read per call: it changes


def _call(op, x, *args, grad=False, name=None, mean=False):
    """Runs ``op`` on the backend that serves ``x``, through one of its two doors, inside
    the profiler label "fastscore::<name>" (the public op's name) and, on CUDA, an NVTX range.
    ``mean``: return the batch mean of the op's per-sample output."""
    backend = backends.select(x)
    if _is_compiling():
        out = _REGISTERED[(backend.namespace, op)](*args)
        return out.mean() if mean else out
    # The one predicate: the plain door for eager calls on plain tensors (with the op's own
    # autograd around it where the call needs one and the op has a plain one).
    cpu = x.is_cpu  # neither meta nor CUDA
    if (type(x) is _Tensor and backend.make_plain is not None and (cpu or not x.is_meta)
            and not _functorch_active() and (not grad or op in _PLAIN_AUTOGRAD)):
        if grad:
            native = _native_autograd(backend, op)
            fn = (functools.partial(_PlainAutograd.apply, op, backend.plain, mean) if native is None
                  else (lambda f, m: lambda *a: f(*a, m))(native, mean))
            mean = False  # taken inside
        else:
            fn = _PLAIN.get((backend.name, op)) or _plain_fn(backend, op)
    else:
        fn = _REGISTERED[(backend.namespace, op)]
    if mean:
        fn = (lambda f: lambda *a: f(*a).mean())(fn)
    if not (_profiler._is_profiler_enabled or not cpu and x.is_cuda):
        return fn(*args)
    return _labelled(f"fastscore::{name or op}", x, fn, args, in_place=op.endswith("_"))


# (label, bytes) of every labelled call while a list is installed here (fastscore.profile does).
BYTES_LOG: list | None = None


def _nbytes(v) -> int:
    if isinstance(v, torch.Tensor):
        return v.numel() * v.element_size()
    if isinstance(v, (list, tuple)):
        return sum(_nbytes(t) for t in v)
    return 0


def _labelled(label, x, fn, args, in_place=False):
    """fn(*args) inside the profiler label and, on CUDA, an NVTX range; with BYTES_LOG
    installed, logs the bytes the call moves: every tensor argument read once, every
    output (and an in-place target) written once — the noise it makes costs none."""
    if x.is_cuda:
        torch.cuda.nvtx.range_push(label)
    try:
        with torch.profiler.record_function(label):
            out = fn(*args)
    finally:
        if x.is_cuda:
            torch.cuda.nvtx.range_pop()
    if BYTES_LOG is not None:
        BYTES_LOG.append((label, _nbytes(args) + _nbytes(out) + (_nbytes(x) if in_place else 0)))
    return out


_PLAIN: dict[tuple[str, str], object] = {}  # filled by eager calls only (never while tracing)


def _native_autograd(backend, op):
    """The backend's own plain door with autograd (``<op>_autograd``: a C++ autograd node,
    arguments + ``mean``), or None: then _PlainAutograd wraps the plain kernels."""
    key = (backend.name, op + "_autograd")
    if key not in _PLAIN:
        _PLAIN[key] = getattr(backend.plain, op + "_autograd", None)
    return _PLAIN[key]


def _plain_fn(backend, op):
    fn = _PLAIN.get((backend.name, op))
    if fn is None:
        fn = _PLAIN[(backend.name, op)] = getattr(backend.plain, op)
    return fn


def _int_seed(seed, offset):
    """The seed's 64 bits as the schemas' int64 (seed_bits) where seed and offset are plain
    ints in range (seed < 2**64, offset < 2**63); else None (a tensor, or a value to check)."""
    if type(seed) is int and type(offset) is int and 0 <= seed < 1 << 64 and 0 <= offset < 1 << 63:
        return seed - (1 << 64) if seed >> 63 else seed
    return None


def _stream(seed, offset, x):
    """(seed_t, seed, offset_t, offset) of the schemas for data ``x``; plain ints take the short way."""
    bits = _int_seed(seed, offset)
    if bits is not None:
        return None, bits, None, offset
    return _checks.seed(seed, x.device) + _checks.offset(offset, x.device)


def _slots(values):
    """Coefficient values -> (coef, coef_t, coef_slot) of the schemas: the floats (0.0 where
    a tensor stands), the tensors, and the slot of each tensor. (A list of tensors, not of
    optional ones: torch.library's autograd can hand gradients only to the former.)"""
    for v in values:
        if type(v) is not float:
            break
    else:
        return values, [], []  # floats only: the common eager case
    coef, coef_t, coef_slot = [], [], []
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            coef.append(0.0)
            coef_t.append(v)
            coef_slot.append(i)
        else:
            coef.append(v)
    return coef, coef_t, coef_slot


def _requires_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


# --------------------------------------------------------------------------- the stream


@_fake("fill_noise_")
def _(out, dist, seed_t, seed, offset_t, offset):
    return None


@_fake("fill_philox_")
def _(out, seed_t, seed, counter):
    return None


@_fake("fill_labels_")
def _(out, n_levels, seed_t, seed, counter):
    return None


@_fake("derive_seeds")
def _(seed, n):
    return seed.new_empty((n,), dtype=torch.int64)


PROBE_DISTS = reference.NOISE_DISTS  # ("gaussian", "rademacher")


def probes(shape, seed, offset=0, dist="rademacher", dtype=torch.float32, device="cpu"):
    """The stream over ``shape`` (rows from ``offset``) as Hutchinson probes: "gaussian" is
    ``noise``; "rademacher" is +1, or -1 where bit 31 of the Philox word behind element j
    (word j & 3 of counter j >> 2) is set. Values are exact in every float dtype."""
    if dist not in PROBE_DISTS:
        raise ValueError(f"dist must be one of {PROBE_DISTS}, got {dist!r}")
    out = torch.empty(_checks.shape(shape), dtype=_checks.dtype(dtype), device=device)
    if out.numel():
        _call("fill_noise_", out, out, PROBE_DISTS.index(dist), *_stream(seed, offset, out),
              name="noise" if dist == "gaussian" else "probes")
    return out


def noise(shape, seed, offset=0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The noise stream over ``shape`` (rows from ``offset``): N(0, 1) float32 values,
    bit-identical on every backend, converted to ``dtype`` (fp16/bf16 round to nearest)."""
    return probes(shape, seed, offset, "gaussian", dtype, device)


def _check_counters(first_counter, n):
    if not (_checks.is_int(first_counter) and 0 <= first_counter < 1 << 63 and _checks.is_int(n) and n >= 0):
        raise ValueError(f"first_counter and n must be non-negative ints, got {first_counter!r}, {n!r}")


def philox_words(seed, first_counter: int, n: int, device="cpu") -> torch.Tensor:
    """Raw Philox4x32-10 words (int32 bit patterns, [n, 4]) of counters first..first+n-1."""
    _check_counters(first_counter, n)
    out = torch.empty((n, 4), dtype=torch.int32, device=device)
    if n:
        seed_t, s = _checks.seed(seed, out.device)
        _call("fill_philox_", out, out, seed_t, s, int(first_counter), name="philox_words")
    return out


def philox_labels(seed, first_counter: int, n: int, n_levels: int, device="cpu") -> torch.Tensor:
    """One level index in [0, n_levels) per counter first..first+n-1 (int64 [n]): floor(U *
    n_levels) in float64, U Triton's uniform of the counter's word 0 (_common.stream_label) —
    NCSN's per-sample noise level, drawn in one pass (no search of the words, whose branches
    a CPU mispredicts on fresh words: ~15 µs at 2048 rows)."""
    _check_counters(first_counter, n)
    if not (_checks.is_int(n_levels) and 1 <= n_levels <= 1 << 53):
        raise ValueError(f"n_levels must be an int in [1, 2**53], got {n_levels!r}")
    out = torch.empty(n, dtype=torch.int64, device=device)
    if n:
        seed_t, s = _checks.seed(seed, out.device)
        _call("fill_labels_", out, out, int(n_levels), seed_t, s, int(first_counter), name="philox_labels")
    return out


def derive_seeds(seed, n: int, device=None) -> torch.Tensor:
    """The step seeds ``derive_seed(seed, k)`` for k < n, as an int64 tensor (two's
    complement) on the seed's device (``device`` for an int seed, CPU by default). A tensor
    seed stays on its device: the seeds are derived there, with no host read."""
    if not _checks.is_int(n) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(seed, torch.Tensor):
        _checks.seed(seed)
        return torch.tensor([seed_bits(derive_seed(seed, k)) for k in range(n)], dtype=torch.int64,
                            device=device or "cpu")
    seed_t, _ = _checks.seed(seed)
    return _call("derive_seeds", seed_t, seed_t, int(n))


# --------------------------------------------------------------------------- the fused update


@_fake("step_")
def _(x, out2, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset):
    return None


@_fake("update_")
def _(out, out2, x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset):
    return None


@_fake("lincomb")
def _(x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _lincomb_setup(ctx, inputs, output):
    x, ys, coef, coef_t, coef_slot, noise, seed_t, seed, offset_t, offset = inputs
    ctx.coef, ctx.coef_slot, ctx.stream, ctx.n_ys = list(coef), list(coef_slot), (seed, offset), len(ys)
    ctx.save_for_backward(x, noise, seed_t, offset_t, *ys, *coef_t)


def _lincomb_backward_for(kernels):
    def backward(ctx, grad):
        """out = a x + sum_k b_k y_k + c z: d/dx = a g, d/dy_k = b_k g, d/dnoise = c g, and a
        tensor coefficient gets the row sums (or the total) of g times its term."""
        x, noise, seed_t, offset_t, *rest = ctx.saved_tensors
        ys, coef_t = rest[:ctx.n_ys], rest[ctx.n_ys:]
        coef, n = ctx.coef, ctx.n_ys + 2
        by_slot = reference.slot_tensors(len(coef), coef_t, ctx.coef_slot)
        cd = compute_dtype(x.dtype)
        g = grad.to(cd)

        def c(i):
            return reference.per_sample(coef[i] if by_slot[i] is None else by_slot[i], x, cd)

        noisy = reference.has_noise_term(coef, by_slot, n - 1)
        z = None
        if noisy and by_slot[n - 1] is not None and by_slot[n - 1].requires_grad:
            if noise is not None:
                z = noise.to(cd)
            else:
                z = torch.empty(x.shape, dtype=cd, device=x.device)
                kernels.fill_noise_(z, 0, seed_t, ctx.stream[0], offset_t, ctx.stream[1])
        terms = [x, *ys, z]
        dims = tuple(range(1, x.dim()))
        grad_coef_t = []
        for i, t in zip(ctx.coef_slot, coef_t):
            if not t.requires_grad or terms[i] is None:
                grad_coef_t.append(None)
                continue
            prod = g * terms[i].to(cd)
            grad_coef_t.append((prod.sum(dims) if t.dim() == 1 else prod.sum()).to(t.dtype))
        grad_x = (c(0) * g).to(x.dtype) if x.requires_grad else None
        grad_ys = [(c(1 + k) * g).to(y.dtype) if y.requires_grad else None for k, y in enumerate(ys)]
        grad_noise = (c(n - 1) * g).to(noise.dtype) if noise is not None and noise.requires_grad and noisy else None
        # (An empty int list is a list to torch.library's autograd, a non-empty one a leaf.)
        return grad_x, grad_ys, None, grad_coef_t, [] if not ctx.coef_slot else None, grad_noise, None, None, None, None

    return backward


_autograd("lincomb", _lincomb_backward_for, _lincomb_setup)


def _explicit_noise(noise, x):
    """An explicit noise tensor, checked, in the compute dtype the kernels read."""
    _checks.like(noise, x, "noise", same_dtype=False)
    cd = compute_dtype(x.dtype)
    return noise if noise.dtype == cd else noise.to(cd)


# True for plain CPU float tensors like the first, none requiring grad (fastscore._C: one
# call instead of ten tensor attribute reads); without the extension every call is checked in full.
_plain_like = getattr(backends._C, "plain_like", None)


def _check_in_place(op, x, score, noise, out2, out2_name, score_optional=False):
    """The checks of the sampler updates: x, score (None allowed where ``score_optional``),
    the explicit noise and the second output."""
    if noise is None and out2 is None and _plain_like is not None and not _is_compiling() and (
            _plain_like(x, score) if score is not None else score_optional and _plain_like(x)):
        return  # the common eager case: nothing needs grad, nothing aliases
    _checks.float_tensor(x, "x")
    if score is not None:
        _checks.like(score, x, "score")
    elif not score_optional:
        raise TypeError("score must be a tensor shaped like x, got None")
    if out2 is not None:
        _checks.like(out2, x, out2_name)
        _checks.not_aliased(out2, x, out2_name)
    if x.requires_grad and x.is_leaf and torch.is_grad_enabled():
        raise RuntimeError(f"x is a leaf that requires grad; {op} updates x in place (use perturb, or torch.no_grad())")
    _checks.no_grad(op, x, noise, out2, score)


def _update(op, x, out, out2, ys, values, seed, offset, noise):
    """The fused update into ``out`` (x itself for an in-place op) and ``out2``."""
    stream = _stream(seed, offset, x)
    if noise is not None:
        noise = _explicit_noise(noise, x)
    if out is x:
        _call("step_", x, x, out2, ys, *_slots(values), noise, *stream, name=op)
    else:
        _call("update_", x, out, out2, x, ys, *_slots(values), noise, *stream, name=op)
    return out


def _plain_door(seed, offset, x, *tensors):
    """(backend, seed bits) where the call is the common eager one — int seed and offset, x
    and ``tensors`` plain CPU tensors like x that need no grad, nothing compiling,
    transforming or profiling — and the backend serving x has plain kernels; else None. The
    plain doors below then hand the kernel exactly what the general way would: that way
    checks and labels everything, ~1-6 µs a call, as much as a 2-D toy batch's kernel."""
    bits = _int_seed(seed, offset)
    if (bits is None or _plain_like is None or _is_compiling() or not _plain_like(x, *tensors)
            or _functorch_active() or _profiler._is_profiler_enabled):
        return None
    backend = backends.select(x)
    return None if backend.make_plain is None else (backend, bits)


def _plain_step(x, score, coefs, seed, offset) -> bool:
    """The samplers' common step — float coefficients [a, b, c], the stream's z, no x_mean —
    into the backend's plain step_; False where the call is not that case (the caller then
    takes the general way)."""
    door = _plain_door(seed, offset, x, score)
    if door is None:
        return False
    backend, bits = door
    _plain_fn(backend, "step_")(x, None, [score], coefs, [], [], None, None, bits, None, offset)
    return True


def _plain_combine(x, ys, coefs, seed, offset, out, out2=None, coefs2=None):
    """combine's common call (the k-diffusion and diffusers steps: float coefficients, the
    stream's z) into the plain step_ or update_ the general way would reach; returns out, or
    None where the call is not that case."""
    if len(ys) > 4 or len(coefs) != len(ys) + 2:
        return None
    values = coefs
    if out2 is not None:
        if coefs2 is None or len(coefs2) != len(coefs):
            return None
        values = coefs + list(coefs2)
    if any(type(v) is not float for v in values):
        return None
    tensors = ys + [t for t in (out, out2) if t is not None]
    door = _plain_door(seed, offset, x, *tensors)
    if door is None:
        return None
    backend, bits = door
    # combine's aliasing rules (out and out2 start where x does not, out where no y does),
    # else the general way says so
    start = x.data_ptr()
    if out2 is not None and out2.data_ptr() == start:
        return None
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    elif out is not x and (out.data_ptr() == start or any(out.data_ptr() == y.data_ptr() for y in ys)):
        return None
    if out is x:
        _plain_fn(backend, "step_")(x, out2, ys, values, [], [], None, None, bits, None, offset)
    else:
        _plain_fn(backend, "update_")(out, out2, x, ys, values, [], [], None, None, bits, None, offset)
    return out


def step_(x, score, a, b, c, seed=0, offset=0, x_mean=None, noise=None):
    """In place: x <- a*x + b*score + c*z, z the noise stream at (seed, offset rows) or the
    explicit ``noise`` tensor; ``x_mean`` (optional) receives a*x + b*score.

    Args:
        x: [B, ...] float tensor, updated in place. score: shaped like x, or None (no b term).
        a, b, c: floats, 0-d or per-sample [B] tensors on x's device. A float c == 0.0
            skips the RNG (an ODE step).
        seed, offset: ints or one-element int64 tensors (CPU or x's device); offset in rows.
    Returns: x."""
    if (noise is None and x_mean is None and score is not None and type(a) is float and type(b) is float
            and type(c) is float and _plain_step(x, score, [a, b, c], seed, offset)):
        return x
    _check_in_place("step_", x, score, noise, x_mean, "x_mean", score_optional=True)
    a, b, c = _checks.coef(a, "a", x), _checks.coef(b, "b", x), _checks.coef(c, "c", x)
    if score is None:
        ys, values = [], [a, c] + ([a, 0.0] if x_mean is not None else [])
    else:
        ys, values = [score], [a, b, c] + ([a, b, 0.0] if x_mean is not None else [])
    return _update("step_", x, x, x_mean, ys, values, seed, offset, noise)


def langevin_step_(x, score, step_size, seed=0, offset=0, noise=None):
    """In place: x <- x + eps*score + sqrt(2 eps)*z (unadjusted Langevin); eps >= 0, a float
    or a per-sample [B] tensor. Returns x."""
    if (noise is None and type(step_size) is float and step_size >= 0
            and _plain_step(x, score, [1.0, step_size, math.sqrt(2.0 * step_size)], seed, offset)):
        return x
    _check_in_place("langevin_step_", x, score, noise, None, "")
    eps = _checks.coef(step_size, "step_size", x, nonnegative=True)
    # A tensor's sqrt(2 eps) in one new float64 tensor (doubling is exact): three [B] temporaries
    # cost their allocations and page faults (1.3 ms at B = 262144 here, six times the update).
    scale = (math.sqrt(2.0 * eps) if not isinstance(eps, torch.Tensor)
             else eps.to(torch.float64, copy=True).mul_(2.0).sqrt_())
    return _update("langevin_step_", x, x, None, [score], [1.0, eps, scale], seed, offset, noise)


def update(x, score, a, b, c=0.0, seed=0, offset=0, out=None, noise=None):
    """Out of place: a*x + b*score + c*z into ``out`` (a new tensor if None); x is not
    modified. An ODE stage's drift is ``update(y, score, f_t, -g_t**2 / 2)``."""
    if (noise is None and score is not None and out is not None and out is not x and type(a) is float
            and type(b) is float and type(c) is float
            and _plain_combine(x, [score], [a, b, c], seed, offset, out) is not None):
        return out  # the ODE stages' common call (into their buffer)
    _check_in_place("update", x, score, noise, None, "", score_optional=True)
    if out is None:
        out = torch.empty_like(x)
    else:
        _checks.like(out, x, "out")
        _checks.not_aliased(out, x, "out", " (use step_ for an in-place update)")
        _checks.no_grad("update", out)
    a, b, c = _checks.coef(a, "a", x), _checks.coef(b, "b", x), _checks.coef(c, "c", x)
    ys, values = ([], [a, c]) if score is None else ([score], [a, b, c])
    return _update("update", x, out, None, ys, values, seed, offset, noise)


def combine(x, ys, coefs, seed=0, offset=0, out=None, noise=None, out2=None, coefs2=None):
    """The fused update in its general form, one pass over memory:

        out  = coefs[0]*x  + sum_k coefs[1+k]*ys[k]  + coefs[-1]*z
        out2 = coefs2[0]*x + sum_k coefs2[1+k]*ys[k] + coefs2[-1]*z      (when out2 is given)

    rounded in that order in the compute dtype; z is the stream at (seed, offset) or the
    explicit ``noise``, and a float 0.0 as the last coefficient drops that output's noise
    term. ``ys``: up to 4 tensors shaped like x; ``coefs``: len(ys) + 2 floats, 0-d or
    per-sample [B] tensors. ``out`` may be x (in place); by default a new tensor. Returns out."""
    ys, coefs = list(ys), list(coefs)
    if noise is None and (out2 is None) == (coefs2 is None):
        done = _plain_combine(x, ys, coefs, seed, offset, out, out2, coefs2)
        if done is not None:
            return done
    _checks.float_tensor(x, "x")
    if len(ys) > 4:
        raise ValueError(f"ys: at most 4 tensors are combined, got {len(ys)}")
    for k, y in enumerate(ys):
        _checks.like(y, x, f"ys[{k}]")
    if len(coefs) != len(ys) + 2:
        raise ValueError(f"coefs must have len(ys) + 2 = {len(ys) + 2} entries, got {len(coefs)}")
    values = [_checks.coef(v, f"coefs[{i}]", x) for i, v in enumerate(coefs)]
    if out2 is not None:
        _checks.like(out2, x, "out2")
        _checks.not_aliased(out2, x, "out2")
        coefs2 = list(coefs2 if coefs2 is not None else [])
        if len(coefs2) != len(ys) + 2:
            raise ValueError(f"coefs2 must have len(ys) + 2 = {len(ys) + 2} entries, got {len(coefs2)}")
        values += [_checks.coef(v, f"coefs2[{i}]", x) for i, v in enumerate(coefs2)]
    elif coefs2 is not None:
        raise ValueError("coefs2 is given without out2")
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    elif out is not x:
        _checks.like(out, x, "out")
        _checks.not_aliased(out, x, "out", " (pass out=x for an in-place update)")
    for k, y in enumerate(ys):
        if out is not x:
            _checks.not_aliased(out, y, "out", f" or ys[{k}]")
    _checks.no_grad("combine", x, out, out2, noise, *ys)
    return _update("combine", x, out, out2, ys, values, seed, offset, noise)


def perturb(x, sigma, seed=0, offset=0, mean_scale=1.0, noise=None):
    """mean_scale*x + sigma*z, out of place and differentiable in x, sigma and mean_scale
    (and ``noise``); sigma >= 0, floats, 0-d or per-sample [B] tensors. The same (seed,
    offset) gives ``dsm_loss`` the same z."""
    _checks.float_tensor(x, "x")
    sigma = _checks.coef(sigma, "sigma", x, nonnegative=True)
    mean_scale = _checks.coef(mean_scale, "mean_scale", x)
    if noise is not None:
        noise = _explicit_noise(noise, x)
    return _perturb(x, sigma, seed, offset, mean_scale, noise)


def _perturb(x, sigma, seed, offset, mean_scale=1.0, noise=None):
    """perturb on checked arguments (the losses' own per-sample levels, drawn from a checked
    table: a sign check per call costs a reduction and a host read)."""
    return _call("lincomb", x, x, [], *_slots([mean_scale, sigma]), noise, *_stream(seed, offset, x),
                 grad=_requires_grad(x, sigma, mean_scale, noise), name="perturb")


# --------------------------------------------------------------------------- the Langevin corrector


@_fake("langevin_corrector_")
def _(x, x_mean, score, snr, alpha, alpha_t, per_sample, noise, seed_t, seed, offset_t, offset):
    return None


STEP_SIZE_MODES = ("batch", "per_sample")


def langevin_corrector_(x, score, snr, seed=0, offset=0, alpha=1.0, step_size_mode="batch", x_mean=None, noise=None):
    """score_sde's LangevinCorrector step, in place: eps = (snr*|z|/|score|)^2 * 2*alpha,
    x_mean = x + eps*score, x = x_mean + sqrt(2 eps)*z. Norms are batch means
    (``step_size_mode="batch"``, as score_sde and diffusers) or per sample
    (``"per_sample"``); they are reduced in the same pass that draws z (float64 sums),
    and the second pass draws z again instead of storing it (the C++ CPU kernel keeps z
    in a buffer for batches of 1024 to 2**24 elements, and with per-sample norms updates
    each row right after its norms: same values). ``alpha``: float, 0-d or
    [B] tensor (score_sde passes the VP alphas, 1 for VE). A zero score norm gives eps = 0.
    Returns x."""
    if (x_mean is None and noise is None and type(snr) is float and snr >= 0 and type(alpha) is float
            and alpha >= 0 and step_size_mode in STEP_SIZE_MODES):  # the PC samplers' common call
        door = _plain_door(seed, offset, x, score)
        if door is not None:
            backend, bits = door
            if x.numel():
                _plain_fn(backend, "langevin_corrector_")(x, None, score, snr, alpha, None,
                                                          step_size_mode == "per_sample", None, None, bits, None, offset)
            return x
    _check_in_place("langevin_corrector_", x, score, noise, x_mean, "x_mean")
    if step_size_mode not in STEP_SIZE_MODES:
        raise ValueError(f"step_size_mode must be one of {STEP_SIZE_MODES}, got {step_size_mode!r}")
    if isinstance(snr, torch.Tensor):
        raise TypeError("snr must be a float")
    snr = _checks.coef(snr, "snr", x, nonnegative=True)
    alpha = _checks.coef(alpha, "alpha", x, nonnegative=True)
    if noise is not None:
        noise = _explicit_noise(noise, x)
    alpha_v, alpha_t = (0.0, alpha) if isinstance(alpha, torch.Tensor) else (alpha, None)
    if x.numel():
        _call("langevin_corrector_", x, x, x_mean, score, snr, alpha_v, alpha_t, step_size_mode == "per_sample",
              noise, *_stream(seed, offset, x))
    return x


# --------------------------------------------------------------------------- denoising score matching


@_fake("dsm_loss")
def _(score, sigma, sigma_t, weight, weight_t, noise, seed_t, seed, offset_t, offset):
    return score.new_empty((row_geometry(score.shape)[0],), dtype=compute_dtype(score.dtype))


@_fake("dsm_loss_backward")
def _(grad, score, sigma, sigma_t, weight, weight_t, noise, seed_t, seed, offset_t, offset):
    return torch.empty_like(score, memory_format=torch.contiguous_format)


def _dsm_setup(ctx, inputs, output):
    score, sigma, sigma_t, weight, weight_t, noise, seed_t, seed, offset_t, offset = inputs
    ctx.floats = (sigma, weight, seed, offset)
    ctx.save_for_backward(score, sigma_t, weight_t, noise, seed_t, offset_t)  # no noise tensor: z is regenerated


def _dsm_backward_for(kernels):
    def backward(ctx, grad):
        score, sigma_t, weight_t, noise, seed_t, offset_t = ctx.saved_tensors
        sigma, weight, seed, offset = ctx.floats
        grad_score = kernels.dsm_loss_backward(grad, score, sigma, sigma_t, weight, weight_t, noise,
                                               seed_t, seed, offset_t, offset)
        return (grad_score,) + (None,) * 9

    return backward


_autograd("dsm_loss", _dsm_backward_for, _dsm_setup, plain=True)


def dsm_loss(score, sigma, seed=0, offset=0, weight=None, noise=None):
    """Per-sample denoising score matching loss 0.5 * weight * |score + z/sigma|^2 ([B],
    fp32; fp64 for fp64 score), z regenerated from (seed, offset) — the z that
    ``perturb(x, sigma, seed, offset)`` added — so no noise tensor is stored, in the
    forward or in the fused backward. Differentiable w.r.t. score. sigma > 0 and weight:
    floats, 0-d or per-sample [B] tensors (treated as constants)."""
    _checks.batched(score, "score")
    sigma = _checks.coef(sigma, "sigma", score, positive=True)
    weight = _checks.coef(1.0 if weight is None else weight, "weight", score, nonnegative=True)
    if noise is not None:
        noise = _explicit_noise(noise, score)
    return _dsm_loss(score, sigma, seed, offset, weight, noise)


def _dsm_loss(score, sigma, seed, offset, weight, noise=None, mean=False):
    """dsm_loss on checked arguments (see _perturb); ``mean``: its batch mean."""
    sigma_v, sigma_t = (0.0, sigma.detach()) if isinstance(sigma, torch.Tensor) else (sigma, None)
    weight_v, weight_t = (0.0, weight.detach()) if isinstance(weight, torch.Tensor) else (weight, None)
    return _call("dsm_loss", score, score, sigma_v, sigma_t, weight_v, weight_t, noise,
                 *_stream(seed, offset, score), grad=_requires_grad(score), mean=mean)


# --------------------------------------------------------------------------- sliced score matching


@_fake("sliced_score_terms")
def _(score, jv, v, variance_reduction):
    return (score.new_empty((jv.shape[0],), dtype=compute_dtype(score.dtype)),
            score.new_empty(jv.shape[:2], dtype=torch.float64))


@_fake("sliced_score_terms_backward")
def _(grad, score, v, dots, variance_reduction):
    return (torch.empty_like(score, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _sliced_setup(ctx, inputs, output):
    score, jv, v, variance_reduction = inputs
    ctx.variance_reduction = variance_reduction
    ctx.save_for_backward(score, v, output[1])


def _sliced_backward_for(kernels):
    def backward(ctx, grad_terms, grad_dots):
        score, v, dots = ctx.saved_tensors
        grad_score, grad_jv = kernels.sliced_score_terms_backward(grad_terms, score, v, dots,
                                                                  ctx.variance_reduction)
        return grad_score, grad_jv, None, None

    return backward


_autograd("sliced_score_terms", _sliced_backward_for, _sliced_setup, plain=True)


def sliced_score_terms(score, jv, v, variance_reduction=False):
    """Per-sample sliced score matching terms in one fused pass, mean over P probes:
    (1/P) sum_p [v_p . jv_p + 0.5 (v_p . s)^2], or with ``variance_reduction`` the
    0.5 |s|^2 form. score [B, ...]; jv (J v or J^T v) and probes v [B, P, ...].
    Differentiable in score and jv (fused backward); v is a constant."""
    _checks.batched(score, "score")
    _checks.float_tensor(jv, "jv")
    _checks.float_tensor(v, "v")
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
    return _call("sliced_score_terms", score, score, jv, v.detach(), bool(variance_reduction),
                 grad=_requires_grad(score, jv))[0]
