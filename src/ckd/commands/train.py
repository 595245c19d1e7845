"""``ckd train``: train a causal Transformer in context on a task family (see ``ckd.train``)."""

from __future__ import annotations

import argparse

from ..cli import MAX_INT, integer, path
from ..cost import check_time, train_seconds

HELP = "train a Transformer in context (random init or the CKD construction)"


class NormChoice(argparse.Action):
    """--norm X, --layernorm (= --norm pre) and --no-layernorm (= --norm none) set one choice (and
    ``layernorm``, True exactly for pre). Repeating one spelling keeps the last, as argparse does;
    --norm and --[no-]layernorm that disagree are refused with one line."""

    def __call__(self, parser, namespace, values, option_string=None):
        value = values if self.const is None else self.const
        this = option_string if self.const is not None else f"{option_string} {value}"
        given = dict(getattr(namespace, "norm_given", None) or {})  # spelling -> (flag, value), the last of each
        spelling = "norm" if self.const is None else "layernorm"
        for flag, other in [v for k, v in given.items() if k != spelling]:
            if other != value:
                parser.error(f"{this} contradicts {flag} (--layernorm is --norm pre)")
        given[spelling] = (this, value)
        namespace.norm, namespace.layernorm, namespace.norm_given = value, value == "pre", given


class _Default(int):
    """An int flag's default that ``run`` tells from the same number given on the command line
    (with --data, --dim and --length left out come from the data)."""


def add_parser(sub) -> None:
    # the defaults are TrainConfig's: this parser imports the training code (and torch)
    from ..sequences import TASKS
    from ..train import (
        ATTENTION_NORMS,
        ATTENTIONS,
        DTYPES,
        INITS,
        LOOP_LOSSES,
        LOOP_QK,
        LOOP_SHAPES,
        NORMS,
        ROW_LOSSES,
        TOKENS,
        TrainConfig,
    )

    DEFAULTS = TrainConfig()
    p = sub.add_parser("train", help=HELP,
                       description="Train a causal Transformer on fresh prompts of a task family (a new map f "
                                   "per prompt), or on windows of your sequences (--data). Writes DIR/config.json, "
                                   "DIR/metrics.jsonl, DIR/checkpoint.pt. "
                                   "Runs under torchrun --nproc_per_node=K with DistributedDataParallel.")
    p.add_argument("--task", default=None, choices=list(TASKS), help=f"task family (default {DEFAULTS.task})")
    p.add_argument("--data", metavar="SEQS", type=path, default=None,
                   help="train on your sequences instead of a task family: (B, T, d) in a .npy or a .npz of one "
                        "array, or one (T, d) sequence (.csv); each step draws windows of --length tokens")
    p.add_argument("--val-data", metavar="V", type=path, default=None,
                   help="with --data: the evaluation sequences (default: hold out --val-fraction of SEQS)")
    p.add_argument("--val-fraction", metavar="F", type=float, default=None,
                   help="with --data: evaluate on the last ceil(F B) sequences of SEQS, train on the others "
                        "(0 < F < 1; default 0.1; a single sequence is evaluated on itself)")
    p.add_argument("--attention", default=DEFAULTS.attention, choices=ATTENTIONS,
                   help=f"attention score function (default {DEFAULTS.attention})")
    p.add_argument("--layers", type=integer(1), default=_Default(DEFAULTS.layers),
                   help=f"layers (default {DEFAULTS.layers}; with --loop: loop x loop-blocks, the depth it runs)")
    p.add_argument("--heads", type=integer(1), default=None, help="heads per layer (default 2)")
    p.add_argument("--width", type=integer(1), default=None, help="residual width (default: the Transformer's)")
    p.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=False, help="add MLPs (default no)")
    p.add_argument("--norm", action=NormChoice, choices=NORMS, default=DEFAULTS.norm,
                   help="LayerNorm placement: none; pre (before attention, MLP and read-out); post (after each "
                        "residual sum); output (on each attention / MLP output, before the sum) (default none)")
    p.add_argument("--layernorm", dest="norm", action=NormChoice, nargs=0, const="pre",
                   help="same as --norm pre (the older spelling)")
    p.add_argument("--no-layernorm", dest="norm", action=NormChoice, nargs=0, const="none",
                   help="same as --norm none")
    p.add_argument("--attention-norm", default=DEFAULTS.attention_norm, choices=ATTENTION_NORMS,
                   help="keys: each head divides its sum by the t keys row t sees (position-normalised attention: "
                        "the per-row step c/t of CKD) (default none)")
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=DEFAULTS.bias,
                   help="biases on every linear map (embedding, attention, MLP, read-out) and LayerNorm (default no)")
    p.set_defaults(layernorm=DEFAULTS.layernorm, norm_given=None)
    p.add_argument("--init", default=DEFAULTS.init, choices=INITS,
                   help="random, or the construction running CKD (step and kernel chosen on separate prompts)")
    p.add_argument("--tokens", default=DEFAULTS.tokens, choices=TOKENS, help="input tokens (default augmented)")
    p.add_argument("--steps", type=integer(0), default=DEFAULTS.steps,
                   help=f"optimizer steps (default {DEFAULTS.steps})")
    p.add_argument("--batch", type=integer(1), default=DEFAULTS.batch,
                   help=f"prompts per step (default {DEFAULTS.batch})")
    p.add_argument("--length", type=integer(3), default=_Default(DEFAULTS.length),
                   help=f"tokens per prompt (default {DEFAULTS.length}; with --data: T, whole sequences)")
    p.add_argument("--dim", type=integer(1), default=_Default(DEFAULTS.dim),
                   help=f"token dimension d (default {DEFAULTS.dim}; with --data: the data's d)")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help=f"peak AdamW learning rate (default {DEFAULTS.lr})")
    p.add_argument("--warmup", type=integer(0), default=DEFAULTS.warmup,
                   help=f"warm-up steps (default {DEFAULTS.warmup})")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="AdamW weight decay (default 0)")
    p.add_argument("--curriculum", type=integer(0), default=DEFAULTS.curriculum, metavar="C",
                   help="grow the prompt length from 4 to --length over the first C steps (default 0: none)")
    p.add_argument("--seed", type=integer(0), default=DEFAULTS.seed, help="seed of init and prompts (default 0)")
    p.add_argument("--dtype", default=DEFAULTS.dtype, choices=list(DTYPES), help="training dtype (default float32)")
    p.add_argument("--log-every", type=integer(1), default=DEFAULTS.log_every, help="log the loss every N steps")
    p.add_argument("--eval-every", type=integer(1), default=DEFAULTS.eval_every,
                   help="evaluate on fixed held-out prompts every N steps")
    p.add_argument("--checkpoint-every", type=integer(1), default=DEFAULTS.checkpoint_every,
                   help="checkpoint every N steps")
    p.add_argument("--loop", type=integer(1), default=DEFAULTS.loop, metavar="L",
                   help="a looped Transformer: --loop-blocks blocks applied L times with tied weights (ckd.looped)")
    p.add_argument("--loop-blocks", type=integer(1), default=DEFAULTS.loop_blocks, metavar="K",
                   help="with --loop: distinct blocks in the loop body (default 1)")
    p.add_argument("--loop-range", type=loop_range, default=None, metavar="LO,HI",
                   help="with --loop: each training step runs a loop count drawn from LO..HI (seeded per step); "
                        "evaluation runs L")
    p.add_argument("--reinject", action=argparse.BooleanOptionalAction, default=DEFAULTS.reinject,
                   help="with --loop: add a learned map of the input tokens before every pass (default no)")
    p.add_argument("--loop-qk", default=DEFAULTS.loop_qk, choices=LOOP_QK,
                   help="with --loop: what the blocks' queries and keys read: the residual stream, or the input tokens "
                        "(the same attention pattern in every pass, as CKD's kernel; default stream)")
    p.add_argument("--loop-shape", default=DEFAULTS.loop_shape, choices=LOOP_SHAPES,
                   help="with --loop --loop-qk input: free weights, or CKD's layout (values read r, head 0 writes r, "
                        "head 1 writes p, the read-out reads p; default free)")
    p.add_argument("--loop-loss", default=DEFAULTS.loop_loss, choices=LOOP_LOSSES,
                   help="with --loop: the loss after the last pass, or the mean over the predictions after every pass "
                        "(default last)")
    p.add_argument("--loop-window", type=integer(0), default=DEFAULTS.loop_window, metavar="K",
                   help="with --loop-loss every: the mean over the predictions after the last K passes only "
                        "(default 0: every pass)")
    p.add_argument("--loss-from", type=integer(1), default=DEFAULTS.loss_from, metavar="T0",
                   help="train on the predictions of rows t >= T0 only (default 1: every row with a pair; "
                        "--length - 2: the last prediction)")
    p.add_argument("--row-loss", default=DEFAULTS.row_loss, choices=ROW_LOSSES,
                   help="each prediction's loss: mse, the squared error e; or log, log(e + 1e-12), so that every "
                        "prompt's relative error counts alike (default mse)")
    p.add_argument("--lbfgs-steps", type=integer(0), default=DEFAULTS.lbfgs_steps, metavar="N",
                   help="after the AdamW steps, N iterations of full-batch L-BFGS (float64, strong Wolfe) on fixed "
                        "prompts, on the training loss averaged over --loop-range (default 0: none; ckd.train.lbfgs)")
    p.add_argument("--lbfgs-batch", type=integer(1), default=DEFAULTS.lbfgs_batch, metavar="B",
                   help=f"with --lbfgs-steps: the fixed prompts of the L-BFGS stage (default {DEFAULTS.lbfgs_batch})")
    p.add_argument("--init-from", metavar="RUN", type=path, default=None,
                   help="start from the model weights of another run (its folder or checkpoint.pt; the same "
                        "architecture, any loop count); everything else is this run's own config (ckd.train.warm)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", type=path, required=True, metavar="DIR", help="run folder (created)")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR from its checkpoint (same flags)")
    p.add_argument("--stop-after", type=integer(0), default=None, metavar="K",
                   help="stop after K steps, leaving a checkpoint that --resume continues exactly")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="run even when the estimated time exceeds an hour (refused by default, with the estimate)")
    p.set_defaults(run=run)


def loop_range(text: str) -> list[int]:
    """argparse ``type`` of --loop-range: "LO,HI" with 1 <= LO <= HI."""
    parts = text.split(",")
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LO,HI (two integers), got {text!r}") from None
    if not 1 <= lo <= hi <= MAX_INT:
        raise argparse.ArgumentTypeError(f"must be LO,HI with 1 <= LO <= HI, got {text!r}")
    return [lo, hi]


def run(args) -> int:
    from ..train import TrainConfig, train

    DEFAULTS = TrainConfig()
    data, task, dim, length = None, args.task or DEFAULTS.task, args.dim, args.length
    if args.data is not None:
        from ..train.data import load_data

        if args.task is not None:
            raise ValueError("give --task or --data, not both (a run trains on a task family or on your sequences)")
        data, task = load_data(args.data, args.val_data, args.val_fraction), "data"
        dim = data.dim if isinstance(dim, _Default) else dim
        length = data.length if isinstance(length, _Default) else length
    elif args.val_data is not None or args.val_fraction is not None:
        raise ValueError("--val-data and --val-fraction need --data")
    layers = args.layers
    if args.loop and isinstance(layers, _Default):  # the depth a looped model runs
        layers = args.loop * args.loop_blocks
    cfg = TrainConfig(task=task, attention=args.attention, layers=int(layers), heads=args.heads,
                      width=args.width, mlp=args.mlp, layernorm=args.layernorm, norm=args.norm,
                      attention_norm=args.attention_norm, bias=args.bias, init=args.init, tokens=args.tokens,
                      steps=args.steps,
                      batch=args.batch, length=int(length), dim=int(dim), lr=args.lr, warmup=args.warmup,
                      weight_decay=args.weight_decay, curriculum=args.curriculum, seed=args.seed, dtype=args.dtype,
                      log_every=args.log_every,
                      eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, loop=args.loop,
                      loop_blocks=args.loop_blocks, loop_range=args.loop_range, reinject=args.reinject,
                      loop_qk=args.loop_qk, loop_shape=args.loop_shape,
                      loop_loss=args.loop_loss, loop_window=args.loop_window, loss_from=args.loss_from,
                      row_loss=args.row_loss,
                      lbfgs_steps=args.lbfgs_steps, lbfgs_batch=args.lbfgs_batch, init_from=args.init_from,
                      **(data.fields if data is not None else {}))
    from ..train.config import check_memory

    check_memory(cfg.validate(), args.device)  # what cannot fit is refused as such, even with --force
    width = cfg.width or 4 * cfg.dim + 2  # the construction's width when none is given (about 4 d)
    check_time(train_seconds(cfg.steps, cfg.batch, cfg.length, width, cfg.layers, cfg.steps // cfg.eval_every + 1),
               f"ckd train --steps {cfg.steps} --batch {cfg.batch} --length {cfg.length}",
               "use fewer --steps, a smaller --batch or --length (a step costs batch x length^2 x width x layers)",
               args.force)
    train(cfg, args.out, resume=args.resume, device=args.device, stop_after=args.stop_after, progress=not args.quiet,
          data=data)
    return 0
