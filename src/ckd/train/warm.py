"""Warm start (``TrainConfig.init_from``, ``ckd train --init-from RUN``): a new run whose model starts from the
weights of another run's checkpoint, e.g. a curriculum over the loop count (a looped model trained with loops
16..32, then trained on with loops 32..64).

Only the checkpoint's model weights are read: the optimizer (a fresh AdamW), the lr schedule, the steps, the loop
counts, the seed and everything else are the new run's own config. The two models must be the same architecture:
the fields ``MODEL_FIELDS`` equal (``heads`` None is 2), both looped or both not, and, not looped, the same
``layers`` (a looped model stores its loop body, so its loop count may change); anything else is refused with one
line naming the differences, before the run folder is created. The checkpoint's SHA-256 is stored in the new
run's config (``init_sha256``); ``--resume`` reads the weights from the run's own checkpoint, not from RUN again.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import check_model_state, load_checkpoint
from .config import TrainConfig, build_model

# the fields that set the architecture of the model (its state dict and what it computes)
MODEL_FIELDS = ("attention", "heads", "width", "mlp", "norm", "attention_norm", "bias", "tokens", "dim",
                "loop_blocks", "reinject", "loop_qk", "loop_shape")


def init_path(init_from: str) -> Path:
    """The checkpoint of ``--init-from``: RUN/checkpoint.pt for a run folder, else the path itself."""
    path = Path(init_from)
    return path / "checkpoint.pt" if path.is_dir() else path


def architecture(cfg: TrainConfig) -> dict:
    """The fields of ``cfg`` that a warm start must keep (module doc)."""
    fields = {k: getattr(cfg, k) for k in MODEL_FIELDS} | {"heads": cfg.heads or 2, "looped": bool(cfg.loop)}
    return fields | {"layers": "any" if cfg.loop else cfg.layers}


def read_init(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Tensor]]:
    """(``cfg`` with ``init_sha256`` set, the model weights of the checkpoint of ``cfg.init_from``), every check
    done first: a missing, corrupted or foreign checkpoint, a config of another architecture (``architecture``),
    weights that are not finite or do not fit this run's model, or a SHA-256 other than ``cfg.init_sha256`` (when
    set) is one ``ValueError`` line starting with "--init-from"."""
    path = init_path(cfg.init_from)
    try:
        state = load_checkpoint(path)
        try:
            old = TrainConfig.from_dict(state["config"]).validate()
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: checkpoint field 'config': {err}".splitlines()[0]) from None
        mine, theirs = architecture(cfg), architecture(old)
        diff = [f"{k}: {theirs[k]!r} there, {mine[k]!r} here" for k in mine if mine[k] != theirs[k]]
        if diff:
            raise ValueError(f"{path} holds another model ({'; '.join(diff)}); a warm start keeps the architecture")
        check_model_state(path, cfg, state["model"])
        with torch.random.fork_rng(devices=[]):  # the shapes of this run's model; the user's RNG left alone
            want = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state["model"].items()}
        if got != want:
            key = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[0]
            raise ValueError(f"{path}: its model does not fit this run's: {key} is {got.get(key, 'missing')} there, "
                             f"{want.get(key, 'missing')} here")
    except ValueError as err:
        raise ValueError(f"--init-from: {err}") from None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if cfg.init_sha256 is not None and cfg.init_sha256 != sha:
        raise ValueError(f"--init-from: {path} has SHA-256 {sha}, the config says {cfg.init_sha256}: "
                         "another checkpoint")
    return replace(cfg, init_sha256=sha), state["model"]
