"""Least-squares steps of causal kernel descent against a target (SPEC §10): ``fit_step``.

Given sequences x (B, T, d) and a target z (B, T, d) (row t of z is compared with row t of the CKD
prediction: the truth x_{t+1}, or any model's predictions), ``fit_step`` returns the steps eta >= 0
that minimise

    L(eta) = sum_b sum_{t >= 1} |z_bt - p_bt(eta)|^2,      p(eta) = CKD of x at depth N with step eta,

one step per row (eta_t, D = diag(eta), SPEC §10) or one constant step. With y the targets of x
(y_0 = 0, y_t = x_t) and M = R + lambda I:

    depth 1    p = D P y: eta_t = sum_b <z_bt, (P y)_bt> / sum_b |(P y)_bt|^2 (SPEC §10), one ratio
               over every row t >= 1 for a constant step; clipped at 0 (the least squares over eta >= 0;
               a row with P y = 0 gets 0). Any kernel and path: ``descend`` at depth 1, step 1 gives P y.
    depth N    p = D P sum_{l<N} (I - D M)^l y is not linear in eta: Levenberg-Marquardt (damped
               Gauss-Newton, projected on eta >= 0) from the best of the depth-1 fit (capped at
               eta_t (R[t,t] + lambda) <= 1) and the default step. The Jacobian is the layer recursion differentiated
               forward, one tangent per step (E_s: row s only; every row for a constant step):
                   dr <- (I - D M) dr - E_s M r,      dp <- dp + D P dr + E_s P r
    depth inf  p = D P M^{-1} D^{-1} y is unchanged when eta is multiplied by a number: only the
               ratios eta_t / eta_s are fitted (Levenberg-Marquardt in log eta, from a constant step),
               then eta is scaled like the default step, max over t and the batch of
               eta_t (R[t,t] + lambda) = 1/2, so that the layers converge to it. A constant step
               cancels: per_row=False returns the default step 0.5 / max_t (R[t,t] + lambda).

Depth N > 1 and depth inf run on the dense (B, T, T) matrices with (B, T, T, d) tangents, in chunks
of sequences: O(N B T^3 d) per iteration (depth inf: O(B T^3 d)); for short prompts (T up to a few
hundred), as in the studies of SPEC §10.

A fitted step reads the targets: it is an analysis tool (how close is a model, or the truth, to
CKD with its best steps?), not a causal predictor.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..kernels import causal_matrices
from ..validation import as_batch, check_fits, check_options
from .dispatch import descend
from .steps import StabilityWarning, default_step

MAX_ITERATIONS = 100  # Levenberg-Marquardt; a zero-residual fit converges in about ten
CHUNK_BYTES = 2**28  # tangents held at once (bytes), at least one sequence's
TANGENTS = 6  # (b, T, T-1, d) buffers alive at once in ``_finite_terms`` / ``_infinite_terms``


def fit_step(x: Any, target: Any, kernel: str = "exp", *, beta: float = 1.0, sigma: float = 1.0,
             ridge: float = 0.0, depth: int | str = 1, per_row: bool = True) -> Tensor | float:
    """Least-squares steps of CKD of x against ``target`` (module doc; SPEC §10).

    x, target: arrays or tensors of the same shape, (T, d) or (B, T, d); row t of target is compared
    with row t >= 1 of the CKD prediction (which predicts x_{t+1}). kernel, beta, sigma, ridge,
    depth (int >= 1 or "inf") as in ``ckd.predict``. Returns, for ``per_row``, a float64 tensor (T,)
    on x's device with eta_0 = 0 (unused), else one float. Use it as ``ckd.predict(x, ..., step=eta)``.

    The fit reads the targets: an analysis tool, not a causal predictor.
    """
    opts = check_options(kernel, beta, sigma, depth, None, ridge, "descent", "augmented")
    if not isinstance(per_row, (bool, np.bool_)):
        raise TypeError(f"per_row must be True or False, got {per_row!r}")
    x, _ = as_batch(x, torch.float64)
    z, _ = as_batch(target, torch.float64, "target")
    if z.shape != x.shape:
        raise ValueError(f"target must have the shape of x, {tuple(x.shape)}, got {tuple(z.shape)}")
    z = z.to(x.device)
    depth, ridge = opts["depth"], opts["ridge"]
    if depth == 0:
        raise ValueError("depth 0 predicts 0 whatever the step: fit_step needs depth >= 1 or 'inf'")
    kw = dict(kernel=kernel, beta=opts["beta"], sigma=opts["sigma"])
    if depth == 1:
        return _fit_depth_one(x, z, kw, bool(per_row))
    mats = causal_matrices(x, **kw)
    if depth == "inf" and not per_row:
        return default_step(mats, ridge)
    B, T, d = x.shape
    tangents = TANGENTS * 8 * min(B, _per_chunk(T, d)) * T * max(T - 1, 1) * d
    check_fits(8 * (3 * B * T * T + 6 * B * T * d) + tangents, f"fit_step at depth {depth} on B={B}, T={T}, d={d}",
               "use shorter sequences, or depth 1 (any length)", x.device)
    P, R = mats.true_matrices()
    if not (bool(torch.isfinite(P).all()) and bool(torch.isfinite(R).all())):
        raise ValueError(f"fit_step at depth {depth} needs the {kernel} kernel's weights within the float range; "
                         "lower beta or rescale x")
    M = R + ridge * torch.eye(T, dtype=x.dtype, device=x.device)
    diag = torch.diagonal(M, dim1=-2, dim2=-1)[:, 1:].amax(0)  # max_b (R[t, t] + lambda), t >= 1
    y = x.clone()
    y[:, 0] = 0
    eta = x.new_zeros(T)
    if T < 2:
        return eta if per_row else 0.0
    if depth == "inf":
        if bool((torch.diagonal(M, dim1=-2, dim2=-1)[:, 1:] == 0).any()):
            raise ValueError("depth inf needs R[t,t] + ridge > 0 for every t (a zero token with the linear kernel); "
                             "use ridge > 0")
        theta = _levenberg_marquardt(lambda th: _chunked(_infinite_terms, P, M, y, z, th), x.new_zeros(T - 1))
        eta[1:] = theta.exp()
        eta[1:] *= 0.5 / float((eta[1:] * diag).max())
        return eta
    cap = 1.0 / diag.clamp_min(torch.finfo(x.dtype).tiny)  # start inside eta_t (R[t,t] + lambda) <= 1
    one = _fit_depth_one(x, z, kw, per_row)
    one = one[1:].minimum(cap) if per_row else x.new_tensor([min(one, float(cap.min()))])
    default = torch.full_like(one, 0.5 / float(diag.max())) if float(diag.max()) > 0 else one

    def terms(th: Tensor) -> tuple[float, Tensor, Tensor]:
        return _chunked(_finite_terms, P, M, y, z, th, depth=depth)

    # the depth-1 fit can sit in a local minimum at eta = 0 (P y against the target): start from the
    # best of it, the default step, and the depth-1 fit with its zeros replaced by the default step
    starts = [one, default, torch.where(one > 0, one, default)]
    theta = min(starts, key=lambda th: _loss(terms, th))
    theta = _levenberg_marquardt(terms, theta, lower=0.0)
    if not per_row:
        return float(theta[0])
    eta[1:] = theta
    return eta


def _loss(terms: Callable, theta: Tensor) -> float:
    loss = terms(theta)[0]
    return loss if math.isfinite(loss) else math.inf


def _fit_depth_one(x: Tensor, z: Tensor, kw: dict, per_row: bool) -> Tensor | float:
    """The closed form at depth 1 (module doc), clipped at 0."""
    with warnings.catch_warnings():  # step 1 may be outside the region: irrelevant to P y
        warnings.simplefilter("ignore", StabilityWarning)
        Py = descend(x, **kw, depth=1, step=1.0)
    num, den = (z * Py).sum(-1)[:, 1:], Py.square().sum(-1)[:, 1:]  # (B, T-1)
    if not per_row:
        total = float(den.sum())
        return max(0.0, float(num.sum()) / total) if total > 0 else 0.0
    num, den = num.sum(0), den.sum(0)
    eta = x.new_zeros(x.shape[1])
    eta[1:] = torch.where(den > 0, num / den.where(den > 0, torch.ones_like(den)), torch.zeros_like(den))
    return eta.clamp_min_(0.0)


def _chunked(terms: Callable, P: Tensor, M: Tensor, y: Tensor, z: Tensor, theta: Tensor, **kw
             ) -> tuple[float, Tensor, Tensor]:
    """Sum over chunks of sequences of (loss, J^T J, J^T res): the tangents of one chunk at a time."""
    B, T, d = y.shape
    per = _per_chunk(T, d)
    loss, JtJ, Jtr = 0.0, 0.0, 0.0
    for b in range(0, B, per):
        s = slice(b, b + per)
        part = terms(P[s], M[s], y[s], z[s], theta, **kw)
        loss, JtJ, Jtr = loss + part[0], JtJ + part[1], Jtr + part[2]
    return loss, JtJ, Jtr


def _per_chunk(T: int, d: int) -> int:
    """Sequences per chunk: their tangents fit in CHUNK_BYTES (at least one sequence)."""
    return max(1, CHUNK_BYTES // (TANGENTS * 8 * T * max(T - 1, 1) * d))


def _finite_terms(P: Tensor, M: Tensor, y: Tensor, z: Tensor, theta: Tensor, *, depth: int
                  ) -> tuple[float, Tensor, Tensor]:
    """(loss, J^T J, J^T res) at depth N for the steps theta: (T-1,) per row, or (1,) constant."""
    b, T, d = y.shape
    K = theta.shape[0]
    eta = theta if K == T - 1 else theta.expand(T - 1)
    e = torch.cat([eta.new_zeros(1), eta])[None, :, None]  # (1, T, 1)
    rows = torch.arange(1, T, device=y.device)

    def inject(v: Tensor) -> Tensor:  # E_s v: row s of tangent s (per row), or every row (constant)
        if K == 1:
            return v[:, :, None, :]
        out = v.new_zeros(b, T, K, d)
        out[:, rows, rows - 1] = v[:, 1:]
        return out

    r, p = y, torch.zeros_like(y)
    dr, dp = y.new_zeros(b, T, K, d), y.new_zeros(b, T, K, d)
    for _ in range(depth):
        Pr, Mr = P @ r, M @ r
        dPr = (P @ dr.reshape(b, T, K * d)).view(b, T, K, d)
        dMr = (M @ dr.reshape(b, T, K * d)).view(b, T, K, d)
        dp = dp + e[..., None] * dPr + inject(Pr)
        dr = dr - e[..., None] * dMr - inject(Mr)
        p, r = p + e * Pr, r - e * Mr
    return _normal_equations(dp[:, 1:], (z - p)[:, 1:])


def _infinite_terms(P: Tensor, M: Tensor, y: Tensor, z: Tensor, theta: Tensor) -> tuple[float, Tensor, Tensor]:
    """(loss, J^T J, J^T res) at depth inf in theta = log eta (T-1,): with Q = P M^{-1} and
    q = Q D^{-1} y (rows and columns 1..T-1), p_t = eta_t q_t and
    dp_t / dtheta_s = [t = s] eta_t q_t - eta_t Q[t, s] y_s / eta_s."""
    b, T, d = y.shape
    eta = theta.exp()
    Pk, Mk, yk = P[:, 1:, 1:], M[:, 1:, 1:], y[:, 1:]
    eye = torch.eye(T - 1, dtype=y.dtype, device=y.device)
    Q = Pk @ torch.linalg.solve_triangular(Mk, eye.expand_as(Mk), upper=False)
    q = Q @ (yk / eta[:, None])
    p = eta[:, None] * q
    J = -(eta[:, None] / eta[None, :] * Q)[..., None] * yk[:, None, :, :]  # (b, t, s, d)
    J = J + torch.diag_embed((eta[:, None] * q).transpose(1, 2)).permute(0, 2, 3, 1)
    return _normal_equations(J, z[:, 1:] - p)


def _normal_equations(J: Tensor, res: Tensor) -> tuple[float, Tensor, Tensor]:
    """J (b, n, K, d), res (b, n, d) -> (|res|^2, J^T J (K, K), J^T res (K,))."""
    return (float(res.square().sum()), torch.einsum("bnkd,bnjd->kj", J, J), torch.einsum("bnkd,bnd->k", J, res))


def _levenberg_marquardt(terms: Callable, theta: Tensor, lower: float | None = None) -> Tensor:
    """Minimise the loss of ``terms(theta) -> (loss, J^T J, J^T res)``: damped Gauss-Newton steps
    (J^T J + mu diag(J^T J)) delta = J^T res, projected on theta >= lower, mu divided by 10 after a
    step that lowers the loss and multiplied by 10 after one that does not. Parameters the loss
    does not see (a zero column of J) keep their value."""
    loss, JtJ, Jtr = terms(theta)
    mu = 1e-3
    for _ in range(MAX_ITERATIONS):
        if not loss > 0:
            break
        seen = JtJ.diagonal() > 0
        if not bool(seen.any()):
            break
        A = JtJ[seen][:, seen]
        delta = torch.zeros_like(theta)
        try:
            delta[seen] = torch.linalg.solve(A + mu * torch.diag(A.diagonal()), Jtr[seen])
        except RuntimeError:  # singular even with damping: damp more
            mu *= 10
            continue
        new = theta + delta if lower is None else (theta + delta).clamp_min(lower)
        small = float((new - theta).abs().max()) <= 1e-14 * max(float(theta.abs().max()), 1e-300)
        new_loss, new_JtJ, new_Jtr = terms(new)
        if math.isfinite(new_loss) and new_loss < loss:
            theta, loss, JtJ, Jtr = new, new_loss, new_JtJ, new_Jtr
            mu = max(mu / 10, 1e-12)
        else:
            mu *= 10
        if small or mu > 1e16:  # at the rounding floor, or no descent direction left
            break
    return theta
