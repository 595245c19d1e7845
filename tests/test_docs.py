"""Every README and docs example marked runnable runs as written, in order (issue 12, item 18).

Convention: a fenced block immediately preceded by the line ``<!-- runnable -->`` is executed.
Per file, in order, in one fresh temporary folder: ``python`` blocks share one namespace;
``bash`` blocks run line by line, each line parsed as a shell command (``shlex``, comments
dropped): ``ckd ...`` runs ``ckd.cli.main`` in-process (the installed ``ckd`` script calls the same
function; in-process keeps the suite fast) and must exit 0; ``python ...`` and any other command
run in a subprocess with this checkout's sources first on ``PYTHONPATH``. Expensive examples
(installs, full experiments, multi-process training) stay unmarked.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARK = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w+)\s*$")


def runnable_blocks(path: pathlib.Path) -> list[tuple[int, str, str]]:
    """(line number, language, code) of the blocks marked runnable, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines[:-1]):
        if line.strip() != MARK:
            continue
        m = FENCE.match(lines[i + 1].strip())
        assert m, f"{path.name}:{i + 1}: {MARK} must be followed by a fenced block"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        blocks.append((i + 2, m.group(1), "\n".join(lines[i + 2:end])))
    return blocks


DOCS = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if runnable_blocks(p)]


def _run_bash(code: str, where: str) -> None:
    from ckd.cli import main

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    for line in code.splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[0] == "ckd":
            assert main(argv[1:]) == 0, f"{where}: {line}"
        else:
            argv = [sys.executable, *argv[1:]] if argv[0] in ("python", "python3") else argv
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{where}: {line}\n{done.stderr[-2000:]}"


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_runnable_examples_run_as_written(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for line, lang, code in runnable_blocks(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        if lang == "python":
            exec(compile(code, where, "exec"), namespace)
        elif lang == "bash":
            _run_bash(code, where)
        else:
            pytest.fail(f"{where}: runnable blocks are python or bash, not {lang}")


def test_every_marked_block_is_found():
    """The marker is used where we promised: README, forecast.md and transformer.md."""
    names = {p.name for p in DOCS}
    assert {"README.md", "forecast.md", "transformer.md"} <= names
