"""looped: test-time depth of looped Transformers against CKD (issue 20, item 2).

CKD's layers are all the same map, so a looped (weight-tied) Transformer is its natural learner
(``ckd.looped``). For three families (periodic / softmax, orthogonal A / linear, nonlinear tanh
map / softmax) we train two looped models with ``ckd.train`` (one block, 2 heads, width 4d + 1,
``--loop L``, a loop count drawn per step from ``RANGE`` (L/2 .. 2L), the loss averaged over the
predictions after every pass (``--loop-loss every``)):

    random        random init (lr 2e-2; linear attention: LayerNorm and lr 1e-2, without which it
                  diverges)
    construction  the CKD construction (one layer, kernel parameter and step tuned at depth L on
                  separate prompts, ``--init construction``) looped, then fine-tuned (lr 3e-3)

(periodic: ``--loss-from 5``, the loss on the rows after the first period: see benchmarks/plateau.py).
Then each model runs K = 1, 2, 4, ..., 8 L loops on fresh prompts (``ckd.evaluate.reference``), and
we compare its error with

    CKD depth K, step of L   the setting tuned at depth L run for K layers: what the construction
                             looped K times computes (before fine-tuning)
    CKD depth K, tuned       kernel parameter and step tuned at depth K
    CKD depth inf            the Kaczmarz limit

and probe (``ckd.evaluate.probe``) the residual stream after each pass l = 1..4 L for CKD's iterate
p_l (the setting of depth L). Outputs: ``looped.png`` (error at the last t vs loops; probe vs pass),
``looped-vs-t.png`` (error vs t at K = L and 4 L), ``looped.json`` (every number, configs, seed).
Training in float32 on one thread, evaluation in float64.
"""

from __future__ import annotations

import pathlib
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch

from ..evaluate import probe, reference, run_ckd
from ..metrics import next_token_error
from ..train import TrainConfig, load_model, next_token_loss, train
from . import plotting, progress

NAME = "looped"
FAMILIES = (("periodic", "softmax"), ("linear", "linear"), ("nonlinear", "softmax"))
INITS = ("random", "construction")
LR = {"random": 2e-2, "construction": 3e-3}
# per family: TrainConfig fields of both inits, and of the random init only
COMMON = {"periodic": dict(loss_from=5), "linear": {}, "nonlinear": {}}
RANDOM = {"periodic": {}, "linear": dict(layernorm=True, lr=1e-2), "nonlinear": {}}
FULL = dict(loops=8, steps=3000, batch=32, length=32, dim=3, warmup=100)
DEFAULT = dict(loops=4, steps=1000, batch=32, length=32, dim=3, warmup=50)
QUICK = dict(loops=2, steps=6, batch=8, length=10, dim=2, warmup=2)


def config(task: str, attention: str, init: str, size: dict, seed: int) -> TrainConfig:
    """The ``TrainConfig`` of one looped run (module doc)."""
    L = size["loops"]
    fields = dict(task=task, attention=attention, init=init, layers=L, loop=L, loop_range=[max(1, L // 2), 2 * L],
                  loop_loss="every", lr=LR[init], steps=size["steps"], batch=size["batch"], length=size["length"],
                  dim=size["dim"], warmup=size["warmup"], seed=seed, log_every=10, eval_every=size["steps"],
                  checkpoint_every=size["steps"])
    fields |= COMMON[task] | (RANDOM[task] if init == "random" else {})
    if fields.get("loss_from", 1) > size["length"] - 2:
        fields["loss_from"] = size["length"] - 2
    return TrainConfig(**fields).validate()


def loop_counts(L: int) -> list[int]:
    """1, 2, 4, ... up to 8 L, with L itself."""
    ks, k = {L}, 1
    while k <= 8 * L:
        ks.add(k)
        k *= 2
    return sorted(ks)


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    sz = {"quick": QUICK, "default": DEFAULT}.get(size, FULL)
    L, sequences = sz["loops"], 8 if quick else 64
    ks = loop_counts(L)
    families = FAMILIES[:1] if quick else FAMILIES
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results, start = {}, time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for task, attention in progress(families, NAME, quick=quick):
                results[f"{task}/{attention}"] = family(task, attention, sz, ks, seed, sequences, device,
                                                        pathlib.Path(tmp))
    finally:
        torch.set_num_threads(threads)
    cfg = dict(families=[list(f) for f in families], inits=INITS, lr=LR, common=COMMON, random=RANDOM, size=sz,
               loops=ks, test_sequences=sequences, device=device, size_name=size)
    plots(results, L, ks, out)
    plotting.save_json(out, NAME, dict(config=cfg, seed=seed, seconds=time.perf_counter() - start,
                                       results=results))
    return headline(results, L)


def family(task: str, attention: str, sz: dict, ks: list[int], seed: int, sequences: int, device: str,
           tmp: pathlib.Path) -> dict:
    """Train both inits of one family, measure every loop count against CKD, probe every pass."""
    L, last = sz["loops"], sz["length"] - 2
    base = config(task, attention, "construction", sz, seed)
    ref = reference(base, sequences=sequences, seed=seed, layers=tuple(ks))
    x, setting = ref["x"], ref["settings"][f"ckd depth {L}"]

    def errors_of(pred: torch.Tensor) -> dict:
        e = next_token_error(pred, x)
        return dict(err_last=float(e[:, last].median()), mse=float(next_token_loss(pred, x)),
                    median=plotting.quantiles(e)["median"])

    ckd_at_L = {k: errors_of(run_ckd(x, {**setting, "depth": k})) for k in ks}
    entry = dict(settings=ref["settings"], ckd_step_of_L=ckd_at_L,
                 ckd_tuned={k: errors_of(run_ckd(x, ref["settings"][f"ckd depth {k}"])) for k in ks},
                 ckd_inf=errors_of(run_ckd(x, ref["settings"]["ckd depth inf"])), runs={})
    for init in INITS:
        cfg = config(task, attention, init, sz, seed)
        folder = tmp / f"{task}-{init}"
        t0 = time.perf_counter()
        records = train(cfg, folder, device=device, progress=False)
        seconds = time.perf_counter() - t0
        _, model, _ = load_model(folder / "checkpoint.pt")
        model = model.double().eval()
        with torch.no_grad():
            per_k = {k: errors_of(model(x, loops=k)) for k in ks}
        model.loops = 4 * L  # the probe reads every pass up to 4 L
        rows = probe(model, ref["x_fit"], x, setting)
        entry["runs"][init] = dict(config=asdict(cfg), seconds=seconds, final_loss=records[-1]["loss"],
                                   loops=per_k, probe=rows)
    return entry


def falls_until(per_k: dict, L: int) -> int:
    """The largest K <= 8 L up to which the error at the last t falls at every doubling from L (L if it
    rises at once)."""
    ks = [k for k in sorted(per_k) if k >= L]
    best = L
    for a, b in zip(ks, ks[1:]):
        if per_k[b]["err_last"] >= per_k[a]["err_last"]:
            break
        best = b
    return best


def headline(results: dict, L: int) -> dict:
    """Median error at the last t: each init at L and 4 L loops (and its best K), CKD at depth L and inf; how far
    the error keeps falling with loops."""
    out: dict = {}
    for key, e in results.items():
        for init in INITS:
            per_k = e["runs"][init]["loops"]
            best = min(per_k, key=lambda k: per_k[k]["err_last"])
            out[f"{key} {init} err last, {L} loops (trained)"] = per_k[L]["err_last"]
            out[f"{key} {init} err last, {4 * L} loops"] = per_k[4 * L]["err_last"]
            out[f"{key} {init} best loops"] = best
            out[f"{key} {init} error falls up to loops"] = falls_until(per_k, L)
        out[f"{key} ckd depth {L} err last"] = e["ckd_step_of_L"][L]["err_last"]
        out[f"{key} ckd depth inf err last"] = e["ckd_inf"]["err_last"]
    return out


def plots(results: dict, L: int, ks: list[int], out: pathlib.Path) -> None:
    """looped.png (error at the last t vs loops, probe vs pass) and looped-vs-t.png."""
    keys = list(results)
    fig, axes = plotting.figure(2, len(keys), width=3.4, height=2.8, squeeze=False)
    for j, key in enumerate(keys):
        e, ax, axp = results[key], axes[0][j], axes[1][j]
        for init, marker in zip(INITS, ("o", "^")):
            per_k = e["runs"][init]["loops"]
            ax.plot(ks, [max(per_k[k]["err_last"], plotting.FLOOR) for k in ks], marker + "-",
                    label=f"looped, {init} init")
        for name, label, ls in (("ckd_step_of_L", f"CKD depth K, step of depth {L} (= construction)", "--"),
                                ("ckd_tuned", "CKD depth K, tuned at K", ":")):
            ax.plot(ks, [max(e[name][k]["err_last"], plotting.FLOOR) for k in ks], "s" + ls, ms=3, label=label)
        ax.axhline(max(e["ckd_inf"]["err_last"], plotting.FLOOR), color="crimson", lw=0.8, ls="-.",
                   label="CKD depth inf")
        rng = e["runs"]["random"]["config"]["loop_range"]
        ax.axvspan(rng[0], rng[1], color="grey", alpha=0.12, lw=0, label="loops trained")
        plotting.log_axes(ax, x=True)
        ax.set(title=key.replace("/", ", ") + " attn.", xlabel="loops K", ylabel="median error, last t")
        for init, marker in zip(INITS, ("o", "^")):
            rows = e["runs"][init]["probe"][1:]
            axp.plot([r["ckd_depth"] for r in rows], [max(r["probe_to_ckd"], plotting.FLOOR) for r in rows],
                     marker + "-", ms=3, label=f"{init} init")
        rows = e["runs"]["random"]["probe"][1:]
        axp.plot([r["ckd_depth"] for r in rows], [r["control_to_ckd"] for r in rows], "k:", label="control: tokens")
        axp.axvline(L, color="grey", lw=0.6)
        plotting.log_axes(axp)
        axp.set(xlabel="pass l", ylabel="|V h_l - p_l|^2 / |p_l|^2", title="probe: CKD's iterate p_l")
    axes[0][0].legend(fontsize=5)
    axes[1][0].legend(fontsize=5.5)
    plotting.save_figure(fig, out, NAME)

    fig, axes = plotting.figure(1, len(keys), width=3.4, height=2.8, squeeze=False)
    for ax, key in zip(axes[0], keys):
        e = results[key]
        curves = [(f"{init} init, {k} loops", e["runs"][init]["loops"][k]["median"], ls)
                  for init in INITS for k, ls in ((L, "-"), (4 * L, "--"))]
        curves += [(f"CKD depth {L}", e["ckd_step_of_L"][L]["median"], ":"),
                   ("CKD depth inf", e["ckd_inf"]["median"], "-.")]
        for label, median, ls in curves:
            m = np.asarray(median, dtype=float)
            ax.plot(np.arange(1, len(m)), np.maximum(m[1:], plotting.FLOOR), ls, label=label)
        plotting.log_axes(ax)
        ax.set(title=key.replace("/", ", ") + " attn.", xlabel="t", ylabel="median |x^_{t+1} - x_{t+1}|")
    axes[0][0].legend(fontsize=5)
    plotting.save_figure(fig, out, f"{NAME}-vs-t")
