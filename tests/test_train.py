"""``ckd train``: exact resume, refusals, corrupted checkpoints, DDP, learning, construction init."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import one_error, rel_err
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
    (["--layernorm", "--norm", "post"], "--norm post contradicts --layernorm (--layernorm is --norm pre)"),
    (["--norm", "post", "--no-layernorm"], "--no-layernorm contradicts --norm post"),
    (["--norm", "sandwich"], "invalid choice: 'sandwich'"),
    (["--attention-norm", "all"], "invalid choice: 'all'"),
    (["--init", "construction", "--norm", "output"], "--init construction fixes the architecture"),
    (["--init", "construction", "--attention-norm", "keys"], "--init construction fixes the architecture"),
    (["--init", "construction", "--heads", "1", "--layers", "2"], "2 heads, or 1 at --layers 1"),
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


# --------------------------------------------------------------------------- hardening (issue 12)




def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("files", [{"metrics.jsonl": b"my own log\n"}, {"notes.txt": b"keep me"},
                                   {"config.json": b'{"not": "ours"}', "metrics.jsonl": b"x\n"}])
def test_folder_of_someone_else_refused_untouched(tmp_path, capsys, files):
    """Item 2: a folder that holds files but no run of ours is refused; its files keep their bytes."""
    out = tmp_path / "run"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    assert main(["train", *cli_flags(tiny(steps=2)), "--out", str(out)]) == 2
    one_error(capsys, "not a ckd training run", "choose a new or empty --out")
    assert snapshot(out) == files


def test_empty_folder_and_extra_files_of_a_run_accepted(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    train(tiny(steps=2), out, progress=False)
    (out / "notes.txt").write_text("mine")  # a file of the user's beside a run: resume never touches it
    train(tiny(steps=2), out, resume=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_second_run_on_a_locked_folder_refused(tmp_path, capsys):
    """Item 3: while a run holds the folder's lock, a second ckd train on it is refused with one line."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    assert main(["train", *cli_flags(tiny(steps=2)), "--stop-after", "1", "--out", str(out)]) == 0
    before = snapshot(out)
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running ckd train holds it
    try:
        assert main(["train", *cli_flags(tiny(steps=2)), "--resume", "--out", str(out)]) == 2
        one_error(capsys, "another ckd train is running")
        assert snapshot(out) == before
    finally:
        os.close(fd)
    assert main(["train", *cli_flags(tiny(steps=2)), "--resume", "--out", str(out)]) == 0  # lock released


def test_two_processes_one_folder(tmp_path):
    """Item 3, for real: two ckd train on one new folder at once: one runs, the other is refused
    (or finds the finished run); metrics.jsonl is one run's, never interleaved."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ckd.cli", "train", *cli_flags(tiny(steps=40, checkpoint_every=50)),
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert err.count("\n") == 1 and ("another ckd train" in err or "already holds" in err), err
    assert [r["step"] for r in metrics(out)] == list(range(41))


CORRUPTIONS = {
    "step -5": (lambda s: s | {"step": -5}, "'step'"),
    "step string": (lambda s: s | {"step": "2"}, "'step'"),
    "step past the end": (lambda s: s | {"step": 99}, "'step'"),
    "config not a dict": (lambda s: s | {"config": [1, 2]}, "'config'"),
    "setting for random init": (lambda s: s | {"setting": {"step": 1.0}}, "'setting'"),
    "model missing key": (lambda s: s | {"model": {k: v for k, v in s["model"].items() if "query" not in k}},
                          "'model'"),
    "model wrong shape": (lambda s: s | {"model": s["model"] | {"readout.weight": torch.zeros(5, 5)}}, "'model'"),
    "model not tensors": (lambda s: s | {"model": {"a": 1}}, "'model'"),
    "model NaN": (lambda s: s | {"model": {k: v * math.nan for k, v in s["model"].items()}}, "not finite"),
    "optimizer not a dict": (lambda s: s | {"optimizer": "adam"}, "'optimizer'"),
    "optimizer wrong shape": (lambda s: s | {"optimizer": {**s["optimizer"], "state": {
        0: {**s["optimizer"]["state"][0], "exp_avg": torch.zeros(1)}}}}, "'optimizer'"),
    "optimizer lr string": (lambda s: s | {"optimizer": {**s["optimizer"], "param_groups": [
        {**s["optimizer"]["param_groups"][0], "lr": "fast"}]}}, "'optimizer'"),
    "scheduler not a dict": (lambda s: s | {"scheduler": 3}, "'scheduler'"),
    "scheduler other step": (lambda s: s | {"scheduler": {**s["scheduler"], "last_epoch": 7}}, "'scheduler'"),
    "rng missing numpy": (lambda s: s | {"rng": {"torch": s["rng"]["torch"]}}, "'rng'"),
    "rng bad torch state": (lambda s: s | {"rng": {**s["rng"], "torch": torch.zeros(3, dtype=torch.uint8)}},
                            "'rng'"),
    "not a dict": (lambda s: [s], "not a ckd training checkpoint"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_resume_checks_every_checkpoint_field_before_writing(tmp_path, capsys, name):
    """Item 4: an inconsistent checkpoint: one line naming the field; config.json, metrics.jsonl and
    the checkpoint keep their bytes (nothing rewritten, nothing emptied)."""
    cfg, out = tiny(steps=4), tmp_path / "run"
    assert main(["train", *cli_flags(cfg), "--stop-after", "2", "--out", str(out)]) == 0
    corrupt, words = CORRUPTIONS[name]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save(corrupt(state), out / "checkpoint.pt")
    before = snapshot(out)
    torch_rng = torch.get_rng_state()
    assert main(["train", *cli_flags(cfg), "--resume", "--out", str(out)]) == 2
    one_error(capsys, words)
    assert snapshot(out) == before
    assert torch.equal(torch.get_rng_state(), torch_rng)


def test_nothing_created_when_a_run_is_refused(tmp_path, capsys):
    """Item 6: validation (seed, sizes, memory) happens before the folder exists."""
    for args in (["--seed", "-1"], ["--seed", str(2**70)], ["--dim", str(10**7)], ["--batch", str(10**12)]):
        out = tmp_path / "run"
        assert main(["train", *cli_flags(tiny()), *args, "--out", str(out)]) == 2
        capsys.readouterr()
        assert not out.exists(), args
    with pytest.raises(ValueError, match="seed must be an integer in 0 .. 2\\*\\*63 - 1, got -1"):
        train(tiny(seed=-1), tmp_path / "api", progress=False)
    assert not (tmp_path / "api").exists()
    from ckd.evaluate import reference

    with pytest.raises(ValueError, match="seed must be an integer in 0 .. 2\\*\\*63 - 1, got 1180591620717411303424"):
        reference(tiny(), sequences=4, seed=2**70)


def test_interrupted_before_first_checkpoint_starts_again(tmp_path, monkeypatch, capsys):
    """Item 6: Ctrl-C before the first checkpoint leaves config.json and metrics.jsonl only; the same
    command starts the run again (and --resume says so instead of failing obscurely)."""
    import ckd.train.loop as T  # the loop looks ``sample`` up in its own module

    cfg, out = tiny(steps=6, checkpoint_every=5), tmp_path / "run"
    real = T.sample

    def interrupted(c, batch, *stream):
        if stream[:2] == (T.TRAIN, 3):
            raise KeyboardInterrupt
        return real(c, batch, *stream)

    monkeypatch.setattr(T, "sample", interrupted)
    assert main(["train", *cli_flags(cfg), "--out", str(out)]) == 130
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl"]
    capsys.readouterr()
    assert main(["train", *cli_flags(cfg), "--resume", "--out", str(out)]) == 2
    one_error(capsys, "nothing to resume", "run without --resume to start it again")
    assert main(["train", *cli_flags(cfg), "--out", str(out)]) == 0
    assert main(["train", *cli_flags(cfg), "--out", str(tmp_path / "full")]) == 0
    assert metrics(out) == metrics(tmp_path / "full")


def test_non_finite_loss_stops_keeps_last_good_checkpoint(tmp_path, capsys):
    """Items 8 and 16: a too large --lr stops at the first non-finite loss, exit 2, one line; the
    checkpoint on disk is the last one whose loss was measured finite; no NaN in metrics.jsonl."""
    cfg, out = tiny(steps=30, checkpoint_every=1), tmp_path / "run"
    assert main(["train", *cli_flags(cfg), "--lr", "1e4", "--warmup", "5", "--out", str(out)]) == 2
    err = one_error(capsys, "training diverged", "is not finite", "keeps the last good model (step 4)", "lower --lr")
    recs = metrics(out)
    assert all(math.isfinite(r["loss"]) for r in recs) and recs[-1]["step"] == 4, recs  # measured: inf at step 5
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values()), err
    for lr in ("1e6", "1e300"):  # diverges before the first checkpoint: nothing kept, the folder restarts
        out = tmp_path / f"r{lr}"
        assert main(["train", *cli_flags(cfg), "--lr", lr, "--out", str(out)]) == 2
        one_error(capsys, "training diverged", "no checkpoint was written")
        assert not (out / "checkpoint.pt").exists()
        assert main(["train", *cli_flags(tiny(steps=2)), "--out", str(out)]) == 0


def test_nan_model_refused_by_evaluate_and_forecast(tmp_path, capsys):
    """Item 8: evaluate and forecast --method transformer refuse non-finite weights naming the checkpoint."""
    out = tmp_path / "run"
    train(tiny(steps=2), out, progress=False)
    state = load_checkpoint(out / "checkpoint.pt")
    state["model"]["readout.weight"][0, 0] = math.nan
    bad = tmp_path / "nan.pt"
    save_checkpoint(bad, state)
    assert main(["evaluate", str(bad), "--sequences", "4"]) == 2
    one_error(capsys, "nan.pt", "not finite", "readout.weight")
    x = sample(tiny(), 1, EVAL)[0].numpy()
    np.save(tmp_path / "x.npy", x)
    assert main(["forecast", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy"), "--method", "transformer",
                 "--checkpoint", str(bad)]) == 2
    one_error(capsys, "nan.pt", "not finite")
    assert not (tmp_path / "f.npy").exists()


@pytest.mark.parametrize("args", [["--dim", str(10**6)], ["--batch", str(10**9)], ["--width", str(10**9)],
                                  ["--heads", str(10**9)], ["--length", str(10**9)], ["--layers", str(10**9)],
                                  ["--length", str(10**6), "--tokens", "raw"]])
def test_absurd_sizes_refused_before_allocating(tmp_path, capsys, args):
    """Item 7: sizes that cannot fit are refused with one line saying how much and what to do."""
    out = tmp_path / "run"
    assert main(["train", *cli_flags(tiny()), *args, "--out", str(out)]) == 2
    one_error(capsys, "needs about", "are available", "use smaller")
    assert not out.exists()


def test_checkpoints_claiming_huge_models_refused(tmp_path, capsys, monkeypatch):
    """Item 7: a config claiming dim 1e6 or 1e6 layers is refused before building; evaluate
    --sequences 1e9 too; and a model larger than memory (memory made small here)."""
    out = tmp_path / "run"
    train(tiny(steps=2), out, progress=False)
    for change, words in [({"dim": 10**6}, "config (dim 1000000) needs"),
                          ({"layers": 10**6}, "its config says 1000000")]:
        state = load_checkpoint(out / "checkpoint.pt")
        state["config"] |= change
        save_checkpoint(tmp_path / "big.pt", state)
        assert main(["evaluate", str(tmp_path / "big.pt"), "--sequences", "4"]) == 2
        one_error(capsys, "big.pt", words)
    assert main(["evaluate", str(out), "--sequences", str(10**9)]) == 2
    one_error(capsys, "needs about", "use fewer --sequences")
    import ckd.validation

    monkeypatch.setattr(ckd.validation, "available_memory", lambda device="cpu": 1000)
    with pytest.raises(ValueError, match="needs about .* but 1 kB are available"):
        load_model(out / "checkpoint.pt")


def test_memory_estimate_is_a_floor_of_the_weights():
    """parameter_count equals the built model's, for every architecture option."""
    import itertools

    from ckd.transformer import CausalTransformer, TransformerConfig, parameter_count

    for tokens, mlp, ln, bias, heads in itertools.product(TOKENS_ALL, [False, True], [False, True], [False, True],
                                                         [1, 3]):
        c = TransformerConfig(dim=2, n_layers=2, tokens=tokens, max_len=7, mlp=mlp, layernorm=ln, bias=bias,
                              n_heads=heads)
        assert parameter_count(c) == sum(p.numel() for p in CausalTransformer(c).parameters())


TOKENS_ALL = ("augmented", "raw")


def test_transformer_backend_huge_depth_refused(capsys, tmp_path):
    """Item 7: predict --backend transformer --depth 1e8 is refused before building 1e8 layers."""
    np.save(tmp_path / "x.npy", sample(tiny(), 1, EVAL)[0].numpy())
    assert main(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy"), "--backend", "transformer",
                 "--depth", str(10**8)]) == 2
    one_error(capsys, "transformer backend at depth 100000000", "needs about", "backend='descent'")


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_pipes_in_the_run_folder_never_opened(tmp_path, capsys, name):
    """A named pipe where the run keeps its files: refused with one line, never opened (no hang)."""
    out = tmp_path / "run"
    assert main(["train", *cli_flags(tiny(steps=2)), "--stop-after", "1", "--out", str(out)]) == 0
    (out / name).unlink()
    os.mkfifo(out / name)
    capsys.readouterr()
    assert main(["train", *cli_flags(tiny(steps=2)), "--resume", "--out", str(out)]) == 2
    one_error(capsys, name, "not a regular file")
    assert (out / "checkpoint.pt").exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    os.mkfifo(fresh / name)
    assert main(["train", *cli_flags(tiny(steps=2)), "--out", str(fresh)]) == 2
    one_error(capsys, "not a ckd training run")


# --------------------------------------------------------------------------- architecture options (issue 16)

NEW_OPTIONS = [dict(norm="post", mlp=True), dict(norm="output", bias=True), dict(heads=1, attention="linear"),
               dict(attention_norm="keys", attention="linear", layernorm=True, bias=True)]


@pytest.mark.parametrize("changes", NEW_OPTIONS, ids=["post", "output-bias", "one-head", "keys-pre-bias"])
def test_new_options_train_and_resume_bit_for_bit(tmp_path, changes):
    cfg = tiny(steps=4, checkpoint_every=2, eval_every=2, **changes)
    full = train(cfg, tmp_path / "full", progress=False)
    assert len(full) == 5 and all(math.isfinite(r["loss"]) for r in full)
    train(cfg, tmp_path / "run", stop_after=2, progress=False)
    assert train(cfg, tmp_path / "run", resume=True, progress=False) == full
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt")["model"] for name in ("full", "run"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loaded, model, _ = load_model(tmp_path / "run" / "checkpoint.pt")
    c = model.config
    assert (c.norm, c.attention_norm, c.bias, c.n_heads) == (loaded.norm, loaded.attention_norm, loaded.bias,
                                                             loaded.heads or 2)
    assert c.bias == any(name.endswith("bias") for name in a)


def test_cli_new_architecture_flags(tmp_path, capsys):
    """The ICML 2024 model shape: one linear-attention layer, one head, biases, LayerNorm on its output,
    position-normalised; the flags reach config.json, the rebuilt model and ckd evaluate."""
    out = tmp_path / "run"
    args = ["--attention", "linear", "--layers", "1", "--heads", "1", "--bias", "--norm", "output",
            "--attention-norm", "keys", "--task", "linear", "--steps", "3", "--warmup", "1", "--batch", "4",
            "--length", "8", "--dim", "2", "--log-every", "1", "--quiet"]
    assert main(["train", *args, "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert {k: cfg[k] for k in ("heads", "bias", "norm", "layernorm", "attention_norm")} == dict(
        heads=1, bias=True, norm="output", layernorm=False, attention_norm="keys")
    _, model, _ = load_model(out / "checkpoint.pt")
    attn = model.blocks[0].attn
    assert attn.n_heads == 1 and attn.norm == "keys" and attn.out.bias is not None
    assert isinstance(model.blocks[0].ln_attn, nn.LayerNorm) and isinstance(model.ln_out, nn.Identity)
    capsys.readouterr()
    assert main(["evaluate", str(out / "checkpoint.pt"), "--sequences", "4"]) == 0
    assert main(["train", *args, "--out", str(out), "--resume", "--layernorm"]) == 2
    one_error(capsys, "--layernorm contradicts --norm output")
    assert main(["train", *args[:-1], "--norm", "post", "--out", str(out), "--resume", "--quiet"]) == 2
    one_error(capsys, "different config", "norm: 'output' -> 'post'")


def test_construction_init_with_one_head_and_biases(tmp_path):
    """--init construction --heads 1 --layers 1 --bias: one gradient step (depth-1 CKD) at step 0."""
    cfg = tiny(attention="linear", layers=1, heads=1, bias=True, steps=0, dtype="float64", init="construction")
    rec = train(cfg, tmp_path / "run", progress=False)
    setting = construction_setting(cfg)
    x_eval = sample(cfg, cfg.eval_batch, EVAL)
    want = next_token_loss(descend(x_eval, "linear", depth=1, step=setting["step"]), x_eval)
    assert rel_err(torch.tensor(rec[0]["eval_loss"], dtype=torch.float64), want) < 1e-9
    _, model, _ = load_model(tmp_path / "run" / "checkpoint.pt")
    assert model.config.n_heads == 1 and model.blocks[0].attn.query.bias is not None


def test_runs_and_cards_older_than_the_new_fields(tmp_path):
    """A checkpoint or zoo card written before norm / attention_norm / bias existed loads and resumes
    with today's behaviour (LayerNorm before the branches when it says layernorm)."""
    import dataclasses

    from ckd import pretrained

    cfg, out = tiny(steps=4, layernorm=True), tmp_path / "run"
    train(cfg, out, stop_after=2, progress=False)
    state = load_checkpoint(out / "checkpoint.pt")
    for key in ("norm", "attention_norm", "bias"):
        del state["config"][key]
    save_checkpoint(out / "checkpoint.pt", state)
    old, model, _ = load_model(out / "checkpoint.pt")
    assert (old.norm, old.layernorm, model.config.norm) == ("pre", True, "pre")
    assert train(cfg, out, resume=True, progress=False)[-1]["step"] == 4

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    name = "linear-linear-8"  # layernorm: true
    card = json.loads((pretrained.zoo_dir() / f"{name}.json").read_text())
    for key in ("norm", "attention_norm", "bias"):
        card["training"]["config"].pop(key, None)
    for key in ("norm", "attention_norm", "row_gain"):
        card["architecture"].pop(key, None)
    (zoo / f"{name}.json").write_text(json.dumps(card))
    shutil.copy(pretrained.zoo_dir() / f"{name}.safetensors", zoo)
    loaded, model, upgraded = pretrained.load_with_config(name, zoo)
    assert loaded.norm == "pre" and upgraded["training"]["config"] == dataclasses.asdict(loaded)
    assert upgraded["architecture"]["norm"] == "pre" and upgraded["architecture"]["row_gain"] is False
    assert "--norm" not in pretrained.train_command(loaded) and "--layernorm" in pretrained.train_command(loaded)
