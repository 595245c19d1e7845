"""Experiments of ``ckd reproduce``: each turns a claim of SPEC §2 into a measured figure.

``EXPERIMENTS`` maps an experiment name to its module path, in the order they run.
Modules are imported only when run (``load``), so a missing optional dependency of
one experiment does not break the others.

Interface of an experiment module::

    run(out: pathlib.Path, *, quick: bool, seed: int, device: str) -> dict

It writes ``out/<name>.png``, ``out/<name>.pdf`` and ``out/<name>.json`` (the numbers
plotted, the config and the seed; extra files allowed) and returns a flat dict of
headline numbers (str -> float or str) for ``summary.md``. ``quick`` must finish in a
few seconds on 2 CPU cores.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXPERIMENTS: dict[str, str] = {
    "depth-and-length": "ckd.experiments.depth_and_length",
    "kaczmarz-limit": "ckd.experiments.kaczmarz_limit",
    "sweeps": "ckd.experiments.sweeps",
    "continuous-depth": "ckd.experiments.continuous_depth",
    "induction-head": "ckd.experiments.induction_head",
    "raw-tokens": "ckd.experiments.raw_tokens",
    "transformer-equals-descent": "ckd.experiments.transformer_equals_descent",
    "training": "ckd.experiments.training",
    "chaos": "ckd.experiments.chaos",
    "context-length": "ckd.experiments.context_length",
    "chaos-forecast": "ckd.experiments.chaos_forecast",
}


def load(name: str) -> ModuleType:
    """Import the module of experiment ``name``; unknown names raise a one-line ``ValueError``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def progress(iterable, desc: str, *, quick: bool = False, total: int | None = None):
    """A tqdm progress bar on stderr for the long loops of a full run (silent when ``quick``)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=quick, leave=False, dynamic_ncols=True)
