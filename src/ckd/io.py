"""Reading and writing arrays for the CLI: .npy and .csv (and reading a .npz of one array); every
OUT is checked before any work and written atomically (``check_output_path``, ``check_output_dir``, ``atomic_write``).

Rules for OUT, shared by every command that writes files (predict, forecast, evaluate, train,
reproduce): OUT is never one of the inputs (same file through a link or another spelling
included); an existing OUT that is not a regular file (folder, named pipe, device, socket) is
refused, never replaced; a symbolic link OUT is written through (the file it points to is
replaced, the link stays); a new file gets mode 0666 minus the umask, a replaced file keeps
its mode; a failure leaves no OUT and no temp file.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

SUFFIXES = (".npy", ".csv")


def as_path(path: str | os.PathLike) -> Path:
    """``Path(path)``, refusing (one-line ``ValueError``) a name that is empty or only blanks:
    ``Path('')`` is the current folder, which no caller means (``ckd train --out ''``)."""
    if isinstance(path, (str, bytes)) and not path.strip():
        raise ValueError(f"an empty path ({path!r}); give a file or folder name")
    try:
        return Path(path)
    except TypeError:
        raise TypeError(f"a path must be a str or os.PathLike, got {type(path).__name__}") from None


def load_array(path: str | os.PathLike, *, complex_ok: bool = False) -> np.ndarray:
    """Load a real numeric array from ``.npy``, ``.npz`` (holding exactly one array) or ``.csv``
    (comma-separated, optional header row).

    A ``.npy`` (or the array of a ``.npz``) of any byte order holding bool, integers or floats
    (float16 to float128) is returned in native byte order; float128 is converted to float64 (values
    beyond its range refused). ``complex_ok`` (the linear kernel of ``ckd predict``, SPEC §10): a
    complex array (complex64, complex128; complex256 as complex128) is accepted too. Raises
    ``ValueError`` with a one-line message naming the file for a missing, unreadable or non-numeric
    file, or another dtype.
    """
    p = as_path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file")
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, not an array file")
    if not p.is_file():
        raise ValueError(f"{p}: is not a regular file (a named pipe, device or socket); save the array to a file")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _load_csv(p)
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as err:
        kind = ".npz archive" if suffix == ".npz" else ".npy array"
        raise ValueError(f"{p}: not a readable {kind} ({type(err).__name__}: {err})".splitlines()[0]) from None
    if not isinstance(arr, np.ndarray):
        arr = _only_array(arr, p)
    return _native_real(arr, p, complex_ok)


def _only_array(archive, p: Path) -> np.ndarray:
    """The one array of a ``.npz`` archive (``np.load``'s ``NpzFile``); one-line errors otherwise."""
    with archive:
        names = list(archive.files)
        if len(names) != 1:
            listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ValueError(f"{p}: holds {len(names)} arrays{f' ({listed})' if names else ''}, expected exactly one; "
                             "save the one to use with np.save or np.savez")
        try:
            return archive[names[0]]
        except Exception as err:  # object arrays (pickle refused), a damaged member
            raise ValueError(f"{p}: array {names[0]!r} is not readable ({type(err).__name__}: {err})"
                             .splitlines()[0]) from None


def _native_real(arr: np.ndarray, p: Path, complex_ok: bool = False) -> np.ndarray:
    """``arr`` in native byte order; float types torch lacks (float128, complex256) as float64 / complex128."""
    kind = arr.dtype.kind
    kinds = "biufc" if complex_ok else "biuf"
    if kind not in kinds or arr.dtype.fields is not None or arr.dtype.subdtype is not None:
        if kind == "c":
            raise ValueError(f"{p}: dtype {arr.dtype} is not a real number type (complex sequences are for "
                             "ckd predict --kernel linear only)")
        raise ValueError(f"{p}: dtype {arr.dtype} is not a real number type; save bool, integers or floats")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype.itemsize > (16 if kind == "c" else 8) and kind in "fc":  # float128 / complex256: not in torch
        with np.errstate(over="ignore", invalid="ignore"):
            wide = arr
            arr = wide.astype(np.complex128 if kind == "c" else np.float64)
        if (np.isfinite(wide) & ~np.isfinite(arr)).any():
            raise ValueError(f"{p}: dtype {wide.dtype} holds values beyond float64's range (~1.8e308); rescale them")
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


def _kind(mode: int) -> str:
    """A name for a file type that is not a regular file."""
    for test, name in [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]:
        if test(mode):
            return name
    return "not a regular file"


def check_file_target(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Check that a file may be written at ``path`` before any work; return the path to write
    (``path`` with symbolic links resolved: a link OUT is written through, the link kept).

    Refused with a one-line ``ValueError``: ``path`` is one of ``inputs`` (same file through a
    link, a hard link or another spelling); it exists and is not a regular file; its folder does
    not exist or is not writable.
    """
    p = as_path(path)
    for inp in inputs:
        try:
            same = os.path.samefile(p, inp)
        except OSError:
            same = False
        if same:
            raise ValueError(f"{p}: is the input {inp}; choose another output (the input is never overwritten)")
    target = Path(os.path.realpath(p))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise ValueError(f"{p}: cannot check the output ({err.strerror})") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise ValueError(f"{p}: exists and is {_kind(mode)}, not a regular file; choose a file name "
                         "(it is never replaced)")
    if not target.parent.is_dir():
        raise ValueError(f"{p.parent}: output folder does not exist")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{target.parent}: no permission to write in this folder")
    return target


def check_output_path(path: str | os.PathLike, ndim: int, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Check an array OUT before any work: known suffix, csv only for (T, d), and
    ``check_file_target`` (not an input, not a folder/pipe/device, writable folder)."""
    p = as_path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{p}: output must end in .npy or .csv")
    if p.suffix.lower() == ".csv" and ndim != 2:
        raise ValueError(f"{p}: a .csv output holds a (T, d) array; use .npy for (B, T, d)")
    check_file_target(p, inputs)
    return p


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check an output folder before any work: it is a folder (or does not exist yet) and the
    first existing folder on its path is writable. Returns it; creates nothing."""
    p = as_path(path)
    try:
        mode = os.stat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as err:
        raise ValueError(f"{p}: cannot check the output folder ({err.strerror})") from None
    if mode is not None and not stat.S_ISDIR(mode):
        raise ValueError(f"{p}: exists and is {_kind(mode) if not stat.S_ISREG(mode) else 'a file'}, not a folder")
    existing = p
    while not (existing.exists() or existing == existing.parent):
        if existing.is_symlink():
            raise ValueError(f"{existing}: a link to nothing; choose another output folder")
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing}: exists and is not a folder; choose another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing}: no permission to write in this folder")
    return p


def check_own_folder(path: str | os.PathLike, marker: str, is_ours: Callable[[Path], bool], what: str,
                     flag: str = "--out") -> Path:
    """The rule of the commands that write a folder of files (``ckd train``, ``ckd evaluate``): never
    replace a file the command did not create. Before any work, the folder must not exist yet, be
    empty, or hold ``marker`` written by the command (``is_ours(folder / marker)``, which must never
    open a pipe); then the command's own files may be (re)written there, and the others are never
    touched. A folder holding files but no marker of ours is refused with one ``ValueError`` line,
    left as it was. Also ``check_output_dir``. Returns the folder; creates nothing."""
    folder = check_output_dir(path)
    if not folder.exists() or is_ours(folder / marker):
        return folder
    others = sorted(p.name for p in folder.iterdir())
    if others:
        raise ValueError(f"{folder} holds files that are not {what} ({others[0]}{', ...' if len(others) > 1 else ''}"
                         f"); choose a new or empty {flag} (its files are never replaced)")
    return folder


def json_format(path: Path) -> str | None:
    """The ``"format"`` field of the JSON object in ``path`` (how ckd marks a file as its own), or None
    (no such file, not a regular file: a pipe is never opened, not JSON, no such field)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) and isinstance(data.get("format"), str) else None


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(file)`` on a temp file in the folder of ``path``, then rename it onto ``path``:
    never a half-written file. Symbolic links are written through; a new file gets mode
    0666 & ~umask (as files opened normally), a replaced file keeps its mode; an existing
    ``path`` that is not a regular file is refused (``ValueError``), never replaced."""
    target = Path(os.path.realpath(path))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: exists and is {_kind(st.st_mode)}, not a regular file; it is never replaced")
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_array(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write ``arr`` as .npy or .csv (by suffix) with ``atomic_write``: a failure leaves no OUT."""
    if Path(path).suffix.lower() == ".csv":
        atomic_write(path, lambda fh: np.savetxt(fh, arr, delimiter=",", fmt="%.17g"))
    else:
        atomic_write(path, lambda fh: np.save(fh, arr))


def jsonable(value: Any, digits: int = 6) -> Any:
    """Tensors, arrays and numpy scalars as lists/floats rounded to ``digits`` significant
    digits; non-finite floats as None (for ``json.dumps``; no matplotlib or torch import needed)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), digits)
    if isinstance(value, dict):
        return {str(k): jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, digits) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.floating, float)):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
