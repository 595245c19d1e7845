"""How close can training get to CKD at depth inf? A few training recipes, measured (issue 13, item 4).

    python benchmarks/recipes.py --out runs/recipes            # the study (~30 min on one free core)
    python benchmarks/recipes.py --out runs/recipes --report   # print the markdown tables of runs/recipes
    python benchmarks/recipes.py --out runs/recipes --diagnose # induction-head mass and the raw model's shortcut

For the families periodic / softmax and linear (orthogonal A) / linear attention (T = 32, d = 3,
batch 32, fresh prompts every step, float32), each recipe below is trained with ``ckd.train.train``
(the one training loop) on one thread and evaluated with ``ckd.evaluate`` on 64 fresh seeded
prompts in float64: median error |prediction - x_{t+1}| at several t, against CKD at depth 2, 4, 8,
the best depth and depth inf (kernel parameter and step tuned on separate prompts), the SPEC §6
baselines, and the probe (is CKD's iterate linearly readable from each layer?). Recipes run in the
order listed and every finished run is saved at once into OUT/recipes.json, so a study cut short
keeps what it finished. ``--only`` picks recipes by name.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ckd.evaluate import evaluate_model, reference
from ckd.train import TrainConfig, train

FAMILIES = (("periodic", "softmax"), ("linear", "linear"))
COMMON = dict(batch=32, length=32, dim=3, seed=0, log_every=50, eval_every=500, eval_batch=128)
WIDE = dict(layers=8, width=32, heads=4, layernorm=True, lr=1e-2)
RECIPES = {  # name: TrainConfig fields (on top of COMMON)
    "base": dict(layers=4, steps=1000, lr=2e-2, warmup=50),  # the recipe of `ckd reproduce training`
    "wide": dict(**WIDE, steps=3000, warmup=100),
    "wide-curriculum": dict(**WIDE, steps=3000, warmup=100, curriculum=1500),
    "long": dict(layers=4, steps=10000, lr=2e-2, warmup=200),
    "wide-long": dict(**WIDE, steps=10000, warmup=200),
}
TS = (2, 4, 8, 16, 30)  # t at which the median error is reported (t = 30 predicts the last token)


def medians(errors: torch.Tensor) -> dict[str, float]:
    return {str(t): float(errors[:, t].median()) for t in TS}


def run_one(name: str, task: str, attention: str, out: Path) -> dict:
    cfg = TrainConfig(task=task, attention=attention, **COMMON, **RECIPES[name]).validate()
    folder = out / f"{task}-{attention}-{name}"
    t0 = time.perf_counter()
    records = train(cfg, folder, progress=False)
    wall = time.perf_counter() - t0
    from ckd.train import load_model

    _, model, _ = load_model(folder / "checkpoint.pt")
    ref = reference(cfg, sequences=64, layers=(2, 4, 8))
    mine = evaluate_model(model, cfg, ref)
    errors = {"transformer": mine["errors"], **ref["errors"]}
    return dict(recipe=name, task=task, attention=attention, config=asdict(cfg),
                params=sum(p.numel() for p in model.parameters()), train_seconds=wall,
                final_loss=records[-1]["loss"], eval_curve=[(r["step"], r["eval_loss"]) for r in records
                                                           if "eval_loss" in r],
                median_error={k: medians(e) for k, e in errors.items()},
                mse={"transformer": mine["summary"]["mse"], **{k: v["mse"] for k, v in ref["summary"].items()}},
                probe=mine["probe"])


def report(results: list[dict]) -> str:
    lines = []
    for task, attention in FAMILIES:
        rows = [r for r in results if r["task"] == task and r["attention"] == attention]
        if not rows:
            continue
        med = rows[0]["median_error"]
        lines += [f"\n{task} / {attention} attention: median error at t (64 prompts, T = 32)\n",
                  "| model | params | steps | train s | final loss | " + " | ".join(f"t={t}" for t in TS) + " |",
                  "|---" * (5 + len(TS)) + "|"]
        for r in rows:
            c = r["config"]
            arch = (f"{r['recipe']} (L{c['layers']}, w{c['width'] or 13}, h{c['heads'] or 2}"
                    + (", LN" if c["layernorm"] else "")
                    + (f", curriculum {c['curriculum']}" if c["curriculum"] else "") + ")")
            lines.append(f"| {arch} | {r['params']} | {c['steps']} | {r['train_seconds']:.0f} | "
                         f"{r['final_loss']:.3g} | "
                         + " | ".join(f"{r['median_error']['transformer'][str(t)]:.2g}" for t in TS) + " |")
        for k in [k for k in med if k.startswith("ckd")] + ["last", "ols", "krr", "analogues", "oracle"]:
            if k in med:
                lines.append(f"| {k} | | | | | " + " | ".join(f"{med[k][str(t)]:.2g}" for t in TS) + " |")
        lines.append("\nprobe (relative error of the best linear read-out of CKD's p_l from layer l; "
                     "last layer, and the smallest over layers):\n")
        for r in rows:
            probe = [p for p in r["probe"] if p["ckd_depth"] > 0]
            best = min(probe, key=lambda p: p["probe_to_ckd"])
            lines.append(f"- {r['recipe']}: last layer {probe[-1]['probe_to_ckd']:.3g} (control "
                         f"{probe[-1]['control_to_ckd']:.3g}); best {best['probe_to_ckd']:.3g} at {best['hidden']}")
    return "\n".join(lines)


@torch.no_grad()
def induction_mass(model: torch.nn.Module, x: torch.Tensor, period: int, first: int = 6) -> list[list[float]]:
    """Per block and head: the mean over prompts and rows t >= ``first`` of the softmax attention mass on
    the keys s whose x_{s-1} equals x_t on a sequence of period P ((s - 1) = t mod P, 1 <= s <= t)."""
    model = model.double()
    _, hidden = model(x, return_hidden=True)
    raw = model.config.tokens == "raw"
    B, T, _ = x.shape
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (s >= 1) & (s <= t)
    match = ((s - 1) % period == t % period) & allowed
    out = []
    for layer, block in enumerate(model.blocks):
        attn, h = block.attn, block.ln_attn(hidden[layer + raw])
        q = attn.query(h).view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)
        k = attn.key(h).view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2)
        w = torch.softmax((q @ k.transpose(-1, -2)).masked_fill(~allowed, -torch.inf), -1)[:, :, first:]
        out.append([round(float(m), 3) for m in (w * match[first:]).sum(-1).mean((0, 2))])
    return out


@torch.no_grad()
def diagnose(out: Path) -> str:
    """Induction-head mass of the periodic models (zoo and recipe runs) and of CKD's softmax kernel; the
    previous-token layer of the raw-token zoo model; the zoo's periodic models on period-4 prompts."""
    import ckd
    from ckd import pretrained
    from ckd.train import TEST, load_model, seed_for

    x = ckd.make_task("periodic", 64, 32, 3, seed=seed_for(0, TEST)).x  # the test prompts of the evaluations
    lines = ["induction mass per layer and head (rows t >= 6; CKD's softmax kernel for comparison):"]
    for name in ("periodic-softmax-2", "periodic-softmax-4", "periodic-softmax-8", "periodic-softmax-2-raw"):
        lines.append(f"  zoo {name}: {induction_mass(pretrained.load(name), x, 5)}")
    for recipe in RECIPES:
        path = out / f"periodic-softmax-{recipe}" / "checkpoint.pt"
        if path.exists():
            lines.append(f"  recipe {recipe}: {induction_mass(load_model(path)[1], x, 5)}")
    T = x.shape[1]
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (s >= 1) & (s <= t)
    match = ((s - 1) % 5 == t % 5) & allowed
    for beta in (4.0, 64.0):
        w = torch.softmax((beta * x @ torch.roll(x, 1, 1).transpose(-1, -2)).masked_fill(~allowed, -torch.inf), -1)
        lines.append(f"  CKD softmax kernel beta {beta:g}: {float((w[:, 6:] * match[6:]).sum(-1).mean()):.3f}")
    model = pretrained.load("periodic-softmax-2-raw").double()
    _, hidden = model(x, return_hidden=True)
    attn, h = model.prev.attn, model.prev.ln_attn(hidden[0])
    w = torch.softmax((attn.query(h) @ attn.key(h).transpose(-1, -2)).masked_fill(s > t, -torch.inf), -1).mean(0)
    offsets = [round(float(torch.diagonal(w, -o)[10:].mean()), 4) for o in range(6)]
    lag = t - s
    periodic_lags = float((w * ((lag % 5 == 4) & (lag >= 0)))[10:].sum(-1).mean())
    lines += ["previous-token layer of periodic-softmax-2-raw (rows t >= 10):",
              f"  mass at offsets 0..5: {offsets}; on offsets 4, 9, 14, ...: {periodic_lags:.3f}",
              "median error at t = 30 on prompts of period 5 / period 4:"]
    x4 = ckd.make_task("periodic", 64, 32, 3, period=4, seed=seed_for(0, TEST)).x
    for name in ("periodic-softmax-2", "periodic-softmax-4", "periodic-softmax-8", "periodic-softmax-2-raw"):
        m = pretrained.load(name).double()
        e5, e4 = (float(ckd.next_token_error(m(z), z)[:, -1].median()) for z in (x, x4))
        lines.append(f"  {name}: {e5:.3g} / {e4:.3g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--only", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--report", action="store_true", help="print the tables of OUT/recipes.json and stop")
    parser.add_argument("--diagnose", action="store_true", help="print the induction-head diagnostics and stop")
    args = parser.parse_args(argv)
    path = args.out / "recipes.json"
    if args.diagnose:
        print(diagnose(args.out))
        return 0
    if args.report:
        print(report(json.loads(path.read_text())["results"]))
        return 0
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    data = dict(machine=f"{platform.machine()} {platform.processor() or ''}".strip(), threads=1,
                torch=torch.__version__, results=[])
    if path.exists():
        data = json.loads(path.read_text())
    done = {(r["recipe"], r["task"], r["attention"]) for r in data["results"]}
    for name in args.only:
        for task, attention in FAMILIES:
            if (name, task, attention) in done:
                continue
            result = run_one(name, task, attention, args.out)
            data["results"].append(result)
            path.write_text(json.dumps(data, indent=1) + "\n")
            print(f"{name} {task}/{attention}: {result['train_seconds']:.0f} s, "
                  f"t=30 error {result['median_error']['transformer']['30']:.3g}", flush=True)
    print(report(data["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
