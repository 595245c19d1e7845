"""ckd: causal kernel descent and the Transformers that run it.

A reimplementation, from the method's description, of M. E. Sander and G. Peyré,
*Towards Understanding the Universality of Transformers for Next-Token
Prediction* (ICLR 2025, arXiv 2410.03011). See ``SPEC.md`` and the README.
"""

from .api import predict
from .compare import compare
from .descent import StabilityWarning, continuous_depth, descend, finite_depth, fit_step, infinite_depth
from .kernels import KERNELS, CausalMatrices, causal_matrices, kernel_matrix
from .metrics import next_token_error
from .sequences import TASKS, Task, make_task
from .streaming import Streaming

__version__ = "0.1.0"

__all__ = [
    "KERNELS",
    "TASKS",
    "CausalMatrices",
    "StabilityWarning",
    "Streaming",
    "Task",
    "causal_matrices",
    "compare",
    "continuous_depth",
    "descend",
    "finite_depth",
    "fit_step",
    "infinite_depth",
    "kernel_matrix",
    "make_task",
    "next_token_error",
    "predict",
]


def __getattr__(name: str):
    """``ckd.pretrained`` (the model zoo), ``ckd.evaluate`` (a module, callable as its function ``evaluate``)
    and ``ckd.inspect`` without importing them first: loaded on first use (they need the training code)."""
    if name in ("pretrained", "evaluate", "inspect"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
