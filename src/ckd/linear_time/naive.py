"""The plain sequential recurrences of SPEC §9, one pair at a time (the reference for ``chunk``).

Notation (pairs, 0-based): pair i = 0..n-1 is the augmented token s = i + 1 of SPEC §2, with key
k_i = phi(x_i) (= x_{s-1}), residual query u_i (R's row s: phi(x_i), divided by phi(x_i).Z_i for
softmax), prediction query q_i (P's row s: phi(x_{i+1}), divided by phi(x_{i+1}).Z_i for
softmax), and value / target y_i = x_{i+1}. Then R[s, s'] = u_i.k_j and P[s, s'] = q_i.k_j for
j <= i, so with the state W_i = sum_{j<=i} a_j k_j^T (d x D):

    delta rule (depth inf):   a_i = (y_i - W_{i-1} u_i) / (u_i.k_i + lambda),  W_i = W_{i-1} + a_i k_i^T,
                              p_i = W_i q_i
    linear attention (a layer): S_i = sum_{j<=i} r_j k_j^T,  (P r)_i = S_i q_i,  (R r)_i = S_i u_i

O(n d D) time and a d x D state, with a Python loop over i: slow, obviously right. Complex
sequences (SPEC §10) come with conjugated keys k_j = conj(x_j) (``ckd.linear_time.pairs``), so the
same loops compute R[s, s'] = x_j^H x_i and W_i = sum_j a_j x_j^H.
"""

from __future__ import annotations

from torch import Tensor


def delta_rule_naive(k: Tensor, u: Tensor, q: Tensor, y: Tensor, ridge: float = 0.0) -> tuple[Tensor, Tensor]:
    """Sequential normalised delta rule. k, u, q: (B, n, D); y: (B, n, dv). Returns (p, a), (B, n, dv)."""
    B, n, D = k.shape
    W = y.new_zeros(B, y.shape[-1], D)
    p, a = y.new_zeros(y.shape), y.new_zeros(y.shape)
    for i in range(n):
        a[:, i] = (y[:, i] - (W @ u[:, i, :, None])[..., 0]) / ((u[:, i] * k[:, i]).sum(-1, keepdim=True) + ridge)
        W = W + a[:, i, :, None] * k[:, i, None, :]
        p[:, i] = (W @ q[:, i, :, None])[..., 0]
    return p, a


def linear_attention_naive(k: Tensor, queries: Tensor, r: Tensor) -> Tensor:
    """Sequential causal linear attention: out[h, :, i] = S_i queries[h, :, i], S_i = sum_{j<=i} r_j k_j^T.
    k: (B, n, D); queries: (H, B, n, D); r: (B, n, dv). Returns (H, B, n, dv)."""
    B, n, D = k.shape
    S = r.new_zeros(B, r.shape[-1], D)
    out = r.new_zeros(queries.shape[0], B, n, r.shape[-1])
    for i in range(n):
        S = S + r[:, i, :, None] * k[:, i, None, :]
        out[:, :, i] = (S @ queries[:, :, i, :, None])[..., 0]
    return out


def descend_naive(k: Tensor, u: Tensor, q: Tensor, y: Tensor, depth: int | str, step: float | Tensor,
                  ridge: float = 0.0) -> Tensor:
    """Depth-N (layers of ``linear_attention_naive``) or depth-inf (``delta_rule_naive``) CKD on pairs.
    Returns the predictions of the pairs p (B, n, dv). ``step``: eta, or a per-pair step (n,) (SPEC §10;
    pair i is row i + 1): layer updates of pair i times eta_i; depth inf: the delta rule on y_i / eta_i,
    its predictions times eta_i (a number cancels there)."""
    if isinstance(step, Tensor):
        step = step.to(y)[:, None]  # (n, 1): one factor per pair
    if depth == "inf":
        if isinstance(step, Tensor):
            return delta_rule_naive(k, u, q, y / step, ridge)[0] * step
        return delta_rule_naive(k, u, q, y, ridge)[0]
    queries = q.new_zeros(2, *q.shape)
    queries[0], queries[1] = q, u
    r, p = y, y.new_zeros(y.shape)
    for _ in range(depth):
        Pr, Rr = linear_attention_naive(k, queries, r)
        p, r = p + step * Pr, r - step * (Rr + ridge * r)
    return p
