"""Backend selection: which implementation serves an op for given tensors.

    reference  eager PyTorch, any device: the ground truth
    cpp        fastscore._C on CPU tensors (at::parallel_for, vectorised)
    cuda       fastscore._C's csrc/cuda kernels on CUDA tensors
    triton     kernels/ on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1
    auto       CPU -> cpp if built, else reference; CUDA -> triton, else cuda, else reference

Like xFormers, each backend reports why it cannot run (``not_supported_reasons``); a
backend the user forced (``set_backend``, ``use_backend``, ``FASTSCORE_BACKEND``)
fails loudly with every reason, while "auto" falls back and never fails where the
reference works. Nothing here imports triton or needs a GPU at import time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings

import torch

log = logging.getLogger("fastscore")

BACKENDS = ("reference", "cpp", "cuda", "triton")
_CHOICES = BACKENDS + ("auto",)


def _load_extension():
    try:
        from fastscore import _C  # noqa: F401  (registers the torch.ops.fastscore kernels)

        return True, None
    except ImportError as e:  # built without the extension, or built for another torch
        return False, str(e)


HAS_EXTENSION, EXTENSION_ERROR = _load_extension()
if not HAS_EXTENSION:
    log.info("fastscore: compiled extension not available (%s); using the reference backend", EXTENSION_ERROR)


def extension_has_cuda() -> bool:
    return HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("fastscore::step_", "CUDA")


def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def not_supported_reasons(backend: str, device: torch.device) -> list[str]:
    """Why ``backend`` cannot run on tensors on ``device`` (empty list: it can)."""
    kind = device.type
    if backend == "reference":
        return []
    if backend == "cpp":
        reasons = [] if kind == "cpu" else [f"cpp runs on CPU tensors, got {kind}"]
        if not HAS_EXTENSION:
            reasons.append(f"fastscore._C is not built ({EXTENSION_ERROR})")
        return reasons
    if backend == "cuda":
        reasons = [] if kind == "cuda" else [f"cuda runs on CUDA tensors, got {kind}"]
        if not extension_has_cuda():
            reasons.append("fastscore._C was built without CUDA kernels")
        return reasons
    if backend == "triton":
        reasons = [] if triton_importable() else ["triton is not installed"]
        if kind == "cpu" and not triton_interpreting():
            reasons.append("triton runs on CPU tensors only with TRITON_INTERPRET=1 set before importing triton")
        elif kind == "cuda" and not torch.cuda.is_available():
            reasons.append("no CUDA device is available")
        elif kind not in ("cpu", "cuda"):
            reasons.append(f"triton runs on CUDA tensors, got {kind}")
        return reasons
    raise ValueError(f"backend: unknown backend {backend!r}; choose one of {_CHOICES}")


def _check_name(name: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"backend: unknown backend {name!r}; choose one of {_CHOICES}")
    return name


_selected = _check_name(os.environ.get("FASTSCORE_BACKEND", "auto").strip().lower() or "auto")
_resolved: dict[tuple[str, str], str] = {}
_warned_fallback = False


def set_backend(name: str) -> None:
    """Use ``name`` for every op from now on ("auto" restores the default rules)."""
    global _selected
    _selected = _check_name(name)


def get_backend() -> str:
    return _selected


@contextlib.contextmanager
def use_backend(name: str):
    """``with fastscore.use_backend("reference"): ...`` — the backend inside the block."""
    global _selected
    previous, _selected = _selected, _check_name(name)
    try:
        yield
    finally:
        _selected = previous


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on tensors of ``device`` here."""
    device = torch.device(device)
    return [b for b in BACKENDS if not not_supported_reasons(b, device)]


def _auto(device: torch.device) -> str:
    global _warned_fallback
    order = ("cpp",) if device.type == "cpu" else ("triton", "cuda") if device.type == "cuda" else ()
    for b in order:
        if not not_supported_reasons(b, device):
            return b
    if device.type == "cpu" and not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"fastscore: compiled extension unavailable ({EXTENSION_ERROR}); using the slower reference backend",
            RuntimeWarning,
            stacklevel=4,
        )
    return "reference"


def resolve(device: torch.device) -> str:
    """The backend that serves tensors on ``device`` under the current selection."""
    key = (_selected, device.type)
    backend = _resolved.get(key)
    if backend is not None:
        return backend
    if _selected == "auto":
        backend = _auto(device)
    else:
        reasons = not_supported_reasons(_selected, device)
        if reasons:
            raise RuntimeError(
                f"fastscore: backend {_selected!r} cannot run on {device.type} tensors: " + "; ".join(reasons)
                + f". Available here: {available_backends(device)}"
            )
        backend = _selected
    _resolved[key] = backend
    return backend


def serves_cpu_with_cpp() -> bool:
    """Fast check for the ops' eager path: does the cpp backend serve CPU tensors now?"""
    backend = _resolved.get((_selected, "cpu"))
    if backend is None:
        try:
            backend = resolve(torch.device("cpu"))
        except RuntimeError:
            return False
    return backend == "cpp"
