"""matplotlib is optional, and "cannot import" is "not installed" (issue 21, item 7).

Every command runs in a fresh interpreter with matplotlib made unimportable (``sys.modules``
entry None: ``import matplotlib`` raises ImportError), or installed but broken (a ``matplotlib``
package first on PYTHONPATH whose import raises RuntimeError). Commands that need figures
(``reproduce``, ``evaluate --out``, ``forecast --plot``) refuse with one line naming the extra,
before any work, writing nothing; the others run and exit 0 (``compare`` leaves its figure out
with a note). One interpreter per mode runs every command in process, to keep this fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"

# (name, argv, expected exit code); {d} is the scratch folder
COMMANDS = [
    ("predict", "predict {d}/x.npy -o {d}/p.npy --depth 2", 0),
    ("forecast", "forecast {d}/x.npy -o {d}/f1.npy --method last", 0),
    ("forecast --horizon", "forecast {d}/x.npy -o {d}/f2.npy --horizon 3 --method last", 0),
    ("forecast --plot", "forecast {d}/x.npy -o {d}/f3.npy --horizon 3 --method last --plot {d}/fig.png", 2),
    ("demo", "demo --sequences 1 --dim 1", 0),
    ("train", "train --steps 1 --batch 2 --length 6 --dim 2 --layers 1 --eval-every 1 --quiet --out {d}/run", 0),
    ("evaluate", "evaluate {d}/run --sequences 2", 0),
    ("evaluate --out", "evaluate {d}/run --sequences 2 --out {d}/ev", 2),
    ("compare", "compare {d}/x.npy --data {d}/x.npy --depth 1 --out {d}/cmp", 0),
    ("reproduce", "reproduce --quick --out {d}/rep", 2),
    ("zoo list", "zoo list", 0),
]

RUNNER = r"""
import contextlib, io, json, sys
if sys.argv[1] == "absent":
    sys.modules["matplotlib"] = None  # import matplotlib raises ImportError
from ckd.cli import main
results = {}
for name, argv in json.loads(sys.argv[2]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""


def test_every_command_with_matplotlib_unimportable_or_raising(tmp_path):
    """Both modes at once (two interpreters in parallel): absent, and installed but raising on import."""
    x = np.cumsum(np.random.default_rng(0).standard_normal((24, 2)), 0)
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text('raise RuntimeError("this matplotlib build is broken")\n')
    procs = {}
    for mode in ("absent", "broken"):
        d = tmp_path / mode
        d.mkdir()
        np.save(d / "x.npy", x)
        path = [str(fake)] if mode == "broken" else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path + [str(SRC)]), OMP_NUM_THREADS="1")
        argv = [(name, cmd.format(d=d).split()) for name, cmd, _ in COMMANDS]
        procs[mode] = subprocess.Popen([sys.executable, "-c", RUNNER, mode, json.dumps(argv)], env=env, cwd=d,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for mode, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        check(tmp_path / mode, mode, json.loads(out.strip().splitlines()[-1]))


def check(d: Path, mode: str, results: dict) -> None:
    for name, _, expected in COMMANDS:
        code, err = results[name]
        assert "Traceback" not in err, (mode, name, err)
        assert code == expected, (mode, name, code, err)
        if expected == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("ckd: error:"), (mode, name, err)
            why = "is not installed" if mode == "absent" else "cannot be imported (RuntimeError: this matplotlib"
            assert "matplotlib" in lines[0] and why in lines[0] and "pip install 'ckd[plot]'" in lines[0], (name, err)
    # refused before any work: nothing of theirs was written
    for name in ("f3.npy", "fig.png", "ev", "rep"):
        assert not (d / name).exists(), (mode, name)
    assert sorted(p.name for p in (d / "cmp").iterdir()) == ["compare.json", "compare.md"]
    assert "compare.png not written" in results["compare"][1]
