"""Progress bars for long loops of the library (tqdm on stderr, a terminal only).

A bar costs nothing for short work: ``progress_bar`` returns None below ``PROGRESS_MIN_STEPS``
steps, ``PROGRESS_MIN_WORK`` multiply-adds and ``PROGRESS_MIN_SECONDS`` estimated seconds
(``ckd.cost``), and tqdm shows it only after 2 s, and only when stderr is a terminal."""

from __future__ import annotations

PROGRESS_MIN_STEPS = 1000  # below this many layer-blocks no bar is created at all
PROGRESS_MIN_WORK = 1e10  # or above this many multiply-adds (about a second or more)
PROGRESS_MIN_SECONDS = 1.0  # or above this estimate of the loop's time (ckd.cost)
PROGRESS_DELAY = 2.0  # seconds before a bar appears: short work never shows one


def progress_bar(total: int, desc: str, unit: str, min_steps: int = PROGRESS_MIN_STEPS, work: float = 0.0,
                 seconds: float = 0.0):
    """A tqdm bar on stderr for long loops: only when stderr is a terminal (``disable=None``) and
    only once the work has lasted 2 s (``delay``); None for short loops (no overhead)."""
    if total < min_steps and work < PROGRESS_MIN_WORK and not seconds >= PROGRESS_MIN_SECONDS:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, delay=PROGRESS_DELAY, leave=False,
                dynamic_ncols=True)


class estimated_progress:  # noqa: N801 - a context manager used like a function
    """``with estimated_progress(seconds, desc):`` shows, on a terminal, a tqdm bar in estimated
    seconds (``ckd.cost``) for work that has no loop of its own to count: a thread advances it with
    the elapsed time, held below 99 % until the work ends (then it closes; the estimate is not a
    promise). Nothing at all below ``PROGRESS_MIN_SECONDS`` or when stderr is not a terminal."""

    def __init__(self, seconds: float, desc: str):
        self.seconds, self.desc = float(seconds), desc
        self.bar = self.thread = None

    def __enter__(self):
        import sys

        if not self.seconds >= PROGRESS_MIN_SECONDS or not _is_terminal(sys.stderr):
            return self
        import threading
        import time

        from tqdm.auto import tqdm

        total = max(round(self.seconds), 1) if self.seconds < 1e9 else 10**9
        self.bar = tqdm(total=total, desc=self.desc, unit="s", delay=PROGRESS_DELAY, leave=False, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s estimated [{elapsed}]")
        self.stop = threading.Event()
        start = time.monotonic()

        def tick():
            while not self.stop.wait(0.5):
                self.bar.n = min(time.monotonic() - start, 0.99 * total)
                self.bar.refresh()

        self.thread = threading.Thread(target=tick, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.stop.set()
            self.thread.join()
            self.bar.close()
        return False


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
