"""Loaded / idle time of ckd's main paths (issue 17): ``python benchmarks/perf.py --under-load N``.

For each path, each policy is timed in a fresh process (the OpenMP wait policy is read when torch
is imported), first as the machine is, then with N busy processes of this benchmark's own (pure
Python loops, one core each; stopped afterwards, also on Ctrl-C or an error). Reported: the median
wall time of the repeats, idle and loaded, and their ratio, with the load average seen.

Paths: dense descent (``ckd.predict``, exp kernel, depth 16, B = 16, T = 512, d = 8), linear time
(linear kernel, depth inf, B = 1, d = 8, T = 2^18 and 2^20), streaming (2000 pushes of
``ckd.Streaming("exp")``, d = 8), ``ckd forecast ctx.npy -o out.npy --horizon 300`` end to end on a
(400, 3) context (a fresh ``ckd`` process per repeat, start-up included) and training (40 steps of
``ckd train``'s loop at its default size: 2 layers, batch 32, length 32, d = 3). The control path
is no ckd at all: a pure-Python loop on one thread (about 0.3 s idle), i.e. what the N busy
processes do to any single-threaded job on this machine; a path's ratio is read against it.

Policies (``--policy``, several allowed):

    on       what ckd does: OMP_WAIT_POLICY=PASSIVE (the ckd command sets it; here the benchmark
             sets it for the library paths) and the thread rule of ``ckd.threads``
    off      neither: OMP_WAIT_POLICY unset, ``ckd.threads.SMALL_FLOPS = 0`` (every operation on
             every thread: ckd before issue 17)
    passive  OMP_WAIT_POLICY=PASSIVE only
    scoped   the thread rule only
    one      "on" in a process of one thread (OMP_NUM_THREADS=1): what holding one thread for a whole
             stream or run gives, against the rule's scope per call
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("on", "off", "passive", "scoped", "one")
# path -> (repeats, repeats of --quick)
PATHS = {"dense": (5, 2), "linear 2^18": (3, 1), "linear 2^20": (3, 1), "streaming": (3, 1),
         "forecast CLI": (5, 2), "training": (3, 1), "control": (5, 2)}
SIZES = {"dense": (16, 512, 8), "linear 2^18": (1, 2**18, 8), "linear 2^20": (1, 2**20, 8)}
QUICK_SIZES = {"dense": (4, 256, 8), "linear 2^18": (1, 2**14, 8), "linear 2^20": (1, 2**16, 8)}
TIMEOUT = 900  # seconds per (path, policy, condition): a spinning run under load can take minutes


def env_for(policy: str) -> dict:
    """The environment of a worker: the wait policy set or removed."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if policy in ("on", "passive", "one"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if policy == "one":
        env["OMP_NUM_THREADS"] = "1"
    return env


def cli_command(policy: str, args: list[str]) -> list[str]:
    """The ckd command as a user runs it (policy on), or with the rule switched off / on alone."""
    if policy in ("on", "one"):
        return [sys.executable, "-m", "ckd.cli", *args]
    flops = 0 if policy in ("off", "passive") else 2**28
    prelude = (f"import sys; import ckd.threads as t; t.SMALL_FLOPS = {flops}; import ckd.cli; "
               "sys.exit(ckd.cli.main(sys.argv[1:]))")  # main(argv) leaves OMP_WAIT_POLICY as the env has it
    return [sys.executable, "-c", prelude, *args]


def worker(path: str, policy: str, reps: int, quick: bool) -> dict:
    """Time ``path`` ``reps`` times in this process (after one warm-up); wall seconds."""
    import numpy as np
    import torch

    import ckd
    import ckd.threads

    if policy in ("off", "passive"):
        ckd.threads.SMALL_FLOPS = 0
    sizes = QUICK_SIZES if quick else SIZES
    g = torch.Generator().manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="ckd-perf-load-"))
    if path in sizes:
        B, T, d = sizes[path]
        x = torch.randn(B, T, d, generator=g, dtype=torch.float64) / d**0.5
        kernel, depth = ("exp", 16) if path == "dense" else ("linear", "inf")

        def run():
            ckd.predict(x, kernel, depth=depth)
    elif path == "streaming":
        x = torch.randn(2000 if not quick else 300, 8, generator=g, dtype=torch.float64) / 8**0.5

        def run():
            s = ckd.Streaming("exp", dim=8)
            for row in x:
                s.push(row)
    elif path == "forecast CLI":
        ctx = np.cumsum(np.random.default_rng(0).normal(size=(400, 3)), 0) * 0.1
        np.save(tmp / "ctx.npy", ctx)
        cmd = cli_command(policy, ["forecast", str(tmp / "ctx.npy"), "-o", str(tmp / "out.npy"), "--horizon", "300"])

        def run():
            subprocess.run(cmd, env=env_for(policy), check=True, capture_output=True, timeout=TIMEOUT)
    elif path == "training":
        from ckd.train import TrainConfig, train

        cfg = TrainConfig(steps=40 if not quick else 10, eval_every=10**6, log_every=10**6, checkpoint_every=10**6)

        def run():
            train(cfg, tempfile.mkdtemp(dir=tmp), progress=False)
    elif path == "control":  # no ckd, no torch work: the machine's own loaded / idle for one thread
        def run():
            sum(i * i for i in range(3_000_000 if not quick else 300_000))
    else:
        raise ValueError(f"unknown path {path!r}; choose from {', '.join(PATHS)}")
    run()  # warm-up (first-call allocations, lazy imports)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    shutil.rmtree(tmp, ignore_errors=True)  # the context, forecasts and training runs of this worker
    return {"times": times, "threads": torch.get_num_threads(), "policy_env": os.environ.get("OMP_WAIT_POLICY")}


def measure(path: str, policy: str, reps: int, quick: bool) -> dict:
    """Run ``worker`` in a fresh process with the policy's environment."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", path, policy, str(reps), str(int(quick))]
    load = os.getloadavg()[0]
    try:
        done = subprocess.run(cmd, env=env_for(policy), capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"median": None, "times": [], "load": load, "error": f"over {TIMEOUT} s"}
    if done.returncode:
        return {"median": None, "times": [], "load": load, "error": done.stderr.strip().splitlines()[-1:]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {**out, "median": statistics.median(out["times"]), "load": load}


class Busy:
    """N busy processes (one core each) while the block runs; always stopped."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL))
        time.sleep(1.0)  # let the scheduler see them
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        return False


def under_load(n: int, policies: list[str], quick: bool = False, paths: list[str] | None = None) -> dict:
    """Idle and loaded medians of every path under every policy: {path: {policy: {...}}}."""
    results = {"busy": n, "policies": policies, "quick": quick, "cpu_count": os.cpu_count(), "paths": {}}
    for path in paths or list(PATHS):
        reps = PATHS[path][1 if quick else 0]
        row = results["paths"][path] = {}
        for policy in policies:
            row[policy] = {"idle": measure(path, policy, reps, quick)}
            print(f"[load] {path}, {policy}, idle: {fmt(row[policy]['idle'])}", file=sys.stderr, flush=True)
        with Busy(n):
            for policy in policies:
                row[policy]["loaded"] = measure(path, policy, reps, quick)
                print(f"[load] {path}, {policy}, {n} busy: {fmt(row[policy]['loaded'])}", file=sys.stderr,
                      flush=True)
        for policy in policies:
            idle, loaded = row[policy]["idle"]["median"], row[policy]["loaded"]["median"]
            row[policy]["ratio"] = loaded / idle if idle and loaded else None
    return results


def fmt(m: dict) -> str:
    return (f"{m['median']:.3g} s (load {m['load']:.1f})" if m.get("median") is not None
            else f"failed: {m.get('error')}")


def table(results: dict) -> str:
    """The markdown table of ``under_load``."""
    lines = [f"| path | policy | idle s (load avg) | {results['busy']} busy s (load avg) | loaded / idle |",
             "|---|---|---|---|---|"]
    for path, row in results["paths"].items():
        for policy, m in row.items():
            cells = [f"{m[c]['median']:.3g} ({m[c]['load']:.1f})" if m[c].get("median") is not None else
                     str(m[c].get("error")) for c in ("idle", "loaded")]
            ratio = f"{m['ratio']:.2f}x" if m.get("ratio") else "-"
            lines.append(f"| {path} | {policy} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # the worker: perf_load.py --worker PATH POLICY REPS QUICK
    if sys.argv[1:2] != ["--worker"]:
        sys.exit("run: python benchmarks/perf.py --under-load N [--policy on off]")
    path, policy, reps, quick = sys.argv[2], sys.argv[3], int(sys.argv[4]), bool(int(sys.argv[5]))
    print(json.dumps(worker(path, policy, reps, quick)))
