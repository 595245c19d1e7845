"""Why do trained Transformers plateau far from CKD at depth inf? Controlled experiments (issue 20, item 3).

    python benchmarks/plateau.py --out runs/plateau                    # the study (both families)
    python benchmarks/plateau.py --out runs/plateau --only base late   # some variants
    python benchmarks/plateau.py --out runs/plateau --report           # the markdown table of runs/plateau

One base recipe (``ckd reproduce training``'s and the zoo's 4-layer one: 4 layers, 2 heads, width 13,
no LayerNorm, 1000 AdamW steps, lr 2e-2, 50 warm-up steps, cosine to 0.1 lr, batch 32, T = 32, d = 3,
float32, seed 0), and variants that change one thing each, grouped by the cause they test:

    optimisation      more steps, a constant lr, a smaller lr, a 4x batch
    parameterisation  softmax temperature (scores x 4: a fixed factor on the queries, a forward hook on
                      the model ``ckd.train`` builds), weights tied (one block looped 4 times, ``--loop 4``),
                      position-normalised attention (row t of every attention output divided by its t keys:
                      ``--attention-norm keys`` when this ckd has it, else the same by a forward hook)
    precision         float64
    data              a curriculum on T, prompts twice as long (T = 64)
    loss              the loss on rows t >= 5 only (``--loss-from 5``: periodic, after the first period,
                      whose next token cannot be known; linear, after d + 1 = 4 pairs), the last token only
    seeds             the base recipe with seeds 1 and 2 (what one seed can tell)

plus combinations of what helped. Every run is ``ckd.train.train`` (one thread); each model is scored on the
same 64 fresh prompts (seed stream ``TEST`` of seed 0, T = 32, float64): median error |prediction - x_{t+1}|
at t = 4, 8, 16, 30, and the factor by which the error at t = 30 moved against the base run. Finished runs
are saved at once into OUT/plateau.json, so a study cut short keeps what it finished.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch
from study import run_study, study_parser

import ckd
import ckd.train.loop
from ckd.evaluate import reference, run_ckd
from ckd.train import TEST, TrainConfig, load_model, seed_for, train

FAMILIES = (("periodic", "softmax"), ("linear", "linear"))
BASE = dict(layers=4, steps=1000, lr=2e-2, warmup=50, batch=32, length=32, dim=3, seed=0, log_every=50,
            eval_every=500, eval_batch=128, checkpoint_every=1000)
TS = (4, 8, 16, 30)
HAS_ATTENTION_NORM = "attention_norm" in {f.name for f in fields(TrainConfig)}

# name: (cause, what changes, TrainConfig changes, hook: None, ("scale", c) or ("keys",))
VARIANTS: dict[str, tuple[str, str, dict, tuple | None]] = {
    "base": ("-", "the base recipe", {}, None),
    "steps-x3": ("optimisation", "3000 steps", dict(steps=3000, checkpoint_every=3000), None),
    "lr-constant": ("optimisation", "constant lr after warm-up (no cosine decay)", dict(min_lr=1.0), None),
    "lr-small": ("optimisation", "lr 5e-3", dict(lr=5e-3), None),
    "batch-x4": ("optimisation", "batch 128", dict(batch=128), None),
    "temperature-x4": ("parameterisation", "scores x 4 (queries scaled by 4 in the forward pass)", {}, ("scale", 4.0)),
    "looped": ("parameterisation", "weights tied: 1 block looped 4 times", dict(loop=4), None),
    "attention-norm": ("parameterisation", "position-normalised attention: row t of each attention output / t",
                       *((dict(attention_norm="keys"), None) if HAS_ATTENTION_NORM else ({}, ("keys",)))),
    "float64": ("precision", "float64 training", dict(dtype="float64"), None),
    "curriculum": ("data", "curriculum: T grows from 4 to 32 over 500 steps", dict(curriculum=500), None),
    "length-64": ("data", "prompts of T = 64 (scored at t <= 30)", dict(length=64), None),
    "late": ("loss", "loss on rows t >= 5 (--loss-from 5)", dict(loss_from=5), None),
    "last": ("loss", "loss on the last token only (--loss-from 30)", dict(loss_from=30), None),
    "seed-1": ("seeds", "base, seed 1", dict(seed=1), None),
    "seed-2": ("seeds", "base, seed 2", dict(seed=2), None),
    "late-batch-x4": ("combined", "late + batch 128", dict(loss_from=5, batch=128), None),
    "late-steps-x3-batch-x4": ("combined", "late + batch 128 + 3000 steps",
                               dict(loss_from=5, batch=128, steps=3000, checkpoint_every=3000), None),
    "lbfgs": ("optimisation", "then 300 full-batch L-BFGS iterations (--lbfgs-steps 300, 512 prompts, float64)",
              dict(lbfgs_steps=300), None),
}


def add_hooks(model: torch.nn.Module, hook: tuple | None) -> torch.nn.Module:
    """("scale", c): every block's queries multiplied by c (the functions of weights c W_q, trained with c times
    the gradient step on the scores); ("keys",): row t of every block's attention output divided by the t keys
    it sees (position-normalised attention, the per-row step c / t of SPEC §10)."""
    for block in model.blocks if hook else ():
        if hook[0] == "scale":
            block.attn.query.register_forward_hook(lambda module, inputs, output, c=hook[1]: output * c)
        else:
            block.attn.register_forward_hook(lambda module, inputs, output: output / torch.arange(
                output.shape[-2], dtype=output.dtype, device=output.device).clamp_min(1)[:, None])
    return model


@contextlib.contextmanager
def hooked(hook: tuple | None):
    """``ckd.train`` builds its model with ``add_hooks(model, hook)`` inside this context."""
    if hook is None:
        yield
        return
    original = ckd.train.loop.build_model

    def build(cfg, setting=None):
        return add_hooks(original(cfg, setting), hook)

    ckd.train.loop.build_model = build
    try:
        yield
    finally:
        ckd.train.loop.build_model = original


def test_prompts(task: str) -> torch.Tensor:
    """The 64 prompts every model is scored on (T = 32, d = 3, seed stream TEST of seed 0)."""
    return ckd.make_task(task, 64, 32, 3, seed=seed_for(0, TEST)).x


def medians(pred: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    e = ckd.next_token_error(pred, x)
    return {str(t): float(e[:, t].median()) for t in TS}


def run_one(name: str, task: str, attention: str, out: Path) -> dict:
    cause, what, changes, hook = VARIANTS[name]
    fields_ = BASE | changes
    if fields_.get("loop"):
        fields_["layers"] = fields_["loop"]
    cfg = TrainConfig(task=task, attention=attention, **fields_).validate()
    folder = out / f"{task}-{attention}-{name}"
    t0 = time.perf_counter()
    with hooked(hook):
        records = train(cfg, folder, progress=False)
    wall = time.perf_counter() - t0
    _, model, _ = load_model(folder / "checkpoint.pt")
    with torch.no_grad():
        x = test_prompts(task)
        pred = add_hooks(model, hook).double()(x)
    return dict(variant=name, cause=cause, change=what, task=task, attention=attention, config=asdict(cfg),
                hook=hook, train_seconds=wall, final_loss=records[-1]["loss"],
                eval_curve=[(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r],
                median_error=medians(pred, x))


def ckd_reference(task: str, attention: str) -> dict:
    """CKD at depth 4 and inf (kernel parameter and step tuned on separate prompts) on the test prompts."""
    cfg = TrainConfig(task=task, attention=attention, **BASE)
    ref = reference(cfg, sequences=64)
    x = test_prompts(task)
    return {k: medians(run_ckd(x, ref["settings"][k]), x) for k in ("ckd depth 4", "ckd depth inf")}


def report(data: dict) -> str:
    lines = []
    for task, attention in FAMILIES:
        rows = [r for r in data["results"] if r["task"] == task and r["attention"] == attention]
        if not rows:
            continue
        base = next((r for r in rows if r["variant"] == "base"), None)
        lines += [f"\n{task} / {attention} attention: median error at t (64 fresh prompts, T = 32)\n",
                  "| cause | change | train s | final loss | " + " | ".join(f"t = {t}" for t in TS)
                  + " | t = 30 vs base |", "|---" * (5 + len(TS)) + "|"]
        for r in rows:
            m = r["median_error"]
            b = base["median_error"]["30"] if base else None
            factor = ("-" if r is base or b is None else f"{b / m['30']:.2g}x lower" if m["30"] <= b
                      else f"{m['30'] / b:.2g}x higher")
            lines.append(f"| {r['cause']} | {r['change']} | {r['train_seconds']:.0f} | {r['final_loss']:.3g} | "
                         + " | ".join(f"{m[str(t)]:.2g}" for t in TS) + f" | {factor} |")
        for k, m in data.get("ckd", {}).get(f"{task}/{attention}", {}).items():
            lines.append(f"| CKD | {k} | | | " + " | ".join(f"{m[str(t)]:.2g}" for t in TS) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = study_parser(__doc__, VARIANTS, FAMILIES, "plateau.json", only_default=list(VARIANTS)).parse_args(argv)
    path = args.out / "plateau.json"
    if args.report:
        print(report(json.loads(path.read_text())))
        return 0
    families = [(t, a) for t, a in FAMILIES if t in args.families]
    data = run_study(path, families, lambda task: args.only, ckd_reference,
                     lambda name, task, attention: run_one(name, task, attention, args.out),
                     lambda r: f"t=30 error {r['median_error']['30']:.3g}")
    print(report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
