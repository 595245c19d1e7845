"""Shared helpers of the benchmark suite (``benchmarks/perf.py``): where results go, the clock,
interleaved timing, timing data, and the statistics the sections report."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

import ckd

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "figures" / "performance"
SCRIPT = Path(__file__).resolve().parent / "perf.py"  # the entry point, run again by the fresh-process sections


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CLOCK = {"clock": "cpu"}  # which clock "median" and "min" report (set from --clock in main)


def interleaved(fns: dict, reps: int, device: str = "cpu", warmup: int = 1) -> dict:
    """Time each callable ``reps`` times, round-robin. Returns {name: {"median", "min" (seconds, on
    the chosen clock), "wall_median", "cpu_median"}}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            w, c = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    chosen = cpu if CLOCK["clock"] == "cpu" else wall
    return {name: {"median": statistics.median(chosen[name]), "min": min(chosen[name]),
                   "wall_median": statistics.median(wall[name]), "cpu_median": statistics.median(cpu[name])}
            for name in fns}


def data(B: int, T: int, d: int, device: str, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """Timing data: Gaussian tokens N(0, I/d) (the cost does not depend on the values; these keep
    finite-depth residuals finite at every size benchmarked)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, d, generator=g, dtype=torch.float64) / math.sqrt(d)).to(device=device, dtype=dtype)


def periodic(B: int, T: int, d: int, device: str, seed: int = 0) -> torch.Tensor:
    """Periodic sequences on the sphere (SPEC §5), where depth inf is exact after a period."""
    return ckd.make_task("periodic", B, T, d, seed=seed).x.to(device=device)


def medians(res: dict) -> dict:
    """A section's row: a copy of ``interleaved``'s result, to which it adds its ratios."""
    return dict(res)


def slope(xs, ys) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| over the whole array (b the reference; both taken in float64)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(torch.float64).tiny))
