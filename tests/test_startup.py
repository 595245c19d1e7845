"""Start-up of the ``ckd`` command (issue 17): ``ckd --help``, argument errors and the NumPy-only
forecasts do not import torch, matplotlib or dysts; ``import ckd`` is lazy; the command sets
``OMP_WAIT_POLICY=PASSIVE`` unless the user set it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckd
import ckd.cli
import ckd.forecast

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "matplotlib", "dysts")
# runs ckd's main on the arguments and prints the exit status, the heavy modules loaded and the policy
PROBE = """
import json, os, sys
import ckd.cli
try:
    rc = ckd.cli.main()
except SystemExit as exit:
    rc = exit.code
import gc
print(json.dumps([rc, [m for m in {heavy!r} if m in sys.modules], os.environ.get("OMP_WAIT_POLICY"),
                  gc.get_freeze_count()]))
"""


def probe(args, cwd, **env):
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ.update(PYTHONPATH=SRC, **env)
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.fixture
def context(tmp_path):
    x = np.cumsum(np.random.default_rng(0).normal(size=(60, 3)), 0)
    np.save(tmp_path / "ctx.npy", x)
    return x


@pytest.mark.parametrize("args, rc", [
    (["--help"], 0),
    (["forecast", "--help"], 0),
    (["forecast", "ctx.npy", "-o", "f.npy", "--k", "0"], 2),
    (["predict", "ctx.npy", "-o", "p.npy", "--depth"], 2),
    (["compare", "ctx.npy", "--data", "ctx.npy", "--beta", "1e400", "--out", "c"], 2),
    (["bogus"], 2),
    *[(["forecast", "ctx.npy", "-o", "f.npy", "--horizon", "30", "--method", m], 0)
      for m in ("parrot", "last", "mean")],
])
def test_light_paths_import_no_torch(tmp_path, context, args, rc):
    (got_rc, heavy, policy, _), err = probe(args, tmp_path)
    assert got_rc == rc, err
    assert heavy == [], f"{args} imported {heavy}"
    assert policy == "PASSIVE"
    if rc == 2:  # a user mistake: one line
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ckd: error:"), err


@pytest.mark.parametrize("args, rc", [(["forecast", "ctx.npy", "-o", "f.npy", "--horizon", "30"], 0),
                                      (["forecast", "ctx.npy", "-o", "f.npy", "--k", "0"], 2)])
def test_program_freezes_its_objects_before_exit(tmp_path, context, args, rc):
    """Run as a program, ckd moves the objects torch's import made out of the collector's reach
    before the interpreter exits (the exit's collection of them cost ~0.3 s; docs/performance.md),
    on success and on error alike."""
    (got_rc, heavy, _, frozen), err = probe(args, tmp_path)
    assert got_rc == rc, err
    assert frozen > 10_000 if "torch" in heavy else frozen > 0


@pytest.mark.parametrize("method", ["parrot", "last", "mean"])
@pytest.mark.parametrize("shape", [(60, 3), (2, 40, 2)])
def test_numpy_forecast_is_the_library_bit_for_bit(tmp_path, method, shape):
    """The torch-free path of ckd forecast gives the bits of ckd.forecast (the same functions)."""
    x = np.cumsum(np.random.default_rng(1).normal(size=shape), -2)
    np.save(tmp_path / "ctx.npy", x)
    embed = ["--embed", "4"] if method == "parrot" else []  # embed is parrot's alone (others refuse it)
    (rc, heavy, _, _), err = probe(["forecast", "ctx.npy", "-o", "f.npy", "--horizon", "25", "--method", method,
                                 *embed, "--report", "r.json"], tmp_path)
    assert rc == 0 and heavy == [], err
    expected = ckd.forecast.forecast(x, method, horizon=25, **({"embed": 4} if embed else {}))
    got = np.load(tmp_path / "f.npy")
    assert got.shape == expected.shape and np.array_equal(got, expected)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["stopped_steps"] == [0] * (1 if len(shape) == 2 else shape[0])
    assert report["sequences"][0]["settings"] == ({"embed": 4} if method == "parrot" else {})


def test_library_path_still_used_when_needed(tmp_path, context):
    """A context too short for the window goes through the library, which names the problem."""
    (rc, heavy, _, _), err = probe(["forecast", "ctx.npy", "-o", "f.npy", "--horizon", "5", "--method", "parrot",
                                 "--embed", "60"], tmp_path)
    assert rc == 2 and "torch" in heavy and "needs a context of at least 61 rows" in err


def test_fast_path_refuses_what_the_library_refuses(tmp_path, context):
    """--embed with last (a setting last does not read) is refused as ckd.forecast refuses it, not ignored."""
    (rc, _, _, _), err = probe(["forecast", "ctx.npy", "-o", "f.npy", "--horizon", "5", "--method", "last",
                             "--embed", "4"], tmp_path)
    assert rc == 2 and "embed applies to method parrot" in err and not (tmp_path / "f.npy").exists()


def test_user_policy_kept(tmp_path):
    (rc, _, policy, _), _ = probe(["--help"], tmp_path, OMP_WAIT_POLICY="ACTIVE")
    assert rc == 0 and policy == "ACTIVE"


def test_main_from_python_leaves_the_environment(monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert ckd.cli.main(["bogus"]) == 2
    assert "OMP_WAIT_POLICY" not in os.environ


def test_import_ckd_is_lazy_and_complete():
    code = ("import sys, ckd; assert 'torch' not in sys.modules, 'import ckd loaded torch'; "
            "names = dir(ckd); assert set(ckd.__all__) <= set(names); "
            "[getattr(ckd, n) for n in ckd.__all__]; assert callable(ckd.compare) and callable(ckd.evaluate)")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ckd.__all__ == sorted(["KERNELS", "TASKS", "CausalMatrices", "StabilityWarning", "Streaming", "Task",
                                  "causal_matrices", "compare", "continuous_depth", "descend", "finite_depth",
                                  "fit_step", "infinite_depth", "kernel_matrix", "make_task", "next_token_error",
                                  "predict"])
    with pytest.raises(AttributeError):
        ckd.no_such_name  # noqa: B018
