"""Can a looped model learn a descent step? Loops whose scores read the input tokens, and the CKD-shaped loop
(issue 20, goals A and B).

    python benchmarks/looped_descent.py --out runs/looped-descent            # the study (three families)
    python benchmarks/looped_descent.py --out runs/looped-descent --report   # the markdown table of the runs
    python benchmarks/looped_descent.py --out OUT --families linear --only ckd-curr-32-64-lr  # a curriculum
    python benchmarks/looped_descent.py --out OUT --tail RUN linear 64          # 1024 fresh prompts (``tail``)
    python benchmarks/looped_descent.py --out OUT --families linear --ckd-bound 32 64 128   # CKD in this shape
    python benchmarks/looped_descent.py --out OUT --diagnose-linear RUN         # what sets a linear loop's error

CKD's layers are all the same map, r <- r - eta R(x) r, p <- p + eta P(x) r, whose kernel depends on the tokens x
only: a fixed linear iteration. The looped models of ``looped_depth.py`` recompute their attention from the
stream in every pass. Here (``ckd train --loop-qk input``) the queries and keys read the input tokens
e_t = (x_{t-1}, x_t, 1), so the attention pattern is the same in every pass and, without LayerNorm or MLP, every
pass is affine in the stream; ``--loop-shape ckd`` further holds the block to CKD's layout (values read the r slot,
head 0 writes r, head 1 writes p, the read-out reads p, the construction's embedding; the query / key maps and the
value / output entries inside that layout learned from random init: ``ckd.looped.ckd_shape``).

The recipe is ``looped_depth.py``'s base (one block, 2 heads, width 13, no MLP, no LayerNorm, random init,
``--loop 2 --loop-range 1,4 --loop-loss every``, 1000 AdamW steps, lr 2e-2, linear attention 1e-2, batch 32,
T = 32, d = 3, float32, seed 0, periodic ``--loss-from 5``) with ``--loop-qk input`` and the variants of
``VARIANTS``; the models are scored exactly as there (``looped_depth.run_one``: the same 64 fresh prompts, median
error at t = 30 at K = 1 .. 32 loops and 1, 2, 4x the largest trained count, "falls to" the largest K up to which
the error falls by >= 1 % at every doubling). Runs are saved at once into OUT/looped_descent.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import looped_depth as ld
import torch
from study import run_study, study_parser

import ckd
from ckd.train import load_model

BASE = ld.BASE | dict(loop_qk="input")
SHAPE = dict(loop_shape="ckd")
DEEP = dict(layers=8, loop=8, loop_range=[1, 16], loop_loss="last")  # loops 1..16, the loss after the last pass
LONG = dict(steps=3000, eval_every=3000, checkpoint_every=3000)

NOMINAL = SHAPE | DEEP | dict(layers=32, loop=32, loop_range=[16, 32])  # linear-linear-loop-ckd's recipe


def more_loops(parent: str, lo: int, hi: int, **changes) -> dict:
    """``NOMINAL`` warm-started from variant ``parent`` and trained on with loops lo..hi (nominal hi)."""
    return NOMINAL | dict(init_from=f"@{parent}", layers=hi, loop=hi, loop_range=[lo, hi]) | changes


CURRICULUM: dict[str, tuple[str, dict]] = {
    "ckd-curr-32-64": ("CKD shape, 16..32 (nominal 32), then from it 1000 steps with loops 32..64 (--init-from)",
                       more_loops("ckd-range-16-32-nominal-32", 32, 64)),
    "ckd-curr-32-64-lr": ("CKD shape, 16..32 (nominal 32), then from it 1000 steps with loops 32..64, lr 2e-3",
                          more_loops("ckd-range-16-32-nominal-32", 32, 64, lr=2e-3)),
    "ckd-curr-64-128-lr": ("CKD shape, 16..32, then 32..64 (lr 2e-3), then from it 1000 steps with loops 64..128, "
                           "lr 2e-3", more_loops("ckd-curr-32-64-lr", 64, 128, lr=2e-3)),
    "ckd-curr-32-64-lr-lbfgs": ("CKD shape, 16..32, then 32..64 (lr 2e-3), then from it 100 L-BFGS iterations with "
                                "loops 32..64 (no AdamW step)",
                                more_loops("ckd-curr-32-64-lr", 32, 64, steps=0, lbfgs_steps=100)),
    "ckd-curr-32-64-lr-lbfgs-rows-16": ("CKD shape, 16..32, then 32..64 (lr 2e-3), then from it 100 L-BFGS "
                                        "iterations with loops 32..64 on rows t >= 16 (no AdamW step)",
                                        more_loops("ckd-curr-32-64-lr", 32, 64, steps=0, lbfgs_steps=100,
                                                   loss_from=16)),
    "ckd-curr-32-64-lr-lbfgs-rows-16-1024": ("CKD shape, 16..32, then 32..64 (lr 2e-3), then from it 100 L-BFGS "
                                             "iterations on 1024 prompts with loops 32..64 on rows t >= 16",
                                             more_loops("ckd-curr-32-64-lr", 32, 64, steps=0, lbfgs_steps=100,
                                                        loss_from=16, lbfgs_batch=1024)),
    "ckd-curr-32-64-lr-wd": ("CKD shape, 16..32, then 32..64 (lr 2e-3), then from it 1000 steps with loops 32..64, "
                             "lr 2e-3, weight decay 1 (--weight-decay 1)",
                             more_loops("ckd-curr-32-64-lr", 32, 64, lr=2e-3, weight_decay=1.0)),
    "ckd-curr-32-64-lr-wd-01": ("CKD shape, 16..32, then 32..64 (lr 2e-3), then from it 1000 steps with loops "
                                "32..64, lr 2e-3, weight decay 0.1",
                                more_loops("ckd-curr-32-64-lr", 32, 64, lr=2e-3, weight_decay=0.1)),
    "ckd-curr-32-64-lr-log": ("CKD shape, 16..32, then 32..64 (lr 2e-3), then from it 1000 steps with loops 32..64, "
                              "lr 2e-3, the log loss (--row-loss log)",
                              more_loops("ckd-curr-32-64-lr", 32, 64, lr=2e-3, row_loss="log")),
    "ckd-curr-32-64-lr-log-slow": ("CKD shape, 16..32, then 32..64 (lr 2e-3), then from it 1000 steps with loops "
                                   "32..64, lr 5e-4, the log loss", more_loops("ckd-curr-32-64-lr", 32, 64, lr=5e-4,
                                                                               row_loss="log")),
    "ckd-curr-32-64-log": ("CKD shape, 16..32 (nominal 32), then from it 1000 steps with loops 32..64, lr 2e-3, the "
                           "log loss (no middle stage)", more_loops("ckd-range-16-32-nominal-32", 32, 64, lr=2e-3,
                                                                    row_loss="log")),
    "ckd-curr-32-64-lr-log-seed2": ("CKD shape, 16..32 (nominal 16), then 32..64 (lr 2e-3), then 32..64 with the log "
                                    "loss (lr 2e-3), seed 2", more_loops("ckd-curr-32-64-lr-seed2", 32, 64, lr=2e-3,
                                                                         row_loss="log", seed=2)),
    "ckd-range-16-32-nominal-32-log": ("CKD shape, last pass, loops 16..32, nominal 32, the log loss from random init "
                                       "(one stage)", NOMINAL | dict(row_loss="log")),
    "ckd-range-16-32-nominal-32-seed2": ("CKD shape, last pass, loops 16..32, nominal 32, seed 2",
                                         NOMINAL | dict(seed=2)),
    "ckd-curr-32-64-lr-seed2": ("CKD shape, 16..32 (nominal 16, seed 2: the nominal-32 run of seed 2 does not "
                                "converge), then from it 1000 steps with loops 32..64, lr 2e-3, seed 2",
                                more_loops("ckd-range-16-32-seed2", 32, 64, lr=2e-3, seed=2)),
    "ckd-curr-64-128-lr-seed2": ("CKD shape, 16..32, then 32..64 (lr 2e-3), then 64..128 (lr 2e-3), seed 2",
                                 more_loops("ckd-curr-32-64-lr-seed2", 64, 128, lr=2e-3, seed=2)),
    "ckd-from-16-32-rows-16-lr": ("CKD shape, 16..32 (nominal 32), then from it 1000 steps with loops 16..32 on rows "
                                  "t >= 16, lr 2e-3", more_loops("ckd-range-16-32-nominal-32", 16, 32, loss_from=16,
                                                                 lr=2e-3)),
    "ckd-curr-64-128": ("CKD shape, 16..32, then 32..64, then from it 1000 steps with loops 64..128",
                        more_loops("ckd-curr-32-64", 64, 128)),
    "ckd-from-16-32-lr": ("CKD shape, 16..32 (nominal 32), then from it 1000 steps with the same loops 16..32, lr 2e-3 "
                          "(the control: a second, gentler AdamW run without more loops)",
                          more_loops("ckd-range-16-32-nominal-32", 16, 32, lr=2e-3)),
    "ckd-from-16-32-rows-16": ("CKD shape, 16..32 (nominal 32), then from it 1000 steps with loops 16..32 on rows "
                               "t >= 16 (--loss-from 16)", more_loops("ckd-range-16-32-nominal-32", 16, 32,
                                                                      loss_from=16)),
    "ckd-from-16-32-rows-16-lbfgs": ("CKD shape, 16..32 (nominal 32), then from it 100 L-BFGS iterations with loops "
                                     "16..32 on rows t >= 16 (no AdamW step)",
                                     more_loops("ckd-range-16-32-nominal-32", 16, 32, loss_from=16, steps=0,
                                                lbfgs_steps=100)),
    "ckd-curr-32-64-lbfgs": ("CKD shape, 16..32 (nominal 32), then from it 100 L-BFGS iterations with loops 32..64 "
                             "(no AdamW step)", more_loops("ckd-range-16-32-nominal-32", 32, 64, steps=0,
                                                          lbfgs_steps=100)),
}

# name: (label, TrainConfig changes to BASE)
VARIANTS: dict[str, tuple[str, dict]] = {
    "qk": ("scores on the input (--loop-qk input), free weights, loss every pass, loops 1..4", {}),
    "qk-deep": ("scores on the input, free weights, last pass, loops 1..16", DEEP),
    "ckd": ("CKD shape (--loop-shape ckd), loss every pass, loops 1..4", SHAPE),
    "ckd-last": ("CKD shape, last pass, loops 1..4", SHAPE | dict(loop_loss="last")),
    "ckd-deep": ("CKD shape, last pass, loops 1..16", SHAPE | DEEP),
    "ckd-deep-every": ("CKD shape, loss every pass, loops 1..16", SHAPE | DEEP | dict(loop_loss="every")),
    "ckd-deep-keys": ("CKD shape, last pass, loops 1..16, per-row step c/t (--attention-norm keys)",
                      SHAPE | DEEP | dict(attention_norm="keys")),
    "ckd-deep-f64": ("CKD shape, last pass, loops 1..16, float64", SHAPE | DEEP | dict(dtype="float64")),
    "ckd-deep-long": ("CKD shape, last pass, loops 1..16, 3000 steps", SHAPE | DEEP | LONG),
    "ckd-construction": ("CKD shape, construction init, fine-tuned (lr 3e-3), last pass, loops 1..4",
                         SHAPE | dict(init="construction", lr=3e-3, loop_loss="last")),
    # the second round (after the first ten): the lr and its noise floor, the loop range, construction init deep
    "ckd-deep-lr4-long": ("CKD shape, last pass, loops 1..16, lr / 4, 3000 steps", SHAPE | DEEP | LONG | dict(lr="/4")),
    "ckd-deep-lr2": ("CKD shape, last pass, loops 1..16, lr x 2", SHAPE | DEEP | dict(lr="x2")),
    "ckd-deep-lr2-long": ("CKD shape, last pass, loops 1..16, lr x 2, 3000 steps", SHAPE | DEEP | LONG | dict(lr="x2")),
    "ckd-deep-batch": ("CKD shape, last pass, loops 1..16, batch 128", SHAPE | DEEP | dict(batch=128)),
    "ckd-range-8-16": ("CKD shape, last pass, loops 8..16", SHAPE | DEEP | dict(loop_range=[8, 16])),
    "ckd-range-16-32": ("CKD shape, last pass, loops 16..32", SHAPE | DEEP | dict(layers=16, loop=16,
                                                                                 loop_range=[16, 32])),
    "ckd-deep-long-seed1": ("CKD shape, last pass, loops 1..16, 3000 steps, seed 1",
                            SHAPE | DEEP | LONG | dict(seed=1)),
    "ckd-deep-long-seed2": ("CKD shape, last pass, loops 1..16, 3000 steps, seed 2",
                            SHAPE | DEEP | LONG | dict(seed=2)),
    "ckd-range-8-16-seed1": ("CKD shape, last pass, loops 8..16, seed 1",
                             SHAPE | DEEP | dict(loop_range=[8, 16], seed=1)),
    "ckd-range-8-16-seed2": ("CKD shape, last pass, loops 8..16, seed 2",
                             SHAPE | DEEP | dict(loop_range=[8, 16], seed=2)),
    "ckd-range-8-16-long": ("CKD shape, last pass, loops 8..16, 3000 steps",
                            SHAPE | DEEP | LONG | dict(loop_range=[8, 16])),
    "ckd-range-16-32-long": ("CKD shape, last pass, loops 16..32, 3000 steps",
                             SHAPE | DEEP | LONG | dict(layers=16, loop=16, loop_range=[16, 32])),
    "ckd-range-16-32-seed1": ("CKD shape, last pass, loops 16..32, seed 1",
                              SHAPE | DEEP | dict(layers=16, loop=16, loop_range=[16, 32], seed=1)),
    "ckd-range-16-32-seed2": ("CKD shape, last pass, loops 16..32, seed 2",
                              SHAPE | DEEP | dict(layers=16, loop=16, loop_range=[16, 32], seed=2)),
    "ckd-range-32-64": ("CKD shape, last pass, loops 32..64", SHAPE | DEEP | dict(layers=32, loop=32,
                                                                                 loop_range=[32, 64])),
    "ckd-deep-minlr": ("CKD shape, last pass, loops 1..16, cosine to 0.01 lr (min_lr)",
                       SHAPE | DEEP | dict(min_lr=0.01)),
    "ckd-deep-minlr-long": ("CKD shape, last pass, loops 1..16, cosine to 0.01 lr, 3000 steps",
                            SHAPE | DEEP | LONG | dict(min_lr=0.01)),
    "ckd-deep-minlr-0": ("CKD shape, last pass, loops 1..16, cosine to 0.001 lr", SHAPE | DEEP | dict(min_lr=0.001)),
    "ckd-range-16-32-nominal-32": ("CKD shape, last pass, loops 16..32, nominal 32 (--loop 32: the init's scale and "
                                   "the loops a card is evaluated at)",
                                   SHAPE | DEEP | dict(layers=32, loop=32, loop_range=[16, 32])),
    "ckd-construction-deep": ("CKD shape, construction init, fine-tuned (lr 3e-3), last pass, loops 1..16",
                              SHAPE | DEEP | dict(init="construction", lr=3e-3)),
    # the third round (a second training stage): full-batch L-BFGS after the AdamW steps (``--lbfgs-steps``); not in
    # STUDY: run with --only (docs/results.md, "A second stage: full-batch L-BFGS")
    "ckd-deep-lbfgs": ("CKD shape, last pass, loops 1..16, then 300 L-BFGS iterations (--lbfgs-steps 300, 512 prompts)",
                       SHAPE | DEEP | dict(lbfgs_steps=300)),
    "ckd-range-16-32-nominal-32-lbfgs": ("CKD shape, last pass, loops 16..32, nominal 32, then 100 L-BFGS iterations",
                                         SHAPE | DEEP | dict(layers=32, loop=32, loop_range=[16, 32], lbfgs_steps=100)),
    "ckd-range-16-32-nominal-32-lbfgs-300": ("CKD shape, last pass, loops 16..32, nominal 32, then 300 L-BFGS "
                                             "iterations", SHAPE | DEEP | dict(layers=32, loop=32, loop_range=[16, 32],
                                                                 lbfgs_steps=300)),
    "ckd-deep-lbfgs-2048": ("CKD shape, last pass, loops 1..16, then 200 L-BFGS iterations on 2048 prompts",
                            SHAPE | DEEP | dict(lbfgs_steps=200, lbfgs_batch=2048)),
    "ckd-deep-lbfgs-1024": ("CKD shape, last pass, loops 1..16, then 300 L-BFGS iterations on 1024 prompts",
                            SHAPE | DEEP | dict(lbfgs_steps=300, lbfgs_batch=1024)),
    # the fourth round (2026-12-03, docs/results.md "A curriculum over the loop count"): warm starts
    # (``--init-from``, "@NAME": the run folder of variant NAME of the same family, trained first if missing)
    # from the 16..32 model (``linear-linear-loop-ckd``'s recipe) with more loops; not in STUDY: run with --only
    **CURRICULUM,
}
# the log loss on the periodic family, seeds 0..2 (docs/results.md, "The log loss"): after AdamW, alone, twice
for _k in (0, 1, 2):
    _s, _sd = (f"-seed{_k}", dict(seed=_k)) if _k else ("", {})
    _log, _at = SHAPE | DEEP | dict(row_loss="log") | _sd, f"CKD shape, loops 1..16, seed {_k}"
    VARIANTS.setdefault(f"ckd-deep{_s}", (_at, SHAPE | DEEP | _sd))
    VARIANTS |= {f"ckd-deep-then-log{_s}": (_at + ", then the log loss at lr 2e-3",
                                            _log | dict(init_from=f"@ckd-deep{_s}", lr=2e-3)),
                 f"ckd-deep-log{_s}": (_at + ", the log loss (--row-loss log)", _log),
                 f"ckd-deep-log-then-log{_s}": (_at + ", the log loss, then more of it at lr 2e-3",
                                                _log | dict(init_from=f"@ckd-deep-log{_s}", lr=2e-3))}

# what the study ran: the first ten on every family, then the second round on some
STUDY = {"nonlinear": list(VARIANTS)[:10] + ["ckd-construction-deep", "ckd-range-8-16"],
         "periodic": list(VARIANTS)[:10] + ["ckd-deep-lr4-long", "ckd-deep-batch", "ckd-construction-deep",
                                            "ckd-deep-minlr", "ckd-deep-minlr-0", "ckd-deep-minlr-long"],
         "linear": list(VARIANTS)[:10] + ["ckd-deep-lr2", "ckd-deep-lr2-long", "ckd-deep-batch", "ckd-range-8-16",
                                          "ckd-range-16-32", "ckd-construction-deep", "ckd-deep-long-seed1",
                                          "ckd-deep-long-seed2", "ckd-range-8-16-seed1", "ckd-range-8-16-seed2",
                                          "ckd-range-8-16-long", "ckd-range-16-32-seed1", "ckd-range-16-32-seed2",
                                          "ckd-range-16-32-long", "ckd-range-32-64", "ckd-range-16-32-nominal-32"]}
FURTHER = (8, 16)  # the runs are also scored at 8x and 16x their largest trained loop count (``rescore``)


def rescore(data: dict, out: Path) -> None:
    """Add the error at t = 30 after ``FURTHER`` x the largest trained loop count to every run of ``data`` that lacks
    it (its checkpoint in OUT/TASK-ATTENTION-NAME), in place."""
    for r in data["results"]:
        ks = [f * r["trained_loops"] for f in FURTHER if str(f * r["trained_loops"]) not in r["err_last"]]
        if not ks:
            continue
        _, model, _ = load_model(out / f"{r['task']}-{r['attention']}-{r['variant']}" / "checkpoint.pt")
        model, x = model.double().eval(), ld.test_prompts(r["task"])
        with torch.no_grad():
            r["err_last"].update({str(k): ld.err_last(model(x, loops=k), x) for k in ks})
        r["falls_to"] = ld.falls_to(r["err_last"], r["trained_loops"])


def report(data: dict) -> str:
    """One markdown table per family: the error at t = 30 after 1 and 4 loops and after 1, 2, 4, 8, 16 x the largest
    trained loop count L, and "falls to" (``looped_depth.falls_to``; "-": not beyond L)."""
    labels = {name: i for i, name in enumerate(VARIANTS)}
    lines = []
    for task, attention in ld.FAMILIES:
        rows = sorted((r for r in data["results"] if r["task"] == task), key=lambda r: labels.get(r["variant"], 99))
        if not rows:
            continue
        lines += [f"\n{task} / {attention} attention: median error at t = {ld.LAST} after K loops (64 fresh prompts)\n",
                  "| variant | train s | L (most trained loops) | K = 1 | 4 | L | 2L | 4L | 8L | 16L | falls to |",
                  "|---" * 11 + "|"]
        for r in rows:
            e, n = r["err_last"], r["trained_loops"]
            cells = [f"{e[str(k)]:.2g}" if str(k) in e else "" for k in (1, 4, n, 2 * n, 4 * n, 8 * n, 16 * n)]
            fall = ld.falls_to(e, n)
            lines.append(f"| {VARIANTS[r['variant']][0]} | {r['train_seconds']:.0f} | {n} | " + " | ".join(cells)
                         + f" | {fall if fall > n else '-'} |")
        for name, e in data["ckd"][f"{task}/{attention}"].items():
            lines.append(f"| {name} (K = 1, 4, 16, 32) | | | " + " | ".join(f"{e[str(k)]:.2g}" if str(k) in e else ""
                                                        for k in (1, 4, 16, 32)) + " | | | | |")
    return "\n".join(lines)


def diagnose(folder: Path) -> dict:
    """What a trained CKD-shaped loop (periodic family) learned, and which of its numbers sets its error: per head
    the inverse temperature (mean diagonal of the bilinear form W_q^T W_k between the query's and the key's x slots
    of e = (x_{t-1}, x_t, 1)) and which x slot its query reads; the gain errors |W_out G_1 - I| and |G_0 + I|
    (max entry; G_h the head's d x d map from r to the slot it writes); the error at t = 30 after 1, 2, 8 loops as
    trained, with the queries x 4 alone (a sharper kernel), then with the read-out set to G_1^{-1} exactly, then also
    G_0 = -I exactly, then also the queries x 2."""
    from ckd.construction import slots

    _, model, _ = load_model(folder / "checkpoint.pt")
    model, x = model.double().eval().requires_grad_(False), ld.test_prompts("periodic")
    a, d, eye = model.blocks[0].attn, model.config.dim, torch.eye(model.config.dim, dtype=torch.float64)
    S, w = slots(d), model.config.d_model
    q, k = (m.weight.view(2, d, 2 * d + 1) for m in (a.query, a.key))
    v, o = a.value.weight.view(2, d, w), a.out.weight.view(w, 2, d)
    out = {}
    for h in range(2):
        form = q[h].T @ k[h]  # (e of the query) x (e of the key)
        scales = [float(form[i * d:(i + 1) * d, 0:d].diagonal().mean()) for i in (0, 1)]  # query x_{t-1} / x_t
        out[f"head {h}"] = dict(query_reads="x_{t-1}" if abs(scales[0]) > abs(scales[1]) else "x_t",
                                beta=max(scales, key=abs))
    g0, g1 = o[S["r"], 0] @ v[0][:, S["r"]], o[S["p"], 1] @ v[1][:, S["r"]]
    out["|W_out G_1 - I|"] = float((model.readout.weight[:, S["p"]] @ g1 - eye).abs().max())
    out["|G_0 + I|"] = float((g0 + eye).abs().max())

    def errors():
        return {str(n): ld.err_last(model(x, loops=n), x) for n in (1, 2, 8)}

    with torch.no_grad():
        out["as trained"] = errors()
        q0 = a.query.weight.clone()
        a.query.weight.mul_(4)
        out["queries x 4 alone"] = errors()
        a.query.weight.copy_(q0)
        model.readout.weight[:, S["p"]] = torch.linalg.inv(g1)
        out["read-out = G_1^-1"] = errors()
        o[S["r"], 0] = -torch.linalg.inv(v[0][:, S["r"]])
        out["and G_0 = -I"] = errors()
        a.query.weight.mul_(2)
        out["and queries x 2"] = errors()
    return out


def diagnose_linear(folder: Path) -> dict:
    """What sets a trained CKD-shaped linear loop's error (the linear family; docs/results.md, "A curriculum over the
    loop count"): per head the scale c_h of its kernel (the mean diagonal of the block of W_q^T W_k that CKD's kernel
    uses: head 0 x_{t-1} . x_{s-1}, head 1 x_t . x_{s-1}) and its impurity (the largest other entry / |c_h|); the
    effective gain ratio (W_out G_1 c_1)(G_0 c_0)^{-1} (CKD: -I); then, as trained, with the read-out set so that this
    ratio is -I exactly, and with also both kernels CKD's exactly (c_h times the pure block; the limit is then CKD at
    depth inf), and the kernels exact with the read-out as trained: the median error at t = 30 after 64 and 512 loops
    (64 test prompts), the median and q25 after 512 loops on the 1024 prompts of ``tail``, and the training loss on
    those (rows t >= 1, 16, 30) after 64 loops."""
    from ckd.construction import slots
    from ckd.train import rows_loss

    _, model, _ = load_model(folder / "checkpoint.pt")
    model = model.double().eval().requires_grad_(False)
    a, d, w, S = model.blocks[0].attn, model.config.dim, model.config.d_model, slots(model.config.dim)
    q, k = (m.weight.view(2, d, 2 * d + 1) for m in (a.query, a.key))
    v, o, read = a.value.weight.view(2, d, w), a.out.weight.view(w, 2, d), model.readout.weight[:, S["p"]]
    g0, g1, trained = o[S["r"], 0] @ v[0][:, S["r"]], o[S["p"], 1] @ v[1][:, S["r"]], read.clone()
    out, scales = {}, []
    for h, rows in enumerate((slice(0, d), slice(d, 2 * d))):
        form = q[h].T @ k[h]
        c = float(form[rows, 0:d].diagonal().mean())
        pure = torch.zeros_like(form)
        pure[rows, 0:d] = c * torch.eye(d, dtype=form.dtype)
        out[f"head {h}"] = dict(scale=c, impurity=float((form - pure).abs().max()) / abs(c))
        scales.append((c, rows))
    (c0, _), (c1, _) = scales
    out["effective gain ratio"] = ((read @ g1 * c1) @ torch.linalg.inv(g0 * c0)).tolist()
    x, big = ld.test_prompts("linear"), ckd.make_task("linear", 1024, 32, 3, seed=12345).x

    def measure():
        with torch.no_grad():
            e = ckd.next_token_error(model(big, loops=512), big)[:, ld.LAST]
            pred = model(big, loops=64)
            return dict(err_64=ld.err_last(model(x, loops=64), x), err_512=ld.err_last(model(x, loops=512), x),
                        tail_median=float(e.median()), tail_q25=float(e.quantile(0.25)),
                        **{f"loss_rows_from_{t0}": float(rows_loss(pred, big, t0)) for t0 in (1, 16, 30)})

    with torch.no_grad():
        out["as trained"] = measure()
        read.copy_(-(g0 * c0) @ torch.linalg.inv(g1 * c1))
        out["gain ratio -I exactly"] = measure()
        for h, (c, rows) in enumerate(scales):
            q[h].zero_()
            k[h].zero_()
            q[h][:, rows] = c * torch.eye(d, dtype=q.dtype)
            k[h][:, 0:d] = torch.eye(d, dtype=k.dtype)
        out["and the kernels CKD's exactly"] = measure()
        read.copy_(trained)
        out["kernels CKD's exactly, read-out as trained"] = measure()
    return out


def tail(model_path: str, task: str, loops: int, n: int = 1024, seed: int = 12345) -> dict:
    """The second check of docs/results.md ("A second stage: full-batch L-BFGS") on ``n`` fresh prompts (T = 32,
    d = 3, ``seed``) after ``loops`` loops: the median, q25 and q99 of the error at t = LAST, the mean squared error
    over rows t >= 5, and how many prompts have an error > 0.1 at some row t >= 5 ("fail"). ``model_path``: a run
    folder, or ``zoo:NAME`` for a model of the zoo."""
    from ckd.pretrained import load_with_config

    run = Path(model_path)
    model = (load_with_config(model_path[4:]) if model_path.startswith("zoo:")
             else load_model(run / "checkpoint.pt" if run.is_dir() else run))[1]
    x = ckd.make_task(task, n, 32, 3, seed=seed).x
    with torch.no_grad():
        e = ckd.next_token_error(model.double().eval()(x, loops=loops), x)
    return {"model": model_path, "task": task, "loops": loops, "prompts": n, "median": float(e[:, ld.LAST].median()),
            "q25": float(e[:, ld.LAST].quantile(0.25)), "q99": float(e[:, ld.LAST].quantile(0.99)),
            "mse_rows_from_5": float(e[:, 5:].square().mean()),
            "fail": int((e[:, 5:].amax(1) > 0.1).sum())}


def run_variant(name: str, task: str, attention: str, out: Path) -> dict:
    """``looped_depth.run_one`` of variant ``name``; a warm start from "@PARENT" (``init_from``) starts from the run
    folder OUT/TASK-ATTENTION-PARENT, trained first (not recorded) if it has no checkpoint."""
    label, changes = VARIANTS[name]
    parent = changes.get("init_from")
    if parent is not None and parent.startswith("@"):
        folder = out / f"{task}-{attention}-{parent[1:]}"
        if not (folder / "checkpoint.pt").exists():
            run_variant(parent[1:], task, attention, out)
        changes = changes | dict(init_from=str(folder))
    return ld.run_one(name, task, attention, out, VARIANTS | {name: (label, changes)}, BASE)


def ckd_bound(task: str, depths: list[int], factors: int = 60) -> dict:
    """CKD in this shape as a bound: for each depth K, the constant step of lowest next-token loss on the 64 tuning
    prompts (seed 0, ``tuning_prompts``) over a geometric grid of ``factors`` steps 0.01 .. 1.99 / max_t R[t, t] (finer
    than ``tune_ckd``'s), run K layers (the looped construction with that step, exactly); the median error at t = LAST
    on the 64 test prompts and the ``tail`` numbers on 1024 fresh prompts (seed 12345), and CKD at depth inf."""
    from ckd.descent import default_step, finite_depth, targets
    from ckd.evaluate import run_ckd
    from ckd.kernels import causal_matrices
    from ckd.train import TrainConfig, next_token_loss, tune_ckd, tuning_prompts

    attention = dict(ld.FAMILIES)[task]
    x_tune = tuning_prompts(TrainConfig(task=task, attention=attention, **BASE))
    mats, y = causal_matrices(x_tune, attention, 1.0, 1.0), targets(x_tune)
    unit = 0.5 / default_step(mats)  # max_t R[t, t] over the tuning prompts
    grid = torch.logspace(math.log10(0.01), math.log10(1.99), factors, dtype=torch.float64).tolist()
    losses = [finite_depth(mats, y, max(depths), f / unit, return_all=True) for f in grid]  # (K + 1, B, T, d) each
    x, tail_x = ld.test_prompts(task), ckd.make_task(task, 1024, 32, 3, seed=12345).x
    out = {}

    def tail_of(e):  # ``tail``'s numbers at t = LAST
        last = e[:, ld.LAST]
        return dict(tail_median=float(last.median()), tail_q25=float(last.quantile(0.25)),
                    tail_q99=float(last.quantile(0.99)))

    for k in depths:
        f = min(grid, key=lambda f: float(next_token_loss(losses[grid.index(f)][k], x_tune)))
        setting = {"kernel": attention, "beta": 1.0, "sigma": 1.0, "depth": k, "step": f / unit}
        e = ckd.next_token_error(run_ckd(tail_x, setting), tail_x)
        out[str(k)] = dict(step_factor=f, step=f / unit, median=ld.err_last(run_ckd(x, setting), x), **tail_of(e))
    inf = tune_ckd(x_tune, attention, ["inf"])["inf"]
    e = ckd.next_token_error(run_ckd(tail_x, inf), tail_x)
    out["inf"] = dict(median=ld.err_last(run_ckd(x, inf), x), **tail_of(e))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, VARIANTS, ld.FAMILIES, "looped_descent.json")
    parser.add_argument("--diagnose", action="store_true",
                        help="what the periodic CKD-shaped loop (variant ckd-deep) learned, and what sets its error")
    parser.add_argument("--tail", nargs=3, metavar=("MODEL", "TASK", "LOOPS"),
                        help="the 1024-fresh-prompt check of a run folder or zoo:NAME (tail) and stop")
    parser.add_argument("--diagnose-linear", metavar="RUN", type=Path,
                        help="what sets the error of a CKD-shaped linear loop (run folder RUN; diagnose_linear)")
    parser.add_argument("--ckd-bound", nargs="+", type=int, metavar="K",
                        help="CKD at depth K with its best constant step, on the first of --families (ckd_bound)")
    args = parser.parse_args(argv)
    if args.diagnose_linear:
        print(json.dumps(diagnose_linear(args.diagnose_linear), indent=1))
        return 0
    if args.ckd_bound:
        print(json.dumps(ckd_bound(args.families[0], args.ckd_bound), indent=1))
        return 0
    if args.tail:
        print(json.dumps(tail(args.tail[0], args.tail[1], int(args.tail[2])), indent=1))
        return 0
    path = args.out / "looped_descent.json"
    if args.diagnose:
        print(json.dumps(diagnose(args.out / "periodic-softmax-ckd-deep"), indent=1))
        return 0
    if args.report:
        print(report(json.loads(path.read_text())))
        return 0
    families = [(t, a) for t, a in ld.FAMILIES if t in args.families]
    data = run_study(path, families, lambda task: STUDY[task] if args.only is None else args.only,
                     ld.ckd_reference,
                     lambda name, task, attention: run_variant(name, task, attention, args.out),
                     lambda r: f"t={ld.LAST} error by K " + " ".join(f"{k}:{v:.3g}" for k, v in r["err_last"].items()))
    rescore(data, args.out)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
