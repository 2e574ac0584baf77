"""Backend selection: which implementation serves an op for given tensors.

    reference  eager PyTorch, any device: the ground truth (fastscore/reference.py)
    cpp        fastscore._C on CPU tensors (at::parallel_for, vectorised)
    cuda       fastscore._C's csrc/cuda kernels on CUDA tensors
    triton     kernels/ on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1
    auto       CPU -> cpp if built, else reference; CUDA -> triton, else cuda, else reference

Each backend is a record with two entry points for every op, both with the op's plain
signature (the SCHEMAS of fastscore/ops.py): ``plain``, a namespace of functions called
directly by eager code, and ``namespace``, the torch.library namespace of the registered
op (fakes, autograd, torch.compile, opcheck). Like xFormers, a backend says why it cannot
run given inputs (``reasons``, which see the device and the dtype); a backend the user
forced (``set_backend``, ``use_backend``, ``FASTSCORE_BACKEND``) fails loudly with every
reason, while "auto" falls back and never fails where the reference works. Nothing here
imports triton or needs a GPU at import time.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import platform
import warnings
from dataclasses import dataclass, field

import torch

log = logging.getLogger("fastscore")

BACKENDS = ("reference", "cpp", "cuda", "triton")
_CHOICES = BACKENDS + ("auto",)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _load_extension():
    try:
        from fastscore import _C  # registers the CPU (and CUDA) kernels of the fastscore:: ops

        return _C, None
    except ImportError as e:  # built without the extension, or built for another torch
        return None, str(e)


_C, EXTENSION_ERROR = _load_extension()
HAS_EXTENSION = _C is not None
if not HAS_EXTENSION:
    log.info("fastscore: compiled extension not available (%s); using the reference backend", EXTENSION_ERROR)


def extension_has_cuda() -> bool:
    return HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("fastscore::step_", "CUDA")


def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class _TritonPlain:
    """The Triton launchers (fastscore.kernels.<family>.<op>, the family from ops.SCHEMAS),
    imported on first use so that importing fastscore never imports triton."""

    def __getattr__(self, op):
        from fastscore.ops import SCHEMAS

        if op not in SCHEMAS:
            raise AttributeError(op)
        fn = getattr(importlib.import_module(f"fastscore.kernels.{SCHEMAS[op][0]}"), op)
        setattr(self, op, fn)
        return fn


def _reference_plain():
    from fastscore import reference

    return reference


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]  # () = any device
    namespace: str  # torch.library namespace of the registered ops
    make_plain: object = None  # () -> namespace of plain functions; None: registered ops only
    _plain: list = field(default_factory=list, compare=False, repr=False)

    @property
    def plain(self):
        if self.make_plain is None:
            return None
        if not self._plain:
            self._plain.append(self.make_plain())
        return self._plain[0]

    def environment_reasons(self, device: torch.device) -> list[str]:
        kind = device.type
        if self.name == "cpp" and not HAS_EXTENSION:
            return [f"fastscore._C is not built ({EXTENSION_ERROR})"]
        if self.name == "cuda" and not extension_has_cuda():
            return ["fastscore._C was built without CUDA kernels"]
        if self.name == "triton":
            reasons = [] if triton_importable() else ["triton is not installed"]
            if kind == "cpu" and not triton_interpreting():
                reasons.append("triton runs on CPU tensors only with TRITON_INTERPRET=1 set before importing triton")
            elif kind == "cuda" and not torch.cuda.is_available():
                reasons.append("no CUDA device is available")
            return reasons
        return []

    def reasons(self, device, dtype: torch.dtype | None = None) -> list[str]:
        """Why this backend cannot run on tensors of ``device`` (and ``dtype``); [] if it can."""
        device = torch.device(device)
        r = []
        if self.devices and device.type not in self.devices:
            r.append(f"{self.name} runs on {' or '.join(d.upper() for d in self.devices)} tensors, got {device.type}")
        if self.name == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
            r.append("the Triton interpreter has no bf16 arithmetic")
        return r + self.environment_reasons(device)


REGISTRY = {
    "reference": Backend("reference", (), "fastscore_reference", _reference_plain),
    "cpp": Backend("cpp", ("cpu",), "fastscore", lambda: _C),
    "cuda": Backend("cuda", ("cuda",), "fastscore"),
    "triton": Backend("triton", ("cuda", "cpu"), "fastscore_triton", _TritonPlain),
}
_AUTO_ORDER = {"cpu": ("cpp",), "cuda": ("triton", "cuda")}


def not_supported_reasons(backend: str, device, dtype: torch.dtype | None = None) -> list[str]:
    """Why ``backend`` cannot run on tensors on ``device`` (empty list: it can)."""
    return REGISTRY[_check_name(backend)].reasons(device, dtype) if backend != "auto" else []


def _check_name(name: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"backend: unknown backend {name!r}; choose one of {_CHOICES}")
    return name


_selected = _check_name(os.environ.get("FASTSCORE_BACKEND", "auto").strip().lower() or "auto")
_resolved: dict[tuple, Backend] = {}
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


def available_backends(device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> list[str]:
    """Backends that can run on tensors of ``device`` (and ``dtype``) here."""
    return [b for b in BACKENDS if not REGISTRY[b].reasons(device, dtype)]


def _auto(device: torch.device, dtype) -> Backend:
    global _warned_fallback
    for name in _AUTO_ORDER.get(device.type, ()):
        if not REGISTRY[name].reasons(device, dtype):
            return REGISTRY[name]
    if device.type == "cpu" and not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"fastscore: compiled extension unavailable ({EXTENSION_ERROR}); using the slower reference backend",
            RuntimeWarning,
            stacklevel=5,
        )
    return REGISTRY["reference"]


def select(x: torch.Tensor) -> Backend:
    """The backend that serves ``x`` (its device and dtype) under the current selection."""
    backend = _resolved.get((_selected, "cpu" if x.is_cpu else x.device.type, x.dtype))
    return backend if backend is not None else select_for(x.device, x.dtype)


def select_for(device, dtype=torch.float32) -> Backend:
    device = torch.device(device)
    key = (_selected, device.type, dtype)
    backend = _resolved.get(key)
    if backend is not None:
        return backend
    if _selected == "auto":
        backend = _auto(device, dtype)
    else:
        reasons = REGISTRY[_selected].reasons(device, dtype)
        if reasons:
            others = {b: REGISTRY[b].reasons(device, dtype) for b in BACKENDS if b != _selected}
            raise RuntimeError(
                f"fastscore: backend {_selected!r} cannot run on {device.type} {dtype} tensors: "
                + "; ".join(reasons) + f". Available here: {[b for b, r in others.items() if not r]}"
                + "".join(f"; {b}: {', '.join(r)}" for b, r in others.items() if r))
        backend = REGISTRY[_selected]
    _resolved[key] = backend
    return backend


def resolve(device) -> str:
    """The name of the backend that serves fp32 tensors on ``device`` now."""
    return select_for(device).name


def info_rows(ops) -> list[tuple[str, str, str, dict]]:
    """(device, op, serving backend, {backend: reasons}) per op for ``python -m fastscore info``."""
    rows = []
    for device in ("cpu", "cuda"):
        for op in ops:
            try:
                serving = resolve(device)
            except RuntimeError as e:
                serving = f"none ({e})"
            reasons = {b: REGISTRY[b].reasons(device) for b in BACKENDS}
            rows.append((device, op, serving, reasons))
    return rows


_VECTOR_FLAGS = ("avx512f", "avx2", "sve", "asimd")  # the widest first


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU a table was measured on, e.g. ``AMD EPYC (family 25 model 17, avx512f)``.
    Virtual machines mask the model name ("AMD EPYC" is a Zen 3 or a Zen 4), so the
    family / model numbers and the widest vector ISA of /proc/cpuinfo come with it.
    ``cpuinfo``: that file's text (tests); read from /proc/cpuinfo when None."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    extra = []
    if "cpu family" in fields and "model" in fields:
        extra.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    extra += [f for f in _VECTOR_FLAGS if f in flags][:1]
    return f"{name} ({', '.join(extra)})" if extra else name
