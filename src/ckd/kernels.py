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

    linear    k(a, b) = a.b   (complex x: b^H a = sum_i conj(b_i) a_i, SPEC §10; R[t,t] = |x_{t-1}|^2 is real)
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

from .validation import KERNELS, check_complex, check_kernel  # noqa: F401 - the kernels accepted live with the checks


def scores(a: Tensor, b: Tensor, kernel: str, beta: float = 1.0, sigma: float = 1.0) -> Tensor:
    """Score matrix S[..., i, j] between rows a_i (..., n, d) and b_j (..., m, d).

    ``linear``: a.b (the kernel itself; b^H a for complex rows); ``exp``/``softmax``: beta a.b;
    ``gaussian``: -|a - b|^2 / (2 sigma^2). For the last three k = exp(S).
    """
    check_kernel(kernel)
    check_complex(a, kernel)
    if kernel == "gaussian":
        sqdist = _self_sqdist(a) if a is b else _sqdist(a, b)
        return gaussian_scores_(sqdist, sigma)
    dots = a @ b.transpose(-1, -2).conj()  # conj: a no-op view for real b
    return dots if kernel == "linear" else beta * dots


def gaussian_scores_(sqdist: Tensor, sigma: float) -> Tensor:
    """-|a - b|^2 / (2 sigma^2) in place. When 2 sigma^2 leaves the normal float range (sigma
    below ~1e-154 or above ~1e154) it is applied as two divisions, so that 0 stays 0 (k(a, a) = 1)
    and every other distance goes to -inf (tiny sigma) or -0 (huge sigma): the kernel's limits,
    never a ZeroDivisionError or a NaN."""
    two_var = 2.0 * sigma * sigma
    if torch.finfo(torch.float64).tiny <= two_var < math.inf:
        return sqdist.mul_(-1.0 / two_var)
    return sqdist.div_(sigma).div_(2.0 * sigma).neg_()


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
    """Causal prediction and residual matrices P, R (B, T, T) of x (B, T, d). See module doc.

    Cost: one batched product for the scores, one elementwise pass (exp) and in-place masking.
    Memory: two (B, T, T) buffers: P, and the score buffer of which R is a strided view (so R
    may be non-contiguous across the batch). ``ckd.descent.descend`` switches to row blocks
    (``causal_rows``) above a memory budget.
    """
    check_kernel(kernel)
    check_complex(x, kernel)
    P, R, log_scale = _causal_block(x, kernel, beta, sigma, 0, x.shape[1], None)
    return CausalMatrices(P, R, log_scale)


def causal_rows(
    x: Tensor, kernel: str, beta: float, sigma: float, start: int, stop: int, log_scale: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Rows start..stop-1 of P and R, columns 0..stop-1: two (B, stop - start, stop) blocks.

    Causality makes columns >= stop zero in these rows, so the blocks are all a row needs.
    ``exp`` weights are divided by exp(log_scale) (B,) as in ``causal_matrices``; pass the
    whole sequence's ``exp_log_scale`` so that every block uses the same scale.
    """
    check_kernel(kernel)
    check_complex(x, kernel)
    if log_scale is None:
        log_scale = x.real.new_zeros(x.shape[0])  # real also for complex x
    P, R, _ = _causal_block(x, kernel, beta, sigma, start, stop, log_scale)
    return P, R


def exp_log_scale(x: Tensor, beta: float, block: int | None = None) -> Tensor:
    """log_scale (B,) of the ``exp`` kernel: m_b = the largest log-weight beta x_i.x_j of P and R
    (1 <= s <= t) if it exceeds half the log of the dtype's largest float, else 0.

    Cheap when no rescaling is needed (|beta| max|x|^2 bounds every log-weight); otherwise the
    scores are scanned in row blocks of ``block`` rows (default: all at once).
    """
    B, T, _ = x.shape
    m = x.new_zeros(B)
    if T < 2 or not bool((abs(beta) * x.square().sum(-1).amax(-1) > _half_log_max(x.dtype)).any()):
        return m
    block = T if block is None else max(1, block)
    for start in range(0, T, block):
        stop = min(T, start + block)
        m = torch.maximum(m, _masked_max(_block_scores(x, "exp", beta, 1.0, start, stop), start))
    return _threshold(m, x.dtype)


def _half_log_max(dtype: torch.dtype) -> float:
    return math.log(torch.finfo(dtype).max) / 2


def _threshold(m: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.where(m > _half_log_max(dtype), m, torch.zeros_like(m))


def _masked_max(G: Tensor, start: int) -> Tensor:
    """max(0, largest score used by P or R) per sequence, from the scores G of ``_block_scores``:
    the entries j <= i with key j <= stop - 2. Clamping at 0 is harmless: only a maximum above
    the rescaling threshold (> 0) is ever used."""
    return torch.tril(G[..., :-1], start - 1).flatten(1).amax(1).clamp_min(0.0)


def _block_scores(x: Tensor, kernel: str, beta: float, sigma: float, start: int, stop: int) -> Tensor:
    """Scores (B, n+1, W), n = stop - start, W = stop, of queries x_{start-1}..x_{stop-1}
    (x_{-1} := 0) against keys x_0..x_{W-1}, stored one element into a flat buffer so that
    ``_block_views`` can read P and R as shifted views without copying (see there)."""
    B, _, d = x.shape
    n, W = stop - start, stop
    prev = x[:, start - 1:start] if start > 0 else x.new_zeros(B, 1, d)
    q = torch.cat([prev, x[:, start:stop]], 1)
    keys = x[:, :W]
    buf = x.new_empty(B * (n + 1) * W + 1)
    buf[:1] = 0
    G = buf[1:].view(B, n + 1, W)
    torch.bmm(q, keys.transpose(1, 2).conj(), out=G)  # complex (linear kernel): G[i, j] = keys_j^H q_i
    if kernel == "gaussian":  # |q - k|^2 = |q|^2 + |k|^2 - 2 q.k, with an exact 0 where q is k
        G.mul_(-2.0).add_(q.square().sum(-1)[:, :, None]).add_(keys.square().sum(-1)[:, None, :]).clamp_min_(0.0)
        torch.diagonal(G, offset=start - 1, dim1=-2, dim2=-1).zero_()
        gaussian_scores_(G, sigma)
    elif kernel != "linear":
        G.mul_(beta)
    return G


def _block_views(G: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """P and R rows start..stop-1 (B, n, W) as strided views of the scores G (B, n+1, W).

    Row r of G holds query x_{start-1+r}, so P[t, s] = G[t - start + 1, s - 1] and
    R[t, s] = G[t - start, s - 1]. Within a batch, G is one flat buffer with one spare element
    in front: R is G shifted back by one element, P is R shifted on by one row (W elements);
    both keep G's batch stride. Column 0 (and row 0 of R when start = 0) holds junk until masked.
    """
    B, n1, W = G.shape
    stride = (n1 * W, W, 1)
    offset = G.storage_offset() - 1
    R = G.as_strided((B, n1 - 1, W), stride, offset)
    P = G.as_strided((B, n1 - 1, W), stride, offset + W)
    return P, R


def _mask_(M: Tensor, start: int, is_R: bool) -> Tensor:
    """Zero M (rows start.., columns 0..) outside 1 <= s <= t, in place."""
    M.tril_(start)
    M[..., 0] = 0
    if is_R and start == 0:
        M[:, 0] = 0
    return M


def _causal_block(
    x: Tensor, kernel: str, beta: float, sigma: float, start: int, stop: int, log_scale: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(P, R, log_scale) rows start..stop-1, columns 0..stop-1. log_scale None: compute it from
    this block (only right for the whole sequence). Two (B, n, W) buffers are allocated."""
    B, T, _ = x.shape
    if T == 0 or stop <= start:
        empty = x.new_zeros(B, max(stop - start, 0), stop)
        return empty, empty.clone(), x.real.new_zeros(B)
    if log_scale is None:
        log_scale = exp_log_scale(x, beta) if kernel == "exp" else x.real.new_zeros(B)
    G = _block_scores(x, kernel, beta, sigma, start, stop)
    P_view, R = _block_views(G, start, stop)
    if kernel == "softmax":
        P = P_view.clone()  # before R is changed in place (the views overlap)
        keep = causal_mask_rows(start, stop, x.device)
        return _softmax_(P, keep), _softmax_(R, keep), log_scale
    if kernel == "exp" and bool(log_scale.any()):
        G.sub_(log_scale[:, None, None])
    if kernel != "linear":
        G.exp_()
    P = _mask_(P_view.clone(), start, False)
    return P, _mask_(R, start, True), log_scale


def causal_mask_rows(start: int, stop: int, device=None) -> Tensor:
    """Boolean (stop - start, stop) mask of rows start..stop-1, True where 1 <= s <= t."""
    keep = torch.ones(stop - start, stop, dtype=torch.bool, device=device).tril_(start)
    keep[:, 0] = False
    return keep


def _softmax_(S: Tensor, keep: Tensor) -> Tensor:
    """Row softmax of the scores S over the entries ``keep``, in place; empty rows give 0."""
    S.masked_fill_(~keep, -math.inf)
    m = S.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    S.sub_(m).exp_()
    total = S.sum(-1, keepdim=True)
    return S.div_(torch.where(total > 0, total, torch.ones_like(total)))
