"""context-length: one-step forecast error vs context length (64 .. 65536) on dysts systems,
with the linear-time paths of ``ckd.linear_time`` (SPEC §9).

Contexts this long are out of reach of the T x T paths (at T = 65536 one P matrix is 32 GiB in
float64); the delta rule (depth inf) runs them in O(T D d).

Data. For each system, B initial conditions are drawn as SPEC §8 does: a 1000-point reference
trajectory (10 points per period for flows) from dysts' default initial condition, and
``np.random.default_rng(seed).choice(1000, B, replace=False)`` of its points. From each, a
trajectory of ``max(contexts) + WINDOW + 1`` points (30 points per dominant period for flows:
dysts' ``period`` times n / 30) is made by our own vectorised loop over the B initial conditions:
maps are iterated with dysts' right-hand side; flows are integrated with
``scipy.integrate.solve_ivp(method="LSODA", rtol=atol=1e-10)`` on dysts' right-hand side (dysts'
default Radau at 1e-12 without numba is far too slow for 66000 points). Units: z = (x - m) / s
with m, s the per-coordinate mean and standard deviation of the reference trajectory.

Forecasters (all strictly causal: row t uses z_0..z_t only):

    rff-sigma   depth-inf CKD (the delta rule, ``ckd.linear_time.delta_rule_chunked``) with
                gaussian random features phi (``ckd.linear_time.feature_map``, D features,
                bandwidth sigma in standardised units) on the increments: pairs
                phi(z_{s-1}) -> z_s - z_{s-1}, forecast z_t + p_t, ridge ``RIDGE``
    linear      the same delta rule with the linear kernel on (z, 1) (a global affine map of
                the increments: exact, linear time)
    analogues   the successor z_{j+1} of the nearest earlier state z_j (j < t), evaluated on
                the rows scored only (a direct search: O(window T d))
    last        z_t

Score. The error |z^_{t+1} - z_{t+1}| on the rows t in [L, L + WINDOW) for each context length L:
the median over those rows and the initial conditions. The log-log slope of the median error vs L
(L >= 256) is compared with -1 / D2, D2 the correlation dimension of dysts' metadata (flows only):
the rate of the nearest-neighbour distance on an attractor of that dimension (Zhang & Gilpin 2025
relate context-length scaling to the attractor's dimension).
"""

from __future__ import annotations

import math
import pathlib
import time
import warnings

import numpy as np
import torch

from ..linear_time import delta_rule_chunked, feature_map
from . import plotting, progress

NAME = "context-length"
WINDOW = 128
RIDGE = 1e-3
SIGMAS = (0.1, 0.3)
PTS_PER_PERIOD = 30
FULL = dict(systems=["map:Henon", "map:Ikeda", "map:Tinkerbell", "flow:Lorenz"],
            contexts=[64 * 2**k for k in range(11)], batch=4, features=1024)
# the default size of ``ckd reproduce``: one map and one flow, contexts up to 8192
DEFAULT = dict(systems=["map:Henon", "flow:Lorenz"], contexts=[64 * 2**k for k in range(8)], batch=4, features=1024)
QUICK = dict(systems=["map:Henon"], contexts=[64, 256, 1024], batch=2, features=128)


def _system(system: str):
    from .chaos import import_dysts

    maps, flows = import_dysts()
    kind, name = system.split(":")
    return kind, getattr(maps if kind == "map" else flows, name)()


def _advance(model, kind: str, ic: np.ndarray, n: int, pts_per_period: int) -> np.ndarray:
    """(n, B, d) trajectories from the initial conditions ic (B, d): maps iterated, flows integrated
    (LSODA, rtol = atol = 1e-10, sampled at period / pts_per_period), all B at once."""
    B, d = ic.shape
    params = model.param_list
    if kind == "map":
        out = np.empty((n, B, d))
        out[0] = ic
        for i in range(1, n):
            out[i] = np.stack(model._rhs(*out[i - 1].T, *params), -1)
        return out
    from scipy.integrate import solve_ivp

    def rhs(t, s):
        return np.stack(model._rhs(*s.reshape(B, d).T, t, *params), -1).ravel()

    t_end = model.period * (n - 1) / pts_per_period
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = solve_ivp(rhs, (0.0, t_end), ic.ravel(), method="LSODA", rtol=1e-10, atol=1e-10,
                        t_eval=np.linspace(0.0, t_end, n))
    if not sol.success or sol.y.shape[1] != n:
        raise ValueError(f"{type(model).__name__}: the integration failed ({sol.message})")
    return sol.y.T.reshape(n, B, d)


def trajectories(system: str, length: int, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, length, d) standardised trajectories from B seeded initial conditions (module doc), and
    the reference trajectory's (mean, std) as a (2, d) array."""
    kind, model = _system(system)
    ic0 = np.asarray(model.ic, dtype=np.float64)[None]
    ref = _advance(model, kind, ic0, 1000, 10)[:, 0]
    idx = np.random.default_rng(seed).choice(1000, batch, replace=False)
    x = _advance(model, kind, ref[idx], length, PTS_PER_PERIOD).transpose(1, 0, 2)
    m, s = ref.mean(0), np.where(ref.std(0) > 0, ref.std(0), 1.0)
    if not np.isfinite(x).all():
        raise ValueError(f"{system}: the trajectory is not finite")
    return (x - m) / s, np.stack([m, s])


def delta_forecast(z: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Row t forecasts z_{t+1} = z_t + p_t, p from the delta rule on the pairs phi(z_{s-1}) -> z_s - z_{s-1}
    (keys and residual queries phi(z_{s-1}), prediction queries phi(z_t)); row 0 forecasts z_0."""
    k, q = phi[:, :-1], phi[:, 1:]
    p, _ = delta_rule_chunked(k, k, q, z[:, 1:] - z[:, :-1], RIDGE)
    out = z.clone()
    out[:, 1:] += p
    return out


def analogue_errors(z: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """|z_{j*+1} - z_{t+1}| for the given rows t, j* = argmin_{j < t} |z_j - z_t|: (B, len(rows))."""
    out = []
    for t in rows:
        j = torch.cdist(z[:, t:t + 1], z[:, :t])[:, 0].argmin(-1)  # (B,)
        succ = z[torch.arange(z.shape[0]), j + 1]
        out.append((succ - z[:, t + 1]).norm(dim=-1))
    return torch.stack(out, 1)


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    cfg = {"quick": QUICK, "default": DEFAULT}.get(size, FULL)
    contexts = cfg["contexts"]
    length = max(contexts) + WINDOW + 1
    results, headline = {}, {}
    for system in progress(cfg["systems"], NAME, quick=quick):
        start = time.perf_counter()
        x, units = trajectories(system, length, cfg["batch"], seed)
        made = time.perf_counter() - start
        z = torch.from_numpy(x).to(device)
        preds = {}
        for sigma in SIGMAS:
            phi = feature_map(z, "gaussian", cfg["features"], seed, sigma=sigma)
            preds[f"rff-{sigma:g}"] = delta_forecast(z, phi)
        preds["linear"] = delta_forecast(z, torch.cat([z, torch.ones_like(z[..., :1])], -1))
        preds["last"] = z
        errors = {name: (p[:, :-1] - z[:, 1:]).norm(dim=-1) for name, p in preds.items()}  # (B, T-1)
        table = {name: [] for name in [*preds, "analogues"]}
        for L in contexts:
            rows = np.arange(L, L + WINDOW)
            for name, e in errors.items():
                table[name].append(float(e[:, rows].median()))
            table["analogues"].append(float(analogue_errors(z, rows).median()))
        _, model = _system(system)
        d2 = getattr(model, "correlation_dimension", None)
        big = [i for i, L in enumerate(contexts) if L >= 256] or list(range(len(contexts)))
        slopes = {name: _slope([contexts[i] for i in big], [v[i] for i in big]) for name, v in table.items()}
        results[system] = dict(median_error=table, slope=slopes, correlation_dimension=d2,
                               seconds_trajectory=made, seconds_total=time.perf_counter() - start,
                               units=units)
        best = min((n for n in table if n.startswith("rff")), key=lambda n: table[n][-1])
        headline[f"{system}: {best} median error at L={contexts[0]} / L={contexts[-1]}"] = (
            f"{table[best][0]:.3g} / {table[best][-1]:.3g}")
        headline[f"{system}: analogues median error at L={contexts[0]} / L={contexts[-1]}"] = (
            f"{table['analogues'][0]:.3g} / {table['analogues'][-1]:.3g}")
        headline[f"{system}: log-log slope {best} / analogues"] = f"{slopes[best]:.2f} / {slopes['analogues']:.2f}"
    _plot(out, contexts, results)
    config = dict(contexts=contexts, window=WINDOW, ridge=RIDGE, sigmas=SIGMAS, features=cfg["features"],
                  batch=cfg["batch"], systems=cfg["systems"], pts_per_period=PTS_PER_PERIOD,
                  integrator="scipy solve_ivp LSODA, rtol = atol = 1e-10 (flows); maps iterated",
                  quick=quick, seed=seed, device=device)
    plotting.save_json(out, NAME, dict(config=config, headline=headline, systems=results), digits=4)
    return headline


def _slope(xs, ys) -> float:
    """Least-squares slope of log y against log x (NaN when an error is 0)."""
    if min(ys) <= 0:
        return math.nan
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _plot(out: pathlib.Path, contexts: list[int], results: dict) -> None:
    n = len(results)
    fig, axes = plotting.figure(1, n, width=4.2, height=3.4, squeeze=False)
    for ax, (system, r) in zip(axes[0], results.items()):
        for name, v in r["median_error"].items():
            ax.loglog(contexts, v, "o-" if name != "last" else ":", label=f"{name} ({r['slope'][name]:.2f})",
                      markersize=3)
        title = system + (f"  (D2 = {r['correlation_dimension']:.2f})" if r["correlation_dimension"] else "")
        ax.set(title=title, xlabel="context length L", ylabel="median one-step error (std units)")
        ax.legend(fontsize=6, title="method (log-log slope)", title_fontsize=6)
    plotting.save_figure(fig, out, NAME)
