"""Checkpoints and the run folder: save / load / check a checkpoint (every RNG state included),
load a trained model, the folder's inspection and lock, ``config.json`` and ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..io import atomic_write, check_output_dir, check_own_folder
from .config import TrainConfig, build_model, check_memory, transformer_config

CHECKPOINT_FORMAT = "ckd-train-1"
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt")  # what a run writes in its folder


# --------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    """Every RNG state, as tensors/ints (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
             "python": (version, torch.tensor(internal, dtype=torch.int64), gauss_next)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(int(i) for i in internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save, atomically: a crash never leaves a half-written checkpoint."""
    atomic_write(path, lambda fh: torch.save(state, fh))


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0][:200]


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a checkpoint of ``ckd train``; a clear ``ValueError`` if it is missing or corrupted."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such checkpoint")
    if not path.is_file():
        raise ValueError(f"{path}: is not a regular file (a folder, pipe or device), not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on foreign pickles: the file is judged below
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # PyTorch's multi-line weights-only message: one line of our own
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            raise ValueError(f"{path}: corrupted or not a ckd training checkpoint (unreadable: "
                             f"{detail.group(1).strip()[:120] if detail else _first_line(err)}); it was left "
                             "as is") from None
        raise ValueError(f"{path}: not a ckd training checkpoint: it holds Python objects ({found.group(1)}), which "
                         "are never unpickled (a weights-only load); it was left as is") from None
    except Exception as err:
        raise ValueError(f"{path}: corrupted or not a ckd training checkpoint ({_first_line(err)}); it was left "
                         "as is") from None
    keys = {"format", "config", "setting", "step", "model", "optimizer", "scheduler", "rng"}
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or not keys <= set(state):
        raise ValueError(f"{path}: not a ckd training checkpoint (format {CHECKPOINT_FORMAT}); it was left as is")
    return state


def check_model_state(path, cfg: TrainConfig, model_state) -> None:
    """Before building the model: ``model_state`` is a dict of finite tensors whose layer count and
    embedding / read-out shapes are those the config describes (a config claiming a huge model is
    refused here, not allocated)."""
    if not isinstance(model_state, dict) or not all(isinstance(v, Tensor) for v in model_state.values()):
        raise ValueError(f"{path}: checkpoint field 'model' is not a dict of tensors")
    tc = transformer_config(cfg)
    layers = {int(k.split(".")[1]) for k in model_state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if layers != set(range(tc.n_layers)):  # a looped model stores its loop body
        raise ValueError(f"{path}: checkpoint field 'model' holds {len(layers)} layers, its config says {tc.n_layers}")
    for key, shape in [("embed.weight", (tc.d_model, tc.d_in)), ("readout.weight", (cfg.dim, tc.d_model))]:
        if key not in model_state or tuple(model_state[key].shape) != shape:
            got = tuple(model_state[key].shape) if key in model_state else "nothing"
            raise ValueError(f"{path}: checkpoint field 'model' does not fit its config: {key} is {got}, "
                             f"the config (dim {cfg.dim}) needs {shape}")
    for key, value in model_state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path}: the model's weights are not finite (NaN or inf in {key}): the run diverged; "
                             "train again with a smaller --lr")


def load_model(path: str | os.PathLike) -> tuple[TrainConfig, nn.Module, dict]:
    """(config, trained model in eval mode, checkpoint) from a ``checkpoint.pt`` of ``ckd train``.
    Refuses (one-line ``ValueError`` naming the checkpoint) weights that are not finite, or that do
    not fit the config, or a model that cannot fit in memory, before building it."""
    state = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(state["config"]).validate()
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: checkpoint field 'config': {err}".splitlines()[0]) from None
    check_model_state(path, cfg, state["model"])
    check_memory(cfg, training=False, batch=1)
    model = build_model(cfg, state["setting"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: checkpoint does not fit the model its config describes ({err})".splitlines()[0]) \
            from None
    return cfg, model.eval(), state


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_metrics(path: Path, before: int | None = None) -> list[dict]:
    """The records of ``metrics.jsonl`` (those with step < ``before``; a torn last line is dropped)."""
    if not path.exists():
        return []
    if not path.is_file():  # never open a pipe: it would block
        raise ValueError(f"{path}: is not a regular file; remove it or choose another --out")
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line torn by a crash: everything after it is stale too
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            break
        if before is None or rec["step"] < before:
            records.append(rec)
    return records


# --------------------------------------------------------------------------- run folder


def _is_our_config(path: Path) -> bool:
    """``path`` is a config.json written by ``ckd train`` (a dict of TrainConfig fields and ``setting``)."""
    if not path.is_file():  # never open a pipe: it would block
        return False
    try:
        data = json.loads(path.read_text())
        TrainConfig.from_dict({k: v for k, v in data.items() if k != "setting"})
        return "setting" in data and "task" in data
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def inspect_out(out: Path, resume: bool) -> bool:
    """Read-only check of the run folder; True when a run starts from step 0 (False: resume).

    A folder that does not exist, is empty, or holds a run of ours stopped before its first
    checkpoint (our config.json, no checkpoint.pt) starts a new run. A run with a checkpoint needs
    ``resume``. A folder holding files but no run of ours is refused: its files are never touched.
    """
    check_output_dir(out)
    ckpt = out / "checkpoint.pt"
    if resume:
        if not ckpt.exists():
            hint = (" (the run stopped before its first checkpoint: run without --resume to start it again)"
                    if _is_our_config(out / "config.json") else "")
            raise ValueError(f"--resume: {ckpt} does not exist (nothing to resume){hint}")
        return False
    if not out.exists():
        return True
    if ckpt.exists():
        raise ValueError(f"{out} already holds a training run; pass --resume to continue it, or choose a new --out")
    check_own_folder(out, "config.json", _is_our_config, "a ckd training run")  # ours: stopped before a checkpoint
    return True


class FolderLock:
    """An exclusive ``fcntl.flock`` on the run folder for the run's whole life: a second ``ckd train``
    on the same folder is refused with one line (no file is created for the lock)."""

    def __init__(self, out: Path):
        self.out, self.fd = out, None

    def __enter__(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise ValueError(f"{self.out}: another ckd train is running in this folder; wait for it or choose "
                             "another --out") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _field(path: Path, name: str, why: str) -> ValueError:
    return ValueError(f"--resume: {path}: checkpoint field '{name}' {why}; it was left as is")


def check_resume_state(state: dict, cfg: TrainConfig, path: Path) -> None:
    """Every field of a checkpoint to resume, checked before anything is written: config (the run's),
    setting, step, model (finite, fits the config), optimizer, scheduler, RNG states."""
    try:
        old = TrainConfig.from_dict(state["config"])
    except (ValueError, TypeError) as err:
        raise _field(path, "config", f"is not a run config ({err})") from None
    # older runs: missing fields default; the data files' paths may change (their SHA-256 may not)
    old, new = ({k: v for k, v in asdict(c).items() if k not in ("data", "val_data")} for c in (old, cfg))
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"--resume: {path.parent} was trained with a different config ({'; '.join(diff)}); "
                         "rerun with the same flags or choose a new --out")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= cfg.steps:
        raise _field(path, "step", f"must be an integer in 0 .. {cfg.steps}, got {step!r}")
    setting = state["setting"]
    if cfg.init == "construction":
        numbers = isinstance(setting, dict) and all(isinstance(setting.get(k), (int, float))
                                                    and math.isfinite(setting[k]) for k in ("step", "beta", "sigma"))
        if not numbers:
            raise _field(path, "setting", "must hold the construction's finite step, beta and sigma")
    elif setting is not None:
        raise _field(path, "setting", f"must be None for init {cfg.init}, got {type(setting).__name__}")
    try:
        check_model_state(path, cfg, state["model"])
    except ValueError as err:
        raise ValueError(f"--resume: {err}; it was left as is") from None
    rng = state["rng"]
    if not isinstance(rng, dict) or not {"torch", "numpy", "python"} <= set(rng):
        raise _field(path, "rng", "must hold the torch, numpy and python RNG states")
    saved = rng_state()
    try:
        set_rng_state(rng)
    except Exception as err:
        raise _field(path, "rng", f"is not a valid RNG state ({type(err).__name__}: {err})".splitlines()[0]) from None
    finally:
        set_rng_state(saved)


def load_states(path: Path, state: dict, model: nn.Module, optimizer, scheduler) -> None:
    """Load model, optimizer and scheduler states, each checked (one line naming the field)."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, KeyError, AttributeError) as err:
        raise _field(path, "model", f"does not fit the model ({err})".splitlines()[0]) from None
    opt = state["optimizer"]
    params = list(model.parameters())
    try:
        groups = opt["param_groups"]
        if not isinstance(opt["state"], dict) or len(groups) != 1 or groups[0]["params"] != list(range(len(params))):
            raise ValueError("its parameter groups are not the model's")
        g = groups[0]
        if not (tuple(g["betas"]) == (0.9, 0.99) and g["weight_decay"] == optimizer.defaults["weight_decay"]
                and all(math.isfinite(g[k]) and g[k] >= 0 for k in ("lr", "eps"))):
            raise ValueError("its hyper-parameters (lr, betas, eps, weight decay) are not the run's")
        for i, st in opt["state"].items():
            if not (isinstance(i, int) and 0 <= i < len(params)) or not isinstance(st, dict):
                raise ValueError(f"it has a state for parameter {i!r}, which the model does not have")
            p = params[i]
            for key in ("exp_avg", "exp_avg_sq"):
                if not isinstance(st[key], Tensor) or st[key].shape != p.shape or not torch.isfinite(st[key]).all():
                    raise ValueError(f"state {key} of parameter {i} is not a finite tensor of shape {tuple(p.shape)}")
            if not torch.isfinite(torch.as_tensor(st["step"], dtype=torch.float64)).all():
                raise ValueError(f"step of parameter {i} is not finite")
        optimizer.load_state_dict(opt)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, AttributeError) as err:
        raise _field(path, "optimizer", f"is not this run's AdamW state ({err})".splitlines()[0]) from None
    sch = state["scheduler"]
    try:
        if not isinstance(sch, dict) or sch.get("last_epoch") != state["step"]:
            raise ValueError(f"last_epoch {sch.get('last_epoch') if isinstance(sch, dict) else sch!r} "
                             f"is not the step {state['step']}")
        if list(sch.get("base_lrs", ())) != [optimizer.defaults["lr"]]:
            raise ValueError(f"base_lrs {sch.get('base_lrs')!r} are not [{optimizer.defaults['lr']}]")
        scheduler.load_state_dict(sch)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, AttributeError) as err:
        raise _field(path, "scheduler", f"is not this run's schedule ({err})".splitlines()[0]) from None
