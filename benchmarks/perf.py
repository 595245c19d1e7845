"""Performance benchmarks of ckd (issue 7): writes results.json, results.md and figures.

    python benchmarks/perf.py                     # full run (~10 min on 2 cores), writes docs/figures/performance/
    python benchmarks/perf.py --quick --out /tmp/perf   # small sizes, a smoke run (~20 s)
    python benchmarks/perf.py --device cuda       # the same on a GPU (CUDA timings synchronise)
    python benchmarks/perf.py --replot            # redraw results.md and figures from results.json

Every comparison is measured in one process, the candidates interleaved round-robin (so load
from other processes hits both alike); we report the median (and the minimum) of the repeats.
Each sample records wall time and the process's CPU time (user + system, page faults included).
``--clock cpu`` (the default on CPU) reports CPU time: on a shared machine it does not count the
time slices other processes take, and with ``--threads 1`` it is the work done. ``--clock wall``
is the default on CUDA (CPU time there would miss the GPU's work).
Sections:

  floor       ckd.predict(backend="descent") vs its floor: causal_matrices (P, R once) + 2N bmm
  return_all  descend(return_all=True) vs descend: every layer's prediction, no extra products
  length      time vs T (quadratic: fitted log-log slope), whole and row-blocked paths
  depth       time vs N (linear)
  batch       time vs B (linear)
  streaming   ckd.Streaming per-push time vs t, and recomputing the prefix (predict, depth inf)
  backends    transformer vs descent backend, same depth, every kernel (+ a profile of the transformer)
  dtypes      float32 vs float64
  long        T = 16384, d = 8 in a fresh process: time and peak resident memory (default budget)
  linear_time the linear kernel's linear-time paths (issue 11): time vs T (512 .. 2^20, B = 1),
              dense / linear at T = 8192 (B = 16), ckd.Streaming("linear") push cost at t = 1e3, 1e4, 1e5
  linear_memory  peak memory and time of one call at T = 2^20 (fresh processes)
  features    random features vs the exact kernel: error and time vs D (exp, softmax, gaussian)

The linear-time sections write next to the others with their own --out, e.g.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/perf.py --threads 2 --only linear_time linear_memory features \
        --out docs/figures/performance/linear_time
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import ckd
from ckd.descent import descend
from ckd.kernels import KERNELS, causal_matrices
from ckd.transformer import attend

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "figures" / "performance"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CLOCK = {"clock": "cpu"}  # which clock "median" and "min" report (set from --clock in main)


def interleaved(fns: dict, reps: int, device: str = "cpu", warmup: int = 1) -> dict:
    """Time each callable ``reps`` times, round-robin. Returns {name: {"median", "min" (seconds, on
    the chosen clock), "wall_median", "cpu_median"}}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            w, c = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    chosen = cpu if CLOCK["clock"] == "cpu" else wall
    return {name: {"median": statistics.median(chosen[name]), "min": min(chosen[name]),
                   "wall_median": statistics.median(wall[name]), "cpu_median": statistics.median(cpu[name])}
            for name in fns}


def data(B: int, T: int, d: int, device: str, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """Timing data: Gaussian tokens N(0, I/d) (the cost does not depend on the values; these keep
    finite-depth residuals finite at every size benchmarked)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, d, generator=g, dtype=torch.float64) / math.sqrt(d)).to(device=device, dtype=dtype)


def periodic(B: int, T: int, d: int, device: str, seed: int = 0) -> torch.Tensor:
    """Periodic sequences on the sphere (SPEC §5), where depth inf is exact after a period."""
    return ckd.make_task("periodic", B, T, d, seed=seed).x.to(device=device)


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
        row = _medians(res)
        row["ratio_median"] = res["predict"]["median"] / res["floor"]["median"]
        row["ratio_min"] = res["predict"]["min"] / res["floor"]["min"]
        out["kernels"][kernel] = row
    return out


def section_return_all(cfg) -> dict:
    x = data(cfg.B, cfg.T, 8, cfg.device)
    res = interleaved({
        "last": lambda: descend(x, "exp", depth=16),
        "return_all": lambda: descend(x, "exp", depth=16, return_all=True),
    }, cfg.reps, cfg.device)
    return {"B": cfg.B, "T": cfg.T, "depth": 16, **_medians(res),
            "ratio_median": res["return_all"]["median"] / res["last"]["median"]}


def _medians(res: dict) -> dict:
    return dict(res)


def _slope(xs, ys) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


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
        out[f"slope_{name}"] = _slope([out["T"][i] for i in big], [out[name][i] for i in big])
    return out


def section_depth(cfg) -> dict:
    x = data(cfg.B, cfg.T, 8, cfg.device)
    out = {"B": cfg.B, "T": cfg.T, "kernel": "exp", "depth": [], "time": []}
    for N in cfg.depths:
        res = interleaved({"p": lambda n=N: descend(x, "exp", depth=n)}, max(3, cfg.reps // 3), cfg.device)
        out["depth"].append(N)
        out["time"].append(res["p"]["median"])
    out["slope"] = _slope(out["depth"][2:], out["time"][2:])
    return out


def section_batch(cfg) -> dict:
    out = {"T": cfg.T, "depth": 16, "kernel": "exp", "batch": [], "time": []}
    for B in cfg.batches:
        x = data(B, cfg.T, 8, cfg.device)
        res = interleaved({"p": lambda: descend(x, "exp", depth=16)}, max(3, cfg.reps // 3), cfg.device)
        out["batch"].append(B)
        out["time"].append(res["p"]["median"])
    out["slope"] = _slope(out["batch"][2:], out["time"][2:])
    return out


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


def section_backends(cfg) -> dict:
    B, T, d, N = cfg.B, cfg.T, 8, 16
    x = data(B, T, d, cfg.device)
    out = {"B": B, "T": T, "d": d, "depth": N, "kernels": {}}
    for kernel in KERNELS:
        res = interleaved({
            "descent": lambda k=kernel: ckd.predict(x, k, depth=N),
            "transformer": lambda k=kernel: ckd.predict(x, k, depth=N, backend="transformer"),
        }, max(3, cfg.reps // 3), cfg.device)
        row = _medians(res)
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


def section_dtypes(cfg) -> dict:
    x = data(cfg.B, cfg.T, 8, cfg.device)
    out = {"B": cfg.B, "T": cfg.T, "depth": 16, "kernels": {}}
    for kernel in KERNELS:
        x32 = x.float()
        res = interleaved({
            "float64": lambda k=kernel: ckd.predict(x, k, depth=16, method="dense"),
            "float32": lambda k=kernel: ckd.predict(x32, k, depth=16, dtype=torch.float32, method="dense"),
        }, max(3, cfg.reps // 3), cfg.device)
        row = _medians(res)
        row["ratio_median"] = res["float64"]["median"] / res["float32"]["median"]
        out["kernels"][kernel] = row
    return out


def section_long(cfg) -> dict:
    """T = 16384 in fresh processes (peak resident memory is per process)."""
    out = {"T": cfg.long_len, "d": 8, "B": 1, "runs": []}
    for kernel, depth in (("exp", 16), ("softmax", 16), ("gaussian", "inf")):
        cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()),
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
        L["slope_" + name] = _slope(L["T"], L[name])
    B, T = cfg.lt_ratio
    x = data(B, T, d, cfg.device)
    ratio = {"B": B, "T": T}
    for depth in ("inf", 16):
        res = interleaved({"linear": lambda dp=depth: descend(x, "linear", depth=dp),
                           "dense": lambda dp=depth: descend(x, "linear", depth=dp, method="dense")},
                          cfg.lt_ratio_reps, cfg.device, warmup=0)
        ratio[str(depth)] = {**_medians(res), "ratio": res["dense"]["median"] / res["linear"]["median"],
                             "ratio_wall": res["dense"]["wall_median"] / res["linear"]["wall_median"]}
        print(f"  ratio depth {depth}: {ratio[str(depth)]['ratio']:.1f}", file=sys.stderr, flush=True)
    out["ratio"] = ratio
    out["streaming"] = streaming_linear(cfg.lt_stream, d, cfg.device)
    return out


def section_linear_memory(cfg) -> dict:
    """Issue 11: one linear-kernel call at T = max(lt_lengths), B = 1, d = 8, each in a fresh process:
    time and the process's peak resident memory (VmHWM, which a fresh process starts afresh)."""
    runs = []
    for depth in ("inf", "16"):
        cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()),
               "--lt-worker", depth, str(cfg.lt_lengths[-1]), cfg.device]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return {"runs": runs}


def _proc_status_gib(field: str) -> float:
    """A memory field of /proc/self/status (Linux; VmHWM = peak resident, VmRSS = now) in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return math.nan


def lt_worker(depth: str, T: int, device: str) -> None:
    """One linear-kernel call at length T in a fresh process: wall and CPU time, peak memory, and the
    peak of an empty process (the torch import) for reference."""
    warnings.simplefilter("ignore")
    x = data(1, T, 8, device)
    base = _proc_status_gib("VmRSS")  # torch imported, x made
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    p = descend(x, "linear", depth=depth)
    sync(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _proc_status_gib("VmHWM")  # ru_maxrss would carry the parent's peak across fork + exec
    gpu = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    print(json.dumps({"depth": depth, "T": T, "time_s": elapsed, "cpu_s": cpu, "peak_rss_gib": peak,
                      "rss_before_gib": base, "x_gib": x.numel() * 8 / 2**30, "peak_gpu_gib": gpu,
                      "finite": bool(torch.isfinite(p).all())}))


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


def section_features(cfg) -> dict:
    """Random features (``features=D``) against the exact kernel, B sequences, d = 5: periodic
    sequences on the sphere (SPEC §5, every kernel) and a non-periodic task (rotation-tanh,
    gaussian kernel with a ridge). Per case: the relative difference of the predictions from
    the exact dense CKD, the next-token errors of both against the truth (median over the last
    quarter of the rows), and the wall time of each (one call)."""
    B, T, d = cfg.feat_B, cfg.feat_T, 5
    periodic_x = ckd.make_task("periodic", B, T, d, seed=0, period=cfg.feat_period).x.to(cfg.device)
    tanh_x = ckd.make_task("rotation-tanh", B, T, d, seed=0).x.to(cfg.device)
    cases = [("periodic", periodic_x, "gaussian", {"sigma": 0.5}, "inf"),
             ("periodic", periodic_x, "exp", {"beta": 1.0}, "inf"),
             ("periodic", periodic_x, "softmax", {"beta": 32.0, "step": 1.0}, 1),
             ("periodic", periodic_x, "softmax", {"beta": 4.0}, "inf"),
             ("rotation-tanh", tanh_x, "gaussian", {"sigma": 0.5, "ridge": 1e-3}, "inf")]
    out = {"B": B, "T": T, "d": d, "period": cfg.feat_period, "cases": []}

    def timed(fn):
        sync(cfg.device)
        start = time.perf_counter()
        value = fn()
        sync(cfg.device)
        return value, time.perf_counter() - start

    for task, x, kernel, opts, depth in cases:
        def err(p, x=x):
            return float(ckd.next_token_error(p, x)[:, 3 * T // 4:].median())

        exact, t_exact = timed(lambda: ckd.predict(x, kernel, depth=depth, **opts))
        case = {"task": task, "kernel": kernel, "opts": opts, "depth": depth, "exact_time": t_exact,
                "exact_err": err(exact), "D": [], "rel_diff": [], "err": [], "time": []}
        for D in cfg.feat_D:
            p, t_feat = timed(lambda D=D: ckd.predict(x, kernel, depth=depth, features=D, **opts))
            case["D"].append(D)
            case["rel_diff"].append(float((p - exact).norm() / exact.norm()))
            case["err"].append(err(p))
            case["time"].append(t_feat)
        out["cases"].append(case)
        print(f"  {task} {kernel} {opts} depth {depth}: exact err {case['exact_err']:.2e}, features err "
              f"{case['err']}", file=sys.stderr, flush=True)
    return out


SECTIONS = {
    "floor": section_floor,
    "return_all": section_return_all,
    "length": section_length,
    "depth": section_depth,
    "batch": section_batch,
    "streaming": section_streaming,
    "backends": section_backends,
    "dtypes": section_dtypes,
    "long": section_long,
    "linear_time": section_linear_time,
    "linear_memory": section_linear_memory,
    "features": section_features,
}


def machine(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "device": device,
            "loadavg_start": os.getloadavg()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="what the tables report (default: cpu on CPU, wall on CUDA)")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run these sections only")
    parser.add_argument("--replot", action="store_true", help="redraw results.md and the figures from results.json")
    parser.add_argument("--long-worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--lt-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replot:
        results = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(report(results))
        figures(results, args.out)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lt_worker:
        depth, T, device = args.lt_worker
        lt_worker(depth, int(T), device)
        return 0
    if args.long_worker:
        kernel, depth, T, device = args.long_worker
        long_worker(kernel, depth, int(T), device)
        return 0
    CLOCK["clock"] = args.clock or ("wall" if args.device.startswith("cuda") else "cpu")
    cfg = argparse.Namespace(device=args.device, profile=True, clock=CLOCK["clock"])
    if args.quick:
        cfg.__dict__.update(B=4, T=128, reps=3, lengths=[64, 128, 256], depths=[1, 2, 4, 8],
                            batches=[1, 2, 4, 8], stream_len=300, long_len=2048,
                            lt_lengths=[512, 2048, 8192], lt_ratio=(2, 512), lt_ratio_reps=1, lt_stream=1300,
                            feat_B=2, feat_T=256, feat_period=8, feat_D=[16, 64])
    else:
        cfg.__dict__.update(B=16, T=512, reps=15, lengths=[128, 256, 512, 1024, 2048, 4096],
                            depths=[1, 2, 4, 8, 16, 32, 64], batches=[1, 2, 4, 8, 16, 32],
                            stream_len=4200, long_len=16384,
                            lt_lengths=[2**k for k in range(9, 21)], lt_ratio=(16, 8192), lt_ratio_reps=1,
                            lt_stream=100_300, feat_B=4, feat_T=2048, feat_period=16,
                            feat_D=[64, 256, 1024, 4096])
    warnings.simplefilter("ignore", ckd.StabilityWarning)  # long periodic prompts: transient growth is expected
    results = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
               "machine": machine(args.device), "config": {k: v for k, v in vars(cfg).items()}}
    for name in args.only or list(SECTIONS):
        start = time.perf_counter()
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        results[name] = SECTIONS[name](cfg)
        print(f"[{name}] {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "results.json"
    if args.only and previous.exists():  # --only: keep the other sections of an earlier run in this folder
        kept = json.loads(previous.read_text())
        results = {**{k: v for k, v in kept.items() if k in SECTIONS and k not in results}, **results}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(report(results))
    figures(results, args.out)
    print(report(results))
    return 0


def _ms(v: float) -> str:
    return f"{v * 1e3:.1f}"


def report(r: dict) -> str:
    """Markdown tables of the medians and ratios."""
    m = r["machine"]
    lines = [f"Command: `{r['command']}`", "",
             f"Machine: {m['device']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
             f"load average {m['loadavg_start'][0]:.1f} at start, {m.get('loadavg_end', [math.nan])[0]:.1f} at end.",
             f"Times are medians of {r['config']['reps']} interleaved repeats (fewer for the scaling sweeps), "
             f"clock: {r['config']['clock']} (see `benchmarks/perf.py`).", ""]
    if "floor" in r:
        f = r["floor"]
        lines += [f"### Descent vs its floor (B={f['B']}, T={f['T']}, d={f['d']}, N={f['depth']}, float64)", "",
                  "| kernel | build P,R (ms) | one bmm (ms) | floor (ms) | predict (ms) | ratio (medians) "
                  "| ratio (minima) |", "|---|---|---|---|---|---|---|"]
        for k, v in f["kernels"].items():
            lines.append(f"| {k} | {_ms(v['build']['median'])} | {_ms(v['bmm']['median'])} | "
                         f"{_ms(v['floor']['median'])} | {_ms(v['predict']['median'])} | "
                         f"{v['ratio_median']:.2f} | {v['ratio_min']:.2f} |")
        lines.append("")
    if "return_all" in r:
        a = r["return_all"]
        lines += [f"`return_all=True` vs the last layer only (exp, B={a['B']}, T={a['T']}, N=16): "
                  f"{_ms(a['return_all']['median'])} ms vs {_ms(a['last']['median'])} ms, "
                  f"ratio {a['ratio_median']:.2f}.", ""]
    if "length" in r:
        s = r["length"]
        lines += [f"### Time vs T (exp, B={s['B']}, N={s['depth']}; blocked = row blocks of T/8)", "",
                  "| T | whole (ms) | blocked (ms) | depth inf (ms) |", "|---|---|---|---|"]
        for i, T in enumerate(s["T"]):
            lines.append(f"| {T} | {_ms(s['whole'][i])} | {_ms(s['blocked'][i])} | {_ms(s['infinite'][i])} |")
        lines += ["", f"log-log slope for T >= 512: whole {s['slope_whole']:.2f}, blocked {s['slope_blocked']:.2f}, "
                  f"depth inf {s['slope_infinite']:.2f} (quadratic = 2).", ""]
    for key, label in (("depth", "N"), ("batch", "B")):
        if key in r:
            s = r[key]
            xs = s[key]
            lines += [f"### Time vs {label} (exp)", "", f"| {label} | " + " | ".join(map(str, xs)) + " |",
                      "|---|" + "---|" * len(xs), "| ms | " + " | ".join(_ms(t) for t in s["time"]) + " |", "",
                      f"log-log slope (from the third point): {s['slope']:.2f} (linear = 1).", ""]
    if "streaming" in r:
        s = r["streaming"]
        ts = next(iter(s["kernels"].values()))["t"]
        lines += [f"### Streaming: one push vs recomputing the prefix (depth inf, d={s['d']})", "",
                  "| kernel | " + " | ".join(f"t={t}: push (us) / recompute (ms) / ratio" for t in ts) + " |",
                  "|---|" + "---|" * len(ts)]
        for k, v in s["kernels"].items():
            cells = [f"{p * 1e6:.0f} / {_ms(q)} / {q / p:.0f}x" for p, q in zip(v["push"], v["recompute"])]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    if "backends" in r:
        b = r["backends"]
        lines += [f"### Transformer vs descent backend (B={b['B']}, T={b['T']}, d={b['d']}, N={b['depth']}, "
                  "float64)", "", "| kernel | descent (ms) | transformer (ms) | ratio |", "|---|---|---|---|"]
        for k, v in b["kernels"].items():
            lines.append(f"| {k} | {_ms(v['descent']['median'])} | {_ms(v['transformer']['median'])} | "
                         f"{v['ratio_median']:.2f} |")
        if "one_layer" in b:
            lines += ["", "One layer (exp kernel, same sizes): " + ", ".join(
                f"{name} {_ms(t)} ms" for name, t in b["one_layer"].items()) + "."]
        lines.append("")
    if "dtypes" in r:
        dt = r["dtypes"]
        lines += [f"### float64 vs float32 (descent, B={dt['B']}, T={dt['T']}, N={dt['depth']})", "",
                  "| kernel | float64 (ms) | float32 (ms) | float64 / float32 |", "|---|---|---|---|"]
        for k, v in dt["kernels"].items():
            lines.append(f"| {k} | {_ms(v['float64']['median'])} | {_ms(v['float32']['median'])} | "
                         f"{v['ratio_median']:.2f} |")
        lines.append("")
    if "long" in r:
        lo = r["long"]
        lines += [f"### Long sequences (T={lo['T']}, d=8, B=1, float64, default memory budget)", "",
                  "| kernel | depth | wall (s) | CPU (s) | peak RSS (GiB) | median error, last 1000 tokens |",
                  "|---|---|---|---|---|---|"]
        for run in lo["runs"]:
            lines.append(f"| {run['kernel']} | {run['depth']} | {run['time_s']:.1f} | {run['cpu_s']:.1f} | "
                         f"{run['peak_rss_gib']:.2f} | {run['median_err_last_1000']:.2e} |")
        lines.append("")
    if "linear_time" in r:
        lt = r["linear_time"]
        L = lt["lengths"]
        lines += [f"### Linear kernel in linear time: time vs T (B={L['B']}, d={lt['d']}, float64)", "",
                  "| T | depth inf wall (s) | depth inf CPU (s) | depth 16 wall (s) | depth 16 CPU (s) |",
                  "|---|---|---|---|---|"]
        for i, T in enumerate(L["T"]):
            lines.append(f"| {T} | {L['inf_wall'][i]:.4f} | {L['inf'][i]:.4f} | {L['depth16_wall'][i]:.4f} | "
                         f"{L['depth16'][i]:.4f} |")
        lines += ["", f"log-log slope over all T: depth inf {L['slope_inf_wall']:.2f} (wall) / "
                  f"{L['slope_inf']:.2f} (CPU), depth 16 {L['slope_depth16_wall']:.2f} (wall) / "
                  f"{L['slope_depth16']:.2f} (CPU); linear = 1.", ""]
        ra = lt["ratio"]
        lines += [f"Dense / linear-time at B={ra['B']}, T={ra['T']}, d={lt['d']}:", "",
                  "| depth | dense wall (s) | linear wall (s) | ratio (wall) | ratio (CPU) |", "|---|---|---|---|---|"]
        for depth in ("inf", "16"):
            v = ra[depth]
            lines.append(f"| {depth} | {v['dense']['wall_median']:.2f} | {v['linear']['wall_median']:.3f} | "
                         f"{v['ratio_wall']:.0f}x | {v['ratio']:.0f}x |")
        st = lt["streaming"]
        lines += ["", "`ckd.Streaming(\"linear\")` push (median of 400 pushes around t, d=8): " + ", ".join(
            f"t={t}: {w * 1e6:.1f} us wall ({c * 1e6:.1f} us CPU)" for t, w, c in
            zip(st["t"], st["push_wall"], st["push"])) + f"; last / first {st['ratio_last_first']:.2f}.", ""]
    if "linear_memory" in r:
        lines += ["Memory, one linear-kernel call in a fresh process (B=1, d=8, float64):", "",
                  "| depth | T | wall (s) | CPU (s) | peak RSS (GiB) | RSS before (torch, x) (GiB) | x (GiB) |",
                  "|---|---|---|---|---|---|---|"]
        for m_ in r["linear_memory"]["runs"]:
            lines.append(f"| {m_['depth']} | {m_['T']} | {m_['time_s']:.2f} | {m_['cpu_s']:.2f} | "
                         f"{m_['peak_rss_gib']:.2f} | {m_['rss_before_gib']:.2f} | {m_['x_gib']:.3f} |")
        lines.append("")
    if "features" in r:
        f = r["features"]
        lines += [f"### Random features vs the exact kernel (B={f['B']}, T={f['T']}, d={f['d']}, "
                  f"period {f['period']} for the periodic task)", "",
                  "| task: kernel | depth | exact: error (time s) | " + " | ".join(
                      f"D={D}: rel. diff / error / time s" for D in f["cases"][0]["D"]) + " |",
                  "|---|---|---|" + "---|" * len(f["cases"][0]["D"])]
        for c in f["cases"]:
            opts = ", ".join(f"{k}={v:g}" for k, v in c["opts"].items())
            cells = [f"{a:.2g} / {e:.2g} / {t:.2f}" for a, e, t in zip(c["rel_diff"], c["err"], c["time"])]
            lines.append(f"| {c.get('task', 'periodic')}: {c['kernel']} ({opts}) | {c['depth']} | "
                         f"{c['exact_err']:.2g} ({c['exact_time']:.2f}) | "
                         + " | ".join(cells) + " |")
        lines += ["", "rel. diff = |p_features - p_exact| / |p_exact| over all rows; error = median next-token "
                  "error over the last quarter of the rows (the exact kernel's in the third column).", ""]
    return "\n".join(lines)


def plain_ticks(ax, xs) -> None:
    """x ticks at the measured sizes, written as plain numbers (log axes' minor labels overlap)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(xs, [str(v) for v in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())


def figures(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)

    if "length" in r:
        s = r["length"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for name in ("whole", "blocked", "infinite"):
            ax.loglog(s["T"], s[name], "o-", label=f"{name} (slope {s['slope_' + name]:.2f})")
        ref = [s["whole"][-1] * (T / s["T"][-1]) ** 2 for T in s["T"]]
        ax.loglog(s["T"], ref, "k:", label="T^2")
        ax.set(xlabel="T", ylabel="seconds", title=f"CKD time vs T (exp, B={s['B']}, N={s['depth']})")
        plain_ticks(ax, s["T"])
        ax.legend(fontsize=8)
        save(fig, "time_vs_T")
    for key, label in (("depth", "depth N"), ("batch", "batch B")):
        if key in r:
            s = r[key]
            fig, ax = plt.subplots(figsize=(5, 4))
            ax.loglog(s[key], s["time"], "o-", label=f"descent (slope {s['slope']:.2f})")
            ax.set(xlabel=label, ylabel="seconds", title=f"CKD time vs {label} (exp, T={s['T']})")
            plain_ticks(ax, s[key])
            ax.legend(fontsize=8)
            save(fig, f"time_vs_{key}")
    if "streaming" in r:
        s = r["streaming"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for k, v in s["kernels"].items():
            line, = ax.loglog(v["t"], v["push"], "o-", label=f"{k}: one push")
            ax.loglog(v["t"], v["recompute"], "s--", color=line.get_color(), label=f"{k}: recompute prefix")
        ax.set(xlabel="tokens so far t", ylabel="seconds", title="Streaming (depth inf) vs recomputing")
        plain_ticks(ax, next(iter(s["kernels"].values()))["t"])
        ax.legend(fontsize=7)
        save(fig, "streaming")
    if "linear_time" in r:
        L = r["linear_time"]["lengths"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for name, label in (("inf_wall", "depth inf (delta rule)"), ("depth16_wall", "depth 16 (linear attention)")):
            ax.loglog(L["T"], L[name], "o-", label=f"{label}, slope {L['slope_' + name]:.2f}")
        ref = [L["inf_wall"][-1] * T / L["T"][-1] for T in L["T"]]
        ax.loglog(L["T"], ref, "k:", label="T")
        ax.set(xlabel="T", ylabel="seconds (wall)", title=f"linear kernel, linear time (B={L['B']}, d=8)")
        ax.legend(fontsize=8)
        save(fig, "linear_time_vs_T")
    if "features" in r:
        f = r["features"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for c in f["cases"]:
            label = f"{c.get('task', '')} {c['kernel']} depth {c['depth']} {c['opts']}"
            line, = ax.loglog(c["D"], c["err"], "o-", label=label)
            ax.axhline(c["exact_err"], color=line.get_color(), ls=":")
        ax.set(xlabel="features D", ylabel="median next-token error", title="random features (dotted: exact kernel)")
        ax.legend(fontsize=6)
        save(fig, "features_vs_D")
    if "backends" in r or "dtypes" in r or "floor" in r:
        panels = [k for k in ("floor", "backends", "dtypes") if k in r]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
        for ax, key in zip(axes[0], panels):
            v = r[key]["kernels"]
            names = {"floor": ("floor", "predict"), "backends": ("descent", "transformer"),
                     "dtypes": ("float64", "float32")}[key]
            ks = list(v)
            for i, n in enumerate(names):
                ax.bar([j + 0.4 * i for j in range(len(ks))], [v[k][n]["median"] for k in ks], 0.4, label=n)
            ax.set_xticks([j + 0.2 for j in range(len(ks))], ks)
            ax.set(ylabel="seconds (median)", title={"floor": "descent vs floor", "backends": "transformer vs descent",
                                                     "dtypes": "float64 vs float32"}[key])
            ax.legend(fontsize=8)
        save(fig, "backends_dtypes")


if __name__ == "__main__":
    sys.exit(main())
