import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import RTOL, one_error

from ckd import make_task, predict
from ckd.cli import main
from ckd.kernels import KERNELS


@pytest.fixture
def seqs(tmp_path):
    x = make_task("periodic", 2, 15, 3, period=4, seed=0).x.numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "one.npy", x[0])
    np.savetxt(tmp_path / "one.csv", x[0], delimiter=",")
    return x


def run(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("depth", ["0", "1", "5", "inf"])
def test_predict_matches_api(tmp_path, seqs, capsys, kernel, depth):
    out = tmp_path / "p.npy"
    rc, _, err = run(["predict", str(tmp_path / "x.npy"), "-o", str(out), "--kernel", kernel, "--depth", depth,
                      "--beta", "2", "--sigma", "0.6", "--ridge", "0.1"], capsys)
    assert rc == 0, err
    expected = predict(seqs, kernel, beta=2.0, sigma=0.6, depth=depth, ridge=0.1)
    got = np.load(out)
    assert got.shape == seqs.shape
    assert np.abs(got - expected).max() <= RTOL * max(np.abs(expected).max(), 1e-300)


def test_csv_and_unbatched_input(tmp_path, seqs, capsys):
    rc, _, _ = run(["predict", str(tmp_path / "one.csv"), "-o", str(tmp_path / "a.npy"), "--depth", "3"], capsys)
    assert rc == 0
    rc, _, _ = run(["predict", str(tmp_path / "one.npy"), "-o", str(tmp_path / "b.csv"), "--depth", "3"], capsys)
    assert rc == 0
    a, b = np.load(tmp_path / "a.npy"), np.loadtxt(tmp_path / "b.csv", delimiter=",")
    assert a.shape == (15, 3) and np.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert np.allclose(a, predict(seqs[0], depth=3), rtol=1e-12, atol=1e-14)


def test_float32_and_step(tmp_path, seqs, capsys):
    rc, _, _ = run(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy"), "--dtype", "float32",
                    "--step", "0.2", "--kernel", "softmax"], capsys)
    assert rc == 0 and np.load(tmp_path / "f.npy").dtype == np.float32


def _bad_files(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan], [0.0, 1.0]]))
    np.save(tmp_path / "inf.npy", np.array([[1.0, np.inf], [0.0, 1.0]]))
    np.save(tmp_path / "rank1.npy", np.ones(4))
    np.save(tmp_path / "empty.npy", np.ones((0, 2)))
    np.save(tmp_path / "strings.npy", np.array(["a", "b"]))
    (tmp_path / "garbage.npy").write_bytes(b"this is not an array")
    (tmp_path / "garbage.csv").write_text("a,b\nc,d\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header-only.csv").write_text("x,y\n")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    (tmp_path / "headed-ragged.csv").write_text("x,y\n1,2\n3\n")


BAD = [
    ["nan.npy"], ["inf.npy"], ["rank1.npy"], ["empty.npy"], ["strings.npy"], ["garbage.npy"], ["garbage.csv"],
    ["empty.csv"], ["header-only.csv"], ["ragged.csv"], ["headed-ragged.csv"],
    ["missing.npy"], ["x.npy", "--kernel", "cosine"], ["x.npy", "--backend", "transformer", "--depth", "inf"],
    ["x.npy", "--depth", "-2"], ["x.npy", "--step", "-1"], ["x.npy", "--depth", "many"], ["x.npy", "--ridge", "-1"],
    ["x.npy", "--beta", "x"], ["x.npy", "--backend", "gpu"], ["x.npy", "--tokens", "raw"],
]


@pytest.mark.parametrize("args", BAD, ids=lambda a: "-".join(a))
def test_bad_input_one_line_no_output(tmp_path, seqs, capsys, args):
    _bad_files(tmp_path)
    out = tmp_path / "out.npy"
    rc, stdout, err = run(["predict", str(tmp_path / args[0]), "-o", str(out), *args[1:]], capsys)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckd") and "Traceback" not in err, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.parametrize("name", ["empty.csv", "header-only.csv", "ragged.csv", "headed-ragged.csv"])
@pytest.mark.parametrize("command", ["predict", "forecast"])
def test_bad_csv_one_error_line(tmp_path, seqs, capsys, name, command):
    """No loadtxt warning before the error, and a ragged table is refused, not cut to fit."""
    _bad_files(tmp_path)
    out = tmp_path / "out.npy"
    rc, _, err = run([command, str(tmp_path / name), "-o", str(out)], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("ckd: error:"), err
    assert not out.exists()


@pytest.mark.parametrize("text", ["x,y\n1,2\n3,4\n", "1,2\n3,4\n", "\ufeff1,2\n3,4\n"],
                         ids=["headed", "headerless", "excel-bom"])
def test_csv_header_optional(tmp_path, capsys, text):
    (tmp_path / "in.csv").write_text(text, encoding="utf-8")
    rc, _, err = run(["predict", str(tmp_path / "in.csv"), "-o", str(tmp_path / "p.npy"), "--depth", "2"], capsys)
    assert rc == 0, err
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert np.allclose(np.load(tmp_path / "p.npy"), predict(x, depth=2), rtol=1e-12, atol=1e-14)


def test_bad_output_path(tmp_path, seqs, capsys):
    rc, _, err = run(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "no" / "o.npy")], capsys)
    assert rc != 0 and "does not exist" in err
    rc, _, err = run(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.csv")], capsys)
    assert rc != 0 and "(T, d)" in err and not (tmp_path / "o.csv").exists()


def test_unstable_step_warns_on_stderr(tmp_path, seqs, capsys):
    rc, _, err = run(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "w.npy"), "--kernel", "gaussian",
                      "--step", "5", "--depth", "2"], capsys)
    assert rc == 0 and "warning" in err and "convergence region" in err
    assert (tmp_path / "w.npy").exists()


def test_console_script_end_to_end(tmp_path, seqs):
    """The installed entry point, in a fresh process: no traceback for a user mistake."""
    ok = subprocess.run([sys.executable, "-m", "ckd.cli", "predict", str(tmp_path / "x.npy"), "-o",
                         str(tmp_path / "s.npy"), "--depth", "inf"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "ckd.cli", "predict", str(tmp_path / "nope.npy"), "-o",
                          str(tmp_path / "t.npy")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "no such file" in bad.stderr


def test_demo_runs(capsys):
    from ckd.commands.demo import DEPTHS, SETTINGS, TIMES, table

    rc, out, _ = run(["demo", "--sequences", "2"], capsys)
    lines = [ln for ln in out.splitlines() if re.search(rf"\s(1|4|16|inf)(\s+\S+e[+-]\d\d){{{len(TIMES)}}}$", ln)]
    assert rc == 0 and len(lines) == len(SETTINGS) * len(DEPTHS)  # one row per setting and depth
    rows = {(r["task"], r["kernel"], str(r["depth"])): r["errors"] for r in table(sequences=4)}
    inf = rows[("linear", "linear", "inf")]
    assert inf[max(TIMES)] < 1e-2 * inf[min(TIMES)]  # depth inf learns the orthogonal map in context
    assert rows[("linear", "linear", "16")][max(TIMES)] > 1e3  # finite depth: the non-normal transient


def test_cli_descent_edge_values_are_one_line_or_exact(tmp_path, capsys):
    """issue 12, items 7 and 12: --sigma 1e-300 (2 sigma^2 underflows) runs; --step 1e-400 (0 as a
    float) and --step 1e400 are refused with one line rather than silently changed."""
    from ckd.cli import main as cli

    x = np.random.default_rng(0).normal(size=(6, 2))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "p.npy"
    assert cli(["predict", str(tmp_path / "x.npy"), "-o", str(out), "--kernel", "gaussian", "--sigma", "1e-300"]) == 0
    assert np.isfinite(np.load(out)).all()
    for flag in (["--step", "1e-400"], ["--step", "1e400"], ["--beta", "1e-999"]):
        out.unlink(missing_ok=True)
        capsys.readouterr()
        assert cli(["predict", str(tmp_path / "x.npy"), "-o", str(out), *flag]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "flows" in err[0] and not out.exists()


def test_an_allocation_failure_is_one_line(tmp_path, capsys, monkeypatch):
    """Behind the memory estimates: if an allocation still fails, one line, exit 2, no OUT."""
    import ckd.api as cmd  # ckd predict looks predict up there when it runs

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 80000000000 bytes")

    monkeypatch.setattr(cmd, "predict", fail)
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    assert main(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ckd: error: out of memory (80 GB asked)")
    assert not (tmp_path / "p.npy").exists()


# --------------------------------------------------------------------------- hardening (issue 12)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
BIG = str(2**70)




@pytest.mark.parametrize("command, flag, value, low", [
    *[("train", f, v, lo) for f, lo in [("--seed", 0), ("--steps", 0), ("--batch", 1), ("--length", 3),
                                         ("--dim", 1), ("--layers", 1), ("--heads", 1), ("--width", 1),
                                         ("--warmup", 0), ("--log-every", 1), ("--eval-every", 1),
                                         ("--checkpoint-every", 1), ("--stop-after", 0)]
      for v in (str(lo - 1), BIG)],
    ("evaluate", "--seed", "-1", 0), ("evaluate", "--seed", BIG, 0), ("evaluate", "--sequences", "1", 2),
    ("evaluate", "--sequences", BIG, 2), ("demo", "--seed", "-1", 0), ("demo", "--seed", BIG, 0),
    ("demo", "--sequences", "0", 1), ("demo", "--dim", "0", 1), ("reproduce", "--seed", "-1", 0),
    ("reproduce", "--seed", BIG, 0), ("reproduce", "--threads", "0", 1), ("reproduce", "--threads", BIG, 1),
    ("forecast", "--k", "0", 1), ("forecast", "--k", BIG, 1),
])
def test_integer_flags_range_checked_and_named(tmp_path, seqs, capsys, command, flag, value, low):
    """Item 9: every integer flag of every command is range-checked, the flag named, nothing written."""
    first = {"train": ["--out", str(tmp_path / "run")], "evaluate": [str(tmp_path / "nope.pt")], "demo": [],
             "reproduce": ["--out", str(tmp_path / "rep")],
             "forecast": [str(tmp_path / "x.npy"), "-o", str(tmp_path / "f.npy")]}[command]
    assert main([command, *first, flag, value]) == 2
    one_error(capsys, f"argument {flag}: must be an integer in {low} ..", f"got {value}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "one.npy", "x.npy"]


def test_predict_depth_beyond_int64_refused(tmp_path, seqs, capsys):
    assert main(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy"), "--depth", BIG]) == 2
    one_error(capsys, "--depth must be an integer in 0 .. 2**63 - 1")


@pytest.mark.parametrize("command", ["reproduce", "evaluate"])
def test_figures_without_matplotlib_one_line(tmp_path, capsys, monkeypatch, command):
    """Item 19: without the plot extra, one line naming pip install 'ckd[plot]', before any work."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "out"
    argv = ["reproduce", "--quick", "--out", str(out)] if command == "reproduce" else \
        ["evaluate", str(tmp_path / "run"), "--out", str(out)]
    assert main(argv) == 2
    one_error(capsys, "matplotlib", "pip install 'ckd[plot]'")
    assert not out.exists()


@pytest.mark.parametrize("command", ["reproduce", "evaluate"])
def test_folder_outputs_checked_at_start(tmp_path, capsys, command):
    """Item 10 for folder outputs: --out naming a file or a pipe is refused before any work, untouched."""
    for name, make in [("file", lambda p: p.write_text("keep")), ("pipe", os.mkfifo)]:
        out = tmp_path / name
        make(out)
        argv = ["reproduce", "kaczmarz-limit", "--quick", "--out", str(out)] if command == "reproduce" else \
            ["evaluate", str(tmp_path / "missing.pt"), "--out", str(out)]
        assert main(argv) == 2
        one_error(capsys, str(out), "not a folder")
    assert (tmp_path / "file").read_text() == "keep"


def _fake_ci(tmp_path, pytest_status: int) -> subprocess.CompletedProcess:
    """Run .ci/run with stand-ins for python3.11, pip, ruff and pytest (no network, no install)."""
    import shutil

    repo, fake = tmp_path / "repo", tmp_path / "bin"
    (repo / ".ci").mkdir(parents=True)
    fake.mkdir()
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    venv_python = f"#!/bin/sh\n[ \"$1 $2\" = \"-m pytest\" ] && exit {pytest_status}\nexit 0\n"
    scripts = {
        "python3.11": ("#!/bin/sh\n# python3.11 -m venv DIR\nmkdir -p \"$3/bin\"\n"
                       "printf 'export PATH=\"%s/bin:$PATH\"\\n' \"$PWD/$3\" > \"$3/bin/activate\"\n"
                       f"printf '%s' '{venv_python}' > \"$3/bin/python\"\nchmod +x \"$3/bin/python\"\n"
                       "printf '#!/bin/sh\\nexit 0\\n' > \"$3/bin/pip\"\nchmod +x \"$3/bin/pip\"\n"),
        "ruff": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        (fake / name).write_text(text)
        os.chmod(fake / name, 0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(["bash", str(repo / ".ci" / "run")], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("status, ok", [(0, True), (1, False), (5, False)])
def test_ci_run_fails_when_pytest_collects_nothing(tmp_path, status, ok):
    """Item 20: .ci/run passes only when pytest passes: "no tests collected" (exit 5) is a failure."""
    done = _fake_ci(tmp_path, status)
    assert (done.returncode == 0) == ok, (done.returncode, done.stdout, done.stderr)


def test_reproduce_refuses_a_pipe_among_its_files(tmp_path, capsys):
    """Item 5 for folder outputs: a named pipe where reproduce would write is refused at the start
    (writing into it would block forever), nothing run."""
    out = tmp_path / "rep"
    out.mkdir()
    os.mkfifo(out / "summary.md")
    assert main(["reproduce", "kaczmarz-limit", "--quick", "--out", str(out)]) == 2
    one_error(capsys, "summary.md", "named pipe")
    assert sorted(p.name for p in out.iterdir()) == ["summary.md"]
