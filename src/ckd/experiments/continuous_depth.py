"""continuous-depth: the neural-ODE limit of CKD against finite depth with eta = tau / N (SPEC §2).

With eta = tau / N and N -> inf, depth-N CKD tends to p(tau) = P alpha(tau),
alpha(tau) = R^{-1} (I - exp(-tau R)) y (``ckd.descent.continuous_depth``), and p(tau) tends
to the depth-inf (Kaczmarz) solution as tau -> inf. Setting: orthogonal linear sequences
(d = 5) with the ``linear`` kernel, so R[t,t] = 1 and eta = tau / N is inside the
convergence region iff N > tau / 2.

Panels:
  (a) |p_N - p(tau)|_F / |p(tau)|_F vs N (eta = tau / N) for several tau: Euler's O(1/N);
  (b) |p(tau) - p_inf|_F / |p_inf|_F vs tau for several prompt lengths T;
  (c) next-token error at the last t vs tau, continuous depth against depth inf.
"""

from __future__ import annotations

import math
import pathlib
import warnings

import numpy as np
import torch

from ..descent import continuous_depth, finite_depth, infinite_depth, targets
from ..kernels import causal_matrices
from ..metrics import next_token_error
from ..sequences import make_task
from . import plotting, progress

NAME = "continuous-depth"
DIM = 5
TAUS = (1.0, 4.0, 16.0, 64.0)


def rel(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """|a - b|_F / |b|_F per sequence (B,)."""
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).numpy()


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    cfg = dict(batch=16, length=30, lengths=(10, 30), max_log2_depth=10, n_tau=12) if quick else \
        dict(batch=100, length=40, lengths=(10, 20, 40, 80), max_log2_depth=12, n_tau=25)
    depths = [2**k for k in range(cfg["max_log2_depth"] + 1)]
    tau_grid = np.logspace(-1, 3, cfg["n_tau"])
    task = make_task("linear", cfg["batch"], max(cfg["lengths"] + (cfg["length"],)), DIM, seed=seed)

    # (a) finite depth with eta = tau / N -> p(tau)
    x = task.x[:, : cfg["length"]].to(device)
    mats, y = causal_matrices(x, "linear"), targets(x)
    euler = {}
    for tau in progress(TAUS, f"{NAME}: euler", quick=quick):
        p_tau = continuous_depth(mats, y, tau)
        rows = []
        for N in depths:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # eta = tau / N > 2 diverges: measured, not warned
                try:
                    rows.append(rel(finite_depth(mats, y, N, tau / N), p_tau))
                except FloatingPointError:
                    rows.append(np.full(x.shape[0], math.nan))
        euler[str(tau)] = np.array(rows)  # (len(depths), B)

    # (b) p(tau) -> p_inf, several T; (c) next-token error at the last t vs tau
    to_limit, last_error, inf_error = {}, {}, {}
    for T in progress(cfg["lengths"], f"{NAME}: tau", quick=quick):
        xt = task.x[:, :T].to(device)
        m, yt = causal_matrices(xt, "linear"), targets(xt)
        p_inf = infinite_depth(m, yt)
        ps = [continuous_depth(m, yt, float(tau)) for tau in tau_grid]
        to_limit[str(T)] = np.array([rel(p, p_inf) for p in ps])  # (n_tau, B)
        last_error[str(T)] = np.array([next_token_error(p, xt)[:, -1].numpy() for p in ps])
        inf_error[str(T)] = next_token_error(p_inf, xt)[:, -1].numpy()

    headline = {}
    for tau, d in euler.items():
        med = np.nanmedian(d, axis=1)
        i = depths.index(1024)
        headline[f"tau={tau}: median ‖p_N - p(tau)‖/‖p(tau)‖ at N=1024"] = float(med[i])
        if i >= 1:
            headline[f"tau={tau}: error ratio N=512 -> 1024 (Euler: 2)"] = float(med[i - 1] / med[i])
    for T, d in to_limit.items():
        med = np.nanmedian(d, axis=1)
        reach = np.flatnonzero(med < 1e-6)
        headline[f"T={T}: smallest tau on the grid with median ‖p(tau) - p_inf‖/‖p_inf‖ < 1e-6"] = (
            float(tau_grid[reach[0]]) if reach.size else math.nan)

    _plot(out, cfg, depths, tau_grid, euler, to_limit, last_error, inf_error)
    plotting.save_json(out, NAME, dict(
        config=dict(cfg, dim=DIM, task="linear", kernel="linear", taus=TAUS, quick=quick, seed=seed, device=device),
        headline=headline, depths=depths, tau_grid=tau_grid,
        euler={k: plotting.quantiles(v, axis=1) for k, v in euler.items()},
        to_limit={k: plotting.quantiles(v, axis=1) for k, v in to_limit.items()},
        last_error={k: plotting.quantiles(v, axis=1) for k, v in last_error.items()},
        inf_error={k: plotting.quantiles(v) for k, v in inf_error.items()}), digits=4)
    return headline


def _plot(out, cfg, depths, tau_grid, euler, to_limit, last_error, inf_error) -> None:
    fig, axes = plotting.figure(1, 3, width=4.4, height=3.6)
    ax = axes[0]
    for tau, col in zip(TAUS, plotting.colors(len(TAUS), "plasma")):
        plotting.band(ax, depths, euler[str(tau)].T, label=f"tau = {tau:g}", color=col, marker=".")
    n = np.array(depths, dtype=float)
    ax.plot(n, 1.0 / n, color="k", linestyle="--", linewidth=1, label="1/N")
    ax.set_xscale("log", base=2)
    plotting.log_axes(ax)
    ax.set_ylim(1e-16, 1e10)
    ax.set_xlabel(r"depth N (step $\eta = \tau / N$)")
    ax.set_ylabel(r"$\|p_N - p(\tau)\| / \|p(\tau)\|$")
    ax.set_title(f"(a) finite depth -> ODE (T = {cfg['length']})")
    ax.legend(fontsize=7)

    ax = axes[1]
    for T, col in zip(to_limit, plotting.colors(len(to_limit), "viridis")):
        plotting.band(ax, tau_grid, to_limit[T].T, label=f"T = {T}", color=col, marker=".", markersize=3)
    plotting.log_axes(ax, x=True)
    ax.set_xlabel(r"$\tau$")
    ax.set_ylabel(r"$\|p(\tau) - p_\infty\| / \|p_\infty\|$")
    ax.set_title("(b) ODE -> depth inf (Kaczmarz)")
    ax.legend()

    ax = axes[2]
    for T, col in zip(last_error, plotting.colors(len(last_error), "viridis")):
        plotting.band(ax, tau_grid, last_error[T].T, label=f"T = {T}, p(tau)", color=col)
        ax.axhline(np.median(inf_error[T]), color=col, linestyle=":", linewidth=1.2)
    plotting.log_axes(ax, x=True)
    ax.set_xlabel(r"$\tau$")
    ax.set_ylabel(r"$|\hat x_{T-1} - x_{T-1}|$ (last token)")
    ax.set_title("(c) next-token error (dotted: depth inf)")
    ax.legend()
    fig.suptitle(f"Continuous depth, orthogonal linear sequences, linear kernel, d = {DIM}; median and 25-75 % band "
                 f"over {cfg['batch']} sequences", fontsize=10)
    plotting.save_figure(fig, out, NAME)
