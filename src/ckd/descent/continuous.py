"""Continuous-depth CKD (SPEC §2): the neural-ODE limit eta = tau / N, N -> inf."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..kernels import CausalMatrices
from .steps import effective


def pair_system(mats: CausalMatrices, ridge: float) -> Tensor:
    """(R + lambda I) restricted to rows/columns 1..T-1, stored units, (B, T-1, T-1)."""
    _, lam = effective(mats, 1.0, ridge)
    A = mats.R[:, 1:, 1:]
    return A + lam * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def continuous_depth(mats: CausalMatrices, y: Tensor, tau: float, ridge: float = 0.0) -> Tensor:
    """Neural-ODE limit (eta = tau / N, N -> inf): p = P alpha(tau) with
    alpha(tau) = M^{-1} (I - exp(-tau M)) y, M = R + lambda I on rows 1..T-1.

    Computed without inverting M: exp([[-tau M, tau y], [0, 0]]) has upper-right block
    M^{-1} (I - exp(-tau M)) y (the phi_1 function), exact even for singular M.
    Quadratic (cubic in T) for every kernel, the linear one included: no fixed-size state carries
    alpha(tau) from token to token (``ckd.linear_time`` module doc).
    """
    if tau < 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    if y.shape[1] < 2:
        return torch.zeros_like(y)
    tau_eff, _ = effective(mats, tau, ridge)
    A = pair_system(mats, ridge)
    rhs = y[:, 1:]
    B, n, d = rhs.shape
    block = torch.zeros(B, n + d, n + d, dtype=y.dtype, device=y.device)
    block[:, :n, :n] = -tau_eff * A
    block[:, :n, n:] = tau_eff * rhs
    alpha = torch.linalg.matrix_exp(block)[:, :n, n:]
    return mats.P[:, :, 1:] @ alpha
