"""depth-and-length: next-token error of CKD vs t for depths 1..32 and inf (SPEC §2).

For each setting (task family + kernel) we draw B sequences x_0..x_{T-1} in R^5 (a new
f per sequence), run depth-N CKD with the default step eta = 0.5 / max_t R[t,t] (all
depths 0..32 from one pass, ``return_all``) and the infinite-depth limit (one forward
Kaczmarz sweep), and measure e[b, t] = |x^_{t+1} - x_{t+1}| (``next_token_error``).

Figures: ``depth-and-length.png`` (median and 25-75 % band of e vs t, one panel per
setting, one line per depth) and ``depth-and-length-heatmap.png`` (log10 median error
over (t, depth) for depths 1, 2, 4, ..., 32, inf). Expected (SPEC §2): depth inf -> 0 as t grows (orthogonal A, d = 5:
median ~3e-4 at t = 200 and ~5e-9 at t = 500, one draw in ten above 1e-2 at t = 500);
finite depth improves with depth but the depth needed grows with t.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import torch

from ..descent import descend
from ..metrics import next_token_error
from ..sequences import make_task
from . import plotting, progress

NAME = "depth-and-length"
DIM = 5
DEPTHS = (1, 2, 4, 8, 16, 32, "inf")
MAX_DEPTH = 32
# (key, title, task, task options, kernel, kernel options)
SETTINGS = [
    ("linear", "orthogonal A, linear kernel", "linear", {}, "linear", {}),
    ("rotation", "rotation blocks, linear kernel", "rotation", {}, "linear", {}),
    ("periodic-exp", "periodic (P = 5), exp, beta = 4", "periodic", {"period": 5}, "exp", {"beta": 4.0}),
    ("periodic-softmax", "periodic (P = 5), softmax, beta = 4", "periodic", {"period": 5}, "softmax", {"beta": 4.0}),
    ("periodic-gaussian", "periodic Gaussian points (P = 5),\ngaussian, sigma = 0.5", "periodic-gaussian",
     {"period": 5}, "gaussian", {"sigma": 0.5}),
]


def errors_by_depth(x: torch.Tensor, kernel: str, opts: dict, max_depth: int, chunk: int = 25) -> dict:
    """Errors (B, T-1) of CKD on x for every depth 0..max_depth (default step, computed per
    chunk of sequences, so the step is that chunk's) and for depth inf.

    A chunk whose finite-depth run overflows (``FloatingPointError``) gets NaN errors: the
    overflow is a measured outcome, counted in ``"overflowed"``.
    """
    finite, inf, overflowed = [], [], 0
    for xb in x.split(chunk):
        try:
            ps = descend(xb, kernel, depth=max_depth, return_all=True, **opts)
            finite.append(next_token_error(ps, xb))  # (max_depth + 1, b, T-1)
        except FloatingPointError:
            overflowed += xb.shape[0]
            finite.append(torch.full((max_depth + 1, xb.shape[0], xb.shape[1] - 1), math.nan, dtype=xb.dtype))
        inf.append(next_token_error(descend(xb, kernel, depth="inf", **opts), xb))
    return {"finite": torch.cat(finite, 1), "inf": torch.cat(inf, 0), "overflowed": overflowed}


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    batch, length = (16, 102) if quick else (100, 502)
    t = np.arange(1, length - 1)  # row t predicts x_{t+1} from x_0..x_t; row 0 predicts 0
    results, headline = {}, {}
    for key, title, task_name, task_opts, kernel, opts in progress(SETTINGS, NAME, quick=quick):
        task = make_task(task_name, batch, length, DIM, seed=seed, **task_opts)
        errs = errors_by_depth(task.x.to(device), kernel, opts, MAX_DEPTH)
        finite, inf = errs["finite"][:, :, 1:].cpu(), errs["inf"][:, 1:].cpu()
        errors = {str(N): finite[N] if N != "inf" else inf for N in DEPTHS}
        per_depth = {N: plotting.quantiles(e) for N, e in errors.items()}
        results[key] = dict(title=title, task=task_name, task_options=task_opts, kernel=kernel, options=opts,
                            overflowed=errs["overflowed"], per_depth=per_depth,
                            errors=errors)
        last = len(t) - 1
        at = [s for s in (100, 200, 500) if s <= t[-1]]
        for s in at:
            headline[f"{key}: depth inf median error, t={s}"] = float(per_depth["inf"]["median"][s - 1])
        headline[f"{key}: depth 32 median error, t={t[last]}"] = float(per_depth["32"]["median"][last])
        if key == "linear":
            for s in at:
                q10, q90 = np.nanquantile(inf[:, s - 1].numpy(), [0.1, 0.9])
                headline[f"linear: depth inf 10%/90% quantiles, t={s}"] = f"{q10:.2g} / {q90:.2g}"
            headline[f"linear: share of draws with depth-inf error > 1e-2, t={t[last]}"] = float(
                (inf[:, last] > 1e-2).double().mean())
    _plot_curves(out, t, results, batch)
    _plot_heatmaps(out, t, results)
    config = dict(dim=DIM, batch=batch, length=length, depths=[str(d) for d in DEPTHS], step="default: "
                  "0.5 / max_t R[t,t] per chunk of 25 sequences", quick=quick, seed=seed, device=device)
    plotting.save_json(out, NAME, dict(config=config, t=t, headline=headline, settings={
        k: {n: v for n, v in r.items() if n != "errors"} for k, r in results.items()}), digits=4)
    return headline


def _plot_curves(out: pathlib.Path, t: np.ndarray, results: dict, batch: int) -> None:
    fig, axes = plotting.figure(2, 3, width=4.3, height=3.3)
    cols = plotting.colors(len(DEPTHS) - 1, "viridis")
    for ax, r in zip(axes.flat, results.values()):
        for N, c in zip(DEPTHS, cols + ["crimson"]):
            plotting.band(ax, t, r["errors"][str(N)], label=f"depth {N}", color=c, linewidth=2 if N == "inf" else 1.2)
        plotting.log_axes(ax)
        ax.set_title(r["title"] + (f" ({r['overflowed']} overflowed)" if r["overflowed"] else ""))
        ax.set_xlabel(r"t (prompt $x_0, \dots, x_t$)")
        ax.set_ylabel(r"$|\hat x_{t+1} - x_{t+1}|$")
    ax = axes.flat[-1]
    handles, labels = axes.flat[0].get_legend_handles_labels()
    ax.axis("off")
    ax.legend(handles, labels, loc="center", title=f"median, 25-75 % band\n{batch} sequences, d = {DIM}",
              fontsize=9)
    plotting.save_figure(fig, out, NAME)


def _plot_heatmaps(out: pathlib.Path, t: np.ndarray, results: dict) -> None:
    fig, axes = plotting.figure(2, 3, width=4.3, height=3.0)
    labels = [str(n) for n in DEPTHS]
    im = None
    for ax, r in zip(axes.flat, results.values()):
        heat = np.vstack([r["per_depth"][str(N)]["median"] for N in DEPTHS])
        im = plotting.heatmap(ax, heat, t, labels, vmin=-16, vmax=4, cmap="viridis")
        ax.set_title(r["title"])
        ax.set_xlabel("t")
        ax.set_ylabel("depth N")
    axes.flat[-1].axis("off")
    cbar = fig.colorbar(im, ax=axes.flat[-1], fraction=0.6, aspect=12, location="left")
    cbar.set_label(r"$\log_{10}$ median $|\hat x_{t+1} - x_{t+1}|$" + "\n(clipped to [-16, 4])")
    plotting.save_figure(fig, out, f"{NAME}-heatmap")
