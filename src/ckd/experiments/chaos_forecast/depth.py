"""How deep must a Transformer be? Valid prediction time against the number of layers L.

On the chaos-forecast data (SPEC §8: context 512, horizon 300, 30 points per Lyapunov time), each
layer-bounded iteration of ``ckd.iterations`` (``ITERATIONS``) is run with L = 1, 2, 4, ..., 256
applications of the kernel matrix on the ckd rollout's pairs (``ckd.rollout.GRIDS["ckd-layers"]``:
stride 2, sigma, lambda and D chosen from the context for each L by held-out rollouts,
``ckd.heldout``); "chosen" also chooses the iteration among ``ckd.rollout.LAYER_ITERATIONS``
(what ``ckd forecast --method ckd --layers L`` does). Its VPT is compared with ``krr`` (the default
forecaster: exact kernel ridge on its own grid) and with the exact solve on the same grid ("exact").

``python -m ckd.experiments.chaos_forecast depth --systems ... --ics 3 --out DIR`` writes
``depth.json``, ``depth.md`` and ``depth.png`` in DIR.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
import warnings

import numpy as np

from .. import plotting as pl
from .data import PROTOCOL, SystemData

LAYERS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CHOSEN = "chosen"  # ckd --layers: the iteration of ckd.rollout.LAYER_ITERATIONS chosen from the context
COLORS = {"sweeps": "C0", "chebyshev": "C3", "momentum": "C2", "preconditioned": "C4", CHOSEN: "k"}


def choose_per_layer(z, kinds: tuple[str, ...], layers=LAYERS) -> dict[int, dict]:
    """For each L, the setting of ``GRIDS["ckd-layers"]`` and iteration of ``kinds`` with the smallest
    held-out rollout error when the coefficients are L layers (z: (T, c) standardised context)."""
    import torch

    from ...heldout import heldout_error, heldout_origins
    from ...rollout import GRIDS, fit_kernel, roll_kernel

    grid = GRIDS["ckd-layers"]
    T, c = z.shape
    solvers = tuple((kind, L) for kind in kinds for L in layers)
    scores: dict[tuple, float] = {}
    for D in grid["embed"]:
        for o in heldout_origins(T):
            head, truth = z[: T - o], z[T - o:]
            keys, beta, settings = fit_kernel(head, D, grid["sigma"], grid["ridge"], solvers, grid["stride"][0], 1)
            widths = torch.tensor([s["sigma"] ** 2 * D * c for s in settings], dtype=z.dtype)
            err = heldout_error(roll_kernel(keys, beta, widths, head, o, D, 1), truth)
            for s, e in zip(settings, err.tolist()):
                key = tuple(s.items())
                scores[key] = scores.get(key, 0.0) + e / len(heldout_origins(T))
    out = {}
    for L in layers:
        mine = {k: v for k, v in scores.items() if dict(k)["layers"] == L}
        out[L] = dict(min(mine, key=mine.get))
    return out


def depth_case(ctx: np.ndarray, truth: np.ndarray, kinds, layers=LAYERS) -> dict:
    """VPT of every (kind, L), of krr and of the exact solve on the ckd-layers grid, for one context."""
    import torch

    from ...forecast import forecast_details
    from ...metrics import vpt
    from ...rollout import LAYER_ITERATIONS, kernel_rollout, standardise

    x = torch.tensor(ctx, dtype=torch.float64)[None]
    H = truth.shape[0]
    mean, std = standardise(x)
    z = ((x - mean) / std)[0]
    ppl = PROTOCOL["pts_per_period"]

    def score(pred_z):
        return float(vpt(truth, (pred_z * std[0] + mean[0]).numpy(), pts_per_lyapunov=ppl))

    out = {"vpt": {}, "settings": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["vpt"]["krr"] = float(vpt(truth, forecast_details(x, "krr", horizon=H).pred[0].numpy(),
                                      pts_per_lyapunov=ppl))
        from ...rollout import GRIDS

        g = GRIDS["ckd-layers"]
        exact, _ = kernel_rollout(z, H, "ckd", sweeps=(None,), sigma=g["sigma"], ridge=g["ridge"], embed=g["embed"],
                                  stride=g["stride"][0], lag=1)
        out["vpt"]["exact"] = score(exact)
        for kind in [*kinds, CHOSEN]:
            chosen = choose_per_layer(z, LAYER_ITERATIONS if kind == CHOSEN else (kind,), layers)
            out["vpt"][kind], out["settings"][kind] = {}, {}
            for L, s in chosen.items():
                pred, _ = kernel_rollout(z, H, "ckd", sweeps=((s["iteration"], L),), sigma=s["sigma"],
                                         ridge=s["ridge"], embed=s["embed"], stride=s["stride"], lag=1)
                out["vpt"][kind][L] = score(pred)
                out["settings"][kind][L] = {k: s[k] for k in ("iteration", "sigma", "ridge", "embed")}
    return out


def depth_system(args) -> dict:
    """Every initial condition of one system (cached data): per IC the ``depth_case`` results."""
    import torch

    torch.set_num_threads(1)
    name, n_ics, kinds = args
    data = SystemData(name)
    T, H = PROTOCOL["context"], PROTOCOL["horizon"]
    t0 = time.perf_counter()
    cases, failed = {}, {}
    for i in range(n_ics):
        traj = data.trajectory(i)
        if traj is not None:
            try:
                cases[i] = depth_case(traj[:T], traj[T:T + H], kinds)
            except Exception as err:  # as the benchmark (scoring.merge_parts): a case that raises is left out
                failed[i] = f"{type(err).__name__}: {err}"
    return {"system": name, "cases": cases, "failed": failed, "seconds": time.perf_counter() - t0}


def summarise(results: list[dict], kinds) -> dict:
    """Median over systems of the per-system median VPT, per kind and L; krr; exact."""
    ok = [r for r in results if r["cases"]]
    kinds = [*kinds, CHOSEN]

    def med(get):
        return float(np.median([np.median([get(c) for c in r["cases"].values()]) for r in ok])) if ok else math.nan

    krr = med(lambda c: c["vpt"]["krr"])
    curves = {kind: {str(L): med(lambda c, k=kind, L=L: c["vpt"][k][L]) for L in LAYERS} for kind in kinds}
    within = {kind: next((int(L) for L, v in curves[kind].items() if v >= 0.9 * krr), None) for kind in kinds}
    return {"systems": [r["system"] for r in ok], "n_ics": max((len(r["cases"]) for r in ok), default=0),
            "left_out": {r["system"]: r.get("failed", {}) for r in results if not r["cases"]},
            "krr": krr, "exact": med(lambda c: c["vpt"]["exact"]), "curves": curves, "within_10pct_of_krr": within}


def report(out: pathlib.Path, results: list[dict], kinds, seconds: float) -> dict:
    """depth.json (every case), depth.md (the table) and depth.png (median VPT vs L)."""
    out.mkdir(parents=True, exist_ok=True)
    summ = summarise(results, kinds)
    kinds = [*kinds, CHOSEN]
    data = {"layers": LAYERS, "kinds": list(kinds), "summary": summ, "results": results, "seconds": seconds}
    pl.save_json(out, "depth", data)
    lines = [f"Median VPT (Lyapunov times) over {len(summ['systems'])} systems ({', '.join(summ['systems'])}; "
             f"{summ['n_ics']} initial conditions each, context {PROTOCOL['context']}, horizon "
             f"{PROTOCOL['horizon']}) of ckd rollouts whose coefficients are L layers of each iteration; "
             f"krr (the default): {summ['krr']:.3g}; exact solve on the same grid: {summ['exact']:.3g}.", "",
             "| L | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for L in LAYERS:
        lines.append(f"| {L} | " + " | ".join(f"{summ['curves'][k][str(L)]:.3g}" for k in kinds) + " |")
    lines += [f"\nLeft out, as in the benchmark's runs: {name} ("
              + ("; ".join(sorted(set(why.values()))) or "no trajectory for these initial conditions") + ")"
              for name, why in summ["left_out"].items()]
    lines += ["", "Smallest L within 10 % of krr's median VPT: "
              + "; ".join(f"{k}: {summ['within_10pct_of_krr'][k] or 'none <= 256'}" for k in kinds), ""]
    (out / "depth.md").write_text("\n".join(lines))
    fig, axes = pl.figure(1, 1, width=5.5, height=3.8, squeeze=False)
    ax = axes[0, 0]
    for k in kinds:
        ax.plot(LAYERS, [summ["curves"][k][str(L)] for L in LAYERS], marker="o", color=COLORS.get(k),
                ls="--" if k == CHOSEN else "-", label="ckd --layers (chosen)" if k == CHOSEN else k)
    ax.axhline(summ["krr"], color="k", lw=1.0, ls="--", label="krr")
    ax.axhline(summ["exact"], color="grey", lw=1.0, ls=":", label="exact, same grid")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("L (applications of the kernel matrix: layers)")
    ax.set_ylabel("median VPT (Lyapunov times)")
    ax.set_title(f"How deep? {len(summ['systems'])} systems x {summ['n_ics']} initial conditions", fontsize=9)
    ax.legend(fontsize=7)
    pl.save_figure(fig, out, "depth")
    return summ


def depth_key(n_ics: int, kinds: list[str]) -> dict:
    """The key of a depth study's per-system files: a rerun with the same key resumes from them."""
    from .data import protocol_key
    from .executors import FORMAT

    return {"format": FORMAT, "study": "depth", "protocol": protocol_key(), "n_ics": n_ics, "kinds": kinds,
            "layers": list(LAYERS)}


def from_json(result: dict) -> dict:
    """A system's result as read back from JSON: the integer keys of its cases (initial conditions) and of their
    VPTs (L) restored, as ``summarise`` reads them (the settings' keys stay strings, as in depth.json)."""
    cases = {int(i): {**c, "vpt": {k: ({int(L): v for L, v in val.items()} if isinstance(val, dict) else val)
                                   for k, val in c["vpt"].items()}}
             for i, c in result["cases"].items()}
    return {**result, "cases": cases}


def run_depth(out: pathlib.Path, systems: list[str], n_ics: int, n_workers: int = 1, kinds=None) -> dict:
    """The study on ``systems`` (first ``n_ics`` initial conditions of each), ``n_workers`` processes.
    Each system's result is written to ``out/systems/NAME.json`` as it finishes (``executors.save_result``);
    a rerun with the same settings reads those files and runs only the missing systems."""
    from ...iterations import ITERATIONS
    from .. import progress
    from .executors import load_results, save_result

    kinds = list(kinds or ITERATIONS)
    key = depth_key(n_ics, kinds)
    done = {name: from_json(r) for name, r in load_results(out, systems, key).items()}
    if done:
        print(f"depth: {len(done)} of {len(systems)} systems read from {out / 'systems'} (resumed)", file=sys.stderr)
    jobs = [(s, n_ics, kinds) for s in systems if s not in done]
    t0 = time.perf_counter()
    if n_workers > 1 and jobs:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(n_workers) as pool:
            for r in progress(pool.imap_unordered(depth_system, jobs), "depth systems", total=len(jobs)):
                save_result(out, r, key)
                done[r["system"]] = r
    else:
        for r in progress(map(depth_system, jobs), "depth systems", total=len(jobs)):
            save_result(out, r, key)
            done[r["system"]] = r
    results = [done[s] for s in systems]
    summ = report(out, results, kinds, time.perf_counter() - t0)
    print(json.dumps(summ, indent=1))
    return summ
