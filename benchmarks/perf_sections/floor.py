"""Section floor: ckd.predict(backend="descent") vs its floor, causal_matrices (P, R once) + 2N bmm."""

from __future__ import annotations

import torch
from perf_common import data, interleaved, medians

import ckd
from ckd.kernels import KERNELS, causal_matrices


def floor_fn(x: torch.Tensor, kernel: str, depth: int):
    """The floor of depth-N CKD: build P and R once, then 2N batched products (B, T, T) @ (B, T, d)."""
    def run():
        mats = causal_matrices(x, kernel)
        r = x
        for _ in range(depth):
            torch.bmm(mats.P, r)
            torch.bmm(mats.R, r)
    return run


def section_floor(cfg) -> dict:
    B, T, d, N = cfg.B, cfg.T, 8, 16
    x = data(B, T, d, cfg.device)
    out = {"B": B, "T": T, "d": d, "depth": N, "kernels": {}}
    for kernel in KERNELS:
        mats = causal_matrices(x, kernel)
        r = x.clone()
        res = interleaved({
            "floor": floor_fn(x, kernel, N),
            "predict": lambda k=kernel: ckd.predict(x, k, depth=N, method="dense"),  # the T x T path
            "build": lambda k=kernel: causal_matrices(x, k),
            "bmm": lambda m=mats: torch.bmm(m.P, r),
        }, cfg.reps, cfg.device)
        row = medians(res)
        row["ratio_median"] = res["predict"]["median"] / res["floor"]["median"]
        row["ratio_min"] = res["predict"]["min"] / res["floor"]["min"]
        out["kernels"][kernel] = row
    return out
