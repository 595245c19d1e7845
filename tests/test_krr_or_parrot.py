"""krr-or-parrot (ckd.choice): krr's or parroting's own output, by the held-out scores of the context alone."""

import json

import numpy as np
import pytest
import torch
from test_forecast_default import lorenz

from ckd.cli import main
from ckd.forecast import forecast, forecast_details
from ckd.heldout import heldout_error, heldout_origins
from ckd.parroting import parrot
from ckd.rollout import standardise


def ambiguous_cycle(T, d=2, period=12):
    """A cycle whose states repeat with different successors (0 is followed by 1, 2, 3, ...): no map of
    the last one or two states forecasts it, but a window of 5 does, and parroting copies it exactly."""
    base = np.array([0.0, 1.0, 0.0, 2.0, 0.0, 3.0, 1.0, 3.0, 2.0, 1.0, 2.0, 3.0])[:period]
    t = np.arange(T)
    return np.stack([base[(t + 5 * j) % period] * (1 + j) for j in range(d)], -1)


def scores(x, embed=5):
    """The two held-out scores recomputed here: krr's from its diagnostics, parroting's by hand."""
    xt = torch.tensor(x)[None]
    krr = forecast_details(xt, "krr", horizon=3).diagnostics[0]["heldout_error"]
    mean, std = standardise(xt)
    z = ((xt - mean) / std)[0]
    T = z.shape[0]
    errs = [float(heldout_error(torch.from_numpy(parrot(z[: T - o].numpy(), o, embed))[None], z[T - o:])[0])
            for o in heldout_origins(T)]
    return krr, sum(e / len(errs) for e in errs)


@pytest.mark.parametrize("case,expect", [("lorenz", "krr"), ("cycle", "parrot")])
def test_output_is_the_chosen_methods_bit_for_bit(case, expect):
    x = lorenz(160) if case == "lorenz" else ambiguous_cycle(150)
    krr_score, parrot_score = scores(x)
    assert (krr_score < parrot_score) == (expect == "krr")  # the constructed case is what it claims
    r = forecast_details(torch.tensor(x)[None], "krr-or-parrot", horizon=40)
    s = r.settings[0]
    assert s["chosen"] == expect
    assert s["heldout_krr"] == krr_score and s["heldout_parrot"] == pytest.approx(parrot_score, rel=1e-12, abs=0)
    out = forecast(x, "krr-or-parrot", horizon=40)
    krr, par = forecast(x, "krr", horizon=40), forecast(x, "parrot", horizon=40)
    assert not np.array_equal(krr, par)
    assert np.array_equal(out, krr if expect == "krr" else par)
    assert np.array_equal(r.pred[0].numpy(), out)
    krr_setting = forecast_details(torch.tensor(x)[None], "krr", horizon=3).settings[0]
    assert {k: s[k] for k in krr_setting} == krr_setting and s["parrot_embed"] == 5


def test_batch_mixes_the_choices_and_univariate_is_per_coordinate():
    a, b = lorenz(150), ambiguous_cycle(150, d=3)
    b = b * a.std(0) + a.mean(0)  # same scale, so the batch is just two sequences
    x = np.stack([a, b])
    out = forecast(x, "krr-or-parrot", horizon=25)
    assert np.array_equal(out[0], forecast(a, "krr", horizon=25))
    assert np.array_equal(out[1], forecast(b, "parrot", horizon=25))
    # univariate: each coordinate its own choice, and that method's column (univariate krr, or parrot)
    u = forecast_details(torch.tensor(x), "krr-or-parrot", horizon=25, univariate=True, embed=4)
    ku, pu = forecast(x, "krr", horizon=25, univariate=True, embed=4), forecast(x, "parrot", horizon=25, embed=4)
    chosen = [[s["chosen"] for s in per] for per in u.settings]
    assert "parrot" in chosen[1]
    for i in range(2):
        for j in range(3):
            ref = ku if chosen[i][j] == "krr" else pu
            assert np.array_equal(u.pred[i, :, j].numpy(), ref[i, :, j]), (i, j)


def test_never_reads_beyond_the_context():
    """The context is a view of a longer trajectory; changing what follows it (the truth) changes
    nothing, bit for bit, while changing the context's own held-out end changes the scores."""
    T, H = 150, 30
    for full in (lorenz(T + H), ambiguous_cycle(T + H)):
        ctx = full[:T]  # a view: the continuation lies right after it in memory
        before = forecast_details(torch.from_numpy(ctx)[None], "krr-or-parrot", horizon=H)
        full[T:] = full[T:][::-1] * 3.0 + 1.0
        after = forecast_details(torch.from_numpy(ctx)[None], "krr-or-parrot", horizon=H)
        assert torch.equal(before.pred, after.pred) and before.settings == after.settings
        moved = ctx.copy()
        moved[-10:] += 0.5 * ctx.std(0)
        changed = forecast_details(torch.from_numpy(moved)[None], "krr-or-parrot", horizon=H).settings[0]
        assert changed["heldout_parrot"] != before.settings[0]["heldout_parrot"]
        assert changed["heldout_krr"] != before.settings[0]["heldout_krr"]


def test_report_names_the_choice_and_both_scores(tmp_path, capsys):
    x = ambiguous_cycle(120)
    np.save(tmp_path / "in.npy", x)
    rep = tmp_path / "r.json"
    assert main(["forecast", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--horizon", "9",
                 "--method", "krr-or-parrot", "--report", str(rep), "-v"]) == 0
    data = json.loads(rep.read_text())
    s = data["sequences"][0]["settings"]
    assert data["method"] == "krr-or-parrot" and s["chosen"] == "parrot"
    assert s["heldout_parrot"] <= s["heldout_krr"]
    assert np.array_equal(np.load(tmp_path / "o.npy"), forecast(x, "parrot", horizon=9))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "krr-or-parrot, horizon 9" in err[0] and "chosen=parrot heldout_krr=" in err[0]


@pytest.mark.parametrize("opts,match", [
    ({"k": 2}, "k applies to method analogues"),
    ({"sweeps": 8}, "sweeps applies to method ckd"),
    ({"horizon": None}, "unknown method"),
])
def test_refused_options_one_line(opts, match):
    with pytest.raises(ValueError, match=match):
        forecast(lorenz(60), "krr-or-parrot", **{"horizon": 5, **opts})


def test_fixed_krr_settings_and_parrot_window_are_used():
    x = lorenz(140)
    r = forecast_details(torch.tensor(x)[None], "krr-or-parrot", horizon=5, sigma=1.0, ridge=1e-6, embed=3)
    s = r.settings[0]
    assert s["sigma"] == 1.0 and s["ridge"] == 1e-6 and s["parrot_embed"] == 3
    assert s["heldout_parrot"] == pytest.approx(scores(x, embed=3)[1], rel=1e-12, abs=0)
