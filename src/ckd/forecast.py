"""In-context forecasting of a raw trajectory, strictly causally (``ckd forecast``).

Multi-step forecasts (``horizon=H``: the H states after a context, by autoregressive rollouts)
are in ``ckd.rollout``; ``forecast`` and ``forecast_details`` dispatch to it. The rest of this
module is the one-step forecaster:

``forecast(x)`` takes a trajectory (T, d) or (B, T, d) in the user's units and returns
an array of the same shape whose row t forecasts x_{t+1} from rows x_0..x_t only:
the scaling, the model and every setting are chosen from the prefix.

Causal scaling. Rows are cut into blocks [1, 2), [2, 4), [4, 8), ..., [2^k, 2^{k+1}).
Rows of the block starting at c are forecast in the units z = (x - m_c) / s_c where
m_c, s_c are the per-coordinate mean and standard deviation of x_0..x_c (a zero
standard deviation -- a coordinate constant so far -- is replaced by 1: the coordinate
is centred, not divided). The model of that block is fitted on the prefix in those
units. Doubling blocks cost at most twice one fit on the whole trajectory.

Methods (``METHODS``), all on the pairs (z_{s-1} -> z_s), s <= t:

    krr        the default: kernel ridge regression on the prefix (ckd.baselines.kernel_ridge,
               gaussian; 29x lower median error than ckd on the 41-system benchmark, docs/forecast.md)
    ckd        one layer of causal kernel descent with the gaussian kernel (depth 1, eta = 1:
               the prediction head P v, P[t, s] = k(z_t, z_{s-1})) whose value channels carry
               the local moments v_s = (phi phi^T, phi dz^T), phi = (1, z_{s-1}), dz = z_s - z_{s-1};
               the read-out solves the local linear system
                   (M_t + lambda M_t[0, 0] J) c_t = V_t,   J = diag(0, 1, ..., 1)
               and forecasts z_t + (1, z_t) c_t (kernel-weighted local linear regression of
               the increment). Depth "inf" uses the Kaczmarz sweep instead (ckd.descent) with
               the normalised read-out z_t + (P alpha)_dz / (P alpha)_1.
    ols        affine least squares on the prefix (ckd.baselines.least_squares on (z, 1), ridge 1e-6)
    analogues  successor of the k nearest earlier states (ckd.baselines.analogues)
    last       x_t
    transformer  a Transformer trained by ``ckd train`` (``checkpoint=``), run in float64 on the
               standardised prefix z of each block; its dim must be the trajectory's d

Causal selection of settings. A method with a free bandwidth sigma or ridge lambda runs
every setting of its grid (``GRIDS``) as an "expert"; row t uses the expert with the
smallest sum of clipped one-step errors min(|z^_{s+1} - z_{s+1}|, 1) over rows s < t
(errors already observed at time t; follow the leader). Passing sigma or ridge fixes it.

Guard. A forecast that is not finite, or leaves the prefix's range widened by its width
plus one standard deviation on either side, is replaced by x_t (counted in ``fallbacks``).
Row 0 (no pair yet) is x_0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .baselines import analogues, kernel_ridge, least_squares
from .descent import StabilityWarning, infinite_depth
from .kernels import CausalMatrices, causal_mask, scores, shift_gram
from .names import (  # noqa: F401 - public here too
    CHOICE_METHOD,
    DEFAULT_METHOD,
    DEFAULT_ROLLOUT_METHOD,
    FORECAST_METHODS,
    USED_BY,
    check_used,
    default_method,
)
from .reservoir import reservoirpy
from .rollout import ROLLOUT_METHODS, Rollout, check_embed, check_horizon, min_context, rollout
from .threads import threads_for
from .validation import MAX_INT, as_batch, check_fits, check_int, check_integer, check_number, check_squares

METHODS = FORECAST_METHODS
# DEFAULT_METHOD (krr) is the default of one-step forecasts, DEFAULT_ROLLOUT_METHOD (krr-or-parrot) of rollouts:
# the best measured in each (docs/forecast.md)

# Expert grids (standardised units): every combination is an expert.
GRIDS = {
    "ckd": {"sigma": (0.01, 0.02, 0.05, 0.1, 0.2, 0.5), "ridge": (1e-6, 1e-3)},
    "ckd-inf": {"sigma": (0.1, 0.3), "ridge": (1e-2,)},
    "krr": {"sigma": (0.3, 1.0, 3.0), "ridge": (1e-6, 1e-3)},
}
CLIP = 1.0  # errors are clipped at one standard deviation before they are summed
MAX_LAYERS = 2**16  # ckd --layers: L applications of the kernel matrix (the study goes to 256)


@dataclass
class Forecast:
    """pred (B, T, d) in user units; choice (B, T) index of the expert used per row (-1 for
    row 0 and fallbacks); experts: their settings; fallbacks: rows replaced by x_t."""

    pred: Tensor
    choice: Tensor
    experts: list[dict]
    fallbacks: int


def blocks(T: int) -> list[tuple[int, int]]:
    """[1, 2), [2, 4), [4, 8), ...: row t of block [a, b) is scaled with rows 0..a (row 0 is x_0)."""
    out, a = [], 1
    while a < T:
        b = min(2 * a, T)
        out.append((a, b))
        a = b
    return out


def causal_scale(x: Tensor, upto: int) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (B, 1, d) of rows 0..upto; a zero std becomes 1."""
    head = x[:, : upto + 1]
    mean = head.mean(1, keepdim=True)
    std = head.std(1, unbiased=False, keepdim=True)
    tiny = 1e-12 * (1.0 + mean.abs())
    return mean, torch.where(std > tiny, std, torch.ones_like(std))


def _increments(z: Tensor) -> Tensor:
    """dz with dz_0 = 0, dz_s = z_s - z_{s-1}."""
    dz = torch.zeros_like(z)
    dz[:, 1:] = z[:, 1:] - z[:, :-1]
    return dz


def _gaussian_P(z: Tensor, sigma: float, half_sqdist: Tensor | None = None) -> Tensor:
    """The causal prediction matrix P[t, s] = exp(-|z_t - z_{s-1}|^2 / (2 sigma^2)), 1 <= s <= t."""
    P, _ = shift_gram(_gaussian_gram(z, sigma, half_sqdist))
    return P * causal_mask(z.shape[1], z.device)


def _gaussian_gram(z: Tensor, sigma: float, half_sqdist: Tensor | None = None) -> Tensor:
    """G[i, j] = exp(-|z_i - z_j|^2 / (2 sigma^2)), with weights below e^-600 set to 0 exactly
    (subnormal numbers would slow every later product a hundredfold)."""
    S = (scores(z, z, "gaussian", sigma=1.0) if half_sqdist is None else half_sqdist) / (sigma * sigma)
    return torch.where(S > -600.0, S, torch.full_like(S, -math.inf)).exp()


def ckd_local_linear(z: Tensor, sigma: float, ridge: float, half_sqdist: Tensor | None = None) -> Tensor:
    """Depth-1 gaussian CKD with local-moment values and a local linear read-out (module doc).
    z: (B, T, d) standardised; returns (B, T, d); rows with no weight fall back to z_t."""
    B, T, d = z.shape
    phi = torch.cat([torch.ones_like(z[..., :1]), z], -1)  # (1, z_t)
    key = torch.zeros_like(phi)
    key[:, 1:] = phi[:, :-1]  # phi(z_{s-1}) carried by pair s; pair 0 does not exist
    dz = _increments(z)
    values = torch.cat([(key[..., :, None] * key[..., None, :]).flatten(2),
                        (key[..., :, None] * dz[..., None, :]).flatten(2)], -1)
    q = _gaussian_P(z, sigma, half_sqdist) @ values  # one CKD layer: p = P v
    M = q[..., : (d + 1) ** 2].reshape(B, T, d + 1, d + 1)
    V = q[..., (d + 1) ** 2:].reshape(B, T, d + 1, d)
    mass = M[..., 0, 0]
    J = torch.eye(d + 1, dtype=z.dtype, device=z.device)
    J[0, 0] = 0.0
    tiny = 1e-280
    A = M + (ridge * mass + tiny)[..., None, None] * J + tiny * torch.eye(d + 1, dtype=z.dtype, device=z.device)
    coef, info = torch.linalg.solve_ex(A, V)
    step = (phi[..., None, :] @ coef)[..., 0, :]
    ok = (info == 0)[..., None] & (mass > 1e-250)[..., None] & torch.isfinite(step)
    return z + torch.where(ok, step, torch.zeros_like(step))


def ckd_sweep_normalised(z: Tensor, sigma: float, ridge: float, half_sqdist: Tensor | None = None) -> Tensor:
    """Depth-inf gaussian CKD (one Kaczmarz sweep, ``ckd.descent.infinite_depth``) on the
    targets (dz, 1); forecast z_t + (P alpha)_dz / (P alpha)_1 (normalised read-out)."""
    P, R = shift_gram(_gaussian_gram(z, sigma, half_sqdist))
    mask = causal_mask(z.shape[1], z.device)
    mats = CausalMatrices(P * mask, R * mask, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device))
    one = torch.ones_like(z[..., :1])
    one[:, 0] = 0.0
    q = infinite_depth(mats, torch.cat([_increments(z), one], -1), ridge)
    den = q[..., -1:]
    ok = den.abs() > 1e-3
    return z + torch.where(ok, q[..., :-1] / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def _experts(method: str, sigma: float | None, ridge: float | None, depth: Any) -> list[dict]:
    if method == "ckd" and depth == "inf":
        grid = GRIDS["ckd-inf"]
    elif method in ("ckd", "krr"):
        grid = GRIDS[method]
    else:
        return [{}]
    sigmas = grid["sigma"] if sigma is None else (sigma,)
    ridges = grid["ridge"] if ridge is None else (ridge,)
    return [{"sigma": s, "ridge": r} for s in sigmas for r in ridges]


def _run_experts(z: Tensor, method: str, experts: list[dict], *, k: int, depth: Any,
                 model: torch.nn.Module | None = None) -> Tensor:
    """Forecasts of every expert on the standardised prefix z: (G, B, n, d), NaN where one fails."""
    if method == "transformer":
        with torch.no_grad():
            return model(z)[None]
    if method == "last":
        return z[None].clone()
    if method == "analogues":
        return analogues(z, k)[None]
    if method == "ols":
        one = torch.ones_like(z[..., :1])
        return least_squares(torch.cat([z, one], -1), ridge=1e-6)[None, ..., :-1]
    half_sqdist = scores(z, z, "gaussian", sigma=1.0)
    outs = []
    for e in experts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StabilityWarning)  # a poor expert is scored, not reported
                if method == "krr":
                    outs.append(kernel_ridge(z, "gaussian", sigma=e["sigma"], ridge=e["ridge"]))
                elif depth == "inf":
                    outs.append(ckd_sweep_normalised(z, e["sigma"], e["ridge"], half_sqdist))
                else:
                    outs.append(ckd_local_linear(z, e["sigma"], e["ridge"], half_sqdist))
        except (ValueError, FloatingPointError):  # e.g. a singular Gram matrix for kernel ridge, no ridge
            outs.append(torch.full_like(z, math.nan))
    return torch.stack(outs)


def check_forecast_options(method: str, sigma: Any, ridge: Any, k: Any, depth: Any, checkpoint: Any = None) -> dict:
    """Validate the options of ``forecast``; return them normalised."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if (method == "transformer") != (checkpoint is not None):
        raise ValueError("method 'transformer' needs a checkpoint of ckd train, and only it takes one")
    k = check_int(k, "k", minimum=1)
    if str(depth).strip().lower() in ("inf", "infinity"):
        depth = "inf"
    elif str(depth).strip() in ("1", "1.0"):
        depth = 1
    else:
        raise ValueError(f"forecast depth must be 1 or inf, got {depth!r}")
    if depth == "inf" and method != "ckd":
        raise ValueError(f"depth applies to method ckd, not {method} (the default is krr): give method ckd")
    return dict(
        method=method,
        sigma=None if sigma is None else check_number(sigma, "sigma", minimum=0.0, strict=True),
        ridge=None if ridge is None else check_number(ridge, "ridge", minimum=0.0),
        k=int(k),
        depth=depth,
        checkpoint=checkpoint,
    )


# Peak bytes per (B T^2) float64 entry, measured with ru_maxrss for T = 1000 and 2000, d = 1
# (ckd 118 B, krr 136 B, ckd depth inf 73 B, analogues 21 B at T = 2000), rounded up.
_BYTES_PER_T2 = {"ckd": 128, "ckd-inf": 80, "krr": 144, "analogues": 24, "transformer": 0, "ols": 0, "last": 0}


def memory_needed(method: str, depth: Any, B: int, T: int, d: int) -> int:
    """Estimated peak bytes of ``forecast_details``: the (T, T) matrices of the method and the
    (B, T, (d+1)^2) local moments of ckd, with room for the experts' (G, B, T, d) forecasts."""
    key = "ckd-inf" if method == "ckd" and depth == "inf" else method
    return _BYTES_PER_T2[key] * B * T * T + 64 * B * T * (d + 1) ** 2 * 8


def forecast_details(x: Tensor, method: str | None = None, *, horizon: Any = None, univariate: bool = False,
                     embed: Any = 5, sigma: float | None = None, ridge: float | None = None, k: int = 1,
                     depth: Any = 1, sweeps: Any = None, checkpoint: Any = None, layers: Any = None
                     ) -> Forecast | Rollout:
    """``forecast`` on a float64 tensor x (B, T, d), with its details: for one-step forecasts
    (horizon None) a ``Forecast`` (the expert chosen at each row; ``fallbacks`` counts the rows
    the guard replaced by x_t, and a ``RuntimeWarning`` gives that count); for a horizon H a
    ``ckd.rollout.Rollout`` (the settings chosen per sequence and the steps ``stopped``).
    method None: ``default_method(horizon)``."""
    method = default_method(horizon) if method is None else method
    check_used(method, horizon, sigma=sigma, ridge=ridge, k=k, embed=embed, univariate=univariate)
    if horizon is not None:
        return _rollout_details(x, method, horizon, univariate, embed, sigma, ridge, k, depth, sweeps, checkpoint,
                                layers)
    check_squares(x)  # every one-step method standardises: x^2 must be finite
    if univariate or method in ("parrot", "mean", "nvar", "esn") or sweeps is not None or layers is not None:
        raise ValueError("univariate, sweeps, layers and the methods parrot, mean, nvar and esn apply to multi-step "
                         "forecasts: give a horizon")
    opts = check_forecast_options(method, sigma, ridge, k, depth, checkpoint)
    method, depth = opts["method"], opts["depth"]
    B, T, d = x.shape
    if T < 3:
        raise ValueError(f"a trajectory needs at least 3 rows to forecast from pairs, got {T}")
    check_fits(memory_needed(method, depth, B, T, d), f"forecast --method {method} on B={B}, T={T}, d={d}",
               "forecast a shorter trajectory (smaller T: these methods build (T, T) matrices), or use "
               "--method ols or last (linear in T)", x.device)
    model = None
    if method == "transformer":
        from .pretrained import trained_model  # lazy: loading a model needs the training code

        model = trained_model(checkpoint, x.shape, x.device)
    experts = _experts(method, opts["sigma"], opts["ridge"], depth)
    G = len(experts)
    preds = torch.full((G, B, T, d), math.nan, dtype=x.dtype, device=x.device)
    scale = torch.ones(B, T, d, dtype=x.dtype, device=x.device)
    with threads_for(B * T**3 if method == "krr" else 2 * B * T * T * (d + 1) * (2 * d + 1)):  # ckd.threads
        for a, b in blocks(T):
            mean, std = causal_scale(x, a)
            z = (x[:, :b] - mean) / std
            out = _run_experts(z, method, experts, k=opts["k"], depth=depth, model=model)[:, :, a:b]
            preds[:, :, a:b] = out * std + mean
            scale[:, a:b] = std
    # follow the leader on the clipped errors observed before row t
    err = ((preds[:, :, :-1] - x[None, :, 1:]) / scale[None, :, :-1]).norm(dim=-1)
    err = torch.nan_to_num(err, nan=math.inf).clamp_max(CLIP)  # (G, B, T-1)
    seen = torch.cat([torch.zeros_like(err[..., :1]), torch.cumsum(err, -1)], -1)  # rows s < t, (G, B, T)
    choice = seen.argmin(0)  # ties go to the first expert
    pred = torch.gather(preds, 0, choice[None, ..., None].expand(1, B, T, d))[0]
    # guard: finite and within the prefix's range widened by its width plus one std
    lo, hi = torch.cummin(x, 1).values, torch.cummax(x, 1).values
    pad = (hi - lo) + scale
    bad = ~(torch.isfinite(pred) & (pred >= lo - pad) & (pred <= hi + pad)).all(-1)
    bad[:, 0] = True  # row 0 has no pair: x_0
    pred = torch.where(bad[..., None], x, pred)
    choice = torch.where(bad, torch.full_like(choice, -1), choice)
    fallbacks = int(bad[:, 1:].sum())
    if fallbacks:
        warnings.warn(f"{fallbacks} of {B * (T - 1)} forecasts were not finite or left the range seen so far: "
                      "replaced by x_t (the last value)", RuntimeWarning, stacklevel=2)
    return Forecast(pred, choice, experts, fallbacks)


SQUARE_FREE = ("last", "mean", "parrot")  # rollouts exact at any scale: no x^2 (parrot compares scaled windows)


def _rollout_details(x: Tensor, method: str, horizon: Any, univariate: Any, embed: Any, sigma: Any, ridge: Any,
                     k: Any, depth: Any, sweeps: Any, checkpoint: Any, layers: Any = None) -> Rollout:
    """Validate the options of a multi-step forecast and run ``ckd.rollout.rollout``."""
    if method not in ROLLOUT_METHODS:
        raise ValueError(f"unknown method {method!r} for a horizon; choose one of {', '.join(ROLLOUT_METHODS)}")
    if (method == "transformer") != (checkpoint is not None):
        raise ValueError("method 'transformer' needs a checkpoint of ckd train, and only it takes one")
    H = check_horizon(horizon)
    D = check_embed(embed)
    if str(depth).strip() not in ("1", "1.0"):
        raise ValueError("depth applies to one-step forecasts; a rollout's ckd is depth inf with K sweeps (sweeps=)")
    k = check_int(k, "k", minimum=1)
    for name, value in (("sweeps", sweeps), ("layers", layers)):
        if value is not None and method != "ckd":
            raise ValueError(f"{name} applies to method ckd, not {method} (the default is krr): give method ckd")
    if sweeps is not None and layers is not None:
        raise ValueError("give sweeps (Gauss-Seidel sweeps) or layers (layer-bounded iteration), not both")
    if layers is not None:
        layers = check_integer(layers, "layers", 1, MAX_LAYERS)
    if sweeps is not None:
        sweeps = check_integer(sweeps, "sweeps", 1, MAX_INT, "in 1 .. 2**63 - 1")
    univariate = bool(univariate)
    if method not in SQUARE_FREE:
        check_squares(x)
    B, T, d = x.shape
    series = B * d if univariate else B
    gram = 6 * T * T * 8 if method in ("ckd", "krr", CHOICE_METHOD) else 0  # the (T, T) Gram, its factors and doublings
    check_fits(series * gram + 4 * B * (T + H) * d * 8, f"a {H}-step forecast --method {method} on B={B}, T={T}, d={d}",
               "use a shorter context or horizon (ckd and krr build (T, T) matrices), or --method parrot, "
               "analogues or last", x.device)
    if method in ("nvar", "esn"):
        reservoirpy()  # one clear error before any work when the extra is missing
    need = min_context(method, univariate, D)
    if T < need:
        setting = f"{'univariate, ' if univariate else ''}embed {D}" if method == "parrot" or univariate else ""
        raise ValueError(f"method {method}{f' ({setting})' if setting else ''} needs a context of at least "
                         f"{need} rows, got {T}")
    model = None
    if method == "transformer":
        shape = (x.shape[0] * x.shape[2], T + H, 1) if univariate else (x.shape[0], T + H, x.shape[2])
        from .pretrained import trained_model  # lazy: loading a model needs the training code

        model = trained_model(checkpoint, shape, x.device)
    return rollout(x, H, method, univariate=univariate, embed=D,
                   sigma=None if sigma is None else check_number(sigma, "sigma", minimum=0.0, strict=True),
                   ridge=None if ridge is None else check_number(ridge, "ridge", minimum=0.0),
                   sweeps=sweeps, k=k, model=model,
                   layers=layers)


def forecast(x: Any, method: str | None = None, *, horizon: Any = None, univariate: bool = False, embed: Any = 5,
             sigma: float | None = None, ridge: float | None = None, k: int = 1, depth: Any = 1,
             sweeps: Any = None, checkpoint: Any = None, layers: Any = None) -> Any:
    """Forecasts of a raw trajectory from its past only.

    horizon None (one step): row t forecasts x_{t+1} from rows 0..t; x (T, d) or (B, T, d),
    T >= 3, returns the same shape. method: krr (default) | ckd | analogues | ols | last |
    transformer; sigma, ridge: fix the bandwidth / ridge in standardised units (default: chosen
    causally per row from ``GRIDS``); depth: 1 or "inf" for ckd. See the module doc.

    horizon H (an integer >= 1): the H states after the context x, (H, d) for (T, d) and
    (B, H, d) for (B, T, d), by an autoregressive rollout (``ckd.rollout``). method:
    krr-or-parrot (default: per sequence krr or parrot, whichever held-out rollouts on the context
    prefer, ``ckd.choice``; the best on the full benchmark) | krr | ckd | analogues | parrot | last | mean |
    transformer | nvar | esn (reservoirpy);
    univariate: forecast each coordinate from its own past through a delay embedding of
    dimension ``embed`` (also the window of parroting, default 5); sigma, ridge (ckd, krr, krr-or-parrot; ridge
    also nvar, esn) and sweeps (ckd) fix settings (default: chosen from the context by held-out
    rollouts). layers L (ckd): L layers of an iteration of ``ckd.rollout.LAYER_ITERATIONS``
    (``ckd.iterations``, chosen from the context) instead of K Gauss-Seidel sweeps, each layer one
    application of the kernel matrix.

    k: neighbours for analogues; checkpoint: a ``ckd train`` checkpoint.pt, or "pretrained:NAME" for a
    model of ``ckd.pretrained`` (method transformer).
    Numpy in, numpy out (float64); a tensor stays a tensor.
    """
    batch, unbatched = as_batch(x, torch.float64, squares=False)  # forecast_details: for the methods that square
    out = forecast_details(batch, method, horizon=horizon, univariate=univariate, embed=embed, sigma=sigma,
                           ridge=ridge, k=k, depth=depth, sweeps=sweeps, checkpoint=checkpoint, layers=layers).pred
    out = out[0] if unbatched else out
    return out if isinstance(x, Tensor) else out.cpu().numpy()
