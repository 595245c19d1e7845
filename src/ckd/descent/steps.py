"""Step rules and stability checks of causal kernel descent (SPEC §2), shared by every path.

The dense path (``ckd.descent.dense``), the linear-time path (``ckd.linear_time``) and the
constructed Transformer (``ckd.construction``) all take their step, their convergence test and
their growth / overflow checks from here.

Steps are kept in log units: with the exp kernel the weights are stored rescaled by e^-m
(``ckd.kernels``), and the default step eta = 0.5 / max_t (R[t,t] + lambda) may underflow as a
float where eta e^m (the step in stored units) does not.

    converges   iff |1 - eta (R[t,t] + lambda)| < 1 for every t >= 1
    per row     a step may be a vector eta_0..eta_{T-1} (SPEC §10; D = diag(eta), eta_0 unused):
                p <- p + D P r, r <- r - D (R r + lambda r); the test becomes
                |1 - eta_t (R[t,t] + lambda)| < 1 for every t, and a log step is then a (T,) tensor
                log eta_t (``log_of``; -inf where eta_t = 0, row 0 included)
    growth      max_l |r_l| / |y| (finite depth; the non-normal transient of (I - eta R)^l) or
                max_t |(R[t,t] + lambda) alpha_t| / |y| (depth inf); warned about when it eats the
                dtype's precision, an error when the result is not finite.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..kernels import CausalMatrices


class StabilityWarning(UserWarning):
    """The step is outside the convergence region, or the iterates lost precision."""


def targets(x: Tensor) -> Tensor:
    """y with y_0 = 0 and y_t = x_t (x: (B, T, d))."""
    y = x.clone()
    if y.shape[1]:
        y[:, 0] = 0
    return y


def diagonal(mats: CausalMatrices) -> Tensor:
    """R[t, t] for t >= 1 in stored units, (B, T-1); real also for complex x (|x_{t-1}|^2, SPEC §10)."""
    diag = torch.diagonal(mats.R, dim1=-2, dim2=-1)[:, 1:]
    return diag.real if diag.is_complex() else diag


def default_step(mats: CausalMatrices, ridge: float = 0.0) -> float:
    """eta = 0.5 / max over the batch and t >= 1 of (R[t, t] + lambda), in true units.

    This float underflows to 0 when the exp kernel's weights exceed e^745 (large beta |x|^2);
    ``descend`` keeps the default step in log units instead (``default_log_step``), so that
    depth N with the default step is exact whatever the scale."""
    return math.exp(default_log_step(mats, ridge))


def default_log_step(mats: CausalMatrices, ridge: float = 0.0) -> float:
    """log eta of the default step (finite even when eta itself underflows); -inf when every
    R[t, t] + lambda is 0 (the all-zero input with the linear kernel: P = 0, so p = 0 for any step)."""
    return default_log_step_of(diagonal(mats), mats.log_scale, ridge)


def _log_diagonal(diag: Tensor, log_scale: Tensor, ridge: float, exact: Tensor | None = None) -> Tensor:
    """log (R[t, t] + lambda) in true units, (B, T-1). ``exact``: log R[t, t] computed without
    exp (beta |x_{t-1}|^2 for the exp kernel), used where the stored weight underflowed to 0."""
    log_diag = diag.log() + log_scale[:, None]
    if exact is not None:
        log_diag = torch.where(diag > 0, log_diag, exact)
    if ridge > 0:
        log_diag = torch.logaddexp(log_diag, torch.full_like(log_diag, math.log(ridge)))
    return log_diag


def exact_log_diagonal(x: Tensor, kernel: str, beta: float) -> Tensor | None:
    """log R[t, t] = beta |x_{t-1}|^2 (t >= 1) for the exp kernel, whose stored diagonal may underflow
    after the rescaling by the largest weight; None for the other kernels (exact as stored)."""
    return beta * x[:, :-1].square().sum(-1) if kernel == "exp" else None


def default_log_step_of(diag: Tensor, log_scale: Tensor, ridge: float, exact: Tensor | None = None) -> float:
    """``default_log_step`` from the diagonal R[t, t] (stored units, (B, T-1)) and the scales m."""
    if diag.numel() == 0:
        return math.log(0.5 / ridge if ridge > 0 else 0.5)
    top = float(_log_diagonal(diag, log_scale, ridge, exact).max())
    if top == -math.inf:
        return -math.inf
    eta = 0.5 * math.exp(-top)  # the float the definition gives, when it is one
    return math.log(eta) if 0 < eta < math.inf else math.log(0.5) - top


def log_of(step: float | Tensor) -> float | Tensor:
    """log eta, -inf for eta = 0; for a per-row step (T,) the (T,) tensor log eta_t with row 0 at -inf
    (eta_0 is unused: any finite value is accepted, and row 0 never changes)."""
    if isinstance(step, Tensor):
        step = step.to(torch.float64).clone()
        step[:1] = 0
        return step.log()
    return math.log(step) if step > 0 else -math.inf


def constant_step(step: float | Tensor | None) -> float | Tensor | None:
    """A per-row step that is the same on every row t >= 1 as that float (the scalar path, exactly:
    SPEC §10, a scalar step is the constant vector); anything else unchanged. T = 1: None."""
    if not isinstance(step, Tensor):
        return step
    if step.shape[0] < 2:
        return None
    rows = step[1:]
    return float(rows[0]) if bool((rows == rows[0]).all()) else step


def check_infinite_step(step: float | Tensor | None) -> None:
    """Depth inf with a per-row step needs eta_t > 0 for every t >= 1: with eta_t = 0 residual t is
    never corrected, so r_l tends to a non-zero fixed point and every later prediction grows
    linearly with depth (the layers have no limit, and D^-1 of the closed form does not exist)."""
    if isinstance(step, Tensor) and bool((step[1:] == 0).any()):
        raise zero_step_error(int((step[1:] == 0).nonzero()[0, 0]) + 1)


def zero_step_error(t: int) -> ValueError:
    """The one-line error of ``check_infinite_step`` for row t."""
    return ValueError(f"depth inf with a per-row step needs eta_t > 0 on every row t >= 1, got eta_{t} = 0 "
                      "(that residual is never corrected, so the layers have no limit); use a finite depth")


def row_steps(step: Tensor, like: Tensor) -> Tensor:
    """eta_t of a per-row step (T,) as (1, T, 1) in ``like``'s dtype and device, eta_0 set to 1 (row 0
    has no pair; 1 keeps y_0 / eta_0 = 0 at depth inf)."""
    eta = step.to(device=like.device, dtype=like.dtype).clone()
    eta[:1] = 1
    return eta[None, :, None]


def effective(mats: CausalMatrices, step: float, ridge: float) -> tuple[Tensor, Tensor]:
    """Per-sequence (eta e^m, lambda e^-m), (B, 1, 1): the step and ridge in stored units."""
    return effective_log(mats.log_scale, log_of(step), ridge)


def effective_log(log_scale: Tensor, log_step: float | Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    """(eta e^m, lambda e^-m) from log eta: exact in stored units even where eta underflows.
    eta e^m is (B, 1, 1), or (B, n, 1) for a per-row log step (n,) (float64 then)."""
    ls = log_scale[:, None, None]
    if isinstance(log_step, Tensor):
        eta = torch.exp(log_step.to(ls.device)[None, :, None] + ls)
        return eta, ridge * torch.exp(-ls)
    eta = torch.exp(log_step + ls) if log_step > -math.inf else torch.zeros_like(ls)
    lam = ridge * torch.exp(-ls)
    return eta, lam


def check_step(mats: CausalMatrices, step: float, ridge: float) -> bool:
    """True iff |1 - eta (R[t,t] + lambda)| < 1 for every t >= 1 and every sequence
    (rows with R[t,t] + lambda = 0 aside: see ``converges``)."""
    return converges(diagonal(mats), mats.log_scale, log_of(step), ridge)


def converges(diag: Tensor, log_scale: Tensor, log_step: float | Tensor, ridge: float) -> bool:
    """The convergence test. A row with R[t,t] + lambda = 0 (a zero token with the linear kernel)
    is left out: its column of P and R is 0 too (|k(a, b)|^2 <= k(a, a) k(b, b)), so its residual
    never reaches a prediction. A row with eta (R[t,t] + lambda) below the float's resolution
    converges (slowly): 0 < eta (R[t,t] + lambda) < 2 is tested, not the rounded 1 - eta (...).
    A per-row log step (T,) is tested row by row: 0 < eta_t (R[t,t] + lambda) < 2."""
    return bool(converging_rows(diag, log_scale, log_step, ridge).all())


def converging_rows(diag: Tensor, log_scale: Tensor, log_step: float | Tensor, ridge: float) -> Tensor:
    """``converges`` row by row: a (T-1,) bool tensor, True where every sequence of the batch
    converges (rows t = 1..T-1; diag (B, T-1), a per-row log step (T,))."""
    if isinstance(log_step, Tensor):
        log_step = log_step[1:]
    eta, lam = effective_log(log_scale, log_step, ridge)
    total = diag + lam[:, :, 0]
    product = eta[:, :, 0] * total  # |1 - product| < 1 iff 0 < product < 2, without 1 - 1e-300 rounding to 1
    return (((product > 0) & (product < 2)) | (total == 0)).all(0)


def format_step(log_step: float | Tensor) -> str:
    """eta as a number, also below the float range (e.g. 3.2e-1200); a per-row step by its largest eta_t."""
    if isinstance(log_step, Tensor):
        return "eta_t up to " + format_step(float(log_step[1:].max()) if log_step.shape[0] > 1 else -math.inf)
    if log_step == -math.inf:
        return "0"
    eta = math.exp(log_step)
    if eta > 0:
        return f"{eta:.4g}"
    exp10 = math.floor(log_step / math.log(10))
    return f"{10 ** (log_step / math.log(10) - exp10):.4g}e{exp10}"


def warn_unless_converges(diag: Tensor, log_scale: Tensor, log_step: float | Tensor, ridge: float, *,
                          infinite: bool = False) -> None:
    """``warn_step`` when the step (scalar or per-row) is outside the convergence region: for a per-row
    step the warning names the first row t that fails. ``infinite``: the per-row depth-inf answer
    D P (R + lambda I)^{-1} D^{-1} y is then a fixed point the layers do not reach (SPEC §10)."""
    if not isinstance(log_step, Tensor):
        if not converges(diag, log_scale, log_step, ridge):
            warn_step(log_step, stacklevel=5)
        return
    ok = converging_rows(diag, log_scale, log_step, ridge)
    if bool(ok.all()):
        return
    t = int((~ok).nonzero()[0, 0]) + 1
    then = ("depth inf returns the fixed point D P (R + lambda I)^-1 D^-1 y, which the layers do not reach"
            if infinite else "the iterates diverge as depth grows")
    warnings.warn(f"per-row step eta_{t} = {format_step(float(log_step[t]))} is outside the convergence region "
                  f"|1 - eta_t (R[t,t] + lambda)| < 1 (first of {int((~ok).sum())} rows); {then}",
                  StabilityWarning, stacklevel=4)


def warn_step(log_step: float, stacklevel: int = 4) -> None:
    """The step is outside the convergence region (a warning: finite depth may be what is studied)."""
    warnings.warn(
        f"step {format_step(log_step)} is outside the convergence region |1 - eta (R[t,t] + lambda)| < 1; "
        "the iterates diverge as depth grows",
        StabilityWarning,
        stacklevel=stacklevel,
    )


def step_overflow(log_step: float | Tensor, ridge: float, dtype: torch.dtype) -> ValueError:
    """The one-line error for a step (with its ridge) beyond the working dtype's range."""
    name = str(dtype).replace("torch.", "")
    return ValueError(f"step {format_step(log_step)} (with ridge {ridge:g}) overflows {name}; use a smaller step"
                      + (" or float64" if dtype != torch.float64 else ""))


def check_tiny_step(diag: Tensor, log_scale: Tensor, step: float | Tensor, ridge: float,
                    exact: Tensor | None = None) -> None:
    """An explicit step so small that eta (R[t,t] + lambda) is below the dtype's smallest normal
    number on every row: the layers would change nothing. A clear error rather than silent zeros.
    A per-row step (T,): eta_t (R[t,t] + lambda) on every row t >= 1 where eta_t > 0."""
    if diag.numel() == 0:
        return
    dtype = str(diag.dtype).replace("torch.", "")
    if isinstance(step, Tensor):
        rows = log_of(step)[1:].to(diag.device)
        if not bool((rows > -math.inf).any()):
            return
        top = float((_log_diagonal(diag, log_scale, ridge, exact).to(rows.dtype) + rows).max())
        if top > -math.inf and top < math.log(torch.finfo(diag.dtype).tiny):
            raise ValueError(f"per-row step underflows: max_t eta_t (R[t,t] + ridge) = {format_step(top)} is below "
                             f"the smallest normal {dtype} number, so no layer would change anything; use larger "
                             "steps")
        return
    if not step > 0:
        return
    top = float(_log_diagonal(diag, log_scale, ridge, exact).max())
    if top > -math.inf and math.log(step) + top < math.log(torch.finfo(diag.dtype).tiny):
        raise ValueError(f"step {step:.4g} underflows: eta * max_t (R[t,t] + ridge) = "
                         f"{format_step(math.log(step) + top)} is below the smallest normal {dtype} number, so "
                         "no layer would change anything; omit --step (the default is exact at any scale)")


def check_depth_and_step(depth: int, step: float | Tensor) -> None:
    """depth >= 0 and a finite step >= 0, else ``ValueError`` (a per-row step is checked by
    ``ckd.validation.parse_step``)."""
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if isinstance(step, Tensor):
        return
    if step < 0 or not math.isfinite(step):
        raise ValueError(f"step must be a finite number >= 0, got {step}")


def check_growth(p: Tensor, r_max: float, y_max: float, *, infinite: bool = False, stacklevel: int = 4) -> None:
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
        # r_max itself may have overflowed (inf or nan): then say so rather than "by nan"
        by = f"by {growth:.3g}" if math.isfinite(growth) else f"beyond the range of {dtype}"
        raise FloatingPointError(f"causal kernel descent overflowed in {dtype} ({cause} {by}); {advice}")
    if y_max > 0:
        growth = r_max / y_max
        lost = growth * torch.finfo(p.dtype).eps
        if lost > 1e-4:
            digits = max(0, int(-math.log10(lost)))
            where = "" if infinite else " before shrinking (non-normal transient)"
            warnings.warn(f"{cause} by {growth:.3g}{where}: about {digits} correct digits left in {dtype}; {advice}",
                          StabilityWarning, stacklevel=stacklevel)
