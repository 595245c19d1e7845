"""The training loop: DDP setup (``Dist``, ``setup``), evaluation during training, ``train``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..io import as_path, atomic_write
from ..threads import threads_for
from .checkpoint import (
    CHECKPOINT_FORMAT,
    FolderLock,
    check_resume_state,
    inspect_out,
    load_checkpoint,
    load_states,
    read_metrics,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from .config import (
    DTYPES,
    EVAL,
    MAX_INT,
    TRAIN,
    TrainConfig,
    build_model,
    check_memory,
    construction_setting,
    next_token_loss,
    sample,
    training_loss,
)
from .data import Sequences, attach, eval_windows, train_windows, tune_windows
from .lbfgs import LBFGS, check_lbfgs_memory, refine
from .schedule import length_at, lr_factor
from .warm import read_init


@torch.no_grad()
def eval_metrics(model: nn.Module, x: Tensor) -> dict:
    """{"eval_loss": next_token_loss, "eval_err_last": median |error| of the last prediction}."""
    was_training = model.training
    model.eval()
    pred = model(x)
    model.train(was_training)
    err = (pred[:, -2] - x[:, -1]).norm(dim=-1)
    return {"eval_loss": float(next_token_loss(pred, x)), "eval_err_last": float(err.median())}


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def step_flops(cfg: TrainConfig, model: nn.Module) -> int:
    """The floating-point operations of a training step's largest product, about: a (batch length,
    width) x (width, max(width, length)) product (the projections, or the attention scores)."""
    width = max((p.shape[-1] for p in model.parameters() if p.ndim == 2), default=1)
    return 2 * cfg.batch * cfg.length * width * max(width, cfg.length)


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


def lbfgs_stage(cfg: TrainConfig, model: nn.Module, d: Dist, draw, x_eval: Tensor | None, log_file,
                records: list[dict], progress: bool) -> int:
    """The L-BFGS stage after the AdamW steps (``ckd.train.lbfgs.refine``) on the fixed prompts ``draw(lbfgs_batch,
    LBFGS)``; every rank runs the same full batch, rank 0's weights are kept. Logs one record at step ``steps``:
    {"stage": "lbfgs", "lbfgs_iterations", "lbfgs_loss_before" / "lbfgs_loss" (the full-batch objective), "loss"
    (the training loss on the fresh prompts of the final AdamW record), eval metrics}. Returns the iterations."""
    from tqdm.auto import tqdm

    dtype = next(model.parameters()).dtype
    x = draw(cfg.lbfgs_batch, LBFGS).to(d.device, torch.float64)
    bar = tqdm(total=cfg.lbfgs_steps, desc="L-BFGS", disable=not (progress and d.main), dynamic_ncols=True)

    def advance(done: int, loss: float) -> None:
        bar.update(done - bar.n)
        bar.set_postfix(loss=f"{loss:.3g}")

    try:
        history = refine(cfg, model, x, on_chunk=advance)
    except FloatingPointError as err:
        raise FloatingPointError(f"{err}; the checkpoint keeps the model of the AdamW steps") from None
    finally:
        bar.close()
    if d.world > 1:
        for p in model.parameters():
            dist.broadcast(p.data, 0)
    if d.main:
        x = draw(cfg.batch // d.world, TRAIN, cfg.steps, d.rank).to(d.device, dtype)
        with torch.no_grad():
            loss = float(training_loss(cfg, model, x, cfg.steps))
        rec = {"step": cfg.steps, "stage": "lbfgs", "lbfgs_iterations": cfg.lbfgs_steps, "loss": loss,
               "lbfgs_loss_before": history[0], "lbfgs_loss": history[-1], **eval_metrics(model, x_eval)}
        records.append(rec)
        log_file.write(json.dumps(rec) + "\n")
        log_file.flush()
    return cfg.lbfgs_steps


def train(cfg: TrainConfig, out: str | os.PathLike, *, resume: bool = False, device: str = "cpu",
          stop_after: int | None = None, progress: bool = True, data: Sequences | None = None) -> list[dict]:
    """Run (or resume) training; returns the metrics records of this run (all steps so far).

    Task ``"data"`` trains on the sequences of the file ``cfg.data`` (``ckd.train.data``): ``data``
    (from ``load_data``) when already read, else read here; the file's SHA-256, shape and dtype fill
    the config's fields (a field already set to another value is refused).

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
    out = as_path(out)
    if cfg.task == "data":  # the user's sequences: read and checked before anything is created
        cfg, data = attach(cfg, data)
    elif data is not None:
        raise ValueError(f"data= needs task 'data', got task {cfg.task!r}")
    d = setup(device)
    if cfg.batch % d.world:
        raise ValueError(f"--batch {cfg.batch} must be divisible by the number of processes {d.world}")
    check_memory(cfg, d.device, d.world)
    check_lbfgs_memory(cfg, d.device)
    fresh = inspect_out(out, resume)
    init = None  # --init-from: the weights the new run starts from (read and checked before anything is written)
    if fresh and cfg.init_from is not None:
        cfg, init = read_init(cfg)
    setting = None
    tune = tune_windows(cfg, data) if data is not None and cfg.init == "construction" else None
    if fresh and d.main and cfg.init == "construction":  # before creating anything: it can fail
        setting = construction_setting(cfg, tune)
    created = False
    if d.main and not out.exists():
        try:
            out.mkdir(parents=True)
            created = True
        except FileExistsError:  # another run made it meanwhile: the lock decides
            pass
    with FolderLock(out) if d.main else contextlib.nullcontext():  # refused: another run owns the folder
        try:
            return _train_locked(cfg, out, d, fresh, resume, stop_after, progress, setting, data, tune, init)
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # nothing was written: leave no folder behind
            raise


def _train_locked(cfg: TrainConfig, out: Path, d: Dist, fresh: bool, resume: bool, stop_after: int | None,
                  progress: bool, setting: dict | None, data: Sequences | None, tune: Tensor | None,
                  init: dict | None = None) -> list[dict]:
    """``train`` once the folder is checked and locked; ``init``: the weights of ``--init-from`` (a new run)."""
    if inspect_out(out, resume) != fresh:  # another run changed the folder before the lock
        raise ValueError(f"{out}: changed by another ckd train while this one started; choose another --out")
    state = None
    if not fresh:
        ckpt = out / "checkpoint.pt"
        state = load_checkpoint(ckpt)
        if cfg.init_from is not None and cfg.init_sha256 is None and isinstance(state["config"], dict):
            cfg = replace(cfg, init_sha256=state["config"].get("init_sha256"))  # the warm start's, not read again
        check_resume_state(state, cfg, ckpt)
        setting = state["setting"]
        if stop_after is not None and stop_after < state["step"]:
            raise ValueError(f"--stop-after {stop_after} is before the checkpoint's step {state['step']}")
    elif cfg.init == "construction" and setting is None:  # other ranks
        setting = construction_setting(cfg, tune)
    if d.world > 1:
        dist.barrier()  # every rank has checked DIR before rank 0 writes into it
    dtype = DTYPES[cfg.dtype]

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = build_model(cfg, setting).to(d.device)
    if init is not None:
        model.load_state_dict(init)  # read_init checked the keys and shapes; cast to the run's dtype
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    start = refined = 0  # refined: the L-BFGS stage's iterations done (the run is complete when it is lbfgs_steps)
    if state:
        load_states(out / "checkpoint.pt", state, model, optimizer, scheduler)
        set_rng_state(state["rng"])
        start, refined = int(state["step"]), int(state.get("lbfgs", 0))
    complete = bool(state) and start == cfg.steps and refined >= cfg.lbfgs_steps > 0  # keep its final records
    net = nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    model.train()

    metrics_path = out / "metrics.jsonl"
    records = read_metrics(metrics_path, before=start + complete) if d.main and state else []
    if d.main:
        write_json(out / "config.json", {**asdict(cfg), "setting": setting})
        atomic_write(metrics_path, lambda fh: fh.writelines((json.dumps(r) + "\n").encode() for r in records))

    def draw(batch: int, *stream: int) -> Tensor:  # prompts of the task family, or windows of the data
        return sample(cfg, batch, *stream) if data is None else train_windows(cfg, data, batch, *stream)

    x_eval = None
    if d.main:  # the fixed held-out prompts (the held-out windows of a data run)
        x_eval = (sample(cfg, cfg.eval_batch, EVAL) if data is None else eval_windows(cfg, data)).to(d.device, dtype)
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
                rng=rng_state(), lbfgs=refined))
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

    with open(metrics_path, "a") if d.main else open(os.devnull, "w") as log_file, \
            threads_for(step_flops(cfg, model)):  # ckd.threads: a small model's step is many small operations
        for step in range(start, end):
            # the loss logged at `step` is measured on fresh prompts after `step` updates
            x = draw(cfg.batch // d.world, TRAIN, step, d.rank)[:, :length_at(cfg, step)]
            x = x.to(d.device, dtype)
            loss = training_loss(cfg, net, x, step)
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
        if end == cfg.steps and not complete:  # the final model, measured on fresh prompts too
            x = draw(cfg.batch // d.world, TRAIN, end, d.rank).to(d.device, dtype)
            with torch.no_grad():
                log(end, training_loss(cfg, model, x, end))
        checkpoint(end)
        if end == cfg.steps and refined < cfg.lbfgs_steps:
            bar.close()
            refined = lbfgs_stage(cfg, model, d, draw, x_eval, log_file, records, progress)
            checkpoint(end)
    bar.close()
    if d.main and progress:
        done = "finished" if end == cfg.steps else f"stopped after step {end} of {cfg.steps} (resume with --resume)"
        last = f"; last loss {records[-1]['loss']:.3g}" if records else ""
        print(f"{done} in {time.perf_counter() - t0:.1f} s{last}; wrote {out}/")
    if d.world > 1:
        dist.barrier()
    return records
