"""Independent, deliberately naive reference implementations of SPEC §2, written
from the definitions with explicit loops (numpy, float64). Tests compare the
library against these; nothing here calls ckd."""

from __future__ import annotations

import math

import numpy as np


def k(kernel: str, a: np.ndarray, b: np.ndarray, beta: float, sigma: float) -> float:
    if kernel == "linear":
        return float(a @ b)
    if kernel in ("exp", "softmax"):
        return math.exp(beta * float(a @ b))
    if kernel == "gaussian":
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * sigma**2))
    raise ValueError(kernel)


def matrices(x: np.ndarray, kernel: str, beta: float = 1.0, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """P[t, s] = k(x_t, x_{s-1}), R[t, s] = k(x_{t-1}, x_{s-1}) for 1 <= s <= t; x: (T, d)."""
    T = len(x)
    P, R = np.zeros((T, T)), np.zeros((T, T))
    for t in range(T):
        for s in range(1, t + 1):
            P[t, s] = k(kernel, x[t], x[s - 1], beta, sigma)
            R[t, s] = k(kernel, x[t - 1], x[s - 1], beta, sigma)
        if kernel == "softmax" and t >= 1:
            P[t] /= P[t].sum()
            R[t] /= R[t].sum()
    return P, R


def ckd(x: np.ndarray, kernel: str, depth: int, step: float, ridge: float = 0.0,
        beta: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    """The layer recursion of SPEC §2, literally."""
    P, R = matrices(x, kernel, beta, sigma)
    r = x.copy()
    r[0] = 0
    p = np.zeros_like(x)
    for _ in range(depth):
        p, r = p + step * P @ r, r - step * (R @ r + ridge * r)
    return p


def kaczmarz(x: np.ndarray, kernel: str, beta: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    """One forward Kaczmarz sweep in the RKHS of k, from g = 0: for s = 1, 2, ... project g
    onto {g : g(x_{s-1}) = x_s}, i.e. g <- g + (x_s - g(x_{s-1})) k(., x_{s-1}) / k(x_{s-1}, x_{s-1}).
    Row t of the output is g_t(x_t), g_t the function after the first t projections."""
    T, d = x.shape
    centres: list[np.ndarray] = []
    coefs: list[np.ndarray] = []

    def g(z: np.ndarray) -> np.ndarray:
        out = np.zeros(d)
        for c, a in zip(centres, coefs):
            out += a * k(kernel, z, c, beta, sigma)
        return out

    pred = np.zeros_like(x)
    for t in range(T):
        if t >= 1:
            key = x[t - 1]
            coefs.append((x[t] - g(key)) / k(kernel, key, key, beta, sigma))
            centres.append(key)
        pred[t] = g(x[t])
    return pred


def ckd_per_row(x: np.ndarray, kernel: str, depth: int, step: np.ndarray, ridge: float = 0.0,
                beta: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    """The per-row layer recursion of SPEC §10, literally: D = diag(eta), row t uses eta_t,
    p <- p + D P r, r <- r - D (R r + lambda r), one row at a time."""
    P, R = matrices(x, kernel, beta, sigma)
    T = len(x)
    r = x.copy()
    r[0] = 0
    p = np.zeros_like(x)
    for _ in range(depth):
        Pr, Rr = P @ r, R @ r
        new_r = r.copy()
        for t in range(T):
            p[t] = p[t] + step[t] * Pr[t]
            new_r[t] = r[t] - step[t] * (Rr[t] + ridge * r[t])
        r = new_r
    return p


def per_row_closed_forms(x: np.ndarray, kernel: str, step: np.ndarray, ridge: float = 0.0, depth: int | None = None,
                         beta: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    """SPEC §10's closed forms: depth N: p = D P sum_{l<N} (I - D (R + lambda I))^l y; depth None (inf):
    p = D P (R + lambda I)^{-1} D^{-1} y on rows 1..T-1 (row 0 predicts 0)."""
    P, R = matrices(x, kernel, beta, sigma)
    T = len(x)
    y = x.copy()
    y[0] = 0
    D = np.diag(step)
    M = R + ridge * np.eye(T)
    if depth is not None:
        A = np.eye(T) - D @ M
        return D @ P @ sum((np.linalg.matrix_power(A, n) @ y for n in range(depth)), np.zeros_like(y))
    p = np.zeros_like(x)
    alpha = np.linalg.solve(M[1:, 1:], y[1:] / step[1:, None])
    p[1:] = step[1:, None] * (P[1:, 1:] @ alpha)
    return p
