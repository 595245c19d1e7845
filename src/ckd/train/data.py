"""Training on your own sequences (``ckd train --data SEQS``): read and check the files, hold out the
evaluation sequences, draw the windows each step trains on.

SEQS holds B sequences of T tokens in d dimensions: a real (B, T, d) array in a ``.npy`` or a ``.npz``
holding exactly one array, or one sequence (T, d) (a ``.csv``, or a 2-d ``.npy`` / ``.npz``: B = 1),
finite, non-empty (``ckd.io.load_array`` reads it). The run records task ``"data"`` and, for each file,
its path as given, SHA-256, shape and dtype as stored (``TrainConfig.data*``, ``val_*``); ``--resume``
reads the file again and refuses one whose SHA-256 differs (the path may change).

Evaluation sequences (the run's ``eval_loss``): ``--val-data V`` (same checks, same d), or the last
ceil(F B) sequences of SEQS held out (``--val-fraction F``, 0 < F < 1, at least one sequence on each
side), by default F = ``VAL_FRACTION`` when B >= 2; a single sequence (B = 1) without ``--val-data``
is evaluated on itself (a warning says so; ``val_fraction`` is then None).

Windows: training step s on rank r draws ``batch`` windows x[b, u : u + length] of the training
sequences, b uniform in 0..B_train-1 and u uniform in 0..T-length (whole sequences when T = length),
from a generator seeded with seed_for(seed, TRAIN, s, r): a resumed run draws the same windows, bit for
bit, and every DDP rank its own (as ``ckd.train.sample`` for a task family). The evaluation windows are
every window of the evaluation sequences when there are at most ``eval_batch`` of them, else
``eval_batch`` distinct windows drawn with seed_for(seed, EVAL); the construction's tuning windows
(``--init construction``) are ``TUNE_SEQUENCES`` training windows drawn with seed_for(seed, TUNE).
With ``--length`` not given, the CLI trains on whole sequences (length = T), and ``--dim`` defaults to d.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..io import load_array
from ..validation import check_fits, check_number
from .config import DATA_FIELDS, DTYPES, EVAL, TUNE, TUNE_SEQUENCES, TrainConfig, seed_for

VAL_FRACTION = 0.1  # held out when neither --val-data nor --val-fraction is given


@dataclass
class Sequences:
    """The user's sequences as float64 tensors: ``train`` (B_train, T, d), ``val`` (B_val, T_val, d)
    (``train`` itself when nothing is held out), and ``fields``, the TrainConfig fields describing them."""

    train: Tensor
    val: Tensor
    fields: dict

    @property
    def dim(self) -> int:
        return self.train.shape[-1]

    @property
    def length(self) -> int:
        """T of the training sequences (the CLI's --length when not given)."""
        return self.train.shape[1]


def read_sequences(path: str | os.PathLike, flag: str = "--data") -> tuple[np.ndarray, dict]:
    """(x (B, T, d) float64, {"sha256", "shape", "dtype"} of the file) from ``path``; one-line
    ``ValueError`` naming ``flag`` and the file for anything that is not finite real sequences, and
    for a file whose arrays cannot fit in memory (estimated from its header before reading)."""
    p = Path(path)
    if p.suffix.lower() not in (".npy", ".npz", ".csv"):
        raise ValueError(f"{flag} {p}: expected a .npy, .npz or .csv file")
    check_fits(_bytes_to_read(p), f"reading {flag} {p}", "use fewer or shorter sequences")
    arr = load_array(p)
    if arr.dtype.kind == "c":  # load_array may read complex (SPEC §10); training is real
        raise ValueError(f"{flag} {p}: dtype {arr.dtype} is complex; ckd train needs real sequences")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{flag} {p}: shape {arr.shape}: expected (B, T, d) sequences or one (T, d) sequence")
    if arr.size == 0:
        raise ValueError(f"{flag} {p}: shape {arr.shape} is empty")
    x = arr.astype(np.float64, copy=False).reshape((-1, *arr.shape[-2:]))
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"{flag} {p}: contains NaN or inf (first at index {tuple(int(i) for i in np.argwhere(bad)[0])}"
                         f" of shape {x.shape})")
    info = {"sha256": _sha256(p), "shape": [int(n) for n in arr.shape], "dtype": str(arr.dtype)}
    return x, info


def load_data(data: str | os.PathLike, val_data: str | os.PathLike | None = None,
              val_fraction: float | None = None) -> Sequences:
    """Read SEQS (and V) and split off the evaluation sequences (module doc); one-line ``ValueError``
    for bad files or a fraction that leaves a side empty."""
    if val_data is not None and val_fraction is not None:
        raise ValueError("give --val-data or --val-fraction, not both")
    x, info = read_sequences(data, "--data")
    fields = dict.fromkeys(DATA_FIELDS) | {"data": str(data), **{f"data_{k}": v for k, v in info.items()}}
    B = x.shape[0]
    if val_data is not None:
        val, vinfo = read_sequences(val_data, "--val-data")
        if val.shape[-1] != x.shape[-1]:
            raise ValueError(f"--val-data {val_data}: d = {val.shape[-1]}, but --data {data} has d = {x.shape[-1]}")
        fields |= {"val_data": str(val_data), **{f"val_{k}": v for k, v in vinfo.items()}}
        return Sequences(torch.from_numpy(x), torch.from_numpy(val), fields)
    if val_fraction is None and B == 1:
        warnings.warn(f"--data {data} holds one sequence: the evaluation (eval_loss) uses it too; give "
                      "--val-data to evaluate on other sequences", stacklevel=2)
        return Sequences(torch.from_numpy(x), torch.from_numpy(x), fields)
    fraction = VAL_FRACTION if val_fraction is None else check_number(val_fraction, "--val-fraction", minimum=0.0,
                                                                       strict=True)
    held = math.ceil(round(fraction * B, 9))  # round: 0.3 * 10 is 3.0000000000000004
    if fraction >= 1 or held >= B:
        raise ValueError(f"--val-fraction {fraction:g} holds out {held} of the {B} sequences of --data {data}; "
                         "leave at least one to train on (0 < F < 1, ceil(F B) < B)")
    fields["val_fraction"] = fraction
    t = torch.from_numpy(x)
    return Sequences(t[: B - held], t[B - held:], fields)


def attach(cfg: TrainConfig, data: Sequences | None = None) -> tuple[TrainConfig, Sequences]:
    """The run's sequences (``data``, or read from ``cfg.data`` / ``cfg.val_data``) and ``cfg`` with
    their fields filled in. Refused, one line each: a field of ``cfg`` already set to another value
    (another file: its SHA-256 differs), d != ``cfg.dim``, T < ``cfg.length``, values whose squares
    overflow the training dtype."""
    if data is None:
        data = load_data(cfg.data, cfg.val_data, cfg.val_fraction)
    for name, value in data.fields.items():
        given = getattr(cfg, name)
        if name not in ("data", "val_data") and given is not None and _plain(given) != value:
            raise ValueError(f"{name}: the files give {value!r}, the config says {_plain(given)!r}; use the "
                             "files the config describes, or leave the field out (None)")
    cfg = replace(cfg, **data.fields)
    if data.dim != cfg.dim:
        raise ValueError(f"--dim {cfg.dim} does not match the data: --data {cfg.data} has d = {data.dim} "
                         "(leave --dim out to use the data's)")
    for name, x in ((f"--data {cfg.data}", data.train), (f"--val-data {cfg.val_data}", data.val)):
        if x.shape[1] < cfg.length:
            raise ValueError(f"{name}: sequences of T = {x.shape[1]} tokens are shorter than --length {cfg.length}; "
                             f"pass --length {x.shape[1]} or less")
    big = max(float(torch.linalg.vector_norm(x, dim=-1).max()) ** 2 for x in (data.train, data.val))
    if not big <= torch.finfo(DTYPES[cfg.dtype]).max / 4:  # the loss and every kernel compute x.x
        raise ValueError(f"--data {cfg.data}: values too large for {cfg.dtype} training (|x_t|^2 up to {big:.3g}); "
                         "rescale the sequences" + (" or use --dtype float64" if cfg.dtype != "float64" else ""))
    return cfg, data


def windows(x: Tensor, batch: int, length: int, seed: int) -> Tensor:
    """``batch`` windows x[b, u : u + length] (batch, length, d) of x (B, T, d), b uniform in 0..B-1 and
    u uniform in 0..T-length, from a torch generator seeded with ``seed``."""
    if not 1 <= length <= x.shape[1]:
        raise ValueError(f"windows of {length} tokens do not fit in sequences of T = {x.shape[1]}")
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(x.shape[0], (batch,), generator=g)
    u = torch.randint(x.shape[1] - length + 1, (batch,), generator=g)
    return x[b[:, None], u[:, None] + torch.arange(length)]


def train_windows(cfg: TrainConfig, data: Sequences, batch: int, *stream: int) -> Tensor:
    """The training windows of seed stream ``stream`` (``sample``'s counterpart for a data run)."""
    return windows(data.train, batch, cfg.length, seed_for(cfg.seed, *stream))


def tune_windows(cfg: TrainConfig, data: Sequences) -> Tensor:
    """The construction's tuning windows: ``TUNE_SEQUENCES`` training windows (stream TUNE)."""
    return train_windows(cfg, data, TUNE_SEQUENCES, TUNE)


def eval_windows(cfg: TrainConfig, data: Sequences) -> Tensor:
    """Every window of the evaluation sequences, or ``cfg.eval_batch`` distinct ones (stream EVAL)."""
    B, T, _ = data.val.shape
    per = T - cfg.length + 1
    if B * per <= cfg.eval_batch:
        picks = np.arange(B * per)
    else:
        rng = np.random.default_rng(seed_for(cfg.seed, EVAL))
        picks = np.sort(rng.choice(B * per, size=cfg.eval_batch, replace=False))
    b, u = torch.from_numpy(picks // per), torch.from_numpy(picks % per)
    return data.val[b[:, None], u[:, None] + torch.arange(cfg.length)]


# --------------------------------------------------------------------------- helpers


def _plain(value):
    """A config value as JSON gives it back (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _bytes_to_read(p: Path) -> float:
    """Bytes reading ``p`` needs: its arrays as stored and as float64, from the .npy / .npz header
    (without reading the data); for text, or a header that cannot be read, 8 x the file's size."""
    try:
        if p.suffix.lower() == ".npy":
            with open(p, "rb") as fh:
                return _header_bytes(fh)
        if p.suffix.lower() == ".npz":
            with zipfile.ZipFile(p) as z:
                infos = z.infolist()
                if len(infos) == 1:
                    with z.open(infos[0]) as fh:
                        return _header_bytes(fh)
    except Exception:  # not readable as such: load_array says why
        pass
    try:
        return 8.0 * p.stat().st_size
    except OSError:
        return 0.0


def _header_bytes(fh) -> float:
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fh)
    return float(math.prod(shape)) * (dtype.itemsize + 8)
