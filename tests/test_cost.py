"""Long work (issue 21, item 10): requests estimated over an hour (``ckd.cost``) are refused up front with
the estimate and what to do, unless --force; long work shows a tqdm bar on a terminal (tested with a tiny
case, a fake terminal and no delay), and nothing when stderr is not a terminal. No test here runs long:
the estimates are checked, never timed (benchmarks/cost_calibration.py compares them with measurements)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import one_error

from ckd import cost, progress
from ckd.cli import main


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x30.npy", rng.standard_normal((30, 3)))
    np.save(tmp_path / "traj.npy", np.cumsum(rng.standard_normal((200, 3)), 0))
    return tmp_path


# the audit's requests that ran for minutes or hours without a word, refused in one line before any work
REFUSED = [
    (["predict", "X30", "-o", "OUT", "--depth", "1000000000"], "--depth"),
    (["predict", "X30", "-o", "OUT", "--depth", "inf", "--sweeps", "1000000000"], "fewer --sweeps"),
    (["predict", "X30", "-o", "OUT", "--backend", "transformer", "--depth", "100000000"], "--depth"),
    (["forecast", "TRAJ", "-o", "OUT", "--horizon", "10000000", "--method", "analogues"], "--horizon"),
    (["forecast", "BIG", "-o", "OUT", "--horizon", "5", "--method", "krr"], "shorter trajectory"),
    (["demo", "--sequences", "1000000"], "fewer --sequences"),
    (["train", "--steps", "100000000", "--out", "RUN"], "fewer --steps"),
]


@pytest.mark.parametrize("argv,advice", REFUSED)
def test_absurd_requests_are_refused_up_front_with_the_estimate(files, capsys, monkeypatch, argv, advice):
    import ckd.validation

    monkeypatch.setattr(ckd.validation, "available_memory", lambda device="cpu": 10**15)  # time, not memory
    if "BIG" in argv:  # T = 30000: the shape is all the estimate reads (an .npy header of zeros on disk)
        np.lib.format.open_memmap(files / "big.npy", mode="w+", dtype=np.float64, shape=(30000, 2)).flush()
    names = {"X30": files / "x30.npy", "TRAJ": files / "traj.npy", "BIG": files / "big.npy",
             "OUT": files / "out.npy", "RUN": files / "run"}
    argv = [str(names.get(a, a)) for a in argv]
    before = sorted(p.name for p in files.iterdir())
    assert main(argv) == 2
    line = one_error(capsys, "would take about", " h here", advice, "or pass --force to run it anyway")
    hours = float(line.split("would take about ")[1].split(" h")[0])
    assert hours > 1
    assert sorted(p.name for p in files.iterdir()) == before  # nothing written, no run folder


def test_force_lets_a_request_through_and_small_ones_pass():
    with pytest.raises(cost.TooLong, match="about 2 h"):
        cost.check_time(7200, "x", "do less")
    cost.check_time(7200, "x", "do less", force=True)
    cost.check_time(3599, "x", "do less")
    assert issubclass(cost.TooLong, ValueError)  # the CLI's one-line error path


def test_the_audit_cases_that_take_minutes_are_estimated_long_enough_for_a_bar():
    """Estimated above the bar's threshold (so a terminal shows progress) and below the refusal."""
    hour = cost.LIMIT_SECONDS
    krr_fits = 3 * 3 * 2 * 2 + 1  # sigma x ridge x embed x held-out origins, + the final fit
    cases = {
        "transformer depth 100000, T 30": cost.transformer_seconds(1, 30, 3, 100000),
        "sweeps 1000000, T 30": cost.descent_seconds(1, 30, 3, "inf", sweeps=1000000),
        "analogues horizon 100000, T 200": cost.forecast_seconds("analogues", 1, 200, 3, horizon=100000),
        "krr rollout T 3000": cost.forecast_seconds("krr", 1, 3000, 3, horizon=10, fits=krr_fits,
                                                    cubes=cost.fit_cubes("krr", 3000, 3)),
        "one-step krr T 4000": cost.forecast_seconds("krr", 1, 4000, 3, experts=6),
        "400 training steps of the default run": cost.train_seconds(400, 32, 32, 14, 2, 5),
    }
    for name, seconds in cases.items():
        assert progress.PROGRESS_MIN_SECONDS <= seconds < hour, (name, seconds)
    assert cost.descent_seconds(1, 30, 3, 10**9) > hour  # the audit's --depth 1000000000


def test_estimates_grow_with_every_size():
    base = dict(B=1, T=100, d=3, depth=16)
    for key, bigger in [("B", 2), ("T", 200), ("d", 6), ("depth", 32)]:
        args = dict(base, **{key: bigger})
        assert cost.descent_seconds(**args) > cost.descent_seconds(**base), key
    assert cost.fit_cubes("ckd", 400, 2, sweeps=2**20) > cost.fit_cubes("ckd", 400, 2, sweeps=2**4)
    assert cost.train_seconds(20, 32, 64, 14, 2) > cost.train_seconds(10, 32, 64, 14, 2)
    assert cost.hours(30) == "30 s" and cost.hours(600) == "10 min" and cost.hours(1e9) == "more than a year"


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_long_work_shows_a_bar_on_a_terminal_only(files, monkeypatch, terminal):
    """A tiny forecast made to look long (its estimate patched to 30 s, no delay): a bar on a terminal,
    nothing on a pipe."""
    import sys

    import ckd.commands.forecast as command

    monkeypatch.setattr(progress, "PROGRESS_DELAY", 0.0)
    monkeypatch.setattr(command, "estimate", lambda *a, **k: 30.0)
    err = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["forecast", str(files / "traj.npy"), "-o", str(files / "f.npy"), "--horizon", "3",
                 "--method", "analogues"]) == 0
    text = err.getvalue()
    if terminal:
        assert "ckd forecast --horizon 3" in text and "/30 s estimated" in text, text
    else:
        assert text == ""
    assert np.load(files / "f.npy").shape == (3, 3)
