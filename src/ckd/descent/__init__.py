"""Causal kernel descent (CKD): finite, infinite and continuous depth (SPEC §2), and sweeps (SPEC §7).

With P, R the causal matrices of ``ckd.kernels`` and targets y (y_0 = 0, y_t = x_t), depth-N CKD
with step eta and ridge lambda runs, from r = y, p = 0,

    p <- p + eta * P r
    r <- r - eta * (R r + lambda r)          (old r on both right-hand sides)

and row t of p predicts x_{t+1}. The package, one idea per module (arrows point down):

    dispatch     ``descend``: validation, exact scaling, and the choice of path below
    sweeps       K Gauss-Seidel sweeps over the prompt (SPEC §7), tending to kernel ridge
    dense        finite / infinite depth on the T x T matrices, whole or in row blocks
    continuous   the neural-ODE limit (eta = tau / N, N -> inf)
    scaling      exact power-of-two scaling of the linear kernel's inputs
    steps        step rules, convergence test, growth and overflow checks (also used by
                 ``ckd.linear_time`` and ``ckd.construction``); per-row steps (SPEC §10)
    fit          ``fit_step``: least-squares steps against a target (SPEC §10; above dispatch)

Reference: M. E. Sander, G. Peyré, *Towards Understanding the Universality of Transformers for
Next-Token Prediction*, ICLR 2025 (arXiv 2410.03011).
"""

from __future__ import annotations

from .continuous import continuous_depth
from .dense import (
    DEFAULT_MEMORY_BUDGET,
    block_rows,
    finite_depth,
    infinite_depth,
    memory_needed,
    row_blocks,
)
from .dispatch import descend
from .fit import fit_step
from .steps import (
    StabilityWarning,
    check_step,
    default_log_step,
    default_step,
    diagonal,
    effective,
    targets,
)
from .sweeps import gauss_seidel, gauss_seidel_doubling, swept

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "StabilityWarning",
    "block_rows",
    "check_step",
    "continuous_depth",
    "default_log_step",
    "default_step",
    "descend",
    "diagonal",
    "effective",
    "finite_depth",
    "fit_step",
    "gauss_seidel",
    "gauss_seidel_doubling",
    "infinite_depth",
    "memory_needed",
    "row_blocks",
    "swept",
    "targets",
]
