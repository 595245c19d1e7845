"""Issue 21 (hardening, round two), items 1-6, and the systematic checks of the Python API's argument
types and of the array readers' byte orders x dtypes. Each test names the item it proves."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import one_error

import ckd
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


# --------------------------------------------------------------------------- item 4: no argument ignored


def test_complex_token_into_a_real_linear_stream_is_computed_exactly():
    """Item 4: a complex token pushed into a real Streaming. The linear kernel takes complex x (SPEC §10): the
    stream turns complex128 (float64's precision, as ckd.predict) and its rows equal the batch's depth-inf
    rows of the complex sequence; the imaginary part is never dropped."""
    from ckd.streaming import Streaming

    g = np.random.default_rng(0)
    x = g.standard_normal((12, 3)).astype(complex)
    x[5:] += 1j * g.standard_normal((7, 3))  # real tokens first, then complex ones
    s = Streaming("linear", dim=3)
    rows = [s.push(x[t].real if t < 5 else x[t]) for t in range(12)]
    assert rows[-1].dtype == np.complex128 and s.dtype == torch.complex128
    want = ckd.predict(x, "linear", depth="inf")
    assert np.abs(np.stack(rows) - want).max() < 1e-12 * np.abs(want).max()
    t = Streaming("linear", dim=3, dtype=torch.float32)  # float32: complex64
    assert t.push(torch.tensor(x[6], dtype=torch.complex128)).dtype == torch.complex64


@pytest.mark.parametrize("kernel", ["exp", "softmax", "gaussian"])
def test_complex_token_into_a_real_kernel_stream_is_refused(kernel):
    """Item 4: the other kernels are defined for real x only: TypeError, the state kept (the next real token
    gives the same prediction as without the refused push)."""
    from ckd.streaming import Streaming

    x = np.random.default_rng(1).standard_normal((6, 2))
    a, b = Streaming(kernel, dim=2), Streaming(kernel, dim=2)
    for t in range(5):
        a.push(x[t])
        b.push(x[t])
    for bad in (x[5] + 1j, torch.tensor(x[5] + 1j), [1j, 0.0]):
        with pytest.raises(TypeError, match="real x only"):
            a.push(bad)
    assert np.array_equal(a.push(x[5]), b.push(x[5]))


@pytest.mark.parametrize("step", [np.complex128(1.0), np.complex64(0.5 + 0.5j), torch.tensor(1 + 0j), 1 + 2j,
                                  np.array(0.5 + 0j)])
def test_complex_numbers_are_not_real_numbers(step):
    """Item 4: a complex number where a real one is expected (a step, beta, ridge) was made real by float()
    (np.complex128(1 + 1j) gave 1.0, imaginary part dropped): TypeError now, on every face."""
    from ckd.streaming import Streaming

    x = np.random.default_rng(2).standard_normal((8, 2))
    with pytest.raises(TypeError, match="real number"):
        Streaming("exp", dim=2).push(x[0], step=step)
    for name in ("step", "beta", "ridge"):
        with pytest.raises(TypeError, match="real number"):
            ckd.predict(x, **{name: step})


def test_features_are_used_on_every_method_that_takes_them():
    """Item 4: ``features=D`` is never ignored: method auto / linear run the linear-time recurrences on phi(x),
    method dense the T x T path on the Gram matrix of phi.phi (the reference), the same predictions;
    without features the exact kernel (different). feature_seed without features is refused."""
    x = np.random.default_rng(3).standard_normal((16, 2)) * 0.5
    exact = ckd.predict(x, "exp", depth=4)
    runs = [ckd.predict(x, "exp", depth=4, features=32, method=m) for m in ("auto", "linear", "dense")]
    for r in runs[1:]:
        assert np.abs(r - runs[0]).max() < 1e-12
    assert np.abs(runs[0] - exact).max() > 1e-3
    assert np.abs(ckd.predict(x, "exp", depth=4, features=32, feature_seed=1) - runs[0]).max() > 1e-6
    with pytest.raises(ValueError, match="feature_seed applies"):
        ckd.predict(x, "exp", feature_seed=1)


def test_forecast_refuses_settings_its_method_ignores_and_out_of_range_sweeps():
    """Item 4: ``forecast(..., sweeps=2**70)`` was accepted; k, sigma, ridge, embed given to a method that does
    not read them were ignored. Each is one line now naming the valid range or the methods that read it."""
    from ckd.forecast import forecast

    x = np.random.default_rng(4).standard_normal((40, 2))
    cases = [(dict(horizon=3, method="ckd", sweeps=2**70), "sweeps must be an integer in 1 .. 2**63 - 1"),
             (dict(horizon=3, method="ckd", sweeps=0), "sweeps must be an integer in 1 .. 2**63 - 1"),
             (dict(method="analogues", k=2**70), "k must be <="),
             (dict(method="krr", k=3), "k applies to method analogues"),
             (dict(horizon=3, method="krr", k=2), "k applies to method analogues"),
             (dict(method="last", sigma=0.5), "sigma applies to method ckd, krr"),
             (dict(horizon=3, method="parrot", ridge=1e-3), "ridge applies to method ckd, krr, nvar, esn"),
             (dict(method="analogues", ridge=1e-3), "ridge applies to method ckd, krr"),
             (dict(horizon=3, method="krr", embed=3), "embed applies to method parrot")]
    for kwargs, words in cases:
        with pytest.raises(ValueError, match=words.replace("*", r"\*").replace(".", r"\.")):
            forecast(x, **kwargs)
    assert forecast(x, horizon=3, method="analogues", k=2).shape == (3, 2)  # read by its method: accepted
    assert forecast(x, horizon=3, method="krr", embed=3, univariate=True).shape == (3, 2)


# --------------------------------------------------------------------------- item 5: scale of square-free methods


@pytest.mark.parametrize("method", ["mean", "last", "parrot"])
@pytest.mark.parametrize("scale", [1e154, 2.0**1000, 1e-300])
def test_square_free_rollouts_are_exact_at_any_scale(tmp_path, capsys, method, scale):
    """Item 5: ``ckd forecast --horizon H --method mean|last|parrot`` on values near 1e154 was refused as "too
    large" though these methods square nothing (parrot now compares windows scaled by a power of two, mean
    sums them): the forecast of s x is s times the forecast of x (to rounding), on the CLI too. Methods
    that square values keep the refusal."""
    from ckd.forecast import forecast

    x = np.random.default_rng(5).standard_normal((2, 40, 3))
    want = forecast(x, horizon=6, method=method) * scale
    got = forecast(x * scale, horizon=6, method=method)
    assert np.abs(got - want).max() <= 1e-15 * np.abs(want).max()
    np.save(tmp_path / "x.npy", x * scale)
    argv = ["forecast", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy"), "--horizon", "6", "--method", method]
    assert main(argv) == 0
    assert np.array_equal(np.load(tmp_path / "f.npy"), got)
    if scale > 1:
        assert main([*argv[:-1], "krr"]) == 2
        one_error(capsys, "input too large")
        with pytest.raises(ValueError, match="input too large"):
            forecast(x * scale, method="last")  # one step: every method standardises (x^2)


# --------------------------------------------------------------------------- item 6: memory and tensor kinds


def test_enormous_sizes_are_one_line_memory_refusals(capsys):
    """Item 6: ``ckd demo --dim 1000000000`` printed an allocator traceback; make_task(batch=10**12),
    features=2**40 and Streaming(dim=...) raised RuntimeError / TypeError. Each is refused before allocating
    (``NotEnoughMemory``, a ValueError: how much, how much is free, what to do)."""
    from ckd.sequences import make_task
    from ckd.streaming import Streaming
    from ckd.validation import NotEnoughMemory

    assert main(["demo", "--dim", "1000000000"]) == 2
    one_error(capsys, "needs about", "available", "smaller")
    x = np.random.default_rng(6).standard_normal((10, 2))
    for call in (lambda: make_task("linear", 10**12, 10, 3), lambda: make_task("unitary", 10, 10**9, 10**3),
                 lambda: make_task("periodic", 10**9, 10**3, 3, period=10**6),
                 lambda: ckd.predict(x, "exp", features=2**40), lambda: ckd.predict(x, "gaussian", features=2**40,
                                                                                     method="dense"),
                 lambda: Streaming("exp", dim=10**9), lambda: Streaming("linear", dim=10**7),
                 lambda: Streaming("gaussian", dim=10**5, capacity=10**9)):
        with pytest.raises(NotEnoughMemory, match="needs about"):
            call()
    with pytest.raises(ValueError, match="dim must be <="):
        Streaming("exp", dim=2**70)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        Streaming("exp", dim=2, capacity=0)


def _odd_tensors() -> list:
    x = torch.randn(6, 2)
    return [torch.empty(6, 2, device="meta"), torch.quantize_per_tensor(x, 0.1, 0, torch.qint8),
            x.to_sparse(), x.to_sparse_csr()]


def test_tensors_without_readable_values_are_type_errors():
    """Item 6: a quantized or meta tensor gave RuntimeError / NotImplementedError; sparse layouts a layout
    error. Every entry point answers TypeError with one line (``ckd.validation.check_dense``)."""
    from ckd.forecast import forecast
    from ckd.sequences import make_task
    from ckd.streaming import Streaming

    for t in _odd_tensors():
        calls = [lambda: ckd.predict(t), lambda: forecast(t), lambda: forecast(t, horizon=2, method="last"),
                 lambda: Streaming("exp", dim=2).push(t[0]), lambda: ckd.predict(torch.ones(6, 2), step=t[:, 0]),
                 lambda: make_task("linear", 6, 4, 2, x0=t)]
        for call in calls:
            with pytest.raises(TypeError) as err:
                call()
            assert "\n" not in str(err.value)
