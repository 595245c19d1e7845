"""transformer-equals-descent: the constructed Transformer against CKD, per kernel (SPEC §3).

Contract: in float64 the Transformer of ``ckd.construction`` equals causal kernel descent
(``ckd.descent.descend``) to 1e-9 relative error, for every kernel, depth, step and ridge,
batched. We measure, over a batch of sequences and for each kernel, depth in {1, 4, 16}, ridge
in {0, 0.1} and tokens augmented / raw (with the exact linear previous-token head),

    max over the batch of  max |p_transformer - p_descent| / max |p_descent|

and write it as a table (``transformer-equals-descent.md``) and a bar chart.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from ..construction import run_constructed
from ..descent import descend
from ..sequences import make_task
from . import plotting, progress

NAME = "transformer-equals-descent"
DIM = 5
DEPTHS = (1, 4, 16)
RIDGES = (0.0, 0.1)
TOKENS = ("augmented", "raw")
CONTRACT = 1e-9
# (label, task, task options, kernel, kernel options)
SETTINGS = [
    ("linear", "linear", {}, "linear", {}),
    ("exp beta=4", "periodic", {"period": 5}, "exp", {"beta": 4.0}),
    ("exp beta=400 (rescaled)", "periodic", {"period": 5}, "exp", {"beta": 400.0}),
    ("softmax beta=4", "periodic", {"period": 5}, "softmax", {"beta": 4.0}),
    ("gaussian sigma=0.5", "rotation-tanh", {}, "gaussian", {"sigma": 0.5}),
]


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    batch, length = (8, 24) if quick else (100, 40)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # default-step transients are measured elsewhere (kaczmarz-limit)
        for label, task_name, task_opts, kernel, opts in progress(SETTINGS, NAME, quick=quick):
            x = make_task(task_name, batch, length, DIM, seed=seed, **task_opts).x.to(device)
            beta, sigma = opts.get("beta", 1.0), opts.get("sigma", 1.0)
            for depth in DEPTHS:
                for ridge in RIDGES:
                    ref = descend(x, kernel, beta=beta, sigma=sigma, depth=depth, ridge=ridge)
                    scale = ref.flatten(1).abs().amax(1)
                    for tokens in TOKENS:
                        got = run_constructed(x, kernel=kernel, beta=beta, sigma=sigma, depth=depth, step=None,
                                              ridge=ridge, tokens=tokens)
                        diff = float(((got - ref).flatten(1).abs().amax(1) / scale).max())
                        rows.append(dict(setting=label, kernel=kernel, depth=depth, ridge=ridge, tokens=tokens,
                                         max_rel_diff=diff))
    headline = {}
    for label, *_ in SETTINGS:
        worst = float(np.max([r["max_rel_diff"] for r in rows if r["setting"] == label]))  # NaN propagates
        headline[f"{label}: max relative difference (all depths, ridges, tokens)"] = worst
    overall = float(np.max([r["max_rel_diff"] for r in rows]))
    headline["contract 1e-9 met in every row"] = "yes" if overall <= CONTRACT else f"no (worst {overall:.3g})"
    _table(out, rows, batch, length)
    _plot(out, rows, batch)
    plotting.save_json(out, NAME, dict(
        config=dict(dim=DIM, batch=batch, length=length, depths=DEPTHS, ridges=RIDGES, tokens=TOKENS,
                    step="default", dtype="float64", quick=quick, seed=seed, device=device),
        headline=headline, rows=rows), digits=4)
    return headline


def _table(out: pathlib.Path, rows: list[dict], batch: int, length: int) -> None:
    cols = [(d, r, tok) for d in DEPTHS for r in RIDGES for tok in TOKENS]
    lines = [f"Max relative difference, constructed Transformer vs CKD, float64, {batch} sequences of length "
             f"{length}, d = {DIM}, default step (raw = linear previous-token head).", "",
             "| setting | " + " | ".join(f"N={d}, λ={r:g}, {tok}" for d, r, tok in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for label, *_ in SETTINGS:
        cells = [next(x["max_rel_diff"] for x in rows if (x["setting"], x["depth"], x["ridge"], x["tokens"])
                      == (label, d, r, tok)) for d, r, tok in cols]
        lines.append(f"| {label} | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")


def _plot(out: pathlib.Path, rows: list[dict], batch: int) -> None:
    fig, ax = plotting.figure(1, 1, width=8.5, height=3.8)
    labels = [s[0] for s in SETTINGS]
    groups = [(d, tok) for d in DEPTHS for tok in TOKENS]
    width = 0.8 / len(groups)
    cols = plotting.colors(len(groups), "viridis")
    for j, ((depth, tok), col) in enumerate(zip(groups, cols)):
        vals = [max(r["max_rel_diff"] for r in rows if r["setting"] == lab and r["depth"] == depth
                    and r["tokens"] == tok) for lab in labels]
        ax.bar(np.arange(len(labels)) + (j - (len(groups) - 1) / 2) * width, np.maximum(vals, 1e-18), width,
               color=col, label=f"depth {depth}, {tok}", hatch="//" if tok == "raw" else None)
    ax.axhline(CONTRACT, color="crimson", linestyle="--", linewidth=1.2, label="contract 1e-9")
    ax.set_xticks(range(len(labels)), labels)
    plotting.log_axes(ax)
    ax.set_ylim(1e-17, max(1e-6, 30 * max(r["max_rel_diff"] for r in rows)))
    ax.set_ylabel("max relative difference\n(worst over batch and ridge)")
    ax.set_title(f"Constructed Transformer vs causal kernel descent, float64, {batch} sequences, d = {DIM}")
    ax.legend(ncol=4, fontsize=7, loc="upper left")
    plotting.save_figure(fig, out, NAME)
