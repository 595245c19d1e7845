"""Section return_all: descend(return_all=True) vs descend (every layer's prediction, no extra products)."""

from __future__ import annotations

from perf_common import data, interleaved, medians

from ckd.descent import descend


def section_return_all(cfg) -> dict:
    x = data(cfg.B, cfg.T, 8, cfg.device)
    res = interleaved({
        "last": lambda: descend(x, "exp", depth=16),
        "return_all": lambda: descend(x, "exp", depth=16, return_all=True),
    }, cfg.reps, cfg.device)
    return {"B": cfg.B, "T": cfg.T, "depth": 16, **medians(res),
            "ratio_median": res["return_all"]["median"] / res["last"]["median"]}
