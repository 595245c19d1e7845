"""``ckd evaluate``: the trained model vs CKD and the baselines, and the residual-stream probe."""

import json
import math

import pytest
import torch
from conftest import rel_err

from ckd.baselines import BASELINES
from ckd.cli import main
from ckd.evaluate import evaluate, readout
from ckd.train import TrainConfig, train

pytest.importorskip("ckd.construction")

SMALL = dict(task="periodic", attention="softmax", layers=2, batch=8, length=12, dim=2, warmup=1, log_every=1,
             eval_every=1, eval_batch=8)


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    """A float64 construction, not trained (steps = 0): it must be CKD."""
    out = tmp_path_factory.mktemp("constructed")
    train(TrainConfig(**SMALL, steps=0, init="construction", dtype="float64"), out, progress=False)
    return out


@pytest.fixture(scope="module")
def trained_raw(tmp_path_factory):
    """A few steps from random init with raw tokens (hidden states include the previous-token layer)."""
    out = tmp_path_factory.mktemp("raw")
    train(TrainConfig(**SMALL, steps=3, tokens="raw"), out, progress=False)
    return out


def test_constructed_model_is_ckd_and_the_probe_reads_ckd_exactly(constructed):
    r = evaluate(constructed / "checkpoint.pt", sequences=16)
    assert r["step"] == 0 and r["sequences"] == 16
    assert rel_err(r["errors"]["transformer"], r["errors"]["ckd depth 2"]) < 1e-9
    assert {"ckd depth 2", "ckd depth inf", "oracle", *BASELINES} <= set(r["errors"])
    assert any(k.endswith("(best)") for k in r["errors"])
    for e in r["errors"].values():
        assert e.shape == (16, 11)
    assert r["summary"]["oracle"]["mse"] == 0.0
    assert [p["hidden"] for p in r["probe"]] == ["embedding", "layer 1", "layer 2"]
    assert math.isnan(r["probe"][0]["probe_to_ckd"])  # p_0 = 0: nothing to read
    for p in r["probe"][1:]:
        assert p["probe_to_ckd"] < 1e-20, p  # the p slot holds CKD's prediction after that many layers
    assert r["probe"][2]["ckd_mse"] == pytest.approx(r["summary"]["ckd depth 2"]["mse"], rel=1e-12)


def test_evaluate_raw_tokens_labels_the_previous_token_layer(trained_raw):
    r = evaluate(trained_raw / "checkpoint.pt", sequences=8)
    assert [(p["hidden"], p["ckd_depth"]) for p in r["probe"]] == [
        ("embedding", 0), ("previous-token layer", 0), ("layer 1", 1), ("layer 2", 2)]
    assert all(math.isfinite(s["mse"]) for s in r["summary"].values())


def test_readout_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 10, 6, generator=g, dtype=torch.float64)
    W = torch.randn(6, 3, generator=g, dtype=torch.float64)
    assert rel_err(readout(h, h @ W, h), h @ W) < 1e-12


def test_cli_writes_json_and_figures(constructed, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(constructed), "--out", str(out), "--sequences", "8"]) == 0
    text = capsys.readouterr().out
    assert "transformer" in text and "ckd depth inf" in text and "probe" in text
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "evaluation.pdf", "evaluation.png"]
    data = json.loads((out / "evaluation.json").read_text())
    assert data["config"]["init"] == "construction" and len(data["errors"]["transformer"]["median"]) == 11


def test_cli_bad_input_one_line(constructed, tmp_path, capsys):
    def fails(args, words):
        assert main(["evaluate", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ckd: error:") and err.count("\n") == 1 and words in err, err

    fails([str(tmp_path / "nope.pt")], "no such checkpoint")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    fails([str(bad)], "corrupted")
    afile = tmp_path / "file"
    afile.write_text("x")
    fails([str(constructed), "--out", str(afile)], "not a folder")
    fails([str(constructed), "--sequences", "1"], "--sequences: must be an integer in 2 ..")


def test_training_experiment_quick(tmp_path):
    """``ckd reproduce training --quick``: figures and numbers; the construction starts far ahead of random init."""
    threads = torch.get_num_threads()
    try:
        assert main(["reproduce", "training", "--quick", "--out", str(tmp_path), "--seed", "0"]) == 0
    finally:
        torch.set_num_threads(threads)
    for name in ("training", "training-curves", "training-probe", "training-vs-t"):
        for suffix in ("png", "pdf"):
            assert (tmp_path / f"{name}.{suffix}").stat().st_size > 0
    data = json.loads((tmp_path / "training.json").read_text())
    runs = data["results"]["periodic/softmax"]["runs"]
    assert runs["L1-construction"]["curve"][0][1] < 0.9 * runs["L1-random"]["curve"][0][1]
    assert all(math.isfinite(r["summary"]["mse"]) for r in runs.values())


# --------------------------------------------------------------------------- any model, any data (issue 16)

@pytest.fixture(scope="module")
def seqs():
    """User sequences: another task than the run's (linear maps), d = 2 as the runs above."""
    import ckd

    return ckd.make_task("linear", batch=6, length=10, dim=2, seed=5).x


def test_checkpoint_on_given_sequences(constructed, seqs):
    import ckd
    from ckd.metrics import next_token_error
    from ckd.train import load_model

    r = ckd.evaluate(constructed / "checkpoint.pt", data=seqs.numpy())
    _, _, state = load_model(constructed / "checkpoint.pt")
    s = state["setting"]  # the construction runs CKD with its own setting: on any sequences
    want = next_token_error(ckd.predict(seqs, "softmax", beta=s["beta"], depth=2, step=s["step"]), seqs)
    assert rel_err(r["errors"]["transformer"], want) < 1e-9
    assert "oracle" not in r["errors"] and {"ckd depth 2", "ckd depth inf", *BASELINES} <= set(r["errors"])
    assert all(e.shape == (6, 9) for e in r["errors"].values())
    assert r["data"] == {"shape": [6, 10, 2], "tuned_on": "data"} and r["sequences"] == 6 and r["seed"] is None
    assert r["kernel"] == "softmax" and r["depth"] == 2 and r["config"]["init"] == "construction"
    assert [p["hidden"] for p in r["probe"]] == ["embedding", "layer 1", "layer 2"]
    text = ckd.evaluate.report(r)
    assert "6 given sequences, T = 10, d = 2" in text and "no oracle" in text and "in-sample" in text


def test_any_callable_on_given_sequences(seqs):
    import ckd
    import ckd.evaluate as module
    from ckd.metrics import next_token_error

    def model(x):
        return ckd.predict(x, "linear", depth=1, step=0.1)

    r = ckd.evaluate(model, data=seqs, kernel="linear", depth=1, tune_data=seqs[:3])
    assert module is ckd.evaluate and callable(ckd.evaluate) and module.evaluate is evaluate
    assert torch.equal(r["errors"]["model"], next_token_error(model(seqs), seqs))
    assert r["probe"] == [] and r["data"]["tuned_on"] == "tune_data (3 sequences)" and "oracle" not in r["summary"]
    assert "ckd depth 1" in r["settings"] and r["settings"]["ckd depth 1"]["kernel"] == "linear"
    text = module.report(r)
    assert text.startswith("model (CKD kernel linear, depth 1): 6 given sequences") and "probe" not in text


def test_torch_module_runs_in_its_dtype_and_mode_untouched(seqs):
    net = torch.nn.Linear(2, 2).float()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = evaluate(net, data=seqs, kernel="exp", depth=2)
    assert net.training and net.weight.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    want = (net(seqs.float()).double() - seqs.roll(-1, 1))[:, :-1].norm(dim=-1)
    assert torch.allclose(r["errors"]["model"], want.detach())


def test_any_model_bad_input_one_clear_error(seqs):
    def fails(words, *args, **kw):
        with pytest.raises((ValueError, TypeError)) as err:
            evaluate(*args, **kw)
        assert words in str(err.value) and "\n" not in str(err.value), err.value

    ident = lambda x: x  # noqa: E731
    fails("needs data=", ident)
    fails("give kernel= and depth=", ident, data=seqs)
    fails("unknown kernel", ident, data=seqs, kernel="cos", depth=1)
    fails("depth must be >= 1", ident, data=seqs, kernel="linear", depth=0)
    fails("returned shape (6, 10)", lambda x: x[..., 0], data=seqs, kernel="linear", depth=1)
    fails("contain NaN", lambda x: x * float("nan"), data=seqs, kernel="linear", depth=1)
    fails("data contains NaN", ident, data=seqs * float("nan"), kernel="linear", depth=1)
    fails("at least 3 tokens", ident, data=seqs[:, :2], kernel="linear", depth=1)
    fails("tune_data must hold sequences of dimension 2", ident, data=seqs, kernel="linear", depth=1,
          tune_data=torch.ones(2, 5, 3))
    fails("sequences draws ckd's own prompts", ident, data=seqs, kernel="linear", depth=1, sequences=8)
    fails("model must be a checkpoint path or a callable", 3, data=seqs)


def test_cli_evaluate_on_given_sequences(constructed, seqs, tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "seqs.npy", seqs.numpy())
    out = tmp_path / "eval"
    assert main(["evaluate", str(constructed), "--data", str(tmp_path / "seqs.npy"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "6 given sequences" in text and "no oracle" in text
    data = json.loads((out / "evaluation.json").read_text())
    assert data["data"]["shape"] == [6, 10, 2] and "oracle" not in data["errors"]
    np.save(tmp_path / "d3.npy", np.ones((2, 10, 3)))

    def fails(args, words):
        assert main(["evaluate", str(constructed), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ckd: error:") and err.count("\n") == 1 and words in err, err

    fails(["--data", str(tmp_path / "d3.npy")], "feature dimension 3")
    fails(["--data", str(tmp_path / "seqs.npy"), "--sequences", "8"], "do not apply with --data")
    fails(["--data", str(tmp_path / "none.npy")], "no such file")
