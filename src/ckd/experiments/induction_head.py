"""induction-head: one softmax layer with eta = 1 on periodic sequences (SPEC §2).

Depth-1 CKD with the ``softmax`` kernel and step 1 is one attention layer:
x^_{t+1} = sum_{s=1..t} softmax_s(beta x_t . x_{s-1}) x_s, keys x_{s-1}, values x_s. Once a
period has passed, x_t equals an earlier key x_{t-P}, whose value is x_{t+1}: for large
beta the layer copies the successor of the matching token (an induction head). The other
cycle points leak in with weight ~exp(-beta (1 - cos theta)) = exp(-beta delta^2 / 2),
delta the distance between two cycle points on the unit sphere, so the error grows as
distinct points come close.

Panels: (a) error vs t for P = 5 and several beta; (b) error after two periods (t = 2P)
vs beta for several periods; (c) that error vs the distance delta from the query point
c_0 to the nearest other cycle point, with the bound exp(-beta delta^2 / 2) (up to a constant).
Expected (SPEC §2): P = 5, d = 5, beta = 32: median error about 2e-6 after two periods.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from ..descent import descend
from ..metrics import next_token_error
from ..sequences import make_task
from . import plotting, progress

NAME = "induction-head"
DIM = 5
PERIODS = (3, 5, 10, 20)
BETAS = (1, 2, 4, 8, 16, 32, 64, 128)
MAIN_PERIOD, MAIN_BETA = 5, 32.0


def one_layer(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Errors (B, T-1) of one softmax layer with eta = 1 (depth-1 CKD)."""
    return next_token_error(descend(x, "softmax", beta=beta, depth=1, step=1.0), x)


def query_distance(points: torch.Tensor) -> np.ndarray:
    """Distance from c_0 (the query x_{2P} = c_0) to the nearest other cycle point, per
    sequence (B,): the key that leaks most into the prediction at t = 2P."""
    return (points[:, 1:] - points[:, :1]).norm(dim=-1).min(1).values.numpy()


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    batch = 32 if quick else 200
    length = 4 * max(PERIODS) + 2
    t = np.arange(1, length - 1)
    res = {"vs_t": {}, "vs_beta": {}, "query_distance": {}}
    tasks = {P: make_task("periodic", batch, length, DIM, seed=seed, period=P) for P in PERIODS}
    for P in progress(PERIODS, NAME, quick=quick):
        x = tasks[P].x.to(device)
        errs = {b: one_layer(x, float(b)).cpu() for b in BETAS}
        res["vs_beta"][str(P)] = np.array([errs[b][:, 2 * P].numpy() for b in BETAS])  # (n_beta, B), t = 2P
        if P == MAIN_PERIOD:
            res["vs_t"] = {str(b): e[:, 1:].numpy() for b, e in errs.items()}
        res["query_distance"][str(P)] = query_distance(tasks[P].params["points"])

    headline = {}
    for P in PERIODS:
        i = BETAS.index(int(MAIN_BETA))
        headline[f"P={P}, beta=32: median error after two periods (t=2P)"] = float(
            np.median(res["vs_beta"][str(P)][i]))
    main = res["vs_beta"][str(MAIN_PERIOD)][BETAS.index(int(MAIN_BETA))]
    q25, q75 = np.quantile(main, [0.25, 0.75])
    headline["P=5, beta=32, t=10: interquartile range"] = f"{q25:.2g} .. {q75:.2g}"
    delta2, keep = res["query_distance"][str(MAIN_PERIOD)] ** 2, main > 1e-14  # above the float64 floor
    slope = np.polyfit(delta2[keep], np.log(main[keep]), 1)[0]
    headline["P=5, beta=32: fitted slope of log error vs delta^2 (theory: -beta/2 = -16)"] = float(slope)
    for b in (4, 16, 64):
        err = res["vs_beta"][str(MAIN_PERIOD)][BETAS.index(b)]
        headline[f"P=5, beta={b}: median error after two periods"] = float(np.median(err))

    _plot(out, t, res, batch)
    plotting.save_json(out, NAME, dict(
        config=dict(dim=DIM, batch=batch, length=length, periods=PERIODS, betas=BETAS, step=1.0, depth=1,
                    kernel="softmax", task="periodic (sphere)", quick=quick, seed=seed, device=device),
        headline=headline, t=t,
        vs_t={b: plotting.quantiles(e) for b, e in res["vs_t"].items()},
        vs_beta={P: plotting.quantiles(e, axis=1) for P, e in res["vs_beta"].items()},
        scatter_P5_beta32=dict(query_distance=res["query_distance"][str(MAIN_PERIOD)], error=main)), digits=4)
    return headline


def _plot(out: pathlib.Path, t: np.ndarray, res: dict, batch: int) -> None:
    fig, axes = plotting.figure(1, 3, width=4.4, height=3.6)
    ax = axes[0]
    shown = (1, 4, 16, 32, 64)
    for b, col in zip(shown, plotting.colors(len(shown), "plasma")):
        plotting.band(ax, t, res["vs_t"][str(b)], label=f"beta = {b}", color=col)
    for k in (1, 2):
        ax.axvline(k * MAIN_PERIOD, color="grey", linestyle=":", linewidth=1)
    plotting.log_axes(ax)
    ax.set_xlim(0, 8 * MAIN_PERIOD)
    ax.set_ylim(1e-18, 1e6)
    ax.set_xlabel("t (dotted: one and two periods)")
    ax.set_ylabel(r"$|\hat x_{t+1} - x_{t+1}|$")
    ax.set_title(f"(a) one softmax layer, P = {MAIN_PERIOD}")
    ax.legend(ncol=3, fontsize=7, loc="upper center")

    ax = axes[1]
    for P, col in zip(PERIODS, plotting.colors(len(PERIODS), "viridis")):
        plotting.band(ax, BETAS, res["vs_beta"][str(P)].T, label=f"P = {P}", color=col, marker=".")
    ax.set_xscale("log", base=2)
    plotting.log_axes(ax)
    ax.set_xlabel(r"inverse temperature $\beta$")
    ax.set_ylabel(r"error at $t = 2P$")
    ax.set_title("(b) after two periods, vs beta")
    ax.legend()

    ax = axes[2]
    dist = res["query_distance"][str(MAIN_PERIOD)]
    err = res["vs_beta"][str(MAIN_PERIOD)][BETAS.index(int(MAIN_BETA))]
    ax.scatter(dist, np.maximum(err, plotting.FLOOR), s=8, alpha=0.6, label="one sequence")
    grid = np.linspace(dist.min(), dist.max(), 100)
    bound = np.exp(-MAIN_BETA * grid**2 / 2)
    ax.plot(grid, bound * np.median(err / np.exp(-MAIN_BETA * dist**2 / 2)), color="k", linestyle="--",
            linewidth=1, label=r"$\propto \exp(-\beta\,\delta^2/2)$")
    plotting.log_axes(ax)
    ax.set_xlabel(r"$\delta$ = distance from the query $c_0$ to the nearest other $c_i$")
    ax.set_ylabel(r"error at $t = 2P$")
    ax.set_title(rf"(c) P = {MAIN_PERIOD}, $\beta$ = {MAIN_BETA:g}: close points leak")
    ax.legend()
    fig.suptitle(f"Induction head: depth-1 softmax CKD, step 1, periodic sequences on the sphere, d = {DIM}; "
                 f"median and 25-75 % band over {batch} sequences", fontsize=10)
    plotting.save_figure(fig, out, NAME)
