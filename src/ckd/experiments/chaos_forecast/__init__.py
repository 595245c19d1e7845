"""``ckd reproduce chaos-forecast``: multi-step forecasting of every continuous dysts system (SPEC §8).

Protocol (Zhang & Gilpin, ICLR 2025, arXiv 2409.15771; *Context parroting*, arXiv 2505.11349):
the continuous systems of ``dysts.systems.get_attractor_list()`` (135 in dysts 0.96); per system,
20 initial conditions drawn with ``np.random.seed(0); np.random.choice(1000, 20, replace=False)``
from a 1000-point trajectory made with ``pts_per_period=10``; from each,
``make_trajectory(812, timescale="Lyapunov", pts_per_period=30)``; context = the first 512
points, test = the last 300 (10 Lyapunov times of 30 points). No standardisation.

Integrator: the papers use Radau at rtol = atol = 1e-12 (20-40 s per trajectory here without
numba); we use ``INTEGRATOR`` (LSODA, rtol = atol = 1e-10), recorded in every output. The six
delay equations are integrated by dysts' own ``ddeint`` (scipy's odeint at its default
tolerances), which ignores the method and tolerances, in the papers' runs too. The
1000-point trajectory the initial conditions are drawn from is integrated without dysts'
post-processing (``postprocess=False``: a few systems map an unbounded variable to a bounded
one after integration; an initial condition must be a state of the raw equations); the 812-point
trajectories are post-processed as dysts does by default.

Metrics (``ckd.metrics``): sMAPE on the 0-200 scale, rolling sMAPE over steps 1..h, VPT = the
first h with rolling sMAPE > 30, in Lyapunov times (h / 30; 10 when never). Per system: the
median over its initial conditions; overall: the median over systems, and on how many systems a
method beats context parroting (strictly larger VPT).

Attractor test: from initial condition 0 of each system, a long trajectory of 512 + ``LONG``
points; each method rolls out ``LONG`` steps after the 512-point context; we compare the state
distribution of the rollout with the truth's by the k-NN estimate of KL(truth || rollout)
(``knn_kl``) and the correlation dimension (``dysts.analysis.gp_dim``) of each.

Data are cached (``cache_dir``): one folder per system holding plain ``.npy`` files and a
``meta.json``, plus an ``index.json``; generate them ahead with
``python -m ckd.experiments.chaos_forecast generate [--workers N]``. Worker processes over
systems: the environment variable ``CKD_WORKERS`` (default: every CPU) for ``ckd reproduce``, or
``python -m ckd.experiments.chaos_forecast run --workers N [--systems ...] [--ics N] [--out DIR]
[--executor local|ray|ray://ADDRESS]`` (``executors``: Ray runs one task per system and initial
condition). Each system's result is written to ``DIR/systems/NAME.json`` as it finishes, and a
rerun with the same settings resumes from those files.

Layout: ``data`` (protocol, integration, cache, checksums), ``executors`` (local pool or Ray, the
per-system result files), ``depth`` (the layer-bounded study), ``scoring`` (the runs, VPT and sMAPE,
the attractor test, the summary over systems), ``reporting`` (JSON, CSV, tables, figures); here
``run`` and ``main`` over worker processes, and every public name of the submodules.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

from .data import (
    INTEGRATOR,
    LONG,
    PROTOCOL,
    TIMEOUT,
    VERSION,
    IntegrationTimeout,
    SystemData,
    all_systems,
    atomic_save,
    cache_dir,
    check_trajectory,
    dysts_version,
    generate,
    ic_indices,
    protocol_key,
    write_index,
)
from .reporting import COLORS, figures, goals, report, tables
from .scoring import (
    EMBED,
    EXAMPLE_RUNS,
    EXAMPLES,
    GP_POINTS,
    HORIZONS,
    KNN_K,
    LONG_RUNS,
    REFERENCE,
    RUNS,
    corr_dim,
    knn_kl,
    run_system,
    setting,
    summarise,
)

__all__ = [
    "COLORS", "EMBED", "EXAMPLES", "EXAMPLE_RUNS", "GP_POINTS", "HORIZONS", "INTEGRATOR", "KNN_K", "LONG",
    "LONG_RUNS", "PROTOCOL", "QUICK", "REFERENCE", "RUNS", "TIMEOUT", "VERSION", "IntegrationTimeout", "SystemData",
    "all_systems", "atomic_save", "cache_dir", "check_trajectory", "corr_dim", "dysts_version", "figures", "generate",
    "goals", "ic_indices", "knn_kl", "main", "protocol_key", "report", "run", "run_system", "setting", "summarise",
    "tables", "workers", "write_index",
]

# the quick configuration; it lives with ``run``, which reads it
QUICK = {"systems": ("Lorenz", "Rossler"), "n_ics": 1, "horizon": 60, "long": 200}
# the default size of ``ckd reproduce`` (minutes, not an hour): every 34th flow in dysts' alphabetical
# order, delay equations left out (their integrator is slow) -- 4 of 135, not chosen by their scores --,
# 3 initial conditions each, the protocol's horizon. 12 systems took over 7 min each to integrate on a
# loaded 2-core machine, so 4 is the budget.
DEFAULT = {"every": 34, "n_ics": 3, "long": 2000}


def workers() -> int:
    """Worker processes over systems: ``$CKD_WORKERS`` (default: the CPUs this process may use,
    so that the full benchmark uses the whole machine; each worker runs torch on one thread)."""
    default = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(os.environ.get("CKD_WORKERS", str(default)))
    except ValueError:
        raise ValueError(f"CKD_WORKERS must be an integer, got {os.environ['CKD_WORKERS']!r}") from None
    if n < 1:
        raise ValueError(f"CKD_WORKERS must be >= 1, got {n}")
    return n


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu",
        systems: list[str] | None = None, n_workers: int | None = None, n_ics: int | None = None,
        executor: str = "local") -> dict:
    """The benchmark (package doc) on ``systems`` (default: all for ``size="full"``, ``DEFAULT``'s
    subset for "default", ``QUICK``'s for "quick") with ``n_workers`` processes (default
    ``workers()``; 1 when quick) or on Ray (``executor`` "ray" or "ray://ADDRESS", ``executors``),
    on the first ``n_ics`` initial conditions of each (default: all 20; ``DEFAULT``'s or ``QUICK``'s
    for those sizes). Each system's result is saved to ``out/systems/NAME.json`` as it finishes; a
    rerun with the same settings reuses those files (resumes). ``seed`` has no effect: the protocol
    fixes its own."""
    from .. import progress
    from .executors import check_executor, execute, load_results, result_key, save_result

    executor = check_executor(executor)
    quick = size == "quick"
    if quick:
        names, n_ics_default, horizon, long_steps = QUICK["systems"], QUICK["n_ics"], QUICK["horizon"], QUICK["long"]
    elif size == "default":
        flows = [s for s in all_systems() if "Delay" not in s]
        names, n_ics_default = flows[::DEFAULT["every"]], DEFAULT["n_ics"]
        horizon, long_steps = PROTOCOL["horizon"], DEFAULT["long"]
    else:
        names, n_ics_default, horizon, long_steps = all_systems(), PROTOCOL["n_ics"], PROTOCOL["horizon"], LONG
    names = list(systems or names)
    n_workers = n_workers or (1 if quick else workers())
    n_ics = n_ics or n_ics_default
    key = result_key(n_ics, horizon, long_steps)
    done = load_results(out, names, key)
    todo = [s for s in names if s not in done]
    if done:
        print(f"chaos-forecast: {len(done)} of {len(names)} systems read from {out / 'systems'} (resumed)",
              file=sys.stderr)
    start = time.perf_counter()
    for r in progress(execute(todo, n_ics, horizon, long_steps, device, n_workers, executor),
                      "chaos-forecast systems", total=len(todo), quick=quick):
        save_result(out, r, key)
        done[r["system"]] = r
    seconds = time.perf_counter() - start
    if size == "full":
        write_index()
    return report(out, [done[s] for s in names], seconds, quick=quick, device=device, n_workers=n_workers,
                  n_ics=n_ics, horizon=horizon, long_steps=long_steps)


def _generate_one(args) -> tuple[str, float]:
    name, n_ics, long_steps = args
    t0 = time.perf_counter()
    generate(name, n_ics, long_steps)
    return name, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """``python -m ckd.experiments.chaos_forecast generate|run``: fill the cache ahead of a run, or
    run the benchmark (optionally on some systems) with worker processes."""
    p = argparse.ArgumentParser(prog="python -m ckd.experiments.chaos_forecast",
                                description="The chaos-forecast benchmark: generate its data, run it, or run the "
                                            "depth study (VPT vs layers, ckd.experiments.chaos_forecast.depth).")
    p.add_argument("action", choices=["generate", "run", "depth"])
    p.add_argument("--iterations", nargs="*", default=None, help="depth: the iterations to study (default all)")
    p.add_argument("--executor", default="local", metavar="local|ray|ray://ADDRESS",
                   help="run: where the tasks run (default local: --workers processes; ray: one Ray task per "
                        "system and initial condition, pip install 'ckd[ray]')")
    p.add_argument("--workers", type=int, default=None, help="worker processes over systems "
                   "(default: $CKD_WORKERS or 1)")
    p.add_argument("--systems", nargs="*", help="default: all continuous dysts systems")
    p.add_argument("--long", type=int, default=LONG, help=f"generate: long-trajectory steps (default {LONG}; 0: none)")
    p.add_argument("--out", default="ckd-results", help="run: output folder (default ckd-results/)")
    p.add_argument("--quick", action="store_true", help="run: the quick configuration")
    p.add_argument("--ics", type=int, default=None, help="the first N initial conditions of each system "
                   f"(default all {PROTOCOL['n_ics']}; fewer for a documented subset)")
    args = p.parse_args(argv)
    n_workers = workers() if args.workers is None else args.workers
    if n_workers < 1:
        p.error(f"--workers must be >= 1, got {n_workers}")
    if args.ics is not None and not 1 <= args.ics <= PROTOCOL["n_ics"]:
        p.error(f"--ics must be in 1 .. {PROTOCOL['n_ics']}, got {args.ics}")
    names = args.systems or all_systems()
    print(f"cache: {cache_dir()}", file=sys.stderr)
    t0 = time.perf_counter()
    if args.action == "depth":
        from .depth import run_depth

        out = pathlib.Path(args.out)
        run_depth(out, names, args.ics or PROTOCOL["n_ics"], n_workers, args.iterations)
        print(f"done in {time.perf_counter() - t0:.0f} s; results in {out}/", file=sys.stderr)
        return 0
    if args.action == "run":
        out = pathlib.Path(args.out)
        try:
            head = run(out, size="quick" if args.quick else "full", seed=0, device="cpu", systems=args.systems,
                       n_workers=n_workers, n_ics=args.ics, executor=args.executor)
        except ValueError as err:  # a bad --executor, or Ray missing: one line
            p.error(str(err))
        print(json.dumps(head, indent=1))
        print(f"done in {time.perf_counter() - t0:.0f} s; results in {out}/", file=sys.stderr)
        return 0
    jobs = [(s, args.ics or PROTOCOL["n_ics"], args.long) for s in names]
    from tqdm.auto import tqdm

    if n_workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(n_workers) as pool:
            done = list(tqdm(pool.imap_unordered(_generate_one, jobs), total=len(jobs), desc="systems"))
    else:
        done = [_generate_one(j) for j in tqdm(jobs, desc="systems")]
    index = write_index()
    failed = {s: {k: v["reason"] for k, v in p.items() if v["status"] != "ok"}
              for s, p in index["systems"].items()}
    failed = {s: f for s, f in failed.items() if f}
    print(f"{len(done)} systems in {time.perf_counter() - t0:.0f} s; {len(failed)} with failed pieces: "
          f"{json.dumps(failed)}", file=sys.stderr)
    return 0
