"""``ckd forecast IN -o OUT``: strictly causal one-step forecasts of a raw trajectory, or with
``--horizon H`` the H states after the context (autoregressive rollouts, ``ckd.rollout``).

``--horizon H --method parrot|last|mean`` on a plain float array runs in NumPy
(``ckd.parroting``) without importing torch; the library gives the same bits."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from ..cli import MAX_INT, integer, path
from ..cost import check_time, fit_cubes, forecast_seconds
from ..figures import figure_format, require_matplotlib, save_figure_as
from ..names import (
    CHOICE_METHOD,
    DEFAULT_METHOD,
    DEFAULT_ROLLOUT_METHOD,
    FORECAST_METHODS,
    ROLLOUT_METHODS,
    default_method,
)
from ..progress import estimated_progress

if TYPE_CHECKING:
    import numpy as np

ALL_METHODS = tuple(dict.fromkeys(FORECAST_METHODS + ROLLOUT_METHODS))
HELP = "forecasts of a raw trajectory: one step per row, or --horizon H steps"
MAX_PLOTTED = 8  # --plot draws the first 8 coordinates (one panel each); the title says how many of d
SIMPLE_BYTES = 2**28  # larger outputs take the library path, whose memory check names the limit


def add_parser(sub) -> None:
    p = sub.add_parser("forecast", help=HELP,
                       description="Without --horizon, row t of OUT forecasts IN[t+1] from IN[0..t] only (scaling "
                                   "and settings included). With --horizon H, OUT holds the H states after the "
                                   "context IN, (H, d) or (B, H, d). In the units of IN. See docs/forecast.md.")
    p.add_argument("input", metavar="IN", type=path,
                   help="(T, d) or (B, T, d) trajectory, .npy (or .csv for (T, d))")
    p.add_argument("-o", "--output", metavar="OUT", type=path, required=True, help="where to write the forecasts")
    p.add_argument("--horizon", metavar="H", default=None,
                   help="forecast the H states after IN by an autoregressive rollout (integer >= 1)")
    p.add_argument("--method", default=None, choices=ALL_METHODS,
                   help=f"default {DEFAULT_METHOD} for one step, {DEFAULT_ROLLOUT_METHOD} with --horizon (the best "
                        "measured, docs/forecast.md); one step: "
                        f"{', '.join(FORECAST_METHODS)}; --horizon: {', '.join(ROLLOUT_METHODS)}")
    p.add_argument("--univariate", action="store_true",
                   help="--horizon only: forecast each coordinate from its own past (delay embedding --embed)")
    p.add_argument("--embed", metavar="D", default="5",
                   help="delay-embedding dimension of --univariate and of parrot (default 5)")
    p.add_argument("--sigma", type=float, default=None,
                   help="gaussian bandwidth in standardised units (ckd, krr; default: chosen from the data)")
    p.add_argument("--ridge", type=float, default=None, help="ridge lambda (ckd, krr; default: chosen from the data)")
    p.add_argument("--sweeps", type=integer(1), default=None,
                   help="--horizon, ckd: sweeps over the context (default: chosen from the context)")
    p.add_argument("--layers", type=integer(1), default=None, metavar="L",
                   help="--horizon, ckd: L layers (sweeps, Chebyshev or momentum iteration, chosen from the "
                        "context) instead of --sweeps, each one application of the kernel matrix (docs/forecast.md)")
    p.add_argument("--k", type=integer(1), default=1, help="neighbours of the analogues method (default 1)")
    p.add_argument("--depth", default="1", help="one-step ckd depth: 1 (local linear read-out, default) or inf")
    p.add_argument("--checkpoint", type=path, default=None, metavar="PT",
                   help="checkpoint.pt of ckd train (method transformer: a trained Transformer as forecaster)")
    p.add_argument("--plot", metavar="FIG", type=path, default=None,
                   help="--horizon only: draw context, forecast (and --truth) of the first 8 coordinates to FIG, "
                        "whose suffix names the format (.png, .pdf, .svg)")
    p.add_argument("--truth", metavar="TRUTH", type=path, default=None,
                   help="with --plot: the true continuation, shaped like OUT (.npy or .csv)")
    p.add_argument("--pretrained", default=None, metavar="NAME",
                   help="method transformer: a model of the zoo (ckd zoo list) instead of --checkpoint")
    p.add_argument("--report", metavar="FILE.json", type=path, default=None,
                   help="write the settings chosen per sequence (and coordinate) and the fit diagnostics as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="one line on stderr with the chosen settings")
    p.add_argument("--force", action="store_true",
                   help="run even when the estimated time exceeds an hour (refused by default, with the estimate)")
    p.set_defaults(run=run)


def _integer(value: str, name: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if not 1 <= v <= MAX_INT:
        raise ValueError(f"{name} must be an integer in 1 .. 2**63 - 1, got {value}")
    return v


def _check_plot(args, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """Fail before any work: matplotlib present, FIG's folder exists, TRUTH shaped like OUT."""
    import numpy as np

    from ..io import check_file_target, load_array

    if args.truth is not None and args.plot is None:
        raise ValueError("--truth is drawn by --plot: give --plot FIG too")
    if args.plot is None:
        return None
    if args.horizon is None:
        raise ValueError("--plot draws a multi-step forecast: give --horizon H")
    require_matplotlib("ckd forecast --plot")  # absent or broken: one line, before any work
    check_file_target(args.plot, [args.input, args.output, *([args.truth] if args.truth else [])])
    figure_format(args.plot)
    for other, flag in ((args.output, "-o"), (args.report, "--report")):
        if other is not None and Path(other).resolve() == Path(args.plot).resolve():
            raise ValueError(f"{args.plot}: --plot and {flag} are the same file; choose two names")
    if args.truth is None:
        return None
    truth = load_array(args.truth)
    if truth.shape != out_shape:
        raise ValueError(f"{args.truth}: truth has shape {truth.shape}, the forecast has {out_shape}")
    if not np.isfinite(truth).all():
        raise ValueError(f"{args.truth}: truth contains NaN or inf")
    return truth


def plot_rollout(path: str, context: np.ndarray, pred: np.ndarray, truth: np.ndarray | None, title: str) -> None:
    """Context, forecast and truth of one trajectory, one panel per coordinate (step index on x), for
    the first ``MAX_PLOTTED`` coordinates only (the title says so): a figure of d = 2000 panels
    would take minutes and show nothing. Written atomically to exactly ``path``."""
    import matplotlib.pyplot as plt
    import numpy as np

    T, d = context.shape
    H = pred.shape[0]
    shown = min(d, MAX_PLOTTED)
    if shown < d:
        title += f"; coordinates 0..{shown - 1} of {d} shown"
    fig, axes = plt.subplots(shown, 1, figsize=(8, 1.8 * shown + 0.6), sharex=True, squeeze=False)
    steps = np.arange(T, T + H)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(np.arange(T), context[:, i], color="0.4", lw=1, label="context")
        if truth is not None:
            ax.plot(steps, truth[:, i], color="k", lw=1, label="truth")
        ax.plot(steps, pred[:, i], color="C3", lw=1.2, ls="--", label="forecast")
        ax.axvline(T - 0.5, color="0.7", lw=0.8)
        ax.set_ylabel(f"x[{i}]")
    axes[0, 0].legend(loc="upper left", fontsize=8, ncol=3)
    axes[0, 0].set_title(title, fontsize=10)
    axes[-1, 0].set_xlabel("step t")
    fig.tight_layout()
    save_figure_as(fig, path, dpi=120)


def estimate(args, shape: tuple[int, ...], horizon: int | None, embed: int) -> float:
    """Estimated seconds of the forecast (``ckd.cost``) from the sizes and the settings it will search."""
    if len(shape) not in (2, 3) or (horizon is not None and args.method not in ("ckd", "krr", CHOICE_METHOD,
                                                                              "analogues", "transformer")):
        return 0.0  # refused by as_batch; or parrot, last, mean, nvar, esn: linear in T and H
    if horizon is not None and args.method == CHOICE_METHOD:  # krr's work; parroting's is linear
        args = SimpleNamespace(**{**vars(args), "method": "krr"})
    B, T, d = (1, *shape) if len(shape) == 2 else shape
    depth = "inf" if str(args.depth).strip().lower() in ("inf", "infinity") else 1
    if horizon is None:
        from ..forecast import GRIDS as ONE_STEP_GRIDS

        grid = ONE_STEP_GRIDS.get("ckd-inf" if args.method == "ckd" and depth == "inf" else args.method)
        experts = 1 if grid is None else ((1 if args.sigma is not None else len(grid["sigma"]))
                                          * (1 if args.ridge is not None else len(grid["ridge"])))
        return forecast_seconds(args.method, B, T, d, depth=depth, experts=experts)
    fits = 1
    if args.method in ("ckd", "krr"):
        from ..heldout import heldout_origins
        from ..rollout import GRIDS, UNIVARIATE_LAGS

        grid = GRIDS["ckd-layers" if args.layers is not None else args.method]
        searched = ((1 if args.sigma is not None else len(grid["sigma"]))
                    * (1 if args.ridge is not None else len(grid["ridge"]))
                    * (len(UNIVARIATE_LAGS) if args.univariate else len(grid["embed"]))
                    * (3 if args.layers is not None else 1 if args.sweeps is not None or args.method == "krr"
                       else len(grid["sweeps"])))
        fits = 1 + (searched > 1) * searched * len(heldout_origins(T))
    cubes = fit_cubes(args.method, T, 1 if args.univariate else d, sweeps=args.sweeps, layers=args.layers)
    return forecast_seconds(args.method, B, T, d, horizon=horizon, univariate=args.univariate, embed=embed,
                            fits=fits, cubes=cubes if args.method in ("ckd", "krr") else 0.0)


def _setting_text(setting: dict) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items() if v is not None)


def report(details, args, shape: tuple[int, ...]) -> dict:
    """The ``--report`` JSON: the method, the shape of IN and, per sequence, the settings chosen
    (per coordinate with --univariate) and the fit diagnostics (``Rollout.diagnostics``); for
    one-step forecasts the expert grid, the expert each sequence's last row uses, how many rows
    each expert forecast and the rows the guard replaced by x_t. ``details``: a ``ckd.rollout.Rollout``
    (or ``simple``'s stand-in) with --horizon, else a ``ckd.forecast.Forecast``."""
    out = {"method": args.method, "input_shape": list(shape), "horizon": None if args.horizon is None else
           int(args.horizon), "univariate": bool(args.univariate), "sequences": []}
    if args.horizon is not None:
        out["stopped_steps"] = [int(v) for v in details.stopped]
        out["sequences"] = [{"settings": s, "diagnostics": d} for s, d in zip(details.settings, details.diagnostics)]
        return out
    out["experts"] = details.experts
    for row in details.choice:
        used = [int((row[1:] == g).sum()) for g in range(len(details.experts))]
        last = int(row[-1])
        out["sequences"].append({"last_row_setting": details.experts[last] if last >= 0 else None,
                                 "rows_per_expert": used, "guard_fallback_rows": int((row[1:] < 0).sum())})
    return out


def _finite(obj):
    """JSON has no inf or NaN: a non-finite number (e.g. the score of a setting that diverged) is null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def summary_line(rep: dict) -> str:
    """``-v``: the chosen settings in one line (the first three sequences; all in --report)."""
    head = f"ckd forecast: {rep['method']}"
    if rep["horizon"] is None:
        parts = [_setting_text(s["last_row_setting"]) if s["last_row_setting"] else "x_t (guard)"
                 for s in rep["sequences"]]
        head += ", one step; last row's setting"
    else:
        head += f", horizon {rep['horizon']}, {'univariate' if rep['univariate'] else 'full state'}"
        parts = []
        for s in rep["sequences"]:
            per = s["settings"] if isinstance(s["settings"], list) else [s["settings"]]
            parts.append(" | ".join(_setting_text(x) or "no settings" for x in per))
    shown = [f"sequence {b}: {p or 'no settings'}" for b, p in enumerate(parts[:3])]
    more = f"; ... {len(parts) - 3} more (see --report)" if len(parts) > 3 else ""
    return f"{head}: " + "; ".join(shown) + more


def simple(x: np.ndarray, args, H: int, D: int):
    """``--horizon H --method parrot|last|mean`` with no other option, on a finite float array of
    moderate size: the rollout in NumPy (``ckd.parroting``), no torch import, the same bits as
    ``ckd.rollout``. None where the library path must run (it validates and reports the rest)."""
    import numpy as np

    from ..names import check_used
    from ..parroting import SIMPLE_METHODS, simple_rollout

    if (args.method not in SIMPLE_METHODS or args.checkpoint is not None
            or any(v is not None for v in (args.sigma, args.ridge, args.sweeps, args.layers))
            or args.k != 1 or args.depth.strip() != "1"):
        return None
    # the library's rule for settings a method does not read (embed with last or mean), without torch
    check_used(args.method, H, sigma=None, ridge=None, k=1, embed=D, univariate=args.univariate)
    if x.dtype.kind != "f" or x.dtype.itemsize > 8 or not x.dtype.isnative or x.ndim not in (2, 3) or x.size == 0:
        return None
    batch = np.ascontiguousarray(x if x.ndim == 3 else x[None], dtype=np.float64)
    B, T, d = batch.shape
    if (T < (D + 1 if args.method == "parrot" else 1) or 4 * B * (T + H) * d * 8 > SIMPLE_BYTES
            or not np.isfinite(batch).all()):
        return None
    pred, settings = simple_rollout(batch, H, args.method, D)
    return SimpleNamespace(pred=pred, settings=settings, stopped=[0] * B, diagnostics=[{}] * B)


def run(args) -> int:
    from ..io import atomic_write, check_file_target, check_output_path, load_array, save_array

    if args.method is None:
        args.method = default_method(args.horizon)
    if args.pretrained is not None:
        if args.checkpoint is not None:
            raise ValueError("give either --checkpoint or --pretrained, not both")
        args.checkpoint = f"pretrained:{args.pretrained}"
    x = load_array(args.input)
    out_path = check_output_path(args.output, x.ndim,
                                 inputs=[args.input, args.checkpoint or args.input, args.truth or args.input])
    if args.report is not None:
        if Path(args.report).suffix.lower() != ".json":
            raise ValueError(f"{args.report}: --report writes JSON; give a file name ending in .json")
        check_file_target(args.report, [args.input, args.output, *([args.truth] if args.truth else [])])
        if Path(args.report).resolve() == Path(args.output).resolve():
            raise ValueError(f"{args.report}: --report and -o are the same file; choose two names")
    H = None if args.horizon is None else _integer(args.horizon, "--horizon")
    D = None if H is None else _integer(args.embed, "--embed")
    details = None
    what = f"ckd forecast --method {args.method}" + ("" if H is None else f" --horizon {H}") + f" on {x.shape}"
    seconds = estimate(args, x.shape, H, D or 5)
    check_time(seconds, what,
               "use a shorter trajectory (these methods fit (T, T) kernel matrices), a shorter --horizon, or "
               "--method last, mean or parrot", args.force)
    if args.horizon is None:
        _check_plot(args, x.shape)
    else:
        truth = _check_plot(args, x.shape[:-2] + (H, x.shape[-1]))
        details = simple(x, args, H, D)
    if details is None:
        import torch

        from ..forecast import forecast_details
        from ..validation import as_batch

        batch, _ = as_batch(x, torch.float64, squares=False)  # forecast_details checks x^2 where a method needs it
        with estimated_progress(seconds, "ckd forecast" + ("" if H is None else f" --horizon {H}")):
            details = forecast_details(batch, args.method, horizon=H, univariate=args.univariate, embed=D or 5,
                                       sigma=args.sigma, ridge=args.ridge, sweeps=args.sweeps, k=args.k,
                                       depth=args.depth, checkpoint=args.checkpoint, layers=args.layers)
        details.pred = details.pred.cpu().numpy()
    pred = details.pred[0] if x.ndim == 2 else details.pred
    if args.horizon is not None and args.plot is not None:
        first = (lambda a: a) if x.ndim == 2 else (lambda a: a[0])
        mode = "univariate" if args.univariate else "full state"
        title = f"{Path(args.input).name}: --method {args.method}, {mode}, H = {H}"
        if x.ndim == 3:
            title += f" (sequence 0 of {x.shape[0]})"
        plot_rollout(args.plot, first(x), first(pred), None if truth is None else first(truth), title)
    save_array(out_path, pred)
    if args.report is not None or args.verbose:
        rep = report(details, args, x.shape)
        if args.report is not None:
            text = json.dumps(_finite(rep), indent=1, allow_nan=False) + "\n"
            atomic_write(args.report, lambda fh: fh.write(text.encode()))
        if args.verbose:
            print(summary_line(rep), file=sys.stderr)
    return 0

