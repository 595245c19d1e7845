"""Section batch: time vs B (linear)."""

from __future__ import annotations

from perf_common import data, interleaved, slope

from ckd.descent import descend


def section_batch(cfg) -> dict:
    out = {"T": cfg.T, "depth": 16, "kernel": "exp", "batch": [], "time": []}
    for B in cfg.batches:
        x = data(B, cfg.T, 8, cfg.device)
        res = interleaved({"p": lambda: descend(x, "exp", depth=16)}, max(3, cfg.reps // 3), cfg.device)
        out["batch"].append(B)
        out["time"].append(res["p"]["median"])
    out["slope"] = slope(out["batch"][2:], out["time"][2:])
    return out
