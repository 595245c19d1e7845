"""Where the chaos-forecast benchmark runs, and its per-system result files (resumable runs).

A system's run is made of parts (``scoring.run_part``): one per initial condition and one for the
attractor test; ``scoring.merge_parts`` assembles them, the same way whatever ran them, so every
executor gives the same numbers bit for bit.

Executors (``run(..., executor=...)``, ``--executor``):

    local          the default: one task per system, in this process (1 worker) or a pool of
                   ``spawn`` processes (``--workers N``).
    ray            one Ray task per (system, part) on a local Ray instance (``ray.init()``, or the
                   cluster named by ``$RAY_ADDRESS``); ``pip install 'ckd[ray]'``.
    ray://ADDRESS  the same on the Ray cluster at ADDRESS (Ray Client). Its nodes need ckd with its
                   ``chaos`` and ``reservoir`` extras, and the data cache (``CKD_CACHE_DIR`` on a
                   shared file system; otherwise each node integrates what it needs).

Result files: each system's merged result is written to ``OUT/systems/NAME.json`` as soon as its
last part is done (atomically), with a key (protocol, initial conditions, horizon, long steps,
runs). A rerun with the same key reads the files it finds and runs only the missing systems, so an
interrupted run resumes; delete ``OUT/systems`` (or one file) to recompute.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import numpy as np

from .data import atomic_save, protocol_key
from .scoring import active_runs, merge_parts, run_part

FORMAT = 1


def parts(n_ics: int, long_steps: int) -> list:
    """The parts of one system: its initial conditions, then the attractor test."""
    return list(range(n_ics)) + (["attractor"] if long_steps else [])


def result_key(n_ics: int, horizon: int, long_steps: int) -> dict:
    return {"format": FORMAT, "protocol": protocol_key(), "n_ics": n_ics, "horizon": horizon, "long": long_steps,
            "runs": [lab for lab, _, _ in active_runs()]}


def result_path(out: pathlib.Path, name: str) -> pathlib.Path:
    return out / "systems" / f"{name}.json"


def _plain(value):
    """json.dumps' fallback: numpy arrays and scalars as lists and numbers (repr: exact round trip)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_result(out: pathlib.Path, result: dict, key: dict) -> None:
    text = json.dumps({"key": key, "result": result}, default=_plain)
    atomic_save(result_path(out, result["system"]), lambda f: f.write(text.encode()))


def load_results(out: pathlib.Path, names: list[str], key: dict) -> dict[str, dict]:
    """The results already in ``OUT/systems`` for ``names`` whose key matches (others are ignored)."""
    done = {}
    for name in names:
        try:
            data = json.loads(result_path(out, name).read_text())
        except (OSError, ValueError):
            continue
        if data.get("key") == key and data.get("result", {}).get("system") == name:
            done[name] = data["result"]
    return done


def safe_part(name: str, part, horizon: int, long_steps: int, device: str) -> dict:
    """``run_part``, with an exception recorded as the part's failure (one broken system must not
    lose the others)."""
    try:
        return run_part(name, part, horizon, long_steps, device)
    except Exception as err:
        return {"part": part, "error": f"{type(err).__name__}: {err}".splitlines()[0]}


def run_system_parts(job) -> dict:
    """One system, every part in this process, merged (the local executor's task)."""
    name, n_ics, horizon, long_steps, device = job
    return merge_parts(name, [safe_part(name, p, horizon, long_steps, device) for p in parts(n_ics, long_steps)],
                       n_ics)


def check_executor(executor: str) -> str:
    """"local", "ray" or "ray://ADDRESS"; ray needs the ``ray`` extra (one clear error)."""
    if executor == "local":
        return executor
    if executor != "ray" and not executor.startswith("ray://"):
        raise ValueError(f"executor must be local, ray or ray://ADDRESS, got {executor!r}")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'ckd[ray]'") from None
    return executor


def execute(names: list[str], n_ics: int, horizon: int, long_steps: int, device: str, n_workers: int,
            executor: str = "local") -> Iterator[dict]:
    """Yield each system's merged result as soon as it is complete."""
    jobs = [(s, n_ics, horizon, long_steps, device) for s in names]
    if executor == "local":
        if n_workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(n_workers) as pool:
                yield from pool.imap_unordered(run_system_parts, jobs)
        else:
            yield from map(run_system_parts, jobs)
        return
    yield from _ray(names, n_ics, horizon, long_steps, device, executor)


def _ray(names, n_ics, horizon, long_steps, device, executor) -> Iterator[dict]:
    import ray

    if not ray.is_initialized():
        ray.init(address=None if executor == "ray" else executor)
    task = ray.remote(num_cpus=1)(safe_part)
    pending, owner, got = [], {}, {s: [] for s in names}
    for s in names:
        for p in parts(n_ics, long_steps):
            ref = task.remote(s, p, horizon, long_steps, device)
            pending.append(ref)
            owner[ref] = s
    need = len(parts(n_ics, long_steps))
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        s = owner.pop(ready[0])
        got[s].append(ray.get(ready[0]))
        if len(got[s]) == need:
            yield merge_parts(s, got.pop(s), n_ics)
