"""Section dtypes: float32 vs float64."""

from __future__ import annotations

import torch
from perf_common import data, interleaved, medians

import ckd
from ckd.kernels import KERNELS


def section_dtypes(cfg) -> dict:
    x = data(cfg.B, cfg.T, 8, cfg.device)
    out = {"B": cfg.B, "T": cfg.T, "depth": 16, "kernels": {}}
    for kernel in KERNELS:
        x32 = x.float()
        res = interleaved({
            "float64": lambda k=kernel: ckd.predict(x, k, depth=16, method="dense"),
            "float32": lambda k=kernel: ckd.predict(x32, k, depth=16, dtype=torch.float32, method="dense"),
        }, max(3, cfg.reps // 3), cfg.device)
        row = medians(res)
        row["ratio_median"] = res["float64"]["median"] / res["float32"]["median"]
        out["kernels"][kernel] = row
    return out
