"""Layer-bounded iterations for the kernel system (G + lambda I) beta = Y (docs/forecast.md, "How deep
must a Transformer be?").

A layer of a Transformer applies the kernel matrix once: attention of every pair to every other.
Kernel ridge regression beta* = (G + lambda I)^{-1} Y is out of reach of a fixed number of layers;
these iterations reach towards it with L applications of G each, started from beta_0 = 0.
Throughout, A = G + lambda I, with G a gaussian Gram matrix (symmetric positive semi-definite, unit
diagonal, entries in [0, 1]), so that the spectrum of A lies in [a, b] with

    a = lambda,   b = lambda + max_i sum_j G[i, j]   (Gershgorin; one more application of G).

``ITERATIONS``:

    sweeps          L forward Gauss-Seidel sweeps (SPEC §7; ``ckd.descent.gauss_seidel``): L
                    passes of depth-inf CKD over the prompt, each applying G once.
    chebyshev       the Chebyshev semi-iteration on [a, b] (Saad, *Iterative Methods for Sparse
                    Linear Systems*, 2nd ed., Alg. 12.1): theta = (a + b) / 2, delta = (b - a) / 2,
                    s = theta / delta; r_0 = Y, rho_0 = 1 / s, d_0 = r_0 / theta;
                        beta_{k+1} = beta_k + d_k,   r_{k+1} = r_k - A d_k,
                        rho_{k+1} = 1 / (2 s - rho_k),
                        d_{k+1} = rho_{k+1} rho_k d_k + (2 rho_{k+1} / delta) r_{k+1}.
                    Its residual after L layers is T_L((theta - A) / delta) Y / T_L(s) (T_L the
                    Chebyshev polynomial): the smallest over polynomials of degree L on [a, b].
    momentum        the heavy-ball iteration (Polyak 1964) with its optimal constant steps,
                        beta_{k+1} = beta_k + alpha (Y - A beta_k) + mu (beta_k - beta_{k-1}),
                        alpha = 4 / (sqrt a + sqrt b)^2,  mu = ((sqrt b - sqrt a) / (sqrt b + sqrt a))^2,
                    beta_{-1} = beta_0 = 0.
    preconditioned  Richardson iteration with a Nystrom preconditioner M ~ A^{-1} (in the spirit of
                    Yan, Li, Kulick & Tang, *Transformers Can Implement Preconditioned Richardson
                    Iteration for In-Context Gaussian Kernel Regression*, arXiv 2605.08475; our M,
                    not necessarily theirs): m = min(n, ``LANDMARKS``) landmarks (every (n/m)-th
                    pair), C = G[:, landmarks], W = G[landmarks, landmarks] = U diag(w) U^T (w below
                    1e-10 max w dropped), F = C U diag(w)^{-1/2}, G^ = F F^T (the Nystrom
                    approximation, G^ <= G), and by Woodbury
                        M = (G^ + lambda I)^{-1} = (I - F (lambda I + F^T F)^{-1} F^T) / lambda.
                    The eigenvalues of M A = I + M (G - G^) lie in [1, b'] with
                    b' = 1 + lambda_max(G - G^) / lambda (a dense symmetric eigenvalue solve, done
                    before the layers, like M's m x m core), and
                        beta_{k+1} = beta_k + omega M (Y - A beta_k),   omega = 2 / (1 + b').
                    Each layer applies A once and M once (attention to the m landmarks and a fixed
                    m x m matrix, computed before the layers).

``layer_iterates`` returns beta after each requested number of layers from one run of the longest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from .descent import gauss_seidel

ITERATIONS = ("sweeps", "chebyshev", "momentum", "preconditioned")
LANDMARKS = 64


def spectrum_bounds(G: Tensor, ridge: float) -> tuple[float, float]:
    """[a, b] containing the spectrum of G + lambda I: a = lambda, b = lambda + max_i sum_j |G[i, j]|."""
    return float(ridge), float(ridge) + float(G.abs().sum(-1).max())


def _chebyshev(G: Tensor, Y: Tensor, ridge: float, L: int, keep: set[int]) -> dict[int, Tensor]:
    a, b = spectrum_bounds(G, ridge)
    theta, delta = (a + b) / 2, (b - a) / 2
    s = theta / delta
    beta, r = torch.zeros_like(Y), Y.clone()
    rho, d = 1.0 / s, Y / theta
    out = {}
    for k in range(1, L + 1):
        beta = beta + d
        if k in keep:
            out[k] = beta
        r = r - (G @ d + ridge * d)
        rho_next = 1.0 / (2.0 * s - rho)
        d = rho_next * rho * d + (2.0 * rho_next / delta) * r
        rho = rho_next
    return out


def _momentum(G: Tensor, Y: Tensor, ridge: float, L: int, keep: set[int]) -> dict[int, Tensor]:
    a, b = spectrum_bounds(G, ridge)
    alpha = 4.0 / (math.sqrt(a) + math.sqrt(b)) ** 2
    mu = ((math.sqrt(b) - math.sqrt(a)) / (math.sqrt(b) + math.sqrt(a))) ** 2
    beta, prev = torch.zeros_like(Y), torch.zeros_like(Y)
    out = {}
    for k in range(1, L + 1):
        beta, prev = beta + alpha * (Y - G @ beta - ridge * beta) + mu * (beta - prev), beta
        if k in keep:
            out[k] = beta
    return out


def nystrom_preconditioner(G: Tensor, ridge: float, m: int | None = None) -> tuple[Tensor, Tensor, float]:
    """F (n, k) with G^ = F F^T, the Woodbury core (lambda I + F^T F)^{-1} (k, k), and
    b' = 1 + lambda_max(G - G^) / lambda (module doc), with m landmarks (default ``LANDMARKS``). ridge > 0."""
    n = G.shape[-1]
    m = min(n, LANDMARKS if m is None else m)
    idx = torch.linspace(0, n - 1, m, device=G.device).round().long().unique()
    w, U = torch.linalg.eigh(G[idx][:, idx])
    good = w > 1e-10 * w.max()
    F = G[:, idx] @ (U[:, good] / w[good].sqrt())
    k = F.shape[1]
    core = torch.linalg.inv(ridge * torch.eye(k, dtype=G.dtype, device=G.device) + F.T @ F)
    gap = float(torch.linalg.eigvalsh(G - F @ F.T)[-1])
    return F, core, 1.0 + max(gap, 0.0) / ridge


def _preconditioned(G: Tensor, Y: Tensor, ridge: float, L: int, keep: set[int]) -> dict[int, Tensor]:
    F, core, top = nystrom_preconditioner(G, ridge)
    omega = 2.0 / (1.0 + top)

    def M(r: Tensor) -> Tensor:
        return (r - F @ (core @ (F.T @ r))) / ridge

    beta = torch.zeros_like(Y)
    out = {}
    for k in range(1, L + 1):
        beta = beta + omega * M(Y - G @ beta - ridge * beta)
        if k in keep:
            out[k] = beta
    return out


def layer_iterates(G: Tensor, Y: Tensor, ridge: float, kind: str, layers: Iterable[int]) -> dict[int, Tensor]:
    """beta after L layers of iteration ``kind`` (module doc) for each L of ``layers``, from one
    run of the largest. G (n, n) symmetric, Y (n, c); returns {L: (n, c)}."""
    if kind not in ITERATIONS:
        raise ValueError(f"unknown iteration {kind!r}; choose one of {', '.join(ITERATIONS)}")
    keep = {int(L) for L in layers}
    if not keep or min(keep) < 1:
        raise ValueError(f"layers must be integers >= 1, got {sorted(keep)}")
    top = max(keep)
    if kind != "sweeps" and not ridge > 0:
        raise ValueError(f"the {kind} iteration needs a ridge > 0 (its spectrum bound a = lambda), got {ridge!r}")
    if kind == "sweeps":
        hist = gauss_seidel(G, Y, ridge, top, return_all=True)
        return {L: hist[L - 1] for L in keep}
    return {"chebyshev": _chebyshev, "momentum": _momentum, "preconditioned": _preconditioned}[kind](
        G, Y, ridge, top, keep)
