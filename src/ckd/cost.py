"""Time estimates of a request from its sizes, before any work: one place for every command.

Each estimate is a sum of (count x seconds per unit): the units are the work a path really does
(multiply-adds of its products, n^3 of its factorisations, Python-level steps of its loops), the
seconds per unit are constants measured on the development machine (2 shared cores, one torch
thread, CPU time, median of 3) by

    python benchmarks/cost_calibration.py          # prints each constant and estimate / measured

which times small cases of each path and prints the ratio estimate / measured on larger ones (it
stays within a factor of 3 there). The estimates are for refusing the absurd, not for scheduling:
a request estimated over ``LIMIT_SECONDS`` (one hour) is refused up front by the CLI with the
estimate and what to do, unless ``--force`` (``check_time``). The Python API does not refuse:
an API caller can interrupt.

Formulas (B sequences, T tokens, d coordinates; seconds):

    descent, depth N       N (LAYER + 4 B T^2 d FLOP)              two (T, T) x (T, d) products a layer
    linear-time path       N (LAYER + 8 B T d^2 FLOP)              (features: d^2 -> D d)
    depth inf, K sweeps    K (SWEEP + B T^2 d SOLVE) + B T^2 d FLOP
    transformer backend    N (TLAYER + 16 B T^2 d FLOP)            construction and forward, per layer
    one-step forecast      experts x (krr, ckd: T^3 / (T^2 (d+1)^2)) x B, blocks doubling (sum 8/7)
    rollout, ckd / krr     fits x cubes CHOL + H (STEP + n D c FLOP)  fits: grid x held-out origins
    rollout, analogues     H (STEP + (T H + H^2 / 2) D c SCAN)      every step scans all earlier tokens
    rollout, transformer   H model forwards on T + h tokens
    training               steps (TSTEP + batch length (length + width) layers TRAIN)
"""

from __future__ import annotations

import math
from typing import Any

LIMIT_SECONDS = 3600.0  # longer requests are refused unless --force

# Seconds per unit (benchmarks/cost_calibration.py, 2 cores, 1 thread; see the module doc).
FLOP = 1.5e-10  # one multiply-add of a batched product (bmm, matmul), float64
LAYER = 2.0e-5  # Python and kernel-launch cost of one layer of the dense recursion
SWEEP = 1.5e-5  # one Gauss-Seidel sweep's fixed cost
SOLVE = 7.0e-10  # one multiply-add of a triangular solve
TLAYER = 8.0e-4  # one layer of the constructed transformer: built (weights) and run
CHOL = 3.0e-11  # n^3 of a rollout fit (``fit_cubes``): a Cholesky, or a squaring of the sweep map
STEP = 7.0e-5  # one autoregressive step of a rollout loop
SCAN = 6.0e-9  # one element of the analogues' scan over earlier tokens (copy, difference, norm)
TSTEP = 3.0e-3  # one optimizer step's fixed cost (forward, backward, AdamW)
TRAIN = 1.2e-7  # one unit of batch x length x (length + width) x layers of a training step
EVAL = 0.01  # one evaluation of the default run (ckd train's held-out prompts)
DEFAULT_TRAIN_SIZE = 32 * 32 * (32 + 14) * 2  # batch x length x (length + width) x layers of the default run
ONESTEP = {"krr": 2.2e-10, "ckd": 3.0e-9, "ckd-inf": 3.0e-9, "analogues": 8.5e-9}  # per unit of onestep_work


def hours(seconds: float) -> str:
    """3.2 h, 25 min, 40 s, or 'more than a year'."""
    if seconds > 3.15e7:
        return "more than a year"
    if seconds >= 3600:
        return f"{seconds / 3600:.2g} h"
    if seconds >= 60:
        return f"{seconds / 60:.2g} min"
    return f"{seconds:.2g} s"


class TooLong(ValueError):
    """A request refused up front: its estimated time exceeds ``LIMIT_SECONDS``."""


def check_time(seconds: float, what: str, advice: str, force: bool = False) -> None:
    """Refuse (``TooLong``, one line) ``what`` when its estimate exceeds ``LIMIT_SECONDS``, unless ``force``."""
    if force or not seconds > LIMIT_SECONDS:
        return
    raise TooLong(f"{what} would take about {hours(seconds)} here (estimated from its sizes, docs/guarantees.md); "
                  f"{advice}, or pass --force to run it anyway")


def descent_seconds(B: int, T: int, d: int, depth: Any, *, sweeps: int = 1, linear_time: bool = False,
                    features: int | None = None) -> float:
    """``ckd.descend`` / ``ckd.predict(backend="descent")``: depth an int or "inf"."""
    if depth == "inf":
        K = max(int(sweeps), 1)
        work = float(B) * T * T * d
        return work * FLOP + (K * (SWEEP + work * SOLVE) if K > 1 else work * SOLVE)
    N = float(depth)
    if linear_time:
        width = float(features) if features is not None else float(d)
        return N * (LAYER + 8.0 * B * T * d * width * FLOP)
    return N * (LAYER + 4.0 * B * T * T * d * FLOP)


def transformer_seconds(B: int, T: int, d: int, depth: int) -> float:
    """``ckd.predict(backend="transformer")``: the construction's layers, built and run."""
    return float(depth) * (TLAYER + 16.0 * B * T * T * d * FLOP)


def onestep_work(method: str, depth: Any, T: int, d: int) -> float:
    """Units of ``ONESTEP`` for one sequence and one expert (doubling blocks: sum of b^p ~ 8/7 T^p)."""
    if method == "krr":
        return 8 / 7 * float(T) ** 3
    if method == "ckd":  # depth 1: local moments, (d+1)^2 + d value channels; depth inf: d + 1 targets
        return 4 / 3 * float(T) ** 2 * ((d + 1) ** 2 + d if depth != "inf" else d + 1)
    if method == "analogues":
        return 4 / 3 * float(T) ** 2 * d
    return 0.0


def fit_cubes(method: str, T: int, c: int, *, sweeps: int | None = None, layers: int | None = None) -> float:
    """One fit of a rollout's kernel map on the pairs of a context of T tokens (c targets), in units of
    n^3 (n pairs: T for krr, T / 2 for ckd, whose pairs are thinned by 2): krr one Cholesky; ckd K
    sweeps, plain (2 K n^2 c) or by repeated squaring ((4 + 2 log2 K) n^3), whichever ``ckd.rollout``
    takes, or L layers of each of the three iterations (2 L n^2 c each)."""
    if method == "krr":
        return float(T) ** 3
    n = max(float(T) / 2, 1.0)
    if layers is not None:
        return 3 * 2.0 * layers * n * n * c
    K = 2**20 if sweeps is None else int(sweeps)
    return n ** 3 * min(2.0 * K * c / n, 4 + 2 * math.log2(max(K, 1)))


def forecast_seconds(method: str, B: int, T: int, d: int, *, depth: Any = 1, experts: int = 1,
                     horizon: int | None = None, univariate: bool = False, embed: int = 5,
                     fits: int = 1, cubes: float = 0.0, layers: int = 0) -> float:
    """``ckd.forecast``: one step (horizon None) or a rollout of ``horizon`` steps. ``experts``: the
    settings a one-step method runs; ``fits`` x ``cubes``: a rollout's kernel fits (grid x held-out
    origins + 1) and the n^3 units of one (``fit_cubes``); ``layers``: a transformer's depth."""
    if horizon is None:
        key = "ckd-inf" if method == "ckd" and depth == "inf" else method
        return B * experts * onestep_work(method, depth, T, d) * ONESTEP.get(key, 0.0)
    H = float(horizon)
    series, c = (B * d, 1) if univariate else (B, d)
    D = embed if univariate else 2
    if method in ("ckd", "krr"):
        return series * (fits * cubes * CHOL + H * (STEP + float(T) * D * c * FLOP))
    if method == "analogues":
        Dm = embed if univariate else 1
        return series * (H * STEP + (T * H + H * H / 2) * Dm * c * SCAN)
    if method == "transformer":
        L = max(int(layers), 1)
        mean_len = T + H / 2
        return H * (L * 3 * LAYER + 16.0 * B * mean_len * mean_len * d * L * FLOP)
    return 0.0


def train_seconds(steps: int, batch: int, length: int, width: int, layers: int, evals: int = 1) -> float:
    """``ckd train``: every step draws fresh prompts and runs forward, backward and AdamW; its work grows as
    batch x length x (length + width) x layers (attention scores and projections, with the task's draws);
    ``evals`` evaluations on held-out prompts (every --eval-every steps and the last) cost EVAL each, scaled
    by the same size relative to the default run's."""
    size = float(batch) * length * (length + width) * layers
    return float(steps) * (TSTEP + size * TRAIN) + evals * EVAL * max(size / DEFAULT_TRAIN_SIZE, 1.0)
