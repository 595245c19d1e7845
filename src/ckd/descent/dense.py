"""Dense causal kernel descent (SPEC §2): finite and infinite depth on the T x T matrices P and R.

With targets y (y_0 = 0, y_t = x_t), depth N runs, from r = y, p = 0,

    p <- p + eta * P r
    r <- r - eta * (R r + lambda r)          (old r on both right-hand sides)

Closed forms (tested in ``tests/test_descent.py``):

    p_N      = P alpha_N,   alpha_N = eta * sum_{l<N} (I - eta (R + lambda I))^l y
    depth inf: (R + lambda I) alpha = y on rows 1..T-1 (forward substitution;
               for lambda = 0 one forward Kaczmarz sweep in the kernel's RKHS)

Per-row steps (SPEC §10): ``step`` may be a vector eta (T,), D = diag(eta), and each layer is
p <- p + D P r, r <- r - D (R r + lambda r) (row t's update scaled by eta_t), so that

    p_N      = D P sum_{l<N} (I - D (R + lambda I))^l y
    depth inf: p = D P (R + lambda I)^{-1} D^{-1} y on rows 1..T-1: the solve with right-hand side
               y_t / eta_t, its predictions scaled by eta_t. Not the uniform-step answer unless eta
               is constant (a constant cancels); it needs eta_t > 0 for t >= 1.

The step rules and the stability checks are ``ckd.descent.steps``'s.

Cost (``docs/performance.md``): P and R are built once per batch, then each layer is two
batched products P r and R r with the step folded into the product, so depth N costs one
kernel build plus 2N products; ``return_all`` adds no product. Above ``memory_budget`` bytes
the rows are processed in blocks (``tests/test_blocked.py``): each block's rows of P and R are
built once and every layer runs on them (causality: rows of a block need r_l only on rows up to
the block's last), and depth inf is blocked forward substitution. The results are the same.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..kernels import CausalMatrices, causal_rows, exp_log_scale
from ..progress import progress_bar
from ..validation import available_memory, check_fits, check_memory_budget, parse_step
from .steps import (
    check_depth_and_step,
    check_growth,
    check_infinite_step,
    check_tiny_step,
    default_log_step_of,
    diagonal,
    effective_log,
    exact_log_diagonal,
    log_of,
    row_steps,
    step_overflow,
    targets,
    warn_unless_converges,
)

DEFAULT_MEMORY_BUDGET = 4 * 2**30  # bytes of (T, T)-sized working memory before row blocks are used


def finite_depth(
    mats: CausalMatrices,
    y: Tensor,
    depth: int,
    step: float | Tensor,
    ridge: float = 0.0,
    *,
    return_all: bool = False,
) -> Tensor:
    """Depth-N CKD. y: (B, T, d) targets. Returns p (B, T, d), or (N+1, B, T, d) if
    ``return_all`` (the prediction after 0, 1, ..., N layers; no extra products).
    ``step``: eta, or a per-row step (T,) (list, array or tensor; SPEC §10, module doc).

    Warns ``StabilityWarning`` when the step is outside the convergence region, or
    when the residuals grow so much (max_l |r_l| / |y|) that the dtype's precision
    is lost; raises ``FloatingPointError`` when the result is not finite.
    """
    step = parse_step(step, y.shape[1])
    check_depth_and_step(depth, step)
    return finite_from_log(mats, y, depth, log_of(step), ridge, return_all)


def finite_from_log(mats: CausalMatrices, y: Tensor, depth: int, log_step: float | Tensor, ridge: float,
                    return_all: bool) -> Tensor:
    """``finite_depth`` with the step given as log eta (the default step may underflow as a float;
    a per-row step as the (T,) tensor of ``steps.log_of``)."""
    if y.numel() == 0:  # no sequence or no coordinate
        return y.new_zeros((depth + 1, *y.shape) if return_all else y.shape)
    if depth > 0:
        warn_unless_converges(diagonal(mats), mats.log_scale, log_step, ridge)
    T = y.shape[1]
    out, r_max = finite_blocks([(0, T, mats.P, mats.R)], y, depth, log_step, ridge, mats.log_scale, return_all)
    check_growth(out, float(r_max), float(y.abs().amax()))
    return out


def finite_blocks(blocks, y: Tensor, depth: int, log_step: float | Tensor, ridge: float, log_scale: Tensor,
                   return_all: bool, n_blocks: int = 1) -> tuple[Tensor, Tensor]:
    """The layer recursion over row blocks (start, stop, P rows, R rows) given in order; blocks
    may be generated lazily. Each block's rows of P and R are used for every layer before the
    next block is built: layer l of rows start..stop-1 needs r_l on rows 0..stop-1 only (causal),
    and r_l of earlier blocks is kept (depth + 1, B, T, d). Returns (p or its history, max |r_l|).

    Per layer and block: p <- p + eta P r, r <- (1 - eta lambda) r - eta R r, as two baddbmm with
    a scalar alpha (eta per sequence only when exp rescaling differs across the batch); a per-row log
    step (T,) scales row t's two updates by eta_t e^m and (1 - eta_t lambda) instead. Nothing
    grows with the depth but ``history`` (``return_all``) and ``kept`` (more than one block); a
    tqdm bar on stderr (a terminal only) shows work that lasts more than a few seconds.
    """
    B, T, d = y.shape
    eta, _ = effective_log(log_scale, log_step, ridge)
    top = torch.finfo(y.dtype).max
    per_row = isinstance(log_step, Tensor)
    if per_row:  # eta_t e^m (B, T, 1) and 1 - eta_t lambda (1, T, 1), both 0 / 1 on row 0 (real, also for complex y)
        real = y.real.dtype if y.is_complex() else y.dtype
        eta = eta.to(device=y.device, dtype=real)
        decay = (1.0 - torch.exp(log_step + math.log(ridge)) if ridge > 0 else torch.ones_like(log_step))
        decay = decay.to(device=y.device, dtype=real)[None, :, None]
        uniform, alpha, fits = False, 1.0, bool((eta <= top).all()) and bool((decay.abs() <= top).all())
    else:
        uniform = bool((log_scale == log_scale[0]).all()) if B > 0 else True
        alpha = float(eta.flatten()[0]) if uniform and B > 0 else 1.0
        step_ridge = math.exp(log_step + math.log(ridge)) if ridge > 0 and log_step > -math.inf else 0.0
        decay = 1.0 - step_ridge  # eta * lambda is the same in stored and true units
        fits = abs(alpha) <= top and abs(decay) <= top and bool((eta <= top).all())
    if not fits:
        raise step_overflow(log_step, ridge, y.dtype)
    history = y.new_zeros(depth + 1, B, T, d) if return_all else None
    out = None if return_all else y.new_zeros(B, T, d)
    kept = None  # r_l on the rows of every block so far: needed once there is more than one block
    r_max = torch.linalg.vector_norm(y, math.inf)  # running max: one fused reduction per layer, no sync
    bar = progress_bar(depth * n_blocks, "causal kernel descent", "layer", work=2.0 * depth * B * T * T * d / 2)
    for start, stop, P, R in blocks:
        if kept is None and stop < T:
            kept = y.new_empty(depth, B, T, d)
        r = y[:, start:stop]
        p = y.new_zeros(B, stop - start, d)
        for layer in range(depth):
            if kept is not None:
                kept[layer, :, start:stop] = r
            prefix = r if kept is None else kept[layer, :, :stop]  # r_l on rows 0..stop-1
            if per_row:  # row t's update times eta_t (the rows of the output, not of r)
                e = eta[:, start:stop]
                p = torch.addcmul(p, e, torch.bmm(P, prefix))
                r = torch.addcmul(r * decay[:, start:stop], e, torch.bmm(R, prefix), value=-1.0)
            else:
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


def infinite_depth(mats: CausalMatrices, y: Tensor, ridge: float = 0.0, *, zero_columns: bool = False,
                   step: float | Tensor | None = None) -> Tensor:
    """Depth-inf CKD: p = P alpha with (R + lambda I) alpha = y on rows 1..T-1.

    ``step``: a number or None is not used (a constant step cancels at depth inf); a per-row step
    eta (T,) (SPEC §10) gives p = D P (R + lambda I)^{-1} D^{-1} y, D = diag(eta), which needs
    eta_t > 0 for t >= 1 (``ValueError`` otherwise) and is warned about when some row is outside
    the convergence region (it is then a fixed point the layers do not reach).

    A lower-triangular solve; for lambda = 0 it equals one forward Kaczmarz sweep.
    Raises ``ValueError`` if a diagonal entry R[t,t] + lambda is zero and ``FloatingPointError``
    if the result is not finite; warns ``StabilityWarning`` when the solve amplifies the targets
    enough to eat the dtype's precision (an ill-conditioned kernel, e.g. exp with a large beta).

    ``zero_columns`` (the linear kernel, where it is a theorem): a row with R[t,t] + lambda = 0 has
    zero columns in P and R (Cauchy-Schwarz: |x_a . x_{t-1}| <= |x_a| |x_{t-1}| = 0), so alpha_t
    never reaches a prediction and is set to 0 (Kaczmarz skips a zero row) instead of raising:
    the all-zero input predicts 0.
    """
    step = parse_step(step, y.shape[1])
    step = step if isinstance(step, Tensor) else None  # a number cancels at depth inf
    return infinite_blocks([(0, y.shape[1], mats.P, mats.R)], y, ridge, mats.log_scale, inplace=False,
                            zero_columns=zero_columns, step=step)


def infinite_blocks(blocks, y: Tensor, ridge: float, log_scale: Tensor, *, inplace: bool,
                     zero_columns: bool = False, n_blocks: int = 1, step: Tensor | None = None) -> Tensor:
    """Blocked forward substitution over row blocks (start, stop, P rows, R rows), in order:
    alpha_k = (R_kk + lambda I)^{-1} (y_k - R_{k,<k} alpha_{<k}), then p_k = P_k alpha_{<=k}.
    ``inplace``: the blocks are temporaries and R_kk may be overwritten. ``zero_columns``: see
    ``infinite_depth`` (a zero diagonal entry gives alpha_t = 0). ``step``: a per-row step (T,):
    the right-hand side is y_t / eta_t and p_t is scaled by eta_t (module doc)."""
    B, T, d = y.shape
    if step is not None:
        check_infinite_step(step)
        eta = row_steps(step, y)
        y = y / eta
        if not bool(torch.isfinite(y).all()):
            raise ValueError("a per-row step this small overflows y_t / eta_t at depth inf; use larger steps")
        diags = []  # R[t, t], t = 1..T-1, for the convergence warning
    _, lam = effective_log(log_scale, 1.0, ridge)
    alpha = y.new_zeros(B, T, d)  # alpha_0 = 0: row 0 has no pair (and column 0 of P, R is 0)
    p = y.new_zeros(B, T, d)
    if p.numel() == 0:  # no sequence or no coordinate
        return p
    a_maxes = [y.real.new_zeros(())]  # max_t |(R[t,t] + lambda) alpha_t|: one fused reduction per block, no sync
    bar = progress_bar(n_blocks, "causal kernel descent, depth inf", "block", min_steps=8, work=B * T * T * d / 2)
    for start, stop, P, R in blocks:
        if bar is not None:
            bar.update()
        lo = max(start, 1)
        if stop <= lo:
            continue
        A = R[:, lo - start:, lo:stop]
        if step is not None:
            diags.append(torch.diagonal(A, dim1=-2, dim2=-1).real.clone())  # real also for complex x
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
    if step is not None:
        warn_unless_converges(torch.cat(diags, 1), log_scale, log_of(step), ridge, infinite=True)
        p.mul_(eta)
    check_growth(p, float(torch.stack(a_maxes).max()), float(y.abs().amax()), infinite=True, stacklevel=5)
    return p


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
    of them: each block runs every layer, ``finite_blocks``)."""
    B, T, d = x.shape
    e = x.element_size()
    vectors = B * T * d * e
    need = 3 * B * min(rows, T) * T * e + 8 * vectors
    if depth != "inf":
        need += (int(depth) + 1) * vectors if return_all else 0
        need += int(depth) * vectors if rows < T else 0
    return need


def check_memory(x: Tensor, depth: int | str, rows: int, return_all: bool) -> None:
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


def default_budget(x: Tensor) -> float:
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


def descend_blocked(x: Tensor, kernel: str, beta: float, sigma: float, depth: int | str,
                     step: float | Tensor | None, ridge: float, return_all: bool, rows: int) -> Tensor:
    """``descend`` in row blocks of ``rows``: never more than one block of P and R in memory.
    ``step``: None (the default), eta, or a per-row step (T,) (module doc)."""
    y = targets(x)
    log_scale = exp_log_scale(x, beta, rows) if kernel == "exp" else x.real.new_zeros(x.shape[0])
    if depth == "inf":
        return infinite_blocks(row_blocks(x, kernel, beta, sigma, log_scale, rows), y, ridge, log_scale,
                                inplace=True, zero_columns=kernel == "linear", n_blocks=-(-x.shape[1] // rows),
                                step=step if isinstance(step, Tensor) else None)
    log_step = -math.inf if step is None else log_of(step)  # with depth 0 no layer uses the step
    if depth > 0:  # the step and its check need the diagonal of R first: one pass over the blocks
        parts = []
        for start, _, P, R in row_blocks(x, kernel, beta, sigma, log_scale, rows):
            parts.append(torch.diagonal(R, offset=start, dim1=-2, dim2=-1).real.clone())  # real for complex x
            del P, R  # before the next block is built
        diag = torch.cat(parts, 1)[:, 1:]
        exact = exact_log_diagonal(x, kernel, beta)
        if step is None:
            log_step = default_log_step_of(diag, log_scale, ridge, exact)
        else:
            check_tiny_step(diag, log_scale, step, ridge, exact)
        warn_unless_converges(diag, log_scale, log_step, ridge)
    n_blocks = -(-x.shape[1] // rows)
    out, r_max = finite_blocks(row_blocks(x, kernel, beta, sigma, log_scale, rows), y, depth, log_step, ridge,
                                log_scale, return_all, n_blocks)
    check_growth(out, float(r_max), float(y.abs().amax()))
    return out
