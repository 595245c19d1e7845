"""Memory a call will need, checked before allocating: refuse with one line what cannot fit.

``available_bytes(device)``: what the machine can give now (Linux ``MemAvailable`` for CPU,
``torch.cuda.mem_get_info`` for CUDA). ``require(need, what, advice)`` raises a one-line
``ValueError`` "WHAT needs about X, more than the Y available; ADVICE".
Estimates are floors (the tensors a call must hold at once), so a refusal is never a guess.
"""

from __future__ import annotations

import os

import torch


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Bytes that can be allocated now on ``device`` (CPU: MemAvailable, else physical memory)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63 - 1  # unknown: never refuse


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"


def require(need: float, what: str, advice: str, device: torch.device | str = "cpu") -> None:
    """Raise ``ValueError`` (one line) if ``need`` bytes exceed ``available_bytes(device)``."""
    have = available_bytes(device)
    if need > have:
        raise ValueError(f"{what} needs about {format_bytes(need)} of memory, more than the {format_bytes(have)} "
                         f"available; {advice}")
