"""``descend``: the one dispatcher of causal kernel descent.

It validates the arguments, applies the exact power-of-two scaling of the linear kernel
(``scaling``), and runs one of: the sweeps (``sweeps.swept``), the linear-time forms
(``ckd.linear_time``), the dense path on whole matrices or in row blocks (``dense``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import linear_time
from ..kernels import causal_matrices
from ..validation import check_complex, check_fits, check_memory_budget, parse_step
from .dense import block_rows, check_memory, default_budget, descend_blocked, finite_from_log, infinite_depth
from .scaling import mixed_scales, power_of_two_scale
from .steps import (
    check_depth_and_step,
    check_infinite_step,
    check_tiny_step,
    constant_step,
    default_log_step_of,
    diagonal,
    exact_log_diagonal,
    log_of,
    targets,
)
from .sweeps import swept


def descend(
    x: Tensor,
    kernel: str = "exp",
    *,
    beta: float = 1.0,
    sigma: float = 1.0,
    depth: int | float | str = 16,
    step: float | Tensor | None = None,
    ridge: float = 0.0,
    return_all: bool = False,
    memory_budget: float | None = None,
    method: str = "auto",
    features: int | None = None,
    feature_seed: int = 0,
    sweeps: int = 1,
) -> Tensor:
    """CKD predictions for x (B, T, d): row t of the result predicts x_{t+1}.

    depth: int >= 0, or ``"inf"``/``math.inf`` for the infinite-depth limit.
    step None means eta = 0.5 / max_t (R[t,t] + lambda) over the batch (kept in log units, so it
    is exact also where eta underflows as a float: exp with a large beta |x|^2).
    memory_budget: bytes of (T, T)-sized working memory (default 4 GiB, or half the free memory
    when less); above it, rows are processed in blocks (same result, each block's kernel rows
    built once; see module doc). The memory the call needs is estimated first (``memory_needed``)
    and a call that cannot fit is refused with one line (``ckd.validation.NotEnoughMemory``).
    method: "auto" (default) runs the exact linear-time forms of ``ckd.linear_time`` for the
    linear kernel (O(T d^2), no T x T matrix) and the dense T x T path otherwise; "dense" forces
    the dense path (the reference); "linear" forces linear time (linear kernel or features only).
    features: D random features for exp / softmax / gaussian (``ckd.linear_time.features``; an
    approximation of the kernel, never used unless asked), drawn with ``feature_seed``; with
    method="dense" the dense path runs on the Gram matrix of the kernel phi.phi (a reference).

    Linear kernel: inputs beyond 2^+-64 are scaled by an exact power of two (``power_of_two_scale``);
    a zero token x_{t-1} (R[t,t] = 0) carries no information: the all-zero input predicts 0.
    Complex x (linear kernel only, SPEC §10): k(a, b) = b^H a, on every path (dense, row blocks,
    linear time, sweeps); the result is complex, the step real (R[t,t] = |x_{t-1}|^2).
    sweeps: K >= 1 Gauss-Seidel sweeps at depth inf (SPEC §7, ``swept``); 1 is depth inf.

    Per-row steps (SPEC §10): ``step`` may be a vector eta_0..eta_{T-1} (list, array or tensor;
    eta_0 unused), D = diag(eta): each layer is p <- p + D P r, r <- r - D (R r + lambda r), and
    depth inf is p = D P (R + lambda I)^{-1} D^{-1} y (which needs eta_t > 0 for t >= 1, and differs
    from the uniform-step answer unless eta is constant). A vector that is constant on rows t >= 1
    runs as that number (the same numbers: a scalar step is the constant vector). sweeps > 1 take
    no per-row step. Every path takes it: dense, row blocks, linear time.
    """
    check_complex(x, kernel)
    features = linear_time.check_features(kernel, features, feature_seed, beta)
    if features is not None:
        B, T, d = x.shape
        check_fits(linear_time.features_bytes(B, T, d, features, x.element_size()),
                   f"{features} random features on x of shape {tuple(x.shape)}", "use fewer features", x.device)
    infinite = depth == "inf" or (isinstance(depth, float) and math.isinf(depth))
    step = constant_step(parse_step(step, x.shape[1]))
    if isinstance(step, Tensor):
        step = step.to(x.device).clone()
        step[:1] = 0  # unused: any finite eta_0 is accepted, and it must not overflow the scaling below
    if infinite and return_all:
        raise ValueError("return_all needs a finite depth")
    if sweeps != 1:
        if not infinite:
            raise ValueError("sweeps > 1 needs depth 'inf'")
        if isinstance(step, Tensor):
            raise ValueError("sweeps > 1 take no per-row step (a sweep revisits every pair; a per-row step is "
                             "defined for one pass, SPEC §10); use sweeps=1 or a constant step")
        linear_time.check_method(method)
        if method == "linear" or features is not None:
            raise ValueError("sweeps > 1 run on the dense Gram matrix: use method 'auto' or 'dense', without features")
    if infinite:
        check_infinite_step(step)
    else:
        depth = int(depth)
        check_depth_and_step(depth, 0.0 if step is None else step)
    if kernel == "linear" and infinite and x.shape[0] > 1 and x.numel() and mixed_scales(x):
        # rows are independent at depth inf: each sequence gets its own exact power-of-two scale
        return torch.cat([descend(x[b:b + 1], kernel, beta=beta, sigma=sigma, depth=depth, step=step, ridge=ridge,
                                  memory_budget=memory_budget, method=method, sweeps=sweeps)
                          for b in range(x.shape[0])])
    if kernel == "linear" and (k := power_of_two_scale(x)):
        c = 2.0 ** k
        step = None if step is None else step * c * c  # exact: a power of two
        if step is not None and not bool(torch.isfinite(torch.as_tensor(step)).all()):
            raise ValueError(f"step is too large for inputs of size 2^{k}: eta * max_t R[t,t] overflows")
        if not math.isfinite(ridge / c / c):
            raise ValueError(f"ridge {ridge:g} is too large for inputs of size 2^{k}: lambda / |x|^2 overflows")
        out = descend(x / c, kernel, beta=beta, sigma=sigma, depth=depth, step=step, ridge=ridge / c / c,
                      return_all=return_all, memory_budget=memory_budget, method=method, sweeps=sweeps)
        out = out * c
        if not torch.isfinite(out).all():  # finite in scaled units, beyond the dtype in true units
            dtype = str(out.dtype).replace("torch.", "")
            raise FloatingPointError(f"causal kernel descent overflowed in {dtype} (the predictions exceed its range "
                                     f"for inputs of size 2^{k}); use a smaller step or depth inf"
                                     + (", or float64" if out.dtype != torch.float64 else ""))
        return out
    if sweeps != 1:
        return swept(x, kernel, beta=beta, sigma=sigma, ridge=ridge, sweeps=sweeps)
    if linear_time.uses_linear_time(kernel, method, features) and x.numel():
        return linear_time.descend(x, kernel, beta=beta, sigma=sigma, depth="inf" if infinite else depth,
                                   step=step, ridge=ridge, return_all=return_all, features=features,
                                   feature_seed=feature_seed)
    budget = default_budget(x) if memory_budget is None else check_memory_budget(memory_budget)
    rows = block_rows(x, budget)
    check_memory(x, "inf" if infinite else depth, rows, return_all)
    if features is not None or rows >= x.shape[1] or x.numel() == 0:  # features: whole matrices (reference)
        mats = (causal_matrices(x, kernel, beta, sigma) if features is None else
                linear_time.feature_matrices(x, kernel, features, feature_seed, beta=beta, sigma=sigma))
        y = targets(x)
        if infinite:
            return infinite_depth(mats, y, ridge, zero_columns=kernel == "linear", step=step)
        exact = None if features is not None else exact_log_diagonal(x, kernel, beta)
        if step is None:
            log_step = default_log_step_of(diagonal(mats), mats.log_scale, ridge, exact)
        else:
            check_tiny_step(diagonal(mats), mats.log_scale, step, ridge, exact)
            log_step = log_of(step)
        return finite_from_log(mats, y, depth, log_step, ridge, return_all)
    return descend_blocked(x, kernel, beta, sigma, "inf" if infinite else depth, step, ridge,
                            return_all, rows)
