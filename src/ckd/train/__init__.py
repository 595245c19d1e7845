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
``docs/training.md``); ``ckd train --data SEQS.npy ...`` trains on windows of the user's sequences
instead (``ckd.train.data``: task "data", the file's SHA-256, shape and dtype in the config).

The package, nanoGPT-style: ``config`` (``TrainConfig`` and what depends on it alone: seeds, prompts,
loss, ``tune_ckd``, model, memory check), ``schedule`` (the curriculum and the lr schedule),
``checkpoint`` (checkpoints, RNG states, the run folder: inspection, lock, ``config.json``,
``metrics.jsonl``), ``data`` (the user's sequences: read, split, windows), ``warm`` (``--init-from``:
a run started from another run's weights), ``lbfgs`` (the L-BFGS stage after the AdamW steps,
``TrainConfig.lbfgs_steps``) and ``loop`` (DDP setup and the training loop, ``train``). Every name is
re-exported here: ``from ckd.train import ...`` as before.
"""

from ..io import atomic_write
from .checkpoint import (
    CHECKPOINT_FORMAT,
    RUN_FILES,
    FolderLock,
    check_model_state,
    check_resume_state,
    inspect_out,
    load_checkpoint,
    load_model,
    load_states,
    read_metrics,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from .config import (
    ATTENTION_NORMS,
    ATTENTIONS,
    DATA_FIELDS,
    DTYPES,
    EVAL,
    INITS,
    LOOP_LOSSES,
    LOOP_QK,
    LOOP_SHAPES,
    LOOPS,
    MAX_INT,
    NORMS,
    PARAM_GRID,
    ROW_LOSSES,
    STEP_FACTORS,
    TEST,
    TOKENS,
    TRAIN,
    TUNE,
    TUNE_SEQUENCES,
    TrainConfig,
    build_model,
    check_memory,
    construction_setting,
    loops_at,
    model_bytes,
    next_token_loss,
    rows_loss,
    sample,
    seed_for,
    training_loss,
    transformer_config,
    tune_ckd,
    tuning_prompts,
    unlooped,
)
from .data import (
    VAL_FRACTION,
    Sequences,
    attach,
    eval_windows,
    load_data,
    read_sequences,
    train_windows,
    tune_windows,
    windows,
)
from .lbfgs import LBFGS, expected_loss, refine
from .loop import Dist, eval_metrics, setup, train
from .schedule import length_at, lr_factor
from .warm import MODEL_FIELDS, read_init

__all__ = [
    "ATTENTION_NORMS",
    "ATTENTIONS",
    "CHECKPOINT_FORMAT",
    "DATA_FIELDS",
    "DTYPES",
    "EVAL",
    "INITS",
    "LBFGS",
    "LOOP_LOSSES",
    "ROW_LOSSES",
    "LOOP_QK",
    "LOOP_SHAPES",
    "LOOPS",
    "MAX_INT",
    "MODEL_FIELDS",
    "NORMS",
    "PARAM_GRID",
    "RUN_FILES",
    "STEP_FACTORS",
    "TEST",
    "TOKENS",
    "TRAIN",
    "TUNE",
    "TUNE_SEQUENCES",
    "VAL_FRACTION",
    "Dist",
    "FolderLock",
    "Sequences",
    "TrainConfig",
    "atomic_write",
    "attach",
    "build_model",
    "check_memory",
    "check_model_state",
    "check_resume_state",
    "construction_setting",
    "eval_metrics",
    "eval_windows",
    "expected_loss",
    "inspect_out",
    "length_at",
    "load_checkpoint",
    "load_data",
    "load_model",
    "load_states",
    "loops_at",
    "lr_factor",
    "model_bytes",
    "next_token_loss",
    "read_init",
    "read_metrics",
    "read_sequences",
    "refine",
    "rows_loss",
    "rng_state",
    "sample",
    "save_checkpoint",
    "seed_for",
    "set_rng_state",
    "setup",
    "train",
    "train_windows",
    "training_loss",
    "transformer_config",
    "tune_ckd",
    "tune_windows",
    "tuning_prompts",
    "unlooped",
    "windows",
    "write_json",
]
