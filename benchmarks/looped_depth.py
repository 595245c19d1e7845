"""Does a looped model trained from random init keep improving with test-time loops? (issue 20, goal A).

    python benchmarks/looped_depth.py --out runs/looped-depth                  # the study (three families)
    python benchmarks/looped_depth.py --out runs/looped-depth --only base last  # some variants
    python benchmarks/looped_depth.py --out runs/looped-depth --report          # the markdown table of the runs

One base recipe: one block (2 heads, width 13, no MLP, no LayerNorm) looped with tied weights, random init,
``--loop 2``, a loop count drawn per step from 1..4 (``--loop-range 1,4``), the loss averaged over the
predictions after every pass (``--loop-loss every``), 1000 AdamW steps, lr 2e-2 (linear attention: 1e-2),
50 warm-up steps, cosine to 0.1 lr, batch 32, T = 32, d = 3, float32, seed 0 (periodic: ``--loss-from 5``,
the rows after the first period, as in ``ckd reproduce looped``), and variants (``VARIANTS``): the loss after
the last pass only or over a window of the last passes (``--loop-window``), the input re-injected every pass,
post-LayerNorm (``--norm post``: the stream normalised after every block, so the loop map acts on a bounded
set), a smaller lr, a wider or narrower loop range, 1500 steps, batch 128, seeds.

Every model is scored on the same 64 fresh prompts (seed stream ``TEST`` of seed 0, T = 32, float64) at
K = 1, 2, 4, 8, 16, 32 loops and at 4x the largest loop count it was trained with: median error
|prediction - x_{t+1}| at t = 30. Beside them, CKD with the setting tuned at depth 4 run for K layers (what the
looped construction computes) and CKD at depth inf. "falls to" is the largest K up to which the error falls by
at least 1 % at every doubling from the largest trained count ("-": it does not fall beyond it; the goal: at
least 4x that count). Runs are saved at once into OUT/looped_depth.json; a run folder left by a run cut short
must be removed before it is run again.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from study import run_study, study_parser

import ckd
from ckd.evaluate import reference, run_ckd
from ckd.train import TEST, TrainConfig, load_model, seed_for, train

FAMILIES = (("nonlinear", "softmax"), ("periodic", "softmax"), ("linear", "linear"))
BASE = dict(layers=2, loop=2, loop_range=[1, 4], loop_loss="every", steps=1000, lr=2e-2, warmup=50, batch=32,
            length=32, dim=3, seed=0, log_every=50, eval_every=1000, eval_batch=128, checkpoint_every=1000)
PER_FAMILY = {"nonlinear": {}, "periodic": dict(loss_from=5), "linear": dict(lr=1e-2)}
FALL = 0.01  # "falls": by at least 1 % (a model at its fixed point moves by ~1e-5 from 16 to 32 loops)
KS = (1, 2, 4, 8, 16, 32)
LAST = 30  # the t scored (the last prediction of T = 32)

PR = dict(norm="post", reinject=True)  # post-LayerNorm + re-injection ("PR" in the labels)
LONG = PR | dict(loop_loss="last", steps=1500, eval_every=1500, checkpoint_every=1500)
WIDE = dict(layers=4, loop=4, loop_range=[1, 8])

# name: (label, TrainConfig changes to BASE); PR = post-LayerNorm (--norm post) + re-injection (--reinject)
VARIANTS: dict[str, tuple[str, dict]] = {
    "base": ("base: loss every pass, loops 1..4", {}),
    "last": ("loss after the last pass only", dict(loop_loss="last")),
    "reinject": ("input re-injected every pass (--reinject)", dict(reinject=True)),
    "post": ("post-LayerNorm (--norm post)", dict(norm="post")),
    "pre-reinject": ("pre-LayerNorm (--layernorm) + re-injection", dict(norm="pre", reinject=True)),
    "wide": ("loops 1..8 (--loop 4)", WIDE),
    "post-reinject": ("PR", PR),
    "post-reinject-lr": ("PR, lr 5e-3", PR | dict(lr=5e-3)),
    "post-reinject-window": ("PR, loss on the last 2 passes (--loop-window 2)", PR | dict(loop_window=2)),
    "post-reinject-deep": ("PR, loops 1..16 (--loop 8), loss on the last 4 passes",
                           PR | dict(layers=8, loop=8, loop_range=[1, 16], loop_window=4)),
    "post-reinject-last": ("PR, last pass", PR | dict(loop_loss="last")),
    "post-reinject-last-lr": ("PR, last pass, lr / 4", PR | dict(loop_loss="last", lr="/4")),
    "post-reinject-last-wide": ("PR, last pass, loops 1..8 (--loop 4)", PR | dict(loop_loss="last") | WIDE),
    "post-reinject-last-long": ("PR, last pass, 1500 steps", LONG),
    "post-reinject-last-long-seed1": ("PR, last pass, 1500 steps, seed 1", LONG | dict(seed=1)),
    "post-reinject-last-long-seed2": ("PR, last pass, 1500 steps, seed 2", LONG | dict(seed=2)),
    "post-reinject-last-long-batch": ("PR, last pass, 1500 steps, batch 128", LONG | dict(batch=128)),
    "post-reinject-last-long-wide": ("PR, last pass, 1500 steps, loops 1..8 (--loop 4)", LONG | WIDE),
    "post-reinject-last-long-mlp": ("PR, last pass, 1500 steps, an MLP in the block (--mlp)", LONG | dict(mlp=True)),
    "post-reinject-last-long-heads": ("PR, last pass, 1500 steps, 4 heads", LONG | dict(heads=4)),
    "post-reinject-last-long-lr2": ("PR, last pass, 1500 steps, lr x 2", LONG | dict(lr="x2")),
    "post-reinject-last-long-lr2-seed1": ("PR, last pass, 1500 steps, lr x 2, seed 1", LONG | dict(lr="x2", seed=1)),
    "post-reinject-last-long-lr2-seed2": ("PR, last pass, 1500 steps, lr x 2, seed 2", LONG | dict(lr="x2", seed=2)),
    "short": ("PR, last pass, 1500 steps, loops 1..2", LONG | dict(loop_range=[1, 2])),
    "short-seed1": ("PR, last pass, 1500 steps, loops 1..2, seed 1", LONG | dict(loop_range=[1, 2], seed=1)),
    "short-seed2": ("PR, last pass, 1500 steps, loops 1..2, seed 2", LONG | dict(loop_range=[1, 2], seed=2)),
    "short-fixed": ("PR, last pass, 1500 steps, 2 loops at every step", LONG | dict(loop_range=None)),
}
# what the study ran (the default of --only): every variant on the linear family, the first 14 on the others
STUDY = {"linear": list(VARIANTS), "nonlinear": list(VARIANTS)[:14], "periodic": list(VARIANTS)[:14]}


def test_prompts(task: str) -> torch.Tensor:
    """The 64 prompts every model is scored on (T = 32, d = 3, seed stream TEST of seed 0)."""
    return ckd.make_task(task, 64, 32, 3, seed=seed_for(0, TEST)).x


def err_last(pred: torch.Tensor, x: torch.Tensor) -> float:
    """Median over prompts of |pred[:, LAST] - x[:, LAST + 1]|."""
    return float(ckd.next_token_error(pred, x)[:, LAST].median())


def falls_to(errors: dict[str, float], trained: int) -> int:
    """The largest K (of those scored, doubling from ``trained``) up to which the error falls by at least ``FALL``
    (relative) at every doubling."""
    ks = sorted(k for k in map(int, errors) if k >= trained)
    best = trained
    for a, b in zip(ks, ks[1:]):
        if errors[str(b)] > (1 - FALL) * errors[str(a)]:
            break
        best = b
    return best


def run_one(name: str, task: str, attention: str, out: Path, variants: dict | None = None,
            base: dict | None = None) -> dict:
    """Train variant ``name`` of ``variants`` (default ``VARIANTS``: (label, changes to ``base``, default ``BASE``,
    and ``PER_FAMILY``)) into OUT/TASK-ATTENTION-NAME and score it at the loop counts of ``KS`` and 1, 2, 4x
    the largest trained count."""
    what, changes = (VARIANTS if variants is None else variants)[name]
    fields = (BASE if base is None else base) | PER_FAMILY[task] | changes
    if fields["lr"] in ("/4", "x2"):  # a quarter or twice the family's lr
        fields["lr"] = ((BASE if base is None else base) | PER_FAMILY[task])["lr"] * (0.25 if fields["lr"] == "/4"
                                                                                      else 2)
    cfg = TrainConfig(task=task, attention=attention, **fields).validate()
    folder = out / f"{task}-{attention}-{name}"
    t0 = time.perf_counter()
    records = train(cfg, folder, progress=False)
    wall = time.perf_counter() - t0
    _, model, _ = load_model(folder / "checkpoint.pt")
    model = model.double().eval()
    trained = cfg.loop_range[1] if cfg.loop_range else cfg.loop
    x = test_prompts(task)
    ks = sorted({*KS, trained, 2 * trained, 4 * trained})
    with torch.no_grad():
        errors = {str(k): err_last(model(x, loops=k), x) for k in ks}
    return dict(variant=name, change=what, task=task, attention=attention, config=asdict(cfg), trained_loops=trained,
                train_seconds=wall, final_loss=records[-1]["loss"], err_last=errors,
                falls_to=falls_to(errors, trained))


def ckd_reference(task: str, attention: str) -> dict:
    """CKD with the setting tuned at depth 4 (separate prompts) run for K layers, and CKD at depth inf."""
    cfg = TrainConfig(task=task, attention=attention, **(BASE | dict(layers=4, loop=4)))
    settings = reference(cfg, sequences=64)["settings"]
    x = test_prompts(task)
    step4 = {str(k): err_last(run_ckd(x, {**settings["ckd depth 4"], "depth": k}), x) for k in KS}
    return {"CKD depth K, step of depth 4 (the construction looped K times)": step4,
            "CKD depth inf": {"1": err_last(run_ckd(x, settings["ckd depth inf"]), x)}}


def report(data: dict, labels: dict[str, str] | None = None) -> str:
    """The markdown tables of ``data``'s runs, one per family, rows in the order of ``labels`` (name -> label;
    default those of ``VARIANTS``)."""
    labels = {name: label for name, (label, _) in VARIANTS.items()} if labels is None else labels
    lines = []
    for task, attention in FAMILIES:
        order = {name: i for i, name in enumerate(labels)}
        rows = sorted((r for r in data["results"] if r["task"] == task and r["attention"] == attention),
                      key=lambda r: order.get(r["variant"], len(order)))
        if not rows:
            continue
        lines += [f"\n{task} / {attention} attention: median error at t = {LAST} vs test-time loops K "
                  "(64 fresh prompts, T = 32)\n",
                  "| variant | train s | trained loops | " + " | ".join(f"K = {k}" for k in KS)
                  + " | 4x trained | falls to |", "|---" * (5 + len(KS)) + "|"]
        for r in rows:
            e, n = r["err_last"], r["trained_loops"]
            label = labels.get(r["variant"], r["change"])
            lines.append(f"| {label} | {r['train_seconds']:.0f} | {n} | "
                         + " | ".join(f"{e[str(k)]:.2g}" for k in KS)
                         + f" | {e[str(4 * n)]:.2g} (K = {4 * n}) | {falls_to(e, n) if falls_to(e, n) > n else '-'} |")
        for k, e in data.get("ckd", {}).get(f"{task}/{attention}", {}).items():
            lines.append(f"| {k} | | | " + " | ".join(f"{e[str(j)]:.2g}" if str(j) in e else "" for j in KS)
                         + " | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = study_parser(__doc__, VARIANTS, FAMILIES, "looped_depth.json").parse_args(argv)
    path = args.out / "looped_depth.json"
    if args.report:
        print(report(json.loads(path.read_text())))
        return 0
    families = [(t, a) for t, a in FAMILIES if t in args.families]
    data = run_study(path, families, lambda task: STUDY[task] if args.only is None else args.only, ckd_reference,
                     lambda name, task, attention: run_one(name, task, attention, args.out),
                     lambda r: f"t={LAST} error by K " + " ".join(f"{k}:{v:.3g}" for k, v in r["err_last"].items()))
    print(report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
