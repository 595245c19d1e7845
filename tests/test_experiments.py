"""Smoke tests of ``ckd reproduce``: every experiment of issue 4 runs in its quick form
(once, through the CLI), writes its figure and numbers, and shows the trend that
docs/results.md asserts."""

import json
import math

import numpy as np
import pytest
import torch

from ckd.cli import main
from ckd.experiments import EXPERIMENTS

MINE = ["depth-and-length", "kaczmarz-limit", "continuous-depth", "induction-head", "raw-tokens",
        "transformer-equals-descent"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every experiment above once (quick) into a temporary folder; return (folder, rc)."""
    out = tmp_path_factory.mktemp("reproduce")
    threads = torch.get_num_threads()
    try:
        rc = main(["reproduce", *MINE, "--quick", "--out", str(out), "--seed", "0"])
    finally:
        torch.set_num_threads(threads)
    return out, rc


def numbers(results, name: str) -> dict:
    out, _ = results
    return json.loads((out / f"{name}.json").read_text())


def median(q: dict) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in q["median"]], dtype=float)


def test_all_registered_and_run(results):
    out, rc = results
    assert rc == 0
    for name in MINE:
        assert name in EXPERIMENTS
        for suffix in ("png", "pdf", "json"):
            assert (out / f"{name}.{suffix}").stat().st_size > 0, (name, suffix)
    summary = (out / "summary.md").read_text()
    assert all(f"## {name}" in summary for name in MINE)
    recorded = json.loads((out / "summary.json").read_text())
    for name in MINE:
        assert recorded[name]["status"] == "ok" and recorded[name]["seed"] == 0 and recorded[name]["quick"]
        for key, value in recorded[name]["headline"].items():
            if isinstance(value, float):  # NaN only for "the first t where ...": never, in this run
                assert math.isfinite(value) or (math.isnan(value) and "t where" in key), (name, key)


def test_depth_and_length_trends(results):
    r = numbers(results, "depth-and-length")["settings"]
    inf = median(r["linear"]["per_depth"]["inf"])
    assert inf[-1] < 0.1 * inf[0]  # orthogonal case: depth-inf error falls with t
    assert median(r["periodic-exp"]["per_depth"]["inf"])[-1] < 1e-8  # periodic: -> 0 (float64 floor)
    t = 9  # row t = 10: finite depth improves with depth while t is small
    assert median(r["linear"]["per_depth"]["32"])[t] < median(r["linear"]["per_depth"]["1"])[t]
    depth32 = median(r["rotation"]["per_depth"]["32"])  # ... but with the default step blows up for long t
    assert depth32[-1] > 10 * depth32[9]


def test_kaczmarz_limit_trends(results):
    r = numbers(results, "kaczmarz-limit")
    assert median(r["distance_vs_depth"]["0.5"])[-1] < 1e-10  # converges to the Kaczmarz sweep
    region = r["region"]["10"]["median"]
    c = np.array(r["c_grid"])
    inside = [v for v, ci in zip(region, c) if 0.2 < ci < 1.5]
    outside = [v for v, ci in zip(region, c) if ci > 2.05]
    assert max(inside) < 1e-8 and all(v is None or v > 1 for v in outside)
    growth = median(r["growth"]["1.0"])
    assert growth[-1] > 1e3 * growth[4]  # transient growth explodes with t
    p = {k: median(v) for k, v in r["precision"].items()}
    eps32 = float(torch.finfo(torch.float32).eps)
    # float32 forward substitution keeps float64's error (up to eps32) at these short prompts ...
    assert np.all(p["depth inf float32"] <= 10 * np.maximum(p["depth inf float64"], eps32))
    assert p["depth inf float64"][-1] < 0.1 * p["depth inf float64"][0]  # ... which falls with t
    # finite depth with the default step: both dtypes grow alike (the transient, not rounding)
    assert p["depth 8 float64"][-1] > 10 * p["depth 8 float64"][0]
    assert np.allclose(p["depth 8 float32"], p["depth 8 float64"], rtol=1e-2)
    # where float64 converges below float32's resolution, float32 stops at ~eps32
    gauss32, gauss64 = p["periodic, gaussian, depth inf float32"], p["periodic, gaussian, depth inf float64"]
    assert gauss64[-1] < 1e-3 * eps32 and eps32 / 10 < gauss32[-1] < 1e-3

def test_continuous_depth_trends(results):
    r = numbers(results, "continuous-depth")
    assert 1.8 < r["headline"]["tau=1.0: error ratio N=512 -> 1024 (Euler: 2)"] < 2.2  # Euler, first order
    for T, q in r["to_limit"].items():
        assert median(q)[-1] < 1e-10, T  # p(tau) -> p_inf as tau grows


def test_induction_head_trends(results):
    r = numbers(results, "induction-head")
    betas = r["config"]["betas"]
    p5 = median(r["vs_beta"]["5"])
    assert p5[betas.index(32)] < 1e-4 < p5[betas.index(4)]
    assert -20 < r["headline"]["P=5, beta=32: fitted slope of log error vs delta^2 (theory: -beta/2 = -16)"] < -12


def test_raw_tokens_trends(results):
    r = numbers(results, "raw-tokens")
    assert all(v < 1e-12 for v in r["linear_prev"].values())  # exact copy with linear attention
    betas = r["config"]["prev_betas"]
    for key, q in r["vs_prev_beta"].items():
        m = median(q)
        assert m[betas.index(32)] < 1e-9 < m[betas.index(8)], key


def test_transformer_equals_descent(results):
    r = numbers(results, "transformer-equals-descent")
    assert r["headline"]["contract 1e-9 met in every row"] == "yes"
    assert len(r["rows"]) == 5 * 3 * 2 * 2 and max(row["max_rel_diff"] for row in r["rows"]) < 1e-9


def test_reproduce_rejects_bad_requests(tmp_path, capsys):
    assert main(["reproduce", "no-such-experiment", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'no-such-experiment'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    if not torch.cuda.is_available():
        assert main(["reproduce", "induction-head", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["reproduce", "induction-head", "--out", str(tmp_path / "file")]) == 2


def test_interrupted_run_continues_and_force_runs_again(tmp_path, capsys):
    """A finished experiment (same size, seed, device) is kept and skipped; another size or --force
    runs it again; --quick and --full exclude each other."""
    out = tmp_path / "r"
    threads = torch.get_num_threads()
    try:
        assert main(["reproduce", "induction-head", "--quick", "--out", str(out)]) == 0
        first = json.loads((out / "summary.json").read_text())["induction-head"]
        assert first["size"] == "quick"
        (out / "induction-head.png").unlink()  # the figure is rewritten only when the experiment runs
        capsys.readouterr()
        assert main(["reproduce", "induction-head", "sweeps", "--quick", "--out", str(out)]) == 0
        assert "kept (finished earlier" in capsys.readouterr().out
        summary = json.loads((out / "summary.json").read_text())
        assert summary["induction-head"] == first and not (out / "induction-head.png").exists()
        assert summary["sweeps"]["status"] == "ok"
        assert main(["reproduce", "induction-head", "--quick", "--force", "--out", str(out)]) == 0
        assert (out / "induction-head.png").exists()
        assert main(["reproduce", "induction-head", "--quick", "--seed", "1", "--out", str(out)]) == 0
        assert json.loads((out / "summary.json").read_text())["induction-head"]["seed"] == 1
    finally:
        torch.set_num_threads(threads)
    assert main(["reproduce", "--quick", "--full", "--out", str(tmp_path / "x")]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
