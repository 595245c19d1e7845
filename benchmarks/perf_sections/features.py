"""Section features: random features vs the exact kernel, error and time vs D (exp, softmax, gaussian)."""

from __future__ import annotations

import sys
import time

from perf_common import sync

import ckd


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
