"""fastscore: fused kernels for score-based generative models.

    import fastscore
    z = fastscore.noise((B, D), seed=0)                      # the shared noise stream
    fastscore.ops.langevin_step_(x, score, 1e-3, seed=k)     # one fused pass per step
    with fastscore.use_backend("reference"): ...            # eager ground truth

See SPEC.md (the product contract) for semantics and guarantees.
"""

from fastscore import ops
from fastscore.backends import available_backends, get_backend, set_backend, use_backend
from fastscore.ops import langevin_step_, noise, perturb, step_

__version__ = "0.1.0"
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
