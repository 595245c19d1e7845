"""The chaos-forecast benchmark (SPEC §8): metrics against hand computations, the protocol's
initial conditions, the trajectory cache, the k-NN KL estimator, and a quick run end to end."""

import csv
import json
import math

import numpy as np
import pytest

from ckd.experiments import chaos_forecast as cf
from ckd.experiments.chaos_forecast import data as cf_data  # _integrate and _checksum live here
from ckd.metrics import rolling_smape, smape, smape_terms, vpt

# ----------------------------------------------------------------------------- metrics


def test_smape_terms_by_hand():
    truth = np.array([1.0, 0.0, -2.0, 0.0, 4.0])
    pred = np.array([3.0, 0.0, 2.0, np.inf, 4.0])
    # 200*2/4 = 100; 0/0 := 0; 200*4/4 = 200 (opposite signs: the maximum); non-finite: 200; exact: 0
    assert smape_terms(truth, pred).tolist() == [100.0, 0.0, 200.0, 200.0, 0.0]
    assert smape(truth, pred) == pytest.approx(500.0 / 5, rel=1e-12)
    assert smape_terms(np.array([2.0]), np.array([np.nan])).tolist() == [200.0]


def test_smape_is_twice_dysts_default_scale():
    """dysts' ``smape`` defaults to the 0-100 scale (SPEC §8: do not use that default)."""
    dm = pytest.importorskip("dysts.metrics")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    assert smape(x, y) == pytest.approx(2 * dm.smape(x, y, eps=0.0), rel=1e-12)
    assert smape(x, y) == pytest.approx(dm.smape(x, y, eps=0.0, scaled=False), rel=1e-12)


def test_rolling_smape_by_hand():
    truth = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])  # (H=4, d=2)
    pred = np.array([[1.0, 2.0], [3.0, 2.0], [1.0, 6.0], [1.0, 2.0]])
    # per step, mean over coordinates: 0; (100 + 0)/2 = 50; (0 + 200*4/8)/2 = 50; 0
    r = rolling_smape(truth, pred)
    assert r == pytest.approx([0.0, 25.0, 100.0 / 3, 25.0], rel=1e-12)
    batch = rolling_smape(np.stack([truth, truth]), np.stack([pred, truth]))
    assert batch.shape == (2, 4) and batch[1].tolist() == [0.0] * 4


def test_vpt_by_hand():
    truth = np.ones((6, 1))
    pred = np.array([[1.0], [1.0], [3.0], [1.0], [1.0], [1.0]])
    # rolling: 0, 0, 100/3 > 30 at h = 3
    assert float(vpt(truth, pred)) == pytest.approx(3 / 30, rel=1e-12)
    assert float(vpt(truth, pred, threshold=40.0)) == pytest.approx(6 / 30)  # never over 40: H / 30
    assert float(vpt(truth, truth, pts_per_lyapunov=2)) == pytest.approx(3.0)
    full = np.ones((300, 3))
    assert float(vpt(full, full)) == 10.0  # the protocol's horizon: 10 Lyapunov times when never
    assert float(vpt(full, -full)) == pytest.approx(1 / 30)  # wrong from the first step
    assert vpt(np.stack([truth, truth]), np.stack([pred, truth])).tolist() == pytest.approx([0.1, 0.2])


# ----------------------------------------------------------------------------- protocol and cache


def test_ic_indices_follow_the_protocol_and_keep_global_state():
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    idx = cf.ic_indices()
    np.random.seed(0)
    expected = np.random.choice(1000, 20, replace=False)
    assert idx.tolist() == expected.tolist() and len(set(idx.tolist())) == 20
    np.random.seed(123)
    cf.ic_indices()
    assert np.random.random() == before


def test_cache_dir_env(monkeypatch, tmp_path):
    pytest.importorskip("dysts")  # the cache key names its version
    monkeypatch.setenv("CKD_CACHE_DIR", str(tmp_path / "c"))
    assert cf.cache_dir().parent == tmp_path / "c" / "chaos-forecast"
    monkeypatch.delenv("CKD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cf.cache_dir().parent == tmp_path / "x" / "ckd" / "chaos-forecast"
    assert "dysts-" in cf.cache_dir().name and cf.INTEGRATOR["method"] in cf.cache_dir().name


def test_cache_is_deterministic_and_a_rerun_does_not_integrate(monkeypatch, tmp_path):
    pytest.importorskip("dysts")
    a = cf.SystemData("Lorenz", tmp_path / "a")
    x = a.trajectory(0)
    assert x.shape == (cf.PROTOCOL["length"], 3) and a.integrations == 2  # the 20 ICs, then trajectory 0
    b = cf.SystemData("Lorenz", tmp_path / "b")
    assert np.array_equal(b.trajectory(0), x)  # integrated again elsewhere: identical bits
    meta = json.loads((tmp_path / "a" / "Lorenz" / "meta.json").read_text())
    assert meta["pieces"]["ic00"]["sha256"] == cf_data._checksum(x) == b.meta["pieces"]["ic00"]["sha256"]
    assert meta["integrator"] == cf.INTEGRATOR and meta["dysts"] == cf.dysts_version()
    assert np.allclose(x[0], a.ics()[0], rtol=1e-9)  # trajectory 0 starts from initial condition 0

    def forbidden(*args, **kwargs):
        raise AssertionError("integrated although cached")

    monkeypatch.setattr(cf_data, "_integrate", forbidden)
    c = cf.SystemData("Lorenz", tmp_path / "a")
    assert np.array_equal(c.trajectory(0), x) and c.integrations == 0
    assert sorted(p.name for p in (tmp_path / "a" / "Lorenz").iterdir()) == ["ic00.npy", "ics.npy", "meta.json"]
    index = cf.write_index(tmp_path / "a")
    assert index["systems"]["Lorenz"]["ic00"]["status"] == "ok"
    assert json.loads((tmp_path / "a" / "index.json").read_text()) == index


def test_failures_are_recorded_and_excluded(monkeypatch, tmp_path):
    pytest.importorskip("dysts")
    monkeypatch.setattr(cf_data, "_integrate", lambda model, n, init_cond=None, **kw: None)
    res = cf.run_system("Lorenz", n_ics=2, horizon=30, long_steps=0, root=tmp_path)
    assert res["status"] == "excluded" and "integration did not complete" in res["reason"]
    meta = json.loads((tmp_path / "Lorenz" / "meta.json").read_text())
    assert meta["pieces"]["ics"]["status"] == "failed"
    assert meta["pieces"]["ics"]["reason"] == "integration did not complete"
    assert cf.SystemData("Lorenz", tmp_path).ics() is None  # recorded: not retried
    assert cf.check_trajectory(np.full((812, 2), np.nan), 812) == "non-finite values"
    assert cf.check_trajectory(np.ones((812, 2)), 812) == "degenerate: constant over the test window"
    assert cf.check_trajectory(np.ones((5, 2)), 812) == "integration did not complete"
    assert cf.check_trajectory(np.arange(1624.0).reshape(812, 2), 812) is None


def test_a_timeout_skips_the_rest_of_the_system(monkeypatch, tmp_path):
    pytest.importorskip("dysts")
    calls = []

    def slow(model, n, init_cond=None, **kw):
        calls.append(n)
        if init_cond is None:
            return np.ones((n, 3)) + np.arange(n)[:, None]  # the initial-condition trajectory
        raise cf.IntegrationTimeout(f"timed out after {cf.TIMEOUT} s of CPU")

    monkeypatch.setattr(cf_data, "_integrate", slow)
    res = cf.run_system("Lorenz", n_ics=3, horizon=30, long_steps=100, root=tmp_path)
    assert calls == [1000, 812]  # the ICs, trajectory 0 (times out), then nothing more
    assert res["status"] == "excluded"
    pieces = json.loads((tmp_path / "Lorenz" / "meta.json").read_text())["pieces"]
    assert pieces["ic00"]["reason"] == f"IntegrationTimeout: timed out after {cf.TIMEOUT} s of CPU"
    assert pieces["ic01"]["reason"] == pieces["ic02"]["reason"] == "skipped: ic00 timed out"


def test_workers_env(monkeypatch):
    monkeypatch.delenv("CKD_WORKERS", raising=False)
    assert cf.workers() >= 1  # default: the CPUs this process may use
    monkeypatch.setenv("CKD_WORKERS", "3")
    assert cf.workers() == 3
    for bad in ("0", "x"):
        monkeypatch.setenv("CKD_WORKERS", bad)
        with pytest.raises(ValueError, match="CKD_WORKERS"):
            cf.workers()


# ----------------------------------------------------------------------------- attractor test


def test_knn_kl_gaussians_closed_form():
    """KL(N(0, 1) || N(1, 1)) = 1/2 and KL(N(0, I) || N(0, 4 I)) in 2-d = log 4 - 1 + 1/4
    (the estimator standardises by p's moments, which leaves KL unchanged)."""
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    p = rng.normal(size=(4000, 1))
    assert cf.knn_kl(p, rng.normal(1.0, 1.0, size=(4000, 1))) == pytest.approx(0.5, abs=0.08)
    assert abs(cf.knn_kl(p, rng.normal(size=(4000, 1)))) < 0.05
    p2 = rng.normal(size=(4000, 2))
    q2 = rng.normal(0.0, 2.0, size=(4000, 2))
    assert cf.knn_kl(p2, q2) == pytest.approx(math.log(4) - 1 + 0.25, abs=0.1)
    assert cf.knn_kl(p, np.full((10, 1), np.inf)) == math.inf


# ----------------------------------------------------------------------------- smoke run


def test_quick_run_end_to_end(monkeypatch, tmp_path):
    pytest.importorskip("dysts")
    from ckd.cli import main

    monkeypatch.setenv("CKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cf, "QUICK", {**cf.QUICK, "systems": ("Lorenz",)})
    out = tmp_path / "out"
    assert main(["reproduce", "chaos-forecast", "--quick", "--out", str(out)]) == 0
    for name in ("chaos-forecast", "chaos-forecast_examples", "chaos-forecast_attractor"):
        assert (out / f"{name}.png").stat().st_size > 0
    data = json.loads((out / "chaos-forecast.json").read_text())
    r = data["systems"]["Lorenz"]
    assert r["status"] == "ok" and r["ics_used"] == [0]
    assert set(r["vpt"]) == {lab for lab, _, _ in cf.RUNS}
    assert all(0 < v[0] <= cf.QUICK["horizon"] / 30 for v in r["vpt"].values())
    assert r["vpt"]["mean"][0] < 0.5 and r["vpt"]["krr"][0] > r["vpt"]["mean"][0]
    assert set(r["attractor"]["kl"]) == set(r["attractor"]["hellinger"]) == set(cf.LONG_RUNS)
    assert all(0 <= v <= 1 for v in r["attractor"]["hellinger"].values())
    assert data["config"]["integrator"] == cf.INTEGRATOR
    md = (out / "chaos-forecast.md").read_text()
    assert "| ckd |" in md and "| parrot |" in md and "Univariate" in md
    with open(out / "chaos-forecast.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["run"] for row in rows] == [lab for lab, _, _ in cf.RUNS]
    summary = json.loads((out / "summary.json").read_text())["chaos-forecast"]
    assert summary["status"] == "ok" and summary["headline"]["systems used"] == 1.0
    assert r["integrations"] == 3  # initial conditions, trajectory 0, the long trajectory
    # a rerun reads the cache: no integration
    monkeypatch.setattr(cf_data, "_integrate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("integrated")))
    again = cf.SystemData("Lorenz")
    assert again.trajectory(0) is not None and again.long(cf.QUICK["long"]) is not None
    assert again.integrations == 0


def test_reproduce_refuses_a_bad_worker_count_in_one_line(tmp_path, capsys, monkeypatch):
    """CKD_WORKERS is checked with the other arguments: exit 2, one line, nothing written."""
    from conftest import one_error

    from ckd.cli import main

    monkeypatch.setenv("CKD_WORKERS", "zero")
    assert main(["reproduce", "chaos-forecast", "--quick", "--out", str(tmp_path / "out")]) == 2
    one_error(capsys, "CKD_WORKERS")
    assert not (tmp_path / "out").exists()


def test_every_run_has_a_colour_and_runs_a_known_method():
    """A run added to RUNS (e.g. krr-or-parrot) is drawn in the figures and names a rollout method."""
    from ckd.experiments.chaos_forecast.reporting import COLORS
    from ckd.names import ROLLOUT_METHODS

    assert {lab for lab, _, _ in cf.RUNS} <= set(COLORS)
    assert {method for _, method, _ in cf.RUNS} <= set(ROLLOUT_METHODS)
    assert ("krr-or-parrot", "krr-or-parrot", False) in cf.RUNS
    assert ("krr-or-parrot-uni", "krr-or-parrot", True) in cf.RUNS
