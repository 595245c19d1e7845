"""Linear-time CKD (SPEC §9): the linear kernel, and kernels given by a finite feature map.

For k(a, b) = phi(a).phi(b) (phi = identity for the ``linear`` kernel; random features of
``features`` for exp / softmax / gaussian), the causal matrices of SPEC §2 are low-rank:
R[t, s] = u_t.k_s and P[t, s] = q_t.k_s with keys k_s = phi(x_{s-1}), residual queries
u_t = phi(x_{t-1}) and prediction queries q_t = phi(x_t) (softmax: each divided by its row's
normaliser, ``features`` module doc). Then, with D = dim phi and no T x T matrix:

    depth inf   (R + lambda I) alpha = y is the normalised delta rule (online Kaczmarz; DeltaNet
                with keys x_{t-1}, values x_t, queries x_t, beta_t = 1 / (|k_t|^2 + lambda)):
                    alpha_t = (x_t - W_{t-1} u_t) / (u_t.k_t + lambda),  W_t = W_{t-1} + alpha_t k_t^T,
                    p_t = W_t q_t
                chunked with the WY / UT transform (``chunk.delta_rule_chunked``):
                O(T C (d + D) + T d D) time, O(B T (d + D)) memory.
    depth N     each layer is causal linear attention with one shared prefix sum
                S_t = sum_{s <= t} r_s k_s^T:  (P r)_t = S_t q_t,  (R r)_t = S_t u_t
                (``chunk.descend_chunked``): O(N T (C + D) d) time.
    per row     a per-row step eta_t (SPEC §10): depth N scales row t's update by eta_t (each
                layer p_t += eta_t (P r)_t, r_t -= eta_t ((R r)_t + lambda r_t)); depth inf is the
                delta rule on the right-hand side y_t / eta_t, its predictions scaled by eta_t
                (p = D P (R + lambda I)^{-1} D^{-1} y).
    continuous  alpha(tau) = M^{-1} (I - exp(-tau M)) y, M = R + lambda I, stays quadratic
                (``ckd.descent.continuous_depth``): in the Laplace variable z each alpha_t is a
                rational function of z whose degree grows with t, so no fixed-size state carries
                it from one token to the next, unlike the two forms above.

Complex x (linear kernel, SPEC §10: k(a, b) = b^H a): the keys are stored conjugated, k_s = conj(x_{s-1}),
so that every product above stays bilinear: u_t.k_s = x_{s-1}^H x_{t-1}, W_t = sum alpha_s x_{s-1}^H, and
``naive`` and ``chunk`` run unchanged on complex tensors (``pairs``).

``naive`` holds the plain sequential loops (the reference), ``chunk`` the fast forms, ``deltanet`` the
same depth-inf recurrence as the inputs of flash-linear-attention's delta rule (DeltaNet).
``ckd.descent.descend`` (hence ``ckd.predict``) calls ``descend`` here for the linear kernel, or
when ``features`` is given, unless ``method="dense"``; the results equal the dense path's
(``tests/test_linear_time.py``), including the default step eta = 0.5 / max_t (R[t,t] + lambda)
(computed from the diagonal u_t.k_t, O(T D)), the step warning, the growth warning and the
overflow error.

Reference: S. Yang, B. Wang, Y. Zhang, Y. Shen, Y. Kim, *Parallelizing Linear Transformers with
the Delta Rule over Sequence Length*, NeurIPS 2024; A. Katharopoulos et al., *Transformers are
RNNs*, ICML 2020.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..descent.steps import (
    check_depth_and_step,
    check_growth,
    check_infinite_step,
    check_tiny_step,
    default_log_step_of,
    log_of,
    step_overflow,
    warn_unless_converges,
)
from ..validation import check_complex, check_fits, parse_step
from .chunk import ATTENTION_CHUNK, DELTA_CHUNK, causal_linear_attention, delta_rule_chunked, descend_chunked
from .deltanet import deltanet_inputs, deltanet_rows, fla_reference
from .features import FEATURE_KERNELS, check_features, feature_map, feature_matrices, features_bytes
from .naive import delta_rule_naive, descend_naive, linear_attention_naive

METHODS = ("auto", "dense", "linear")

__all__ = [
    "ATTENTION_CHUNK",
    "DELTA_CHUNK",
    "FEATURE_KERNELS",
    "METHODS",
    "causal_linear_attention",
    "check_features",
    "check_method",
    "delta_rule_chunked",
    "delta_rule_naive",
    "deltanet_inputs",
    "deltanet_rows",
    "descend",
    "descend_chunked",
    "descend_naive",
    "feature_map",
    "feature_matrices",
    "features_bytes",
    "fla_reference",
    "linear_attention_naive",
    "pairs",
    "uses_linear_time",
]


def check_method(method) -> str:
    """``method`` must be one of ``METHODS``: auto (linear time when exact for the kernel, or when
    features are asked for), dense (the T x T reference), linear (linear time, or an error)."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def uses_linear_time(kernel: str, method: str, features: int | None) -> bool:
    """Whether ``descend`` takes the linear-time path: method auto or linear, and the kernel linear
    or features given. method='linear' for another kernel without features is a ``ValueError``."""
    check_method(method)
    if method == "dense":
        return False
    if kernel == "linear" or features is not None:
        return True
    if method == "linear":
        raise ValueError(f"method 'linear' needs the linear kernel or features=D (random features) for the "
                         f"{kernel} kernel")
    return False


def pairs(x: Tensor, kernel: str = "linear", features: int | None = None, feature_seed: int = 0, *,
          beta: float = 1.0, sigma: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(k, u, q, y) of x (B, T, d) for the pairs i = 0..T-2 (``naive`` module doc): keys phi(x_i),
    residual queries u_i, prediction queries q_i (B, T-1, D) and targets x_{i+1} (B, T-1, d).

    softmax: u_i = phi(x_i) / (phi(x_i).Z_i), q_i = phi(x_{i+1}) / (phi(x_{i+1}).Z_i), with the one
    prefix sum Z_i = sum_{j <= i} phi(x_j) (``features`` module doc).

    Complex x (linear kernel): k_i = conj(x_i), so that u_i.k_j = x_j^H x_i = k(x_i, x_j) (SPEC §10)."""
    check_complex(x, kernel)
    phi = x if features is None else feature_map(x, kernel, features, feature_seed, beta=beta, sigma=sigma)
    k, q, y = phi[:, :-1], phi[:, 1:], x[:, 1:]
    u = k
    if k.is_complex():
        k = k.conj().resolve_conj()
    if kernel == "softmax" and features is not None:
        Z = k.cumsum(1)
        u = k / _positive((k * Z).sum(-1, keepdim=True))
        q = q / _positive((q * Z).sum(-1, keepdim=True))
    return k, u, q, y


def _positive(z: Tensor) -> Tensor:
    """z where z > 0, else 1 (a row whose features all underflowed gets weights 0, as an empty row)."""
    return torch.where(z > 0, z, torch.ones_like(z))


def descend(x: Tensor, kernel: str = "linear", *, beta: float = 1.0, sigma: float = 1.0,
            depth: int | str = 16, step: float | Tensor | None = None, ridge: float = 0.0, return_all: bool = False,
            features: int | None = None, feature_seed: int = 0, chunk: int | None = None) -> Tensor:
    """Linear-time CKD for x (B, T, d) (module doc): row t of the result predicts x_{t+1}; with
    ``return_all`` (finite depth) the predictions after 0..N layers, (N+1, B, T, d).

    depth: int >= 0 or "inf"; step None: eta = 0.5 / max over the batch and t of (R[t,t] + lambda);
    a per-row step (T,) as in ``ckd.descent.descend`` (module doc).
    Warns ``StabilityWarning`` (step outside the convergence region, or precision lost to growth),
    raises ``FloatingPointError`` when the result is not finite (float32 overflow included) and
    ``ValueError`` when depth inf meets R[t,t] + lambda = 0, as the dense path does.
    """
    B, T, d = x.shape
    infinite = depth == "inf" or (isinstance(depth, float) and math.isinf(depth))
    if infinite and return_all:
        raise ValueError("return_all needs a finite depth")
    step = parse_step(step, T)
    per_row = isinstance(step, Tensor)
    k, u, q, y = pairs(x, kernel, features, feature_seed, beta=beta, sigma=sigma)
    diag = (u * k).sum(-1)  # R[t, t], t = 1..T-1 (|x_{t-1}|^2: real for complex x)
    diag = diag.real if diag.is_complex() else diag
    zeros = x.real.new_zeros(B)  # log scales (real also for complex x)
    if infinite:
        if per_row:  # the delta rule on y_t / eta_t, predictions times eta_t
            check_infinite_step(step)
            eta = step[1:].to(x)[None, :, None]
            y = y / eta
            if not bool(torch.isfinite(y).all()):
                raise ValueError("a per-row step this small overflows y_t / eta_t at depth inf; use larger steps")
            warn_unless_converges(diag, zeros, log_of(step), ridge, infinite=True)
        y_max = float(y.abs().amax()) if y.numel() else 0.0
        zero = diag + ridge == 0
        if kernel == "linear" and features is None and bool(zero.any()):
            # a zero token x_{s-1} carries no information (its column of P and R is 0): coefficient 0,
            # as on the dense path (``descent.infinite_depth(zero_columns=True)``)
            y = y.masked_fill(zero[..., None], 0.0)  # with the diagonal set to 1 there: a_s = 0
        elif not bool((~zero).all()):
            raise ValueError(
                "infinite depth needs R[t,t] + ridge > 0 for every t (a zero token with the linear "
                "kernel, or a weight lost to underflow); use ridge > 0"
            )
        p, a = delta_rule_chunked(k, u, q, y, ridge, chunk=chunk or DELTA_CHUNK,
                                  diag=(diag + ridge).masked_fill(zero, 1.0))
        scaled = (diag + ridge)[..., None] * a
        growth = float(torch.linalg.vector_norm(scaled, math.inf)) if scaled.numel() else 0.0
        out = _with_row0(p * eta if per_row else p)
        check_growth(out, growth, y_max, infinite=True, stacklevel=4)
        return out
    depth = int(depth)
    y_max = float(y.abs().amax()) if y.numel() else 0.0
    if step is None:
        log_step = default_log_step_of(diag, zeros, ridge)
        eta = math.exp(log_step)  # exact: the linear kernel's diagonal is stored unscaled (0 for all-zero input)
    else:
        check_tiny_step(diag, zeros, step, ridge)
        log_step = log_of(step)
        eta = step[1:].to(x) if per_row else step  # per pair: rows t = 1..T-1
    check_depth_and_step(depth, eta)
    top = torch.finfo(x.dtype).max
    if depth > 0 and not (bool((torch.as_tensor(eta).abs() <= top).all())
                          and bool((torch.as_tensor(eta * ridge).abs() <= top).all())):
        raise step_overflow(log_step, ridge, x.dtype)  # a float32 step past 3.4e38, scalar or per row
    if depth > 0:
        warn_unless_converges(diag, zeros, log_step, ridge)
    _check_memory(k, y, depth, return_all)
    p, r_max = descend_chunked(k, u, q, y, depth, eta, ridge, return_all=return_all, chunk=chunk or ATTENTION_CHUNK)
    out = _with_row0(p)
    check_growth(out, float(r_max), y_max)
    return out


def _check_memory(k: Tensor, y: Tensor, depth: int, return_all: bool) -> None:
    """Refuse, before allocating, depth-N work that cannot fit: one D x dv state per layer (carried
    across chunk groups), the layer history with ``return_all``, and about 8 (B, n, D) buffers."""
    B, n, D = k.shape
    dv = y.shape[-1]
    need = (depth * B * D * dv + 8 * B * n * max(D, dv) + ((depth + 1) * B * n * dv if return_all else 0))
    need *= k.element_size()
    if need < 2**28:
        return
    advice = "use fewer layers" + (" or return_all=False (the history keeps every layer)" if return_all else "")
    check_fits(need, f"linear-time causal kernel descent on B={B}, T={n + 1}, depth {depth}", advice, k.device)


def _with_row0(p: Tensor) -> Tensor:
    """Predictions of the pairs (..., B, T-1, d) -> rows (..., B, T, d) with row 0 = 0."""
    return torch.nn.functional.pad(p, (0, 0, 1, 0))
