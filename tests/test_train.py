"""``ckd train``: exact resume, refusals, corrupted checkpoints, DDP, learning, construction init."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import rel_err
from torch import nn

from ckd.cli import main
from ckd.descent import descend
from ckd.train import (
    EVAL,
    TrainConfig,
    construction_setting,
    load_checkpoint,
    load_model,
    lr_factor,
    next_token_loss,
    sample,
    save_checkpoint,
    train,
)

# A tiny run: one layer, 8 prompts of 12 tokens in d = 2 (a few ms per step).
TINY = dict(task="periodic", attention="softmax", layers=1, batch=8, length=12, dim=2, steps=12, warmup=3,
            log_every=1, eval_every=4, eval_batch=8, checkpoint_every=3)


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**(TINY | changes))


def cli_flags(cfg: TrainConfig) -> list[str]:
    return ["--task", cfg.task, "--attention", cfg.attention, "--layers", str(cfg.layers), "--batch", str(cfg.batch),
            "--length", str(cfg.length), "--dim", str(cfg.dim), "--steps", str(cfg.steps), "--warmup",
            str(cfg.warmup), "--log-every", str(cfg.log_every), "--eval-every", str(cfg.eval_every),
            "--checkpoint-every", str(cfg.checkpoint_every), "--quiet"]


def metrics(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_bit_for_bit(tmp_path):
    """Stopped at step 5, resumed, crashed after logging past its checkpoint, resumed again:
    the same losses, eval metrics and final weights, bit for bit, as one uninterrupted run."""
    cfg = tiny(eval_batch=4)
    full = train(cfg, tmp_path / "full", progress=False)
    assert [r["step"] for r in full if "eval_loss" in r] == [0, 4, 8, 12]
    run = tmp_path / "run"
    train(cfg, run, stop_after=5, progress=False)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 5
    shutil.copy(run / "checkpoint.pt", tmp_path / "at5.pt")
    train(cfg, run, resume=True, stop_after=10, progress=False)  # logs steps 5..9, checkpoints at 6, 9, 10
    shutil.copy(tmp_path / "at5.pt", run / "checkpoint.pt")  # as if it crashed after logging, checkpoint at 5
    resumed = train(cfg, run, resume=True, progress=False)
    assert resumed == full
    assert metrics(run) == metrics(tmp_path / "full") == full
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(run / "checkpoint.pt")
    assert a["step"] == b["step"] == cfg.steps
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_cli_resume_refuses_another_config_and_corrupted_checkpoints(tmp_path, capsys):
    cfg = tiny(steps=4)
    out = tmp_path / "run"
    assert main(["train", *cli_flags(cfg), "--out", str(out), "--stop-after", "2"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()

    def refused(args, *words):
        assert main(["train", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ckd: error:") and err.count("\n") == 1, err
        for w in words:
            assert w in err, err
        assert (out / "checkpoint.pt").read_bytes() == before

    refused([*cli_flags(cfg), "--resume", "--lr", "0.02"], "different config", "lr: 0.01 -> 0.02")
    refused([*cli_flags(cfg.__class__(**(TINY | {"steps": 5})))], "already holds a training run")
    refused([*cli_flags(tiny(steps=5)), "--resume"], "steps: 4 -> 5")
    refused([*cli_flags(cfg), "--resume", "--stop-after", "1"], "before the checkpoint's step 2")
    (out / "checkpoint.pt").write_bytes(before[: len(before) // 2])
    before = (out / "checkpoint.pt").read_bytes()
    refused([*cli_flags(cfg), "--resume"], "corrupted")
    torch.save({"hello": 1}, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    refused([*cli_flags(cfg), "--resume"], "not a ckd training checkpoint")
    (out / "checkpoint.pt").unlink()
    before = b""
    assert main(["train", *cli_flags(cfg), "--resume", "--out", str(out)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--layers", "0"], "--layers: must be an integer in 1 .. 2**63 - 1, got 0"),
    (["--task", "nope"], "invalid choice: 'nope'"),
    (["--attention", "cosine"], "invalid choice: 'cosine'"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--lr", "nan"], "lr must be finite"),
    (["--length", "2"], "--length: must be an integer in 3 .."),
    (["--batch", "0"], "--batch: must be an integer in 1 .."),
    (["--init", "construction", "--heads", "3"], "--init construction fixes the architecture"),
    (["--init", "construction", "--layernorm"], "--init construction fixes the architecture"),
    (["--stop-after", "-1"], "--stop-after: must be an integer in 0 .."),
    (["--steps", "ten"], "invalid int value: 'ten'"),
])
def test_bad_flags_one_line_nothing_written(tmp_path, capsys, args, words):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ckd: error:") and err.count("\n") == 1 and words in err, err
    assert not out.exists()


def test_missing_out_and_no_cuda(tmp_path, capsys):
    assert main(["train", "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "--out", str(tmp_path / "r"), "--device", "cuda", "--quiet"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_cli_architecture_flags(tmp_path):
    """--heads/--width/--mlp/--layernorm reach config.json and the model that load_model rebuilds."""
    out = tmp_path / "run"
    args = ["--heads", "3", "--width", "9", "--mlp", "--layernorm", "--tokens", "raw", "--task", "nonlinear",
            "--attention", "exp", "--device", "cpu", "--steps", "2", "--warmup", "1", "--batch", "2",
            "--length", "5", "--dim", "2", "--log-every", "1"]
    assert main(["train", *args, "--quiet", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert {k: cfg[k] for k in ("heads", "width", "mlp", "layernorm", "tokens", "task", "attention")} == dict(
        heads=3, width=9, mlp=True, layernorm=True, tokens="raw", task="nonlinear", attention="exp")
    losses = torch.tensor([r["loss"] for r in metrics(out)])
    assert len(losses) == 3 and torch.isfinite(losses).all()
    loaded, model, _ = load_model(out / "checkpoint.pt")
    assert loaded.layernorm and model.blocks[0].attn.n_heads == 3 and model.embed.out_features == 9
    assert any(isinstance(m, nn.LayerNorm) for m in model.modules())


def test_resume_a_run_older_than_a_config_field(tmp_path):
    """A checkpoint whose config predates ``layernorm`` resumes (the field takes its default)."""
    cfg, out = tiny(steps=4), tmp_path / "run"
    train(cfg, out, stop_after=2, progress=False)
    state = load_checkpoint(out / "checkpoint.pt")
    del state["config"]["layernorm"]
    save_checkpoint(out / "checkpoint.pt", state)
    assert train(cfg, out, resume=True, progress=False)[-1]["step"] == 4


def test_failed_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    """torch.save dying halfway: the previous checkpoint.pt is intact and no temporary file is left."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"w": torch.arange(4.0)})
    before = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(4)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_lr_schedule_warmup_then_cosine():
    cfg = tiny(steps=100, warmup=10, min_lr=0.1)
    f = [lr_factor(cfg, s) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[100] == pytest.approx(0.1)


def test_a_few_steps_reduce_the_loss(tmp_path):
    """Linear attention on linear maps, from random init: 60 steps cut the held-out loss."""
    cfg = tiny(task="linear", attention="linear", steps=60, lr=2e-2, warmup=5, eval_every=60, eval_batch=64,
               batch=16, length=16, log_every=10)
    rec = train(cfg, tmp_path / "run", progress=False)
    first, last = rec[0], rec[-1]
    assert first["step"] == 0 and last["step"] == 60
    assert last["eval_loss"] < 0.9 * first["eval_loss"], (first, last)  # measured: 1.0005 -> 0.803


@pytest.mark.parametrize("attention, tokens", [("softmax", "augmented"), ("linear", "augmented"),
                                                ("exp", "augmented"), ("gaussian", "augmented"),
                                                ("softmax", "raw")])
def test_construction_init_reproduces_ckd_at_step_0(tmp_path, attention, tokens):
    """float64 construction: the logged step-0 losses are CKD's, with the setting it was built from."""
    pytest.importorskip("ckd.construction")
    cfg = tiny(attention=attention, tokens=tokens, layers=2, steps=0, dtype="float64", init="construction")
    rec = train(cfg, tmp_path / "run", progress=False)
    setting = construction_setting(cfg)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["setting"] == setting
    opts = dict(beta=setting["beta"], sigma=setting["sigma"], depth=cfg.layers, step=setting["step"])
    x_eval = sample(cfg, cfg.eval_batch, EVAL)
    ckd_eval = next_token_loss(descend(x_eval, attention, **opts), x_eval)
    assert rel_err(torch.tensor(rec[0]["eval_loss"], dtype=torch.float64), ckd_eval) < 1e-9
    x0 = sample(cfg, cfg.batch, 0, 0, 0)
    ckd_train = next_token_loss(descend(x0, attention, **opts), x0)
    assert rel_err(torch.tensor(rec[0]["loss"], dtype=torch.float64), ckd_train) < 1e-9


def test_two_process_ddp_gives_finite_decreasing_loss(tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo): one run, rank 0 writes, the held-out loss falls."""
    out = tmp_path / "ddp"
    cfg = tiny(task="linear", attention="linear", steps=40, lr=2e-2, warmup=5, eval_every=40, eval_batch=64,
               batch=16, length=16, log_every=5)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "ckd.cli", "train", *cli_flags(cfg), "--lr", "0.02", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = metrics(out)
    assert [r["step"] for r in rec] == list(range(0, 41, 5))
    losses = torch.tensor([r["loss"] for r in rec])
    assert torch.isfinite(losses).all()
    assert rec[-1]["eval_loss"] < 0.9 * rec[0]["eval_loss"], rec
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 40
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
