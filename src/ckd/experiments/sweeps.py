"""sweeps: K sweeps over the prompt, from depth-inf CKD (K = 1) to kernel ridge (K -> inf) (SPEC §7).

Setting: the map of the ``ckd`` forecaster (``ckd.rollout``): Lorenz-63 sampled at 30 points per
Lyapunov time (RK4, 10 substeps; Lyapunov exponent 0.906), each context standardised by its own
mean and standard deviation, pairs (z_{s-1} -> z_s - z_{s-1}) on every second step, gaussian
kernel exp(-|a - b|^2 / (2 sigma^2 d)). K sweeps are ridge-aware Gauss-Seidel on
(G + lambda I) beta = Y (``ckd.descent.gauss_seidel_doubling``, the same numbers as the plain
sweeps); K = inf is kernel ridge, the exact solve.

Panels:
  (a) distance to kernel ridge, |f_K - f_inf| / |f_inf| on the true states after the context,
      vs K, for several (sigma, lambda): the rate is set by the conditioning of G + lambda I;
  (b) rollout error |z^_{T+h} - z_{T+h}| (standardised units) at h = 1, 2 and 5 Lyapunov times
      vs K (sigma = 1, lambda = 1e-6, the forecaster's usual choice), kernel ridge dashed.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from ..rollout import fit_kernel, roll_kernel
from . import plotting, progress

NAME = "sweeps"
SETTINGS = ((0.5, 1e-2), (0.5, 1e-6), (1.0, 1e-2), (1.0, 1e-6))  # (sigma, lambda) of panel (a)
ROLL = (1.0, 1e-6)  # panel (b)
PTS = 30  # points per Lyapunov time
HORIZONS = (1, 2, 5)  # Lyapunov times of panel (b)


def lorenz(n: int, seed: int, pts: int = PTS) -> np.ndarray:
    """(n, 3) Lorenz-63 states (10, 28, 8/3) after a burn-in, from a seeded initial state."""
    def f(v):
        return np.array([10 * (v[1] - v[0]), v[0] * (28 - v[2]) - v[1], v[0] * v[1] - 8 / 3 * v[2]])
    dt = 1 / (0.906 * pts)
    h = dt / 10
    v = np.random.default_rng(seed).normal(size=3) * 5 + np.array([0, 0, 25.0])
    out = []
    for i in range(n + 500):
        for _ in range(10):
            k1 = f(v)
            k2 = f(v + h / 2 * k1)
            k3 = f(v + h / 2 * k2)
            k4 = f(v + h * k3)
            v = v + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if i >= 500:
            out.append(v)
    return np.array(out)


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    cfg = dict(contexts=2, length=200, horizon=150, max_log2=12) if quick else \
        dict(contexts=10, length=512, horizon=300, max_log2=20)
    Ks = [2**k for k in range(cfg["max_log2"] + 1)]
    T, H = cfg["length"], cfg["horizon"]
    dist = {f"sigma={s}, lambda={lam:g}": [] for s, lam in SETTINGS}
    roll_err = {h: [] for h in HORIZONS if h * PTS <= H}
    krr_err = {h: [] for h in roll_err}
    for i in progress(range(cfg["contexts"]), f"{NAME}: contexts", quick=quick):
        x = torch.tensor(lorenz(T + H, seed + i), dtype=torch.float64)
        mean, std = x[:T].mean(0), x[:T].std(0, unbiased=False)
        z = (x - mean) / std
        ctx, fut = z[:T], z[T:]
        for s, lam in SETTINGS:
            keys, beta, _ = fit_kernel(ctx, 1, (s,), (lam,), tuple(Ks) + (None,), 2)
            k = torch.exp(-torch.cdist(fut, keys).square() / (2 * s * s * 3))  # f(u) on the true future states
            f = k @ beta  # (K + 1, H, 3)
            ref = f[-1]
            dist[f"sigma={s}, lambda={lam:g}"].append(((f[:-1] - ref).flatten(1).norm(dim=1) / ref.norm()).numpy())
        s, lam = ROLL
        keys, beta, _ = fit_kernel(ctx, 1, (s,), (lam,), tuple(Ks) + (None,), 2)
        widths = torch.full((beta.shape[0],), s * s * 3, dtype=torch.float64)
        pred = roll_kernel(keys, beta, widths, ctx, H)  # (K + 1, H, 3)
        err = (pred - fut).norm(dim=-1)
        for h in roll_err:
            roll_err[h].append(err[:-1, h * PTS - 1].numpy())
            krr_err[h].append(float(err[-1, h * PTS - 1]))
    res = dict(Ks=Ks, distance={k: np.array(v) for k, v in dist.items()},
               rollout={str(h): np.array(v) for h, v in roll_err.items()},
               krr_rollout={str(h): np.array(v) for h, v in krr_err.items()})
    headline = _headline(res, cfg)
    _plot(out, res, cfg)
    plotting.save_json(out, NAME, dict(config=dict(cfg, settings=SETTINGS, rollout_setting=ROLL, pts=PTS,
                                                   quick=quick, seed=seed, device=device, system="Lorenz-63"),
                                       headline=headline, Ks=Ks,
                                       distance={k: plotting.quantiles(v) for k, v in res["distance"].items()},
                                       rollout={k: plotting.quantiles(v) for k, v in res["rollout"].items()},
                                       krr_rollout={k: plotting.quantiles(v) for k, v in res["krr_rollout"].items()}),
                       digits=4)
    return headline


def _headline(res: dict, cfg: dict) -> dict:
    h = {}
    Ks = res["Ks"]
    for name, d in res["distance"].items():
        med = np.median(d, axis=0)
        for K in (1, 2**10, Ks[-1]):
            h[f"median |f_K - f_krr| / |f_krr|, {name}, K={K}"] = float(med[Ks.index(K)])
    for hz, e in res["rollout"].items():
        med = np.median(e, axis=0)
        for K in (1, 2**10, Ks[-1]):
            h[f"median rollout error at {hz} Lyapunov times, K={K}"] = float(med[Ks.index(K)])
        h[f"median rollout error at {hz} Lyapunov times, kernel ridge"] = float(np.median(res["krr_rollout"][hz]))
    return h


def _plot(out: pathlib.Path, res: dict, cfg: dict) -> None:
    fig, axes = plotting.figure(1, 2, width=5.0, height=3.7)
    Ks = res["Ks"]
    ax = axes[0]
    for (name, d), col in zip(res["distance"].items(), plotting.colors(len(res["distance"]), "plasma")):
        plotting.band(ax, Ks, d, label=name, color=col, marker=".")
    plotting.log_axes(ax, x=True)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sweeps K")
    ax.set_ylabel(r"$\|f_K - f_{krr}\| / \|f_{krr}\|$ on the true future")
    ax.set_title("(a) K sweeps -> kernel ridge")
    ax.legend()
    ax = axes[1]
    for (hz, e), col in zip(res["rollout"].items(), plotting.colors(len(res["rollout"]), "viridis")):
        plotting.band(ax, Ks, e, label=f"h = {hz} Lyapunov times", color=col, marker=".")
        ax.axhline(float(np.median(res["krr_rollout"][hz])), color=col, linestyle="--", linewidth=1)
    plotting.log_axes(ax, x=True)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sweeps K")
    ax.set_ylabel(r"rollout error $|\hat z_{T+h} - z_{T+h}|$ (std units)")
    ax.set_title(rf"(b) rollout error vs K ($\sigma$ = {ROLL[0]}, $\lambda$ = {ROLL[1]:g}); dashed: KRR")
    ax.legend()
    fig.suptitle(f"Lorenz-63, context T = {cfg['length']}, {cfg['contexts']} contexts: median and 25-75 % band",
                 fontsize=10)
    plotting.save_figure(fig, out, NAME)
