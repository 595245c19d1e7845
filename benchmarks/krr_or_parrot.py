"""krr, parrot and krr-or-parrot on the chaos-forecast benchmark's cached cases (issue 18).

    python benchmarks/krr_or_parrot.py --ics 3 --systems Aizawa ArnoldWeb ...   # names, or
    python benchmarks/krr_or_parrot.py --ics 3 --systems $(cat sel.txt) --json out.json
    python benchmarks/krr_or_parrot.py --ics 20 --all --json part.json     # the full benchmark's cases
    python benchmarks/krr_or_parrot.py --read part1.json part2.json         # the tables of finished runs

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
import os
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


def run_case(x: np.ndarray, univariate: bool = False) -> dict:
    """VPT, seconds and (krr-or-parrot) the choice and scores of the three rollouts of one trajectory."""
    T, H = PROTOCOL["context"], PROTOCOL["horizon"]
    ctx = torch.tensor(x[None, :T], dtype=torch.float64)
    truth = x[None, T:T + H]
    out: dict = {"vpt": {}, "seconds": {}}
    for label, method, uni in runs(univariate):
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


def summary(results: dict) -> list[str]:
    excluded = {name: r["excluded"] for name, r in results.items() if isinstance(r, dict)}
    results = {name: r for name, r in results.items() if not isinstance(r, dict)}
    labels = [lab for lab, _, _ in RUNS] + ["best of both"]
    per = {}  # system -> label -> median VPT over its cases
    for name, cases in results.items():
        v = {lab: [c["vpt"][lab] for c in cases] for lab in labels[:-1]}
        v["best of both"] = [max(c["vpt"]["krr"], c["vpt"]["parrot"]) for c in cases]
        per[name] = {lab: float(np.median(vals)) for lab, vals in v.items()}
    lines = [f"{len(per)} systems, {sum(len(c) for c in results.values())} cases"
             + "".join(f"; {name} excluded ({why})" for name, why in excluded.items()), "",
             "| method | median VPT | mean VPT | wins / ties / losses vs parrot | seconds |", "|---|---|---|---|---|"]
    for lab in labels:
        v = np.array([p[lab] for p in per.values()])
        ref = np.array([p["parrot"] for p in per.values()])
        secs = sum(c["seconds"].get(lab, 0.0) for cases in results.values() for c in cases)
        wtl = "—" if lab == "parrot" else f"{(v > ref).sum()} / {(v == ref).sum()} / {(v < ref).sum()}"
        shown = "—" if lab == "best of both" else f"{secs:.0f}"
        lines.append(f"| {lab} | {np.median(v):.3g} | {v.mean():.3g} | {wtl} | {shown} |")
    cases = [c for cs in results.values() for c in cs]
    chose_p = sum(c["choice"]["chosen"] == "parrot" for c in cases)
    mixed = sum(c["choice"]["chosen"] == "mixed" for c in cases)
    right = sum(c["vpt"]["krr-or-parrot"] == max(c["vpt"]["krr"], c["vpt"]["parrot"]) for c in cases)
    lines += ["", f"krr-or-parrot chose parrot on {chose_p} of {len(cases)} cases (some coordinates on {mixed}); "
              f"its VPT was the larger of krr's and parrot's on {right} of {len(cases)}", "",
              "| system | krr | parrot | krr-or-parrot | chosen (per case) |", "|---|---|---|---|---|"]
    for name, p in per.items():
        ch = " ".join(c["choice"]["chosen"] for c in results[name])
        lines.append(f"| {name} | {p['krr']:.3g} | {p['parrot']:.3g} | {p['krr-or-parrot']:.3g} | {ch} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--systems", nargs="+")
    which.add_argument("--all", action="store_true", help="every system of the benchmark (all_systems())")
    which.add_argument("--read", nargs="+", metavar="JSON", help="only print the tables of these result files")
    ap.add_argument("--part", default="0/1", help="K/N: run only the systems i with i %% N == K (split a run)")
    ap.add_argument("--ics", type=int, default=3)
    ap.add_argument("--json", default=None,
                    help="per-case results, written after each system; systems already in it are skipped (resume)")
    ap.add_argument("--univariate", action="store_true", help="krr and krr-or-parrot per coordinate (embed 5)")
    args = ap.parse_args()
    if args.read:
        results = {}
        for path in args.read:
            with open(path) as fh:
                results.update(json.load(fh))
        print("\n".join(summary(results)))
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
            cases = [run_case(x, args.univariate) for i in range(args.ics) if (x := data.trajectory(i)) is not None]
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
