"""Optional dependencies: each is imported only where it is used, and a missing one is one
ImportError that names the pip extra (pyproject.toml [project.optional-dependencies])."""

from __future__ import annotations

import importlib

# top-level module -> the extra that installs it
EXTRAS = {
    "matplotlib": "plot",
    "tqdm": "progress",
    "diffusers": "diffusers",
    "triton": "triton",
}


class MissingOptionalDependency(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require(module: str, what: str):
    """``module`` imported, or MissingOptionalDependency naming the extra, for ``what`` (the
    feature that needs it, e.g. "the demo's PNG"). An installed module that fails to import
    for another reason re-raises its own error."""
    top = module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name != top and not e.name.startswith(top + "."):
            raise  # the package is there but something it imports is broken: show that
        extra = EXTRAS.get(top)
        hint = f"pip install 'fastscore[{extra}]'" if extra else f"pip install {top}"
        raise MissingOptionalDependency(f"{what} needs {top}, which is not installed: {hint}", name=top) from None
