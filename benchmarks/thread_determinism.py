"""Do ckd's results depend on the number of threads? (issue 17, item 4)

    python benchmarks/thread_determinism.py [--out FILE.json]

Each case runs in two fresh processes, OMP_NUM_THREADS=1 and OMP_NUM_THREADS=2 (torch's thread
count follows it), with the thread rule of ``ckd.threads`` (``rule on``) and without it
(``ckd.threads.SMALL_FLOPS = 0``: every operation on every thread, ckd before issue 17), and
reports the largest absolute difference of the outputs (0 = the same bits). The context is a
Lorenz-63 trajectory (RK4, dt 0.01, from (1, 1, 1) after a burn-in), a chaotic system: a rollout
amplifies any rounding difference by the dynamics (e^(0.9 t) per time unit).

Cases: krr and ckd rollouts of 300 steps from (400, 3) contexts (``ckd forecast --horizon 300``),
krr from (512, 3) (the context of docs/forecast.md's benchmark) and (1200, 3) contexts, one-step
krr forecasts of (400, 3), the linear-time path (depth inf, T = 2^16, d = 8) and dense descent
(exp, depth 16, B = 16, T = 512, d = 8).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CASES = ("krr rollout T=400", "ckd rollout T=400", "krr rollout T=512", "krr rollout T=1200", "krr one-step T=400",
         "linear time T=2^16", "dense T=512")


def lorenz(T: int, dt: float = 0.01, burn: int = 1000) -> np.ndarray:
    """A Lorenz-63 trajectory (sigma 10, rho 28, beta 8/3), RK4, (T, 3)."""
    def f(v):
        x, y, z = v
        return np.array([10.0 * (y - x), x * (28.0 - z) - y, x * y - 8.0 / 3.0 * z])
    v, out = np.ones(3), []
    for i in range(burn + T):
        k1 = f(v)
        k2 = f(v + dt / 2 * k1)
        k3 = f(v + dt / 2 * k2)
        k4 = f(v + dt * k3)
        v = v + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if i >= burn:
            out.append(v)
    return np.array(out)


def worker(case: str, rule: bool, path: str) -> None:
    """Compute ``case`` in this process and save the output to ``path`` (.npy)."""
    import torch

    import ckd
    import ckd.forecast
    import ckd.threads

    if not rule:
        ckd.threads.SMALL_FLOPS = 0
    g = torch.Generator().manual_seed(0)
    if "rollout" in case or "one-step" in case:
        T = int(case.split("T=")[1])
        x = lorenz(T)
        method = case.split()[0]
        out = ckd.forecast.forecast(x, method, horizon=None if "one-step" in case else 300)
    elif case.startswith("linear"):
        x = torch.randn(1, 2**16, 8, generator=g, dtype=torch.float64) / 8**0.5
        out = ckd.predict(x, "linear", depth="inf")
    else:
        x = torch.randn(16, 512, 8, generator=g, dtype=torch.float64) / 8**0.5
        out = ckd.predict(x, "exp", depth=16)
    np.save(path, np.asarray(out))
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])


def difference(case: str, rule: bool, tmp: Path) -> dict:
    """Run ``case`` with 1 and 2 threads in fresh processes; their largest absolute difference."""
    outs = []
    for threads in (1, 2):
        path = tmp / f"{threads}.npy"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE",
               "PYTHONPATH": str(ROOT / "src")}
        subprocess.run([sys.executable, __file__, "--worker", case, str(int(rule)), str(path)], env=env, check=True,
                       timeout=900)
        outs.append(np.load(path))
    diff = np.abs(outs[0] - outs[1])
    return {"max_abs_diff": float(diff.max()), "scale": float(np.abs(outs[0]).max()),
            "identical": bool(np.array_equal(outs[0], outs[1]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], bool(int(args.worker[1])), args.worker[2])
        return 0
    results = {}
    print("| case | rule | max abs difference, 1 vs 2 threads | largest |value| | same bits |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            for rule in (True, False):
                r = results[f"{case}, rule {'on' if rule else 'off'}"] = difference(case, rule, Path(tmp))
                print(f"| {case} | {'on' if rule else 'off'} | {r['max_abs_diff']:.3g} | {r['scale']:.3g} | "
                      f"{'yes' if r['identical'] else 'no'} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
