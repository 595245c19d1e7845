"""Section linear_time: the linear kernel's linear-time paths (issue 11): time vs T (512 .. 2^20, B = 1),
dense / linear at T = 8192 (B = 16), ckd.Streaming("linear") push cost at t = 1e3, 1e4, 1e5."""

from __future__ import annotations

import statistics
import sys
import time

from perf_common import CLOCK, data, interleaved, medians, slope, sync

import ckd
from ckd.descent import descend


def section_linear_time(cfg) -> dict:
    """Issue 11: the linear kernel in linear time (``ckd.linear_time``), d = 8, float64."""
    d = 8
    out = {"d": d, "lengths": {"B": 1, "T": [], "inf": [], "depth16": [], "inf_wall": [], "depth16_wall": []}}
    L = out["lengths"]
    for T in cfg.lt_lengths:
        x = data(1, T, d, cfg.device)
        res = interleaved({"inf": lambda: descend(x, "linear", depth="inf"),
                           "depth16": lambda: descend(x, "linear", depth=16)},
                          3 if T <= 2**16 else 1, cfg.device, warmup=1 if T <= 2**16 else 0)
        L["T"].append(T)
        for name in ("inf", "depth16"):
            L[name].append(res[name]["median"])
            L[name + "_wall"].append(res[name]["wall_median"])
        print(f"  T={T}: inf {res['inf']['wall_median']:.3f} s, depth16 {res['depth16']['wall_median']:.3f} s (wall)",
              file=sys.stderr, flush=True)
    for name in ("inf", "depth16", "inf_wall", "depth16_wall"):
        L["slope_" + name] = slope(L["T"], L[name])
    B, T = cfg.lt_ratio
    x = data(B, T, d, cfg.device)
    ratio = {"B": B, "T": T}
    for depth in ("inf", 16):
        res = interleaved({"linear": lambda dp=depth: descend(x, "linear", depth=dp),
                           "dense": lambda dp=depth: descend(x, "linear", depth=dp, method="dense")},
                          cfg.lt_ratio_reps, cfg.device, warmup=0)
        ratio[str(depth)] = {**medians(res), "ratio": res["dense"]["median"] / res["linear"]["median"],
                             "ratio_wall": res["dense"]["wall_median"] / res["linear"]["wall_median"]}
        print(f"  ratio depth {depth}: {ratio[str(depth)]['ratio']:.1f}", file=sys.stderr, flush=True)
    out["ratio"] = ratio
    out["streaming"] = streaming_linear(cfg.lt_stream, d, cfg.device)
    return out


def streaming_linear(T: int, d: int, device: str) -> dict:
    """Push cost of ckd.Streaming("linear") (d x d state) at t = 1e3, 1e4, 1e5: median of the pushes
    t - 200 .. t + 200 (each push timed alone, on the chosen clock)."""
    x = data(1, T, d, device)[0]
    s = ckd.Streaming("linear", dim=d, device=device)
    clock = time.process_time if CLOCK["clock"] == "cpu" else time.perf_counter
    wall = time.perf_counter
    push, push_wall = [], []
    for t in range(T):
        sync(device)
        c, w = clock(), wall()
        s.push(x[t])
        sync(device)
        push.append(clock() - c)
        push_wall.append(wall() - w)
    ts = [t for t in (1000, 10_000, 100_000) if t < T]
    row = {"t": ts, "push": [statistics.median(push[t - 200:t + 200]) for t in ts],
           "push_wall": [statistics.median(push_wall[t - 200:t + 200]) for t in ts]}
    row["ratio_last_first"] = row["push_wall"][-1] / row["push_wall"][0]
    return row
