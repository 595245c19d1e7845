"""``ckd.compare`` / ``ckd compare``: any model's predictions against CKD (SPEC §10)."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from conftest import one_error

import ckd
from ckd.cli import main
from ckd.compare import METRICS, agreement, compare, rows_to_show


@pytest.fixture(scope="module")
def x():
    return ckd.make_task("linear", batch=7, length=16, dim=3, seed=0).x


def loop_metrics(q, c, x):
    """The SPEC §10 definitions, one row and one sequence at a time, in plain Python floats."""
    B, T, _ = x.shape
    q, c, x = q.tolist(), c.tolist(), x.tolist()

    def dot(a, b):
        return sum(u * v for u, v in zip(a, b))

    def norm(a):
        return math.sqrt(dot(a, a))

    def median(v):
        v = sorted(v)
        n = len(v)
        return math.nan if n == 0 else (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2)

    out = {k: [math.nan] * T for k in METRICS}
    for t in range(1, T):
        qc = sum(dot(q[b][t], c[b][t]) for b in range(B))
        nq = math.sqrt(sum(dot(q[b][t], q[b][t]) for b in range(B)))
        nc = math.sqrt(sum(dot(c[b][t], c[b][t]) for b in range(B)))
        a = qc / nc**2
        out["cosine"][t] = qc / (nq * nc)
        out["median_cosine"][t] = median([dot(q[b][t], c[b][t]) / (norm(q[b][t]) * norm(c[b][t])) for b in range(B)])
        out["scale"][t] = a
        diff = [[u - a * v for u, v in zip(q[b][t], c[b][t])] for b in range(B)]
        out["rel_distance_scaled"][t] = math.sqrt(sum(dot(r, r) for r in diff)) / nq
        diff = [[u - v for u, v in zip(q[b][t], c[b][t])] for b in range(B)]
        out["rel_distance"][t] = math.sqrt(sum(dot(r, r) for r in diff)) / nq
        if t < T - 1:
            nxt = [[u - v for u, v in zip(q[b][t], x[b][t + 1])] for b in range(B)]
            out["error_model"][t] = median([norm(r) for r in nxt])
            nxt = [[u - v for u, v in zip(c[b][t], x[b][t + 1])] for b in range(B)]
            out["error_ckd"][t] = median([norm(r) for r in nxt])
    return {k: np.array(v) for k, v in out.items()}


def close(a, b, tol=1e-12):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert np.array_equal(np.isnan(a), np.isnan(b)), (a, b)
    ok = ~np.isnan(a)
    assert np.all(np.abs(a[ok] - b[ok]) <= tol * np.maximum(1.0, np.abs(b[ok]))), (a, b)


@pytest.mark.parametrize("B", [7, 6])  # odd and even batch: NumPy's median (mean of the two middle values)
def test_definitions_against_a_plain_loop(x, B):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(x[:B].shape, generator=g, dtype=torch.float64)
    c = ckd.predict(x[:B], "exp", depth=2)
    got, want = agreement(q, c, x[:B]), loop_metrics(q, c, x[:B])
    assert list(got) == list(METRICS)
    for k in METRICS:
        assert got[k].shape == (x.shape[1],)
        close(got[k], want[k])
    assert np.isnan([got[k][0] for k in METRICS]).all()  # row 0: no pair
    assert np.isnan(got["error_model"][-1]) and np.isnan(got["error_ckd"][-1])  # no next token


def test_ckd_against_itself(x):
    r = compare(ckd.predict(x, "linear", depth=4), x, "linear", depths=[4])
    m = r["depths"][4]
    assert set(m) == set(METRICS) and r["steps"] == {4: None}
    close(m["cosine"][1:], np.ones(15))
    close(m["median_cosine"][1:], np.ones(15))
    close(m["scale"][1:], np.ones(15))
    assert np.nanmax(m["rel_distance"]) == 0.0 and np.nanmax(m["rel_distance_scaled"]) < 1e-14
    close(m["error_model"], m["error_ckd"])
    assert r["settings"] == dict(kernel="linear", beta=1.0, sigma=1.0, ridge=0.0, step=None, depths=[4],
                                 shape=[7, 16, 3])


def test_scaled_ckd_and_a_noisy_copy(x):
    c = ckd.predict(x, "gaussian", sigma=0.7, depth="inf")
    m = compare(3.0 * c, x, "gaussian", sigma=0.7, depths=["inf"])["depths"]["inf"]
    close(m["scale"][1:], np.full(15, 3.0))
    assert np.nanmax(m["rel_distance_scaled"]) < 1e-14
    close(m["rel_distance"][1:], np.full(15, 2 / 3))
    close(m["cosine"][1:], np.ones(15))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    m = compare(c + 0.05 * noise, x, "gaussian", sigma=0.7, depths=("inf",))["depths"]["inf"]
    assert 0.9 < np.nanmin(m["cosine"]) and np.nanmax(m["cosine"]) < 1
    assert np.all(m["rel_distance_scaled"][1:] <= m["rel_distance"][1:])
    # least squares: |q - a c|^2 / |q|^2 = 1 - cos^2, row by row
    close(m["rel_distance_scaled"][1:] ** 2, 1 - m["cosine"][1:] ** 2, 1e-10)


def test_depths_steps_and_shapes(x):
    q = ckd.predict(x, "softmax", beta=4.0, depth=3, step=0.2)
    r = compare(q, x, "softmax", beta=4.0, depths=[1, 3, "inf", 0], step=0.2)
    assert list(r["depths"]) == [1, 3, "inf", 0] and r["steps"] == {1: 0.2, 3: 0.2, "inf": 0.2, 0: 0.2}
    assert np.nanmax(r["depths"][3]["rel_distance"]) == 0.0
    assert np.isnan(r["depths"][0]["cosine"]).all()  # depth 0 predicts 0: a zero norm, NaN, no error
    one = compare(q[2], x[2], "softmax", beta=4.0, depths=[3], step=0.2)  # (T, d): a batch of one
    close(one["depths"][3]["cosine"], compare(q[2:3], x[2:3], "softmax", beta=4.0, depths=[3],
                                              step=0.2)["depths"][3]["cosine"])
    zero = compare(torch.zeros_like(x), x, "linear", depths=[1])["depths"][1]
    assert np.isnan(zero["cosine"]).all() and np.isnan(zero["rel_distance"]).all()
    close(zero["scale"][1:], np.zeros(15))


@pytest.mark.parametrize("kw, words", [
    (dict(pred=np.zeros((7, 15, 3))), "same shape"),
    (dict(pred=np.full((7, 16, 3), np.nan)), "pred contains NaN"),
    (dict(kernel="cosine"), "unknown kernel"),
    (dict(depths=[]), "depths is empty"),
    (dict(depths=[1, "x"]), "depth must be"),
    (dict(depths=[2, 2]), "depth 2 is given twice"),
    (dict(depths=[-1]), "depth must be >= 0"),
    (dict(step="best"), "'fit' or 'fit-per-row'"),
    (dict(step=-1.0), "step must be >= 0"),
    (dict(step=np.ones(5)), "length 16, got 5"),
    (dict(ridge=-1.0), "ridge must be >= 0"),
])
def test_bad_input_is_one_clear_error(x, kw, words):
    args = dict(pred=np.zeros((7, 16, 3)), x=x.numpy(), kernel="linear") | kw
    with pytest.raises((ValueError, TypeError), match=None) as err:
        compare(args.pop("pred"), args.pop("x"), **args)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_rows_to_show():
    assert rows_to_show(16) == [1, 2, 5, 8, 10, 14]
    assert rows_to_show(1000)[-3:] == [200, 500, 998] and rows_to_show(3) == [1]


# --------------------------------------------------------------------------- fitted and per-row steps

def test_fitted_steps(x):
    fit = pytest.importorskip("ckd.descent.fit")
    c1 = ckd.predict(x, "linear", depth=1, step=0.3)
    r = compare(c1, x, "linear", depths=[1, "inf"], step="fit")
    assert r["steps"][1] == pytest.approx(0.3, rel=1e-12) and r["steps"]["inf"] is None
    assert np.nanmax(r["depths"][1]["rel_distance"]) < 1e-12
    assert r["settings"]["step"] == "fit"
    eta = 0.3 / np.maximum(np.arange(16), 1)
    q = ckd.predict(x, "linear", depth=1, step=eta)  # per-row step: eta_t = 0.3 / t
    r = compare(q, x, "linear", depths=[1], step="fit-per-row")
    assert np.allclose(r["steps"][1][1:], eta[1:], rtol=1e-10, atol=0)
    assert np.nanmax(r["depths"][1]["rel_distance"]) < 1e-12
    assert fit.fit_step(x, q, "linear", depth=1, per_row=False) == pytest.approx(
        compare(q, x, "linear", depths=[1], step="fit")["steps"][1], rel=1e-12)
    given = compare(q, x, "linear", depths=[1], step=eta)  # a vector passes through to ckd.predict
    assert np.nanmax(given["depths"][1]["rel_distance"]) == 0.0 and given["settings"]["step"] == "per-row vector"


# --------------------------------------------------------------------------- the command

def files(path):
    return sorted(p.name for p in path.iterdir())


def test_cli_end_to_end(x, tmp_path, capsys):
    xs = x.numpy()
    np.savez(tmp_path / "x.npz", seqs=xs)
    np.save(tmp_path / "q.npy", 2.0 * ckd.predict(xs, "linear", depth=1))
    out = tmp_path / "out"
    argv = ["compare", str(tmp_path / "q.npy"), "--data", str(tmp_path / "x.npz"), "--kernel", "linear",
            "--depth", "1,inf", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| 1 | 14 | default |" in text and "rel distance" in text
    expected = ["compare.json", "compare.md"] + (["compare.png"] if _has_matplotlib() else [])
    assert files(out) == expected
    data = json.loads((out / "compare.json").read_text())
    assert data["format"] == "ckd-compare-1" and list(data["depths"]) == ["1", "inf"]
    assert set(data["depths"]["1"]) == set(METRICS) and data["steps"] == {"1": None, "inf": None}
    assert data["settings"]["depths"] == [1, "inf"] and data["settings"]["data"].endswith("x.npz")
    assert data["depths"]["1"]["cosine"][0] is None and data["depths"]["1"]["scale"][5] == pytest.approx(2.0)
    assert (out / "compare.md").read_text().startswith("ckd compare: 7 sequences")
    assert main(argv + ["--step", "0.1"]) == 0  # a folder of ours: replaced
    assert json.loads((out / "compare.json").read_text())["settings"]["step"] == 0.1


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except Exception:
        return False
    return True


def test_cli_without_matplotlib_writes_no_figure(x, tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "x.npy", x.numpy()[0])
    np.savetxt(tmp_path / "q.csv", x.numpy()[0], delimiter=",")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["compare", str(tmp_path / "q.csv"), "--data", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "o")]) == 0
    assert "compare.png not written" in capsys.readouterr().err
    assert files(tmp_path / "o") == ["compare.json", "compare.md"]


def test_cli_bad_input_one_line_nothing_written(x, tmp_path, capsys):
    xs = x.numpy()
    np.save(tmp_path / "x.npy", xs)
    np.save(tmp_path / "q.npy", xs)
    np.save(tmp_path / "short.npy", xs[:, :8])
    nan = xs.copy()
    nan[0, 3, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.savez(tmp_path / "two.npz", a=xs, b=xs)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "compare.json").write_text('{"mine": 1}')
    (foreign / "notes.txt").write_text("keep")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.md").write_text("my table")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def fails(args, *words, out="new"):
        assert main(["compare", *args, "--out", str(tmp_path / out)]) == 2
        one_error(capsys, *words)

    q, d = str(tmp_path / "q.npy"), str(tmp_path / "x.npy")
    fails([str(tmp_path / "short.npy"), "--data", d], "short.npy has shape (7, 8, 3)", "same shape")
    fails([str(tmp_path / "nan.npy"), "--data", d], "nan.npy contains NaN")
    fails([q, "--data", str(tmp_path / "two.npz")], "holds 2 arrays")
    fails([q, "--data", d, "--kernel", "cos"], "unknown kernel 'cos'")
    fails([q, "--data", d, "--depth", "1,x"], "--depth '1,x'")
    fails([q, "--data", d, "--depth", "4,4"], "given twice")
    fails([q, "--data", d, "--step", "best"], "--step")
    fails([q, "--data", d], "not written by ckd compare", out="foreign")
    fails([q, "--data", d], "compare.md: exists and was not written by ckd compare", out="mine")
    assert not (tmp_path / "new").exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
