"""Evaluate a trained Transformer against causal kernel descent and the baselines.

On fresh prompts of the run's task (a seed stream training never used), for every
method m the next-token error e_m[b, t] = |m(x)[b, t] - x[b, t+1]| (``next_token_error``):

    transformer        the trained model (weights cast to float64)
    ckd depth L        CKD with the model's attention as kernel, L = the model's layers,
                       kernel parameter and step chosen on separate prompts (``tune_ckd``)
    ckd best depth     the same, with the depth also chosen (``DEPTHS``)
    ckd depth inf      the infinite-depth limit (kernel parameter chosen)
    baselines          ``ckd.baselines.BASELINES`` and the oracle f (SPEC §6)

Probe (does the residual stream hold CKD's prediction?): for each hidden state h^l
(after the embedding and after each layer, ``forward(return_hidden=True)``), two
least-squares read-outs are fitted on separate prompts (rows t = 1..T-2), one to the
truth x_{t+1} and one to p_l, CKD's prediction after the same number of layers (the
depth-L setting); on the test prompts we report

    probe_mse    = mean |U_l h^l - x_{t+1}|^2              how much the layer knows
    ckd_mse      = mean |p_l - x_{t+1}|^2                  what CKD knows after l layers
    probe_to_ckd = mean |V_l h^l - p_l|^2 / mean |p_l|^2   0: p_l is linearly readable
    control_to_ckd: the same read-out of p_l from the embedding h^0 (the tokens themselves):
                   what a linear read-out gets without any attention layer

A constructed model holds p_l in a slot (probe_to_ckd ~ 1e-30 in float64); a model
trained from random init need not. Depth 0 has p_0 = 0: probe_to_ckd is NaN there.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from .baselines import BASELINES, oracle
from .descent import StabilityWarning, descend
from .metrics import next_token_error
from .sequences import make_task
from .train import TEST, TrainConfig, load_model, next_token_loss, seed_for, tune_ckd, tuning_prompts

DEPTHS = (1, 2, 4, 8, 16, 32)
PROBE = 4  # seed stream of the probe's fitting prompts


def ckd_settings(cfg: TrainConfig, x_tune: Tensor, layers: tuple[int, ...] = ()) -> dict[str, dict]:
    """CKD settings chosen on ``x_tune``: at depth ``cfg.layers`` (and each of ``layers``), at the best
    depth of ``DEPTHS``, and at depth inf."""
    at = sorted({cfg.layers, *layers})
    tuned = tune_ckd(x_tune, cfg.attention, sorted({*DEPTHS, *at}) + ["inf"])
    best = min((tuned[n] for n in DEPTHS), key=lambda s: s["loss"])
    return {**{f"ckd depth {n}": tuned[n] for n in at}, f"ckd depth {best['depth']} (best)": best,
            "ckd depth inf": tuned["inf"]}


def run_ckd(x: Tensor, setting: dict, return_all: bool = False) -> Tensor:
    """CKD predictions for x with a setting of ``tune_ckd`` (StabilityWarnings silenced: measured, not hidden)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StabilityWarning)
        return descend(x, setting["kernel"], beta=setting["beta"], sigma=setting["sigma"], depth=setting["depth"],
                       step=setting["step"], return_all=return_all)


def readout(h_fit: Tensor, y_fit: Tensor, h: Tensor) -> Tensor:
    """Least-squares read-out: W = argmin |h_fit W - y_fit|^2 (min-norm, relative cutoff 1e-10), applied to h."""
    W = torch.linalg.lstsq(h_fit.flatten(0, 1), y_fit.flatten(0, 1), rcond=1e-10, driver="gelsd").solution
    return h @ W


def probe(model: torch.nn.Module, x_fit: Tensor, x: Tensor, setting: dict) -> list[dict]:
    """Per hidden state: {"hidden", "ckd_depth", "probe_mse", "ckd_mse", "probe_to_ckd", "control_to_ckd"}
    (module docstring)."""
    with torch.no_grad():
        _, h_fit = model(x_fit, return_hidden=True)
        _, h_test = model(x, return_hidden=True)
    raw = model.config.tokens == "raw"
    depth = len(h_test) - 1 - raw
    p_fit = run_ckd(x_fit, {**setting, "depth": depth}, return_all=True)  # (L+1, B, T, d)
    p_test = run_ckd(x, {**setting, "depth": depth}, return_all=True)
    rows = []
    for i, (hf, ht) in enumerate(zip(h_fit, h_test)):
        n = max(0, i - 1) if raw else i
        to_truth = readout(hf[:, 1:-1], x_fit[:, 2:], ht)
        p = p_test[n]
        scale = float(p[:, 1:-1].square().sum(-1).mean())

        def gap(h_fit: Tensor, h: Tensor) -> float:
            fit = readout(h_fit[:, 1:-1], p_fit[n][:, 1:-1], h)
            return float((fit[:, 1:-1] - p[:, 1:-1]).square().sum(-1).mean()) / scale if scale > 0 else math.nan

        rows.append(dict(hidden="embedding" if i == 0 else ("previous-token layer" if raw and i == 1 else
                                                             f"layer {i - raw}"),
                         ckd_depth=n, probe_mse=float(next_token_loss(to_truth, x)),
                         ckd_mse=float(next_token_loss(p, x)), probe_to_ckd=gap(hf, ht),
                         control_to_ckd=gap(h_fit[0], h_test[0])))
    return rows


def summarize(errors: Tensor, pred: Tensor, x: Tensor) -> dict:
    """{"mse": next_token_loss, "median_err_last", "median_err_mid"} of one method."""
    return {"mse": float(next_token_loss(pred, x)), "median_err_last": float(errors[:, -1].median()),
            "median_err_mid": float(errors[:, errors.shape[1] // 2].median())}


def reference(cfg: TrainConfig, *, sequences: int = 64, seed: int | None = None,
              layers: tuple[int, ...] = (), settings: dict[str, dict] | None = None) -> dict:
    """What a trained model of this task and attention is compared with, on fresh prompts.

    Returns {"x" (test prompts), "x_fit" (probe prompts), "settings", "errors", "summary"} for CKD
    (``ckd_settings``, or the given ``settings``), the baselines and the oracle. ``seed`` defaults
    to the run's seed.
    """
    if isinstance(sequences, bool) or not isinstance(sequences, int) or sequences < 2:
        raise ValueError(f"--sequences must be an integer >= 2, got {sequences!r}")
    if cfg.task == "data":  # no family to draw fresh prompts from
        raise ValueError(f"the run was trained on the sequences of {cfg.data} (task 'data'), not on a task family: "
                         "there are no fresh prompts to draw; score it on your sequences instead")
    seed = cfg.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in 0 .. 2**63 - 1, got {seed!r}")
    check_memory(cfg, sequences)

    def prompts(stream: int):
        return make_task(cfg.task, sequences, cfg.length, cfg.dim, seed=seed_for(seed, stream))

    task = prompts(TEST)
    x = task.x
    settings = ckd_settings(cfg, tuning_prompts(cfg, seed), layers) if settings is None else settings
    preds = {name: run_ckd(x, s) for name, s in settings.items()}
    preds |= {name: fn(x) for name, fn in BASELINES.items()}
    preds["oracle"] = oracle(task)
    errors = {name: next_token_error(p, x) for name, p in preds.items()}
    return dict(x=x, x_fit=prompts(PROBE).x, settings=settings, errors=errors, sequences=sequences, seed=seed,
                summary={name: summarize(errors[name], p, x) for name, p in preds.items()})


def check_memory(cfg: TrainConfig, sequences: int) -> None:
    """Refuse (one line) an evaluation that cannot fit in memory, before allocating: the (B, T, T)
    kernel matrices of CKD and the kernel baselines (4 at once, float64) and the model's residual
    streams of every layer on the test and probe prompts."""
    from .train import transformer_config
    from .transformer import memory_bytes
    from .validation import check_fits

    T = cfg.length
    need = 4 * sequences * T * T * 8 + 2 * memory_bytes(transformer_config(cfg), sequences, T, 8, hidden=True)
    check_fits(need, f"evaluating on {sequences} prompts of length {T}", "use fewer --sequences")


def evaluate_model(model: torch.nn.Module, cfg: TrainConfig, ref: dict) -> dict:
    """The model (cast to float64) on ``ref``'s prompts: {"errors" (B, T-1), "summary", "probe"};
    the probe compares with CKD at depth ``cfg.layers`` (``ref["settings"]``)."""
    model = model.double().eval()
    with torch.no_grad():
        pred = model(ref["x"])
    errors = next_token_error(pred, ref["x"])
    return dict(errors=errors, summary=summarize(errors, pred, ref["x"]),
                probe=probe(model, ref["x_fit"], ref["x"], ref["settings"][f"ckd depth {cfg.layers}"]))


def evaluate(checkpoint: str | os.PathLike, *, sequences: int = 64, seed: int | None = None) -> dict:
    """Errors vs t of the trained model, CKD and the baselines on fresh prompts, and the probe.

    Returns {"config", "step", "t", "errors": {method: (B, T-1) tensor}, "summary": {method: {...}},
    "settings": {ckd method: setting}, "probe": [...], "sequences", "seed"}. ``seed`` defaults to the run's seed.
    """
    cfg, model, state = load_model(checkpoint)
    return evaluate_trained(model, cfg, int(state["step"]), sequences=sequences, seed=seed)


def evaluate_trained(model: torch.nn.Module, cfg: TrainConfig, step: int, *, sequences: int = 64,
                     seed: int | None = None) -> dict:
    """``evaluate`` for a model already loaded (``ckd.pretrained.load_with_config`` too)."""
    ref = reference(cfg, sequences=sequences, seed=seed)
    mine = evaluate_model(model, cfg, ref)
    return dict(config=asdict(cfg), step=step, t=list(range(cfg.length - 1)),
                errors={"transformer": mine["errors"], **ref["errors"]},
                summary={"transformer": mine["summary"], **ref["summary"]}, settings=ref["settings"],
                probe=mine["probe"], sequences=ref["sequences"], seed=ref["seed"])


def report(result: dict) -> str:
    """A plain-text table of ``evaluate``'s summary and probe."""
    c = result["config"]
    lines = [f"{c['task']} / {c['attention']} attention / {c['layers']} layers / init {c['init']} / "
             f"step {result['step']}: {result['sequences']} fresh prompts, T = {c['length']}, d = {c['dim']}",
             "", f"{'method':<22}{'mse (t>=1)':>12}{'med err t=T/2':>15}{'med err last':>14}"]
    for name, s in sorted(result["summary"].items(), key=lambda kv: kv[1]["mse"]):
        lines.append(f"{name:<22}{s['mse']:>12.3e}{s['median_err_mid']:>15.3e}{s['median_err_last']:>14.3e}")
    lines += ["", "probe: least-squares read-out of each residual stream vs CKD after that many layers",
              f"{'hidden':<22}{'ckd depth':>10}{'probe mse':>12}{'ckd mse':>12}{'ckd read-out rel err':>22}"
              f"{'from embedding':>16}"]
    for r in result["probe"]:
        lines.append(f"{r['hidden']:<22}{r['ckd_depth']:>10}{r['probe_mse']:>12.3e}{r['ckd_mse']:>12.3e}"
                     f"{r['probe_to_ckd']:>22.3e}{r['control_to_ckd']:>16.3e}")
    return "\n".join(lines)


def plot(result: dict, out: Path, name: str = "evaluation") -> list[Path]:
    """Error vs t (median and quartiles) of every method, and the probe, as out/name.png/.pdf."""
    from .experiments.plotting import band, figure, log_axes, save_figure

    fig, (ax, axp) = figure(1, 2, width=4.6)
    shown = ["transformer", *[k for k in result["errors"] if k.startswith("ckd")], "last", "ols", "krr",
             "analogues", "oracle"]
    for name_ in shown:
        band(ax, result["t"][1:], result["errors"][name_][:, 1:], label=name_,
             linestyle="-" if name_ == "transformer" or name_.startswith("ckd") else ":")
    log_axes(ax)
    c = result["config"]
    ax.set(xlabel="t", ylabel="|prediction - x_{t+1}|", title=f"{c['task']}, {c['attention']}, L={c['layers']}, "
           f"init {c['init']} ({result['sequences']} prompts)")
    ax.legend(ncol=2)
    depths = [r["ckd_depth"] for r in result["probe"]]
    labels = [r["hidden"].replace("previous-token layer", "prev") for r in result["probe"]]
    axp.plot(range(len(depths)), [r["probe_mse"] for r in result["probe"]], "o-", label="read-out mse")
    axp.plot(range(len(depths)), [r["ckd_mse"] for r in result["probe"]], "s--", label="CKD mse, same depth")
    axp.plot(range(len(depths)), [r["probe_to_ckd"] for r in result["probe"]], "^:", label="|read-out - CKD|^2/CKD mse")
    axp.set_xticks(range(len(depths)), labels, rotation=20)
    log_axes(axp)
    axp.set(title="probe of the residual stream")
    axp.legend()
    return save_figure(fig, out, name)


def save(result: dict, out: Path) -> list[Path]:
    """Write out/evaluation.json (numbers) and out/evaluation.png/.pdf."""
    from .experiments.plotting import quantiles, save_json

    data = {k: v for k, v in result.items() if k != "errors"}
    data["errors"] = {k: quantiles(e) for k, e in result["errors"].items()}
    return [save_json(out, "evaluation", data), *plot(result, out)]
