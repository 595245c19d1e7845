"""Baselines for in-context next-token prediction (SPEC §6).

Every function takes x (B, T, d) and returns (B, T, d) where row t predicts
x_{t+1} from rows x_0..x_t only (strictly causal). The methods that fit the
pairs (x_{s-1} -> x_s), s = 1..t, have no pair at row 0 and predict 0 there, as
CKD does (SPEC §2); ``last_value`` predicts x_0 at row 0.

    last_value     x^_{t+1} = x_t
    least_squares  x^_{t+1} = A_t x_t,  A_t = argmin_A sum_{s<=t} |x_s - A x_{s-1}|^2 + lambda |A|_F^2
                   (minimum-norm solution when lambda = 0 and the prefix is rank deficient)
    kernel_ridge   x^_{t+1} = k_t^T (K_t + lambda I)^{-1} Y_t,  K_t[i, j] = k(x_{i-1}, x_{j-1}),
                   k_t[s] = k(x_{s-1}, x_t), Y_t = (x_1..x_t); exact interpolation when lambda = 0
    analogues      x^_{t+1} = mean of x_{j+1} over the k nearest earlier states x_j (j < t) to x_t
    oracle         x^_{t+1} = f(x_t), the true map of the task

``context_parrot`` is the multi-step exception (SPEC §8): it returns the H values after a
context, per coordinate, by copying what followed the nearest earlier delay window.

Kernel ridge on the prefix is NOT causal kernel descent at depth inf: CKD solves
the lower-triangular system (R + lambda I) alpha = y (one Kaczmarz sweep), kernel
ridge the full symmetric system. They agree when the keys are orthogonal in the
kernel's feature space (R diagonal), and in general they differ
(``tests/test_baselines.py`` checks both). With the ``linear`` kernel and
lambda > 0, kernel ridge equals ``least_squares`` with the same lambda.

All prefixes are solved at once: the Cholesky factor of a leading block of
K + lambda I is the leading block of the full factor L, so with Z = L^{-1} Y and
W = L^{-1} K_q (K_q[s, t] = k(x_{s-1}, x_t)), row t is sum_{s<=t} W[s, t] Z[s].
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from .kernels import causal_mask, check_kernel, kernel_matrix
from .parroting import parrot
from .sequences import Task
from .validation import check_int, check_number


def last_value(x: Tensor) -> Tensor:
    """x^_{t+1} = x_t (persistence). x: (B, T, d) -> (B, T, d)."""
    return x.clone()


def least_squares(x: Tensor, ridge: float = 0.0) -> Tensor:
    """Per-prefix (ridge) least squares on the pairs: row t is A_t x_t with
    A_t = D_t (C_t + lambda I)^+, C_t = sum_{s=1}^t x_{s-1} x_{s-1}^T, D_t = sum_{s=1}^t x_s x_{s-1}^T.

    The pseudo-inverse gives the minimum-norm A_t while the prefix spans fewer than
    d directions (lambda = 0). Row 0 has no pair: 0. x: (B, T, d) -> (B, T, d).
    """
    ridge = check_number(ridge, "ridge", minimum=0.0)
    B, T, d = x.shape
    prev, nxt = x[:, :-1], x[:, 1:]
    C = torch.cumsum(prev[..., :, None] * prev[..., None, :], dim=1)  # (B, T-1, d, d): C_t, t = 1..T-1
    D = torch.cumsum(nxt[..., :, None] * prev[..., None, :], dim=1)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    A = D @ torch.linalg.pinv(C + ridge * eye, hermitian=True)
    out = torch.zeros_like(x)
    out[:, 1:] = (A @ x[:, 1:, :, None])[..., 0]
    return out


def kernel_ridge(x: Tensor, kernel: str = "gaussian", *, beta: float = 1.0, sigma: float = 1.0,
                 ridge: float = 0.0) -> Tensor:
    """Kernel ridge regression of x_s on x_{s-1} over each prefix s = 1..t (see module doc).

    kernel: ``linear``, ``exp`` or ``gaussian`` (``softmax`` is not a kernel). lambda = 0 is
    exact interpolation; raises ``ValueError`` if a prefix Gram matrix K_t + lambda I is not
    positive definite (repeated states, or the linear kernel beyond d pairs): use ridge > 0.
    x: (B, T, d) -> (B, T, d); row 0 is 0.
    """
    check_kernel(kernel)
    if kernel == "softmax":
        raise ValueError("kernel ridge needs a positive-definite kernel: linear, exp or gaussian, not softmax")
    ridge = check_number(ridge, "ridge", minimum=0.0)
    B, T, d = x.shape
    out = torch.zeros_like(x)
    if T < 2:
        return out
    keys = x[:, :-1]  # x_{s-1}, s = 1..T-1
    K = kernel_matrix(keys, keys, kernel, beta, sigma)
    K = K + ridge * torch.eye(T - 1, dtype=x.dtype, device=x.device)
    L, info = torch.linalg.cholesky_ex(K)
    if (info > 0).any():
        n = int(info[info > 0].min())
        raise ValueError(
            f"kernel ridge: the Gram matrix of the first {n} pairs is not positive definite "
            f"({kernel} kernel, ridge {ridge:g}); use ridge > 0"
        )
    Z = torch.linalg.solve_triangular(L, x[:, 1:], upper=False)  # (B, T-1, d)
    Kq = kernel_matrix(keys, x[:, 1:], kernel, beta, sigma)  # Kq[s-1, t-1] = k(x_{s-1}, x_t), t >= 1
    W = torch.linalg.solve_triangular(L, Kq, upper=False)
    W = W * causal_mask(T, x.device)[1:, 1:].T  # keep s <= t
    out[:, 1:] = W.transpose(-1, -2) @ Z
    return out


def analogues(x: Tensor, k: int = 1) -> Tensor:
    """Method of analogues: row t is the mean successor x_{j+1} of the k earlier states x_j
    (j < t) nearest to x_t in Euclidean distance (all of them while t < k). Row 0: 0.
    x: (B, T, d) -> (B, T, d).
    """
    k = check_int(k, "k", minimum=1)
    B, T, d = x.shape
    out = torch.zeros_like(x)
    if T < 2:
        return out
    dist = torch.cdist(x[:, 1:], x[:, :-1])  # dist[t-1, j] = |x_t - x_j|, t = 1..T-1, j = 0..T-2
    earlier = causal_mask(T, x.device)[1:, 1:]  # j <= t-1
    dist = dist.masked_fill(~earlier, torch.inf)
    kk = min(k, T - 1)
    val, idx = dist.topk(kk, dim=-1, largest=False)  # (B, T-1, kk)
    flat = idx.reshape(B, -1, 1).expand(-1, -1, d)
    succ = torch.gather(x[:, 1:], 1, flat).reshape(B, T - 1, kk, d)  # successors x_{j+1}
    valid = torch.isfinite(val)[..., None].to(x.dtype)
    out[:, 1:] = (succ * valid).sum(2) / valid.sum(2)
    return out


def context_parrot(series: Tensor, horizon: int, embed: int = 5) -> Tensor:
    """Context parroting (SPEC §8; *Context parroting*, arXiv 2505.11349), computed by
    ``ckd.parroting.parrot`` (NumPy, the same bits as ``ckd forecast --method parrot``): for each
    coordinate, copy what followed the earlier window of dimension ``embed`` nearest to the last one.

    series: (T,), (T, d) or (B, T, d) tensor; returns (H,), (H, d) or (B, H, d) on its device.
    Needs T >= D + 1 (one earlier window); raises ``ValueError`` otherwise.
    """
    out = parrot(series.detach().cpu().numpy(), horizon, embed)
    return torch.from_numpy(out).to(series.device)


def oracle(task: Task) -> Tensor:
    """The true map applied to every row: row t is f(x_t). Raises if the task has no f."""
    if task.f is None:
        raise ValueError(f"task {task.name!r} has no known map f: no oracle")
    return task.f(task.x)


BASELINES: dict[str, Callable[[Tensor], Tensor]] = {
    "last": last_value,
    "ols": least_squares,
    "ridge": partial(least_squares, ridge=1e-3),
    "krr": partial(kernel_ridge, kernel="gaussian", sigma=1.0, ridge=1e-6),
    "analogues": analogues,
    **{f"analogues-{k}": partial(analogues, k=k) for k in range(2, 6)},
}
