"""Section long: T = 16384, d = 8 in a fresh process: time and peak resident memory (default budget).

``long_worker`` is the fresh process's side (``perf.py --long-worker``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import torch
from perf_common import SCRIPT, periodic, sync

import ckd


def section_long(cfg) -> dict:
    """T = 16384 in fresh processes (peak resident memory is per process)."""
    out = {"T": cfg.long_len, "d": 8, "B": 1, "runs": []}
    for kernel, depth in (("exp", 16), ("softmax", 16), ("gaussian", "inf")):
        cmd = [sys.executable, str(SCRIPT), "--threads", str(torch.get_num_threads()),
               "--long-worker", kernel, str(depth), str(cfg.long_len), cfg.device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out["runs"].append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def long_worker(kernel: str, depth: str, T: int, device: str) -> None:
    import resource

    warnings.simplefilter("ignore")
    x = periodic(1, T, 8, device)
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    p = ckd.predict(x, kernel, depth=depth)
    sync(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    err = ckd.next_token_error(p, x)[0, -1000:]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    gpu = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    print(json.dumps({"kernel": kernel, "depth": depth, "time_s": elapsed, "cpu_s": cpu, "peak_rss_gib": peak,
                      "peak_gpu_gib": gpu, "median_err_last_1000": float(err.median()),
                      "finite": bool(torch.isfinite(p).all())}))
