"""Shared helpers of the experiments: one figure style, median + interquartile bands,
log scales, and writing a figure (PNG + PDF) and its numbers (JSON).

Every experiment figure follows the same conventions: errors on a log axis, the
median over sequences as a line and the 25-75 % quantiles as a shaded band, and
the number of sequences in the title or legend.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..io import jsonable  # noqa: E402, F401 - lives in ckd.io (no matplotlib needed); used here and by experiments

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
FLOOR = 1e-17  # errors are clipped here before a log plot (an exact 0 has no logarithm)


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 4.2, height: float = 3.2, **kwargs):
    """A figure with the project style: (fig, axes), axes squeezed as in ``plt.subplots``."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), **kwargs)
    return fig, axes


def to_numpy(a: Any) -> np.ndarray:
    """A float64 numpy array from a tensor, array or list."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def quantiles(errors: Any, axis: int = 0) -> dict[str, np.ndarray]:
    """Median and interquartile range of ``errors`` over ``axis`` (the sequences).

    NaN entries (a run that overflowed) are ignored; returns {"median", "q25", "q75"}.
    """
    e = to_numpy(errors)
    with np.errstate(all="ignore"):
        q25, med, q75 = np.nanquantile(e, [0.25, 0.5, 0.75], axis=axis)
    return {"median": med, "q25": q25, "q75": q75}


def band(ax, x: Any, errors: Any, label: str | None = None, color=None, floor: float = FLOOR, **kwargs):
    """Plot the median of ``errors`` (n_sequences, len(x)) over its first axis as a line,
    with the 25-75 % quantiles shaded. Returns the quantiles (for the JSON)."""
    q = quantiles(errors)
    x = to_numpy(x)
    (line,) = ax.plot(x, np.maximum(q["median"], floor), label=label, color=color, **kwargs)
    ax.fill_between(x, np.maximum(q["q25"], floor), np.maximum(q["q75"], floor), color=line.get_color(),
                    alpha=0.2, linewidth=0)
    return q


def log_axes(ax, x: bool = False, y: bool = True) -> None:
    """Log scale on the chosen axes."""
    if x:
        ax.set_xscale("log")
    if y:
        ax.set_yscale("log")


def colors(n: int, cmap: str = "viridis") -> list:
    """n distinguishable colours from a sequential colour map (dark to light, light end cut)."""
    cm = plt.get_cmap(cmap)
    return [cm(0.9 * i / max(1, n - 1)) for i in range(n)]


def heatmap(ax, values: Any, x: Any, ylabels: list[str], *, vmin: float = -16, vmax: float = 2,
            cmap: str = "magma_r", floor: float = FLOOR):
    """log10 of ``values`` (len(ylabels), len(x)) as an image with x on the horizontal axis
    and one row per label (rows with an empty label get no tick); values are clipped to
    [10^vmin, 10^vmax] and NaN (overflow) shows as 10^vmax. Returns the image (for a colour bar)."""
    with np.errstate(all="ignore"):
        v = np.log10(np.maximum(to_numpy(values), floor))
    v = np.where(np.isnan(v), vmax, v)
    x = to_numpy(x)
    im = ax.imshow(v, aspect="auto", origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                   extent=(x[0], x[-1], -0.5, len(ylabels) - 0.5), interpolation="nearest")
    ticks = [i for i, label in enumerate(ylabels) if label]
    ax.set_yticks(ticks, [ylabels[i] for i in ticks])
    ax.grid(False)
    return im


def save_figure(fig, out: pathlib.Path, name: str) -> list[pathlib.Path]:
    """Write ``out/name.png`` and ``out/name.pdf``, close the figure; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    with plt.rc_context(STYLE):
        fig.tight_layout()
        for p in paths:
            fig.savefig(p)
    plt.close(fig)
    return paths


def save_json(out: pathlib.Path, name: str, data: dict, digits: int = 6) -> pathlib.Path:
    """Write ``out/name.json`` (numbers plotted, config, seed), floats to ``digits``
    significant digits; NaN/inf become null."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(jsonable(data, digits)) + "\n")
    return path
