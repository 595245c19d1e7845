"""Train a causal Transformer to predict the next token in context (nanoGPT-style).

Every step draws fresh prompts x (B, T, d) from a task family (``ckd.make_task``),
each with its own map f, and minimises the mean squared next-token error

    loss = mean_{b, t=1..T-2} |model(x)[b, t] - x[b, t+1]|^2

(row 0 excluded: it has no pair (x_{s-1} -> x_s) to learn from; CKD predicts 0
there). AdamW, linear warm-up then cosine decay to ``min_lr`` * lr, gradient
clipping. The model starts either from a random init or from the construction of
SPEC §3 (``ckd.construction.construct``: a Transformer that runs depth-N CKD
exactly), with the construction's kernel parameters and step chosen on separate
sequences (``tune_ckd``).

Outputs in ``out``: ``config.json``; ``metrics.jsonl``, one JSON object per logged
step (``step``, ``loss``, ``lr``, and ``eval_loss``/``eval_err_last`` when evaluated);
``checkpoint.pt`` (model, optimizer, scheduler, every RNG state), written atomically.

Step s draws its prompts from a seed derived from (seed, s, rank), so a run resumed
from a checkpoint at step k repeats, bit for bit on CPU, the losses of an
uninterrupted run. Under ``torchrun --nproc_per_node=K`` the same code runs with
DistributedDataParallel (gloo on CPU, nccl on GPU); the global batch is split over
the K ranks and only rank 0 writes.

Usage: ``ckd train --task periodic --attention softmax --layers 2 --out runs/p2`` (see
``docs/training.md``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .descent import StabilityWarning, default_step, finite_depth, infinite_depth, targets
from .io import atomic_write, check_output_dir
from .kernels import causal_matrices
from .sequences import TASKS, make_task
from .validation import check_fits, check_number

ATTENTIONS = ("softmax", "linear", "exp", "gaussian")
INITS = ("random", "construction")
TOKENS = ("augmented", "raw")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHECKPOINT_FORMAT = "ckd-train-1"
MAX_INT = 2**63 - 1  # every integer field: a torch int64 / numpy seed
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt")  # what a run writes in its folder

# Seed streams (the second entry of ``seed_for``): training batches, CKD tuning, eval during training,
# fresh sequences of ``ckd evaluate``. Distinct streams never share sequences.
TRAIN, TUNE, EVAL, TEST = 0, 1, 2, 3

# Kernel-parameter grids and step factors searched by ``tune_ckd`` (step = factor / max_t R[t, t]).
PARAM_GRID = {"softmax": ("beta", (1.0, 4.0, 16.0, 64.0)), "exp": ("beta", (0.5, 1.0, 2.0, 4.0)),
              "gaussian": ("sigma", (0.25, 0.5, 1.0, 2.0)), "linear": (None, (None,))}
STEP_FACTORS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 1.9)
TUNE_SEQUENCES = 64


@dataclass
class TrainConfig:
    """Everything that defines a run (``--resume`` refuses a different one)."""

    task: str = "periodic"
    attention: str = "softmax"
    layers: int = 2
    heads: int | None = None  # None: 2 (the construction's two heads)
    width: int | None = None  # None: the Transformer's default width for these tokens
    mlp: bool = False
    layernorm: bool = False
    init: str = "random"
    tokens: str = "augmented"
    steps: int = 600
    batch: int = 32
    length: int = 32
    dim: int = 3
    lr: float = 1e-2
    min_lr: float = 0.1  # final lr as a fraction of lr
    warmup: int = 30
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    curriculum: int = 0  # steps over which the prompt length grows from min(4, length) to length (0: none)
    dtype: str = "float32"
    log_every: int = 10
    eval_every: int = 100
    eval_batch: int = 128
    checkpoint_every: int = 100

    def validate(self) -> TrainConfig:
        """Raise a one-line ``ValueError`` for any bad field; return self."""
        def choice(name, options):
            if getattr(self, name) not in options:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(options)}")

        choice("task", tuple(TASKS))
        choice("attention", ATTENTIONS)
        choice("init", INITS)
        choice("tokens", TOKENS)
        choice("dtype", tuple(DTYPES))
        for name, low in [("layers", 1), ("steps", 0), ("batch", 1), ("length", 3), ("dim", 1), ("warmup", 0),
                          ("curriculum", 0), ("log_every", 1), ("eval_every", 1), ("eval_batch", 1),
                          ("checkpoint_every", 1)]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INT:
                raise ValueError(f"{name} must be an integer >= {low} (and < 2**63), got {value!r}")
        for name in ("heads", "width"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_INT):
                raise ValueError(f"{name} must be an integer >= 1 (and < 2**63), got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_INT:
            raise ValueError(f"seed must be an integer in 0 .. 2**63 - 1, got {self.seed!r}")
        check_number(self.lr, "lr", minimum=0.0, strict=True)
        check_number(self.min_lr, "min_lr", minimum=0.0)
        check_number(self.weight_decay, "weight_decay", minimum=0.0)
        check_number(self.grad_clip, "grad_clip", minimum=0.0, strict=True)
        if self.init == "construction" and (self.heads is not None or self.width is not None or self.mlp
                                            or self.layernorm):
            raise ValueError("--init construction fixes the architecture (2 heads, its own width, no MLP, "
                             "no LayerNorm); drop --heads/--width/--mlp/--layernorm")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Fields missing from ``d`` (a run older than them) take their defaults; unknown ones are refused."""
        if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
            raise ValueError(f"config is not a dict of fields (got {type(d).__name__})")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        return cls(**d)


def seed_for(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sample(cfg: TrainConfig, batch: int, *stream: int) -> Tensor:
    """Fresh prompts (batch, T, d) of the run's task from seed stream ``stream`` (float64)."""
    return make_task(cfg.task, batch, cfg.length, cfg.dim, seed=seed_for(cfg.seed, *stream)).x


def next_token_loss(pred: Tensor, x: Tensor) -> Tensor:
    """mean over b and t = 1..T-2 of |pred[b, t] - x[b, t+1]|^2 (row 0 excluded)."""
    return (pred[:, 1:-1] - x[:, 2:]).square().sum(-1).mean()


# --------------------------------------------------------------------------- CKD settings


def tune_ckd(x: Tensor, kernel: str, depths: list[int | str]) -> dict[int | str, dict]:
    """For each depth (int or "inf"), the CKD setting (kernel parameter, step) of lowest
    ``next_token_loss`` on x (B, T, d), over ``PARAM_GRID`` x ``STEP_FACTORS``.

    Returns {depth: {"kernel", "depth", "beta", "sigma", "step", "loss"}}; step is in true units
    (factor / max_t R[t, t] over x), None for depth inf. Settings that overflow are skipped.
    One causal_matrices per kernel parameter, one descent (``return_all``) per step for all depths.
    """
    name, values = PARAM_GRID[kernel]
    finite = sorted(n for n in depths if n != "inf")
    best: dict[int | str, dict] = {}

    def consider(depth, pred, opts, step):
        loss = float(next_token_loss(pred, x))
        if math.isfinite(loss) and (depth not in best or loss < best[depth]["loss"]):
            best[depth] = dict(kernel=kernel, depth=depth, step=step, loss=loss, **opts)

    y = targets(x)
    for value in values:
        opts = {"beta": 1.0, "sigma": 1.0} | ({name: value} if name else {})
        mats = causal_matrices(x, kernel, opts["beta"], opts["sigma"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StabilityWarning)
            if "inf" in depths:
                try:
                    consider("inf", infinite_depth(mats, y), opts, None)
                except (ValueError, FloatingPointError):
                    pass
            if finite:
                max_diag = 0.5 / default_step(mats)
                for factor in STEP_FACTORS:
                    try:
                        preds = finite_depth(mats, y, finite[-1], factor / max_diag, return_all=True)
                    except FloatingPointError:
                        continue
                    for n in finite:
                        consider(n, preds[n], opts, factor / max_diag)
    missing = [n for n in depths if n not in best]
    if missing:
        raise ValueError(f"no finite CKD setting for kernel {kernel} at depth {missing[0]}")
    return best


def tuning_prompts(cfg: TrainConfig, seed: int | None = None) -> Tensor:
    """The ``TUNE_SEQUENCES`` prompts on which CKD settings are chosen (never trained or tested on)."""
    seed = cfg.seed if seed is None else seed
    return make_task(cfg.task, TUNE_SEQUENCES, cfg.length, cfg.dim, seed=seed_for(seed, TUNE)).x


def construction_setting(cfg: TrainConfig) -> dict:
    """CKD setting the construction runs: ``tune_ckd`` at depth ``cfg.layers`` on ``tuning_prompts``."""
    return tune_ckd(tuning_prompts(cfg), cfg.attention, [cfg.layers])[cfg.layers]


# --------------------------------------------------------------------------- model


def transformer_config(cfg: TrainConfig, setting: dict | None = None):
    """The ``TransformerConfig`` of the run's model (the construction's for ``init='construction'``:
    two heads, head_dim d, no MLP), without building it."""
    from .transformer import TransformerConfig

    if cfg.init == "construction":
        return TransformerConfig(dim=cfg.dim, n_layers=cfg.layers, n_heads=2, head_dim=cfg.dim,
                                 value_dim=cfg.dim, attention=cfg.attention, tokens=cfg.tokens, max_len=cfg.length,
                                 mlp_width=2 * cfg.dim, prev_attention="linear")
    return TransformerConfig(dim=cfg.dim, n_layers=cfg.layers, n_heads=cfg.heads or 2, width=cfg.width,
                             attention=cfg.attention, tokens=cfg.tokens, max_len=cfg.length, mlp=cfg.mlp,
                             layernorm=cfg.layernorm)


def build_model(cfg: TrainConfig, setting: dict | None = None) -> nn.Module:
    """The run's ``CausalTransformer`` (float64 construction cast to ``cfg.dtype``, or random init
    from the global torch RNG). ``setting`` (from ``construction_setting``) is needed for the
    construction."""
    if cfg.init == "construction":
        from .construction import construct

        model = construct(cfg.attention, dim=cfg.dim, depth=cfg.layers, step=setting["step"],
                          beta=setting["beta"], sigma=setting["sigma"], tokens=cfg.tokens,
                          max_len=cfg.length, dtype=torch.float64)
    else:
        from .transformer import CausalTransformer

        model = CausalTransformer(transformer_config(cfg))
    return model.to(DTYPES[cfg.dtype])


def check_memory(cfg: TrainConfig, device: torch.device | str = "cpu", world: int = 1, *,
                 training: bool = True, batch: int | None = None) -> None:
    """Refuse (one-line ``ValueError``) a run or model that cannot fit in memory, before allocating.

    Floor of the bytes (``ckd.transformer.memory_bytes``): the model with gradients and AdamW
    moments and a batch's activations (``training``; else the model and one forward of ``batch``
    prompts), the prompts and their maps f ((B, d, d) for the linear and nonlinear families),
    the held-out prompts, and the construction's tuning matrices (64 T^2)."""
    from .transformer import memory_bytes

    item = 8 if cfg.dtype == "float64" else 4
    T, d = cfg.length, cfg.dim
    B = (cfg.batch // world) if batch is None else batch
    model = memory_bytes(transformer_config(cfg), B, T, item, training=training)
    maps = 3 * d * d * 8 if cfg.task not in ("periodic", "periodic-gaussian") else 0
    data = max(B, cfg.eval_batch if training else 0) * (T * d * 8 * 2 + maps)
    tune = TUNE_SEQUENCES * T * T * 8 * 3 if (training and cfg.init == "construction") else 0
    what = (f"training (layers {cfg.layers}, width {transformer_config(cfg).d_model}, batch {B}, length {T}, dim {d})"
            if training else f"the model of layers {cfg.layers}, dim {d}, length {T}")
    check_fits(model + data + tune, what, "use smaller --layers, --width, --heads, --batch, --length or --dim"
            if training else "use fewer sequences, or check that the checkpoint is the one you meant", device)


def length_at(cfg: TrainConfig, step: int) -> int:
    """Prompt length trained on at ``step``: with a curriculum of C steps,
    T_s = T0 + floor((T - T0) s / C) for s < C (T0 = min(4, T)), then T; without one, T.
    The prompts are drawn at full length and cut, so a curriculum changes no prompt's map f."""
    if step >= cfg.curriculum:
        return cfg.length
    start = min(4, cfg.length)
    return start + (cfg.length - start) * step // cfg.curriculum


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """lr(step) / lr: linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def eval_metrics(model: nn.Module, x: Tensor) -> dict:
    """{"eval_loss": next_token_loss, "eval_err_last": median |error| of the last prediction}."""
    was_training = model.training
    model.eval()
    pred = model(x)
    model.train(was_training)
    err = (pred[:, -2] - x[:, -1]).norm(dim=-1)
    return {"eval_loss": float(next_token_loss(pred, x)), "eval_err_last": float(err.median())}


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


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a checkpoint of ``ckd train``; a clear ``ValueError`` if it is missing or corrupted."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such checkpoint")
    if not path.is_file():
        raise ValueError(f"{path}: is not a regular file (a folder, pipe or device), not a checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        raise ValueError(f"{path}: corrupted or not a ckd training checkpoint ({msg}); it was left as is") from None
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
    if layers != set(range(cfg.layers)):
        raise ValueError(f"{path}: checkpoint field 'model' holds {len(layers)} layers, its config says {cfg.layers}")
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


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Start torch.distributed when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device(device))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=dev)


# --------------------------------------------------------------------------- training


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
    if _is_our_config(out / "config.json"):
        return True  # stopped before its first checkpoint: start again
    others = sorted(p.name for p in out.iterdir())
    if others:
        raise ValueError(f"{out} holds files that are not a ckd training run ({others[0]}"
                         f"{', ...' if len(others) > 1 else ''}); choose a new or empty --out")
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
    old, new = asdict(old), asdict(cfg)  # older runs: missing fields default
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


def train(cfg: TrainConfig, out: str | os.PathLike, *, resume: bool = False, device: str = "cpu",
          stop_after: int | None = None, progress: bool = True) -> list[dict]:
    """Run (or resume) training; returns the metrics records of this run (all steps so far).

    ``stop_after``: stop once ``stop_after`` updates are done, leaving a checkpoint that
    ``resume=True`` continues exactly (the schedule still spans ``cfg.steps``).

    Everything (config, memory, folder, checkpoint) is checked before anything is written; the
    folder is locked while the run writes; a non-finite loss stops the run with a
    ``FloatingPointError``, the last checkpoint (finite weights) kept.
    """
    cfg.validate()
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or not 0 <= stop_after <= MAX_INT):
        raise ValueError(f"--stop-after must be an integer >= 0, got {stop_after!r}")
    out = Path(out)
    d = setup(device)
    if cfg.batch % d.world:
        raise ValueError(f"--batch {cfg.batch} must be divisible by the number of processes {d.world}")
    check_memory(cfg, d.device, d.world)
    fresh = inspect_out(out, resume)
    setting = None
    if fresh and d.main and cfg.init == "construction":  # before creating anything: it can fail
        setting = construction_setting(cfg)
    created = False
    if d.main and not out.exists():
        try:
            out.mkdir(parents=True)
            created = True
        except FileExistsError:  # another run made it meanwhile: the lock decides
            pass
    with FolderLock(out) if d.main else contextlib.nullcontext():  # refused: another run owns the folder
        try:
            return _train_locked(cfg, out, d, fresh, resume, stop_after, progress, setting)
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # nothing was written: leave no folder behind
            raise


def _train_locked(cfg: TrainConfig, out: Path, d: Dist, fresh: bool, resume: bool, stop_after: int | None,
                  progress: bool, setting: dict | None) -> list[dict]:
    """``train`` once the folder is checked and locked."""
    if inspect_out(out, resume) != fresh:  # another run changed the folder before the lock
        raise ValueError(f"{out}: changed by another ckd train while this one started; choose another --out")
    state = None
    if not fresh:
        ckpt = out / "checkpoint.pt"
        state = load_checkpoint(ckpt)
        check_resume_state(state, cfg, ckpt)
        setting = state["setting"]
        if stop_after is not None and stop_after < state["step"]:
            raise ValueError(f"--stop-after {stop_after} is before the checkpoint's step {state['step']}")
    elif cfg.init == "construction" and setting is None:  # other ranks
        setting = construction_setting(cfg)
    if d.world > 1:
        dist.barrier()  # every rank has checked DIR before rank 0 writes into it
    dtype = DTYPES[cfg.dtype]

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = build_model(cfg, setting).to(d.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    start = 0
    if state:
        load_states(out / "checkpoint.pt", state, model, optimizer, scheduler)
        set_rng_state(state["rng"])
        start = int(state["step"])
    net = nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    model.train()

    metrics_path = out / "metrics.jsonl"
    records = read_metrics(metrics_path, before=start) if d.main and state else []
    if d.main:
        write_json(out / "config.json", {**asdict(cfg), "setting": setting})
        atomic_write(metrics_path, lambda fh: fh.writelines((json.dumps(r) + "\n").encode() for r in records))
    x_eval = sample(cfg, cfg.eval_batch, EVAL).to(d.device, dtype) if d.main else None
    saved = start if state else None  # step of the checkpoint on disk

    def diverged(step: int, what: str) -> FloatingPointError:
        bar.close()
        kept = (f"{out / 'checkpoint.pt'} keeps the last good model (step {saved})" if saved is not None
                else "no checkpoint was written")
        return FloatingPointError(f"training diverged: {what} at step {step} is not finite; {kept}; "
                                  f"lower --lr (now {cfg.lr:g}) and train again")

    def checkpoint(step: int) -> None:
        nonlocal saved
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise diverged(step, "the model's weights")
        if d.main:
            save_checkpoint(out / "checkpoint.pt", dict(
                format=CHECKPOINT_FORMAT, config=asdict(cfg), setting=setting, step=step,
                model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                rng=rng_state()))
        saved = step

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.task}/{cfg.attention}/L{cfg.layers}",
               disable=not (progress and d.main), dynamic_ncols=True)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    running, t0 = None, time.perf_counter()

    def log(step: int, loss: Tensor) -> None:
        nonlocal running
        value = loss.detach()
        if d.world > 1:
            dist.all_reduce(value)
            value /= d.world
        value = float(value)
        if not math.isfinite(value):
            raise diverged(step, f"the loss ({value})")
        running = value if running is None else 0.9 * running + 0.1 * value
        evaluate = step % cfg.eval_every == 0 or step == cfg.steps
        if d.main and (evaluate or step % cfg.log_every == 0):
            rec = {"step": step, "loss": value, "lr": scheduler.get_last_lr()[0]}
            if evaluate:
                rec |= eval_metrics(model, x_eval)
            records.append(rec)
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()

    with open(metrics_path, "a") if d.main else open(os.devnull, "w") as log_file:
        for step in range(start, end):
            # the loss logged at `step` is measured on fresh prompts after `step` updates
            x = sample(cfg, cfg.batch // d.world, TRAIN, step, d.rank)[:, :length_at(cfg, step)]
            x = x.to(d.device, dtype)
            loss = next_token_loss(net(x), x)
            log(step, loss)  # stops at a non-finite loss
            if step > start and step % cfg.checkpoint_every == 0:
                checkpoint(step)  # a good model: its loss was just measured finite
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            try:
                optimizer.step()
            except RuntimeError as err:  # e.g. an lr beyond the dtype's range
                raise diverged(step, f"the update ({err})".splitlines()[0]) from None
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3g}")
        if end == cfg.steps:  # the final model, measured on fresh prompts too
            x = sample(cfg, cfg.batch // d.world, TRAIN, end, d.rank).to(d.device, dtype)
            with torch.no_grad():
                log(end, next_token_loss(model(x), x))
        checkpoint(end)
    bar.close()
    if d.main and progress:
        done = "finished" if end == cfg.steps else f"stopped after step {end} of {cfg.steps} (resume with --resume)"
        last = f"; last loss {records[-1]['loss']:.3g}" if records else ""
        print(f"{done} in {time.perf_counter() - t0:.1f} s{last}; wrote {out}/")
    if d.world > 1:
        dist.barrier()
    return records
