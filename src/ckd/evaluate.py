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

Any model, any data (``evaluate(model, data=x)``): ``model`` may also be any callable
(B, T, d) -> (B, T, d) (a torch module or a function on tensors), scored on the user's sequences x
against CKD at its depth (``depth=``, default the model's layers) and at depth inf with its kernel
(``kernel=``, default the model's attention) and the baselines. User sequences come without their
map f: there is no oracle. CKD's kernel parameter and step, and the probe's read-outs (a
``CausalTransformer`` only), are chosen on ``tune_data`` when given, else on x itself (in-sample;
the report says which).

``ckd.evaluate`` is this module and is also callable as its function ``evaluate``:
``ckd.evaluate(model, data=x, kernel="linear", depth=1)``; ``from ckd.evaluate import ...`` keeps working.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from .baselines import BASELINES, oracle
from .callable import make_callable
from .descent import StabilityWarning, descend
from .looped import looped_memory_bytes, with_loops
from .metrics import next_token_error
from .sequences import make_task
from .train import TEST, TrainConfig, load_model, model_bytes, next_token_loss, seed_for, tune_ckd, tuning_prompts
from .transformer import CausalTransformer
from .validation import as_batch, check_fits, check_int, check_kernel, integer_value

DEPTHS = (1, 2, 4, 8, 16, 32)
FORMAT = "ckd-evaluate-1"  # marks an evaluation.json (and so its folder) as written by ckd evaluate
PROBE = 4  # seed stream of the probe's fitting prompts


def ckd_settings(cfg: TrainConfig, x_tune: Tensor, layers: tuple[int, ...] = ()) -> dict[str, dict]:
    """CKD settings chosen on ``x_tune``: at depth ``cfg.layers`` (and each of ``layers``), at the best
    depth of ``DEPTHS``, and at depth inf."""
    return settings_for(cfg.attention, cfg.layers, x_tune, layers)


def settings_for(kernel: str, depth: int, x_tune: Tensor, layers: tuple[int, ...] = ()) -> dict[str, dict]:
    """``ckd_settings`` for a kernel and a depth."""
    at = sorted({depth, *layers})
    tuned = tune_ckd(x_tune, kernel, sorted({*DEPTHS, *at}) + ["inf"])
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
    if integer_value(sequences, floats=True) is None or integer_value(sequences, floats=True) < 2:
        raise ValueError(f"--sequences must be an integer >= 2, got {sequences!r}")
    sequences = integer_value(sequences, floats=True)
    if cfg.task == "data":  # no family to draw fresh prompts from
        raise ValueError(f"the run was trained on the sequences of {cfg.data} (task 'data'), not on a task family: "
                         "there are no fresh prompts to draw; score it on your sequences instead")
    seed = cfg.seed if seed is None else seed
    if integer_value(seed, floats=True) is None or not 0 <= integer_value(seed, floats=True) < 2**63:
        raise ValueError(f"seed must be an integer in 0 .. 2**63 - 1, got {seed!r}")
    seed = integer_value(seed, floats=True)
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
    T = cfg.length
    need = 4 * sequences * T * T * 8 + 2 * model_bytes(cfg, sequences, T, 8, hidden=True)
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


def evaluate(model, *, data=None, sequences: int | None = None, seed: int | None = None, kernel: str | None = None,
             depth: int | None = None, tune_data=None, loops: int | None = None) -> dict:
    """Errors vs t of a model, CKD and the baselines, and the probe.

    model: the ``checkpoint.pt`` of a ``ckd train`` run (a path), or any callable (B, T, d) -> (B, T, d)
    (a torch module, run in its own dtype and in eval mode, or a function on tensors).
    data: sequences (B, T, d) or (T, d) to score on (array or tensor; needed for a callable); None: fresh
    prompts of the run's task (``sequences``, default 64, and ``seed``, default the run's).
    kernel, depth: the CKD compared with (default: the model's attention and layers, for a checkpoint or a
    ``CausalTransformer``); tune_data: sequences on which CKD's settings and the probe are fitted (default: data).
    loops: run a looped checkpoint (``ckd train --loop``) for this many loops instead of its trained count; CKD
    is then compared at that depth (loops x loop_blocks).

    Returns {"config", "step", "t", "errors": {method: (B, T-1) tensor}, "summary": {method: {...}},
    "settings": {ckd method: setting}, "probe": [...], "sequences", "seed"}; with data also "data" (its shape,
    what CKD was tuned on), "model" (the model's key in errors), "kernel" and "depth"; no oracle then.
    """
    own = [name for name, v in (("sequences", sequences), ("seed", seed)) if v is not None]
    if isinstance(model, (str, os.PathLike)):
        cfg, net, state = load_model(model)
        cfg, net = with_loops(cfg, net, loops)
        if data is None:
            extra = [n for n, v in (("kernel", kernel), ("depth", depth), ("tune_data", tune_data)) if v is not None]
            if extra:
                raise ValueError(f"{extra[0]} applies with data= (the user's sequences); drop it or give data")
            return evaluate_trained(net, cfg, int(state["step"]), sequences=64 if sequences is None else sequences,
                                    seed=seed)
        model, config, step = net, asdict(cfg), int(state["step"])
    elif loops is not None:
        raise ValueError("loops= applies to a looped checkpoint; call a LoopedTransformer with forward(x, loops=K)")
    elif callable(model):
        if data is None:
            raise ValueError("a model that is not a ckd train checkpoint needs data=: the sequences (B, T, d) "
                             "to score it on")
        config, step = None, None
    else:
        raise TypeError(f"model must be a checkpoint path or a callable (B, T, d) -> (B, T, d), got "
                        f"{type(model).__name__}")
    if own:
        raise ValueError(f"{own[0]} draws ckd's own prompts; it does not apply with data=")
    return evaluate_on(model, data, kernel=kernel, depth=depth, tune_data=tune_data, config=config, step=step)


def evaluate_on(model, data, *, kernel: str | None = None, depth: int | None = None, tune_data=None,
                config: dict | None = None, step: int | None = None) -> dict:
    """``evaluate`` on the user's sequences ``data`` (module doc): the model, CKD at ``depth`` (and the best
    depth, and depth inf) with ``kernel``, and the baselines; the probe for a ``CausalTransformer``."""
    x, _ = as_batch(data, torch.float64, "data")
    B, T, d = x.shape
    if T < 3:
        raise ValueError(f"data needs sequences of at least 3 tokens (errors are scored on t = 1..T-2), got T = {T}")
    x_fit = x if tune_data is None else as_batch(tune_data, torch.float64, "tune_data")[0].to(x.device)
    if x_fit.shape[-1] != d or x_fit.shape[1] < 3:
        raise ValueError(f"tune_data must hold sequences of dimension {d} and at least 3 tokens, got shape "
                         f"{tuple(x_fit.shape)}")
    net = copy.deepcopy(model).double().eval() if isinstance(model, CausalTransformer) else None
    own = ((config["attention"], config["layers"]) if config is not None else
           (net.config.attention, getattr(net, "depth", net.config.n_layers)) if net is not None else (None, None))
    kernel, depth = own[0] if kernel is None else kernel, own[1] if depth is None else depth
    if kernel is None or depth is None:
        raise ValueError("give kernel= and depth=: the CKD to compare this model with (e.g. kernel='linear', depth=1)")
    kernel, depth = check_kernel(kernel), check_int(depth, "depth", minimum=1)
    need = 4 * max(B * T, x_fit.shape[0] * x_fit.shape[1]) * T * 8
    if net is not None:
        need += 2 * looped_memory_bytes(net.config, getattr(net, "loops", 1), max(B, x_fit.shape[0]), T, 8,
                                        hidden=True)
    check_fits(need, f"evaluating on {B} sequences of length {T}", "use fewer or shorter sequences")
    settings = settings_for(kernel, depth, x_fit)
    name = "transformer" if net is not None else "model"
    preds = {name: model_predictions(net if net is not None else model, x)}
    preds |= {n: run_ckd(x, s) for n, s in settings.items()}
    preds |= {n: fn(x) for n, fn in BASELINES.items()}
    errors = {n: next_token_error(p, x) for n, p in preds.items()}
    rows = probe(net, x_fit, x, settings[f"ckd depth {depth}"]) if net is not None else []
    return dict(config=config, step=step, t=list(range(T - 1)), errors=errors,
                summary={n: summarize(errors[n], p, x) for n, p in preds.items()}, settings=settings, probe=rows,
                sequences=B, seed=None, model=name, kernel=kernel, depth=depth,
                data=dict(shape=list(x.shape), tuned_on="data" if tune_data is None else
                          f"tune_data ({x_fit.shape[0]} sequences)"))


def model_predictions(model, x: Tensor) -> Tensor:
    """model(x) as float64 on x's device, under ``no_grad``; a torch module runs in its own dtype and
    device, in eval mode (its mode is restored). One-line error for a wrong shape or non-finite values."""
    with torch.no_grad():
        if isinstance(model, torch.nn.Module):
            first = next((p for p in model.parameters() if p.is_floating_point()), None)
            was = model.training
            model.eval()
            try:
                out = model(x if first is None else x.to(first.device, first.dtype))
            finally:
                model.train(was)
        else:
            out = model(x.clone())  # the function cannot alter the sequences scored afterwards
    if not isinstance(out, Tensor):
        try:
            out = torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"the model returned {type(out).__name__}, not an array of predictions") from None
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"the model returned shape {tuple(out.shape)} for sequences of shape {tuple(x.shape)}; "
                         "it must return (B, T, d), row t predicting x_{t+1}")
    out = out.detach().to(x.device, torch.float64)
    if not torch.isfinite(out).all():
        raise ValueError("the model's predictions contain NaN or inf")
    return out


def evaluate_trained(model: torch.nn.Module, cfg: TrainConfig, step: int, *, sequences: int = 64,
                     seed: int | None = None) -> dict:
    """``evaluate`` for a model already loaded (``ckd.pretrained.load_with_config`` too)."""
    ref = reference(cfg, sequences=sequences, seed=seed)
    mine = evaluate_model(model, cfg, ref)
    return dict(config=asdict(cfg), step=step, t=list(range(cfg.length - 1)),
                errors={"transformer": mine["errors"], **ref["errors"]},
                summary={"transformer": mine["summary"], **ref["summary"]}, settings=ref["settings"],
                probe=mine["probe"], sequences=ref["sequences"], seed=ref["seed"])


def title(result: dict) -> str:
    """One line: the model and the sequences of ``evaluate``'s result."""
    c = result["config"]
    looped = f" ({c['loop_blocks']} block x {c['loop']} loops)" if c is not None and c.get("loop") else ""
    model = (f"{c['task']} / {c['attention']} attention / {c['layers']} layers{looped} / init {c['init']} / "
             f"step {result['step']}" if c is not None else f"{result['model']} (CKD kernel {result['kernel']}, "
             f"depth {result['depth']})")
    if "data" not in result:
        return f"{model}: {result['sequences']} fresh prompts, T = {c['length']}, d = {c['dim']}"
    _, T, d = result["data"]["shape"]
    return f"{model}: {result['sequences']} given sequences, T = {T}, d = {d}"


def notes(result: dict) -> list[str]:
    """What differs on the user's sequences: no oracle, where CKD's settings were chosen."""
    if "data" not in result:
        return []
    where = ("on these same sequences (in-sample)"
             if result["data"]["tuned_on"] == "data" else f"on {result['data']['tuned_on']}")
    return ["no oracle: the given sequences come without their map f",
            f"CKD's kernel parameter and step{' and the probe read-outs' if result['probe'] else ''} chosen {where}"]


def report(result: dict) -> str:
    """A plain-text table of ``evaluate``'s summary and probe."""
    lines = [title(result), *notes(result),
             "", f"{'method':<22}{'mse (t>=1)':>12}{'med err t=T/2':>15}{'med err last':>14}"]
    for name, s in sorted(result["summary"].items(), key=lambda kv: kv[1]["mse"]):
        lines.append(f"{name:<22}{s['mse']:>12.3e}{s['median_err_mid']:>15.3e}{s['median_err_last']:>14.3e}")
    if not result["probe"]:
        return "\n".join(lines)
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

    mine = result.get("model", "transformer")
    fig, axes = figure(1, 2 if result["probe"] else 1, width=4.6)
    ax, axp = (axes[0], axes[1]) if result["probe"] else (axes, None)
    shown = [mine, *[k for k in result["errors"] if k.startswith("ckd")], "last", "ols", "krr", "analogues", "oracle"]
    for name_ in (k for k in shown if k in result["errors"]):
        band(ax, result["t"][1:], result["errors"][name_][:, 1:], label=name_,
             linestyle="-" if name_ == mine or name_.startswith("ckd") else ":")
    log_axes(ax)
    c = result["config"]
    head = (f"{c['task']}, {c['attention']}, L={c['layers']}, init {c['init']}" if c else
            f"{mine}, CKD {result['kernel']}")
    ax.set(xlabel="t", ylabel="|prediction - x_{t+1}|",
           title=f"{head} ({result['sequences']} {'given sequences' if 'data' in result else 'prompts'})")
    ax.legend(ncol=2)
    if axp is None:
        return save_figure(fig, out, name)
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
    """Write out/evaluation.json (numbers, marked ``"format": FORMAT``) and out/evaluation.png/.pdf."""
    from .experiments.plotting import quantiles, save_json

    data = {"format": FORMAT, **{k: v for k, v in result.items() if k != "errors"}}
    data["errors"] = {k: quantiles(e) for k, e in result["errors"].items()}
    return [save_json(out, "evaluation", data), *plot(result, out)]


make_callable(__name__)  # ckd.evaluate(...) calls evaluate (module doc)
