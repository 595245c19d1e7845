"""Section linear_memory: peak memory and time of one linear-kernel call at T = 2^20 (fresh processes).

``lt_worker`` is the fresh process's side (``perf.py --lt-worker``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from perf_common import SCRIPT, data, sync

from ckd.descent import descend


def section_linear_memory(cfg) -> dict:
    """Issue 11: one linear-kernel call at T = max(lt_lengths), B = 1, d = 8, each in a fresh process:
    time and the process's peak resident memory (VmHWM, which a fresh process starts afresh)."""
    runs = []
    for depth in ("inf", "16"):
        cmd = [sys.executable, str(SCRIPT), "--threads", str(torch.get_num_threads()),
               "--lt-worker", depth, str(cfg.lt_lengths[-1]), cfg.device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return {"runs": runs}


def _proc_status_gib(field: str) -> float:
    """A memory field of /proc/self/status (Linux; VmHWM = peak resident, VmRSS = now) in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return math.nan


def lt_worker(depth: str, T: int, device: str) -> None:
    """One linear-kernel call at length T in a fresh process: wall and CPU time, peak memory, and the
    peak of an empty process (the torch import) for reference."""
    warnings.simplefilter("ignore")
    x = data(1, T, 8, device)
    base = _proc_status_gib("VmRSS")  # torch imported, x made
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    p = descend(x, "linear", depth=depth)
    sync(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _proc_status_gib("VmHWM")  # ru_maxrss would carry the parent's peak across fork + exec
    gpu = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    print(json.dumps({"depth": depth, "T": T, "time_s": elapsed, "cpu_s": cpu, "peak_rss_gib": peak,
                      "rss_before_gib": base, "x_gib": x.numel() * 8 / 2**30, "peak_gpu_gib": gpu,
                      "finite": bool(torch.isfinite(p).all())}))
