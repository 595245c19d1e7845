"""kaczmarz-limit: depth-N CKD vs its infinite-depth limit, the convergence region, the
non-normal transient growth of (I - eta R)^l, and where float32 breaks (SPEC §2).

Setting: orthogonal linear sequences (A Haar, x_0 on the unit sphere, d = 5) with the
``linear`` kernel, so that R[t,t] = |x_{t-1}|^2 = 1 and the step is eta = c / max_t R[t,t] = c.
Depth-N CKD has alpha_N = eta sum_{l<N} (I - eta R)^l y, which tends to the depth-inf
solution R alpha = y (one forward Kaczmarz sweep) iff |1 - eta R[t,t]| < 1, i.e. c in (0, 2).

Panels:
  (a) d_N = |p_N - p_inf|_F / |p_inf|_F per sequence vs N, for several c (T fixed);
  (b) d_N at N = N_max vs c for several T: the convergence region and how T shrinks it;
  (c) G(t) = max_l |(I - eta R_t)^l|_F vs t (R_t: the pairs of rows 1..t), for several c,
      with 1/eps of float32 and float64 (above them the iterates keep no correct digit);
  (d) next-token error |x^_{t+1} - x_{t+1}| vs t in float32 and in float64, for depths 8, 32
      and inf at the default step c = 0.5, and for periodic sequences with the gaussian kernel
      at depth inf (which converges below float32's eps): float32 "breaks" where its error
      leaves float64's.
"""

from __future__ import annotations

import math
import pathlib
import warnings

import numpy as np
import torch

from ..descent import descend, finite_depth, infinite_depth, targets
from ..kernels import causal_matrices
from ..metrics import next_token_error
from ..sequences import make_task
from . import plotting, progress

NAME = "kaczmarz-limit"
DIM = 5
STEPS = (0.25, 0.5, 1.0, 1.5, 1.9)  # c = eta * max_t R[t,t]
GROWTH_STEPS = (0.25, 0.5, 1.0, 1.5)
# (d): label -> (task, kernel, kernel options, depth); the last one converges below float32's eps
PRECISION = {"depth 8": ("linear", "linear", {}, 8), "depth 32": ("linear", "linear", {}, 32),
             "depth inf": ("linear", "linear", {}, "inf"),
             "periodic, gaussian, depth inf": ("periodic", "gaussian", {"sigma": 0.5}, "inf")}


def distances(mats, y: torch.Tensor, step: float, depths: list[int]) -> np.ndarray:
    """d_N = |p_N - p_inf|_F / |p_inf|_F per sequence, (len(depths), B); NaN where the run
    overflowed (outside the convergence region)."""
    p_inf = infinite_depth(mats, y)
    scale = p_inf.flatten(1).norm(dim=1)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the instability is what we measure
        for N in depths:
            try:
                p = finite_depth(mats, y, N, step)
                rows.append(((p - p_inf).flatten(1).norm(dim=1) / scale).numpy())
            except FloatingPointError:
                rows.append(np.full(y.shape[0], math.nan))
    return np.array(rows)


def transient_growth(R: torch.Tensor, step: float, max_power: int) -> np.ndarray:
    """G[b, t-1] = max_{0<=l<=max_power} |(I - step R_t)^l|_F for t = 1..n, R (B, n, n) the
    lower-triangular block of rows/columns 1..n of R.

    The leading t x t block of a power of a lower-triangular matrix is the power of its
    leading block, so one sequence of products M^l gives every t: |block_t|_F^2 is the
    cumulative sum over rows i < t of the squared row norms. Stops early once every block
    is below 1e-3 of its maximum (past its peak)."""
    n = R.shape[-1]
    M = torch.eye(n, dtype=R.dtype) - step * R
    power = torch.eye(n, dtype=R.dtype).expand_as(R).clone()
    best = torch.ones(R.shape[0], n, dtype=R.dtype)
    for _ in range(max_power):
        power = M @ power
        frob = power.square().sum(-1).cumsum(-1).sqrt()
        best = torch.maximum(best, frob)
        if (frob < 1e-3 * best).all():
            break
    return best.numpy()


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    full = dict(batch=100, length=40, lengths=(5, 10, 20, 40), max_log2_depth=12, region_depth=1024, growth_batch=100,
                growth_length=200, max_power=400, precision_batch=100, precision_length=302)
    cfg = {"quick": dict(batch=16, length=30, lengths=(5, 10, 20), max_log2_depth=10, region_depth=256, growth_batch=4,
                         growth_length=60, max_power=200, precision_batch=16, precision_length=102),
           # the default size of ckd reproduce: the full grid, half the sequences
           "default": dict(full, batch=50, growth_batch=50, precision_batch=50)}.get(size, full)
    depths = [2**k for k in range(cfg["max_log2_depth"] + 1)]
    c_grid = np.round(np.linspace(0.05, 2.5, 30 if not quick else 15), 4)
    res: dict = dict(depths=depths, steps=list(STEPS), c_grid=c_grid)

    # (a) distance to the limit vs depth, several steps
    task = make_task("linear", cfg["batch"], cfg["length"], DIM, seed=seed)
    mats, y = causal_matrices(task.x.to(device), "linear"), targets(task.x.to(device))
    res["distance_vs_depth"] = {str(c): distances(mats, y, c, depths)
                                for c in progress(STEPS, f"{NAME}: depth", quick=quick)}

    # (b) convergence region: distance at the largest depth vs c, for several T
    res["region"] = {}
    for T in progress(cfg["lengths"], f"{NAME}: region", quick=quick):
        xs = task.x[:, :T] if T <= cfg["length"] else make_task("linear", cfg["batch"], T, DIM, seed=seed).x
        m, yy = causal_matrices(xs, "linear"), targets(xs)
        res["region"][str(T)] = np.array([distances(m, yy, float(c), [cfg["region_depth"]])[0] for c in c_grid])

    # (c) transient growth of (I - eta R)^l vs t, several steps
    g_task = make_task("linear", cfg["growth_batch"], cfg["growth_length"] + 1, DIM, seed=seed + 1)
    R = causal_matrices(g_task.x, "linear").R[:, 1:, 1:]
    res["growth"] = {str(c): transient_growth(R, c, cfg["max_power"])
                     for c in progress(GROWTH_STEPS, f"{NAME}: growth", quick=quick)}

    # (d) next-token error in float32 and float64 at the default step
    res["precision"] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, (task_name, kernel, opts, N) in PRECISION.items():
            x = make_task(task_name, cfg["precision_batch"], cfg["precision_length"], DIM, seed=seed + 2).x
            for dtype in (torch.float64, torch.float32):
                try:
                    pred = descend(x.to(dtype), kernel, depth=N, **opts).double()
                except FloatingPointError:
                    pred = torch.full_like(x, math.nan)
                err = next_token_error(pred, x)[:, 1:].numpy()  # rows t = 1..T-2
                res["precision"][f"{label} {str(dtype).replace('torch.', '')}"] = err

    headline = _headline(res, cfg, depths)
    _plot(out, res, cfg, depths)
    plotting.save_json(out, NAME, dict(config=dict(cfg, dim=DIM, kernel="linear", task="linear", quick=quick,
                                                   seed=seed, device=device),
                                       headline=headline, **_summaries(res)), digits=4)
    return headline


def _summaries(res: dict) -> dict:
    """Medians and quartiles of everything plotted (the JSON)."""
    return dict(
        depths=res["depths"], c_grid=res["c_grid"],
        distance_vs_depth={c: plotting.quantiles(d, axis=1) for c, d in res["distance_vs_depth"].items()},
        region={T: plotting.quantiles(d, axis=1) for T, d in res["region"].items()},
        growth={c: plotting.quantiles(g) for c, g in res["growth"].items()},
        precision={N: plotting.quantiles(p) for N, p in res["precision"].items()},
    )


def _headline(res: dict, cfg: dict, depths: list[int]) -> dict:
    h = {}
    T = cfg["length"]
    for c, d in res["distance_vs_depth"].items():
        h[f"median ‖p_N - p_inf‖/‖p_inf‖ at N={depths[-1]}, c={c}, T={T}"] = float(np.nanmedian(d[-1]))
    for c, g in res["growth"].items():
        med = plotting.quantiles(g)["median"]
        for t in (50, 100, 200):
            if t <= len(med):
                h[f"median max_l ‖(I - eta R)^l‖_F, c={c}, t={t}"] = float(med[t - 1])
    eps32 = torch.finfo(torch.float32).eps
    for label in PRECISION:
        e64, e32 = (plotting.quantiles(res["precision"][f"{label} {dt}"])["median"] for dt in ("float64", "float32"))
        broken = np.flatnonzero(~(e32 <= 10 * np.maximum(e64, eps32)))  # NaN (overflow) counts as broken
        h[f"first t where the float32 median error exceeds 10x float64's (and eps32), {label}"] = \
            float(broken[0] + 1) if broken.size else math.nan
        h[f"median error at t={len(e64)}, {label}: float64 / float32"] = f"{e64[-1]:.2g} / {e32[-1]:.2g}"
    med = plotting.quantiles(res["growth"]["0.5"])["median"]
    idx = np.flatnonzero(med * eps32 > 1e-2)
    h["t where growth(c=0.5) * eps32 > 1e-2"] = float(idx[0] + 1) if idx.size else math.nan
    return h


def _plot(out: pathlib.Path, res: dict, cfg: dict, depths: list[int]) -> None:
    fig, axes = plotting.figure(2, 2, width=5.0, height=3.7)
    ax = axes[0, 0]
    for c, col in zip(STEPS, plotting.colors(len(STEPS), "plasma")):
        plotting.band(ax, depths, res["distance_vs_depth"][str(c)].T, label=f"c = {c}", color=col, marker=".")
    plotting.log_axes(ax, x=True)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("depth N")
    ax.set_ylabel(r"$\|p_N - p_\infty\| / \|p_\infty\|$")
    ax.set_title(f"(a) depth N vs the Kaczmarz limit (T = {cfg['length']})")
    ax.legend(title=r"step $\eta = c / \max_t R_{tt}$", ncol=2)

    ax = axes[0, 1]
    for T, col in zip(res["region"], plotting.colors(len(res["region"]), "viridis")):
        plotting.band(ax, res["c_grid"], res["region"][T].T, label=f"T = {T}", color=col, marker=".", markersize=3)
    ax.axvline(2.0, color="k", linestyle="--", linewidth=1)
    ax.axvspan(2.0, res["c_grid"][-1], color="grey", alpha=0.15, linewidth=0)
    ax.text(2.03, 0.08, "diverges\n(|1 - c| > 1)", transform=ax.get_xaxis_transform(), fontsize=8)
    plotting.log_axes(ax)
    ax.set_ylim(top=1e25)
    ax.set_xlabel(r"$c = \eta \max_t R_{tt}$")
    ax.set_ylabel(rf"$\|p_N - p_\infty\| / \|p_\infty\|$, N = {cfg['region_depth']}")
    ax.set_title("(b) convergence region (clipped at 1e25)")
    ax.legend()

    ax = axes[1, 0]
    for c, col in zip(GROWTH_STEPS, plotting.colors(len(GROWTH_STEPS), "plasma")):
        g = res["growth"][str(c)]
        plotting.band(ax, np.arange(1, g.shape[1] + 1), g, label=f"c = {c}", color=col)
    for dtype, style in ((torch.float32, ":"), (torch.float64, "--")):
        inv = 1 / torch.finfo(dtype).eps
        ax.axhline(inv, color="k", linestyle=style, linewidth=1)
        ax.text(1, inv * 3, f"1/eps {str(dtype).replace('torch.', '')}", fontsize=8)
    plotting.log_axes(ax)
    ax.set_xlabel("t (size of the triangular system)")
    ax.set_ylabel(r"$\max_l \|(I - \eta R_t)^l\|_F$")
    ax.set_title(f"(c) non-normal transient growth ({cfg['growth_batch']} sequences)")
    ax.legend(title="step c")

    ax = axes[1, 1]
    for label, col in zip(PRECISION, ["tab:blue", "tab:green", "crimson", "tab:purple"]):
        for dt, style in (("float64", "-"), ("float32", "--")):
            p = res["precision"][f"{label} {dt}"]
            plotting.band(ax, np.arange(1, p.shape[1] + 1), p, label=f"{label}, {dt}", color=col, linestyle=style)
    ax.axhline(torch.finfo(torch.float32).eps, color="k", linestyle=":", linewidth=1)
    ax.text(1, torch.finfo(torch.float32).eps * 3, "eps float32", fontsize=8)
    plotting.log_axes(ax)
    ax.set_xlabel("t")
    ax.set_ylabel(r"$|\hat x_{t+1} - x_{t+1}|$")
    ax.set_title("(d) float32 (dashed) vs float64, default step (c = 0.5)")
    ax.legend(ncol=2, fontsize=6, loc="upper left")
    fig.suptitle(f"Orthogonal linear sequences, linear kernel, d = {DIM}; median and 25-75 % band over "
                 f"{cfg['batch']} sequences", fontsize=10)
    plotting.save_figure(fig, out, NAME)
