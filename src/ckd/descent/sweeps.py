"""Sweeps over the prompt (SPEC §7): Gauss-Seidel / cyclic Kaczmarz on the pair Gram matrix.

One forward Gauss-Seidel sweep from 0 on (K + lambda I) beta = Y is depth-inf CKD; K sweeps tend to
kernel ridge regression. ``gauss_seidel`` is the plain sweep loop (the reference),
``gauss_seidel_doubling`` the same numbers by repeated squaring, ``swept`` the predictions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels import kernel_matrix
from ..threads import threads_for


def gauss_seidel(G: Tensor, Y: Tensor, ridge: float, sweeps: int, *, return_all: bool = False,
                 start: Tensor | None = None) -> Tensor:
    """K forward Gauss-Seidel sweeps from beta = 0 on the symmetric system (G + lambda I) beta = Y
    (SPEC §7). Sweep k + 1 updates, for s = 1..n in order (new values for s' < s),

        beta_s <- beta_s + (Y_s - (G beta)_s - lambda beta_s) / (G[s, s] + lambda),

    i.e. (L + D + lambda I) beta^{k+1} = Y - U beta^k with G = L + D + U (strict lower, diagonal,
    strict upper): one triangular solve per sweep. One sweep is depth-inf CKD's forward
    substitution (R + lambda I) alpha = y; K -> inf gives kernel ridge (G + lambda I)^{-1} Y.

    G: (..., n, n), Y: (..., n, c). Returns beta^K (..., n, c), or (K, ..., n, c) with every sweep;
    ``start``: the coefficients to sweep from (default 0).
    """
    if isinstance(sweeps, bool) or int(sweeps) != sweeps or sweeps < 1:
        raise ValueError(f"sweeps must be an integer >= 1, got {sweeps!r}")
    lower = torch.tril(G)
    if ridge > 0:
        lower = lower + ridge * torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    upper = torch.triu(G, 1)
    beta = torch.zeros_like(Y) if start is None else start
    out = []
    with threads_for(2 * G.numel() * Y.shape[-1]):  # ckd.threads: K sweeps of (n, n) x (n, c) products
        for _ in range(int(sweeps)):
            beta = torch.linalg.solve_triangular(lower, Y - upper @ beta, upper=False)
            if return_all:
                out.append(beta)
    return torch.stack(out) if return_all else beta


def gauss_seidel_doubling(G: Tensor, Y: Tensor, ridge: float, sweeps: int) -> dict[int, Tensor]:
    """``gauss_seidel`` by repeated squaring, for many sweeps on a small system.

    With M = (L + D + lambda I)^{-1}, A = M U and b = M Y, a sweep is beta <- b - A beta, so
    beta^K = F_K b with F_K = sum_{j<K} (-A)^j, and F_{2m} = F_m + (-A)^m F_m: K sweeps cost
    about (4 + 2 log2 K) n^3 flops instead of 2 K n^2 c. Returns {K: beta^K} for K = sweeps
    and every power of two below it (the same numbers as ``gauss_seidel`` up to rounding,
    ``tests/test_sweeps.py``). G: (..., n, n), Y: (..., n, c).
    """
    if isinstance(sweeps, bool) or int(sweeps) != sweeps or sweeps < 1:
        raise ValueError(f"sweeps must be an integer >= 1, got {sweeps!r}")
    n = G.shape[-1]
    with threads_for(2 * G.numel() * n):  # ckd.threads: (n, n) products, log2 K of them
        eye = torch.eye(n, dtype=G.dtype, device=G.device)
        lower = torch.tril(G) + ridge * eye
        M = torch.linalg.solve_triangular(lower, eye.expand_as(G), upper=False)
        P = -(M @ torch.triu(G, 1))  # (-A)^m, m = 1, 2, 4, ...
        F = M @ Y  # F_m b, m = 1
        out, m = {1: F}, 1
        acc, acc_P, acc_m = None, None, 0  # the product over the set bits of K seen so far
        K = int(sweeps)
        while True:
            if K & m:
                acc = F if acc is None else acc + acc_P @ F
                acc_P = P if acc_P is None else acc_P @ P
                acc_m += m
            if 2 * m > K:
                break
            F = F + P @ F
            P = P @ P
            m *= 2
            out[m] = F
    out[K] = acc
    return out


def swept(x: Tensor, kernel: str = "exp", *, beta: float = 1.0, sigma: float = 1.0, ridge: float = 0.0,
          sweeps: int = 1) -> Tensor:
    """Depth-inf CKD with K sweeps over the prompt (SPEC §7): the rows of the last copy of the
    prompt repeated K times, seam pairs masked, with the ridge-aware coefficients.

    With G[i, j] = k(x_i, x_j), the pair Gram K[s, s'] = G[s-1, s'-1] and beta^k the coefficients
    after k sweeps (``gauss_seidel``; beta^0 = 0), row t sees the pairs s <= t of the last copy
    and every pair of the earlier copies:

        p_t = sum_{s<=t} k(x_t, x_{s-1}) beta^K_s + sum_{s>t} k(x_t, x_{s-1}) beta^{K-1}_s.

    K = 1 is ``infinite_depth``; the last row uses beta^K only; K -> inf tends to kernel ridge.
    Not blocked: (T, T) memory. kernel: linear, exp or gaussian (softmax is not symmetric).
    """
    if kernel == "softmax":
        raise ValueError("sweeps > 1 need a symmetric kernel: linear, exp or gaussian, not softmax")
    B, T, d = x.shape
    if T < 2 or x.numel() == 0:
        return torch.zeros_like(x)
    G = kernel_matrix(x, x, kernel, beta, sigma)
    Y = x[:, 1:]
    if kernel == "linear" and ridge == 0:  # a zero token x_{s-1}: coefficient 0, as at one sweep
        zero = (x[:, :-1] == 0).all(-1)  # (B, T-1)
        if bool(zero.any()):
            Y = Y.masked_fill(zero[..., None], 0.0)
            G = G.clone()
            idx = torch.arange(T - 1, device=x.device)
            G[:, idx, idx] = torch.where(zero, torch.ones_like(G[:, idx, idx]), G[:, idx, idx])
    # only the last two sweeps are needed: beta^{K-1}, then one more sweep (memory O(T d), not O(K T d))
    before = gauss_seidel(G[:, :-1, :-1], Y, ridge, sweeps - 1) if sweeps > 1 else torch.zeros_like(Y)
    last = gauss_seidel(G[:, :-1, :-1], Y, ridge, 1, start=before)
    seen = torch.ones(T, T - 1, dtype=torch.bool, device=x.device).tril(-1)  # column s-1 < t: s <= t
    Pk = G[:, :, :-1]
    p = (Pk * seen) @ last + (Pk * ~seen) @ before
    if not torch.isfinite(p).all():
        raise FloatingPointError(f"causal kernel descent with {sweeps} sweeps overflowed; use a ridge > 0")
    return p
