"""Section length: time vs T (quadratic: fitted log-log slope), whole and row-blocked paths."""

from __future__ import annotations

from perf_common import data, interleaved, slope

from ckd.descent import descend


def section_length(cfg) -> dict:
    B, N = 4, 16
    out = {"B": B, "depth": N, "kernel": "exp", "T": [], "whole": [], "blocked": [], "infinite": []}
    for T in cfg.lengths:
        x = data(B, T, 8, cfg.device)
        budget = 3 * B * T * 8 * max(1, T // 8)  # blocks of T / 8 rows
        res = interleaved({
            "whole": lambda: descend(x, "exp", depth=N),
            "blocked": lambda: descend(x, "exp", depth=N, memory_budget=budget),
            "infinite": lambda: descend(x, "exp", depth="inf"),
        }, max(3, cfg.reps // 3), cfg.device)
        out["T"].append(T)
        for name in ("whole", "blocked", "infinite"):
            out[name].append(res[name]["median"])
    big = [i for i, T in enumerate(out["T"]) if T >= 512] or list(range(len(out["T"])))
    for name in ("whole", "blocked", "infinite"):
        out[f"slope_{name}"] = slope([out["T"][i] for i in big], [out[name][i] for i in big])
    return out
