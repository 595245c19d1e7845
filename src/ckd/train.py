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

import json
import math
import os
import random
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .api import check_number
from .descent import StabilityWarning, default_step, finite_depth, infinite_depth, targets
from .kernels import causal_matrices
from .sequences import TASKS, make_task

ATTENTIONS = ("softmax", "linear", "exp", "gaussian")
INITS = ("random", "construction")
TOKENS = ("augmented", "raw")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHECKPOINT_FORMAT = "ckd-train-1"

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
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("heads", "width"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
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
        from .transformer import CausalTransformer, TransformerConfig

        model = CausalTransformer(TransformerConfig(
            dim=cfg.dim, n_layers=cfg.layers, n_heads=cfg.heads or 2, width=cfg.width, attention=cfg.attention,
            tokens=cfg.tokens, max_len=cfg.length, mlp=cfg.mlp, layernorm=cfg.layernorm))
    return model.to(DTYPES[cfg.dtype])


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


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file in path's folder, then os.replace it onto path
    (readable by all, as files opened normally): never a half-written file at ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save, atomically: a crash never leaves a half-written checkpoint."""
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a checkpoint of ``ckd train``; a clear ``ValueError`` if it is missing or corrupted."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        raise ValueError(f"{path}: corrupted or not a ckd training checkpoint ({msg}); it was left as is") from None
    keys = {"format", "config", "setting", "step", "model", "optimizer", "scheduler", "rng"}
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or not keys <= set(state):
        raise ValueError(f"{path}: not a ckd training checkpoint (format {CHECKPOINT_FORMAT}); it was left as is")
    return state


def load_model(path: str | os.PathLike) -> tuple[TrainConfig, nn.Module, dict]:
    """(config, trained model in eval mode, checkpoint) from a ``checkpoint.pt`` of ``ckd train``."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"]).validate()
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
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line torn by a crash: everything after it is stale too
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


def prepare_out(cfg: TrainConfig, out: Path, resume: bool, d: Dist) -> dict | None:
    """Check ``out`` before any work; return the checkpoint to resume from (or None)."""
    ckpt_path, cfg_path = out / "checkpoint.pt", out / "config.json"
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if not resume:
        if ckpt_path.exists() or cfg_path.exists():
            raise ValueError(f"{out} already holds a training run; pass --resume to continue it, or choose a new --out")
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
        return None
    if not ckpt_path.exists():
        raise ValueError(f"--resume: {ckpt_path} does not exist (nothing to resume)")
    state = load_checkpoint(ckpt_path)
    old, new = asdict(TrainConfig.from_dict(state["config"])), asdict(cfg)  # older runs: missing fields default
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"--resume: {out} was trained with a different config ({'; '.join(diff)}); "
                         "rerun with the same flags or choose a new --out")
    return state


def train(cfg: TrainConfig, out: str | os.PathLike, *, resume: bool = False, device: str = "cpu",
          stop_after: int | None = None, progress: bool = True) -> list[dict]:
    """Run (or resume) training; returns the metrics records of this run (all steps so far).

    ``stop_after``: stop once ``stop_after`` updates are done, leaving a checkpoint that
    ``resume=True`` continues exactly (the schedule still spans ``cfg.steps``).
    """
    cfg.validate()
    out = Path(out)
    d = setup(device)
    if cfg.batch % d.world:
        raise ValueError(f"--batch {cfg.batch} must be divisible by the number of processes {d.world}")
    state = prepare_out(cfg, out, resume, d)
    if d.world > 1:
        dist.barrier()  # every rank has checked DIR before rank 0 writes into it
    dtype = DTYPES[cfg.dtype]

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    setting = state["setting"] if state else (construction_setting(cfg) if cfg.init == "construction" else None)
    model = build_model(cfg, setting).to(d.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    start = 0
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        if stop_after is not None and stop_after < start:
            raise ValueError(f"--stop-after {stop_after} is before the checkpoint's step {start}")
    net = nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    model.train()

    metrics_path = out / "metrics.jsonl"
    records = read_metrics(metrics_path, before=start) if d.main else []
    if d.main:
        write_json(out / "config.json", {**asdict(cfg), "setting": setting})
        with open(metrics_path, "w") as fh:  # drop lines logged after the checkpoint we resume from
            fh.writelines(json.dumps(r) + "\n" for r in records)
    x_eval = sample(cfg, cfg.eval_batch, EVAL).to(d.device, dtype) if d.main else None

    def checkpoint(step: int) -> None:
        if d.main:
            save_checkpoint(out / "checkpoint.pt", dict(
                format=CHECKPOINT_FORMAT, config=asdict(cfg), setting=setting, step=step,
                model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                rng=rng_state()))

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
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            log(step, loss)
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3g}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < end:
                checkpoint(step + 1)
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
