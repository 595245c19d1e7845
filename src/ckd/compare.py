"""``ckd.compare``: any model's next-token predictions against causal kernel descent (SPEC §10).

Given sequences x (B, T, d) and predictions q (B, T, d) of any model (row t predicts x_{t+1}),
and for each depth N the CKD reference c = ``ckd.predict(x, kernel, depth=N, step=...)``, per row
t >= 1, with the norms pooled over the batch (|q_t|^2 = sum_b |q_bt|^2, <q_t, c_t> = sum_b <q_bt, c_bt>):

    cosine               <q_t, c_t> / (|q_t| |c_t|)
    median_cosine        median over b of <q_bt, c_bt> / (|q_bt| |c_bt|)   (sequences with a zero norm left out)
    scale                a_t = <q_t, c_t> / |c_t|^2                          (least squares q_t ~ a_t c_t)
    rel_distance_scaled  |q_t - a_t c_t| / |q_t|
    rel_distance         |q_t - c_t| / |q_t|
    error_model          median over b of |q_bt - x_{b,t+1}|
    error_ckd            median over b of |c_bt - x_{b,t+1}|

Every array has length T and is indexed by t. Row 0 has no pair (CKD predicts 0 there): NaN. The
last row has no next token: ``error_model`` and ``error_ckd`` are NaN at t = T-1. A zero norm in a
denominator gives NaN (no error). Medians are NumPy's (the mean of the two middle values).

``step``: None (the default step of ``ckd.predict``), a number, a vector of length T (per-row
steps, SPEC §10), or ``"fit"`` / ``"fit-per-row"``: the least-squares step of CKD against the
model's predictions at each depth (``ckd.descent.fit.fit_step``; one number, or one per row).
A fitted step reads the predictions: it says how far q is from CKD *at its best step*, an analysis
tool, not a causal predictor. A constant step does not change the depth-inf answer (none is fitted
there), but per-row steps do: p = D P (R + lambda I)^{-1} D^{-1} y (SPEC §10).

Reference: M. E. Sander, G. Peyré, *Towards Understanding the Universality of Transformers for
Next-Token Prediction*, ICLR 2025 (arXiv 2410.03011); the comparison follows the one-gradient-step
reading of Sander, Giryes, Suzuki, Blondel, Peyré, ICML 2024 (arXiv 2402.05787).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .api import predict
from .callable import make_callable
from .names import FITS
from .validation import as_batch, check_number, check_options, parse_depth

METRICS = ("cosine", "median_cosine", "scale", "rel_distance_scaled", "rel_distance", "error_model", "error_ckd")
DEPTHS = (1, 4, 16, "inf")


def agreement(q: Tensor, c: Tensor, x: Tensor) -> dict[str, np.ndarray]:
    """The seven per-row arrays of the module doc for predictions q, CKD c and sequences x, all
    (B, T, d). Returns {name: float64 array (T,)} in the order of ``METRICS``."""
    q, c, x = (np.asarray(a.detach().cpu().numpy(), dtype=np.float64) for a in (q, c, x))
    T = x.shape[1]
    dot = (q * c).sum(-1)  # (B, T)
    qq, cc = np.square(q).sum(-1), np.square(c).sum(-1)
    nq, nc = np.sqrt(qq.sum(0)), np.sqrt(cc.sum(0))  # pooled norms (T,)
    with np.errstate(all="ignore"):
        cosine = _ratio(dot.sum(0), nq * nc)
        scale = _ratio(dot.sum(0), np.square(nc))
        scaled = np.sqrt(np.square(q - scale[None, :, None] * c).sum((0, 2)))
        per_seq = _ratio(dot, np.sqrt(qq) * np.sqrt(cc))
        out = dict(cosine=cosine, median_cosine=_nanmedian(per_seq), scale=scale,
                   rel_distance_scaled=_ratio(scaled, nq),
                   rel_distance=_ratio(np.sqrt(np.square(q - c).sum((0, 2))), nq))
    for name, pred in (("error_model", q), ("error_ckd", c)):
        err = np.full(T, np.nan)
        err[:-1] = np.median(np.sqrt(np.square(pred[:, :-1] - x[:, 1:]).sum(-1)), axis=0)
        out[name] = err
    for values in out.values():
        values[0] = np.nan  # row 0: no pair
    return {name: out[name] for name in METRICS}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 or either is not finite."""
    with np.errstate(all="ignore"):
        r = num / np.where(den > 0, den, 1.0)
    return np.where((den > 0) & np.isfinite(r), r, np.nan)


def _nanmedian(a: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN; NaN (no warning) where a column is all NaN."""
    out = np.full(a.shape[1], np.nan)
    ok = ~np.isnan(a).all(0)
    out[ok] = np.nanmedian(a[:, ok], axis=0)
    return out


def check_depths(depths: Any) -> list[int | str]:
    """A non-empty list of distinct depths (int >= 0 or "inf"), else a one-line ``ValueError``."""
    if isinstance(depths, (str, int, float)):
        depths = [depths]
    try:
        items = list(depths)
    except TypeError:
        raise TypeError(f"depths must be a list of depths (int >= 0 or 'inf'), got {depths!r}") from None
    if not items:
        raise ValueError("depths is empty; give at least one depth (int >= 0 or 'inf')")
    out = [parse_depth(n) for n in items]
    for i, n in enumerate(out):
        if n in out[:i]:
            raise ValueError(f"depth {n} is given twice")
    return out


def check_step(step: Any, T: int) -> Any:
    """None, "fit", "fit-per-row", a number >= 0 (returned as float), or a vector of length T
    (returned as given: ``ckd.predict`` validates per-row steps)."""
    if step is None or (isinstance(step, str) and step in FITS):
        return step
    if isinstance(step, str):
        raise ValueError(f"step must be a number, a vector of length T, 'fit' or 'fit-per-row', got {step!r}")
    size = step.numel() if isinstance(step, Tensor) else np.size(step)
    if size == 1 and np.ndim(step) == 0:
        return check_number(step, "step", minimum=0.0)
    if size != T:
        raise ValueError(f"a per-row step needs one value per row: length {T}, got {size}")
    return step


def compare(
    pred: Any,
    x: Any,
    kernel: str = "exp",
    *,
    beta: float = 1.0,
    sigma: float = 1.0,
    ridge: float = 0.0,
    depths: Any = DEPTHS,
    step: Any = None,
) -> dict:
    """Compare predictions ``pred`` of any model with CKD on the sequences ``x`` (module doc).

    pred, x: arrays or tensors of the same shape, (T, d) or (B, T, d); row t of pred predicts
    x_{t+1}. kernel, beta, sigma, ridge: the CKD of ``ckd.predict``; depths: ints >= 0 and/or "inf";
    step: None, a number, a vector (T,), "fit" or "fit-per-row" (module doc).

    Returns {"t": array (T,), "depths": {N: {metric: array (T,)}} (keys ``METRICS``),
    "steps": {N: the step CKD ran with (None: the default step; a float; an array (T,))},
    "settings": {"kernel", "beta", "sigma", "ridge", "step", "depths", "shape"}}.
    Raises a one-line ``ValueError``/``TypeError`` on bad input; warns ``StabilityWarning`` for a
    step outside the convergence region (as ``ckd.predict``).
    """
    q, _ = as_batch(pred, torch.float64, "pred")
    xb, _ = as_batch(x, torch.float64, "x")
    if np.shape(pred) != np.shape(x):
        raise ValueError(f"pred has shape {tuple(np.shape(pred))} but x has shape {tuple(np.shape(x))}; "
                         "row t of pred predicts x_{t+1}: give arrays of the same shape")
    opts = check_options(kernel, beta, sigma, 1, None, ridge, "descent", "augmented")
    depths = check_depths(depths)
    step = check_step(step, xb.shape[1])
    q = q.to(xb.device)
    ckd = dict(kernel=kernel, beta=opts["beta"], sigma=opts["sigma"], ridge=opts["ridge"])
    result: dict = {"t": np.arange(xb.shape[1]), "depths": {}, "steps": {}}
    fit = step if isinstance(step, str) else None
    for n in depths:
        used = fitted_step(q, xb, n, fit == "fit-per-row", ckd) if fit else step
        try:
            c = predict(xb, depth=n, step=used, **ckd)
        except ValueError as err:
            if not fit:
                raise
            raise ValueError(f"CKD at depth {n} with the step fitted to pred: {err}".splitlines()[0]) from None
        result["depths"][n] = agreement(q, c, xb)
        result["steps"][n] = _plain(used)
    given = step if step is None or isinstance(step, (str, float)) else "per-row vector"
    result["settings"] = dict(ckd, step=given, depths=depths, shape=list(xb.shape))
    return result


def fitted_step(q: Tensor, x: Tensor, depth: int | str, per_row: bool, ckd: dict) -> Any:
    """The least-squares step of CKD at ``depth`` against the predictions q (``fit_step``); None at
    depth 0 (no layer) and, for one constant step, at depth inf (the answer does not depend on it)."""
    if depth == 0 or (depth == "inf" and not per_row):
        return None
    from .descent.fit import fit_step  # the per-row step module (SPEC §10)

    return fit_step(x, q, ckd["kernel"], beta=ckd["beta"], sigma=ckd["sigma"], ridge=ckd["ridge"],
                    depth=depth, per_row=per_row)


def _plain(step: Any) -> Any:
    """A step as None, a float or a float64 array."""
    if step is None:
        return None
    if isinstance(step, Tensor):
        step = step.detach().cpu().numpy()
    arr = np.asarray(step, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else arr


def rows_to_show(T: int) -> list[int]:
    """A few rows t for a table: 1, 2, 5, 10, 20, 50, ... below T-1, and T/2 and T-2 (t >= 1)."""
    ts = {m * 10**k for k in range(len(str(T))) for m in (1, 2, 5)} | {T // 2, T - 2}
    return sorted(t for t in ts if 1 <= t <= max(1, T - 2) and t < T)


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


def table(result: dict, ts: list[int] | None = None) -> str:
    """A Markdown table of ``compare``'s result at rows ``ts`` (default ``rows_to_show``)."""
    T = len(result["t"])
    ts = rows_to_show(T) if ts is None else ts
    s = result["settings"]
    head = (f"ckd compare: {s['shape'][0]} sequences, T = {s['shape'][1]}, d = {s['shape'][2]}; CKD kernel "
            f"{s['kernel']} (beta {s['beta']:g}, sigma {s['sigma']:g}, ridge {s['ridge']:g}), step "
            f"{s['step'] if s['step'] is not None else 'default'}")
    lines = [head, "", "| depth | t | step | cosine | median cosine | scale | rel distance (scaled) | "
             "rel distance | error model | error CKD |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n, m in result["depths"].items():
        step = result["steps"][n]
        for t in ts:
            eta = "default" if step is None else _fmt(float(step) if np.ndim(step) == 0 else float(step[t]))
            lines.append(f"| {n} | {t} | {eta} | " + " | ".join(_fmt(float(m[k][t])) for k in METRICS) + " |")
    lines += ["", "Pooled over the sequences at each t (SPEC §10): cosine and distances between the model's "
              "predictions q and CKD's c, the scale a_t of the least-squares fit q ~ a_t c, and the median "
              "next-token errors. A fitted step reads the predictions (an analysis tool, not a causal "
              "predictor); a per-row step changes the depth-inf answer."]
    if s["step"] == "fit" and "inf" in result["depths"]:
        lines.append("At depth inf a constant step changes nothing: none is fitted there.")
    return "\n".join(lines) + "\n"


def plot(result: dict):
    """A figure (matplotlib; imported here): cosine, scaled relative distance and errors vs t."""
    from .experiments.plotting import figure, log_axes

    fig, (a1, a2, a3) = figure(1, 3, width=4.0)
    t = result["t"][1:]
    for n, m in result["depths"].items():
        a1.plot(t, m["cosine"][1:], label=f"depth {n}")
        a2.plot(t, m["rel_distance_scaled"][1:], label=f"depth {n}")
        a3.plot(t[:-1], m["error_ckd"][1:-1], linestyle=":", label=f"CKD depth {n}")
    first = next(iter(result["depths"].values()))
    a3.plot(t[:-1], first["error_model"][1:-1], color="k", label="model")
    a1.set(xlabel="t", ylabel="cosine(model, CKD)", title="pooled cosine")
    a2.set(xlabel="t", ylabel="|q - a c| / |q|", title="distance after the best scale")
    a3.set(xlabel="t", ylabel="median |pred - x_{t+1}|", title="next-token error")
    log_axes(a2)
    log_axes(a3)
    for ax in (a1, a2, a3):
        ax.legend()
    fig.tight_layout()
    return fig


make_callable(__name__)  # ckd.compare(...) calls compare, also when ckd.compare is this module
