"""krr, parrot and krr-or-parrot on the chaos-forecast benchmark's cached cases (issue 18).

    python benchmarks/krr_or_parrot.py --ics 3 --systems Aizawa ArnoldWeb ...   # names, or
    python benchmarks/krr_or_parrot.py --ics 3 --systems $(cat sel.txt) --json out.json
    python benchmarks/krr_or_parrot.py --ics 20 --all --json part.json     # the full benchmark's cases
    python benchmarks/krr_or_parrot.py --read part1.json part2.json         # the tables of finished runs
    python benchmarks/krr_or_parrot.py --read p0.json p1.json --against NVAR_RUN_DIR --csv per-system.csv
                                            # the default against another run of the benchmark, per system
    python benchmarks/krr_or_parrot.py --all --univariate --first-ic 3 --ics 17 --labels parrot krr-or-parrot \
        --json more.json                                                     # extend a run by more cases

Runs only the three rollouts on each (system, initial condition) of ``ckd reproduce chaos-forecast``'s
protocol (context 512, horizon 300, 30 points per Lyapunov time; the data cached by a previous run under
``ckd.experiments.chaos_forecast.data.cache_dir()``; a case not cached is integrated, as the benchmark
does): krr full state, parroting (per coordinate, window 5) and krr-or-parrot full state
(``ckd.choice``), one thread, as the benchmark's workers; with ``--univariate`` krr and krr-or-parrot
per coordinate (delay embedding 5, the choice per coordinate). Prints, as the benchmark's tables do, the
median over systems of the per-system median VPT, the mean, wins / ties / losses against parrot and the
seconds of each method; then how often krr-or-parrot chose parrot and how often its VPT was the larger
of krr's and parrot's (the truth is read only here, to score). "best of both" is the VPT of the better
of krr and parrot per case: what a perfect choice (full state) would reach.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import time
import warnings

import numpy as np
import torch

from ckd.experiments.chaos_forecast.data import PROTOCOL, SystemData
from ckd.forecast import forecast_details
from ckd.metrics import vpt

RUNS = (("krr", "krr", False), ("parrot", "parrot", True), ("krr-or-parrot", "krr-or-parrot", False))
EMBED = 5


def runs(univariate: bool) -> tuple:
    """``RUNS``, with krr and krr-or-parrot univariate (delay embedding 5, choice per coordinate) if asked."""
    return tuple((lab, m, uni or univariate) for lab, m, uni in RUNS)


def run_case(x: np.ndarray, univariate: bool = False, labels: tuple = tuple(lab for lab, _, _ in RUNS)) -> dict:
    """VPT, seconds and (krr-or-parrot) the choice of the rollouts ``labels`` of one trajectory."""
    T, H = PROTOCOL["context"], PROTOCOL["horizon"]
    ctx = torch.tensor(x[None, :T], dtype=torch.float64)
    truth = x[None, T:T + H]
    out: dict = {"vpt": {}, "seconds": {}}
    for label, method, uni in runs(univariate):
        if label not in labels:
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = forecast_details(ctx, method, horizon=H, univariate=uni, embed=EMBED)
        out["seconds"][label] = time.perf_counter() - t0
        out["vpt"][label] = float(vpt(truth, r.pred.numpy(), pts_per_lyapunov=PROTOCOL["pts_per_period"])[0])
        if method == "krr-or-parrot":
            per = r.settings[0] if univariate else [r.settings[0]]
            out["choice"] = {"chosen": "parrot" if all(s["chosen"] == "parrot" for s in per) else
                             "krr" if all(s["chosen"] == "krr" for s in per) else "mixed"}
    return out


def system_medians(results: dict) -> dict[str, dict[str, float]]:
    """{system: {method: median VPT over its cases that ran the method (nan: none)}} for ``RUNS``' methods."""
    return {name: {lab: float(np.median([c["vpt"][lab] for c in cases if lab in c["vpt"]] or [math.nan]))
                   for lab, _, _ in RUNS} for name, cases in results.items() if isinstance(cases, list)}


def summary(results: dict) -> list[str]:
    """The tables. A case may lack a method (a run extended by ``--labels``): each method's medians are
    over the cases that have it, "best of both" and the choice counts over the cases that have all three."""
    excluded = {name: r["excluded"] for name, r in results.items() if isinstance(r, dict)}
    results = {name: r for name, r in results.items() if not isinstance(r, dict)}
    labels = [lab for lab, _, _ in RUNS] + ["best of both"]
    full = {name: [c for c in cases if all(lab in c["vpt"] for lab in labels[:-1])] for name, cases in results.items()}
    per = system_medians(results)  # system -> label -> median VPT over its cases
    for name, p in per.items():
        both = [max(c["vpt"]["krr"], c["vpt"]["parrot"]) for c in full[name]]
        p["best of both"] = float(np.median(both)) if both else math.nan
    counts = {lab: sum(lab in c["vpt"] for cs in results.values() for c in cs) for lab in labels[:-1]}
    counts["best of both"] = sum(len(cs) for cs in full.values())
    lines = [f"{len(per)} systems, {sum(len(c) for c in results.values())} cases"
             + "".join(f"; {name} excluded ({why})" for name, why in excluded.items()), "",
             "| method | cases | median VPT | mean VPT | wins / ties / losses vs parrot | seconds |",
             "|---|---|---|---|---|---|"]
    for lab in labels:
        have = [p for p in per.values() if not math.isnan(p[lab])]
        if not have:
            continue
        v = np.array([p[lab] for p in have])
        ref = np.array([p["parrot"] for p in have])
        secs = sum(c["seconds"].get(lab, 0.0) for cases in results.values() for c in cases)
        wtl = "—" if lab == "parrot" else f"{(v > ref).sum()} / {(v == ref).sum()} / {(v < ref).sum()}"
        shown = "—" if lab == "best of both" else f"{secs:.0f}"
        lines.append(f"| {lab} | {counts[lab]} | {np.median(v):.3g} | {v.mean():.3g} | {wtl} | {shown} |")
    cases = [c for cs in results.values() for c in cs if "choice" in c]
    both = [c for cs in full.values() for c in cs]
    chose_p = sum(c["choice"]["chosen"] == "parrot" for c in cases)
    mixed = sum(c["choice"]["chosen"] == "mixed" for c in cases)
    right = sum(c["vpt"]["krr-or-parrot"] == max(c["vpt"]["krr"], c["vpt"]["parrot"]) for c in both)
    lines += ["", f"krr-or-parrot chose parrot on {chose_p} of {len(cases)} cases (some coordinates on {mixed}); "
              f"its VPT was the larger of krr's and parrot's on {right} of the {len(both)} cases with both", "",
              "| system | krr | parrot | krr-or-parrot | chosen (per case) |", "|---|---|---|---|---|"]
    for name, p in per.items():
        ch = " ".join(c["choice"]["chosen"] for c in results[name] if "choice" in c)
        lines.append(f"| {name} | {p['krr']:.3g} | {p['parrot']:.3g} | {p['krr-or-parrot']:.3g} | {ch} |")
    return lines


def write_csv(path: str, results: dict, theirs: dict) -> None:
    """Per-system medians (system, cases, our three methods, the other runs' methods) and the cases where
    krr-or-parrot chose parroting."""
    ours = [lab for lab, _, _ in RUNS]
    others = sorted({lab for per in theirs.values() for lab in per})
    rows = [",".join(["system", "cases", *ours, *others, "parrot_chosen_cases"])]
    for name, per in system_medians(results).items():
        cases = results[name]
        med = [per[lab] for lab in ours] + [theirs.get(name, {}).get(lab, math.nan) for lab in others]
        chosen = sum(c.get("choice", {}).get("chosen") == "parrot" for c in cases)
        rows.append(",".join([name, str(len(cases)), *(f"{v:.4g}" for v in med), str(chosen)]))
    pathlib.Path(path).write_text("\n".join(rows) + "\n")


def against(results: dict, run_dirs: list[str]) -> tuple[list[str], dict]:
    """krr and krr-or-parrot against every method of the benchmark's own runs (``chaos_forecast run --out
    DIR``: ``DIR/systems/NAME.json``), per system (median over each side's cases, unrounded): ahead / level /
    behind, and the method's median over the systems both have. Returns the lines and {system: {method: median}}."""
    ours = ("krr", "krr-or-parrot")
    mine = system_medians(results)
    theirs: dict = {}
    for run_dir in run_dirs:
        for path in sorted(pathlib.Path(run_dir, "systems").glob("*.json")):
            r = json.loads(path.read_text())["result"]
            for label, v in r.get("vpt", {}).items():
                if label != "parrot" and v:
                    theirs.setdefault(r["system"], {})[label] = float(np.median(v))
    lines = ["| method | systems | its median VPT | " + " | ".join(f"{lab} ahead / level / behind" for lab in ours)
             + " |", "|---|---|---|" + "---|" * len(ours)]
    for label in sorted({lab for per in theirs.values() for lab in per}):
        both = [n for n in mine if label in theirs.get(n, {})]
        b = np.array([theirs[n][label] for n in both])
        cells = []
        for lab in ours:
            a = np.array([mine[n][lab] for n in both])
            cells.append(f"{(a > b).sum()} / {(a == b).sum()} / {(a < b).sum()}")
        lines.append(f"| {label} | {len(both)} | {np.median(b):.3g} | " + " | ".join(cells) + " |")
    return lines, theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--systems", nargs="+")
    which.add_argument("--all", action="store_true", help="every system of the benchmark (all_systems())")
    which.add_argument("--read", nargs="+", metavar="JSON", help="only print the tables of these result files")
    ap.add_argument("--part", default="0/1", help="K/N: run only the systems i with i %% N == K (split a run)")
    ap.add_argument("--ics", type=int, default=3, help="initial conditions per system (default 3)")
    ap.add_argument("--first-ic", type=int, default=0, help="start at this initial condition (extend a run)")
    ap.add_argument("--labels", nargs="+", choices=[lab for lab, _, _ in RUNS], default=[lab for lab, _, _ in RUNS],
                    help="run only these methods (default all three)")
    ap.add_argument("--json", default=None,
                    help="per-case results, written after each system; systems already in it are skipped (resume)")
    ap.add_argument("--univariate", action="store_true", help="krr and krr-or-parrot per coordinate (embed 5)")
    ap.add_argument("--against", nargs="+", metavar="DIR", default=[],
                    help="with --read: krr and krr-or-parrot per system against the methods of these benchmark runs")
    ap.add_argument("--csv", default=None, help="with --read: per-system medians of every method to this file")
    args = ap.parse_args()
    if args.read:
        results: dict = {}
        for path in args.read:  # the cases of one system in several files (an extended run) are joined
            with open(path) as fh:
                for name, r in json.load(fh).items():
                    old = results.get(name)
                    results[name] = old + r if isinstance(old, list) and isinstance(r, list) else r
        print("\n".join(summary(results)))
        lines, theirs = against(results, args.against)
        if args.against:
            print("\n" + "\n".join(lines))
        if args.csv:
            write_csv(args.csv, results, theirs)
        return
    torch.set_num_threads(1)
    if args.all:
        from ckd.experiments.chaos_forecast.data import all_systems
        args.systems = all_systems()
    k, n = (int(v) for v in args.part.split("/"))
    results: dict = {}
    if args.json and os.path.exists(args.json):
        with open(args.json) as fh:
            results = json.load(fh)
    t0 = time.perf_counter()
    for name in args.systems[k::n]:
        if name in results:
            continue
        data = SystemData(name)
        try:
            cases = [run_case(x, args.univariate, tuple(args.labels))
                     for i in range(args.first_ic, args.first_ic + args.ics) if (x := data.trajectory(i)) is not None]
        except Exception as err:  # as the benchmark (scoring.merge_parts): a system whose run raised is excluded
            results[name] = {"excluded": f"{type(err).__name__}: {err}"}
            cases = []
        if cases:
            results[name] = cases
        if args.json:  # after each system, atomically: an interrupted run resumes here
            with open(args.json + ".tmp", "w") as fh:
                json.dump(results, fh, indent=1)
            os.replace(args.json + ".tmp", args.json)
        print(f"{name}: {len(cases)} cases, {time.perf_counter() - t0:.0f} s", flush=True)
    print("\n".join(summary(results)))
    print(f"\nwall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
