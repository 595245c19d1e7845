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


def test_evaluate_out_rewrites_its_own_files_only(run_folder, tmp_path, capsys, monkeypatch):
    """Item 1: an empty folder is accepted; a folder of an earlier ckd evaluate is rewritten (its own three
    files), a file of the user's beside them is never touched."""
    out = tmp_path / "eval"
    out.mkdir()
    argv = ["evaluate", str(run_folder), "--out", str(out), "--sequences", "4"]
    real, results = ckd.evaluate.evaluate, []
    monkeypatch.setattr(ckd.evaluate, "evaluate", lambda *a, **k: results[0] if results else results.append(
        real(*a, **k)) or results[0])  # the second run reuses the first's numbers: the folder rule is under test
    assert main(argv) == 0
    assert json.loads((out / "evaluation.json").read_text())["format"] == "ckd-evaluate-1"
    (out / "notes.txt").write_text("mine")
    results[0]["sequences"] = 5
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


# --------------------------------------------------------------------------- systematic: byte order x dtype

REAL_DTYPES = ["?", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "g"]
COMPLEX_DTYPES = ["c8", "c16", "G"]
OTHER_DTYPES = ["U3", "S3", "M8[s]", "m8[s]", "V8", [("a", "<f8")]]


def _values(dtype: np.dtype) -> np.ndarray:
    """A (6, 2) array exactly representable in ``dtype`` (and in float64)."""
    base = np.array([[0, 1], [2, 3], [5, 7], [11, 13], [17, 19], [23, 29]])
    if dtype.kind == "b":
        return (base % 2).astype(dtype)
    if dtype.kind == "c":
        return (base - 10 + 1j * base[::-1]).astype(dtype)
    return (base - (10 if dtype.kind in "if" else 0)).astype(dtype) / (4 if dtype.kind == "f" else 1)


def _orders(code) -> list[np.dtype]:
    native = np.dtype(code)
    return [native] if native.itemsize == 1 or native.byteorder == "|" else [native.newbyteorder("<"),
                                                                              native.newbyteorder(">")]


def test_byte_order_x_dtype_round_trips(tmp_path):
    """Systematic: every dtype, both byte orders, through .npy, .npz (and .csv for the real ones): load_array
    returns the native array (float128 / complex256 as float64 / complex128, the same values), complex only
    with complex_ok; any other dtype (text, bytes, dates, raw, records) is one line naming the file and dtype.
    ckd.predict takes each real array (and complex with the linear kernel) as its float64 copy."""
    cases = 0
    for code in REAL_DTYPES + COMPLEX_DTYPES:
        for dtype in _orders(code):
            arr = _values(dtype)
            native = arr.astype(dtype.newbyteorder("="))
            want = native.astype(np.complex128 if dtype.kind == "c" else
                                 (np.float64 if dtype.kind == "f" and dtype.itemsize > 8 else native.dtype))
            for suffix in (".npy", ".npz"):
                path = tmp_path / f"a{suffix}"
                np.save(path, arr) if suffix == ".npy" else np.savez(path, x=arr)
                cases += 1
                if dtype.kind == "c":
                    with pytest.raises(ValueError, match=f"{path}: dtype .* is not a real number type"):
                        load_array(path)
                    got = load_array(path, complex_ok=True)
                else:
                    got = load_array(path)
                assert got.dtype.isnative and got.dtype.kind in (want.dtype.kind, "f") and np.array_equal(got, want), \
                    (dtype, suffix, got.dtype)
            if dtype.kind != "c":
                np.savetxt(tmp_path / "a.csv", native.astype(np.float64), delimiter=",")
                assert np.array_equal(load_array(tmp_path / "a.csv"), native.astype(np.float64))
                cases += 1
                assert np.array_equal(ckd.predict(arr, "linear", depth=2), ckd.predict(native.astype(np.float64),
                                                                                       "linear", depth=2))
            else:
                assert np.allclose(ckd.predict(arr, "linear", depth="inf"), ckd.predict(want, "linear", depth="inf"),
                                   rtol=1e-6 if dtype.itemsize == 8 else 1e-12)
            cases += 1
    for code in OTHER_DTYPES:
        arr = np.zeros((3, 2), dtype=code)
        for suffix in (".npy", ".npz"):
            path = tmp_path / f"o{suffix}"
            np.save(path, arr) if suffix == ".npy" else np.savez(path, x=arr)
            with pytest.raises(ValueError) as err:
                load_array(path, complex_ok=True)
            assert str(path) in str(err.value) and "\n" not in str(err.value)
            cases += 1
    assert cases == 122  # counted in docs/guarantees.md


# --------------------------------------------------------------------------- systematic: Python argument types

INTEGERS = [np.int8(3), np.int16(3), np.int32(3), np.int64(3), np.uint8(3), np.uint16(3), np.uint32(3), np.uint64(3),
            np.float64(3.0), np.float32(3.0), torch.tensor(3), torch.tensor(3, dtype=torch.int32),
            torch.tensor(3, dtype=torch.uint8), torch.tensor(3.0), 3.0]


def _integer_arguments():
    """(name, call(value), reference) for every integer argument of the Python API (reference: the call at 3)."""
    from ckd.forecast import forecast
    from ckd.sequences import make_task
    from ckd.streaming import Streaming
    from ckd.train import TrainConfig

    x = np.random.default_rng(7).standard_normal((12, 2)) * 0.5

    def stream(**kw):
        s = Streaming("exp", **{"dim": 2, **kw})
        return np.stack([s.push(np.ones(2) * (t % 3)) for t in range(2)])

    return [
        ("predict depth", lambda v: ckd.predict(x, depth=v)),
        ("predict sweeps", lambda v: ckd.predict(x, "gaussian", depth="inf", sweeps=v)),
        ("predict features", lambda v: ckd.predict(x, "exp", features=v)),
        ("predict feature_seed", lambda v: ckd.predict(x, "exp", features=4, feature_seed=v)),
        ("forecast horizon", lambda v: forecast(x, horizon=v, method="last")),
        ("forecast embed", lambda v: forecast(x, horizon=2, method="parrot", embed=v)),
        ("forecast k", lambda v: forecast(x, method="analogues", k=v)),
        ("forecast sweeps", lambda v: forecast(x[:10], horizon=1, method="ckd", sweeps=v, sigma=1.0, ridge=1e-3)),
        ("forecast layers", lambda v: forecast(x[:10], horizon=1, method="ckd", layers=v, sigma=1.0, ridge=1e-3)),
        ("make_task batch", lambda v: make_task("linear", v, 4, 2).x),
        ("make_task length", lambda v: make_task("linear", 2, v, 2).x),
        ("make_task dim", lambda v: make_task("linear", 2, 4, v).x),
        ("make_task period", lambda v: make_task("periodic", 2, 4, 2, period=v).x),
        ("make_task seed", lambda v: make_task("linear", 2, 4, 2, seed=v).x),
        ("Streaming dim", lambda v: Streaming("exp", dim=v).push(np.ones(3))),
        ("Streaming capacity", lambda v: stream(capacity=v)),
        ("TrainConfig batch", lambda v: TrainConfig(batch=v, length=4, dim=2).validate().batch),
        ("TrainConfig seed", lambda v: TrainConfig(seed=v).validate().seed),
    ]


def test_numpy_and_torch_integer_scalars_are_integers():
    """Systematic: where the Python API expects an integer, NumPy integer scalars, integral NumPy floats and
    torch 0-d tensors are that integer (the same result as the int 3). 18 arguments x 15 kinds = 270 cases."""
    failures = []
    for name, call in _integer_arguments():
        want = np.asarray(call(3))
        for value in INTEGERS:
            try:
                got = np.asarray(call(value))
                if not np.array_equal(got, want):
                    failures.append(f"{name} = {value!r}: another result")
            except Exception as err:  # noqa: BLE001 - every failure is collected and reported
                failures.append(f"{name} = {value!r}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


def test_non_integers_are_one_clear_error():
    """Systematic: bools, 3.5, NaN, text, None-like, complex and 2-element arrays where an integer is expected:
    TypeError or ValueError, one line, for every integer argument."""
    bad = [True, np.bool_(False), 3.5, np.float64("nan"), "3", 3 + 0j, np.complex64(3), torch.tensor([3, 3]),
           torch.tensor(True), torch.tensor(3 + 0j), np.array([3, 3])]
    failures = []
    for name, call in _integer_arguments():
        for value in bad:
            if name == "predict depth" and isinstance(value, str):
                continue  # depth takes text: "inf", or the CLI's "16" (ckd.validation.parse_depth)
            try:
                call(value)
                failures.append(f"{name} = {value!r}: accepted")
            except (TypeError, ValueError) as err:
                if "\n" in str(err):
                    failures.append(f"{name} = {value!r}: {err}")
            except Exception as err:  # noqa: BLE001 - every failure is collected and reported
                failures.append(f"{name} = {value!r}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


TORCH_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                torch.bfloat16, torch.float32, torch.float64]


def test_tensors_of_every_dtype_and_layout():
    """Systematic: x as a tensor of every real dtype (bool, integers, float16, bfloat16, float32, float64) gives
    the prediction of its float64 copy; complex tensors run with the linear kernel and are TypeError with the
    others; sparse (COO, CSR, CSC, BSR), meta and quantized tensors are TypeError, one line; a non-contiguous
    view is its values. Through ckd.predict, forecast, Streaming.push and a per-row step."""
    from ckd.forecast import forecast
    from ckd.streaming import Streaming

    g = torch.Generator().manual_seed(8)
    base = torch.randint(-3, 4, (10, 2), generator=g).to(torch.float64) / 4
    for dtype in TORCH_DTYPES:
        x = (base > 0) if dtype == torch.bool else base.to(dtype) if dtype.is_floating_point else (base * 4).to(dtype)
        ref = x.to(torch.float64)
        assert torch.equal(ckd.predict(x, "exp", depth=3), ckd.predict(ref, "exp", depth=3)), dtype
        assert torch.equal(forecast(x, horizon=2, method="mean"), forecast(ref, horizon=2, method="mean"))
        a, b = Streaming("gaussian", dim=2), Streaming("gaussian", dim=2)
        assert all(torch.equal(a.push(x[t]), b.push(ref[t])) for t in range(4)), dtype
        if dtype != torch.bool:  # a bool is not a step (docs/guarantees.md, per-row steps)
            step = torch.full((10,), 1, dtype=dtype)
            assert torch.equal(ckd.predict(ref, "linear", depth=2, step=step),
                               ckd.predict(ref, "linear", depth=2, step=1.0))
    z = torch.complex(base, base.flip(0))
    for dtype in (torch.complex64, torch.complex128):
        assert ckd.predict(z.to(dtype), "linear", depth="inf").is_complex()
        with pytest.raises(TypeError, match="linear kernel"):
            ckd.predict(z.to(dtype), "exp")
    view = torch.randn(2, 10, 4, generator=g, dtype=torch.float64)[:, :, ::2]  # strided, not contiguous
    assert torch.equal(ckd.predict(view, "exp"), ckd.predict(view.contiguous(), "exp"))
    odd = [base.to_sparse(), base.to_sparse_csr(), base.to_sparse_csc(), base.to_sparse_bsr((2, 2)),
           torch.empty(10, 2, device="meta"), torch.quantize_per_tensor(base.float(), 0.25, 0, torch.qint8),
           torch.quantize_per_tensor(base.float(), 0.25, 8, torch.quint8)]
    for t in odd:
        for call in (lambda: ckd.predict(t), lambda: forecast(t, horizon=2, method="last"),
                     lambda: Streaming("exp", dim=2).push(t[0] if t.layout == torch.strided else t),
                     lambda: ckd.predict(base, step=t[:, 0] if t.layout == torch.strided else t)):
            with pytest.raises(TypeError) as err:
                call()
            assert "\n" not in str(err.value), (t.layout, t.dtype, str(err.value))
