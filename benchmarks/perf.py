"""Performance benchmarks of ckd (issue 7): writes results.json, results.md and figures.

    python benchmarks/perf.py                     # full run (~10 min on 2 cores), writes docs/figures/performance/
    python benchmarks/perf.py --quick --out /tmp/perf   # small sizes, a smoke run (~20 s)
    python benchmarks/perf.py --device cuda       # the same on a GPU (CUDA timings synchronise)
    python benchmarks/perf.py --replot            # redraw results.md and figures from results.json
    python benchmarks/perf.py --under-load 2 --policy on off --out /tmp/load   # loaded / idle (perf_load.py)

Every comparison is measured in one process, the candidates interleaved round-robin (so load
from other processes hits both alike); we report the median (and the minimum) of the repeats.
Each sample records wall time and the process's CPU time (user + system, page faults included).
``--clock cpu`` (the default on CPU) reports CPU time: on a shared machine it does not count the
time slices other processes take, and with ``--threads 1`` it is the work done. ``--clock wall``
is the default on CUDA (CPU time there would miss the GPU's work).
Sections:

  floor       ckd.predict(backend="descent") vs its floor: causal_matrices (P, R once) + 2N bmm
  return_all  descend(return_all=True) vs descend: every layer's prediction, no extra products
  length      time vs T (quadratic: fitted log-log slope), whole and row-blocked paths
  depth       time vs N (linear)
  batch       time vs B (linear)
  streaming   ckd.Streaming per-push time vs t, and recomputing the prefix (predict, depth inf)
  backends    transformer vs descent backend, same depth, every kernel (+ a profile of the transformer)
  dtypes      float32 vs float64
  long        T = 16384, d = 8 in a fresh process: time and peak resident memory (default budget)
  linear_time the linear kernel's linear-time paths (issue 11): time vs T (512 .. 2^20, B = 1),
              dense / linear at T = 8192 (B = 16), ckd.Streaming("linear") push cost at t = 1e3, 1e4, 1e5
  linear_memory  peak memory and time of one call at T = 2^20 (fresh processes)
  features    random features vs the exact kernel: error and time vs D (exp, softmax, gaussian)

The linear-time sections write next to the others with their own --out, e.g.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/perf.py --threads 2 --only linear_time linear_memory features \
        --out docs/figures/performance/linear_time

The runner is this file (command line, configuration, results.json); the rest of the suite:

    perf_common.py    paths, the clock, interleaved timing, timing data, slope
    perf_sections/    one module per section (named as above); perf_sections.SECTIONS is the registry
    perf_report.py    results.md (markdown tables)
    perf_figures.py   the figures (*.png)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from perf_common import CLOCK, OUT, ROOT
from perf_figures import figures
from perf_load import PATHS, POLICIES, table, under_load
from perf_report import report
from perf_sections import SECTIONS
from perf_sections.linear_memory import lt_worker
from perf_sections.long import long_worker

import ckd


def machine(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "device": device,
            "loadavg_start": os.getloadavg()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="what the tables report (default: cpu on CPU, wall on CUDA)")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run these sections only")
    parser.add_argument("--replot", action="store_true", help="redraw results.md and the figures from results.json")
    parser.add_argument("--under-load", type=int, metavar="N", default=None,
                        help="time the main paths idle and with N busy processes (perf_load.py); writes load.json/.md")
    parser.add_argument("--policy", nargs="+", choices=POLICIES, default=["on"],
                        help="with --under-load: thread policies to compare (default on; off = before issue 17)")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=None, help="with --under-load: these only")
    parser.add_argument("--long-worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--lt-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replot:
        results = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(report(results))
        figures(results, args.out)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.under_load is not None:
        results = under_load(args.under_load, args.policy, args.quick, args.paths)
        results["command"] = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load.json").write_text(json.dumps(results, indent=1))
        (args.out / "load.md").write_text(table(results))
        print(table(results))
        return 0
    if args.lt_worker:
        depth, T, device = args.lt_worker
        lt_worker(depth, int(T), device)
        return 0
    if args.long_worker:
        kernel, depth, T, device = args.long_worker
        long_worker(kernel, depth, int(T), device)
        return 0
    CLOCK["clock"] = args.clock or ("wall" if args.device.startswith("cuda") else "cpu")
    cfg = argparse.Namespace(device=args.device, profile=True, clock=CLOCK["clock"])
    if args.quick:
        cfg.__dict__.update(B=4, T=128, reps=3, lengths=[64, 128, 256], depths=[1, 2, 4, 8],
                            batches=[1, 2, 4, 8], stream_len=300, long_len=2048,
                            lt_lengths=[512, 2048, 8192], lt_ratio=(2, 512), lt_ratio_reps=1, lt_stream=1300,
                            feat_B=2, feat_T=256, feat_period=8, feat_D=[16, 64])
    else:
        cfg.__dict__.update(B=16, T=512, reps=15, lengths=[128, 256, 512, 1024, 2048, 4096],
                            depths=[1, 2, 4, 8, 16, 32, 64], batches=[1, 2, 4, 8, 16, 32],
                            stream_len=4200, long_len=16384,
                            lt_lengths=[2**k for k in range(9, 21)], lt_ratio=(16, 8192), lt_ratio_reps=1,
                            lt_stream=100_300, feat_B=4, feat_T=2048, feat_period=16,
                            feat_D=[64, 256, 1024, 4096])
    warnings.simplefilter("ignore", ckd.StabilityWarning)  # long periodic prompts: transient growth is expected
    results = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
               "machine": machine(args.device), "config": {k: v for k, v in vars(cfg).items()}}
    for name in args.only or list(SECTIONS):
        start = time.perf_counter()
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        results[name] = SECTIONS[name](cfg)
        print(f"[{name}] {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "results.json"
    if args.only and previous.exists():  # --only: keep the other sections of an earlier run in this folder
        kept = json.loads(previous.read_text())
        results = {**{k: v for k, v in kept.items() if k in SECTIONS and k not in results}, **results}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(report(results))
    figures(results, args.out)
    print(report(results))
    return 0



if __name__ == "__main__":
    sys.exit(main())
