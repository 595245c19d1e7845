"""The sections of ``benchmarks/perf.py``, one module each (named as ``--only`` names it).

SECTIONS maps a section's name to the function that measures it, ``fn(cfg) -> dict`` (the dict is
``results.json``'s entry of that name), in the order a full run takes them."""

from __future__ import annotations

from .backends import section_backends
from .batch import section_batch
from .depth import section_depth
from .dtypes import section_dtypes
from .features import section_features
from .floor import section_floor
from .length import section_length
from .linear_memory import section_linear_memory
from .linear_time import section_linear_time
from .long import section_long
from .return_all import section_return_all
from .streaming import section_streaming

SECTIONS = {
    "floor": section_floor,
    "return_all": section_return_all,
    "length": section_length,
    "depth": section_depth,
    "batch": section_batch,
    "streaming": section_streaming,
    "backends": section_backends,
    "dtypes": section_dtypes,
    "long": section_long,
    "linear_time": section_linear_time,
    "linear_memory": section_linear_memory,
    "features": section_features,
}
