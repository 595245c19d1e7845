"""Experiments of ``ckd reproduce``: each turns a claim of SPEC §2 into a measured figure.

``EXPERIMENTS`` maps an experiment name to its module path, in the order they run.
Modules are imported only when run (``load``), so a missing optional dependency of
one experiment does not break the others.

Interface of an experiment module::

    run(out: pathlib.Path, *, size: str, seed: int, device: str) -> dict

It writes ``out/<name>.png``, ``out/<name>.pdf`` and ``out/<name>.json`` (the numbers
plotted, the config and the seed; extra files allowed) and returns a flat dict of
headline numbers (str -> float or str) for ``summary.md``. ``size`` is one of ``SIZES``:
"quick" must finish in a few seconds on 2 CPU cores, "default" (what ``ckd reproduce`` runs)
keeps the whole set within about 15 minutes on 2 cores (the heavy experiments define a smaller
``DEFAULT`` configuration; the others run at full size), "full" is the size of docs/.
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
    "looped": "ckd.experiments.looped",
    "chaos": "ckd.experiments.chaos",
    "context-length": "ckd.experiments.context_length",
    "chaos-forecast": "ckd.experiments.chaos_forecast",
    "icml2024": "ckd.experiments.icml2024",
}

SIZES = ("quick", "default", "full")

# measured seconds of each experiment on 2 cores, per size (the whole-run progress bar of ckd reproduce);
# default: one cold-cache run under a load of 5-6 (README), 2026-12-03
EXPECTED_SECONDS: dict[str, dict[str, float]] = {
    "depth-and-length": {"quick": 2, "default": 20, "full": 35},
    "kaczmarz-limit": {"quick": 3, "default": 60, "full": 180},
    "sweeps": {"quick": 2, "default": 5, "full": 6},
    "continuous-depth": {"quick": 2, "default": 28, "full": 40},
    "induction-head": {"quick": 1, "default": 3, "full": 5},
    "raw-tokens": {"quick": 1, "default": 8, "full": 11},
    "transformer-equals-descent": {"quick": 1, "default": 4, "full": 6},
    "training": {"quick": 3, "default": 120, "full": 680},
    "looped": {"quick": 3, "default": 160, "full": 1500},
    "chaos": {"quick": 10, "default": 130, "full": 150},
    "context-length": {"quick": 5, "default": 27, "full": 1200},
    "chaos-forecast": {"quick": 20, "default": 270, "full": 5400},
    "icml2024": {"quick": 15, "default": 60, "full": 120},
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
