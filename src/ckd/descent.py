"""Causal kernel descent (CKD): finite, infinite and continuous depth (SPEC §2).

With P, R the causal matrices of ``ckd.kernels`` and targets y (y_0 = 0,
y_t = x_t), depth-N CKD with step eta and ridge lambda runs, from r = y, p = 0,

    p <- p + eta * P r
    r <- r - eta * (R r + lambda r)          (old r on both right-hand sides)

and row t of p predicts x_{t+1}. Closed forms (tested in ``tests/test_descent.py``):

    p_N      = P alpha_N,   alpha_N = eta * sum_{l<N} (I - eta (R + lambda I))^l y
    depth inf: (R + lambda I) alpha = y on rows 1..T-1 (forward substitution;
               for lambda = 0 one forward Kaczmarz sweep in the kernel's RKHS)
    tau:       alpha(tau) = (R + lambda I)^{-1} (I - exp(-tau (R + lambda I))) y

The iteration converges iff |1 - eta (R[t,t] + lambda)| < 1 for every t >= 1.
Inside that region (I - eta R)^l can still grow by orders of magnitude before it
decays (R is triangular, far from normal): ``finite_depth`` measures that growth
and warns when it eats the precision of the dtype.

Cost (``docs/performance.md``): P and R are built once per batch, then each layer is two
batched products P r and R r with the step folded into the product, so depth N costs one
kernel build plus 2N products; ``return_all`` adds no product. Above ``memory_budget`` bytes
the rows are processed in blocks (``tests/test_blocked.py``): each block's rows of P and R are
built once and every layer runs on them (causality: rows of a block need r_l only on rows up to
the block's last), and depth inf is blocked forward substitution. The results are the same.

Reference: M. E. Sander, G. Peyré, *Towards Understanding the Universality of
Transformers for Next-Token Prediction*, ICLR 2025 (arXiv 2410.03011).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .kernels import CausalMatrices, causal_matrices, causal_rows, exp_log_scale, kernel_matrix
from .validation import available_memory, check_fits, check_memory_budget

DEFAULT_MEMORY_BUDGET = 4 * 2**30  # bytes of (T, T)-sized working memory before row blocks are used


class StabilityWarning(UserWarning):
    """The step is outside the convergence region, or the iterates lost precision."""


def targets(x: Tensor) -> Tensor:
    """y with y_0 = 0 and y_t = x_t (x: (B, T, d))."""
    y = x.clone()
    if y.shape[1]:
        y[:, 0] = 0
    return y


def diagonal(mats: CausalMatrices) -> Tensor:
    """R[t, t] for t >= 1 in stored units, (B, T-1)."""
    return torch.diagonal(mats.R, dim1=-2, dim2=-1)[:, 1:]


def default_step(mats: CausalMatrices, ridge: float = 0.0) -> float:
    """eta = 0.5 / max over the batch and t >= 1 of (R[t, t] + lambda), in true units.

    This float underflows to 0 when the exp kernel's weights exceed e^745 (large beta |x|^2);
    ``descend`` keeps the default step in log units instead (``default_log_step``), so that
    depth N with the default step is exact whatever the scale."""
    return math.exp(default_log_step(mats, ridge))


def default_log_step(mats: CausalMatrices, ridge: float = 0.0) -> float:
    """log eta of the default step (finite even when eta itself underflows); -inf when every
    R[t, t] + lambda is 0 (the all-zero input with the linear kernel: P = 0, so p = 0 for any step)."""
    return _default_log_step(diagonal(mats), mats.log_scale, ridge)


def _log_diagonal(diag: Tensor, log_scale: Tensor, ridge: float, exact: Tensor | None = None) -> Tensor:
    """log (R[t, t] + lambda) in true units, (B, T-1). ``exact``: log R[t, t] computed without
    exp (beta |x_{t-1}|^2 for the exp kernel), used where the stored weight underflowed to 0."""
    log_diag = diag.log() + log_scale[:, None]
    if exact is not None:
        log_diag = torch.where(diag > 0, log_diag, exact)
    if ridge > 0:
        log_diag = torch.logaddexp(log_diag, torch.full_like(log_diag, math.log(ridge)))
    return log_diag


def _exact_log_diagonal(x: Tensor, kernel: str, beta: float) -> Tensor | None:
    """log R[t, t] = beta |x_{t-1}|^2 (t >= 1) for the exp kernel, whose stored diagonal may underflow
    after the rescaling by the largest weight; None for the other kernels (exact as stored)."""
    return beta * x[:, :-1].square().sum(-1) if kernel == "exp" else None


def _default_log_step(diag: Tensor, log_scale: Tensor, ridge: float, exact: Tensor | None = None) -> float:
    if diag.numel() == 0:
        return math.log(0.5 / ridge if ridge > 0 else 0.5)
    top = float(_log_diagonal(diag, log_scale, ridge, exact).max())
    if top == -math.inf:
        return -math.inf
    eta = 0.5 * math.exp(-top)  # the float the definition gives, when it is one
    return math.log(eta) if 0 < eta < math.inf else math.log(0.5) - top


def _log(step: float) -> float:
    return math.log(step) if step > 0 else -math.inf


def effective(mats: CausalMatrices, step: float, ridge: float) -> tuple[Tensor, Tensor]:
    """Per-sequence (eta e^m, lambda e^-m), (B, 1, 1): the step and ridge in stored units."""
    return _effective(mats.log_scale, _log(step), ridge)


def _effective(log_scale: Tensor, log_step: float, ridge: float) -> tuple[Tensor, Tensor]:
    """(eta e^m, lambda e^-m) from log eta: exact in stored units even where eta underflows."""
    ls = log_scale[:, None, None]
    eta = torch.exp(log_step + ls) if log_step > -math.inf else torch.zeros_like(ls)
    lam = ridge * torch.exp(-ls)
    return eta, lam


def check_step(mats: CausalMatrices, step: float, ridge: float) -> bool:
    """True iff |1 - eta (R[t,t] + lambda)| < 1 for every t >= 1 and every sequence
    (rows with R[t,t] + lambda = 0 aside: see ``_check_step``)."""
    return _check_step(diagonal(mats), mats.log_scale, _log(step), ridge)


def _check_step(diag: Tensor, log_scale: Tensor, log_step: float, ridge: float) -> bool:
    """The convergence test. A row with R[t,t] + lambda = 0 (a zero token with the linear kernel)
    is left out: its column of P and R is 0 too (|k(a, b)|^2 <= k(a, a) k(b, b)), so its residual
    never reaches a prediction. A row with eta (R[t,t] + lambda) below the float's resolution
    converges (slowly): 0 < eta (R[t,t] + lambda) < 2 is tested, not the rounded 1 - eta (...)."""
    eta, lam = _effective(log_scale, log_step, ridge)
    total = diag + lam[:, :, 0]
    product = eta[:, :, 0] * total  # |1 - product| < 1 iff 0 < product < 2, without 1 - 1e-300 rounding to 1
    return bool((((product > 0) & (product < 2)) | (total == 0)).all())


def _format_step(log_step: float) -> str:
    """eta as a number, also below the float range (e.g. 3.2e-1200)."""
    if log_step == -math.inf:
        return "0"
    eta = math.exp(log_step)
    if eta > 0:
        return f"{eta:.4g}"
    exp10 = math.floor(log_step / math.log(10))
    return f"{10 ** (log_step / math.log(10) - exp10):.4g}e{exp10}"


def _warn_step(log_step: float) -> None:
    warnings.warn(
        f"step {_format_step(log_step)} is outside the convergence region |1 - eta (R[t,t] + lambda)| < 1; "
        "the iterates diverge as depth grows",
        StabilityWarning,
        stacklevel=4,
    )


def _check_tiny_step(diag: Tensor, log_scale: Tensor, step: float, ridge: float, exact: Tensor | None = None) -> None:
    """An explicit step so small that eta (R[t,t] + lambda) is below the dtype's smallest normal
    number on every row: the layers would change nothing. A clear error rather than silent zeros."""
    if not step > 0 or diag.numel() == 0:
        return
    top = float(_log_diagonal(diag, log_scale, ridge, exact).max())
    dtype = str(diag.dtype).replace("torch.", "")
    if top > -math.inf and math.log(step) + top < math.log(torch.finfo(diag.dtype).tiny):
        raise ValueError(f"step {step:.4g} underflows: eta * max_t (R[t,t] + ridge) = "
                         f"{_format_step(math.log(step) + top)} is below the smallest normal {dtype} number, so "
                         "no layer would change anything; omit --step (the default is exact at any scale)")


def _validate(depth: int, step: float) -> None:
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if step < 0 or not math.isfinite(step):
        raise ValueError(f"step must be a finite number >= 0, got {step}")


def finite_depth(
    mats: CausalMatrices,
    y: Tensor,
    depth: int,
    step: float,
    ridge: float = 0.0,
    *,
    return_all: bool = False,
) -> Tensor:
    """Depth-N CKD. y: (B, T, d) targets. Returns p (B, T, d), or (N+1, B, T, d) if
    ``return_all`` (the prediction after 0, 1, ..., N layers; no extra products).

    Warns ``StabilityWarning`` when the step is outside the convergence region, or
    when the residuals grow so much (max_l |r_l| / |y|) that the dtype's precision
    is lost; raises ``FloatingPointError`` when the result is not finite.
    """
    _validate(depth, step)
    return _finite(mats, y, depth, _log(step), ridge, return_all)


def _finite(mats: CausalMatrices, y: Tensor, depth: int, log_step: float, ridge: float, return_all: bool) -> Tensor:
    """``finite_depth`` with the step given as log eta (the default step may underflow as a float)."""
    if y.numel() == 0:  # no sequence or no coordinate
        return y.new_zeros((depth + 1, *y.shape) if return_all else y.shape)
    if depth > 0 and not _check_step(diagonal(mats), mats.log_scale, log_step, ridge):
        _warn_step(log_step)
    T = y.shape[1]
    out, r_max = _finite_blocks([(0, T, mats.P, mats.R)], y, depth, log_step, ridge, mats.log_scale, return_all)
    _check_growth(out, float(r_max), float(y.abs().amax()))
    return out


def _finite_blocks(blocks, y: Tensor, depth: int, log_step: float, ridge: float, log_scale: Tensor,
                   return_all: bool, n_blocks: int = 1) -> tuple[Tensor, Tensor]:
    """The layer recursion over row blocks (start, stop, P rows, R rows) given in order; blocks
    may be generated lazily. Each block's rows of P and R are used for every layer before the
    next block is built: layer l of rows start..stop-1 needs r_l on rows 0..stop-1 only (causal),
    and r_l of earlier blocks is kept (depth + 1, B, T, d). Returns (p or its history, max |r_l|).

    Per layer and block: p <- p + eta P r, r <- (1 - eta lambda) r - eta R r, as two baddbmm with
    a scalar alpha (eta per sequence only when exp rescaling differs across the batch). Nothing
    grows with the depth but ``history`` (``return_all``) and ``kept`` (more than one block); a
    tqdm bar on stderr (a terminal only) shows work that lasts more than a few seconds.
    """
    B, T, d = y.shape
    eta, _ = _effective(log_scale, log_step, ridge)
    uniform = bool((log_scale == log_scale[0]).all()) if B > 0 else True
    alpha = float(eta.flatten()[0]) if uniform and B > 0 else 1.0
    step_ridge = math.exp(log_step + math.log(ridge)) if ridge > 0 and log_step > -math.inf else 0.0
    decay = 1.0 - step_ridge  # eta * lambda is the same in stored and true units
    top = torch.finfo(y.dtype).max
    if not (abs(alpha) <= top and abs(decay) <= top and bool((eta <= top).all())):
        dtype = str(y.dtype).replace("torch.", "")
        raise ValueError(f"step {_format_step(log_step)} (with ridge {ridge:g}) overflows {dtype}; "
                         "use a smaller step" + (" or float64" if y.dtype != torch.float64 else ""))
    history = y.new_zeros(depth + 1, B, T, d) if return_all else None
    out = None if return_all else y.new_zeros(B, T, d)
    kept = None  # r_l on the rows of every block so far: needed once there is more than one block
    r_max = torch.linalg.vector_norm(y, math.inf)  # running max: one fused reduction per layer, no sync
    bar = _progress(depth * n_blocks, "causal kernel descent", "layer", work=2.0 * depth * B * T * T * d / 2)
    for start, stop, P, R in blocks:
        if kept is None and stop < T:
            kept = y.new_empty(depth, B, T, d)
        r = y[:, start:stop]
        p = y.new_zeros(B, stop - start, d)
        for layer in range(depth):
            if kept is not None:
                kept[layer, :, start:stop] = r
            prefix = r if kept is None else kept[layer, :, :stop]  # r_l on rows 0..stop-1
            s = prefix if uniform else eta * prefix
            p = torch.baddbmm(p, P, s, alpha=alpha)
            r = torch.baddbmm(r, R, s, beta=decay, alpha=-alpha)
            r_max = torch.maximum(r_max, torch.linalg.vector_norm(r, math.inf))
            if history is not None:
                history[layer + 1, :, start:stop] = p
            if bar is not None:
                bar.update()
        if out is not None:
            out[:, start:stop] = p
        del P, R  # before the next block is built
    if bar is not None:
        bar.close()
    return (history if history is not None else out), r_max


PROGRESS_MIN_STEPS = 1000  # below this many layer-blocks no bar is created at all


PROGRESS_MIN_WORK = 1e10  # or above this many multiply-adds (about a second or more)


def _progress(total: int, desc: str, unit: str, min_steps: int = PROGRESS_MIN_STEPS, work: float = 0.0):
    """A tqdm bar on stderr for long loops: only when stderr is a terminal (``disable=None``) and
    only once the work has lasted 2 s (``delay``); None for short loops (no overhead)."""
    if total < min_steps and work < PROGRESS_MIN_WORK:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, delay=2.0, leave=False, dynamic_ncols=True)


def _check_growth(p: Tensor, r_max: float, y_max: float, *, infinite: bool = False, stacklevel: int = 4) -> None:
    """Raise ``FloatingPointError`` if p is not finite; warn ``StabilityWarning`` when the growth
    r_max / y_max times the dtype's eps exceeds 1e-4 (the digits left are then printed).

    Finite depth: r_max = max_l |r_l| (the non-normal transient of (I - eta R)^l).
    Infinite depth: r_max = max_t |(R[t,t] + lambda) alpha_t|, which is |y_t| for a well
    conditioned system and grows with the amplification of the triangular solve."""
    dtype = str(p.dtype).replace("torch.", "")
    if infinite:
        cause, advice = "the triangular solve amplified the targets", "use a ridge > 0 or a smaller beta / sigma"
    else:
        cause = "residuals grew"
        advice = "use fewer tokens per prompt, a smaller step, a smaller depth or depth inf"
    if p.dtype != torch.float64:
        advice += ", or float64"
    if not torch.isfinite(p).all():
        growth = r_max / max(y_max, 1e-300)
        raise FloatingPointError(f"causal kernel descent overflowed in {dtype} ({cause} by {growth:.3g}); {advice}")
    if y_max > 0:
        growth = r_max / y_max
        lost = growth * torch.finfo(p.dtype).eps
        if lost > 1e-4:
            digits = max(0, int(-math.log10(lost)))
            where = "" if infinite else " before shrinking (non-normal transient)"
            warnings.warn(f"{cause} by {growth:.3g}{where}: about {digits} correct digits left in {dtype}; {advice}",
                          StabilityWarning, stacklevel=stacklevel)


def infinite_depth(mats: CausalMatrices, y: Tensor, ridge: float = 0.0, *, zero_columns: bool = False) -> Tensor:
    """Depth-inf CKD: p = P alpha with (R + lambda I) alpha = y on rows 1..T-1.

    A lower-triangular solve; for lambda = 0 it equals one forward Kaczmarz sweep.
    Raises ``ValueError`` if a diagonal entry R[t,t] + lambda is zero and ``FloatingPointError``
    if the result is not finite; warns ``StabilityWarning`` when the solve amplifies the targets
    enough to eat the dtype's precision (an ill-conditioned kernel, e.g. exp with a large beta).

    ``zero_columns`` (the linear kernel, where it is a theorem): a row with R[t,t] + lambda = 0 has
    zero columns in P and R (Cauchy-Schwarz: |x_a . x_{t-1}| <= |x_a| |x_{t-1}| = 0), so alpha_t
    never reaches a prediction and is set to 0 (Kaczmarz skips a zero row) instead of raising:
    the all-zero input predicts 0.
    """
    return _infinite_blocks([(0, y.shape[1], mats.P, mats.R)], y, ridge, mats.log_scale, inplace=False,
                            zero_columns=zero_columns)


def _infinite_blocks(blocks, y: Tensor, ridge: float, log_scale: Tensor, *, inplace: bool,
                     zero_columns: bool = False, n_blocks: int = 1) -> Tensor:
    """Blocked forward substitution over row blocks (start, stop, P rows, R rows), in order:
    alpha_k = (R_kk + lambda I)^{-1} (y_k - R_{k,<k} alpha_{<k}), then p_k = P_k alpha_{<=k}.
    ``inplace``: the blocks are temporaries and R_kk may be overwritten. ``zero_columns``: see
    ``infinite_depth`` (a zero diagonal entry gives alpha_t = 0)."""
    B, T, d = y.shape
    _, lam = _effective(log_scale, 1.0, ridge)
    alpha = y.new_zeros(B, T, d)  # alpha_0 = 0: row 0 has no pair (and column 0 of P, R is 0)
    p = y.new_zeros(B, T, d)
    if p.numel() == 0:  # no sequence or no coordinate
        return p
    a_maxes = [y.new_zeros(())]  # max_t |(R[t,t] + lambda) alpha_t|: one fused reduction per block, no sync
    bar = _progress(n_blocks, "causal kernel descent, depth inf", "block", min_steps=8, work=B * T * T * d / 2)
    for start, stop, P, R in blocks:
        if bar is not None:
            bar.update()
        lo = max(start, 1)
        if stop <= lo:
            continue
        A = R[:, lo - start:, lo:stop]
        if ridge > 0:
            A = A if inplace else A.clone()
            torch.diagonal(A, dim1=-2, dim2=-1).add_(lam[:, :, 0])
        rhs = y[:, lo:stop]
        zero = torch.diagonal(A, dim1=-2, dim2=-1) == 0
        if zero_columns and bool(zero.any()):  # alpha_t = 0: diagonal 1, right-hand side 0 (the row is 0)
            A = A if (inplace or ridge > 0) else A.clone()  # (with a ridge, A is a copy already)
            torch.diagonal(A, dim1=-2, dim2=-1).masked_fill_(zero, 1.0)
            rhs = rhs.masked_fill(zero[..., None], 0.0)
        elif bool(zero.any()):
            raise ValueError(
                "infinite depth needs R[t,t] + ridge > 0 for every t (a zero token with the linear "
                "kernel, or an exp weight lost to underflow); use ridge > 0"
            )
        if lo > 1:
            rhs = torch.baddbmm(rhs, R[:, lo - start:, 1:lo], alpha[:, 1:lo], alpha=-1.0)
        alpha[:, lo:stop] = torch.linalg.solve_triangular(A, rhs, upper=False)
        scaled = torch.diagonal(A, dim1=-2, dim2=-1)[..., None] * alpha[:, lo:stop]
        a_maxes.append(torch.linalg.vector_norm(scaled, math.inf))
        p[:, start:stop] = P[:, :, 1:] @ alpha[:, 1:stop]
        del P, R, A  # before the next block is built
    if bar is not None:
        bar.close()
    _check_growth(p, float(torch.stack(a_maxes).max()), float(y.abs().amax()), infinite=True, stacklevel=5)
    return p


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


def _pair_system(mats: CausalMatrices, ridge: float) -> Tensor:
    """(R + lambda I) restricted to rows/columns 1..T-1, stored units, (B, T-1, T-1)."""
    _, lam = effective(mats, 1.0, ridge)
    A = mats.R[:, 1:, 1:]
    return A + lam * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def continuous_depth(mats: CausalMatrices, y: Tensor, tau: float, ridge: float = 0.0) -> Tensor:
    """Neural-ODE limit (eta = tau / N, N -> inf): p = P alpha(tau) with
    alpha(tau) = M^{-1} (I - exp(-tau M)) y, M = R + lambda I on rows 1..T-1.

    Computed without inverting M: exp([[-tau M, tau y], [0, 0]]) has upper-right block
    M^{-1} (I - exp(-tau M)) y (the phi_1 function), exact even for singular M.
    Quadratic (cubic in T) for every kernel, the linear one included: no fixed-size state carries
    alpha(tau) from token to token (``ckd.linear_time`` module doc).
    """
    if tau < 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    if y.shape[1] < 2:
        return torch.zeros_like(y)
    tau_eff, _ = effective(mats, tau, ridge)
    A = _pair_system(mats, ridge)
    rhs = y[:, 1:]
    B, n, d = rhs.shape
    block = torch.zeros(B, n + d, n + d, dtype=y.dtype, device=y.device)
    block[:, :n, :n] = -tau_eff * A
    block[:, :n, n:] = tau_eff * rhs
    alpha = torch.linalg.matrix_exp(block)[:, :n, n:]
    return mats.P[:, :, 1:] @ alpha


def block_rows(x: Tensor, memory_budget: float | None = None) -> int:
    """Rows per block so that the (B, rows, T) buffers of one block (about 3 of them, counting
    temporaries) fit in ``memory_budget`` bytes (default ``DEFAULT_MEMORY_BUDGET``); >= T means
    the whole (B, T, T) matrices fit and no blocking is needed."""
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else check_memory_budget(memory_budget)
    B, T, _ = x.shape
    per_row = 3 * max(B, 1) * max(T, 1) * x.element_size()
    return max(1, int(budget // per_row))


def memory_needed(x: Tensor, depth: int | str, rows: int, return_all: bool = False) -> int:
    """Bytes ``descend`` allocates for x (B, T, d): the (B, rows, T) kernel buffers of one block
    (3 of them), about 8 (B, T, d) vectors, the layer history (depth + 1 of them) if
    ``return_all``, and, with more than one block and a finite depth, r_l of every layer (depth
    of them: each block runs every layer, ``_finite_blocks``)."""
    B, T, d = x.shape
    e = x.element_size()
    vectors = B * T * d * e
    need = 3 * B * min(rows, T) * T * e + 8 * vectors
    if depth != "inf":
        need += (int(depth) + 1) * vectors if return_all else 0
        need += int(depth) * vectors if rows < T else 0
    return need


def _check_memory(x: Tensor, depth: int | str, rows: int, return_all: bool) -> None:
    """Refuse, before allocating, a call whose estimate exceeds the memory free on x's device."""
    need = memory_needed(x, depth, rows, return_all)
    if need < 2**28:  # 256 MB: not worth asking the system
        return
    B, T, d = x.shape
    advice = "use a shorter sequence (smaller T) or fewer sequences per call"
    if depth != "inf" and (return_all or rows < T) and int(depth) > 1:
        advice += (", fewer layers" + (" or return_all=False" if return_all else "")
                   + " (each layer keeps a (B, T, d) copy" + (" across row blocks)" if rows < T else ")"))
    advice += ", or a smaller memory_budget (rows are then processed in blocks)"
    if depth == "inf":
        advice += "; ckd.Streaming runs depth inf in O(T d) memory"
    check_fits(need, f"causal kernel descent on B={B}, T={T}, d={d}, depth {depth}", advice, x.device)


def _default_budget(x: Tensor) -> float:
    """``DEFAULT_MEMORY_BUDGET``, or half the memory free on x's device when that is less (asked
    only when the whole (B, T, T) matrices would take more than 256 MB)."""
    B, T, _ = x.shape
    if 3 * B * T * T * x.element_size() < 2**28:
        return DEFAULT_MEMORY_BUDGET
    free = available_memory(x.device)
    return DEFAULT_MEMORY_BUDGET if free is None else max(2**24, min(DEFAULT_MEMORY_BUDGET, free // 2))


def row_blocks(x: Tensor, kernel: str, beta: float, sigma: float, log_scale: Tensor, rows: int):
    """Yield (start, stop, P rows, R rows) for consecutive blocks of ``rows`` rows (built lazily)."""
    T = x.shape[1]
    for start in range(0, T, rows):
        stop = min(T, start + rows)
        yield (start, stop, *causal_rows(x, kernel, beta, sigma, start, stop, log_scale))


def _power_of_two_scale(x: Tensor) -> int:
    """k such that x / 2^k has its largest |entry| in [1/2, 1), when that entry is beyond 2^+-64
    in float64 (2^+-8 in float32: |x|^3 of a layer must stay inside the dtype's range); else 0.
    Dividing by a power of two is exact (no rounding), so the linear kernel's CKD on x / 2^k, with
    eta 4^k and lambda / 4^k, gives exactly p / 2^k: huge or tiny inputs keep every digit instead
    of overflowing (|x|^3 past the float range) or underflowing (|x|^2 to 0)."""
    big = float(x.abs().amax()) if x.numel() else 0.0
    if big == 0.0:
        return 0
    k = math.frexp(big)[1]
    limit = math.frexp(torch.finfo(x.dtype).max)[1] // 16 if x.is_floating_point() else 64  # 64, or 8 in float32
    return k if abs(k) > limit else 0


def _mixed_scales(x: Tensor) -> bool:
    """Whether the sequences of x (B, T, d) need different power-of-two scales (``_power_of_two_scale``)."""
    return len({_power_of_two_scale(x[b:b + 1]) for b in range(x.shape[0])}) > 1


def descend(
    x: Tensor,
    kernel: str = "exp",
    *,
    beta: float = 1.0,
    sigma: float = 1.0,
    depth: int | float | str = 16,
    step: float | None = None,
    ridge: float = 0.0,
    return_all: bool = False,
    memory_budget: float | None = None,
    method: str = "auto",
    features: int | None = None,
    feature_seed: int = 0,
    sweeps: int = 1,
) -> Tensor:
    """CKD predictions for x (B, T, d): row t of the result predicts x_{t+1}.

    depth: int >= 0, or ``"inf"``/``math.inf`` for the infinite-depth limit.
    step None means eta = 0.5 / max_t (R[t,t] + lambda) over the batch (kept in log units, so it
    is exact also where eta underflows as a float: exp with a large beta |x|^2).
    memory_budget: bytes of (T, T)-sized working memory (default 4 GiB, or half the free memory
    when less); above it, rows are processed in blocks (same result, each block's kernel rows
    built once; see module doc). The memory the call needs is estimated first (``memory_needed``)
    and a call that cannot fit is refused with one line (``ckd.validation.NotEnoughMemory``).
    method: "auto" (default) runs the exact linear-time forms of ``ckd.linear_time`` for the
    linear kernel (O(T d^2), no T x T matrix) and the dense T x T path otherwise; "dense" forces
    the dense path (the reference); "linear" forces linear time (linear kernel or features only).
    features: D random features for exp / softmax / gaussian (``ckd.linear_time.features``; an
    approximation of the kernel, never used unless asked), drawn with ``feature_seed``; with
    method="dense" the dense path runs on the Gram matrix of the kernel phi.phi (a reference).

    Linear kernel: inputs beyond 2^+-64 are scaled by an exact power of two (``_power_of_two_scale``);
    a zero token x_{t-1} (R[t,t] = 0) carries no information: the all-zero input predicts 0.
    sweeps: K >= 1 Gauss-Seidel sweeps at depth inf (SPEC §7, ``swept``); 1 is depth inf.
    """
    from . import linear_time

    features = linear_time.check_features(kernel, features, feature_seed, beta)
    infinite = depth == "inf" or (isinstance(depth, float) and math.isinf(depth))
    if infinite and return_all:
        raise ValueError("return_all needs a finite depth")
    if sweeps != 1:
        if not infinite:
            raise ValueError("sweeps > 1 needs depth 'inf'")
        linear_time.check_method(method)
        if method == "linear" or features is not None:
            raise ValueError("sweeps > 1 run on the dense Gram matrix: use method 'auto' or 'dense', without features")
    if not infinite:
        depth = int(depth)
        _validate(depth, 0.0 if step is None else float(step))
    if kernel == "linear" and infinite and x.shape[0] > 1 and x.numel() and _mixed_scales(x):
        # rows are independent at depth inf: each sequence gets its own exact power-of-two scale
        return torch.cat([descend(x[b:b + 1], kernel, beta=beta, sigma=sigma, depth=depth, ridge=ridge,
                                  memory_budget=memory_budget, method=method, sweeps=sweeps)
                          for b in range(x.shape[0])])
    if kernel == "linear" and (k := _power_of_two_scale(x)):
        c = 2.0 ** k
        step = None if step is None else float(step) * c * c
        if step is not None and not math.isfinite(step):
            raise ValueError(f"step is too large for inputs of size 2^{k}: eta * max_t R[t,t] overflows")
        if not math.isfinite(ridge / c / c):
            raise ValueError(f"ridge {ridge:g} is too large for inputs of size 2^{k}: lambda / |x|^2 overflows")
        out = descend(x / c, kernel, beta=beta, sigma=sigma, depth=depth, step=step, ridge=ridge / c / c,
                      return_all=return_all, memory_budget=memory_budget, method=method, sweeps=sweeps)
        out = out * c
        if not torch.isfinite(out).all():  # finite in scaled units, beyond the dtype in true units
            dtype = str(out.dtype).replace("torch.", "")
            raise FloatingPointError(f"causal kernel descent overflowed in {dtype} (the predictions exceed its range "
                                     f"for inputs of size 2^{k}); use a smaller step or depth inf"
                                     + (", or float64" if out.dtype != torch.float64 else ""))
        return out
    if sweeps != 1:
        return swept(x, kernel, beta=beta, sigma=sigma, ridge=ridge, sweeps=sweeps)
    if linear_time.uses_linear_time(kernel, method, features) and x.numel():
        return linear_time.descend(x, kernel, beta=beta, sigma=sigma, depth="inf" if infinite else depth,
                                   step=step, ridge=ridge, return_all=return_all, features=features,
                                   feature_seed=feature_seed)
    budget = _default_budget(x) if memory_budget is None else check_memory_budget(memory_budget)
    rows = block_rows(x, budget)
    _check_memory(x, "inf" if infinite else depth, rows, return_all)
    if features is not None or rows >= x.shape[1] or x.numel() == 0:  # features: whole matrices (reference)
        mats = (causal_matrices(x, kernel, beta, sigma) if features is None else
                linear_time.feature_matrices(x, kernel, features, feature_seed, beta=beta, sigma=sigma))
        y = targets(x)
        if infinite:
            return infinite_depth(mats, y, ridge, zero_columns=kernel == "linear")
        exact = None if features is not None else _exact_log_diagonal(x, kernel, beta)
        if step is None:
            log_step = _default_log_step(diagonal(mats), mats.log_scale, ridge, exact)
        else:
            _check_tiny_step(diagonal(mats), mats.log_scale, float(step), ridge, exact)
            log_step = _log(float(step))
        return _finite(mats, y, depth, log_step, ridge, return_all)
    return _descend_blocked(x, kernel, beta, sigma, "inf" if infinite else depth, step, ridge,
                            return_all, rows)


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


def _descend_blocked(x: Tensor, kernel: str, beta: float, sigma: float, depth: int | str,
                     step: float | None, ridge: float, return_all: bool, rows: int) -> Tensor:
    """``descend`` in row blocks of ``rows``: never more than one block of P and R in memory."""
    y = targets(x)
    log_scale = exp_log_scale(x, beta, rows) if kernel == "exp" else x.new_zeros(x.shape[0])
    if depth == "inf":
        return _infinite_blocks(row_blocks(x, kernel, beta, sigma, log_scale, rows), y, ridge, log_scale,
                                inplace=True, zero_columns=kernel == "linear", n_blocks=-(-x.shape[1] // rows))
    log_step = -math.inf if step is None else _log(float(step))  # with depth 0 no layer uses the step
    if depth > 0:  # the step and its check need the diagonal of R first: one pass over the blocks
        parts = []
        for start, _, P, R in row_blocks(x, kernel, beta, sigma, log_scale, rows):
            parts.append(torch.diagonal(R, offset=start, dim1=-2, dim2=-1).clone())
            del P, R  # before the next block is built
        diag = torch.cat(parts, 1)[:, 1:]
        exact = _exact_log_diagonal(x, kernel, beta)
        if step is None:
            log_step = _default_log_step(diag, log_scale, ridge, exact)
        else:
            _check_tiny_step(diag, log_scale, float(step), ridge, exact)
        if not _check_step(diag, log_scale, log_step, ridge):
            _warn_step(log_step)
    n_blocks = -(-x.shape[1] // rows)
    out, r_max = _finite_blocks(row_blocks(x, kernel, beta, sigma, log_scale, rows), y, depth, log_step, ridge,
                                log_scale, return_all, n_blocks)
    _check_growth(out, float(r_max), float(y.abs().amax()))
    return out
