"""NumPy and torch integer scalars are integers at every public integer argument (issue 21, item 8);
bools are not. Each case runs with a Python int, np.int64, np.int32, np.uint8 and a 0-d torch int64
tensor and must give the Python int's answer; True is refused where 1 is accepted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ckd
from ckd.construction import construct
from ckd.forecast import forecast
from ckd.streaming import Streaming
from ckd.train import TrainConfig
from ckd.validation import check_int, integer_value

KINDS = {"int": int, "np.int64": np.int64, "np.int32": np.int32, "np.uint8": np.uint8,
         "torch.int64": lambda v: torch.tensor(v, dtype=torch.int64)}

X = np.cumsum(np.random.default_rng(0).standard_normal((40, 2)), 0) / 5

# name -> (call with the integer n, n): the result must not depend on the integer's kind
CASES = {
    "forecast horizon": (lambda n: forecast(X, "analogues", horizon=n), 5),
    "forecast embed": (lambda n: forecast(X, "parrot", horizon=3, embed=n), 3),
    "forecast embed univariate": (lambda n: forecast(X, "analogues", horizon=2, univariate=True, embed=n), 3),
    "forecast k": (lambda n: forecast(X, "analogues", horizon=2, k=n), 2),
    "forecast one-step k": (lambda n: forecast(X, "analogues", k=n), 2),
    "forecast sweeps": (lambda n: forecast(X[:24], "ckd", horizon=2, sweeps=n, sigma=1.0, ridge=1e-6), 4),
    "forecast layers": (lambda n: forecast(X[:24], "ckd", horizon=2, layers=n, sigma=1.0, ridge=1e-6), 3),
    "predict depth": (lambda n: ckd.predict(X, "exp", depth=n), 3),
    "predict sweeps": (lambda n: ckd.predict(X, "exp", depth="inf", sweeps=n), 2),
    "predict transformer depth": (lambda n: ckd.predict(X[:12], "exp", depth=n, backend="transformer"), 2),
    "predict features": (lambda n: ckd.predict(X, "exp", depth=2, method="linear", features=n), 16),
    "predict feature_seed": (lambda n: ckd.predict(X, "exp", depth=2, method="linear", features=16,
                                                   feature_seed=n), 3),
    "make_task sizes": (lambda n: ckd.make_task("linear", n, n + 3, n, seed=n).x, 2),
    "Streaming dim": (lambda n: Streaming("exp", dim=n).dim, 2),
    "construct dim, depth": (lambda n: (lambda m: (m.config.n_layers, m.config.dim, m.config.max_len))(
        construct("exp", dim=n, depth=n, step=0.1, heads=n, max_len=n + 8)), 2),
    "TrainConfig": (lambda n: TrainConfig(steps=n, batch=n, length=n + 3, dim=n, layers=n, seed=n).validate(), 2),
}


def same(a, b) -> bool:
    if isinstance(a, TrainConfig):
        return a == b and all(type(getattr(a, f)) is type(getattr(b, f)) for f in ("steps", "batch", "dim", "seed"))
    if isinstance(a, (np.ndarray, torch.Tensor)):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("case", list(CASES))
def test_integer_scalars_of_every_kind_are_integers(case):
    call, n = CASES[case]
    want = call(n)
    for kind, make in KINDS.items():
        if kind != "int":
            assert same(call(make(n)), want), (case, kind)


@pytest.mark.parametrize("case", ["forecast horizon", "forecast embed", "forecast k", "predict depth",
                                  "Streaming dim", "TrainConfig"])
def test_bools_are_not_integers(case):
    call, _ = CASES[case]
    with pytest.raises((TypeError, ValueError)):
        call(True)


def test_integer_value_and_check_int():
    assert integer_value(np.int16(-3)) == -3 and type(integer_value(np.int16(-3))) is int
    assert integer_value(torch.tensor(7)) == 7 and integer_value(torch.tensor(7.0)) is None
    assert integer_value(torch.tensor(7.0), floats=True) == 7 and integer_value(3.0, floats=True) == 3
    for bad in (True, np.bool_(True), torch.tensor(True), torch.tensor([3]), "3", 3.5, None, 2 + 0j):
        assert integer_value(bad, floats=True) is None, bad
    assert check_int(torch.tensor(5, dtype=torch.int32), "n", minimum=1) == 5
    with pytest.raises(TypeError, match="n must be an integer"):
        check_int(torch.tensor(True), "n")
    with pytest.raises(ValueError, match="n must be an integer"):
        check_int(torch.tensor(2.5), "n")
    with pytest.raises(ValueError, match="horizon must be an integer in 1 .. 2"):
        forecast(X, "last", horizon=np.uint64(2**64 - 1))
