"""The model zoo (ckd.pretrained): weights-only loading, SHA-256, cards reproduced, clear errors, CLI."""

import json
import pickle
import shlex
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch

import ckd
from ckd import pretrained
from ckd.cli import build_parser, main
from ckd.train import TEST, TrainConfig, length_at, seed_for
from ckd.transformer import CausalTransformer

NAMES = pretrained.list()


def run(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture
def no_pickle(monkeypatch):
    """Any unpickling fails: loading must go through safetensors."""
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_the_zoo_is_shipped_and_small():
    assert NAMES == sorted(pretrained.ZOO), "the package's zoo differs from ckd.pretrained.ZOO: rebuild it"
    folder = pretrained.zoo_dir()
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert files == sorted(f"{n}.{ext}" for n in NAMES for ext in ("json", "safetensors"))
    assert sum((folder / f).stat().st_size for f in files) < pretrained.SIZE_LIMIT
    for name in NAMES:  # strict JSON: no NaN / Infinity
        def refuse(constant):
            raise AssertionError(f"{name}.json holds {constant}")

        json.loads((folder / f"{name}.json").read_text(), parse_constant=refuse)
    configs = [pretrained.card(n)["training"]["config"] for n in NAMES]
    families = {(c["task"], c["attention"]) for c in configs}
    assert {("periodic", "softmax"), ("linear", "linear"), ("nonlinear", "softmax")} <= families
    assert {2, 4} <= {c["layers"] for c in configs} and {"augmented", "raw"} == {c["tokens"] for c in configs}


@pytest.mark.parametrize("name", NAMES)
def test_load_weights_only_matches_its_card(name, no_pickle):
    cfg, model, card = pretrained.load_with_config(name)
    assert isinstance(model, CausalTransformer) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    data = (pretrained.zoo_dir() / card["weights"]["file"]).read_bytes()
    assert pretrained.sha256(data) == card["weights"]["sha256"] and len(data) == card["weights"]["bytes"]
    assert card["name"] == name and card["training"]["config"] == asdict(cfg)
    assert card["training"]["steps"] == cfg.steps and card["architecture"]["parameters"] == \
        sum(p.numel() for p in model.parameters())
    arch = {k: v for k, v in card["architecture"].items() if k not in ("class", "width_used", "parameters")}
    assert arch == asdict(model.config)


@pytest.mark.parametrize("name", NAMES)
def test_card_evaluation_is_reproduced(name):
    """The model's errors (and CKD's, the baselines', the oracle's) on the card's prompts, with the card's
    CKD settings, equal the card's numbers to 1e-6."""
    cfg, model, card = pretrained.load_with_config(name)
    ev = card["evaluation"]
    x = ckd.make_task(cfg.task, ev["sequences"], cfg.length, cfg.dim, seed=seed_for(ev["seed"], TEST)).x
    with torch.no_grad():
        pred = model.double()(x)
    median = ckd.next_token_error(pred, x).median(0).values
    np.testing.assert_allclose(median.numpy(), ev["median_error"]["transformer"], rtol=1e-6, atol=1e-9)
    again = pretrained.evaluation(model, cfg, settings=ev["settings"], sequences=ev["sequences"])
    for method, numbers in ev["median_error"].items():
        np.testing.assert_allclose(again["median_error"][method], numbers, rtol=1e-6, atol=1e-9, err_msg=method)
        np.testing.assert_allclose(again["mse"][method], ev["mse"][method], rtol=1e-6, atol=1e-9, err_msg=method)
    assert {f"ckd depth {cfg.layers}", "ckd depth inf", "last", "ols", "krr", "analogues", "oracle"} <= set(ev["mse"])


def test_card_command_and_task_describe_the_training():
    for name in NAMES:
        card = pretrained.card(name)
        words = shlex.split(card["training"]["command"])
        assert words[:3] == ["OMP_NUM_THREADS=1", "ckd", "train"]
        args = build_parser().parse_args(words[2:])
        cfg = card["training"]["config"]
        for key, value in cfg.items():
            if hasattr(args, key):
                assert getattr(args, key) == value, (name, key)
        task = card["task"]
        params = {k: v for k, v in task["parameters"].items() if k != "generator"}
        generator = getattr(ckd.sequences, task["parameters"]["generator"].rsplit(".", 1)[1])
        a = generator(3, task["length"], task["dim"], seed=5, **params).x
        assert torch.equal(a, ckd.make_task(task["family"], 3, task["length"], task["dim"], seed=5).x)


def test_load_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pretrained.load(NAMES[0])
    assert torch.equal(torch.rand(3), expected)


@pytest.fixture
def zoo_copy(tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(pretrained.zoo_dir(), root)
    return root


def one_line(err: ValueError) -> str:
    msg = str(err)
    assert "\n" not in msg
    return msg


def test_unknown_missing_and_tampered_give_one_clear_line(zoo_copy):
    name = NAMES[0]
    assert pretrained.load(name, zoo_copy) is not None
    with pytest.raises(ValueError, match="unknown pretrained model 'nope'; choose one of") as err:
        pretrained.load("nope", zoo_copy)
    one_line(err.value)
    weights = zoo_copy / f"{name}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its card's SHA-256") as err:
        pretrained.load(name, zoo_copy)
    one_line(err.value)
    weights.unlink()
    with pytest.raises(ValueError, match="is missing") as err:
        pretrained.load(name, zoo_copy)
    one_line(err.value)
    (zoo_copy / f"{NAMES[1]}.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read") as err:
        pretrained.load(NAMES[1], zoo_copy)
    one_line(err.value)


def test_a_card_that_does_not_fit_its_weights(zoo_copy):
    """Weights of another model under a card whose SHA-256 was updated: refused, one line."""
    a, b = NAMES[0], NAMES[-1]
    card = json.loads((zoo_copy / f"{a}.json").read_text())
    other = json.loads((zoo_copy / f"{b}.json").read_text())
    card["weights"] = other["weights"]
    (zoo_copy / f"{a}.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="weights and card do not fit") as err:
        pretrained.load(a, zoo_copy)
    one_line(err.value)
    del card["weights"]
    (zoo_copy / f"{a}.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="no valid weights entry") as err:
        pretrained.load(a, zoo_copy)
    one_line(err.value)


def test_build_is_deterministic_on_a_tiny_config(tmp_path):
    tiny = {"tiny": ("a tiny periodic model", dict(task="periodic", attention="softmax", layers=1, steps=4,
                                                    batch=4, length=8, dim=2, warmup=1, curriculum=2))}
    a = pretrained.build(tmp_path / "a", zoo=tiny, progress=False)[0]
    b = pretrained.build(tmp_path / "b", zoo=tiny, progress=False)[0]
    assert a["weights"]["sha256"] == b["weights"]["sha256"]
    assert a["training"]["loss_curve"] == b["training"]["loss_curve"]
    d = pretrained.compare(a, b)
    assert d["same_weights"] and d["max_eval_diff"] == 0.0
    model = pretrained.load("tiny", tmp_path / "a")
    assert model.config.n_layers == 1
    with pytest.raises(ValueError, match="pass --force"):
        pretrained.build(tmp_path / "a", zoo=tiny, progress=False)
    with pytest.raises(ValueError, match="unknown zoo model"):
        pretrained.build(tmp_path / "c", ["nope"], zoo=tiny, progress=False)


def test_curriculum_lengths():
    cfg = TrainConfig(length=32, curriculum=10)
    assert [length_at(cfg, s) for s in (0, 5, 9, 10, 99)] == [4, 18, 29, 32, 32]
    assert length_at(TrainConfig(length=32), 0) == 32
    with pytest.raises(ValueError, match="curriculum"):
        TrainConfig(curriculum=-1).validate()


def test_predict_default_options_are_the_ones_a_pretrained_backend_checks():
    import inspect

    from ckd import api

    defaults = {k: p.default for k, p in inspect.signature(ckd.predict).parameters.items()}
    assert all(defaults[k] == v for k, v in api._PREDICT_DEFAULTS.items())


# --------------------------------------------------------------------------- CLI


def test_cli_zoo_list_and_show(capsys):
    rc, out, _ = run(["zoo", "list"], capsys)
    assert rc == 0 and all(name in out for name in NAMES)
    assert all(line.split()[0] in NAMES for line in out.splitlines()[1:])  # the longest name is its own column
    rc, out, _ = run(["zoo", "show", NAMES[0]], capsys)
    assert rc == 0 and json.loads(out)["name"] == NAMES[0]
    rc, out, err = run(["zoo", "show", "nope"], capsys)
    assert rc == 2 and err.startswith("ckd: error: unknown pretrained model") and err.count("\n") == 1


def test_cli_predict_forecast_with_a_pretrained_model(tmp_path, capsys):
    name = "periodic-softmax-2"
    cfg, model, _ = pretrained.load_with_config(name)
    x = ckd.make_task("periodic", 2, 12, 3, seed=1).x
    np.save(tmp_path / "x.npy", x.numpy())
    rc, _, err = run(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy"),
                      "--backend", f"pretrained:{name}"], capsys)
    assert rc == 0, err
    with torch.no_grad():
        expected = model.double()(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ckd.predict(x.numpy(), backend=f"pretrained:{name}"), expected, rtol=1e-12,
                               atol=1e-14)
    rc, _, err = run(["forecast", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy"), "--method", "transformer",
                      "--pretrained", name], capsys)
    assert rc == 0, err
    assert np.load(tmp_path / "f.npy").shape == x.shape
    for argv, words in [
        (["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "q.npy"), "--backend", "pretrained:nope"],
         "unknown pretrained model 'nope'"),
        (["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "q.npy"), "--backend", f"pretrained:{name}",
          "--depth", "4"], "depth does not apply"),
        (["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "q.npy"), "--backend", "gpu"],
         "unknown backend 'gpu'"),
        (["forecast", str(tmp_path / "x.npy"), "-o", str(tmp_path / "q.npy"), "--method", "transformer",
          "--pretrained", "nope"], "unknown pretrained model 'nope'"),
        (["evaluate", "--pretrained", "nope"], "unknown pretrained model 'nope'"),
        (["evaluate"], "either CHECKPOINT or --pretrained"),
    ]:
        rc, _, err = run(argv, capsys)
        assert rc == 2 and err.startswith("ckd: error: ") and words in err and err.count("\n") == 1, (argv, err)
        assert not (tmp_path / "q.npy").exists()
    np.save(tmp_path / "d2.npy", x[..., :2].numpy())
    rc, _, err = run(["predict", str(tmp_path / "d2.npy"), "-o", str(tmp_path / "q.npy"),
                      "--backend", f"pretrained:{name}"], capsys)
    assert rc == 2 and "dim=3" in err and not (tmp_path / "q.npy").exists()


def test_cli_evaluate_pretrained(capsys):
    name = "linear-linear-2"
    rc, out, err = run(["evaluate", "--pretrained", name, "--sequences", "64"], capsys)
    assert rc == 0, err
    card = pretrained.card(name)
    mse = card["evaluation"]["mse"]["transformer"]
    line = next(line for line in out.splitlines() if line.startswith("transformer "))
    assert float(line.split()[1]) == pytest.approx(mse, rel=1e-3)


def test_cli_zoo_build(tmp_path, capsys, monkeypatch):
    """`ckd zoo build` trains, writes the two files per model, compares with a shipped card of the same name,
    and refuses to overwrite without --force."""
    tiny = dict(task="periodic", attention="softmax", layers=1, steps=2, batch=4, length=8, dim=3, warmup=1)
    monkeypatch.setattr(pretrained, "ZOO", {"periodic-softmax-2": ("tiny", tiny), "tiny": ("tiny", tiny)})
    rc, out, err = run(["zoo", "build", "--out", str(tmp_path / "z"), "--quiet"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == [
        "periodic-softmax-2.json", "periodic-softmax-2.safetensors", "tiny.json", "tiny.safetensors"]
    assert "periodic-softmax-2: trained in" in out and "differs from the shipped model" in out
    assert "rebuilt 2 models" in out
    before = (tmp_path / "z" / "tiny.json").read_bytes()
    rc, _, err = run(["zoo", "build", "tiny", "--out", str(tmp_path / "z")], capsys)
    assert rc == 2 and "pass --force" in err and err.count("\n") == 1
    assert (tmp_path / "z" / "tiny.json").read_bytes() == before


def test_ckd_pretrained_is_an_attribute_of_ckd(monkeypatch):
    """`import ckd; ckd.pretrained.list()` works without importing the submodule first (module __getattr__)."""
    monkeypatch.delattr(ckd, "pretrained")
    assert "pretrained" not in vars(ckd)
    assert ckd.pretrained is pretrained
    with pytest.raises(AttributeError):
        ckd.nope  # noqa: B018


def test_zoo_build_checks_every_file_before_training(tmp_path, capsys):
    """A card path that is a folder is refused before any training, even with --force: no
    weights are left without their card."""
    from ckd.cli import main

    out = tmp_path / "zd"
    (out / "periodic-softmax-2.json").mkdir(parents=True)
    assert main(["zoo", "build", "periodic-softmax-2", "--out", str(out), "--force", "--quiet"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["periodic-softmax-2.json"]


def test_build_trains_a_chain_of_warm_started_stages(tmp_path):
    """A zoo model whose init_from is "@PARENT" is trained after PARENT's run and warm-started from it: its
    weights are those of the two ``ckd train`` runs done by hand, and its card lists both commands, chained."""
    from ckd.train import load_model, train

    base = dict(task="periodic", attention="softmax", layers=1, steps=3, batch=4, length=8, dim=2, warmup=1)
    zoo = {"a": ("the first stage", base),
           "b": ("a, then 3 more steps at lr 1e-3", base | dict(init_from="@a", lr=1e-3))}
    card = pretrained.build(tmp_path / "zoo", ["b"], zoo=zoo, progress=False)[0]
    assert not (tmp_path / "zoo" / "a.json").exists()
    stages = card["training"]["stages"]
    assert [s["name"] for s in stages] == ["a", "b"]
    assert stages[0]["command"].endswith("--out a") and "--init-from" not in stages[0]["command"]
    assert "--init-from a " in stages[1]["command"] and stages[1]["command"].endswith("--out DIR")
    assert stages[1]["command"] == card["training"]["command"]
    assert card["training"]["config"]["init_from"] == "a" and card["training"]["config"]["init_sha256"] is None
    for s in stages:
        assert build_parser().parse_args(shlex.split(s["command"])[2:]).lr == (1e-3 if s["name"] == "b" else 1e-2)
    train(TrainConfig(**base), tmp_path / "ra", progress=False)
    train(TrainConfig(**(base | dict(init_from=str(tmp_path / "ra"), lr=1e-3))), tmp_path / "rb", progress=False)
    by_hand = load_model(tmp_path / "rb" / "checkpoint.pt")[1].state_dict()
    shipped = pretrained.load("b", tmp_path / "zoo").state_dict()
    assert by_hand.keys() == shipped.keys() and all(torch.equal(by_hand[k].float(), shipped[k]) for k in by_hand)
