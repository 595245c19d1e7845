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


# ---------------------------------------------------------------- complex sequences (SPEC §10), linear kernel

def complex_matrices(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The linear kernel on complex x (T, d), k(a, b) = b^H a: P[t, s] = x_{s-1}^H x_t and
    R[t, s] = x_{s-1}^H x_{t-1} for 1 <= s <= t, complex (T, T)."""
    T = len(x)
    P, R = np.zeros((T, T), dtype=complex), np.zeros((T, T), dtype=complex)
    for t in range(T):
        for s in range(1, t + 1):
            P[t, s] = np.vdot(x[s - 1], x[t])  # vdot conjugates its first argument
            R[t, s] = np.vdot(x[s - 1], x[t - 1])
    return P, R


def complex_ckd(x: np.ndarray, depth: int | str, step: float | None = None, ridge: float = 0.0) -> np.ndarray:
    """SPEC §2 layer by layer on complex P, R (linear kernel); depth "inf": (R + lambda I) alpha = y by
    forward substitution, one row at a time, and p = P alpha. step None: 0.5 / max_t (R[t,t] + lambda)."""
    P, R = complex_matrices(x)
    y = x.astype(complex)
    y[0] = 0
    if depth == "inf":
        alpha = np.zeros_like(y)
        for t in range(1, len(x)):
            alpha[t] = (y[t] - sum(R[t, s] * alpha[s] for s in range(1, t))) / (R[t, t] + ridge)
        return P @ alpha
    if step is None:
        step = 0.5 / max(R[t, t].real + ridge for t in range(1, len(x)))
    r, p = y.copy(), np.zeros_like(y)
    for _ in range(depth):
        p, r = p + step * P @ r, r - step * (R @ r + ridge * r)
    return p


def complex_kaczmarz(x: np.ndarray) -> np.ndarray:
    """One forward Kaczmarz sweep for complex x (T, d) in the RKHS of k(a, b) = b^H a (the maps
    g(z) = W z): g <- g + (x_s - g(x_{s-1})) k(., x_{s-1}) / k(x_{s-1}, x_{s-1}) for s = 1, 2, ...
    Row t is g_t(x_t), g_t after the first t projections."""
    T, d = x.shape
    centres: list[np.ndarray] = []
    coefs: list[np.ndarray] = []

    def g(z: np.ndarray) -> np.ndarray:
        return sum((a * np.vdot(c, z) for c, a in zip(centres, coefs)), np.zeros(d, dtype=complex))

    pred = np.zeros((T, d), dtype=complex)
    for t in range(T):
        if t >= 1:
            key = x[t - 1]
            coefs.append((x[t] - g(key)) / np.vdot(key, key))
            centres.append(key)
        pred[t] = g(x[t])
    return pred


def complex_sweeps(x: np.ndarray, sweeps: int, ridge: float = 0.0) -> np.ndarray:
    """SPEC §7 for complex x, linear kernel: K[s, s'] = x_{s'-1}^H x_{s-1} (Hermitian), Gauss-Seidel
    beta_s <- beta_s + (Y_s - (K beta)_s - lambda beta_s) / (K[s, s] + lambda), s = 1..T-1 in order;
    row t predicts sum_{s<=t} k(x_t, x_{s-1}) beta^K_s + sum_{s>t} k(x_t, x_{s-1}) beta^{K-1}_s."""
    T, d = x.shape
    n = T - 1
    K = np.array([[np.vdot(x[j], x[i]) for j in range(n)] for i in range(n)])
    beta = np.zeros((n, d), dtype=complex)
    before = beta.copy()
    for _ in range(sweeps):
        before = beta.copy()
        for s in range(n):
            beta[s] = beta[s] + (x[s + 1] - K[s] @ beta - ridge * beta[s]) / (K[s, s] + ridge)
    p = np.zeros((T, d), dtype=complex)
    for t in range(T):
        for s in range(1, T):
            p[t] += np.vdot(x[s - 1], x[t]) * (beta[s - 1] if s <= t else before[s - 1])
    return p


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
