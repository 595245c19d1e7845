"""The run's config (``TrainConfig``) and what depends on it alone: seeds and prompts, the loss,
the CKD settings of the construction (``tune_ckd``), the model and the memory check (the curriculum and
the lr schedule: ``schedule``)."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor, nn

from ..descent import StabilityWarning, default_step, finite_depth, infinite_depth, targets
from ..kernels import causal_matrices
from ..looped import LOOP_QK, LOOP_SHAPES, check_loop_fields  # noqa: F401 - LOOP_*: public here too
from ..sequences import COMPLEX_TASKS, TASKS, make_task
from ..validation import check_fits, check_int, check_number

ATTENTIONS = ("softmax", "linear", "exp", "gaussian")
ATTENTION_NORMS = ("none", "keys")  # ckd.attention.ATTENTION_NORMS (not imported: torch-free CLI parsing)
NORMS = ("none", "pre", "post", "output")  # ckd.transformer.NORMS
INITS = ("random", "construction")
TOKENS = ("augmented", "raw")
LOOP_LOSSES = ("last", "every")  # a looped model's loss: after the last pass, or the mean over every pass
ROW_LOSSES, LOG_FLOOR = ("mse", "log"), 1e-12  # a row's loss: |e|^2 or log(|e|^2 + LOG_FLOOR) (``rows_loss``)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_INT = 2**63 - 1  # every integer field: a torch int64 / numpy seed

# Seed streams (the second entry of ``seed_for``): training batches, CKD tuning, eval during training,
# fresh sequences of ``ckd evaluate``. Distinct streams never share sequences.
TRAIN, TUNE, EVAL, TEST = 0, 1, 2, 3
LOOPS = 5  # the loop count of each training step (``loops_at``); 4 is ckd.evaluate's probe prompts

# Kernel-parameter grids and step factors searched by ``tune_ckd`` (step = factor / max_t R[t, t]).
PARAM_GRID = {"softmax": ("beta", (1.0, 4.0, 16.0, 64.0)), "exp": ("beta", (0.5, 1.0, 2.0, 4.0)),
              "gaussian": ("sigma", (0.25, 0.5, 1.0, 2.0)), "linear": (None, (None,))}
STEP_FACTORS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 1.9)
TUNE_SEQUENCES = 64
DATA_FIELDS = ("data", "data_sha256", "data_shape", "data_dtype", "val_data", "val_sha256", "val_shape", "val_dtype",
               "val_fraction")  # a run on the user's sequences (ckd.train.data); None for a task family
HEX64 = re.compile("[0-9a-f]{64}")


@dataclass
class TrainConfig:
    """Everything that defines a run (``--resume`` refuses a different one)."""

    task: str = "periodic"  # a family of ckd.sequences.TASKS, or "data": the sequences of the file `data`
    # --data / --val-data / --val-fraction (ckd.train.data): the files' paths as given (not part of a run's
    # identity: --resume compares the SHA-256), SHA-256, shape and dtype as stored; the held-out fraction
    data: str | None = None
    data_sha256: str | None = None
    data_shape: list[int] | None = None
    data_dtype: str | None = None
    val_data: str | None = None
    val_sha256: str | None = None
    val_shape: list[int] | None = None
    val_dtype: str | None = None
    val_fraction: float | None = None
    attention: str = "softmax"
    layers: int = 2
    heads: int | None = None  # None: 2 (the construction's two heads)
    width: int | None = None  # None: the Transformer's default width for these tokens
    mlp: bool = False
    layernorm: bool = False  # the older spelling of norm="pre" (kept: True exactly when norm is "pre")
    norm: str | None = None  # none | pre | post | output: where the LayerNorms sit (None: from layernorm)
    attention_norm: str = "none"  # none | keys: position-normalised attention (per-row step c / t)
    bias: bool = False  # biases on every linear map (and LayerNorm)
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
    # a looped model (ckd.looped): loop_blocks blocks applied `loop` times with tied weights (0: not looped;
    # `layers` is then the depth it runs, loop x loop_blocks); loop_range [lo, hi]: each training step runs
    # a loop count drawn from lo..hi (``loops_at``); reinject: the input tokens added before every pass
    loop: int = 0
    loop_blocks: int = 1
    loop_range: list[int] | None = None
    reinject: bool = False
    # loop_qk "input": the loop blocks' queries and keys read the input tokens, so the attention pattern is the same
    # in every pass (CKD's fixed kernel; ``ckd.looped``); "stream": they read the residual stream
    loop_qk: str = "stream"
    # loop_shape "ckd": the loop body constrained to CKD's layout (``ckd.looped.ckd_shape``: values read r, head 0
    # writes r, head 1 writes p, the read-out reads p, the embedding the construction's); "free": every weight learned
    loop_shape: str = "free"
    # the training objective (``training_loss``): rows t >= loss_from (1: every row with a pair; length - 2: the last
    # prediction only); loop_loss "every": a looped model's loss is the mean over the predictions after every pass
    # (loop_window k >= 1: after the last k passes only; 0: every pass)
    loss_from: int = 1
    row_loss: str = "mse"  # ROW_LOSSES (``rows_loss``)
    loop_loss: str = "last"
    loop_window: int = 0
    lbfgs_steps: int = 0  # after the AdamW steps: L-BFGS iterations on lbfgs_batch fixed prompts (ckd.train.lbfgs)
    lbfgs_batch: int = 512
    # --init-from (ckd.train.warm): the run folder or checkpoint whose model weights start this run, as given, and
    # that checkpoint's SHA-256 (filled in when the run starts)
    init_from: str | None = None
    init_sha256: str | None = None

    def __post_init__(self):
        for f in fields(self):  # NumPy / torch scalars and integral floats are integers (stored as int: config.json)
            value = getattr(self, f.name)
            if f.type in ("int", "int | None") and value is not None and type(value) is not int:
                try:
                    setattr(self, f.name, check_int(value, f.name, minimum=None, maximum=None))
                except (TypeError, ValueError):
                    pass  # validate() names it
        if self.norm is None:  # a run older than ``norm``, or --layernorm alone
            self.norm = "pre" if self.layernorm else "none"
        if self.norm == "pre":
            self.layernorm = True

    def validate(self) -> TrainConfig:
        """Raise a one-line ``ValueError`` for any bad field; return self."""
        def choice(name, options):
            if getattr(self, name) not in options:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(options)}")

        choice("task", (*TASKS, "data"))
        if self.task in COMPLEX_TASKS:
            raise ValueError(f"task {self.task!r} is complex: training and evaluation run on real sequences; "
                             "use ckd.predict with the linear kernel on it")
        choice("attention", ATTENTIONS)
        choice("init", INITS)
        choice("tokens", TOKENS)
        choice("norm", NORMS)
        choice("attention_norm", ATTENTION_NORMS)
        if self.layernorm and self.norm != "pre":
            raise ValueError(f"--layernorm is --norm pre; it contradicts --norm {self.norm}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be true or false, got {self.bias!r}")
        choice("dtype", tuple(DTYPES))
        for name, low in [("layers", 1), ("steps", 0), ("batch", 1), ("length", 3), ("dim", 1), ("warmup", 0),
                          ("curriculum", 0), ("log_every", 1), ("eval_every", 1), ("eval_batch", 1),
                          ("checkpoint_every", 1), ("lbfgs_steps", 0), ("lbfgs_batch", 1)]:
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
        self._validate_data()
        self._validate_loop()
        for name in ("init_from", "init_sha256"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip() or
                                      (name == "init_sha256" and not HEX64.fullmatch(value))):
                raise ValueError(f"{name} must be {'64 hex digits' if 'sha' in name else 'a path'}, got {value!r}")
        if self.init_from is not None and self.init != "random":
            raise ValueError("--init-from starts from another run's weights: drop --init construction")
        if self.init == "construction":
            one_head = self.heads == 1 and self.layers == 1  # depth 1 needs the prediction head only
            if ((self.heads is not None and not one_head) or self.width is not None or self.mlp
                    or self.norm != "none" or self.attention_norm != "none"):
                raise ValueError("--init construction fixes the architecture (2 heads, or 1 at --layers 1; its own "
                                 "width; no MLP; no LayerNorm; a constant step, so --attention-norm none); drop "
                                 "--heads/--width/--mlp/--layernorm/--norm/--attention-norm")
        return self

    def _validate_loop(self) -> None:
        """The looped-model fields (``ckd.looped``), all at their defaults unless ``loop`` >= 1, and the loss fields."""
        for name, low in (("loop", 0), ("loop_blocks", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INT:
                raise ValueError(f"{name} must be an integer >= {low} (and < 2**63), got {value!r}")
        if self.row_loss not in ROW_LOSSES:
            raise ValueError(f"unknown row_loss {self.row_loss!r}; choose one of {', '.join(ROW_LOSSES)}")
        if self.loop_loss not in LOOP_LOSSES:
            raise ValueError(f"unknown loop_loss {self.loop_loss!r}; choose one of {', '.join(LOOP_LOSSES)}")
        w = self.loop_window
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= MAX_INT:
            raise ValueError(f"loop_window must be an integer >= 0 (and < 2**63), got {w!r}")
        if w and self.loop_loss != "every":
            raise ValueError("loop_window applies to the loss over the passes: add --loop-loss every")
        if (isinstance(self.loss_from, bool) or not isinstance(self.loss_from, int)
                or not 1 <= self.loss_from <= self.length - 2):
            raise ValueError(f"loss_from must be an integer in 1 .. length - 2 = {self.length - 2} (the rows t of the "
                             f"loss), got {self.loss_from!r}")
        if not isinstance(self.reinject, bool):
            raise ValueError(f"reinject must be true or false, got {self.reinject!r}")
        check_loop_fields(self.loop_qk, self.loop_shape, tokens=self.tokens, norm=self.norm, mlp=self.mlp,
                          bias=self.bias, blocks=self.loop_blocks, reinject=self.reinject, heads=self.heads or 2,
                          width=self.width, dim=self.dim, init=self.init)
        r = self.loop_range
        if r is not None and not (isinstance(r, (list, tuple)) and len(r) == 2 and all(
                not isinstance(n, bool) and isinstance(n, int) and 1 <= n <= MAX_INT for n in r) and r[0] <= r[1]):
            raise ValueError(f"loop_range must be two integers 1 <= lo <= hi (--loop-range LO,HI), got {r!r}")
        if not self.loop:
            given = [n for n, v in (("loop_blocks", self.loop_blocks != 1), ("loop_range", r is not None),
                                    ("reinject", self.reinject), ("loop_loss", self.loop_loss != "last"),
                                    ("loop_qk", self.loop_qk != "stream"),
                                    ("loop_shape", self.loop_shape != "free")) if v]
            if given:
                raise ValueError(f"{given[0]} applies to a looped model: add --loop L")
        elif self.layers != self.loop * self.loop_blocks:
            raise ValueError(f"a looped model runs layers = loop x loop_blocks = {self.loop * self.loop_blocks} "
                             f"layers, got layers {self.layers}; drop --layers or give that number")

    def _validate_data(self) -> None:
        """The data fields: all None for a task family; for task "data", the path and well-formed records."""
        if self.task != "data":
            given = [k for k in DATA_FIELDS if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{given[0]} is set: it needs task 'data' (a run trains on a task family or on "
                                 "a data file, not both)")
            return
        for name in ("data", "val_data", "data_dtype", "val_dtype", "data_sha256", "val_sha256"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or
                                      (name.endswith("sha256") and not HEX64.fullmatch(value))):
                raise ValueError(f"{name} must be {'64 hex digits' if 'sha' in name else 'a string'}, got {value!r}")
        if self.data is None:
            raise ValueError("task 'data' needs data: the path of the training sequences (ckd train --data FILE)")
        for name in ("data_shape", "val_shape"):
            shape = getattr(self, name)
            if shape is not None and not (isinstance(shape, (list, tuple)) and len(shape) in (2, 3) and all(
                    not isinstance(n, bool) and isinstance(n, int) and 1 <= n <= MAX_INT for n in shape)):
                raise ValueError(f"{name} must be a list of 2 or 3 sizes (T, d) or (B, T, d), got {shape!r}")
        if self.val_fraction is not None:
            if self.val_data is not None:
                raise ValueError("give val_data or val_fraction, not both")
            if check_number(self.val_fraction, "val_fraction", minimum=0.0, strict=True) >= 1:
                raise ValueError(f"val_fraction must be < 1, got {self.val_fraction!r}")

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


def construction_setting(cfg: TrainConfig, x: Tensor | None = None) -> dict:
    """CKD setting the construction runs: ``tune_ckd`` at depth ``cfg.layers`` on ``x`` (default
    ``tuning_prompts``; a data run passes its tuning windows, ``ckd.train.data.tune_windows``)."""
    return tune_ckd(tuning_prompts(cfg) if x is None else x, cfg.attention, [cfg.layers])[cfg.layers]


def loops_at(cfg: TrainConfig, step: int) -> int:
    """Loops run at training ``step``: ``cfg.loop``, or with ``loop_range`` [lo, hi] a count drawn
    uniformly from lo..hi with a seed of (seed, ``LOOPS``, step) (the same on every rank and on resume)."""
    if cfg.loop_range is None:
        return cfg.loop
    lo, hi = cfg.loop_range
    return lo + int(np.random.default_rng(seed_for(cfg.seed, LOOPS, step)).integers(hi - lo + 1))


def rows_loss(pred: Tensor, x: Tensor, t0: int = 1, kind: str = "mse") -> Tensor:
    """mean over b and t = t0..T-2 of e = |pred[b, t] - x[b, t+1]|^2 (``next_token_loss`` for t0 = 1), or with
    kind "log" of log(e + LOG_FLOOR): a prompt's error falling 10x lowers the loss as much at 1e-4 as at 0.1."""
    e = (pred[:, t0:-1] - x[:, t0 + 1:]).square().sum(-1)
    return (e + LOG_FLOOR).log().mean() if kind == "log" else e.mean()


def training_loss(cfg: TrainConfig, net: nn.Module, x: Tensor, step: int) -> Tensor:
    """The objective of training ``step`` on prompts x (B, T, d): ``rows_loss`` from row t0 = min(loss_from, T - 2);
    a looped model runs ``loops_at(cfg, step)`` loops, and with loop_loss "every" the loss is the mean of the
    losses of the predictions read out after every pass (with ``loop_window`` k >= 1: after the last k passes)."""
    t0 = min(cfg.loss_from, x.shape[1] - 2)
    if not cfg.loop:
        return rows_loss(net(x), x, t0, cfg.row_loss)
    if cfg.loop_loss == "every":
        passes = net(x, loops=loops_at(cfg, step), every_pass=True)[-cfg.loop_window:]  # [-0:] is every pass
        return torch.stack([rows_loss(p, x, t0, cfg.row_loss) for p in passes]).mean()
    return rows_loss(net(x, loops=loops_at(cfg, step)), x, t0, cfg.row_loss)


def unlooped(cfg: TrainConfig) -> TrainConfig:
    """The config of a looped run's body: its ``loop_blocks`` blocks as an ordinary model."""
    return replace(cfg, layers=cfg.loop_blocks, loop=0, loop_blocks=1, loop_range=None, reinject=False,
                   loop_loss="last", loop_window=0, loop_qk="stream", loop_shape="free")


# --------------------------------------------------------------------------- model


def transformer_config(cfg: TrainConfig, setting: dict | None = None):
    """The ``TransformerConfig`` of the run's model (the construction's for ``init='construction'``:
    two heads (or one at depth 1), head_dim d, no MLP), without building it. A looped run: its body's
    (``loop_blocks`` layers)."""
    from ..transformer import TransformerConfig

    if cfg.loop:
        return transformer_config(unlooped(cfg))
    if cfg.init == "construction":
        return TransformerConfig(dim=cfg.dim, n_layers=cfg.layers, n_heads=cfg.heads or 2, head_dim=cfg.dim,
                                 value_dim=cfg.dim, attention=cfg.attention, tokens=cfg.tokens, max_len=cfg.length,
                                 mlp_width=2 * cfg.dim, prev_attention="linear", bias=cfg.bias)
    return TransformerConfig(dim=cfg.dim, n_layers=cfg.layers, n_heads=cfg.heads or 2, width=cfg.width,
                             attention=cfg.attention, tokens=cfg.tokens, max_len=cfg.length, mlp=cfg.mlp,
                             norm=cfg.norm, attention_norm=cfg.attention_norm, bias=cfg.bias)


def build_model(cfg: TrainConfig, setting: dict | None = None) -> nn.Module:
    """The run's ``CausalTransformer`` (float64 construction cast to ``cfg.dtype``, or random init
    from the global torch RNG). ``setting`` (from ``construction_setting``) is needed for the
    construction. A looped run (``cfg.loop``): its body built so, then looped
    (``ckd.looped.loop_model``; a random init's residual writes scaled to the looped depth)."""
    if cfg.loop:
        from ..looped import ckd_shape, loop_model

        body = build_model(unlooped(cfg), setting)
        looped = loop_model(body, cfg.loop, cfg.reinject, rescale=cfg.init == "random", qk=cfg.loop_qk)
        return ckd_shape(looped, init=cfg.init == "random") if cfg.loop_shape == "ckd" else looped
    if cfg.init == "construction":
        from ..construction import construct

        model = construct(cfg.attention, dim=cfg.dim, depth=cfg.layers, step=setting["step"],
                          beta=setting["beta"], sigma=setting["sigma"], tokens=cfg.tokens,
                          max_len=cfg.length, dtype=torch.float64, heads=cfg.heads or 2, bias=cfg.bias)
    else:
        from ..transformer import CausalTransformer

        model = CausalTransformer(transformer_config(cfg))
    return model.to(DTYPES[cfg.dtype])


def check_memory(cfg: TrainConfig, device: torch.device | str = "cpu", world: int = 1, *,
                 training: bool = True, batch: int | None = None) -> None:
    """Refuse (one-line ``ValueError``) a run or model that cannot fit in memory, before allocating.

    Floor of the bytes (``ckd.transformer.memory_bytes``): the model with gradients and AdamW
    moments and a batch's activations (``training``; else the model and one forward of ``batch``
    prompts), the prompts and their maps f ((B, d, d) for the linear and nonlinear families),
    the held-out prompts, the construction's tuning matrices (64 T^2), and on CPU the sequences
    of a data run (``data_shape``, ``val_shape``)."""
    item = 8 if cfg.dtype == "float64" else 4
    T, d = cfg.length, cfg.dim
    B = (cfg.batch // world) if batch is None else batch
    model = model_bytes(cfg, B, T, item, training=training)
    maps = 3 * d * d * 8 if cfg.task not in ("periodic", "periodic-gaussian", "data") else 0
    data = max(B, cfg.eval_batch if training else 0) * (T * d * 8 * 2 + maps)
    tune = TUNE_SEQUENCES * T * T * 8 * 3 if (training and cfg.init == "construction") else 0
    if training and torch.device(device).type == "cpu":  # a data run holds its sequences (float64) in memory
        data += 8 * sum(math.prod(s) for s in (cfg.data_shape, cfg.val_shape) if s)
    what = (f"training (layers {cfg.layers}, width {transformer_config(cfg).d_model}, batch {B}, length {T}, dim {d})"
            if training else f"the model of layers {cfg.layers}, dim {d}, length {T}")
    check_fits(model + data + tune, what, "use smaller --layers, --width, --heads, --batch, --length or --dim"
            if training else "use fewer sequences, or check that the checkpoint is the one you meant", device)


def model_bytes(cfg: TrainConfig, batch: int, T: int, itemsize: int, *, training: bool = False,
                hidden: bool = False) -> int:
    """``ckd.transformer.memory_bytes`` of the run's model (``ckd.looped.looped_memory_bytes`` for a looped
    one, at the most loops it runs)."""
    if not cfg.loop:
        from ..transformer import memory_bytes

        return memory_bytes(transformer_config(cfg), batch, T, itemsize, training=training, hidden=hidden)
    from ..looped import looped_memory_bytes

    loops = max(cfg.loop, cfg.loop_range[1] if cfg.loop_range else 0)
    return looped_memory_bytes(transformer_config(cfg), loops, batch, T, itemsize, training=training, hidden=hidden)
