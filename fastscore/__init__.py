"""fastscore: fused kernels for score-based generative models.

    import fastscore
    z = fastscore.noise((B, D), seed=0)                      # the shared noise stream
    fastscore.ops.langevin_step_(x, score, 1e-3, seed=k)     # one fused pass per step
    fastscore.samplers.pc_sample(score_fn, fastscore.sde.VPSDE(), shape)
    with fastscore.use_backend("reference"): ...            # eager ground truth

See SPEC.md (the product contract) for semantics and guarantees. ``import fastscore``
needs no compiled code, Triton or GPU; the public submodules below are attributes of the
package, each imported on first use.
"""

__version__ = "0.1.0"  # the one source: pyproject.toml reads it (tool.setuptools.dynamic)

from fastscore import ops  # the op layer: registers the custom ops, cheap without Triton
from fastscore.backends import available_backends, get_backend, set_backend, use_backend
from fastscore.ops import langevin_step_, noise, perturb, step_

# Public submodules, reachable as ``fastscore.<name>`` after ``import fastscore`` and loaded
# on first access (module __getattr__, PEP 562). One table: a new public submodule is one
# more name here. A name whose module is not in this version (yet) is simply absent: not in
# dir(), and getattr raises AttributeError.
SUBMODULES = ("ops", "sde", "samplers", "losses", "likelihood", "adapters", "k_diffusion", "diffusers",
              "distributed")

__all__ = [
    "available_backends",
    "get_backend",
    "langevin_step_",
    "noise",
    "ops",
    "perturb",
    "set_backend",
    "step_",
    "use_backend",
]


def __getattr__(name):
    if name in SUBMODULES:
        import importlib

        try:
            return importlib.import_module(f"{__name__}.{name}")  # also binds it in globals()
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise  # the submodule exists but something it imports is missing
            raise AttributeError(f"module {__name__!r} has no attribute {name!r} "
                                 f"(fastscore.{name} is not part of fastscore {__version__})") from None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    import importlib.util

    present = [n for n in SUBMODULES if n in globals() or importlib.util.find_spec(f"{__name__}.{n}") is not None]
    return sorted(set(globals()) | set(present))
