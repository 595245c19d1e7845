"""Weights that make ``CausalTransformer`` run causal kernel descent exactly (SPEC §3).

``construct`` returns an ordinary ``CausalTransformer`` (same class as the trained
models) whose forward pass is depth-N CKD with step eta and ridge lambda:

    p <- p + eta * P r                 prediction head: query x_t,     keys x_{s-1}, values r_s
    r <- r - eta * (R r + lambda r)    residual head:   query x_{t-1}, keys x_{s-1}, values r_s

Residual stream of width 4d + 1 (+ pos_dim for raw tokens); d = dim::

    slot     | x_{t-1} | x_t  |  r   |  p   | one | pos_t (raw only) |
    columns  | 0:d     | d:2d | 2d:3d| 3d:4d| 4d  | 4d+1 : 4d+1+P    |

    embedding W_in    augmented (x_{t-1}, x_t, 1)  -> x_{t-1}, x_t, r = x_t, one
                      raw       (x_t, 1, pos_t)    -> x_t, r = x_t, one, pos_t   (x_{t-1} slot left 0)
    [raw] prev layer  1 head: query  W_q pos_t = c pos_{t-1}  (shift; c = 1, or prev_beta for softmax)
                              key    pos_s,  value x_s (x_t slot)  ->  W_o writes the x_{t-1} slot
    block l (of N)    head 0 "residual":   q = a x_{t-1}, k = b x_{s-1}, v = r_s -> W_o: -eta e^c  into r
                      head 1 "prediction": q = a x_t,     k = b x_{s-1}, v = r_s -> W_o: +eta e^c  into p
                      ridge (lambda > 0): parallel MLP  r <- r - eta lambda (relu(r) - relu(-r))
    read-out W_out    p slot -> prediction

    kernel     a      b      score q.k                 attention
    linear     1      1      x.x'                      linear
    exp        beta   1      beta x.x' - c             exp       (c: see below)
    softmax    beta   1      beta x.x'                 softmax
    gaussian   1/sig  1/sig  -|x - x'|^2 / (2 sig^2)   gaussian

Per-row steps (SPEC §10: p <- p + D P r, r <- r - D (R r + lambda r), D = diag(eta)): W_o =
-+I (times e^c, see below) and the per-row gains of every block hold eta (``row_gain``: heads'
outputs and the ridge MLP's hidden units, whose down map is then -+lambda). Position-normalised
heads (``attention_norm="keys"``) divide their sums by the t keys row t sees, so a constant gain c
runs eta_t = c / t. One head (depth <= 1): the prediction head alone.

Token 0 is never a key and row 0 gets no update (``mask_first``), so p_0 = 0 and
r_0 is never read: exactly the CKD conventions (row 0 has no pair). Both heads
attend with the same keys and values; the attention and the ridge MLP read the
same residual stream (parallel block), so every layer uses the old r on both
right-hand sides, as in SPEC §2.

``exp`` overflow: exp(beta x.x') exceeds the largest float once beta x.x' > 709.8
(float64). ``log_scale`` = c > 0 appends a query channel reading ``one`` and a key
channel holding -c, so the head computes exp(beta x.x' - c), and W_o multiplies by
eta e^c: the same numbers as CKD in the rescaled units of ``ckd.kernels``.

Raw tokens: with one-hot positions and ``linear`` previous-token attention the copy
of x_{t-1} is exact (pos_{t-1} . pos_s = [s = t-1]). With ``softmax`` and inverse
temperature ``prev_beta`` row t gets (e^beta x_{t-1} + sum_{s <= t, s != t-1} x_s) /
(e^beta + t): an error ~ t e^{-beta} (measured in docs/transformer.md). Sinusoidal
positions: pos_{t-1} is a rotation of pos_t; softmax only (prev_beta required).

Reference: M. E. Sander, G. Peyré, *Towards Understanding the Universality of
Transformers for Next-Token Prediction*, ICLR 2025 (arXiv 2410.03011).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .attention import visible_keys
from .descent.steps import (
    StabilityWarning,
    check_growth,
    check_step,  # noqa: F401 - public names used by callers of this module
    converges,
    default_log_step_of,
    default_step,  # noqa: F401
    diagonal,
    exact_log_diagonal,
    format_step,
)
from .kernels import causal_matrices, check_kernel
from .transformer import CausalTransformer, TransformerConfig, sinusoidal_frequencies
from .validation import integer_value


def slots(dim: int) -> dict[str, slice]:
    """Column ranges of the residual stream (module doc): xprev, xcur, r, p, one, pos."""
    d = dim
    return dict(xprev=slice(0, d), xcur=slice(d, 2 * d), r=slice(2 * d, 3 * d), p=slice(3 * d, 4 * d),
                one=slice(4 * d, 4 * d + 1), pos=slice(4 * d + 1, None))


def step_rows(step) -> Tensor | None:
    """None for one step (a number: the caller takes ``float(step)``); else the per-row steps
    eta = (eta_0, ..., eta_{T-1}) of SPEC §10 as a float64 CPU tensor (T,), from a tensor, array or
    list. eta_0 is unused (row 0 has no pair) and may be anything; the others must be finite and
    >= 0 (one-line ``ValueError``)."""
    if isinstance(step, numbers.Real) and not isinstance(step, bool):
        return None
    if isinstance(step, (bool, str)) or step is None:
        raise ValueError(f"step must be a number or a vector of per-row steps, got {step!r}")
    try:  # lists through NumPy: float64, as Python floats are (torch would make them float32)
        rows = step.detach().cpu() if isinstance(step, Tensor) else torch.from_numpy(np.asarray(step))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"step must be a number or a vector of per-row steps ({err})".splitlines()[0]) from None
    if rows.ndim == 0:
        return None
    if not (rows.is_floating_point() or rows.dtype in (torch.int32, torch.int64)) or rows.ndim != 1 or not len(rows):
        raise ValueError(f"per-row steps must be a non-empty real vector (T,), got {rows.dtype} of shape "
                         f"{tuple(rows.shape)}")
    rows = rows.to(torch.float64)
    tail = rows[1:]
    if not (torch.isfinite(tail).all() and (tail >= 0).all()):
        raise ValueError("per-row steps eta_1, ..., eta_{T-1} must be finite numbers >= 0 (eta_0 is unused)")
    return rows


def construct(
    kernel: str,
    *,
    dim: int,
    depth: int,
    step: float | Tensor | Sequence[float],
    beta: float = 1.0,
    sigma: float = 1.0,
    ridge: float = 0.0,
    tokens: str = "augmented",
    prev_beta: float | None = None,
    max_len: int | None = None,
    dtype: torch.dtype = torch.float64,
    positional: str = "onehot",
    log_scale: float = 0.0,
    log_step: float | None = None,
    attention_norm: str = "none",
    heads: int = 2,
    bias: bool = False,
) -> CausalTransformer:
    """Weights implementing depth-`depth` CKD (two heads per layer: residual head, query x_{t-1};
    prediction head, query x_t; keys x_{s-1}; values r_s; row 0 masked as a key; ridge as a
    per-token linear term). tokens='raw' adds the previous-token layer (exact with linear attention
    on one-hot positions; softmax with inverse temperature prev_beta is approximate).

    step: one step eta (a number), or per-row steps (T,) (tensor, array or list; eta_0 unused;
    ``step_rows``): D = diag(eta) is then written into the per-row gains of every block
    (``row_gain``: heads' outputs and the ridge MLP's hidden units), and the model runs
    p <- p + D P r, r <- r - D (R r + lambda r) (SPEC §10) on sequences of T <= max_len rows.
    attention_norm="keys": position-normalised heads (each divides its sum by the t keys row t
    sees), so ``step`` is the numerator c (a number or per row): eta_t = c_t / t. With a ridge the
    MLP's 1/t comes from its per-row gains (an MLP sees no position).
    heads=1: the prediction head only, which is all of CKD at depth <= 1 (the residual head's
    update of r is never read at depth 1). bias: biases on every linear map, all zero.
    max_len: the positional table (raw tokens) and the per-row gains; None: the length of per-row
    steps, else 1024.

    log_scale c >= 0 (``exp`` only): heads compute exp(beta x.x' - c) and write eta e^c times
    their output, which avoids overflow for large beta (module doc). ``log_step``: log eta, in
    place of ``step`` when eta is below the float range but eta e^c is not (the default step of
    the exp kernel with a large beta |x|^2).
    """
    check_kernel(kernel)
    # NumPy and torch integer scalars are integers (bools are not: _check refuses them)
    dim, depth, heads, max_len = (v if integer_value(v, floats=True) is None else integer_value(v, floats=True)
                                  for v in (dim, depth, heads, max_len))
    rows = step_rows(step)
    if rows is not None:
        if log_step is not None:
            raise ValueError("log_step goes with one step, not with per-row steps")
        if max_len is not None and max_len != len(rows):
            raise ValueError(f"per-row steps have length {len(rows)} but max_len is {max_len}")
        max_len, top = len(rows), float(rows[1:].max()) if len(rows) > 1 else 0.0
    else:
        step = math.exp(log_step) if log_step is not None else float(step)
        max_len, top = (1024 if max_len is None else max_len), step
    _check(dim, depth, top, beta, sigma, ridge, tokens, prev_beta, positional, log_scale, kernel)
    if isinstance(heads, bool) or heads not in (1, 2) or (heads == 1 and depth > 1):
        raise ValueError(f"the construction has 2 heads per layer, or 1 (the prediction head) at depth <= 1; "
                         f"got heads={heads!r} at depth {depth}")
    gains = rows is not None or (attention_norm == "keys" and ridge > 0)
    shift, d = log_scale > 0, dim
    config = TransformerConfig(
        dim=d, n_layers=depth, n_heads=heads, head_dim=d + shift, value_dim=d, attention=kernel, tokens=tokens,
        positional=positional, max_len=max_len, mlp=ridge > 0, mlp_width=2 * d, bias=bool(bias),
        prev_attention="linear" if prev_beta is None else "softmax", attention_norm=attention_norm, row_gain=gains,
    )
    model = CausalTransformer(config).to(torch.float64)  # write the weights in float64, then cast
    if gains:  # eta_t (or c_t) e^c on the heads, eta_t on the ridge MLP; W_o = +-1, MLP = -+lambda
        numerator = rows if rows is not None else torch.full((max_len,), step, dtype=torch.float64)
        gain, ridge_gain = 1.0, 1.0
    else:  # eta e^c on W_o (as one number: e^c alone may overflow), eta lambda on the MLP
        gain = math.exp(math.log(step) + log_scale) if step > 0 and log_scale > 0 else step
        if log_step is not None and log_scale > 0:
            gain = math.exp(log_step + log_scale)
        ridge_gain = step
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        _write_weights(model, kernel, d, gain, ridge_gain * ridge, beta, sigma, tokens, prev_beta, positional,
                       log_scale)
        if gains:
            keys = visible_keys(max_len) if attention_norm == "keys" else torch.ones(max_len, dtype=torch.float64)
            head = torch.exp(numerator.log() + log_scale) if log_scale > 0 else numerator.clone()
            head[0] = 0.0  # row 0 sees no key: eta_0 is unused
            mlp = numerator / keys.clamp_min(1.0)
            mlp[0] = 0.0
            for block in model.blocks:
                block.attn.row_gain.copy_(head)
                if block.mlp is not None:
                    block.mlp.row_gain.copy_(mlp)
    return model.to(dtype)


def _write_weights(model, kernel, d, gain, ridge_gain, beta, sigma, tokens, prev_beta, positional,
                   log_scale) -> None:
    """Fill the zeroed parameters of ``model`` with the layout of the module doc (float64): the heads
    write -+``gain`` times their output into r / p, the ridge MLP -``ridge_gain`` r into r."""
    config, shift = model.config, log_scale > 0
    S = slots(d)
    eye = torch.eye(d, dtype=torch.float64)
    a, b = {"linear": (1.0, 1.0), "exp": (beta, 1.0), "softmax": (beta, 1.0),
            "gaussian": (1.0 / sigma, 1.0 / sigma)}[kernel]

    W = model.embed.weight  # (width, d_in)
    if tokens == "augmented":  # input (x_{t-1}, x_t, 1)
        W[S["xprev"], 0:d] = eye
        W[S["xcur"], d:2 * d] = eye
        W[S["r"], d:2 * d] = eye
        W[S["one"], 2 * d] = 1.0
    else:  # input (x_t, 1, pos_t)
        W[S["xcur"], 0:d] = eye
        W[S["r"], 0:d] = eye
        W[S["one"], d] = 1.0
        W[S["pos"], d + 1:] = torch.eye(config.d_pos, dtype=torch.float64)
        _previous_token_layer(model, S, d, prev_beta, positional)

    # (query slot, written slot, sign): head 0 residual (r <- r - eta R r), head 1 prediction (p <- p + eta P r)
    roles = [("xprev", "r", -1.0), ("xcur", "p", 1.0)][2 - config.n_heads:]
    for block in model.blocks:
        attn, width, H = block.attn, config.d_model, config.n_heads
        q = attn.query.weight.view(H, -1, width)  # (head, head_dim, width)
        k = attn.key.weight.view(H, -1, width)
        v = attn.value.weight.view(H, d, width)  # (head, value_dim, width)
        o = attn.out.weight.view(width, H, d)  # (width, head, value_dim)
        for head, (query_slot, target, sign) in enumerate(roles):
            q[head, :d, S[query_slot]] = a * eye
            k[head, :d, S["xprev"]] = b * eye
            v[head, :, S["r"]] = eye
            if shift:  # q.k gains 1 * (-c)
                q[head, d, S["one"]] = 1.0
                k[head, d, S["one"]] = -log_scale
            o[S[target], head, :] = sign * gain * eye
        if block.mlp is not None:  # r <- r - eta lambda (relu(r) - relu(-r)) = r - eta lambda r
            block.mlp.up.weight[:d, S["r"]] = eye
            block.mlp.up.weight[d:, S["r"]] = -eye
            block.mlp.down.weight[S["r"], :d] = -ridge_gain * eye
            block.mlp.down.weight[S["r"], d:] = ridge_gain * eye

    model.readout.weight[:, S["p"]] = eye


def _previous_token_layer(model: CausalTransformer, S: dict, d: int, prev_beta: float | None,
                          positional: str) -> None:
    """Query W_q pos_t = c pos_{t-1} (c = 1 linear, prev_beta softmax), key pos_s, value x_s -> x_{t-1} slot."""
    attn = model.prev.attn
    P = model.config.d_pos
    if positional == "onehot":  # (shift pos_t)[i] = pos_t[i + 1]: e_t -> e_{t-1}, e_0 -> 0
        rotate = torch.diag(torch.ones(P - 1, dtype=torch.float64), 1)
    else:  # (sin w(t-1), cos w(t-1)) = [[cos w, -sin w], [sin w, cos w]] (sin wt, cos wt)
        w = sinusoidal_frequencies(P)
        blocks = torch.stack([torch.stack([w.cos(), -w.sin()], -1), torch.stack([w.sin(), w.cos()], -1)], -2)
        rotate = torch.block_diag(*blocks)
    attn.query.weight[:, S["pos"]] = (1.0 if prev_beta is None else prev_beta) * rotate
    attn.key.weight[:, S["pos"]] = torch.eye(P, dtype=torch.float64)
    attn.value.weight[:, S["xcur"]] = torch.eye(d, dtype=torch.float64)
    attn.out.weight[S["xprev"], :] = torch.eye(d, dtype=torch.float64)


def _check(dim, depth, step, beta, sigma, ridge, tokens, prev_beta, positional, log_scale, kernel) -> None:
    for name, value in (("dim", dim), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "dim"):
            raise ValueError(f"{name} must be an integer >= {int(name == 'dim')}, got {value!r}")
    for name, value, low in (("step", step, 0.0), ("ridge", ridge, 0.0), ("log_scale", log_scale, 0.0)):
        if not (math.isfinite(value) and value >= low):
            raise ValueError(f"{name} must be a finite number >= {low:g}, got {value!r}")
    if not math.isfinite(beta) or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"beta must be finite and sigma finite > 0, got beta={beta!r}, sigma={sigma!r}")
    if step > 0 and math.log(step) + log_scale > math.log(torch.finfo(torch.float64).max):
        raise ValueError(f"step * exp(log_scale) = {step:.3g} * exp({log_scale:.4g}) overflows")
    if log_scale > 0 and kernel != "exp":
        raise ValueError("log_scale applies to the exp kernel only")
    if tokens not in ("augmented", "raw"):
        raise ValueError(f"unknown tokens {tokens!r}; choose one of augmented, raw")
    if prev_beta is not None and not (math.isfinite(prev_beta) and prev_beta > 0):
        raise ValueError(f"prev_beta must be a finite number > 0, got {prev_beta!r}")
    if positional == "sinusoidal" and prev_beta is None:
        raise ValueError("sinusoidal positions need softmax previous-token attention: give prev_beta")


def run_constructed(
    x: Tensor,
    *,
    kernel: str,
    beta: float,
    sigma: float,
    depth: int,
    step: float | Tensor | Sequence[float],
    ridge: float,
    tokens: str,
    prev_beta: float | None = None,
) -> Tensor:
    """What ``ckd.predict(backend='transformer')`` calls: x (B, T, d) already validated; step None
    means the SPEC default step computed from x, a number one step, a vector (T,) per-row steps
    (SPEC §10; eta_0 unused: ``step_rows``). Returns predictions (B, T, d).

    Builds ``construct(...)`` for x (max_len = T; ``exp`` rescaled by the batch's largest
    ``log_scale`` of ``ckd.kernels.causal_matrices``) and runs it under ``no_grad``. Like the
    descent backend, warns ``StabilityWarning`` for a step outside the convergence region
    (|1 - eta_t (R[t,t] + lambda)| < 1 on every row) or when the residuals r_l (read from the r
    slot of every layer) grow enough to eat the dtype's precision, and raises
    ``FloatingPointError`` if the output is not finite.
    """
    check_kernel(kernel)
    if not isinstance(depth, int):
        raise ValueError(f"the transformer needs a finite integer depth, got {depth!r}")
    B, T, d = x.shape
    rows = None if step is None else step_rows(step)
    if rows is not None and len(rows) != T:
        raise ValueError(f"per-row steps have length {len(rows)} but the sequences have T = {T} rows")
    mats = causal_matrices(x, kernel, beta, sigma)
    diag = diagonal(mats)
    log_scale = float(mats.log_scale.max()) if kernel == "exp" and T > 1 else 0.0
    common = dict(dim=d, depth=depth, beta=beta, sigma=sigma, ridge=ridge, tokens=tokens, prev_beta=prev_beta,
                  dtype=x.dtype, log_scale=log_scale)
    if rows is not None:
        if depth > 0 and not _rows_converge(diag, mats.log_scale, rows, ridge):
            _warn_outside("per-row step eta_t", "eta_t", "on some row of this input")
        model = construct(kernel, step=rows, **common)
    else:
        if step is None:  # in log units: exact also where eta underflows (ckd.descent.descend)
            log_step = default_log_step_of(diag, mats.log_scale, ridge, exact_log_diagonal(x, kernel, beta))
        else:
            step = float(step)
            log_step = math.log(step) if step > 0 else -math.inf
        if depth > 0 and not converges(diag, mats.log_scale, log_step, ridge):
            _warn_outside(f"step {format_step(log_step)}", "eta", "of this input")
        model = construct(kernel, step=math.exp(log_step), max_len=max(T, 1), **common,
                          log_step=log_step if step is None and log_step > -math.inf else None)
    model = model.to(x.device)
    with torch.no_grad():
        pred, hidden = model(x, return_hidden=True)
    # the same overflow error and non-normal growth warning as the descent: max_l |r_l| / |y| (rows >= 1)
    r = slots(d)["r"]
    r_max = max(float(h[:, 1:, r].abs().max()) for h in hidden[-(depth + 1):]) if T > 1 else 0.0
    check_growth(pred, r_max, float(x[:, 1:].abs().max()) if T > 1 else 0.0)
    return pred


def _warn_outside(what: str, eta: str, where: str) -> None:
    warnings.warn(f"{what} is outside the convergence region |1 - {eta} (R[t,t] + lambda)| < 1 {where}; "
                  "the constructed transformer's output diverges as depth grows", StabilityWarning, stacklevel=4)


def _rows_converge(diag: Tensor, log_scale: Tensor, rows: Tensor, ridge: float) -> bool:
    """|1 - eta_t (R[t,t] + lambda)| < 1 for every row t >= 1 and sequence, tested as
    0 < eta_t (R[t,t] + lambda) < 2 (``converges`` with one step per row): diag (B, T-1) in stored
    units, log_scale (B,) the scales m, rows (T,) the per-row steps in true units. Rows with
    R[t,t] + lambda = 0 are left out (their residual never reaches a prediction)."""
    total = diag + ridge * torch.exp(-log_scale)[:, None]
    eta = rows[1:].to(diag.dtype).to(diag.device)
    product = torch.exp(eta.log() + log_scale[:, None] + total.log())  # in logs: e^m (R[t,t] + ...) may overflow
    return bool((((product > 0) & (product < 2)) | (total == 0)).all())
