"""k-diffusion's own ``k_diffusion.sampling`` (the peer of fastscore.k_diffusion), loaded
without running ``k_diffusion/__init__.py``.

The package's __init__ imports its training code (accelerate, clean-fid, clip, kornia,
wandb, torchvision, ...: k-diffusion is installed with --no-deps, so none of that is there).
sampling.py itself needs torch, scipy, torchdiffeq, torchsde, tqdm and ``from . import
utils`` for ``utils.append_dims`` only. So: register an empty package module ``k_diffusion``
whose ``__path__`` is the installed folder (relative imports resolve, __init__ never runs),
a ``k_diffusion.utils`` holding append_dims (k-diffusion's four lines, restated), then load
sampling.py by its path.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types


def _append_dims(x, target_dims):
    """k_diffusion.utils.append_dims: appends dimensions to the end of a tensor until it has
    target_dims dimensions."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f'input has {x.ndim} dims but target_dims is {target_dims}, which is less')
    return x[(...,) + (None,) * dims_to_append]


def load_k_sampling():
    """The module k_diffusion.sampling (ImportError when k-diffusion is not installed)."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")  # finds the folder, runs nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
    folder = list(spec.submodule_search_locations)[0]
    package = types.ModuleType("k_diffusion")
    package.__path__ = [folder]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    sampling_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", os.path.join(folder, "sampling.py"))
    sampling = importlib.util.module_from_spec(sampling_spec)
    sys.modules["k_diffusion.sampling"] = sampling
    try:
        sampling_spec.loader.exec_module(sampling)
    except BaseException:
        for name in ("k_diffusion", "k_diffusion.utils", "k_diffusion.sampling"):
            sys.modules.pop(name, None)
        raise
    package.sampling = sampling
    return sampling
