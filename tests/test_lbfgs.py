"""The L-BFGS stage after the AdamW steps (``TrainConfig.lbfgs_steps``, ``ckd.train.lbfgs``; issue 20)."""

import json
from dataclasses import replace

import pytest
import torch
from test_looped import tiny

from ckd.looped import shape_masks
from ckd.train import (
    LBFGS,
    build_model,
    expected_loss,
    load_checkpoint,
    load_model,
    refine,
    sample,
    train,
    training_loss,
)

SHAPED = dict(loop=2, layers=2, loop_range=[1, 3], loop_qk="input", loop_shape="ckd")


@pytest.mark.parametrize("loss", [dict(loop_loss="last"), dict(loop_loss="every"),
                                  dict(loop_loss="every", loop_window=2), dict(loop_range=None), dict(loop=0)])
def test_expected_loss_is_the_mean_over_the_loop_counts(loss):
    """One forward of hi passes gives the training loss averaged over the loop counts lo..hi a step may draw:
    equal (float64, 1e-12) to the mean of ``training_loss`` run with each count."""
    looped = dict(loop=3, layers=3, loop_range=[2, 5]) if loss.get("loop", 1) else dict(layers=2)
    cfg = tiny(dtype="float64", loss_from=3, **(looped | loss)).validate()
    torch.manual_seed(0)
    model = build_model(cfg)
    x = sample(cfg, 4, LBFGS)
    ks = range(cfg.loop_range[0], cfg.loop_range[1] + 1) if cfg.loop and cfg.loop_range else [None]
    with torch.no_grad():
        want = torch.stack([training_loss(replace(cfg, loop_range=[k, k]) if k else cfg, model, x, 0)
                            for k in ks]).mean()
        got = expected_loss(cfg, model, x)
    assert abs(float(got) - float(want)) <= 1e-12 * float(want)


def test_refine_lowers_the_full_batch_loss_monotonically_inside_the_masks():
    """L-BFGS (strong Wolfe) on a CKD-shaped loop: the full-batch objective never rises from chunk to chunk and
    falls overall; the entries outside CKD's layout stay exactly 0 and the embedding is untouched; the model
    keeps its dtype."""
    cfg = tiny(**SHAPED, lbfgs_steps=30).validate()
    torch.manual_seed(0)
    model = build_model(cfg)
    embed = model.embed.weight.clone()
    x = sample(cfg, 16, LBFGS)
    history = refine(cfg, model, x)
    assert len(history) == 4 and all(b <= a for a, b in zip(history, history[1:])) and history[-1] < history[0]
    assert next(model.parameters()).dtype == torch.float32 and torch.equal(model.embed.weight, embed)
    params = dict(model.named_parameters())
    for name, mask in shape_masks(model).items():
        assert not params[name][~mask].any(), name


def test_lbfgs_stage_in_train_and_resume(tmp_path):
    """``train`` with ``lbfgs_steps``: the AdamW steps then the stage, logged as one record (its full-batch loss
    below the AdamW model's); a run stopped before the end and resumed gives the same weights bit for bit; resuming
    the finished run changes nothing (weights, metrics)."""
    cfg = tiny(**SHAPED, lbfgs_steps=20, lbfgs_batch=16)
    train(cfg, tmp_path / "a", progress=False)
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert ckpt["step"] == cfg.steps and ckpt["lbfgs"] == 20
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["stage"] == "lbfgs" and last["step"] == cfg.steps and last["lbfgs_loss"] < last["lbfgs_loss_before"]
    assert "eval_err_last" in last and json.loads(lines[-2]).get("stage") is None  # the AdamW model's final record

    train(cfg, tmp_path / "b", progress=False, stop_after=5)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["lbfgs"] == 0
    train(cfg, tmp_path / "b", progress=False, resume=True)
    a, b = (load_checkpoint(tmp_path / r / "checkpoint.pt")["model"] for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)

    train(cfg, tmp_path / "a", progress=False, resume=True)  # complete: nothing to do
    again = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() == lines
    _, model, _ = load_model(tmp_path / "a" / "checkpoint.pt")  # reloads as the refined model
    assert all(torch.equal(v, a[k]) for k, v in model.state_dict().items())


def test_lbfgs_flags(tmp_path):
    """``ckd train --lbfgs-steps N --lbfgs-batch B`` sets the fields (the zoo's card command spells them so)."""
    from ckd.cli import main

    assert main(["train", "--task", "periodic", "--layers", "1", "--steps", "2", "--batch", "4", "--length", "8",
                 "--dim", "2", "--lbfgs-steps", "3", "--lbfgs-batch", "5", "--quiet", "--out",
                 str(tmp_path / "r")]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["lbfgs_steps"] == 3 and config["lbfgs_batch"] == 5
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["lbfgs"] == 3
