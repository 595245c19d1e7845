"""ckd: causal kernel descent and the Transformers that run it.

A reimplementation, from the method's description, of M. E. Sander and G. Peyré,
*Towards Understanding the Universality of Transformers for Next-Token
Prediction* (ICLR 2025, arXiv 2410.03011). See ``SPEC.md`` and the README.

The public names are loaded on first use (``_PUBLIC``): ``import ckd`` costs nothing, so that
``ckd --help`` and the torch-free commands start in a fraction of a second; ``ckd.predict``
imports torch when first touched. Thread settings: docs/performance.md ("Threads").
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (relative to ckd)
_PUBLIC = {
    "KERNELS": "kernels",
    "TASKS": "sequences",
    "CausalMatrices": "kernels",
    "StabilityWarning": "descent",
    "Streaming": "streaming",
    "Task": "sequences",
    "causal_matrices": "kernels",
    "compare": "compare",
    "continuous_depth": "descent",
    "descend": "descent",
    "finite_depth": "descent",
    "fit_step": "descent",
    "infinite_depth": "descent",
    "kernel_matrix": "kernels",
    "make_task": "sequences",
    "next_token_error": "metrics",
    "predict": "api",
}
# modules reached as attributes: ckd.pretrained (the model zoo), ckd.evaluate (a module, callable as
# its function evaluate) and ckd.inspect
_MODULES = ("pretrained", "evaluate", "inspect")

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    """Load a public name (``_PUBLIC``) or module (``_MODULES``) on first use and keep it."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | set(_MODULES))
