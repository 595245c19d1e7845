"""Warm start (``ckd train --init-from RUN``, ``ckd.train.warm``; issue 20): a run that starts from another run's
weights, e.g. a looped model trained on with more loops."""

import hashlib
import json
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import one_error
from test_looped import tiny

from ckd.cli import main
from ckd.looped import shape_masks
from ckd.train import load_checkpoint, load_model, train

SHAPED = dict(loop=2, layers=2, loop_range=[1, 3], loop_qk="input", loop_shape="ckd")
MODELS = {"ckd-shaped loop": SHAPED, "free loop": dict(loop=2, layers=2, loop_range=[1, 3]), "plain": dict(layers=2)}


def records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", MODELS)
def test_first_evaluation_of_a_warm_start_is_the_parent_final_model(tmp_path, model):
    """A run started with ``init_from`` (another loop range, lr and number of steps; the same seed, so the same
    held-out prompts) evaluates at step 0 exactly as its parent's final record (the same weights, the same loop
    count L), stores the parent checkpoint's SHA-256, and then trains (its weights move; a CKD-shaped loop stays in
    its layout)."""
    parent = tiny(**MODELS[model])
    train(parent, tmp_path / "a", progress=False)
    loops = dict(loop_range=[2, 4]) if parent.loop else {}
    child = replace(parent, steps=4, lr=3e-3, init_from=str(tmp_path / "a"), **loops)
    train(child, tmp_path / "b", progress=False)
    last, first = records(tmp_path / "a")[-1], records(tmp_path / "b")[0]
    assert last["step"] == parent.steps and first["step"] == 0
    assert first["eval_loss"] == last["eval_loss"] and first["eval_err_last"] == last["eval_err_last"]
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    want = hashlib.sha256((tmp_path / "a" / "checkpoint.pt").read_bytes()).hexdigest()
    assert config["init_from"] == str(tmp_path / "a") and config["init_sha256"] == want
    a, b = (load_checkpoint(tmp_path / r / "checkpoint.pt")["model"] for r in "ab")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].requires_grad or k != "embed.weight")
    if model == "ckd-shaped loop":
        _, net, _ = load_model(tmp_path / "b" / "checkpoint.pt")
        state = net.state_dict()
        assert torch.equal(state["embed.weight"], a["embed.weight"])
        assert all(not state[k][~m].any() for k, m in shape_masks(net).items())


def test_warm_start_from_a_checkpoint_file_in_float64_resumes_without_its_parent(tmp_path):
    """``init_from`` may name the checkpoint file; a float64 run from a float32 parent starts from the same weights
    (cast); stopped and resumed after its parent is gone, it ends bit for bit as the uninterrupted run (the weights
    come from its own checkpoint, the SHA-256 from its config)."""
    parent = tiny(**SHAPED)
    train(parent, tmp_path / "a", progress=False)
    child = replace(parent, dtype="float64", steps=6, loop_range=[2, 4],
                    init_from=str(tmp_path / "a" / "checkpoint.pt"))
    train(child, tmp_path / "b", progress=False, stop_after=0)
    start = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    assert all(start[k].dtype == torch.float64 and torch.equal(start[k], a[k].double()) for k in a)
    train(child, tmp_path / "c", progress=False)
    shutil.rmtree(tmp_path / "a")
    train(child, tmp_path / "b", progress=False, resume=True)
    b, c = (load_checkpoint(tmp_path / r / "checkpoint.pt")["model"] for r in "bc")
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["init_sha256"] is not None


FLAGS = ["--task", "periodic", "--batch", "8", "--length", "12", "--dim", "2", "--steps", "2", "--warmup", "1",
         "--quiet"]
LOOPED = ["--loop", "2", "--loop-range", "1,3", "--loop-qk", "input", "--loop-shape", "ckd"]


def test_cli_warm_start_and_its_refusals(tmp_path, capsys):
    """``ckd train --init-from RUN`` trains from RUN's weights with more loops; a missing folder, a corrupted or
    foreign checkpoint, another architecture (attention, loop shape, width, looped or not), a non-finite model and
    ``--init construction`` are each one error line, and nothing is written (the new folder is not created, the
    parent is untouched)."""
    parent = tmp_path / "parent"
    assert main(["train", *FLAGS, *LOOPED, "--out", str(parent)]) == 0
    assert main(["train", *FLAGS, "--loop", "4", "--loop-range", "2,6", "--loop-qk", "input", "--loop-shape", "ckd",
                 "--init-from", str(parent), "--out", str(tmp_path / "more")]) == 0
    assert json.loads((tmp_path / "more" / "config.json").read_text())["loop_range"] == [2, 6]
    capsys.readouterr()
    ckpt = parent / "checkpoint.pt"
    before = ckpt.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()

    def refused(args, init, *words):
        out = tmp_path / "new"
        assert main(["train", *FLAGS, *args, "--init-from", str(init), "--out", str(out)]) == 2
        one_error(capsys, "--init-from", *words)
        assert not out.exists() and ckpt.read_bytes() == before

    refused(LOOPED, tmp_path / "nowhere", "no such checkpoint")
    refused(LOOPED, bad, "no such checkpoint")
    (bad / "checkpoint.pt").write_bytes(before[: len(before) // 2])
    refused(LOOPED, bad, "corrupted")
    torch.save({"hello": 1}, bad / "checkpoint.pt")
    refused(LOOPED, bad, "not a ckd training checkpoint")
    refused([*LOOPED, "--attention", "linear"], parent, "another model", "attention: 'softmax' there, 'linear' here")
    refused(LOOPED[:-2], parent, "another model", "loop_shape: 'ckd' there, 'free' here")
    refused(["--layers", "2"], parent, "another model", "looped: True there, False here")
    refused(["--loop", "2", "--loop-qk", "input", "--width", "12"], parent, "width: None there, 12 here")
    state = torch.load(ckpt, weights_only=True)
    state["model"]["readout.weight"][0, 0] = float("nan")
    torch.save(state, bad / "checkpoint.pt")
    refused(LOOPED, bad, "not finite")
    assert main(["train", *FLAGS, "--layers", "1", "--init", "construction", "--init-from", str(parent),
                 "--out", str(tmp_path / "new")]) == 2
    one_error(capsys, "--init-from starts from another run's weights: drop --init construction")
    assert not (tmp_path / "new").exists()
