"""Progress bars for long loops of the library (tqdm on stderr, a terminal only).

A bar costs nothing for short work: ``progress_bar`` returns None below ``PROGRESS_MIN_STEPS``
steps and ``PROGRESS_MIN_WORK`` multiply-adds, and tqdm shows it only after 2 s."""

from __future__ import annotations

PROGRESS_MIN_STEPS = 1000  # below this many layer-blocks no bar is created at all
PROGRESS_MIN_WORK = 1e10  # or above this many multiply-adds (about a second or more)


def progress_bar(total: int, desc: str, unit: str, min_steps: int = PROGRESS_MIN_STEPS, work: float = 0.0):
    """A tqdm bar on stderr for long loops: only when stderr is a terminal (``disable=None``) and
    only once the work has lasted 2 s (``delay``); None for short loops (no overhead)."""
    if total < min_steps and work < PROGRESS_MIN_WORK:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, delay=2.0, leave=False, dynamic_ncols=True)
