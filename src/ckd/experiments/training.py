"""training: do Transformers trained in context find what CKD does? (SPEC §3, §6; issue 5)

For each task family (linear, periodic, two nonlinear ones), attention (softmax, linear)
and depth L (1, 2, 4 layers) we train two Transformers of the same architecture
(``TransformerConfig`` defaults: 2 heads, width 4d + 1, no MLP) with ``ckd.train``:

    random        nanoGPT init, AdamW lr ``LR["random"]``
    construction  the CKD construction (kernel parameter and step tuned at depth L on separate
                  prompts), then fine-tuned with AdamW lr ``LR["construction"]``

and compare them on fresh prompts (``ckd.evaluate.reference``) with CKD using the
attention as kernel (depth L with the construction's setting, i.e. the construction
before fine-tuning; the best depth; depth inf) and the baselines of SPEC §6. The probe
asks whether each layer's residual stream linearly holds CKD's prediction after that
many layers (``ckd.evaluate.probe``).

Outputs: ``training.png`` (held-out mean squared next-token error vs L per task and
attention), ``training-curves.png`` (held-out loss during training), ``training-probe.png``
(probe of the L = max runs), ``training-vs-t.png`` (median error vs t of the L = max runs),
``training.json`` (every number, config, seed). Training runs in
float32 with one thread (tiny models: faster than two); evaluation in float64.
"""

from __future__ import annotations

import json
import math
import pathlib
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch

from ..evaluate import evaluate_model, reference
from ..train import TrainConfig, load_model, train
from . import plotting, progress

NAME = "training"
TASKS = ("linear", "periodic", "nonlinear", "rotation-tanh")
ATTENTIONS = ("softmax", "linear")
LAYERS = (1, 2, 4)
INITS = ("random", "construction")
LR = {"random": 2e-2, "construction": 3e-3}
FULL = dict(steps=1000, batch=32, length=32, dim=3, warmup=50, log_every=10, eval_every=50, eval_batch=128,
            checkpoint_every=1000)
# the default size of ``ckd reproduce``: the same grid, a quarter of the steps (the curves' early part)
DEFAULT = dict(FULL, steps=250, warmup=20, eval_every=25, checkpoint_every=250)
QUICK = dict(steps=6, batch=8, length=10, dim=2, warmup=2, log_every=2, eval_every=3, eval_batch=8,
             checkpoint_every=6)
BASELINE_NAMES = ("last", "ols", "krr", "analogues")


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    tasks, attentions, layers = (("periodic",), ("softmax",), (1,)) if quick else (TASKS, ATTENTIONS, LAYERS)
    sizes = {"quick": QUICK, "default": DEFAULT}.get(size, FULL)
    sequences = 8 if quick else 64
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results, start = {}, time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            grid = [(t, a) for t in tasks for a in attentions]
            for task, attention in progress(grid, "training", quick=quick):
                base = TrainConfig(task=task, attention=attention, layers=max(layers), seed=seed, **sizes)
                ref = reference(base, sequences=sequences, seed=seed, layers=layers)
                entry = {"ckd": {k: ref["summary"][k] for k in ref["settings"]}, "settings": ref["settings"],
                         "baselines": {k: ref["summary"][k] for k in (*BASELINE_NAMES, "oracle")}, "runs": {}}
                for L in layers:
                    for init in INITS:
                        cfg = TrainConfig(task=task, attention=attention, layers=L, init=init, lr=LR[init],
                                          seed=seed, **sizes)
                        folder = pathlib.Path(tmp) / f"{task}-{attention}-{L}-{init}"
                        t0 = time.perf_counter()
                        records = train(cfg, folder, device=device, progress=False)
                        seconds = time.perf_counter() - t0
                        _, model, _ = load_model(folder / "checkpoint.pt")
                        ev = evaluate_model(model, cfg, ref)
                        entry["runs"][f"L{L}-{init}"] = dict(
                            config=asdict(cfg), seconds=seconds, summary=ev["summary"], probe=ev["probe"],
                            curve=[(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r],
                            error_median=plotting.quantiles(ev["errors"])["median"])
                entry["error_median"] = {k: plotting.quantiles(ref["errors"][k])["median"]
                                         for k in (*ref["settings"], *BASELINE_NAMES)}
                results[f"{task}/{attention}"] = entry
    finally:
        torch.set_num_threads(threads)
    config = dict(tasks=tasks, attentions=attentions, layers=layers, inits=INITS, lr=LR, sizes=sizes,
                  test_sequences=sequences, device=device, quick=quick)
    plots(results, layers, out)
    plotting.save_json(out, NAME, dict(config=config, seed=seed, seconds=time.perf_counter() - start,
                                       results=results))
    return headline(results, max(layers))


def plots(results: dict, layers: tuple, out: pathlib.Path) -> None:
    """The three figures of the experiment from its results."""
    plot_vs_layers(results, layers, out)
    plot_curves(results, layers, out)
    plot_probe(results, max(layers), out)
    plot_vs_t(results, max(layers), out)


def replot(out: pathlib.Path) -> None:
    """Redraw the figures from ``out/training.json`` (no training)."""
    data = json.loads((out / f"{NAME}.json").read_text())
    for entry in data["results"].values():
        for run_ in entry["runs"].values():
            for row in run_["probe"]:  # NaN was written as null
                row.update({k: math.nan for k, v in row.items() if v is None})
    plots(data["results"], tuple(data["config"]["layers"]), out)


def best_baseline(entry: dict) -> tuple[str, float]:
    name = min(BASELINE_NAMES, key=lambda k: entry["baselines"][k]["mse"])
    return name, entry["baselines"][name]["mse"]


def headline(results: dict, L: int) -> dict:
    """Held-out mse of the L-layer models, CKD at depth L and the best baseline, per task/attention."""
    out = {}
    for key, e in results.items():
        for init in INITS:
            out[f"{key} mse L{L} {init}"] = e["runs"][f"L{L}-{init}"]["summary"]["mse"]
        out[f"{key} mse ckd depth {L}"] = e["ckd"][f"ckd depth {L}"]["mse"]
        name, mse = best_baseline(e)
        out[f"{key} mse best baseline"] = mse
        out[f"{key} best baseline"] = name
    return out


def panels(results: dict, width: float = 3.3, height: float = 2.8):
    """One panel per (task, attention): attention in rows, tasks in columns. Returns (fig, [(ax, key)])."""
    keys = list(results)
    tasks = list(dict.fromkeys(k.split("/")[0] for k in keys))
    atts = list(dict.fromkeys(k.split("/")[1] for k in keys))
    fig, axes = plotting.figure(len(atts), len(tasks), width=width, height=height, squeeze=False)
    return fig, [(axes[i][j], f"{task}/{att}") for i, att in enumerate(atts) for j, task in enumerate(tasks)]


def plot_vs_layers(results: dict, layers: tuple, out: pathlib.Path) -> None:
    """Held-out mse vs L: trained (random), construction (before = CKD depth L, after fine-tuning),
    CKD best depth and depth inf, best baseline."""
    fig, grid = panels(results)
    L = list(layers)
    for ax, key in grid:
        e = results[key]
        ax.plot(L, [e["runs"][f"L{n}-random"]["summary"]["mse"] for n in L], "o-", label="trained, random init")
        ax.plot(L, [e["ckd"][f"ckd depth {n}"]["mse"] for n in L], "s--", label="construction = CKD depth L")
        ax.plot(L, [e["runs"][f"L{n}-construction"]["summary"]["mse"] for n in L], "^-",
                label="construction, fine-tuned")
        best = next(k for k in e["ckd"] if k.endswith("(best)"))
        ax.axhline(e["ckd"][best]["mse"], color="k", lw=0.8, ls=":", label="ckd, best depth (1..32)")
        ax.annotate(f"N={e['settings'][best]['depth']}", (L[-1], e["ckd"][best]["mse"]), fontsize=6,
                    textcoords="offset points", xytext=(2, 2))
        ax.axhline(e["ckd"]["ckd depth inf"]["mse"], color="crimson", lw=0.8, ls="-.", label="ckd depth inf")
        name, mse = best_baseline(e)
        ax.axhline(mse, color="grey", lw=0.8, ls="--", label="best baseline (last, ols, krr, analogues)")
        ax.annotate(name, (L[0], mse), fontsize=6, textcoords="offset points", xytext=(2, 2))
        plotting.log_axes(ax)
        ax.set_xticks(L)
        ax.set(title=key.replace("/", ", ") + " attn.", xlabel="layers L", ylabel="held-out mse")
    grid[0][0].legend(fontsize=5.5)
    plotting.save_figure(fig, out, NAME)


def plot_curves(results: dict, layers: tuple, out: pathlib.Path) -> None:
    """Held-out loss during training, every run."""
    fig, grid = panels(results, width=3.0, height=2.5)
    colors = plotting.colors(len(layers))
    for ax, key in grid:
        for L, c in zip(layers, colors):
            for init, ls in zip(INITS, ("-", "--")):
                steps, loss = zip(*results[key]["runs"][f"L{L}-{init}"]["curve"])
                ax.plot(steps, loss, ls, color=c, label=f"L={L} {init}")
        plotting.log_axes(ax)
        ax.set(title=key.replace("/", ", ") + " attn.", xlabel="step", ylabel="held-out loss")
    grid[0][0].legend(fontsize=5.5)
    plotting.save_figure(fig, out, f"{NAME}-curves")


def plot_probe(results: dict, L: int, out: pathlib.Path) -> None:
    """Relative error of reading CKD's depth-l prediction from layer l, for the L-layer models."""
    fig, grid = panels(results, width=3.0, height=2.5)
    for ax, key in grid:
        for init, marker in zip(INITS, ("o", "^")):
            rows = results[key]["runs"][f"L{L}-{init}"]["probe"][1:]  # layer 0 holds p_0 = 0: nothing to read
            ax.plot([r["ckd_depth"] for r in rows], [max(r["probe_to_ckd"], plotting.FLOOR) for r in rows],
                    marker + "-", label=f"L={L}, {init}")
        rows = results[key]["runs"][f"L{L}-random"]["probe"][1:]
        ax.plot([r["ckd_depth"] for r in rows], [r["control_to_ckd"] for r in rows], "k:",
                label="control: read from the tokens")
        plotting.log_axes(ax)
        ax.set(title=key.replace("/", ", ") + " attn.", xlabel="layer l", ylabel="|V h_l - p_l|^2 / |p_l|^2")
        ax.set_xticks(list(range(1, L + 1)))
    grid[0][0].legend(fontsize=6)
    plotting.save_figure(fig, out, f"{NAME}-probe")


def plot_vs_t(results: dict, L: int, out: pathlib.Path) -> None:
    """Median error |prediction - x_{t+1}| vs t of the L-layer models, CKD and the best baseline."""
    fig, grid = panels(results, width=3.0, height=2.5)
    for ax, key in grid:
        e = results[key]
        name, _ = best_baseline(e)
        curves = [(f"L={L}, random init", e["runs"][f"L{L}-random"]["error_median"], "-"),
                  (f"L={L}, construction + fine-tuning", e["runs"][f"L{L}-construction"]["error_median"], "-"),
                  (f"ckd depth {L} (= construction)", e["error_median"][f"ckd depth {L}"], "--"),
                  ("ckd depth inf", e["error_median"]["ckd depth inf"], "-."),
                  (f"best baseline ({name})", e["error_median"][name], ":")]
        for label, median, ls in curves:
            m = np.asarray(median, dtype=float)
            t = np.arange(1, len(m))
            ax.plot(t, np.maximum(m[1:], plotting.FLOOR), ls, label=label)
        plotting.log_axes(ax)
        ax.set(title=key.replace("/", ", ") + " attn.", xlabel="t", ylabel="median |x^_{t+1} - x_{t+1}|")
        ax.legend(fontsize=5)
    plotting.save_figure(fig, out, f"{NAME}-vs-t")
