"""Causal kernel descent (CKD): finite, infinite and continuous depth (SPEC §2).

With P, R the causal matrices of ``ckd.kernels`` and targets y (y_0 = 0,
y_t = x_t), depth-N CKD with step eta and ridge lambda runs, from r = y, p = 0,

    p <- p + eta * P r
    r <- r - eta * (R r + lambda r)          (old r on both right-hand sides)

and row t of p predicts x_{t+1}. Closed forms (tested in ``tests/test_descent.py``):

    p_N      = P alpha_N,   alpha_N = eta * sum_{l<N} (I - eta (R + lambda I))^l y
    depth inf: (R + lambda I) alpha = y on rows 1..T-1 (forward substitution;
               for lambda = 0 one forward Kaczmarz sweep in the kernel's RKHS)
    tau:       alpha(tau) = (R + lambda I)^{-1} (I - exp(-tau (R + lambda I))) y

The iteration converges iff |1 - eta (R[t,t] + lambda)| < 1 for every t >= 1.
Inside that region (I - eta R)^l can still grow by orders of magnitude before it
decays (R is triangular, far from normal): ``finite_depth`` measures that growth
and warns when it eats the precision of the dtype.

Reference: M. E. Sander, G. Peyré, *Towards Understanding the Universality of
Transformers for Next-Token Prediction*, ICLR 2025 (arXiv 2410.03011).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .kernels import CausalMatrices, causal_matrices


class StabilityWarning(UserWarning):
    """The step is outside the convergence region, or the iterates lost precision."""


def targets(x: Tensor) -> Tensor:
    """y with y_0 = 0 and y_t = x_t (x: (B, T, d))."""
    y = x.clone()
    y[:, 0] = 0
    return y


def diagonal(mats: CausalMatrices) -> Tensor:
    """R[t, t] for t >= 1 in stored units, (B, T-1)."""
    return torch.diagonal(mats.R, dim1=-2, dim2=-1)[:, 1:]


def default_step(mats: CausalMatrices, ridge: float = 0.0) -> float:
    """eta = 0.5 / max over the batch and t >= 1 of (R[t, t] + lambda), in true units."""
    diag = diagonal(mats)
    if diag.numel() == 0:
        return 0.5 / ridge if ridge > 0 else 0.5
    log_diag = diag.log() + mats.log_scale[:, None]
    if ridge > 0:
        log_diag = torch.logaddexp(log_diag, torch.full_like(log_diag, math.log(ridge)))
    return 0.5 * math.exp(-float(log_diag.max()))


def effective(mats: CausalMatrices, step: float, ridge: float) -> tuple[Tensor, Tensor]:
    """Per-sequence (eta e^m, lambda e^-m), (B, 1, 1): the step and ridge in stored units."""
    ls = mats.log_scale[:, None, None]
    eta = torch.exp(math.log(step) + ls) if step > 0 else torch.zeros_like(ls)
    lam = ridge * torch.exp(-ls)
    return eta, lam


def check_step(mats: CausalMatrices, step: float, ridge: float) -> bool:
    """True iff |1 - eta (R[t,t] + lambda)| < 1 for every t >= 1 and every sequence."""
    eta, lam = effective(mats, step, ridge)
    factor = 1.0 - eta[:, :, 0] * (diagonal(mats) + lam[:, :, 0])
    return bool((factor.abs() < 1).all())


def finite_depth(
    mats: CausalMatrices,
    y: Tensor,
    depth: int,
    step: float,
    ridge: float = 0.0,
    *,
    return_all: bool = False,
) -> Tensor:
    """Depth-N CKD. y: (B, T, d) targets. Returns p (B, T, d), or (N+1, B, T, d) if
    ``return_all`` (the prediction after 0, 1, ..., N layers; no extra products).

    Warns ``StabilityWarning`` when the step is outside the convergence region, or
    when the residuals grow so much (max_l |r_l| / |y|) that the dtype's precision
    is lost; raises ``FloatingPointError`` when the result is not finite.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if step < 0 or not math.isfinite(step):
        raise ValueError(f"step must be a finite number >= 0, got {step}")
    if depth > 0 and not check_step(mats, step, ridge):
        warnings.warn(
            f"step {step:.4g} is outside the convergence region |1 - eta (R[t,t] + lambda)| < 1; "
            "the iterates diverge as depth grows",
            StabilityWarning,
            stacklevel=3,
        )
    eta, lam = effective(mats, step, ridge)
    P, R = eta * mats.P, eta * mats.R
    decay = 1.0 - step * ridge  # eta * lambda is the same in stored and true units
    r, p = y, torch.zeros_like(y)
    history = [p] if return_all else None
    y_max = y.abs().amax()
    r_max = y_max
    for _ in range(depth):
        p = torch.baddbmm(p, P, r)
        r = torch.baddbmm(r, R, r, beta=decay, alpha=-1.0)
        r_max = torch.maximum(r_max, r.abs().amax())
        if history is not None:
            history.append(p)
    _check_growth(p, float(r_max), float(y_max))
    return torch.stack(history) if history is not None else p


def _check_growth(p: Tensor, r_max: float, y_max: float) -> None:
    if not torch.isfinite(p).all():
        raise FloatingPointError(
            f"causal kernel descent overflowed in {p.dtype} (residual max {r_max:.3g}); "
            "use a smaller step, a smaller depth, or float64"
        )
    if y_max > 0:
        growth = r_max / y_max
        lost = growth * torch.finfo(p.dtype).eps
        if lost > 1e-4:
            digits = max(0, int(-math.log10(lost)))
            warnings.warn(
                f"residuals grew by {growth:.3g} before shrinking (non-normal transient): about "
                f"{digits} correct digits left in {str(p.dtype).replace('torch.', '')}; "
                "use fewer tokens per prompt, a smaller step, depth inf, or float64",
                StabilityWarning,
                stacklevel=4,
            )


def _pair_system(mats: CausalMatrices, ridge: float) -> Tensor:
    """(R + lambda I) restricted to rows/columns 1..T-1, stored units, (B, T-1, T-1)."""
    _, lam = effective(mats, 1.0, ridge)
    A = mats.R[:, 1:, 1:]
    return A + lam * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def infinite_depth(mats: CausalMatrices, y: Tensor, ridge: float = 0.0) -> Tensor:
    """Depth-inf CKD: p = P alpha with (R + lambda I) alpha = y on rows 1..T-1.

    A lower-triangular solve; for lambda = 0 it equals one forward Kaczmarz sweep.
    Raises ``ValueError`` if a diagonal entry R[t,t] + lambda is zero.
    """
    if y.shape[1] < 2:
        return torch.zeros_like(y)
    A = _pair_system(mats, ridge)
    diag = torch.diagonal(A, dim1=-2, dim2=-1)
    if not (diag != 0).all():
        raise ValueError(
            "infinite depth needs R[t,t] + ridge > 0 for every t (a zero token with the linear "
            "kernel, or an exp weight lost to underflow); use ridge > 0"
        )
    alpha = torch.linalg.solve_triangular(A, y[:, 1:], upper=False)
    return mats.P[:, :, 1:] @ alpha


def continuous_depth(mats: CausalMatrices, y: Tensor, tau: float, ridge: float = 0.0) -> Tensor:
    """Neural-ODE limit (eta = tau / N, N -> inf): p = P alpha(tau) with
    alpha(tau) = M^{-1} (I - exp(-tau M)) y, M = R + lambda I on rows 1..T-1.

    Computed without inverting M: exp([[-tau M, tau y], [0, 0]]) has upper-right block
    M^{-1} (I - exp(-tau M)) y (the phi_1 function), exact even for singular M.
    """
    if tau < 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    if y.shape[1] < 2:
        return torch.zeros_like(y)
    tau_eff, _ = effective(mats, tau, ridge)
    A = _pair_system(mats, ridge)
    rhs = y[:, 1:]
    B, n, d = rhs.shape
    block = torch.zeros(B, n + d, n + d, dtype=y.dtype, device=y.device)
    block[:, :n, :n] = -tau_eff * A
    block[:, :n, n:] = tau_eff * rhs
    alpha = torch.linalg.matrix_exp(block)[:, :n, n:]
    return mats.P[:, :, 1:] @ alpha


def descend(
    x: Tensor,
    kernel: str = "exp",
    *,
    beta: float = 1.0,
    sigma: float = 1.0,
    depth: int | float | str = 16,
    step: float | None = None,
    ridge: float = 0.0,
    return_all: bool = False,
) -> Tensor:
    """CKD predictions for x (B, T, d): row t of the result predicts x_{t+1}.

    depth: int >= 0, or ``"inf"``/``math.inf`` for the infinite-depth limit.
    step None means eta = 0.5 / max_t (R[t,t] + lambda) over the batch.
    """
    mats = causal_matrices(x, kernel, beta, sigma)
    y = targets(x)
    if depth == "inf" or (isinstance(depth, float) and math.isinf(depth)):
        if return_all:
            raise ValueError("return_all needs a finite depth")
        return infinite_depth(mats, y, ridge)
    eta = default_step(mats, ridge) if step is None else float(step)
    return finite_depth(mats, y, int(depth), eta, ridge, return_all=return_all)
