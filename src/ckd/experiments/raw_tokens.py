"""raw-tokens: the constructed Transformer on raw tokens x_t + positions, whose first layer
copies x_{t-1} with a softmax previous-token head, against the augmented construction (SPEC §3).

With one-hot positions the previous-token head's score is prev_beta [s = t-1]; with
``linear`` attention the copy is exact, with ``softmax`` at inverse temperature prev_beta
row t receives (e^prev_beta x_{t-1} + sum_{s<=t, s!=t-1} x_s) / (e^prev_beta + t): an error
~ t e^-prev_beta in the x_{t-1} slot, which the CKD layers above then carry (and, being a
non-normal iteration, may amplify). ``ckd.construction.run_constructed`` builds both models.

Panels: (a) max_t |p_raw - p_aug| / max_t |p_aug| vs prev_beta for four kernels, the
linear previous-token head as a reference; (b) |p_raw - p_aug| vs t for several prev_beta
(exp kernel); (c) next-token error vs t, augmented vs raw.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import torch

from ..construction import run_constructed
from ..metrics import next_token_error
from ..sequences import make_task
from . import plotting, progress

NAME = "raw-tokens"
DIM = 5
DEPTH = 8
PREV_BETAS = (1, 2, 4, 8, 12, 16, 24, 32, 48)
SHOWN = (8, 16, 24, 32)
# (key, label, task, task options, kernel, kernel options)
SETTINGS = [
    ("linear", "orthogonal A, linear", "linear", {}, "linear", {}),
    ("exp", "periodic, exp beta=4", "periodic", {"period": 5}, "exp", {"beta": 4.0}),
    ("softmax", "periodic, softmax beta=4", "periodic", {"period": 5}, "softmax", {"beta": 4.0}),
    ("gaussian", "periodic Gaussian, gaussian sigma=0.5", "periodic-gaussian", {"period": 5}, "gaussian",
     {"sigma": 0.5}),
]


def constructed(x: torch.Tensor, kernel: str, opts: dict, tokens: str, prev_beta: float | None = None):
    """Predictions (B, T, d) of the constructed Transformer (default step, depth ``DEPTH``)."""
    return run_constructed(x, kernel=kernel, beta=opts.get("beta", 1.0), sigma=opts.get("sigma", 1.0),
                           depth=DEPTH, step=None, ridge=0.0, tokens=tokens, prev_beta=prev_beta)


def relative(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """max |a - b| / max |b| per sequence (B,)."""
    return ((a - b).flatten(1).abs().amax(1) / b.flatten(1).abs().amax(1)).cpu().numpy()


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    batch, length = (8, 30) if quick else (100, 60)
    res: dict = {"vs_prev_beta": {}, "linear_prev": {}}
    headline = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, _, task_name, task_opts, kernel, opts in progress(SETTINGS, NAME, quick=quick):
            x = make_task(task_name, batch, length, DIM, seed=seed, **task_opts).x.to(device)
            aug = constructed(x, kernel, opts, "augmented")
            res["linear_prev"][key] = relative(constructed(x, kernel, opts, "raw"), aug)
            raws = {b: constructed(x, kernel, opts, "raw", float(b)) for b in PREV_BETAS}
            res["vs_prev_beta"][key] = np.array([relative(raws[b], aug) for b in PREV_BETAS])  # (n, B)
            headline[f"{key}: max rel. diff, linear previous-token head"] = float(res["linear_prev"][key].max())
            for b in (8, 16, 32):
                headline[f"{key}: median rel. diff raw vs augmented, softmax prev_beta={b}"] = float(
                    np.median(res["vs_prev_beta"][key][PREV_BETAS.index(b)]))
            if key == "exp":
                res["vs_t"] = {str(b): (raws[b] - aug).norm(dim=-1)[:, 1:-1].cpu().numpy() for b in SHOWN}
                res["error_aug"] = next_token_error(aug, x)[:, 1:].cpu().numpy()
                res["error_raw"] = {str(b): next_token_error(raws[b], x)[:, 1:].cpu().numpy() for b in SHOWN}
    _plot(out, res, batch, length)
    plotting.save_json(out, NAME, dict(
        config=dict(dim=DIM, depth=DEPTH, batch=batch, length=length, prev_betas=PREV_BETAS, step="default",
                    positions="one-hot", settings=[s[:1] + s[2:] for s in SETTINGS], quick=quick, seed=seed,
                    device=device),
        headline=headline,
        vs_prev_beta={k: plotting.quantiles(v, axis=1) for k, v in res["vs_prev_beta"].items()},
        linear_prev={k: float(v.max()) for k, v in res["linear_prev"].items()},
        vs_t={b: plotting.quantiles(v) for b, v in res["vs_t"].items()},
        error_aug=plotting.quantiles(res["error_aug"]),
        error_raw={b: plotting.quantiles(v) for b, v in res["error_raw"].items()}), digits=4)
    return headline


def _plot(out: pathlib.Path, res: dict, batch: int, length: int) -> None:
    fig, axes = plotting.figure(1, 3, width=4.4, height=3.6)
    ax = axes[0]
    for (key, label, *_), col in zip(SETTINGS, ["tab:blue", "tab:orange", "tab:green", "tab:red"]):
        plotting.band(ax, PREV_BETAS, res["vs_prev_beta"][key].T, label=label, color=col, marker=".")
        ax.scatter([PREV_BETAS[-1] * 1.5], [max(res["linear_prev"][key].max(), plotting.FLOOR)], color=col,
                   marker="*", s=40)
    ax.text(0.98, 0.97, "stars: linear previous-token\nhead (exact copy)", transform=ax.transAxes, ha="right",
            va="top", fontsize=7)
    ax.set_xscale("log", base=2)
    plotting.log_axes(ax)
    ax.set_xlabel(r"previous-token inverse temperature $\beta_{\rm prev}$")
    ax.set_ylabel(r"$\max_t |p^{\rm raw} - p^{\rm aug}| / \max_t |p^{\rm aug}|$")
    ax.set_title(f"(a) raw vs augmented tokens, depth {DEPTH}")
    ax.legend(fontsize=7)

    ax = axes[1]
    t = np.arange(1, length - 1)
    for b, col in zip(SHOWN, plotting.colors(len(SHOWN), "plasma")):
        plotting.band(ax, t, res["vs_t"][str(b)], label=rf"$\beta_{{\rm prev}}$ = {b}", color=col)
        ax.plot(t, t * np.exp(-b), color=col, linestyle=":", linewidth=1)
    plotting.log_axes(ax)
    ax.set_xlabel("t")
    ax.set_ylabel(r"$|p^{\rm raw}_t - p^{\rm aug}_t|$")
    ax.set_title(r"(b) exp kernel, vs t (dotted: $t\,e^{-\beta_{\rm prev}}$)")
    ax.legend(fontsize=7)

    ax = axes[2]
    plotting.band(ax, np.arange(1, length - 1), res["error_aug"], label="augmented", color="k", linewidth=2)
    for b, col in zip(SHOWN, plotting.colors(len(SHOWN), "plasma")):
        plotting.band(ax, np.arange(1, length - 1), res["error_raw"][str(b)], label=rf"raw, $\beta_{{\rm prev}}$ = {b}",
                      color=col, linestyle="--")
    plotting.log_axes(ax)
    ax.set_xlabel("t")
    ax.set_ylabel(r"$|\hat x_{t+1} - x_{t+1}|$")
    ax.set_title("(c) exp kernel: next-token error")
    ax.legend(fontsize=7)
    fig.suptitle(f"Constructed Transformer on raw tokens (one-hot positions, softmax previous-token head), d = {DIM}; "
                 f"median and 25-75 % band over {batch} sequences", fontsize=10)
    plotting.save_figure(fig, out, NAME)
