"""The resumable loop and command line of the controlled studies (``plateau.py``, ``looped_depth.py``,
``looped_descent.py``): one JSON of runs per OUT.

Every finished run is appended to OUT/NAME.json at once, so a study cut short keeps what it finished and a
second call runs only what is missing; each family's CKD reference is computed once.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable, Iterable
from pathlib import Path

import torch


def run_study(path: Path, families: Iterable[tuple[str, str]], names: Callable[[str], list[str]],
              reference: Callable[[str, str], dict], run_one: Callable[[str, str, str], dict],
              summary: Callable[[dict], str]) -> dict:
    """For each (task, attention): ``reference(task, attention)`` into data["ckd"] once, then ``run_one(name, task,
    attention)`` for each of ``names(task)`` not yet in data["results"], saved after each; one thread. Returns the
    data {machine, threads, torch, results, ckd}."""
    torch.set_num_threads(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dict(machine=f"{platform.machine()} {platform.processor() or ''}".strip(), threads=1,
                torch=torch.__version__, results=[], ckd={})
    if path.exists():
        data = json.loads(path.read_text())
    done = {(r["variant"], r["task"], r["attention"]) for r in data["results"]}
    for task, attention in families:
        if f"{task}/{attention}" not in data["ckd"]:
            data["ckd"][f"{task}/{attention}"] = reference(task, attention)
        for name in names(task):
            if (name, task, attention) in done:
                continue
            result = run_one(name, task, attention)
            data["results"].append(result)
            path.write_text(json.dumps(data, indent=1) + "\n")
            print(f"{name} {task}/{attention}: {result['train_seconds']:.0f} s, {summary(result)}", flush=True)
    return data


def study_parser(doc: str, variants: Iterable[str], families: list[tuple[str, str]], file: str,
                 only_default: list[str] | None = None) -> argparse.ArgumentParser:
    """The options every study takes: --out, --only (variants; default ``only_default``, None: the study's
    own list), --families (task names of ``families``) and --report (print the table of OUT/``file``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    default = " (default: those of the study, STUDY)" if only_default is None else ""
    parser.add_argument("--only", nargs="*", default=only_default, choices=list(variants),
                        help=f"these variants{default}")
    names = [t for t, _ in families]
    parser.add_argument("--families", nargs="*", default=names, choices=names)
    parser.add_argument("--report", action="store_true", help=f"print the table of OUT/{file} and stop")
    return parser
