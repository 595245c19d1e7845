"""ckd: causal kernel descent and the Transformers that run it.

A reimplementation, from the method's description, of M. E. Sander and G. Peyré,
*Towards Understanding the Universality of Transformers for Next-Token
Prediction* (ICLR 2025, arXiv 2410.03011). See ``SPEC.md`` and the README.
"""

from .api import predict
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
    """``ckd.pretrained`` (the model zoo) without ``import ckd.pretrained``: loaded on first use."""
    if name == "pretrained":
        import importlib

        return importlib.import_module(".pretrained", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
