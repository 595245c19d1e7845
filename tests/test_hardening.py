"""Issue 21 (hardening, round two), items 1-6, and the systematic checks of the Python API's argument
types and of the array readers' byte orders x dtypes. Each test names the item it proves."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import one_error

from ckd.cli import main
from ckd.io import check_file_target, check_output_dir, load_array

# --------------------------------------------------------------------------- item 2: empty paths

# every file or folder flag of every command; PATH marks the one under test
PATH_FLAGS = [
    ["predict", "PATH", "-o", "p.npy"], ["predict", "x.npy", "-o", "PATH"],
    ["predict", "x.npy", "-o", "p.npy", "--step-file", "PATH"],
    ["forecast", "PATH", "-o", "f.npy"], ["forecast", "x.npy", "-o", "PATH"],
    ["forecast", "x.npy", "-o", "f.npy", "--horizon", "2", "--plot", "PATH"],
    ["forecast", "x.npy", "-o", "f.npy", "--horizon", "2", "--plot", "f.png", "--truth", "PATH"],
    ["forecast", "x.npy", "-o", "f.npy", "--report", "PATH"],
    ["forecast", "x.npy", "-o", "f.npy", "--method", "transformer", "--checkpoint", "PATH"],
    ["train", "--out", "PATH", "--steps", "1"], ["train", "--data", "PATH", "--out", "run"],
    ["train", "--data", "x.npy", "--val-data", "PATH", "--out", "run"],
    ["evaluate", "PATH"], ["evaluate", "--pretrained", "periodic-softmax-2", "--out", "PATH"],
    ["evaluate", "--pretrained", "periodic-softmax-2", "--data", "PATH"],
    ["compare", "PATH", "--data", "x.npy", "--out", "cmp"], ["compare", "x.npy", "--data", "PATH", "--out", "cmp"],
    ["compare", "x.npy", "--data", "x.npy", "--out", "PATH"],
    ["reproduce", "kaczmarz-limit", "--quick", "--out", "PATH"], ["zoo", "build", "--out", "PATH"],
]


@pytest.mark.parametrize("blank", ["", "  "])
def test_empty_paths_are_one_clear_error_nothing_written(tmp_path, monkeypatch, capsys, blank):
    """Item 2: an empty or blank path for any file or folder flag is refused with one line naming the
    flag; nothing is written in the current folder (``ckd train --out ''`` used to train there)."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((12, 2)))
    before = sorted(os.listdir(tmp_path))
    for template in PATH_FLAGS:
        flag = template[template.index("PATH") - 1] if template.index("PATH") > 1 else template[0]
        argv = [blank if a == "PATH" else a for a in template]
        assert main(argv) == 2, argv
        line = one_error(capsys, "empty path")
        assert (flag if flag.startswith("-") else "argument") in line, (argv, line)
        assert sorted(os.listdir(tmp_path)) == before, argv


def test_empty_paths_refused_by_the_python_faces(tmp_path, monkeypatch):
    """Item 2, Python: the io checks and ``ckd.train.train`` refuse an empty or blank path (``Path('')`` is
    the current folder)."""
    from ckd.train import TrainConfig, train

    monkeypatch.chdir(tmp_path)
    for blank in ("", " \t"):
        for check in (load_array, check_output_dir, check_file_target):
            with pytest.raises(ValueError, match="empty path"):
                check(blank)
        with pytest.raises(ValueError, match="empty path"):
            train(TrainConfig(steps=1, batch=2, length=4, dim=2, layers=1), blank, progress=False)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- item 1: evaluate --out


def _snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A float64 construction (steps = 0): a checkpoint to evaluate, in seconds."""
    from ckd.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(task="periodic", attention="softmax", layers=1, batch=4, length=8, dim=2, steps=0,
                      init="construction", dtype="float64", eval_batch=4), out, progress=False)
    return out


@pytest.mark.parametrize("files", [{"evaluation.json": b'{"mine": 1}\n'}, {"notes.txt": b"keep"},
                                   {"evaluation.png": b"my figure"},
                                   {"evaluation.json": b'{"format": "ckd-compare-1"}\n', "evaluation.pdf": b"x"}])
def test_evaluate_out_refuses_a_folder_of_someone_else(run_folder, tmp_path, capsys, files):
    """Item 1: ``ckd evaluate CKPT --out DIR`` overwrote a user's evaluation.json (and wrote figures beside
    it). The train rule: DIR new, empty, or written by ckd evaluate; otherwise one line, DIR untouched."""
    out = tmp_path / "eval"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    assert main(["evaluate", str(run_folder), "--out", str(out), "--sequences", "4"]) == 2
    one_error(capsys, str(out), "not an evaluation of ckd evaluate", "choose a new or empty --out")
    assert _snapshot(out) == files


def test_evaluate_out_rewrites_its_own_files_only(run_folder, tmp_path, capsys):
    """Item 1: an empty folder is accepted; a folder of an earlier ckd evaluate is rewritten (its own three
    files), a file of the user's beside them is never touched."""
    out = tmp_path / "eval"
    out.mkdir()
    argv = ["evaluate", str(run_folder), "--out", str(out), "--sequences", "4"]
    assert main(argv) == 0
    assert json.loads((out / "evaluation.json").read_text())["format"] == "ckd-evaluate-1"
    (out / "notes.txt").write_text("mine")
    assert main([*argv[:-1], "5"]) == 0
    capsys.readouterr()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "evaluation.json").read_text())["sequences"] == 5
    assert sorted(os.listdir(out)) == ["evaluation.json", "evaluation.pdf", "evaluation.png", "notes.txt"]


# --------------------------------------------------------------------------- item 3: training memory


def _saved_for_backward(cfg, B: int, T: int) -> tuple[int, int]:
    """(bytes of the tensors autograd keeps for backward in one training forward, bytes of the weights)."""
    from ckd.train import build_model

    model = build_model(cfg, None)
    x = torch.randn(B, T, cfg.dim, generator=torch.Generator().manual_seed(0))
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        (model(x)[:, 1:-1] - x[:, 2:]).square().mean()
    weights = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(n for k, n in saved.items() if k not in weights), sum(weights.values())


@pytest.mark.parametrize("attention", ["softmax", "exp", "linear", "gaussian"])
def test_training_memory_estimate_covers_what_autograd_keeps(attention):
    """Item 3: the training estimate (``model_bytes(training=True)``) covers the activations autograd saves
    for backward (measured with saved_tensors_hooks) plus weights, gradients and AdamW moments; it used to
    count one forward's activations per layer (0.9-1.8x short of what is saved)."""
    from ckd.train import TrainConfig, model_bytes

    for mlp, norm, layers in [(False, "none", 1), (True, "pre", 2), (False, "post", 2), (True, "output", 1)]:
        cfg = TrainConfig(attention=attention, mlp=mlp, norm=norm, layers=layers, dim=3)
        saved, weights = _saved_for_backward(cfg, 16, 64)
        assert saved + 4 * weights <= model_bytes(cfg, 16, 64, 4, training=True), (attention, mlp, norm, layers)


def test_training_that_cannot_fit_is_refused_before_creating_anything(tmp_path, monkeypatch, capsys):
    """Item 3: ``ckd train --batch 100000 --length 1000`` passed the old estimate (52.8 GB) where more memory
    was free, then ran out of memory after creating the run folder. With 64 GB free (monkeypatched: nothing
    big is allocated here) it is refused with one line and nothing is created."""
    import ckd.train.loop
    import ckd.validation

    monkeypatch.setattr(ckd.validation, "available_memory", lambda device="cpu": 64 * 10**9)

    def reached(*args, **kwargs):
        raise AssertionError("the memory estimate let the run through")

    monkeypatch.setattr(ckd.train.loop, "inspect_out", reached)  # never allocate for real
    out = tmp_path / "run"
    assert main(["train", "--batch", "100000", "--length", "1000", "--out", str(out), "--quiet"]) == 2
    one_error(capsys, "training", "needs about", "64 GB are available", "--batch")
    assert not out.exists() and os.listdir(tmp_path) == []
