"""Kernels and the causal matrices P and R of causal kernel descent (SPEC §2).

Notation (0-based rows): a sequence x_0, ..., x_{T-1} in R^d. Row t may use the
pairs (x_{s-1} -> x_s) for s = 1..t; "key" s is x_{s-1}. The two causal matrices are

    P[t, s] = k(x_t,     x_{s-1})     prediction weights
    R[t, s] = k(x_{t-1}, x_{s-1})     residual weights (row 0 is zero)

for 1 <= s <= t and zero elsewhere (column 0 and row 0 of R are zero).
For ``softmax`` each row of P and of R is normalised to sum to 1 over s = 1..t.

Both matrices are slices of the one Gram matrix G[i, j] = k(x_i, x_j):
P[t, s] = G[t, s-1] and R[t, s] = G[t-1, s-1]. We compute G once.

Kernels (``KERNELS``)::

    linear    k(a, b) = a.b
    exp       k(a, b) = exp(beta a.b)
    softmax   k(a, b) = exp(beta a.b), normalised over the keys a row may see
    gaussian  k(a, b) = exp(-|a - b|^2 / (2 sigma^2))

Overflow. ``softmax`` is computed in log space with a max shift and never
overflows. ``exp`` weights are not normalised and can exceed the largest float
(exp(beta a.b) > 1.8e308 in float64 once beta a.b > 709.8). When the largest
log-weight of a sequence exceeds half the log of the dtype's largest float, we
store the weights divided by exp(m_b), m_b that sequence's largest log-weight,
and return ``log_scale[b] = m_b``: the true matrices are exp(log_scale) * (P, R).
Causal kernel descent is covariant under this scaling (step eta -> eta e^m,
ridge lambda -> lambda e^-m give the same iterates), so the descent stays exact
and finite. Weights that become 0 after the shift (smaller than the largest by
a factor e^-745) are lost; if a diagonal weight is lost the infinite-depth
solve raises a clear ``ValueError`` rather than returning inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

KERNELS = ("linear", "exp", "softmax", "gaussian")


def check_kernel(kernel: str) -> str:
    """Return ``kernel`` if it is one of ``KERNELS``, else raise a clear ``ValueError``."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    return kernel


def scores(a: Tensor, b: Tensor, kernel: str, beta: float = 1.0, sigma: float = 1.0) -> Tensor:
    """Score matrix S[..., i, j] between rows a_i (..., n, d) and b_j (..., m, d).

    ``linear``: a.b (the kernel itself); ``exp``/``softmax``: beta a.b;
    ``gaussian``: -|a - b|^2 / (2 sigma^2). For the last three k = exp(S).
    """
    check_kernel(kernel)
    if kernel == "gaussian":
        sqdist = _self_sqdist(a) if a is b else _sqdist(a, b)
        return -sqdist / (2.0 * sigma * sigma)
    dots = a @ b.transpose(-1, -2)
    return dots if kernel == "linear" else beta * dots


def _sqdist(a: Tensor, b: Tensor) -> Tensor:
    """|a_i - b_j|^2 = |a_i|^2 + |b_j|^2 - 2 a_i.b_j (one matrix product), clamped at 0."""
    cross = a @ b.transpose(-1, -2)
    return (a.square().sum(-1)[..., :, None] + b.square().sum(-1)[..., None, :] - 2.0 * cross).clamp_min(0.0)


def _self_sqdist(a: Tensor) -> Tensor:
    """|a_i - a_j|^2 with an exact 0 diagonal, so that k(a, a) = 1 exactly."""
    d2 = _sqdist(a, a)
    return d2 - torch.diag_embed(torch.diagonal(d2, dim1=-2, dim2=-1))


def kernel_matrix(a: Tensor, b: Tensor, kernel: str, beta: float = 1.0, sigma: float = 1.0) -> Tensor:
    """K[..., i, j] = k(a_i, b_j), unmasked and unnormalised (softmax gives exp(beta a.b)).

    Raises ``ValueError`` if an ``exp``/``softmax`` weight overflows the dtype.
    """
    s = scores(a, b, kernel, beta, sigma)
    if kernel == "linear":
        return s
    k = torch.exp(s)
    if not torch.isfinite(k).all():
        raise ValueError(
            f"{kernel} kernel overflows {a.dtype}: beta * a.b reaches {float(s.max()):.4g}; "
            "lower beta, rescale x, or use causal_matrices (which rescales exactly)"
        )
    return k


@dataclass
class CausalMatrices:
    """The causal matrices of one batch. True matrices are exp(log_scale) * (P, R).

    P, R: (B, T, T). log_scale: (B,), zero unless ``exp`` needed rescaling.
    """

    P: Tensor
    R: Tensor
    log_scale: Tensor

    @property
    def scale(self) -> Tensor:
        """exp(log_scale) shaped (B, 1, 1) (may be inf for a huge shift: use log_scale)."""
        return self.log_scale.exp()[:, None, None]

    def true_matrices(self) -> tuple[Tensor, Tensor]:
        """(P, R) in true units; may overflow for large-beta ``exp`` (for tests)."""
        return self.P * self.scale, self.R * self.scale


def causal_mask(T: int, device=None) -> Tensor:
    """Boolean (T, T) mask, True where 1 <= s <= t."""
    mask = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    mask[:, 0] = False
    return mask


def shift_gram(G: Tensor) -> tuple[Tensor, Tensor]:
    """(P, R) as the shifted slices of G = k(x_i, x_j), before masking.

    P[t, s] = G[t, s-1], R[t, s] = G[t-1, s-1]; column 0 and row 0 of R are 0.
    """
    P = torch.nn.functional.pad(G[..., :, :-1], (1, 0))
    R = torch.nn.functional.pad(G[..., :-1, :-1], (1, 0, 1, 0))
    return P, R


def causal_matrices(x: Tensor, kernel: str, beta: float = 1.0, sigma: float = 1.0) -> CausalMatrices:
    """Causal prediction and residual matrices P, R (B, T, T) of x (B, T, d). See module doc."""
    check_kernel(kernel)
    B, T, _ = x.shape
    mask = causal_mask(T, x.device)
    S_P, S_R = shift_gram(scores(x, x, kernel, beta, sigma))
    log_scale = torch.zeros(B, dtype=x.dtype, device=x.device)
    if kernel == "linear":
        return CausalMatrices(S_P * mask, S_R * mask, log_scale)
    neg_inf = torch.tensor(-math.inf, dtype=x.dtype, device=x.device)
    S_P = torch.where(mask, S_P, neg_inf)
    S_R = torch.where(mask, S_R, neg_inf)
    if kernel == "softmax":
        return CausalMatrices(_masked_softmax(S_P), _masked_softmax(S_R), log_scale)
    if kernel == "exp" and T > 1:
        m = torch.maximum(S_P.flatten(1).amax(1), S_R.flatten(1).amax(1))
        threshold = math.log(torch.finfo(x.dtype).max) / 2
        log_scale = torch.where(m > threshold, m, torch.zeros_like(m))
        S_P = S_P - log_scale[:, None, None]
        S_R = S_R - log_scale[:, None, None]
    return CausalMatrices(S_P.exp(), S_R.exp(), log_scale)


def _masked_softmax(S: Tensor) -> Tensor:
    """Row softmax of S where masked entries are -inf; fully masked rows give 0."""
    m = S.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    W = (S - m).exp()
    total = W.sum(-1, keepdim=True)
    return W / torch.where(total > 0, total, torch.ones_like(total))
