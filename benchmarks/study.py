"""The resumable loop of the controlled studies (``plateau.py``, ``looped_depth.py``): one JSON of runs per OUT.

Every finished run is appended to OUT/NAME.json at once, so a study cut short keeps what it finished and a
second call runs only what is missing; each family's CKD reference is computed once.
"""

from __future__ import annotations

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
