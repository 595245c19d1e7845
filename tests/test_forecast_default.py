"""The default forecasters (issue 18): krr for one step, krr-or-parrot for rollouts, ``--report`` and ``-v``."""

import json

import numpy as np
import pytest
import torch

from ckd.cli import main
from ckd.forecast import forecast, forecast_details
from ckd.rollout import DEFAULT_METHOD, DEFAULT_ROLLOUT_METHOD, _gram, kernel_pairs


def lorenz(T, dt=0.03, x0=(1.0, 1.0, 20.0)):
    x, out = np.array(x0), []
    for _ in range(T):
        out.append(x.copy())
        for _ in range(3):  # three Euler sub-steps per sample, enough for a smooth chaotic orbit
            d = np.array([10 * (x[1] - x[0]), x[0] * (28 - x[2]) - x[1], x[0] * x[1] - 8 / 3 * x[2]])
            x = x + dt / 3 * d
    return np.array(out)


def test_the_defaults_are_krr_for_one_step_and_krr_or_parrot_for_rollouts():
    from test_krr_or_parrot import ambiguous_cycle

    assert (DEFAULT_METHOD, DEFAULT_ROLLOUT_METHOD) == ("krr", "krr-or-parrot")
    x = lorenz(120)
    assert np.array_equal(forecast(x), forecast(x, "krr"))
    assert np.array_equal(forecast(x, horizon=7), forecast(x, "krr-or-parrot", horizon=7))
    assert np.array_equal(forecast(x, horizon=7), forecast(x, "krr", horizon=7))  # krr chosen on Lorenz
    assert not np.array_equal(forecast(x, horizon=7), forecast(x, "ckd", horizon=7))
    cycle = ambiguous_cycle(150)  # parroting chosen: the default is not krr there
    assert np.array_equal(forecast(cycle, horizon=20), forecast(cycle, "parrot", horizon=20))
    assert not np.array_equal(forecast(cycle, horizon=20), forecast(cycle, "krr", horizon=20))


def test_cli_defaults(tmp_path):
    from test_krr_or_parrot import ambiguous_cycle

    for x in (lorenz(80), ambiguous_cycle(150)):
        np.save(tmp_path / "in.npy", x)
        assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "a.npy"), "--horizon", "5"]) == 0
        assert np.array_equal(np.load(tmp_path / "a.npy"), forecast(x, "krr-or-parrot", horizon=5))
        assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "b.npy")]) == 0
        assert np.array_equal(np.load(tmp_path / "b.npy"), forecast(x, "krr"))


@pytest.mark.parametrize("opts,match", [
    ({"depth": "inf"}, "depth applies to method ckd"),
    ({"horizon": 4, "sweeps": 8}, "sweeps applies to method ckd"),
    ({"horizon": 4, "method": "parrot", "sweeps": 8}, "sweeps applies to method ckd"),
])
def test_ckd_options_without_ckd_are_refused(opts, match):
    """With krr the default, --depth inf or --sweeps alone would silently do nothing: refused."""
    with pytest.raises(ValueError, match=match):
        forecast(lorenz(40), **opts)


def test_diagnostics_of_the_kernel_fit_are_exact():
    """system_residual is |Y - (G + lambda I) beta| / |Y| (rounding for krr), fit_residual |Y - G beta| / |Y|."""
    x = torch.tensor(lorenz(100))[None]
    d = forecast_details(x, "krr", horizon=5)
    s, diag = d.settings[0], d.diagnostics[0]
    z = (x[0] - x[0].mean(0)) / x[0].std(0, unbiased=False)
    keys, Y = kernel_pairs(z, s["embed"], s["stride"], s["lag"])
    G = _gram(keys, keys, torch.tensor([s["sigma"] ** 2 * s["embed"] * 3.0], dtype=torch.float64))[0]
    beta = torch.linalg.solve(G + s["ridge"] * torch.eye(len(G), dtype=G.dtype), Y)
    assert diag["pairs"] == len(keys) and diag["settings_scored"] == 18
    assert diag["system_residual"] < 1e-6
    assert diag["fit_residual"] == pytest.approx(float((Y - G @ beta).norm() / Y.norm()), rel=1e-6, abs=1e-12)
    ckd = forecast_details(x, "ckd", horizon=5, sweeps=4, sigma=0.5, ridge=1e-6)
    assert ckd.diagnostics[0]["heldout_error"] is not None  # embed still chosen: scored
    assert ckd.diagnostics[0]["system_residual"] > 1e-3  # 4 sweeps are far from the ridge solution


def test_report_and_verbose_line(tmp_path, capsys):
    x = lorenz(90)
    np.save(tmp_path / "in.npy", x)
    rep = tmp_path / "r.json"
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--horizon", "6", "-v",
                 "--report", str(rep)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    data = json.loads(rep.read_text())
    ref = forecast_details(torch.tensor(x)[None], horizon=6)
    assert data["method"] == "krr-or-parrot" and data["horizon"] == 6 and data["input_shape"] == [90, 3]
    assert data["sequences"][0]["settings"] == ref.settings[0]
    assert data["sequences"][0]["diagnostics"] == pytest.approx(ref.diagnostics[0])
    assert len(err) == 1 and err[0].startswith("ckd forecast: krr-or-parrot, horizon 6, full state: sequence 0: ")
    # univariate, batched: one list of d settings per sequence
    np.save(tmp_path / "b.npy", np.stack([x, x[::-1].copy()]))
    assert main(["forecast", str(tmp_path / "b.npy"), "-o", str(tmp_path / "o.npy"), "--horizon", "3",
                 "--univariate", "--embed", "3", "--report", str(rep)]) == 0
    data = json.loads(rep.read_text())
    assert len(data["sequences"]) == 2 and all(len(s["settings"]) == 3 for s in data["sequences"])
    # one step: the expert grid, the expert of the last row, rows per expert
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--report", str(rep),
                 "-v"]) == 0
    data = json.loads(rep.read_text())
    f = forecast_details(torch.tensor(x)[None])
    seq = data["sequences"][0]
    assert data["experts"] == f.experts and sum(seq["rows_per_expert"]) + seq["guard_fallback_rows"] == 89
    assert seq["last_row_setting"] == f.experts[int(f.choice[0, -1])]
    assert "one step; last row's setting: sequence 0: sigma=" in capsys.readouterr().err


@pytest.mark.parametrize("name,match", [("r.txt", "ending in .json"), ("nodir/r.json", "does not exist"),
                                        ("in.npy", "ending in .json")])
def test_bad_report_path_one_line_nothing_written(tmp_path, capsys, name, match):
    np.save(tmp_path / "in.npy", lorenz(40))
    out = tmp_path / "o.npy"
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(out), "--report", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ckd: error:") and match in err[0], err
    assert not out.exists()
