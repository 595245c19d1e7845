"""Calibrate the constants of ``ckd.cost`` (time estimates of requests) on this machine.

    python benchmarks/cost_calibration.py            # ~1-2 min on 2 cores: constants, then estimate / measured

One torch thread, CPU time (``time.process_time``: the time slices other processes take are not
counted), median of 3. Part 1 times small cases that isolate one constant each (a loop of many
cheap steps gives a per-step cost, a few big products a per-multiply-add cost) and prints the
value measured next to the one in ``ckd.cost``. Part 2 checks ``ckd.cost``'s estimates against
measured times of larger cases (the ratio estimate / measured; the estimates only need to tell
minutes from hours, so a factor of 3 is fine). Copy a constant into ``src/ckd/cost.py`` when it is
off by more than that.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import ckd  # noqa: E402
from ckd import cost  # noqa: E402
from ckd.forecast import forecast  # noqa: E402


def seconds(fn, repeats: int = 3) -> float:
    """Median CPU seconds of ``repeats`` calls after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def data(B, T, d, seed=0):
    return np.random.default_rng(seed).standard_normal((B, T, d)) / np.sqrt(d)


def walk(T, d, seed=0):
    return np.cumsum(np.random.default_rng(seed).standard_normal((T, d)), 0) / 5


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    measured = {}
    # per layer: depth N on a tiny prompt (the products cost nothing)
    x = data(1, 30, 3)
    measured["LAYER"] = seconds(lambda: ckd.predict(x, "exp", depth=4000)) / 4000
    # per multiply-add: a few layers on a big batch
    x = data(4, 512, 8)
    t = seconds(lambda: ckd.predict(x, "exp", depth=20))
    measured["FLOP"] = (t - 20 * measured["LAYER"]) / (20 * 4 * 4 * 512 * 512 * 8)
    x = data(1, 30, 3)
    measured["SWEEP"] = seconds(lambda: ckd.predict(x, "exp", depth="inf", sweeps=4000)) / 4000
    x = data(4, 512, 8)
    t = seconds(lambda: ckd.predict(x, "exp", depth="inf", sweeps=20))
    measured["SOLVE"] = (t - 20 * measured["SWEEP"]) / (20 * 4 * 512 * 512 * 8)
    x = data(1, 30, 3)
    measured["TLAYER"] = seconds(lambda: ckd.predict(x, "exp", depth=200, backend="transformer"), 1) / 200
    # analogues: many cheap steps (STEP), then a long scan (SCAN)
    z = walk(100, 3)
    measured["STEP"] = seconds(lambda: forecast(z, "analogues", horizon=2000), 1) / 2000
    z = walk(4000, 3)
    t = seconds(lambda: forecast(z, "analogues", horizon=1500), 1)
    measured["SCAN"] = (t - 1500 * measured["STEP"]) / ((4000 * 1500 + 1500 ** 2 / 2) * 3)
    z = walk(600, 2)
    fits = rollout_fits("krr", 600)
    t = seconds(lambda: forecast(z, "krr", horizon=5), 1)
    measured["CHOL"] = t / (fits * cost.fit_cubes("krr", 600, 2))
    for method in ("krr", "ckd", "analogues"):
        z = walk(600, 2)
        experts = one_step_experts(method)
        t = seconds(lambda: forecast(z, method), 1)
        measured[f"ONESTEP[{method}]"] = t / (experts * cost.onestep_work(method, 1, 600, 2))
    with tempfile.TemporaryDirectory() as tmp:
        from ckd.train import TrainConfig, train

        def run(steps, **kw):
            kw = dict(dict(log_every=10**6, eval_every=10**6, checkpoint_every=10**6), **kw)
            cfg = TrainConfig(steps=steps, **kw)
            train(cfg, Path(tmp) / f"run{time.monotonic_ns()}", progress=False)

        small = seconds(lambda: run(4, batch=2, length=8, dim=2, layers=1), 1)
        big = seconds(lambda: run(24, batch=2, length=8, dim=2, layers=1), 1)
        measured["TSTEP"] = (big - small) / 20
        cfg = TrainConfig()
        width = 4 * cfg.dim + 2
        default = seconds(lambda: run(6), 1) / 6
        measured["EVAL"] = (seconds(lambda: run(6, eval_every=1), 1) - 6 * default) / 5
        measured["TRAIN"] = (default - measured["TSTEP"]) / (cfg.batch * cfg.length * (cfg.length + width)
                                                             * cfg.layers)
    print(f"{'constant':<20}{'measured':>12}{'in ckd.cost':>14}")
    for name, value in measured.items():
        if name.startswith("ONESTEP"):
            have = cost.ONESTEP[name[8:-1]]
        else:
            have = getattr(cost, name)
        print(f"{name:<20}{value:>12.3g}{have:>14.3g}")
    check()


def rollout_fits(method: str, T: int) -> int:
    """The kernel fits of a full-state rollout's selection with nothing fixed: grid x held-out origins + 1."""
    from ckd.heldout import heldout_origins
    from ckd.rollout import GRIDS

    g = GRIDS[method]
    return len(g["sigma"]) * len(g["ridge"]) * len(g["embed"]) * len(heldout_origins(T)) + 1


def one_step_experts(method: str) -> int:
    from ckd.forecast import GRIDS

    return len(GRIDS[method]["sigma"]) * len(GRIDS[method]["ridge"]) if method in GRIDS else 1


def check() -> None:
    """Estimate / measured on larger cases than the calibration's."""
    print(f"\n{'case':<48}{'estimate':>10}{'measured':>10}{'ratio':>8}")
    cases = []
    x = data(2, 256, 4)
    cases.append(("predict exp depth 64, B 2 T 256 d 4", cost.descent_seconds(2, 256, 4, 64),
                  lambda x=x: ckd.predict(x, "exp", depth=64)))
    x1 = data(1, 30, 3)
    cases.append(("predict depth 20000, T 30", cost.descent_seconds(1, 30, 3, 20000),
                  lambda x1=x1: ckd.predict(x1, "exp", depth=20000)))
    cases.append(("predict sweeps 20000, T 30", cost.descent_seconds(1, 30, 3, "inf", sweeps=20000),
                  lambda x1=x1: ckd.predict(x1, "exp", depth="inf", sweeps=20000)))
    cases.append(("predict transformer depth 400, T 30", cost.transformer_seconds(1, 30, 3, 400),
                  lambda x1=x1: ckd.predict(x1, "exp", depth=400, backend="transformer")))
    z = walk(1000, 3)
    cases.append(("forecast krr one step, T 1000 d 3",
                  cost.forecast_seconds("krr", 1, 1000, 3, experts=one_step_experts("krr")),
                  lambda z=z: forecast(z, "krr")))
    z = walk(1000, 2)
    cases.append(("forecast krr rollout H 50, T 1000", cost.forecast_seconds(
        "krr", 1, 1000, 2, horizon=50, fits=rollout_fits("krr", 1000), cubes=cost.fit_cubes("krr", 1000, 2)),
        lambda z=z: forecast(z, "krr", horizon=50)))
    z = walk(400, 2)
    cases.append(("forecast ckd rollout H 50, T 400", cost.forecast_seconds(
        "ckd", 1, 400, 2, horizon=50, fits=rollout_fits("ckd", 400), cubes=cost.fit_cubes("ckd", 400, 2)),
        lambda z=z: forecast(z, "ckd", horizon=50)))
    z = walk(300, 3)
    cases.append(("forecast analogues H 6000, T 300", cost.forecast_seconds("analogues", 1, 300, 3, horizon=6000),
                  lambda z=z: forecast(z, "analogues", horizon=6000)))
    for name, estimate, fn in cases:
        t = seconds(fn, 1)  # each case's lambda binds its own input (default arguments)
        print(f"{name:<48}{estimate:>10.3g}{t:>10.3g}{estimate / t:>8.2f}")


if __name__ == "__main__":
    main()
