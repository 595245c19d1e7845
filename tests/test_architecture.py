"""The package's structure (issue 19): every import arrow points down, no module borrows another's
private names, and no source file grows past a reader's page budget.

The import graph is read from the source tree (``ast``), function-level imports included: a lazy
import that hides a circle is still a circle. A package's submodule is its own node (importing
``ckd.descent.steps`` does not count as importing ``ckd.descent``'s ``__init__``), as in grimp /
import-linter."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 450
# files allowed past MAX_LINES, each with the reason (none today)
LONG_FILES: dict[str, str] = {}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in sorted((SRC / "ckd").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if package else parts)] = (path, package)
    return mods


def _imports(mods) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the ckd modules it imports, the private names imported across modules)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for name, (path, package) in mods.items():
        here = name if package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "ckd":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods:
                        edges[name].add(sub)
                    else:
                        edges[name].add(target)
                        if alias.name.startswith("_") and target != name:
                            private.append(f"{name} imports {target}.{alias.name}")
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name.split(".")[0] == "ckd")
        edges[name].discard(name)
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_cycles_and_private_imports(tmp_path):
    """The checker itself: a planted circle and a planted private import are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    edges, private = _imports({"ckd.x": (_write(tmp_path / "x.py", "from .y import _h\n"), False),
                               "ckd.y": (_write(tmp_path / "y.py", "from . import x\n"), False)})
    assert edges == {"ckd.x": {"ckd.y"}, "ckd.y": {"ckd.x"}}
    assert private == ["ckd.x imports ckd.y._h"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_no_import_cycle():
    edges, _ = _imports(_modules())
    assert "ckd.linear_time" in edges["ckd.descent.dispatch"]  # the graph is really read
    assert _cycles(edges) == []


def test_no_private_name_crosses_modules():
    _, private = _imports(_modules())
    assert private == []


def test_no_source_file_is_too_long():
    files = [p for p, _ in _modules().values()] + sorted((SRC.parent / "benchmarks").glob("*.py"))
    long = {str(p.relative_to(SRC.parent)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert {k: n for k, n in long.items() if k not in LONG_FILES} == {}
