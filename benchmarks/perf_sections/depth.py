"""Section depth: time vs N (linear)."""

from __future__ import annotations

from perf_common import data, interleaved, slope

from ckd.descent import descend


def section_depth(cfg) -> dict:
    x = data(cfg.B, cfg.T, 8, cfg.device)
    out = {"B": cfg.B, "T": cfg.T, "kernel": "exp", "depth": [], "time": []}
    for N in cfg.depths:
        res = interleaved({"p": lambda n=N: descend(x, "exp", depth=n)}, max(3, cfg.reps // 3), cfg.device)
        out["depth"].append(N)
        out["time"].append(res["p"]["median"])
    out["slope"] = slope(out["depth"][2:], out["time"][2:])
    return out
