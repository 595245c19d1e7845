"""The thread rule (``ckd.threads``, issue 17): small work runs on one thread, the caller's count
comes back afterwards (also after an exception), large work keeps every thread."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ckd
import ckd.forecast
from ckd import threads

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_work_one_thread_then_restored(two_threads):
    with threads.threads_for(threads.SMALL_FLOPS - 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with threads.small_ops():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_large_work_keeps_every_thread(two_threads):
    with threads.threads_for(threads.SMALL_FLOPS):
        assert torch.get_num_threads() == 2


def test_restored_after_an_exception(two_threads):
    with pytest.raises(ZeroDivisionError), threads.small_ops():
        _ = 1 / 0
    assert torch.get_num_threads() == 2


def test_a_lower_count_of_the_caller_is_kept(two_threads):
    torch.set_num_threads(1)
    with threads.threads(2):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("path", ["linear-time", "streaming", "rollout", "one-step", "sweeps"])
def test_library_paths_run_small_work_on_one_thread(two_threads, monkeypatch, path):
    """The scoped paths run their small operations on one thread and give the caller's count back."""
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    x = ckd.make_task("linear", 1, 300, 3, seed=0).x
    if path == "linear-time":
        ckd.predict(x, "linear", depth="inf")
    elif path == "streaming":
        s = ckd.Streaming("exp", dim=3)
        for row in x[0, :20]:
            s.push(row)
    elif path == "rollout":
        ckd.forecast.forecast(x[0].numpy(), "krr", horizon=5)
    elif path == "one-step":
        ckd.forecast.forecast(x[0, :100].numpy(), "ckd")
    else:
        ckd.predict(x, "exp", depth="inf", sweeps=3)
    assert 1 in seen and seen[-1] == 2 and torch.get_num_threads() == 2


THREADED = """
import os, sys
import numpy as np
import torch
import ckd.forecast
x = np.load(sys.argv[1])
np.save(sys.argv[2], ckd.forecast.forecast(x, sys.argv[3], horizon=None if sys.argv[4] == "0" else int(sys.argv[4])))
assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
"""


def lorenz(T: int, dt: float = 0.01) -> np.ndarray:
    """A Lorenz-63 trajectory (RK4): chaotic, so a rollout amplifies any rounding difference."""
    def f(v):
        return np.array([10.0 * (v[1] - v[0]), v[0] * (28.0 - v[2]) - v[1], v[0] * v[1] - 8.0 / 3.0 * v[2]])
    v, out = np.ones(3), []
    for i in range(500 + T):
        k1 = f(v)
        k2 = f(v + dt / 2 * k1)
        k3 = f(v + dt / 2 * k2)
        v = v + dt / 6 * (k1 + 2 * k2 + 2 * k3 + f(v + dt * k3))
        if i >= 500:
            out.append(v)
    return np.array(out)


@pytest.mark.parametrize("method, horizon", [("krr", 300), ("krr", 0)])
def test_small_forecasts_do_not_depend_on_the_thread_count(tmp_path, method, horizon):
    """Under the thread rule a (400, 3) context is forecast on one thread whatever torch's count:
    the same bits with OMP_NUM_THREADS=1 and 2 (without the rule they differ: 2.3e-7 for this rollout,
    1.3e-11 one step; benchmarks/thread_determinism.py)."""
    np.save(tmp_path / "x.npy", lorenz(400))
    outs = []
    for n in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": str(n), "PYTHONPATH": SRC}
        out = tmp_path / f"{n}.npy"
        done = subprocess.run([sys.executable, "-c", THREADED, str(tmp_path / "x.npy"), str(out), method, str(horizon)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outs.append(np.load(out))
    assert np.array_equal(outs[0], outs[1])
