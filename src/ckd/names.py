"""Names and limits that the ``ckd`` command line parses, importable without torch.

``ckd --help``, an argument error and ``ckd forecast --method parrot`` must not pay torch's
import (about 1.5 s, docs/performance.md): the choices and limits their parsers need live here,
and the library modules that own them import them from here (``ckd.validation``, ``ckd.rollout``,
``ckd.forecast``, ``ckd.reservoir``, ``ckd.compare``). This module imports nothing but the
standard library: it sits below ``ckd.validation`` at the bottom of the import graph.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

MAX_INT = 2**63 - 1  # torch and numpy integers (seeds, sizes) are int64
KERNELS = ("linear", "exp", "softmax", "gaussian")
BACKENDS = ("descent", "transformer")
TOKENS = ("augmented", "raw")
DTYPE_NAMES = ("float64", "float32")  # the keys of ckd.validation.DTYPES
FITS = ("fit", "fit-per-row")  # ckd.compare's fitted steps
RESERVOIR_METHODS = ("nvar", "esn")
FORECAST_METHODS = ("ckd", "analogues", "krr", "ols", "last", "transformer")  # one-step (ckd.forecast.METHODS)
CHOICE_METHOD = "krr-or-parrot"  # per sequence krr or parrot, by their held-out rollouts (ckd.choice)
ROLLOUT_METHODS = (("ckd", "krr", CHOICE_METHOD, "analogues", "parrot", "last", "mean", "transformer")
                   + RESERVOIR_METHODS)
DEFAULT_METHOD = "krr"  # one step: the best method measured (docs/forecast.md)
DEFAULT_ROLLOUT_METHOD = CHOICE_METHOD  # a horizon: the best on the full benchmark (docs/forecast.md, issue 18)


def default_method(horizon: Any) -> str:
    """The method of a forecast that names none: ``DEFAULT_METHOD`` for one step (horizon None),
    ``DEFAULT_ROLLOUT_METHOD`` for a rollout."""
    return DEFAULT_METHOD if horizon is None else DEFAULT_ROLLOUT_METHOD


def parse_float(text: str) -> float:
    """argparse ``type`` for a real flag: like ``float`` but a written non-zero number that rounds
    to 0 or to inf in float64 (``1e-400``, ``1e400``) is refused instead of silently changed."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    mantissa = re.split("[eE]", text.strip())[0]
    if v == 0 and re.search("[1-9]", mantissa):
        raise argparse.ArgumentTypeError(f"{text} underflows to 0 in float64")
    if math.isinf(v) and not re.search("inf", text, re.IGNORECASE):
        raise argparse.ArgumentTypeError(f"{text} overflows float64")
    return v


# which methods read each setting (an argument a method does not read is refused, never ignored)
USED_BY = {"sigma": ("ckd", "krr", CHOICE_METHOD), "ridge": ("ckd", "krr", "nvar", "esn", CHOICE_METHOD),
           "k": ("analogues",)}  # one step: the methods of FORECAST_METHODS among them


def check_used(method: Any, horizon: Any, *, sigma: Any, ridge: Any, k: Any, embed: Any, univariate: Any) -> None:
    """Refuse (one-line ``ValueError``) a setting the method does not read: sigma (ckd, krr), ridge (ckd, krr;
    nvar, esn for a horizon), k other than 1 (analogues), embed other than 5 (parrot, univariate rollouts)."""
    if not isinstance(method, str):
        return  # the method's own check names it
    used = {n: m if horizon is not None else tuple(v for v in m if v in FORECAST_METHODS) for n, m in USED_BY.items()}
    for name, given, users in (("sigma", sigma is not None, used["sigma"]),
                               ("ridge", ridge is not None, used["ridge"]), ("k", not _is_one(k), used["k"])):
        if given and method not in users:
            raise ValueError(f"{name} applies to method {', '.join(users)}, not {method} (it would be ignored)")
    if not _is_one(embed, 5) and method not in ("parrot", CHOICE_METHOD) and not univariate:
        raise ValueError(f"embed applies to method parrot and univariate rollouts, not {method} (it would be ignored)")


def _is_one(value: Any, one: int = 1) -> bool:
    try:
        return bool(value == one)
    except Exception:  # arrays and the like: the option's own check refuses them
        return False
