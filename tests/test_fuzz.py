"""Property-based CLI fuzzing (issues 12 and 21): ``ckd predict``, ``forecast`` (one step, and rollouts with every
method and ``--plot``), ``train`` (``--data`` too), ``evaluate`` (``--out`` too), ``compare`` and ``zoo``
on generated inputs -- arrays of random shapes, dtypes, magnitudes and NaN/inf positions, CSV
texts, flag values. Every run either exits 0 with finite output of the promised shape, or exits 2
with exactly one stderr line ``ckd: error: ...``; never a traceback (an exception escaping
``ckd.cli.main`` fails the test), never a change to IN or to a file the run did not own, no OUT
after an error.

``ckd.cli.main`` is called in-process (fast), in ``tmp_path`` only. Default size is CI-friendly
(about 20 s); ``pytest tests/test_fuzz.py --fuzz-long`` runs 20 times more examples.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckd.cli import main

LONG = 20 if os.environ.get("CKD_FUZZ_LONG") else 1
FUZZ = dict(deadline=None, derandomize=not LONG > 1, suppress_health_check=list(HealthCheck), database=None)
COUNTS: dict[str, int] = {}
_ids = itertools.count()

MAGNITUDES = [0.0, 1e-300, 1e-160, 1e-10, 0.5, 1.0, 3.0, 1e10, 1e100, 1e160, 1e300]
DTYPES = ["<f8", "<f4", ">f8", "<f2", "<i8", "|b1", "<c16", "<U3"]


@st.composite
def arrays(draw) -> np.ndarray:
    """Small arrays of rank 1..4 (mostly 2 and 3), many dtypes, magnitudes, NaN/inf placed anywhere."""
    rank = draw(st.sampled_from([1, 2, 2, 2, 3, 3, 4]))
    shape = tuple(draw(st.integers(0 if draw(st.booleans()) else 1, 5 if i < rank - 1 else 3)) for i in range(rank))
    if rank >= 2:  # T: enough rows to be interesting
        shape = shape[:-2] + (draw(st.integers(0, 12)),) + shape[-1:]
    scale = draw(st.sampled_from(MAGNITUDES))
    seed = draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).normal(size=shape) * scale
    if x.size and draw(st.booleans()) and draw(st.booleans()):
        flat = x.reshape(-1)
        flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if x.size and draw(st.integers(0, 5)) == 0:
        x[...] = 0.0
    dtype = draw(st.sampled_from(DTYPES[:3] if draw(st.booleans()) else DTYPES))
    with np.errstate(all="ignore"):
        return x.astype(dtype) if dtype != "<U3" else x.astype(str).astype("<U3")


@st.composite
def good_arrays(draw) -> np.ndarray:
    """Valid trajectories (float64, finite, T >= 3), so that the success path is explored too."""
    shape = (draw(st.integers(3, 14)), draw(st.integers(1, 3)))
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 3)), *shape)
    scale = draw(st.sampled_from([1e-3, 1.0, 1.0, 10.0, 1e6]))
    return np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=shape) * scale


CSV_TEXT = st.one_of(
    st.text(alphabet="0123456789.,-+eE naNif#\n\t;x", max_size=80),
    st.lists(st.lists(st.sampled_from(["1", "-2.5", "0", "1e-400", "1e400", "nan", "", "a", "3e160"]),
                      min_size=1, max_size=4), min_size=0, max_size=8).map(
        lambda rows: "\n".join(",".join(r) for r in rows)),
)


def _digest(folder: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _check(argv: list[str], folder: pathlib.Path, capsys, out: pathlib.Path | None, shape, name: str,
           also: tuple[str, ...] = ()) -> int:
    """Run ``ckd argv`` and check the promise; return the exit status. ``also``: other files the run may
    write (created or replaced) after a success."""
    capsys.readouterr()
    before = _digest(folder)
    rc = main(argv)
    captured = capsys.readouterr()
    after = _digest(folder)
    COUNTS[f"{name} runs"] = COUNTS.get(f"{name} runs", 0) + 1
    COUNTS[f"{name} exit {rc}"] = COUNTS.get(f"{name} exit {rc}", 0) + 1
    assert "Traceback" not in captured.err, (argv, captured.err)
    changed = {k for k in before if after.get(k) != before[k]} | (set(after) - set(before))
    owned = ({out.name} if out is not None else set()) | set(also)
    assert changed <= owned, (argv, "changed files it does not own", changed - owned)
    if rc == 2:
        lines = captured.err.strip().splitlines()
        errors = [ln for ln in lines if not ln.startswith("ckd: warning:")]
        assert len(errors) == 1 and errors[0].startswith("ckd: error: "), (argv, captured.err)
        assert not changed, (argv, "an error wrote", changed)
    else:
        assert rc == 0, (argv, rc, captured.err)
        if out is not None and shape is not None:
            res = np.load(out) if out.suffix == ".npy" else np.loadtxt(out, delimiter=",", ndmin=2)
            assert res.shape == shape and np.isfinite(res).all(), (argv, res.shape, shape)
    return rc


def _write_input(folder: pathlib.Path, data, suffix: str) -> pathlib.Path:
    path = folder / f"in{suffix}"
    if isinstance(data, str):
        path.write_text(data)
    else:
        np.save(path, data) if suffix == ".npy" else np.savetxt(path, np.atleast_2d(data), delimiter=",", fmt="%s")
    return path


def _fresh(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / f"case{next(_ids)}"
    folder.mkdir()
    (folder / "unrelated.npy").write_bytes(b"not ours")  # must survive every run
    return folder


def _shape_of(path: pathlib.Path):
    """IN's shape as ckd reads it (None when it cannot be read: then only an error is allowed)."""
    try:
        from ckd.io import load_array

        return load_array(path).shape
    except Exception:
        return None


NUM = ["0", "1", "-1", "0.5", "2.5", "32", "1e3", "1e-300", "1e300", "1e-400", "nan", "inf", "-inf", "x"]
DEPTHS = ["0", "1", "3", "16", "inf", "-1", "2.5", "deep", "1e3"]


@settings(max_examples=60 * LONG, **FUZZ)
@given(data=st.one_of(good_arrays(), arrays(), arrays(), CSV_TEXT), csv=st.booleans(),
       out_suffix=st.sampled_from([".npy", ".csv"]),
       flags=st.fixed_dictionaries({}, optional={
           "--kernel": st.sampled_from(["linear", "exp", "softmax", "gaussian", "cosine"]),
           "--beta": st.sampled_from(NUM), "--sigma": st.sampled_from(NUM), "--depth": st.sampled_from(DEPTHS),
           "--step": st.sampled_from(NUM), "--ridge": st.sampled_from(NUM),
           "--backend": st.sampled_from(["descent", "transformer"]), "--tokens": st.sampled_from(["augmented", "raw"]),
           "--dtype": st.sampled_from(["float64", "float32"])}))
def test_fuzz_predict(data, csv, out_suffix, flags, tmp_path, capsys):
    folder = _fresh(tmp_path)
    if isinstance(data, str) or (csv and data.ndim == 2 and data.dtype.kind in "fiub"):
        inp = _write_input(folder, data, ".csv")
    else:
        inp = _write_input(folder, data, ".npy")
    out = folder / f"out{out_suffix}"
    argv = ["predict", str(inp), "-o", str(out)] + [a for kv in flags.items() for a in kv]
    _check(argv, folder, capsys, out, _shape_of(inp), "predict")


@st.composite
def step_vectors(draw, T: int):
    """Per-row steps for a prompt of T rows: mostly the right length, some bad values."""
    n = draw(st.sampled_from([T, T, T, T, T - 1, T + 1, 0]))
    good = [0.01, 0.1, 0.5, 2.0, 1.0]
    pool = good if draw(st.booleans()) else good + [0.0, 1e300, 1e-300, -0.5, np.nan, np.inf]
    values = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    with np.errstate(all="ignore"):
        return np.array(values, dtype=np.float64).astype(draw(st.sampled_from(["<f8", "<f4", ">f8", "<i8", "|b1"])))


@settings(max_examples=40 * LONG, **FUZZ)
@given(data=st.data(), x=good_arrays(), csv=st.booleans(), wrong=st.sampled_from([None] * 3 + ["any"]),
       flags=st.fixed_dictionaries({}, optional={
           "--kernel": st.sampled_from(["linear", "exp", "softmax", "gaussian"]),
           "--depth": st.sampled_from(["0", "1", "3", "inf"]), "--ridge": st.sampled_from(["0", "0.1"]),
           "--sweeps": st.sampled_from(["1", "2"]), "--dtype": st.sampled_from(["float64", "float32"])}))
def test_fuzz_predict_step_file(data, x, csv, wrong, flags, tmp_path, capsys):
    """--step-file ETA: generated vectors (good, wrong length, NaN / inf / negative values, other dtypes)
    or any array; the promise holds (one line and no OUT, or finite OUT of IN's shape)."""
    folder = _fresh(tmp_path)
    inp = _write_input(folder, x, ".npy")
    eta = data.draw(arrays() if wrong else step_vectors(x.shape[-2]))
    step = folder / ("eta.csv" if csv and eta.ndim == 1 and eta.dtype.kind in "fi" else "eta.npy")
    if step.suffix == ".csv":
        np.savetxt(step, eta[None], delimiter=",")
    else:
        np.save(step, eta)
    out = folder / "out.npy"
    argv = ["predict", str(inp), "-o", str(out), "--step-file", str(step)] + [a for kv in flags.items() for a in kv]
    _check(argv, folder, capsys, out, x.shape, "predict --step-file")


@settings(max_examples=10 * LONG, **FUZZ)
@given(data=arrays(), command=st.sampled_from(["predict", "forecast"]), spelling=st.sampled_from(["same", "dot"]))
def test_fuzz_output_is_input(data, command, spelling, tmp_path, capsys):
    """-o IN (also spelt ./IN) is refused: IN is never overwritten."""
    folder = _fresh(tmp_path)
    inp = _write_input(folder, data, ".npy")
    out = inp if spelling == "same" else inp.parent / "." / inp.name
    assert _check([command, str(inp), "-o", str(out)], folder, capsys, None, None, command) == 2


@settings(max_examples=40 * LONG, **FUZZ)
@given(data=st.one_of(good_arrays(), good_arrays(), arrays(), CSV_TEXT), flags=st.fixed_dictionaries({}, optional={
    "--method": st.sampled_from(["ckd", "analogues", "krr", "ols", "last", "transformer", "magic"]),
    "--sigma": st.sampled_from(NUM), "--ridge": st.sampled_from(NUM),
    "--k": st.sampled_from(["1", "3", "0", "-2", "2.5"]),
    "--depth": st.sampled_from(["1", "inf", "2", "0"])}))
def test_fuzz_forecast(data, flags, tmp_path, capsys):
    folder = _fresh(tmp_path)
    inp = _write_input(folder, data, ".csv" if isinstance(data, str) else ".npy")
    out = folder / "out.npy"
    argv = ["forecast", str(inp), "-o", str(out)] + [a for kv in flags.items() for a in kv]
    _check(argv, folder, capsys, out, _shape_of(inp), "forecast")


TRAIN_FLAGS = {  # mostly valid values, so that runs get past validation
    "--task": st.sampled_from(["linear", "periodic", "rotation-tanh", "periodic", "spiral"]),
    "--attention": st.sampled_from(["linear", "softmax", "exp", "gaussian", "softmax", "none"]),
    "--layers": st.sampled_from(["1", "2", "1", "0"]), "--batch": st.sampled_from(["1", "3", "2", "0"]),
    "--length": st.sampled_from(["4", "6", "8", "1"]), "--dim": st.sampled_from(["1", "2", "2", "0"]),
    "--lr": st.sampled_from(["1e-3", "1e-2", "1e-3", "0", "nan", "1e300", "1e6"]),
    "--seed": st.sampled_from(["0", "7", "3", "-1", str(2**70)]), "--warmup": st.sampled_from(["0", "1", "-3"]),
    "--dtype": st.sampled_from(["float32", "float64"]),
}


@settings(max_examples=8 * LONG, **FUZZ)
@given(flags=st.fixed_dictionaries({}, optional=TRAIN_FLAGS), steps=st.sampled_from(["1", "2", "2", "0"]),
       existing=st.booleans())
def test_fuzz_train(flags, steps, existing, tmp_path, capsys):
    flags = {"--length": "6", "--batch": "2", "--layers": "1", **flags}  # small unless drawn
    folder = _fresh(tmp_path)
    run = folder / "run"
    if existing:  # a folder with someone else's file: must not be touched
        run.mkdir()
        (run / "metrics.jsonl").write_text("theirs\n")
    argv = ["train", "--out", str(run), "--steps", steps, "--quiet", "--log-every", "1", "--eval-every", "1"]
    argv += [a for kv in flags.items() for a in kv]
    _check(argv, folder, capsys, None, None, "train")
    if existing:
        assert (run / "metrics.jsonl").read_text() == "theirs\n", "another run's metrics.jsonl was overwritten"


DATA_FLAGS = {  # ckd train --data: the data flags, and the flags whose meaning --data changes
    "--val-fraction": st.sampled_from(["0.1", "0.5", "0.25", "0", "1", "nan", "-1", "x"]),
    "--val-data": st.sampled_from(["same", "other", "other", "missing"]),
    "--length": st.sampled_from(["3", "4", "6", "100"]), "--dim": st.sampled_from(["1", "2", "3"]),
    "--task": st.sampled_from(["linear"]), "--init": st.sampled_from(["random", "construction"]),
    "--attention": st.sampled_from(["linear", "softmax"]), "--dtype": st.sampled_from(["float32", "float64"]),
}


@settings(max_examples=12 * LONG, **FUZZ)
@given(data=st.one_of(good_arrays(), good_arrays(), good_arrays(), arrays(), CSV_TEXT),
       suffix=st.sampled_from([".npy", ".npz", ".csv"]), steps=st.sampled_from(["1", "2"]),
       flags=st.lists(st.sampled_from(list(DATA_FLAGS)), max_size=3, unique=True).flatmap(  # a few at a time
           lambda keys: st.fixed_dictionaries({k: DATA_FLAGS[k] for k in keys})))
def test_fuzz_train_data(data, suffix, flags, steps, tmp_path, capsys):
    folder = _fresh(tmp_path)
    if isinstance(data, str) or (suffix == ".csv" and data.ndim == 2 and data.dtype.kind in "fiub"):
        inp = _write_input(folder, data, ".csv")
    elif suffix == ".npz":
        inp = folder / "in.npz"
        np.savez(inp, sequences=data)
    else:
        inp = _write_input(folder, data, ".npy")
    if "--val-data" in flags:
        val = {"same": inp, "other": folder / "val.npy", "missing": folder / "none.npy"}[flags["--val-data"]]
        if flags["--val-data"] == "other":
            np.save(val, np.random.default_rng(0).normal(size=(2, 8, data.shape[-1] if not isinstance(data, str)
                                                                 and data.ndim else 2)))
        flags = flags | {"--val-data": str(val)}
    run = folder / "run"
    argv = ["train", "--data", str(inp), "--out", str(run), "--steps", steps, "--quiet", "--batch", "2", "--layers",
            "1", "--log-every", "1", "--eval-every", "1"] + [a for kv in flags.items() for a in kv]
    if _check(argv, folder, capsys, None, None, "train --data") == 0:
        assert json.loads((run / "config.json").read_text())["data_sha256"] == hashlib.sha256(
            inp.read_bytes()).hexdigest()
    else:
        assert not run.exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz-eval") / "run"
    assert main(["train", "--task", "periodic", "--dim", "2", "--length", "8", "--batch", "2", "--steps", "2",
                 "--layers", "1", "--quiet", "--out", str(run)]) == 0
    return run / "checkpoint.pt"


@settings(max_examples=4 * LONG, **FUZZ)
@given(sequences=st.sampled_from(["2", "3", "0", "1", "-5", "1000000000"]),
       seed=st.sampled_from([None, "0", "-1", str(2**70)]), out=st.booleans())
def test_fuzz_evaluate(checkpoint, sequences, seed, out, tmp_path, capsys):
    folder = _fresh(tmp_path)
    argv = ["evaluate", str(checkpoint), "--sequences", sequences] + (["--seed", seed] if seed else [])
    argv += ["--out", str(folder / "eval")] if out else []
    _check(argv, folder, capsys, None, None, "evaluate")


COMPARE_STEPS = NUM + (["fit", "fit-per-row"] if importlib.util.find_spec("ckd.descent.fit") else [])


@settings(max_examples=25 * LONG, **FUZZ)
@given(data=st.one_of(good_arrays(), good_arrays(), arrays()), pred=st.sampled_from(["copy", "noisy", "zero", "short",
                                                                                      "nan", "self"]),
       existing=st.sampled_from([None, None, "foreign", "ours"]), flags=st.fixed_dictionaries({}, optional={
           "--kernel": st.sampled_from(["linear", "exp", "softmax", "gaussian", "cosine"]),
           "--depth": st.sampled_from(["1", "0,inf", "1,4,16,inf", "2,2", "x", "", "inf", "-1"]),
           "--step": st.sampled_from(COMPARE_STEPS), "--ridge": st.sampled_from(NUM), "--beta": st.sampled_from(NUM)}))
def test_fuzz_compare(data, pred, existing, flags, tmp_path, capsys):
    """``ckd compare PRED --data SEQS --out DIR``: DIR holds only compare.* after success, nothing after an error,
    and a compare.json it did not write is never replaced."""
    folder = _fresh(tmp_path)
    seqs = _write_input(folder, data, ".npy")
    q = data
    with np.errstate(all="ignore"):
        if data.dtype.kind == "f" and pred == "noisy":
            q = data + np.random.default_rng(0).normal(size=data.shape).astype(data.dtype)
        elif data.dtype.kind == "f" and pred == "zero":
            q = np.zeros_like(data)
        elif pred == "short" and data.ndim >= 2:
            q = data[..., :-1, :]
        elif data.dtype.kind == "f" and pred == "nan" and data.size:
            q = data.copy()
            q.reshape(-1)[0] = np.nan
    path = folder / "pred.npy"
    np.save(path, q)
    out = folder / "cmp"
    if existing:
        out.mkdir()
        mark = '{"format": "ckd-compare-1"}' if existing == "ours" else '{"theirs": 1}'
        (out / "compare.json").write_text(mark)
    argv = ["compare", str(seqs if pred == "self" else path), "--data", str(seqs), "--out", str(out)]
    rc = _check(argv + [a for kv in flags.items() for a in kv], folder, capsys, None, None, "compare")
    if existing == "foreign":
        assert rc == 2 and (out / "compare.json").read_text() == '{"theirs": 1}'
    elif rc == 2:
        assert not out.exists() or sorted(p.name for p in out.iterdir()) == ["compare.json"]
    else:
        assert {p.name for p in out.iterdir()} <= {"compare.json", "compare.md", "compare.png"}
        assert json.loads((out / "compare.json").read_text())["format"] == "ckd-compare-1"


ROLLOUT_FLAGS = {  # issue 21: the rollout methods and --plot
    "--univariate": st.just(None), "--embed": st.sampled_from(["2", "3", "2", "0", "x", str(2**70)]),
    "--sweeps": st.sampled_from(["4", "16", "0", str(2**70)]), "--layers": st.sampled_from(["2", "4", "0", "70000"]),
    "--k": st.sampled_from(["1", "2", "0"]), "--sigma": st.sampled_from(["0.5", "1", "0", "nan", "1e300"]),
    "--ridge": st.sampled_from(["1e-6", "1e-3", "-1", "inf"]),
    "--plot": st.sampled_from(["fig.png", "fig.pdf", "fig.png", "fig", "fig.xyz", "figdir", "out.npy",
                               "unrelated.npy"]),
}
# the flags each method reads (others are refused with one line: drawn now and then)
READS = {"krr": ["--univariate", "--sigma", "--ridge", "--plot"],
         "ckd": ["--univariate", "--sweeps", "--layers", "--sigma", "--ridge", "--plot"],
         "analogues": ["--univariate", "--k", "--plot"], "parrot": ["--embed", "--plot"], "last": ["--plot"],
         "mean": ["--plot"], "magic": []}


@st.composite
def trajectories(draw) -> np.ndarray:
    """Valid contexts long enough for every rollout method (T >= 36), one or a few sequences."""
    T, d = draw(st.integers(36, 48)), draw(st.integers(1, 3))
    x = np.cumsum(np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=(T, d)), 0)
    return x if draw(st.booleans()) else np.stack([x, x[::-1]])


@st.composite
def rollout_flags(draw) -> dict:
    method = draw(st.sampled_from(list(READS)))
    keys = READS[method] if draw(st.integers(0, 3)) else list(ROLLOUT_FLAGS)
    chosen = draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)) if keys else []
    if "--univariate" in chosen and method != "ckd" and draw(st.booleans()):
        chosen.append("--embed")
    return {"--method": method, **{k: draw(ROLLOUT_FLAGS[k]) for k in chosen}}


@settings(max_examples=30 * LONG, **FUZZ)
@given(data=st.one_of(trajectories(), trajectories(), trajectories(), arrays()),
       horizon=st.sampled_from(["1", "3", "5", "2", "4", "0", "-1", "2.5", str(2**70)]),
       truth=st.sampled_from([None, "ok", "bad"]), flags=rollout_flags())
def test_fuzz_rollout(data, horizon, truth, flags, tmp_path, capsys):
    """``ckd forecast --horizon H`` with every rollout method, --univariate, --embed, --sweeps, --layers and
    --plot FIG (names without a suffix, unknown suffixes, a folder, the output, someone else's file):
    finite (H, d) / (B, H, d) or one line; FIG written only on success, never onto a file it does not own."""
    pytest.importorskip("matplotlib")
    folder = _fresh(tmp_path)
    (folder / "figdir").mkdir()
    inp = _write_input(folder, data, ".npy")
    out = folder / "out.npy"
    argv = ["forecast", str(inp), "-o", str(out), "--horizon", horizon]
    for k, v in flags.items():
        argv += [k] if v is None else [k, str(folder / v) if k == "--plot" else v]
    shape = _shape_of(inp)
    H = int(horizon) if horizon.isdigit() and int(horizon) < 100 else None
    want = None if shape is None or H is None or len(shape) not in (2, 3) else shape[:-2] + (H, shape[-1])
    if truth is not None and want is not None:
        np.save(folder / "truth.npy", np.zeros(want if truth == "ok" else (1, 1)))
        argv += ["--truth", str(folder / "truth.npy")]
    plot = flags.get("--plot")
    rc = _check(argv, folder, capsys, out, want, "forecast --horizon", also=(plot,) if plot else ())
    if plot in ("fig", "fig.xyz", "out.npy", "unrelated.npy"):
        assert rc == 2 and not (folder / plot).is_file() or plot == "unrelated.npy", argv
    if rc == 0 and plot:
        assert (folder / plot).read_bytes()[:4] in (b"\x89PNG", b"%PDF"), argv


@settings(max_examples=12 * LONG, **FUZZ)
@given(argv=st.sampled_from([["zoo"], ["zoo", "list"], ["zoo", "show"], ["zoo", "show", "NAME"],
                             ["zoo", "show", "x"], ["zoo", "show", "../etc/passwd"], ["zoo", "show", ""],
                             ["zoo", "build", "nope", "--out", "OUT"],
                             ["zoo", "build", "--out", ""], ["zoo", "frobnicate"], ["zoo", "list", "--x"]]))
def test_fuzz_zoo(argv, tmp_path, capsys):
    """``ckd zoo``: list and show answer 0; unknown models, actions and flags are one line; nothing written."""
    from ckd import pretrained

    folder = _fresh(tmp_path)
    names = pretrained.list()
    argv = [names[0] if a == "NAME" and names else str(folder / "zoo") if a == "OUT" else a for a in argv]
    rc = _check(argv, folder, capsys, None, None, "zoo")
    assert rc == (0 if argv[1:2] == ["list"] and len(argv) == 2 or argv[1:3] == ["show", names[0]] else 2), argv
    assert not (folder / "zoo").exists()


@pytest.mark.parametrize("existing", [None, "foreign", "file", "figure only"])  # "ours": test_hardening.py
def test_fuzz_evaluate_out(checkpoint, existing, tmp_path, capsys):
    """``ckd evaluate --out DIR``: a new, empty or own folder is written; a folder holding someone else's
    evaluation files, or a file, is refused with one line and left as it was (issue 21, item 1)."""
    pytest.importorskip("matplotlib")
    folder = _fresh(tmp_path)
    out = folder / "eval"
    if existing == "file":
        out.write_text("theirs")
    elif existing:
        out.mkdir()
        if existing == "foreign":
            (out / "evaluation.json").write_text('{"theirs": 1}')
        elif existing == "ours":
            (out / "evaluation.json").write_text('{"format": "ckd-evaluate-1"}')
        elif existing == "figure only":
            (out / "evaluation.png").write_bytes(b"theirs")
    before = {p.name: p.read_bytes() for p in out.iterdir()} if out.is_dir() else None
    rc = _check(["evaluate", str(checkpoint), "--sequences", "2", "--out", str(out)], folder, capsys, None, None,
                "evaluate --out", also=("eval",))
    if existing in ("foreign", "file", "figure only"):
        assert rc == 2
        assert (out.read_text() == "theirs") if existing == "file" else \
            {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert rc == 0 and {"evaluation.json", "evaluation.png", "evaluation.pdf"} <= {p.name for p in out.iterdir()}


def test_fuzz_counts_are_reported():
    """Prints the counts of the runs above (pytest -s shows them)."""
    print("\nfuzz counts:", dict(sorted(COUNTS.items())))
