"""``ckd reproduce chaos``: in-context one-step forecasting of real chaotic systems (dysts).

Systems: the discrete maps of ``dysts.maps`` and continuous flows of ``dysts.flows``
sampled at 25 points per dominant period (RK45, rtol = atol = 1e-8), after a burn-in;
the seed shifts the window along the attractor. Each trajectory is standardised
(global mean and standard deviation per coordinate): this only fixes the units of the
error, since every method below standardises causally and is equivariant to it
(``tests/test_forecast.py::test_units_equivariance``).

Methods: ``ckd.forecast`` with every method (all strictly causal, settings chosen
in context), and the analogues method for k = 1..5. Error: |x^_{t+1} - x_{t+1}| in
standardised units, averaged over the second half of the trajectory. Headline: the
median over systems of the ratio to the analogues method (k = 1), and the fraction
of systems where a method beats it.

Regularisation: CKD at depth inf with the exp kernel and large beta (``ckd.descent``)
on a few systems, with and without ridge: how often the triangular solve gives
non-finite or huge forecasts, and the error.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import time
import warnings

import numpy as np
import torch

from ..descent import descend, diagonal
from ..forecast import forecast_details
from ..kernels import causal_matrices
from . import plotting as pl
from . import progress

MAPS = ["Baker", "Bedhead", "BlinkingVortexMap", "Bogdanov", "Chebyshev", "DeJong", "Duffing", "Gauss", "Henon",
        "Hopalong", "Ikeda", "KaplanYorke", "Logistic", "MaynardSmith", "Pickover", "Ricker", "Svensson", "Tent",
        "Tinkerbell"]
FLOWS = ["Aizawa", "Arneodo", "ArnoldBeltramiChildress", "ChenLee", "Chua", "Dadras", "DoubleGyre", "Duffing",
         "Finance", "GenesioTesi", "Halvorsen", "HindmarshRose", "Lorenz", "LorenzStenflo", "NoseHoover",
         "RabinovichFabrikant", "Rossler", "Rucklidge", "Sakarya", "SprottA", "SprottB", "Thomas"]
# dysts systems left out, and why (their default trajectories are not stationary chaotic orbits)
EXCLUDED = {
    "map:Chirikov": "momentum drifts without bound (no modulo): not stationary",
    "map:Circle": "angle drifts without bound (no modulo): not stationary",
    "map:Gingerbreadman": "the default orbit has period 6",
    "map:GumowskiMira": "the default orbit collapses onto about 93 points",
    "flow:MackeyGlass": "a delay equation: the 10 coordinates are a delay embedding, not a state",
}
QUICK_SYSTEMS = ["map:Henon", "map:Logistic", "map:Ikeda", "flow:Lorenz"]
METHODS = {
    "ckd": {"method": "ckd"},
    "ckd-inf": {"method": "ckd", "depth": "inf"},
    "krr": {"method": "krr"},
    "ols": {"method": "ols"},
    "last": {"method": "last"},
    **{f"analogues-{k}": {"method": "analogues", "k": k} for k in range(1, 6)},
}
REFERENCE = "analogues-1"
BURN = 200
PTS_PER_PERIOD = 25
REG_SYSTEMS = ["map:Henon", "map:Ikeda", "map:Tinkerbell", "flow:Lorenz", "flow:Rossler", "flow:Chua"]
REG_BETAS = (1.0, 4.0, 16.0)
LOG_MAX = math.log(torch.finfo(torch.float64).max)
REG_RHOS = (0.0, 1e-6, 1e-3, 1e-1, 1.0)  # rho: ridge lambda = rho * max_t R[t, t]


def import_dysts():
    """``dysts.maps`` and ``dysts.flows``, silencing the 'numba not installed' warning."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import dysts.flows as flows
            import dysts.maps as maps
    except ImportError:
        raise ValueError("the chaos benchmark needs dysts: pip install 'ckd[chaos]'") from None
    return maps, flows


def trajectory(system: str, length: int, seed: int = 0) -> np.ndarray:
    """A (length, d) trajectory of ``"map:Name"`` or ``"flow:Name"``, standardised; the seed
    shifts the window by 37 * seed steps after a burn-in of ``BURN`` steps.

    Nothing is drawn at random: the initial condition is dysts' stored default for the system,
    passed explicitly (a copy), the integrator's seed is the experiment's seed, and numpy's
    global random state (which dysts' ``make_trajectory`` reseeds) is restored afterwards.
    ``data_checksum`` fingerprints the result (``tests/test_chaos.py`` pins a few)."""
    maps, flows = import_dysts()
    kind, name = system.split(":")
    n = BURN + 37 * seed + length
    state = np.random.get_state()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = getattr(maps if kind == "map" else flows, name)()
            ic = np.array(model.ic, dtype=np.float64, copy=True)
            if kind == "map":
                x = model.make_trajectory(n, init_cond=ic)
            else:
                x = model.make_trajectory(n, init_cond=ic, pts_per_period=PTS_PER_PERIOD, method="RK45",
                                          rtol=1e-8, atol=1e-8, random_seed=seed)
    finally:
        np.random.set_state(state)
    if x is None:
        raise ValueError(f"{system}: dysts could not integrate a full trajectory")
    x = np.asarray(x, dtype=np.float64).reshape(n, -1)[-length:]
    return (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)


def data_checksum(trajs: dict[str, np.ndarray]) -> str:
    """sha256 (first 16 hex digits) of the systems' names and trajectories (float64 bytes), in order."""
    h = hashlib.sha256()
    for name, x in trajs.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


# data_checksum of the trajectories docs/ was made with (seed 0; dysts 0.96, no numba, numpy/scipy of
# the project's venv, x86-64 Linux). Chaotic orbits amplify a one-ulp difference of the platform's
# floating point (BLAS inside scipy's RK45, libm, numba's JIT) to O(1) within a few hundred steps.
DOCS_CHECKSUM = {"full": "1a16e8306546cf7a", "quick": "0997db1c32dadc71"}


def systems(quick: bool) -> list[str]:
    return QUICK_SYSTEMS if quick else [f"map:{m}" for m in MAPS] + [f"flow:{f}" for f in FLOWS]


def one_step_errors(x: torch.Tensor, opts: dict) -> tuple[np.ndarray, int]:
    """|x^_{t+1} - x_{t+1}| for t = 0..T-2 (standardised units) and the guard's fallbacks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the guard's fallbacks are counted here, not printed
        f = forecast_details(x[None], **opts)
    return (f.pred[0, :-1] - x[1:]).norm(dim=-1).cpu().numpy(), f.fallbacks


def regularisation(trajs: dict[str, np.ndarray], device: str, quick: bool) -> list[dict]:
    """CKD with the exp kernel (``ckd.descent.descend``) at depth inf with a relative ridge
    lambda = rho * max_t R[t, t], and at depth 16 with the default step (damped, truncated):
    the fraction of rows (t >= T/2) whose forecast is not finite or 100 standard deviations
    off ("garbage"), and the median error of the other rows, pooled over a few systems."""
    rows = []
    names = [s for s in REG_SYSTEMS if s in trajs][: 2 if quick else None]
    betas, rhos = ((1.0, 16.0), (0.0, 1e-1)) if quick else (REG_BETAS, REG_RHOS)
    settings = [(beta, "inf", rho) for beta in betas for rho in rhos] + [(beta, 16, 0.0) for beta in betas]
    for beta, depth, rho in settings:
        errs, skipped = [], []
        for s in names:
            x = torch.tensor(trajs[s], device=device)[None]
            T = x.shape[1]
            mats = causal_matrices(x, "exp", beta=beta)
            log_rmax = float((diagonal(mats).log() + mats.log_scale[:, None]).max())
            if rho > 0 and log_rmax + math.log(rho) > LOG_MAX:
                skipped.append(s)  # lambda itself would overflow float64
                continue
            ridge = rho * math.exp(log_rmax) if rho > 0 else 0.0
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    p = descend(x, "exp", beta=beta, depth=depth, ridge=ridge)[0]
            except (ValueError, FloatingPointError):
                p = torch.full_like(x[0], math.nan)
            errs.append((p[:-1] - x[0, 1:]).norm(dim=-1)[T // 2:])
        e = torch.cat(errs)
        garbage = ~torch.isfinite(e) | (e > 100.0)
        rows.append({"beta": beta, "depth": depth, "rho": rho, "garbage_fraction": float(garbage.double().mean()),
                     "median_error": float(e[~garbage].median()) if (~garbage).any() else math.nan,
                     "systems": [s for s in names if s not in skipped], "skipped_ridge_overflows": skipped})
    return rows


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    """The benchmark (module doc); one torch thread: the matrices are small (T <= 1000) and
    on a loaded machine two threads were measured 20-40x slower than one."""
    quick = size == "quick"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, quick=quick, seed=seed, device=device)
    finally:
        torch.set_num_threads(threads)


def _run(out: pathlib.Path, *, quick: bool, seed: int, device: str) -> dict:
    length = 240 if quick else 1000
    start = time.time()
    names = systems(quick)
    trajs = {s: trajectory(s, length, seed) for s in names}
    gen_s = time.time() - start
    checksum = data_checksum(trajs)
    expected = DOCS_CHECKSUM["quick" if quick else "full"]
    if seed == 0 and checksum != expected:
        warnings.warn(f"chaos: the generated trajectories differ from those of docs/ (data checksum {checksum}, "
                      f"docs {expected}): this platform's floating point changes the chaotic orbits, so the "
                      "numbers will differ from docs/", stacklevel=2)
    errors = {m: {} for m in METHODS}
    fallbacks = {m: 0 for m in METHODS}
    seconds = {m: 0.0 for m in METHODS}
    for s in progress(names, "chaos systems", quick=quick):
        x = torch.tensor(trajs[s], device=device)
        for m, opts in METHODS.items():
            t0 = time.time()
            errors[m][s], fb = one_step_errors(x, opts)
            seconds[m] += time.time() - t0
            fallbacks[m] += fb
    half = length // 2
    score = {m: {s: float(errors[m][s][half - 1:].mean()) for s in names} for m in METHODS}
    ratio = {m: {s: score[m][s] / score[REFERENCE][s] for s in names} for m in METHODS}
    summary = {m: {"median_ratio": float(np.median(list(ratio[m].values()))),
                   "win_fraction": float(np.mean([r < 1 for r in ratio[m].values()])),
                   "median_error": float(np.median(list(score[m].values()))),
                   "fallbacks": fallbacks[m], "seconds": seconds[m]} for m in METHODS}
    reg = regularisation(trajs, device, quick)
    _figures(out, names, errors, ratio, half, length)
    pl.save_json(out, "chaos", {
        "config": {"length": length, "burn": BURN, "pts_per_period": PTS_PER_PERIOD, "quick": quick,
                   "seed": seed, "device": device, "systems": names, "methods": METHODS, "reference": REFERENCE,
                   "excluded": EXCLUDED, "error": "mean over t >= T/2 of |x^_{t+1} - x_{t+1}|, standardised units",
                   "data_checksum": checksum, "dysts": _dysts_version()},
        "score": score, "ratio_to_reference": ratio, "summary": summary, "regularisation": reg,
        "errors_vs_t": {m: {s: errors[m][s] for s in names} for m in ("ckd", "krr", REFERENCE)},
        "seconds_generate": gen_s,
    })
    (out / "chaos.md").write_text(tables(json.loads((out / "chaos.json").read_text())))
    big = max(r["beta"] for r in reg)
    garbage = {(r["depth"], r["rho"]): r["garbage_fraction"] for r in reg if r["beta"] == big}
    return {
        "systems": float(len(names)),
        "ckd median ratio to analogues-1": summary["ckd"]["median_ratio"],
        "ckd fraction of systems beating analogues-1": summary["ckd"]["win_fraction"],
        "krr median ratio to analogues-1": summary["krr"]["median_ratio"],
        "krr fraction beating analogues-1": summary["krr"]["win_fraction"],
        "ckd-inf median ratio to analogues-1": summary["ckd-inf"]["median_ratio"],
        "ckd fallbacks (guard)": float(summary["ckd"]["fallbacks"]),
        f"exp beta={big:g} depth inf, garbage fraction, no ridge": garbage[("inf", 0.0)],
        f"exp beta={big:g} depth inf, garbage fraction, ridge 0.1 max R[t,t]": garbage[("inf", 0.1)],
        f"exp beta={big:g} depth 16 default step, garbage fraction": garbage[(16, 0.0)],
    }


def _dysts_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dysts")
    except PackageNotFoundError:
        return "unknown"


def _g(v: float) -> str:
    return f"{v:.3g}"


def tables(data: dict) -> str:
    """chaos.md: the summary, per-system and regularisation tables of ``chaos.json`` (for the docs)."""
    names, summary, score = data["config"]["systems"], data["summary"], data["score"]
    ref, n = data["config"]["reference"], len(data["config"]["systems"])
    lines = [f"| method | median ratio to {ref} | systems where it beats {ref} | median error | guard fallbacks "
             f"| seconds ({n} systems) |", "|---|---|---|---|---|---|"]
    for m, v in summary.items():
        wins = "—" if m == ref else f"{round(v['win_fraction'] * n)}/{n} ({v['win_fraction']:.0%})"
        lines.append(f"| {m} | {_g(v['median_ratio'])} | {wins} | {_g(v['median_error'])} | {v['fallbacks']} "
                     f"| {v['seconds']:.0f} |")
    shown = [m for m in summary if m != "analogues-4"]
    lines += ["", "| system | " + " | ".join(shown) + f" | ckd / {ref} |", "|---|" + "---|" * (len(shown) + 1)]
    for s in names:
        r = data["ratio_to_reference"]["ckd"][s]
        ratio = f"**{_g(r)}**" if r >= 1 else _g(r)
        lines.append(f"| {s} | " + " | ".join(_g(score[m][s]) for m in shown) + f" | {ratio} |")
    lines += ["", "| β | depth | ρ | garbage rows | median error | left out (λ overflows) |", "|" + "---|" * 6]
    for r in data["regularisation"]:
        lines.append(f"| {r['beta']:g} | {r['depth']} | {r['rho']:g} | {r['garbage_fraction']:.2%} | "
                     f"{_g(r['median_error'])} | {', '.join(r['skipped_ridge_overflows']) or '—'} |")
    return "\n".join(lines) + "\n"


def _figures(out: pathlib.Path, names: list[str], errors: dict, ratio: dict, half: int, length: int) -> None:
    """chaos.png: ratio to analogues-1 per system (bars) and error vs t for four systems;
    chaos_systems.png: error vs t for every system."""
    shown = ["ckd", "ckd-inf", "krr", "analogues-5"]
    cols = {"ckd": "C0", "ckd-inf": "C9", "krr": "C3", "analogues-5": "C2", REFERENCE: "C7", "last": "C8"}
    fig, axes = pl.figure(1, 2, width=6.0, height=3.8, gridspec_kw={"width_ratios": [2.2, 1]})
    ax = axes[0]
    pos = np.arange(len(names))
    w = 0.8 / len(shown)
    for i, m in enumerate(shown):
        ax.bar(pos + (i - (len(shown) - 1) / 2) * w, [ratio[m][s] for s in names], w, label=m, color=cols[m])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(pos, [s.split(":")[1] + (" (f)" if s.startswith("flow") else "") for s in names],
                  rotation=90, fontsize=6)
    ax.set_ylabel("error / error of analogues k=1")
    ax.set_title(f"one-step error over t >= {half}, {len(names)} dysts systems ((f) = flow)")
    ax.set_ylim(top=ax.get_ylim()[1] * 30)  # room for the legend above the bars
    ax.legend(ncol=4, loc="upper left")
    ax = axes[1]
    for s, ls in zip([n for n in ("map:Henon", "map:Logistic", "flow:Lorenz", "flow:Rossler") if n in names],
                     ("-", "--", ":", "-.")):
        for m in ("ckd", "krr", REFERENCE):
            ax.plot(np.arange(1, length), _smooth(errors[m][s]), ls, color=cols[m],
                    label=f"{m} {s.split(':')[1]}", lw=1.0)
    ax.set_yscale("log")
    ax.set_xlabel("t (tokens seen)")
    ax.set_ylabel("|error| (running median, 25 steps)")
    ax.set_title("error vs t")
    ax.legend(fontsize=5, ncol=2)
    pl.save_figure(fig, out, "chaos")

    ncols = 6
    nrows = -(-len(names) // ncols)
    fig, axes = pl.figure(nrows, ncols, width=2.0, height=1.5, squeeze=False, sharex=True)
    for ax, s in zip(axes.flat, names):
        for m in ("ckd", "krr", REFERENCE, "last"):
            ax.plot(np.arange(1, length), _smooth(errors[m][s]), color=cols[m], lw=0.8, label=m)
        ax.set_yscale("log")
        ax.set_title(s.replace("map:", "").replace("flow:", "(f) "), fontsize=7)
        ax.tick_params(labelsize=5)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=5)
    fig.supxlabel("t (tokens seen)", fontsize=8)
    fig.supylabel("one-step |error|, standardised units (running median, 25 steps)", fontsize=8)
    fig.suptitle("Every system: ckd, krr, analogues k = 1 and last value; (f) = flow", fontsize=9)
    pl.save_figure(fig, out, "chaos_systems")


def _smooth(e: np.ndarray, width: int = 25) -> np.ndarray:
    """Running median of the last ``width`` errors (causal), floored for the log axis."""
    out = np.array([np.median(e[max(0, i - width + 1): i + 1]) for i in range(len(e))])
    return np.maximum(out, pl.FLOOR)
