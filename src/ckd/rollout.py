"""Multi-step forecasts from a context: autoregressive rollouts (SPEC §8; ``ckd forecast --horizon``).

Given a context x_0..x_{T-1} (B, T, d) and a horizon H, every method returns x^_T..x^_{T+H-1}
(B, H, d). A rollout is autoregressive: predict x^_T, append it as the next token, predict
x^_{T+1} from the longer sequence, and so on, as a generating Transformer does. Every
setting (scaling, bandwidth, ridge, sweeps, delay embedding) is chosen from the context alone,
then frozen for the whole rollout.

Units. The context is standardised per coordinate, z = (x - m) / s with m, s the mean and
standard deviation of the context (a zero standard deviation becomes 1); forecasts are
mapped back to x's units.

Methods (``ROLLOUT_METHODS``):

    ckd        depth-inf CKD with the gaussian kernel on delay tokens
               u_t = (z_t, z_{t-l}, ..., z_{t-(D-1) l}) (lag l), run on the context repeated K times with
               the seam pairs masked (SPEC §7: K ridge-aware Gauss-Seidel sweeps on
               (G + lambda I) beta = Y, ``ckd.descent.gauss_seidel``), followed by the generated
               tokens. Pairs (u_{s-1} -> z_s - z_{s-1}) carry the increments; the forecast is
                   z^_{t+1} = z_t + sum_s k(u_t, u_{s-1}) beta_s,
                   k(a, b) = exp(-|a - b|^2 / (2 sigma^2 D d)).
               A generated token adds the pair (u_t -> z^_{t+1} - z_t), whose residual is zero
               by construction, so its coefficient is 0 and beta stays fixed: the rollout
               iterates the fitted map (tested against the literal append-and-repredict loop).
               The pairs are thinned to every ``stride``-th step counted back from the end (the
               others masked): fewer near-duplicate keys, a cheaper and faster-converging
               sweep. K sweeps are computed exactly by repeated squaring
               (``ckd.descent.gauss_seidel_doubling``). sigma, lambda, K and D (and the lag,
               univariate) are chosen from the context (below).
    krr        the same with K = inf, kernel ridge regression beta = (G + lambda I)^{-1} Y
               (appending a pair that the fit already interpolates leaves the ridge solution
               unchanged: the rollout iterates the fitted map exactly).
    krr-or-parrot  the default (``DEFAULT_ROLLOUT_METHOD``): per sequence (per coordinate, univariate)
               krr or parrot, whichever has the smaller held-out score on the context (below;
               ``ckd.choice``); its output is that method's, bit for bit. The best method measured
               on the whole SPEC §8 benchmark (docs/forecast.md), hence the default.
    analogues  the literal loop: the next state is the successor of the earlier state nearest
               (Euclidean, standardised units) to the current one, among the context and the
               tokens generated so far (mean of the k nearest with ``k``; lag 1).
    parrot     context parroting (``ckd.parroting.parrot``), always per coordinate: a
               whole horizon by construction.
    last       x^_{T+h} = x_{T-1}.
    mean       x^_{T+h} = the mean of the context.
    transformer  a Transformer of ``ckd train`` (``checkpoint``) run on the standardised sequence
               (context + generated tokens) at every step; its last row is the next token.
    nvar, esn  the field's baselines from reservoirpy (``ckd.reservoir``: next-generation
               reservoir computing and an echo state network of 500 units), settings chosen
               from the context by held-out rollouts as for krr.

Univariate mode (``univariate=True``): each coordinate is forecast from its own past only, as a
(T, 1) series; ckd, krr and analogues then use the delay embedding of dimension D = ``embed``
(default 5, as parroting), ckd and krr with a lag chosen among ``UNIVARIATE_LAGS``. In the
full-state mode the whole x_t is the token (lag 1) and ckd chooses D among ``GRIDS``.

How ckd (and krr) choose their settings, from the context alone (``ckd.heldout``). The end of
the context is held out: for each origin o in ``ORIGINS`` (steps before the end), the model is fitted on
z_0..z_{T-1-o} and rolled out for o steps; its score is the mean over origins and steps of the
clipped error min(|z^ - z|, 1) (standardised units). The setting with the smallest score is
refitted on the whole context. Only context values are ever read.

Non-finite rollouts. If a method's next token is not finite (e.g. a diverging transformer),
the rollout stops being extended: the remaining steps repeat the last finite token, a
``RuntimeWarning`` says so, and ``Rollout.stopped`` counts the filled steps per sequence.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .choice import chosen_setting, parrot_heldout, take_parrot
from .descent import gauss_seidel, gauss_seidel_doubling
from .heldout import CLIP, ORIGINS, best, heldout_error, heldout_origins  # noqa: F401 - ORIGINS, CLIP: public here too
from .iterations import layer_iterates
from .names import (  # noqa: F401 - public here too
    CHOICE_METHOD,
    DEFAULT_METHOD,
    DEFAULT_ROLLOUT_METHOD,
    RESERVOIR_METHODS,
    ROLLOUT_METHODS,
)
from .parroting import SIMPLE_METHODS, simple_rollout
from .reservoir import min_context as reservoir_min_context
from .reservoir import reservoir_rollout
from .threads import threads_for
from .validation import MAX_INT, check_integer

# Settings searched by ckd / krr in the full-state setting (standardised units). sigma is per
# coordinate of the token (the kernel divides by D d), lambda relative to G[s, s] = 1.
GRIDS = {
    "ckd": {"sigma": (0.5, 1.0), "ridge": (1e-6,), "sweeps": (2**12, 2**16, 2**20), "embed": (1, 2),
            "stride": (2,), "lag": (1,)},
    "krr": {"sigma": (0.5, 1.0, 2.0), "ridge": (1e-8, 1e-6, 1e-4), "sweeps": (None,), "embed": (1, 2),
            "stride": (1,), "lag": (1,)},
    # ckd with L layers (--layers): the solver axis is set to (LAYER_ITERATION, L) by kernel_rollout
    "ckd-layers": {"sigma": (0.5, 1.0), "ridge": (1e-6, 1e-4, 1e-2, 1e-1), "sweeps": (None,), "embed": (1, 2),
                   "stride": (2,), "lag": (1,)},
}
# ckd --layers L chooses among these iterations from the context, with sigma, lambda and D (docs/forecast.md:
# none is best at every L; the preconditioned one is left out: its preconditioner is built outside the layers)
LAYER_ITERATIONS = ("sweeps", "chebyshev", "momentum")
UNIVARIATE_LAGS = (1, 3)  # delay lags searched by ckd / krr in univariate mode (steps; 3 of 30 per Lyapunov time)


@dataclass
class Rollout:
    """pred (B, H, d) in x's units; settings: the setting used for each sequence (for each
    coordinate in univariate mode: a list of d dicts); stopped (B,): steps filled with the last
    finite token after the rollout left the finite numbers (0 when it never did); diagnostics:
    the fit's diagnostics, laid out as settings (``kernel_rollout``; empty dicts for methods
    without a fit)."""

    pred: Tensor
    settings: list = field(default_factory=list)
    stopped: Tensor | None = None
    diagnostics: list = field(default_factory=list)


def check_horizon(horizon: Any) -> int:
    """An integer H >= 1 (NumPy and torch integer scalars included)."""
    return check_integer(horizon, "horizon", 1, MAX_INT, "in 1 .. 2**63 - 1")


def check_embed(embed: Any) -> int:
    """An integer D >= 1 (NumPy and torch integer scalars included)."""
    return check_integer(embed, "embed", 1)


def min_context(method: str, univariate: bool, embed: int) -> int:
    """The shortest context each method can forecast from."""
    if method in ("last", "mean"):
        return 1
    if method == "transformer":
        return 2
    if method == "parrot":
        return embed + 1
    if method == CHOICE_METHOD:
        return max(min_context("krr", univariate, embed), embed + 1)
    if method == "analogues":
        return (embed if univariate else 1) + 1
    if method in RESERVOIR_METHODS:
        return reservoir_min_context(method)
    w = (embed - 1) * max(UNIVARIATE_LAGS) if univariate else max(GRIDS["ckd"]["embed"] + GRIDS["krr"]["embed"]) - 1
    return 2 * (w + 4)  # pairs left after holding out the longest origin


def standardise(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (B, 1, d) of the context; a zero standard deviation becomes 1."""
    mean = x.mean(1, keepdim=True)
    std = x.std(1, unbiased=False, keepdim=True)
    tiny = 1e-12 * (1.0 + mean.abs())
    return mean, torch.where(std > tiny, std, torch.ones_like(std))


# ----------------------------------------------------------------------------- kernel models

def delay_tokens(z: Tensor, D: int, lag: int = 1) -> Tensor:
    """u_t = (z_t, z_{t-lag}, ..., z_{t-(D-1) lag}) for t = (D-1) lag..T-1.
    z: (T, c) -> (T - (D-1) lag, c D)."""
    T, w = z.shape[0], (D - 1) * lag
    return torch.cat([z[w - i * lag: T - i * lag] for i in range(D)], -1)


def _gram(a: Tensor, b: Tensor, width: Tensor) -> Tensor:
    """exp(-|a_i - b_j|^2 / (2 width)) for each width (G,): (G, n, m)."""
    sq = torch.cdist(a, b).square()
    return torch.exp(-sq[None] / (2.0 * width[:, None, None]))


def kernel_pairs(z: Tensor, D: int, stride: int = 1, lag: int = 1) -> tuple[Tensor, Tensor]:
    """The pairs (u_{s-1} -> z_s - z_{s-1}) of the context z (T, c) with delay tokens of dimension D,
    for s = T-1, T-1-stride, ... >= (D-1) lag + 1, in time order: keys (n, c D), targets Y (n, c)."""
    w = (D - 1) * lag
    U = delay_tokens(z, D, lag)
    keys, Y = U[:-1], z[w + 1:] - z[w:-1]
    keep = torch.arange(keys.shape[0] - 1, -1, -stride, device=z.device).flip(0)
    return keys[keep], Y[keep]


def fit_kernel(z: Tensor, D: int, sigmas, ridges, sweeps, stride: int = 1, lag: int = 1
               ) -> tuple[Tensor, Tensor, list[dict]]:
    """Coefficients of the ckd / krr maps on the context z (T, c) with delay D, for every
    (sigma, lambda, solver) of the grids, on the pairs (u_{s-1} -> z_s - z_{s-1}) for
    s = T-1, T-1-stride, ... >= D (in time order). A solver of ``sweeps`` is K (K Gauss-Seidel
    sweeps), None (exact kernel ridge) or (iteration, L) (L layers of ``ckd.iterations``; its
    setting then holds "iteration" and "layers", and "sweeps" None). Returns keys (n, c D), beta
    (G, n, c) and the G settings, ordered sigma-major, then lambda, then solver."""
    c = z.shape[1]
    keys, Y = kernel_pairs(z, D, stride, lag)
    n = keys.shape[0]
    betas, settings = [], []
    finite = sorted(k for k in sweeps if isinstance(k, int))
    layered: dict[str, set[int]] = {}
    for k in sweeps:
        if isinstance(k, tuple):
            layered.setdefault(k[0], set()).add(k[1])
    eye = torch.eye(n, dtype=z.dtype, device=z.device)
    for sigma in sigmas:
        Gm = _gram(keys, keys, torch.tensor([sigma * sigma * D * c], dtype=z.dtype))[0]
        for lam in ridges:
            if finite:
                hist = _sweeps(Gm, Y, lam, finite)
            lay = {kind: layer_iterates(Gm, Y, lam, kind, Ls) for kind, Ls in layered.items()}
            for K in sweeps:
                s = {"sigma": sigma, "ridge": lam, "sweeps": K, "embed": D, "stride": stride, "lag": lag}
                if K is None:
                    L, info = torch.linalg.cholesky_ex(Gm + lam * eye)
                    beta = torch.cholesky_solve(Y, L) if int(info) == 0 else torch.full_like(Y, math.nan)
                elif isinstance(K, tuple):
                    beta = lay[K[0]][K[1]]
                    s.update(sweeps=None, iteration=K[0], layers=K[1])
                else:
                    beta = hist[K]
                betas.append(beta)
                settings.append(s)
    return keys, torch.stack(betas), settings


def _sweeps(G: Tensor, Y: Tensor, ridge: float, Ks: list[int]) -> dict[int, Tensor]:
    """beta^K for each K of ``Ks`` (sorted): plain sweeps while they are cheaper than repeated
    squaring, else ``gauss_seidel_doubling`` (every K must then be a power of two or the last)."""
    n, c = Y.shape
    K = Ks[-1]
    if 2 * K * c <= (4 + 2 * math.log2(K)) * n or any(k & (k - 1) for k in Ks[:-1]):
        hist = gauss_seidel(G, Y, ridge, K, return_all=True)
        return {k: hist[k - 1] for k in Ks}
    return gauss_seidel_doubling(G, Y, ridge, K)


def roll_kernel(keys: Tensor, beta: Tensor, widths: Tensor, hist: Tensor, H: int, D: int = 1, lag: int = 1
                ) -> Tensor:
    """Iterate z_{t+1} = z_t + sum_s k(u_t, key_s) beta_s for G maps at once, with delay tokens
    u_t = (z_t, z_{t-lag}, ..., z_{t-(D-1) lag}). hist: (L, c) the last L >= (D-1) lag + 1 states
    (oldest first); returns (G, H, c)."""
    G = beta.shape[0]
    c = hist.shape[1]
    w = (D - 1) * lag
    buf = hist[-(w + 1):][None].expand(G, w + 1, c).clone()  # z_{t-w}..z_t
    idx = torch.arange(w, -1, -lag, device=hist.device)  # newest first
    out = beta.new_empty(G, H, c)
    scale = (-0.5 / widths)[:, None]
    knorm = keys.square().sum(-1)  # |key_s|^2
    keysT = keys.T.contiguous()
    for h in range(H):
        state = buf[:, idx].reshape(G, D * c)
        sq = (state.square().sum(-1, keepdim=True) + knorm - 2.0 * (state @ keysT)).clamp_min(0.0)  # (G, n)
        inc = torch.bmm(torch.exp(sq * scale)[:, None, :], beta)[:, 0]  # (G, c)
        nxt = buf[:, -1] + inc
        out[:, h] = nxt
        buf = torch.cat([buf[:, 1:], nxt[:, None]], 1) if w > 0 else nxt[:, None]
    return out


def _select(z: Tensor, grid: dict) -> tuple[dict, float, int]:
    """The setting of ``grid`` with the smallest clipped held-out rollout error (module doc), its
    score and the number of settings scored."""
    T, c = z.shape
    origins = heldout_origins(T)
    scores: dict[tuple, float] = {}
    for D in grid["embed"]:
        for lag in grid["lag"]:
            for o in origins:
                head, truth = z[: T - o], z[T - o:]
                keys, beta, settings = fit_kernel(head, D, grid["sigma"], grid["ridge"], grid["sweeps"],
                                                  grid["stride"][0], lag)
                widths = torch.tensor([s["sigma"] * s["sigma"] * D * c for s in settings], dtype=z.dtype)
                err = heldout_error(roll_kernel(keys, beta, widths, head, o, D, lag), truth)
                for s, e in zip(settings, err.tolist()):
                    key = tuple(s.items())
                    scores[key] = scores.get(key, 0.0) + e / len(origins)
    top = best(scores)
    return dict(top), scores[top], len(scores)


def kernel_rollout(z: Tensor, H: int, method: str, *, sigma=None, ridge=None, sweeps=None, layers=None,
                   embed=None, stride=None, lag=None, diagnostics: dict | None = None) -> tuple[Tensor, dict]:
    """ckd (sweeps K, or ``layers`` L of one of ``LAYER_ITERATIONS``) or krr (K = inf) rollout of one
    standardised context z (T, c): (H, c). Each argument given fixes that setting; the others are
    chosen by ``_select`` (with ``layers``, the iteration too, on ``GRIDS["ckd-layers"]``). ``diagnostics``,
    when a dict, receives the fit's: ``pairs`` n; ``heldout_error``, the selection score of the
    chosen setting (None when every setting was fixed) and ``settings_scored``; ``fit_residual``
    |Y - G beta| / |Y| (one-step error on the context's pairs) and ``system_residual``
    |Y - (G + lambda I) beta| / |Y| (how far beta is from the ridge solution: rounding for krr)."""
    grid = dict(GRIDS["ckd-layers" if layers is not None else method])
    if layers is not None:
        sweeps = tuple((kind, int(layers)) for kind in LAYER_ITERATIONS)
    fixed = dict(sweeps=sweeps if method == "ckd" else None, sigma=sigma, ridge=ridge, embed=embed, stride=stride,
                 lag=lag)
    grid.update({k: v if isinstance(v, tuple) else (v,) for k, v in fixed.items() if v is not None})
    if any(len(v) > 1 for v in grid.values()):
        chosen, score, scored = _select(z, grid)
    else:
        chosen, score, scored = {k: v[0] for k, v in grid.items()}, None, 1
        if isinstance(chosen["sweeps"], tuple):  # as fit_kernel names a layered solver
            chosen.update(sweeps=None, iteration=chosen["sweeps"][0], layers=chosen["sweeps"][1])
    D, lag = chosen["embed"], chosen["lag"]
    solver = (chosen["iteration"], chosen["layers"]) if "layers" in chosen else chosen["sweeps"]
    keys, beta, _ = fit_kernel(z, D, (chosen["sigma"],), (chosen["ridge"],), (solver,), chosen["stride"], lag)
    widths = torch.tensor([chosen["sigma"] * chosen["sigma"] * D * z.shape[1]], dtype=z.dtype)
    if diagnostics is not None:
        Y = kernel_pairs(z, D, chosen["stride"], lag)[1]
        fit = _gram(keys, keys, widths)[0] @ beta[0]
        norm = float(Y.norm()) or 1.0
        diagnostics.update(pairs=keys.shape[0], heldout_error=score, settings_scored=scored,
                           fit_residual=float((Y - fit).norm()) / norm,
                           system_residual=float((Y - fit - chosen["ridge"] * beta[0]).norm()) / norm)
    return roll_kernel(keys, beta, widths, z, H, D, lag)[0], chosen


# ----------------------------------------------------------------------------- other methods

def analogues_rollout(z: Tensor, H: int, k: int = 1, D: int = 1) -> Tensor:
    """Literal autoregressive analogues on delay tokens of dimension D: at each step the next
    token is the mean successor z_{j+1} of the k earlier tokens u_j (j < t) nearest to u_t,
    searched among the context and the generated tokens. z: (T, c) -> (H, c)."""
    T, c = z.shape
    seq = torch.cat([z, z.new_empty(H, c)])
    for h in range(H):
        t = T - 1 + h
        U = delay_tokens(seq[: t + 1], D)  # u_{D-1}..u_t
        dist = (U[:-1] - U[-1]).norm(dim=-1)
        kk = min(k, dist.numel())
        idx = dist.topk(kk, largest=False).indices + D  # successors z_{j+1}
        seq[t + 1] = seq[idx].mean(0)
    return seq[T:]


def transformer_rollout(z: Tensor, H: int, model: torch.nn.Module) -> Tensor:
    """Run the model on the sequence generated so far; its last row is the next token. z: (B, T, c)."""
    seq = z
    with torch.no_grad():
        for _ in range(H):
            seq = torch.cat([seq, model(seq)[:, -1:]], 1)
    return seq[:, z.shape[1]:]


def _stop_nonfinite(pred: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
    """Replace every step from the first non-finite one by the last finite token (per sequence).
    pred (B, H, d) in x units, last (B, d) the last context row. Returns (pred, filled counts)."""
    bad = ~torch.isfinite(pred).all(-1)  # (B, H)
    first = torch.where(bad.any(1), bad.float().argmax(1), torch.full_like(bad[:, 0], pred.shape[1], dtype=torch.long))
    out = pred.clone()
    for b in range(pred.shape[0]):
        f = int(first[b])
        if f < pred.shape[1]:
            out[b, f:] = out[b, f - 1] if f > 0 else last[b]
    return out, pred.shape[1] - first


def rollout(x: Tensor, horizon: int, method: str = DEFAULT_ROLLOUT_METHOD, *, univariate: bool = False, embed: int = 5,
            sigma: float | None = None, ridge: float | None = None, sweeps: int | None = None, k: int = 1,
            model: torch.nn.Module | None = None, choose_embed: bool = True, layers: int | None = None) -> Rollout:
    """The H tokens after each context x (B, T, d) float64 (module doc). Validated inputs."""
    B, T, d = x.shape
    H = horizon
    none = torch.zeros(B, dtype=torch.long)
    if method in SIMPLE_METHODS:  # NumPy (ckd.parroting): the same bits as ckd forecast's torch-free path
        out, settings = simple_rollout(x.detach().cpu().numpy(), H, method, embed)
        return Rollout(torch.from_numpy(out).to(x.device), settings, none, [{}] * B)
    mean, std = standardise(x)
    z = (x - mean) / std
    if univariate:  # each coordinate on its own: (B d, T, 1)
        zs = z.transpose(1, 2).reshape(B * d, T, 1)
    else:
        zs = z
    settings: list = []
    diagnostics: list = []
    # the thread rule (ckd.threads) on the largest product: ckd's doubling of (T, T) matrices, krr's
    # Cholesky factor of one; then H small steps
    with threads_for(2 * T**3 if method == "ckd" else T**3 // 3):
        if method == "transformer":
            out = transformer_rollout(zs, H, model)
        else:
            outs = []
            for i in range(zs.shape[0]):
                if method in ("ckd", "krr", CHOICE_METHOD):
                    D = embed if univariate else None
                    diag: dict = {}
                    kind = "krr" if method == CHOICE_METHOD else method
                    o, s = kernel_rollout(zs[i], H, kind, sigma=sigma, ridge=ridge, sweeps=sweeps, layers=layers,
                                          embed=D, lag=UNIVARIATE_LAGS if univariate else None, diagnostics=diag)
                    if method == CHOICE_METHOD:
                        s = chosen_setting(s, diag["heldout_error"], parrot_heldout(zs[i], embed), embed)
                    settings.append(s)
                    diagnostics.append(diag)
                elif method in RESERVOIR_METHODS:
                    diag = {}
                    o, s = reservoir_rollout(zs[i], H, method, ridge=ridge, diagnostics=diag)
                    settings.append(s)
                    diagnostics.append(diag)
                else:  # analogues
                    o = analogues_rollout(zs[i], H, k, embed if univariate else 1)
                outs.append(o)
            out = torch.stack(outs)
    if univariate:
        out = out.reshape(B, d, H).transpose(1, 2)
        settings = [settings[b * d:(b + 1) * d] for b in range(B)] if settings else [[{}] * d] * B
        diagnostics = [diagnostics[b * d:(b + 1) * d] for b in range(B)] if diagnostics else [[{}] * d] * B
    elif not settings:
        settings, diagnostics = [{}] * B, [{}] * B
    pred = out * std + mean
    if method == CHOICE_METHOD:  # parroting's own bits where it was chosen
        pred = take_parrot(pred, x, settings, embed, univariate)
    pred, stopped = _stop_nonfinite(pred, x[:, -1])
    if int(stopped.sum()):
        n = int((stopped > 0).sum())
        warnings.warn(f"{method} rollout left the finite numbers on {n} of {B} sequences: stopped there, the "
                      f"remaining {int(stopped.sum())} steps repeat the last finite value", RuntimeWarning,
                      stacklevel=3)
    return Rollout(pred, settings, stopped, diagnostics)
