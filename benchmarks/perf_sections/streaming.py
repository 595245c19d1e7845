"""Section streaming: ckd.Streaming per-push time vs t, and recomputing the prefix (predict, depth inf)."""

from __future__ import annotations

import statistics
import time

from perf_common import CLOCK, data, interleaved, sync

import ckd
from ckd.kernels import KERNELS


def section_streaming(cfg) -> dict:
    d, T = 8, cfg.stream_len
    x = data(1, T, d, cfg.device)[0]
    out = {"d": d, "kernels": {}}
    checkpoints = [t for t in (64, 128, 256, 512, 1024, 2048, 4096) if t < T]
    for kernel in KERNELS:
        ridge = 1e-6 if kernel == "linear" else 0.0
        s = ckd.Streaming(kernel, dim=d, ridge=ridge, device=cfg.device)
        push = []
        clock = time.process_time if CLOCK["clock"] == "cpu" else time.perf_counter
        for t in range(T):
            sync(cfg.device)
            start = clock()
            s.push(x[t])
            sync(cfg.device)
            push.append(clock() - start)
        row = {"t": [], "push": [], "recompute": []}
        for t in checkpoints:
            window = push[max(1, t - 16):t + 16]
            rec = interleaved({"r": lambda t=t: ckd.predict(x[:t + 1], kernel, depth="inf", ridge=ridge)},
                              max(3, cfg.reps // 3), cfg.device)
            row["t"].append(t)
            row["push"].append(statistics.median(window))
            row["recompute"].append(rec["r"]["median"])
        row["ratio"] = [r / p for r, p in zip(row["recompute"], row["push"])]
        row["push_all"] = push[::max(1, T // 256)]
        out["kernels"][kernel] = row
    return out
