"""Optional figures: matplotlib is an extra (``pip install 'ckd[plot]'``).

"Cannot import" is treated like "not installed" everywhere: a matplotlib whose import raises
anything (a broken build, a missing compiled dependency, a bad backend) gives the same one-line
refusal, before any work, as an absent one (``require_matplotlib``), or leaves the optional figure
out (``matplotlib_problem`` returns why). Figures are written atomically (``save_figure_as``): a
temp file in the target's folder renamed onto it, never a half-written file, never onto a folder
or a pipe. This module imports nothing heavy at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

PLOT_EXTRA = "pip install 'ckd[plot]'"


def matplotlib_problem() -> str | None:
    """None when ``matplotlib.pyplot`` imports (with the Agg backend, no display needed); else
    why not, in a few words: "is not installed" or "cannot be imported (<error>)"."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401 - the import is the check
    except ModuleNotFoundError as err:
        if err.name == "matplotlib":
            return "is not installed"
        return f"cannot be imported ({_first_line(err)})"
    except Exception as err:  # installed but broken: any exception of its import
        return f"cannot be imported ({_first_line(err)})"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


def require_matplotlib(what: str) -> None:
    """One-line ``ValueError`` before any work when ``what`` (e.g. "ckd reproduce") needs figures and
    matplotlib is absent or broken. matplotlib stays optional: predict, forecast without --plot,
    train and evaluate without --out run without it."""
    problem = matplotlib_problem()
    if problem is not None:
        raise ValueError(f"{what} draws figures with matplotlib, which {problem}: {PLOT_EXTRA}")


def figure_format(path: str | os.PathLike) -> str:
    """The format named by the suffix of ``path`` (``png``, ``pdf``, ``svg``, ...), checked against what
    matplotlib writes; a name without a suffix is refused (one line) rather than written under
    another name (matplotlib would append ``.png``). Call after ``require_matplotlib``."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        raise ValueError(f"{path}: a figure name needs a suffix naming its format (.png, .pdf, .svg); "
                         "it is written under exactly that name")
    if suffix not in FigureCanvasBase.get_supported_filetypes():
        raise ValueError(f"{path}: matplotlib cannot write .{suffix} figures; use .png or .pdf")
    return suffix


def save_figure_as(fig, path: str | os.PathLike, **savefig) -> None:
    """Write ``fig`` to exactly ``path`` in the format of its suffix, atomically (``ckd.io.atomic_write``:
    an existing non-regular ``path`` is refused, never replaced), and close it."""
    import matplotlib.pyplot as plt

    from .io import atomic_write

    fmt = figure_format(path)
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, **savefig))
    finally:
        plt.close(fig)
