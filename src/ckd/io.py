"""Reading and writing arrays for the CLI: .npy and .csv, atomic writes."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

SUFFIXES = (".npy", ".csv")


def load_array(path: str | os.PathLike) -> np.ndarray:
    """Load a numeric array from ``.npy`` or ``.csv`` (comma-separated, optional header row).

    Raises ``ValueError`` with a one-line message for a missing, unreadable or
    non-numeric file.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file")
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, not an array file")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _load_csv(p)
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"{p}: not a readable .npy array ({type(err).__name__}: {err})".splitlines()[0]) from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{p}: holds an archive of arrays, expected one array")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"{p}: not a real numeric array (dtype {arr.dtype})")
    return arr


_CSV_ERRORS = (ValueError, UnicodeDecodeError)  # what loadtxt raises for text that is not a numeric table


def _load_csv(p: Path) -> np.ndarray:
    """A numeric comma-separated table; a first row that is not numeric is a header, skipped."""
    def read(**kw) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loadtxt warns on empty input; the caller reports it as one error
            return np.loadtxt(p, delimiter=",", ndmin=2, dtype=np.float64, encoding="utf-8-sig", **kw)  # Excel BOM

    def first_row_is_numeric() -> bool:
        try:
            read(max_rows=1)
            return True
        except _CSV_ERRORS:
            return False

    try:
        try:
            return read()
        except _CSV_ERRORS:
            if first_row_is_numeric():  # no header: the table itself is bad
                raise
            return read(skiprows=1)
    except _CSV_ERRORS as err:
        reason = str(err).splitlines()[0].split("; use `usecols`")[0]  # numpy's reason, minus its hint
        raise ValueError(f"{p}: not a numeric comma-separated table ({reason})") from None
    except OSError as err:
        raise ValueError(f"{p}: cannot read ({err})") from None


def check_output_path(path: str | os.PathLike, ndim: int) -> Path:
    """Check OUT before any work: known suffix, existing folder, csv only for (T, d)."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{p}: output must end in .npy or .csv")
    if p.suffix.lower() == ".csv" and ndim != 2:
        raise ValueError(f"{p}: a .csv output holds a (T, d) array; use .npy for (B, T, d)")
    if not p.parent.resolve().is_dir():
        raise ValueError(f"{p.parent}: output folder does not exist")
    return p


def save_array(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write atomically (temp file in the same folder, then rename): a failure leaves no OUT."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent.resolve(), prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if p.suffix.lower() == ".csv":
                np.savetxt(fh, arr, delimiter=",", fmt="%.17g")
            else:
                np.save(fh, arr)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
