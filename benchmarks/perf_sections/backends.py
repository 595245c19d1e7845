"""Section backends: transformer vs descent backend, same depth, every kernel (+ a profile of the transformer)."""

from __future__ import annotations

import math

import torch
from perf_common import data, interleaved, medians

import ckd
from ckd.kernels import KERNELS, causal_matrices
from ckd.transformer import attend


def section_backends(cfg) -> dict:
    B, T, d, N = cfg.B, cfg.T, 8, 16
    x = data(B, T, d, cfg.device)
    out = {"B": B, "T": T, "d": d, "depth": N, "kernels": {}}
    for kernel in KERNELS:
        res = interleaved({
            "descent": lambda k=kernel: ckd.predict(x, k, depth=N),
            "transformer": lambda k=kernel: ckd.predict(x, k, depth=N, backend="transformer"),
        }, max(3, cfg.reps // 3), cfg.device)
        row = medians(res)
        row["ratio_median"] = res["transformer"]["median"] / res["descent"]["median"]
        out["kernels"][kernel] = row
    out["one_layer"] = one_layer(x, cfg)
    if cfg.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cfg.device.startswith("cuda") else [])
        with profile(activities=acts) as prof:
            ckd.predict(x, "exp", depth=N, backend="transformer")
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        out["profile_exp"] = table
    return out


def one_layer(x: torch.Tensor, cfg) -> dict:
    """The work of one layer, exp kernel: the descent's two products P r, R r against the
    transformer's attention of its two heads (scores, exp, values: SDPA), and the exp of the
    B * 2 * T^2 / 2 causal scores alone, which any exact exp/softmax attention must evaluate."""
    B, T, d = x.shape
    mats = causal_matrices(x, "exp")
    q = torch.randn(B, 2, T, d, dtype=x.dtype, device=x.device) / math.sqrt(d)
    v = torch.randn(B, 2, T, d + 1, dtype=x.dtype, device=x.device)
    scores = torch.randn(B, 2, T * T // 2, dtype=x.dtype, device=x.device)
    res = interleaved({
        "descent layer (P r, R r)": lambda: (torch.baddbmm(x, mats.P, x), torch.baddbmm(x, mats.R, x)),
        "attention, 2 heads (SDPA)": lambda: attend(q, q, v, "exp"),
        "exp of the causal scores": lambda: torch.exp(scores),
    }, cfg.reps, cfg.device)
    return {name: v["median"] for name, v in res.items()}
