"""The chaos-forecast benchmark's executors (issue 18): per-system result files, resuming, Ray."""

import json
import sys

import pytest

pytest.importorskip("dysts")
import ckd.experiments.chaos_forecast as cf  # noqa: E402
from ckd.experiments.chaos_forecast import executors  # noqa: E402

QUICK = {"systems": ("Lorenz",), "n_ics": 2, "horizon": 30, "long": 150}


def without_timings(obj, top=True):
    """A result as JSON keeps it, less its wall-clock fields and integration counts (they differ run to run)."""
    if top:
        obj = json.loads(json.dumps(obj, default=executors._plain))
    if isinstance(obj, dict):
        return {k: without_timings(v, False) for k, v in obj.items()
                if not k.startswith("seconds") and k != "integrations"}
    if isinstance(obj, list):
        return [without_timings(v, False) for v in obj]
    return obj


@pytest.fixture
def quick(monkeypatch, tmp_path):
    monkeypatch.setenv("CKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cf, "QUICK", QUICK)
    # three cheap methods: these tests are about where and how the parts run, not about the methods
    monkeypatch.setenv("CKD_CHAOS_RUNS", "krr,mean,parrot")
    return tmp_path


def test_results_per_system_and_resume(quick, monkeypatch):
    out = quick / "out"
    cf.run(out, size="quick", seed=0, device="cpu")
    saved = json.loads((out / "systems" / "Lorenz.json").read_text())
    assert saved["key"] == executors.result_key(2, 30, 150) and saved["result"]["ics_used"] == [0, 1]
    first = json.loads((out / "chaos-forecast.json").read_text())

    def forbidden(*a, **k):
        raise AssertionError("recomputed a system whose result file exists")

    monkeypatch.setattr(executors, "run_part", forbidden)
    cf.run(out, size="quick", seed=0, device="cpu")  # resumes: nothing to compute
    again = json.loads((out / "chaos-forecast.json").read_text())
    assert without_timings(again["systems"]) == without_timings(first["systems"])
    assert again["summary"]["runs"] == first["summary"]["runs"]
    # another setting (1 initial condition) does not reuse the file
    assert executors.load_results(out, ["Lorenz"], executors.result_key(1, 30, 150)) == {}


def test_parts_merge_to_the_system_result(quick):
    """run_system (all parts in one process) and the parts merged in another order agree."""
    whole = cf.run_system("Lorenz", 2, 30, 150)
    parts = [executors.safe_part("Lorenz", p, 30, 150, "cpu") for p in ("attractor", 1, 0)]
    assert without_timings(cf.scoring.merge_parts("Lorenz", parts, 2)) == without_timings(whole)
    assert len(whole["vpt"]["krr"]) == 2 and set(whole["attractor"]["hellinger"]) == {"krr", "parrot"}


def test_a_failing_part_excludes_the_system_with_its_reason(quick, monkeypatch):
    def broken(name, part, *a):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(executors, "run_part", broken)
    r = executors.run_system_parts(("Lorenz", 2, 30, 150, "cpu"))
    assert r["status"] == "excluded" and r["reason"] == "RuntimeError: disk on fire"


def test_runs_chosen_by_the_environment(quick, monkeypatch):
    assert [lab for lab, _, _ in cf.scoring.active_runs()] == ["krr", "mean", "parrot"]
    monkeypatch.setenv("CKD_CHAOS_RUNS", "krr,lstm")
    with pytest.raises(ValueError, match="CKD_CHAOS_RUNS must list runs of"):
        cf.scoring.active_runs()


def test_bad_executor_is_refused_before_any_work(quick, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        cf.main(["run", "--quick", "--executor", "spark", "--out", str(quick / "o")])
    assert exit_.value.code == 2 and "executor must be local, ray or ray://ADDRESS" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'ckd\[ray\]'"):
        executors.check_executor("ray://head:10001")
    assert not (quick / "o").exists()


def test_ray_gives_the_local_numbers_bit_for_bit(quick, monkeypatch, tmp_path_factory):
    ray = pytest.importorskip("ray")
    local = quick / "local"
    cf.run(local, size="quick", seed=0, device="cpu")  # also fills the data cache the Ray workers read
    monkeypatch.setenv("HOME", str(quick))  # Ray's ~/.ray stays in tmp_path
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    short = tmp_path_factory.mktemp("r")  # pytest's own temp area, with a path short enough for Ray's sockets
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(short))
    try:
        cf.run(quick / "ray", size="quick", seed=0, device="cpu", executor="ray")
    finally:
        ray.shutdown()
    a = json.loads((local / "systems" / "Lorenz.json").read_text())["result"]
    b = json.loads((quick / "ray" / "systems" / "Lorenz.json").read_text())["result"]
    assert without_timings(a) == without_timings(b)
