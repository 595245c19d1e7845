"""``ckd train --data`` (issue 16, item 1): training on the user's sequences -- windows, held-out
evaluation sequences, the file's SHA-256 / shape / dtype in the config, exact resume, a changed file
refused, and every bad input one line with nothing created."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import one_error

import ckd
from ckd.cli import main
from ckd.train import (
    TRAIN,
    TrainConfig,
    build_model,
    eval_windows,
    load_checkpoint,
    load_data,
    next_token_loss,
    train,
    train_windows,
    windows,
)

SMALL = dict(attention="linear", layers=1, batch=4, steps=6, warmup=2, log_every=1, eval_every=2, eval_batch=8,
             checkpoint_every=2)


@pytest.fixture
def seqs(tmp_path):
    """20 sequences of x_{t+1} = A x_t (T = 14, d = 3) in seqs.npy."""
    x = ckd.make_task("linear", 20, 14, 3, seed=5).x.numpy()
    np.save(tmp_path / "seqs.npy", x)
    return tmp_path / "seqs.npy", x


def config(path, **changes) -> TrainConfig:
    return TrainConfig(**({"task": "data", "data": str(path), "length": 8, "dim": 3} | SMALL | changes))


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_windows_are_seeded_slices_of_the_sequences():
    x = torch.arange(5 * 9 * 2, dtype=torch.float64).reshape(5, 9, 2)
    w = windows(x, 64, 4, seed=3)
    assert w.shape == (64, 4, 2) and torch.equal(w, windows(x, 64, 4, seed=3))
    assert not torch.equal(w, windows(x, 64, 4, seed=4))
    for win in w:  # each window is x[b, u:u+4] for some b, u
        b, u = int(win[0, 0]) // 18, (int(win[0, 0]) % 18) // 2
        assert torch.equal(win, x[b, u:u + 4])
    starts = {(int(win[0, 0]) % 18) // 2 for win in w}
    assert starts == set(range(6)), starts  # every start 0..T-length drawn (64 draws of 6)
    whole = windows(x, 16, 9, seed=0)  # T == length: whole sequences
    assert all(any(torch.equal(s, x[b]) for b in range(5)) for s in whole)


def test_val_fraction_holds_out_the_last_sequences(seqs):
    path, x = seqs
    data = load_data(path, val_fraction=0.25)
    assert torch.equal(data.train, torch.from_numpy(x[:15])) and torch.equal(data.val, torch.from_numpy(x[15:]))
    assert load_data(path, val_fraction=0.3).val.shape[0] == 6  # ceil(0.3 * 20), not 7 from 6.000000000000001
    assert load_data(path, val_fraction=0.01).val.shape[0] == 1  # at least one
    default = load_data(path)
    assert default.val.shape[0] == 2 and default.fields["val_fraction"] == 0.1
    cfg = config(path, eval_batch=1000)
    ev = eval_windows(cfg, default)  # every window of the 2 held-out sequences: 2 x (14 - 8 + 1)
    assert ev.shape == (14, 8, 3)
    assert all(any(torch.equal(w, default.val[b, u:u + 8]) for b in range(2) for u in range(7)) for w in ev)
    few = eval_windows(config(path, eval_batch=5), default)
    assert few.shape == (5, 8, 3) and len({tuple(w[0].tolist()) for w in few}) == 5  # distinct windows
    tr = train_windows(cfg, default, 200, TRAIN, 0, 0)
    held = {tuple(r.tolist()) for r in default.val.reshape(-1, 3)}
    assert not any(tuple(r.tolist()) in held for r in tr.reshape(-1, 3))  # never trained on held-out tokens
    assert not torch.equal(tr, train_windows(cfg, default, 200, TRAIN, 0, 1))  # each DDP rank its own
    for bad in (0.0, 1.0, 0.96, float("nan"), -0.5):
        with pytest.raises(ValueError, match="val-fraction"):
            load_data(path, val_fraction=bad)


def test_train_records_the_file_and_uses_its_windows(seqs, tmp_path):
    path, x = seqs
    run = tmp_path / "run"
    cfg = config(path)
    records = train(cfg, run, progress=False)
    saved = json.loads((run / "config.json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = dict(task="data", data=str(path), data_sha256=digest, data_shape=[20, 14, 3], data_dtype="float64",
                    val_data=None, val_sha256=None, val_shape=None, val_dtype=None, val_fraction=0.1)
    assert {k: saved[k] for k in expected} == expected
    assert {k: load_checkpoint(run / "checkpoint.pt")["config"][k] for k in expected} == expected
    # step 0's losses are the initial model's on the run's windows: the loop trains on these windows
    data = load_data(path)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    with torch.no_grad():
        xt = train_windows(cfg, data, cfg.batch, TRAIN, 0, 0).float()
        xe = eval_windows(cfg, data).float()
        assert records[0]["loss"] == float(next_token_loss(model(xt), xt))
        assert records[0]["eval_loss"] == float(next_token_loss(model(xe), xe))
    assert [r["step"] for r in records] == list(range(7))


def test_resume_is_bit_for_bit_and_refuses_another_file(seqs, tmp_path, capsys):
    path, x = seqs
    full = train(config(path), tmp_path / "full", progress=False)
    run = tmp_path / "run"
    train(config(path), run, stop_after=3, progress=False)
    moved = tmp_path / "moved.npy"  # the same bytes elsewhere: the same data
    shutil.copy(path, moved)
    assert train(config(moved), run, resume=True, progress=False) == full
    a, b = (load_checkpoint(p / "checkpoint.pt") for p in (tmp_path / "full", run))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # another file (one value changed by 1e-12) is refused, naming the field; the run is left as it was
    changed = x.copy()
    changed[0, 0, 0] += 1e-12
    np.save(tmp_path / "changed.npy", changed)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    args = ["train", "--data", str(tmp_path / "changed.npy"), "--attention", "linear", "--layers", "1", "--batch",
            "4", "--steps", "6", "--warmup", "2", "--log-every", "1", "--eval-every", "2", "--length", "8",
            "--checkpoint-every", "2", "--quiet", "--resume", "--out", str(run)]
    assert main(args) == 2
    one_error(capsys, "different config", "data_sha256")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    with pytest.raises(ValueError, match="data_sha256: the files give"):  # the API: a config naming another file
        train(config(tmp_path / "changed.npy", data_sha256=a["config"]["data_sha256"]), tmp_path / "api",
              progress=False)
    assert not (tmp_path / "api").exists()


def test_cli_formats_inference_and_val_data(seqs, tmp_path, capsys):
    path, x = seqs
    np.savez(tmp_path / "one.npz", sequences=x[:6])
    np.savetxt(tmp_path / "one.csv", x[0], delimiter=",")
    np.save(tmp_path / "val.npy", x[:3, :10].astype(np.float32))
    common = ["--layers", "1", "--batch", "2", "--steps", "1", "--quiet"]
    assert main(["train", "--data", str(tmp_path / "one.npz"), *common, "--out", str(tmp_path / "a")]) == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (cfg["dim"], cfg["length"], cfg["data_shape"], cfg["val_fraction"]) == (3, 14, [6, 14, 3], 0.1)
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "one.csv"), "--length", "5", *common,
                 "--out", str(tmp_path / "b")]) == 0
    assert "evaluation (eval_loss) uses it too" in capsys.readouterr().err  # one sequence: evaluated on itself
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (cfg["data_shape"], cfg["length"], cfg["val_fraction"], cfg["val_data"]) == ([14, 3], 5, None, None)
    assert main(["train", "--data", str(path), "--val-data", str(tmp_path / "val.npy"), "--length", "10", "--dim",
                 "3", *common, "--out", str(tmp_path / "c")]) == 0
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert (cfg["val_shape"], cfg["val_dtype"], cfg["val_fraction"]) == ([3, 10, 3], "float32", None)
    assert cfg["val_sha256"] == hashlib.sha256((tmp_path / "val.npy").read_bytes()).hexdigest()
    assert main(["evaluate", str(tmp_path / "c")]) == 2  # no task family to draw prompts from
    one_error(capsys, "task 'data'")


def _bad_files(folder, x):
    files = {
        "nan.npy": np.where(np.arange(x.size).reshape(x.shape) == 40, np.nan, x),
        "inf.npy": np.where(np.arange(x.size).reshape(x.shape) == 7, -np.inf, x),
        "rank4.npy": x[None], "rank1.npy": x[0, 0], "empty.npy": x[:0], "complex.npy": x.astype(np.complex128),
        "text.npy": np.array([["a", "b"]]), "huge.npy": x * 1e30, "d2.npy": x[..., :2], "short.npy": x[:, :5],
    }
    for name, arr in files.items():
        np.save(folder / name, arr)
    np.savez(folder / "two.npz", a=x, b=x)
    (folder / "words.csv").write_text("a,b\nc,d\n")
    (folder / "seqs.txt").write_text("1,2\n")
    (folder / "garbage.npy").write_bytes(b"not an array")
    with open(folder / "claims.npy", "wb") as fh:  # a header claiming 10^15 values (8 PB), no data
        np.lib.format.write_array_header_2_0(fh, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10**6, 10**6, 1000)})


@pytest.mark.parametrize("args, words", [
    (["--data", "nan.npy"], "contains NaN or inf (first at index"),
    (["--data", "inf.npy"], "contains NaN or inf"),
    (["--data", "rank4.npy"], "expected (B, T, d) sequences or one (T, d) sequence"),
    (["--data", "rank1.npy"], "expected (B, T, d)"),
    (["--data", "empty.npy"], "is empty"),
    (["--data", "complex.npy"], "complex"),
    (["--data", "text.npy"], "not a real number type"),
    (["--data", "huge.npy"], "values too large for float32"),
    (["--data", "two.npz"], "holds 2 arrays"),
    (["--data", "words.csv"], "not a numeric comma-separated table"),
    (["--data", "seqs.txt"], "expected a .npy, .npz or .csv file"),
    (["--data", "garbage.npy"], "not a readable .npy array"),
    (["--data", "missing.npy"], "no such file"),
    (["--data", "claims.npy"], "needs about"),
    (["--data", "short.npy", "--length", "8"], "T = 5 tokens are shorter than --length 8"),
    (["--data", "seqs.npy", "--length", "15"], "shorter than --length 15"),
    (["--data", "seqs.npy", "--dim", "2"], "--dim 2 does not match the data"),
    (["--data", "seqs.npy", "--task", "linear"], "give --task or --data, not both"),
    (["--val-fraction", "0.2"], "need --data"),
    (["--val-data", "seqs.npy"], "need --data"),
    (["--data", "seqs.npy", "--val-fraction", "0"], "--val-fraction must be > 0"),
    (["--data", "seqs.npy", "--val-fraction", "1"], "holds out 20 of the 20 sequences"),
    (["--data", "seqs.npy", "--val-fraction", "nan"], "--val-fraction must be finite"),
    (["--data", "seqs.npy", "--val-fraction", "x"], "invalid float value"),
    (["--data", "seqs.npy", "--val-data", "seqs.npy", "--val-fraction", "0.5"], "not both"),
    (["--data", "seqs.npy", "--val-data", "d2.npy"], "d = 2, but --data"),
    (["--data", "seqs.npy", "--val-data", "short.npy"], "--val-data"),
    (["--data", "seqs.npy", "--val-data", "nan.npy"], "--val-data"),
    (["--data", "seqs.npy", "--batch", str(10**12)], "needs about"),
])
def test_bad_data_one_line_nothing_created(seqs, tmp_path, capsys, args, words):
    path, x = seqs
    _bad_files(tmp_path, x)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    args = [str(tmp_path / a) if a.endswith((".npy", ".npz", ".csv", ".txt")) else a for a in args]
    out = tmp_path / "run"
    assert main(["train", "--quiet", "--steps", "1", "--out", str(out), *args]) == 2
    one_error(capsys, words)
    assert not out.exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_config_fields_checked():
    with pytest.raises(ValueError, match="data_sha256 is set: it needs task 'data'"):
        TrainConfig(data_sha256="0" * 64).validate()
    with pytest.raises(ValueError, match="task 'data' needs data"):
        TrainConfig(task="data").validate()
    with pytest.raises(ValueError, match="data_sha256 must be 64 hex digits"):
        TrainConfig(task="data", data="x.npy", data_sha256="abc").validate()
    with pytest.raises(ValueError, match="data_shape must be a list"):
        TrainConfig(task="data", data="x.npy", data_shape=[3]).validate()
    with pytest.raises(ValueError, match="val_fraction must be < 1"):
        TrainConfig(task="data", data="x.npy", val_fraction=1.5).validate()


def test_construction_init_on_data_tunes_on_training_windows(seqs, tmp_path):
    path, _ = seqs
    run = tmp_path / "run"
    train(config(path, init="construction", attention="softmax", steps=1, dtype="float64"), run, progress=False)
    setting = json.loads((run / "config.json").read_text())["setting"]
    assert setting["kernel"] == "softmax" and np.isfinite(setting["step"])


def test_ddp_on_data(seqs, tmp_path):
    """torchrun --nproc_per_node=2 with --data: each rank draws its own windows; one run is written."""
    path, _ = seqs
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "ckd.cli", "train", "--data", str(path), "--attention", "linear", "--layers", "1",
                           "--batch", "4", "--steps", "4", "--log-every", "1", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = metrics(out)
    assert [r["step"] for r in rec] == list(range(5)) and all(np.isfinite(r["loss"]) for r in rec)
    assert json.loads((out / "config.json").read_text())["data_shape"] == [20, 14, 3]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
