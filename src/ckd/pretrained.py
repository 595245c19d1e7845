"""Pretrained Transformers shipped with ckd (the zoo), and the command that rebuilds them.

Each model NAME is two files of package data in ``ckd/zoo/``:

    NAME.safetensors   the weights (float32 ``state_dict`` of a ``CausalTransformer``), read
                       without pickle (``safetensors.torch.load``)
    NAME.json          its model card: task family and parameters, architecture, the exact
                       ``ckd train`` command, steps, wall time and machine, final training loss,
                       the evaluation, and the SHA-256 of the weights file

The model of a card is ``ckd.train.build_model(TrainConfig(**card["training"]["config"]))``
with the weights loaded into it; ``load`` checks the file's SHA-256 against the card first.

Evaluation on a card (``evaluation``): on ``EVAL_SEQUENCES`` fresh prompts of the task drawn
from seed ``seed_for(seed, TEST)`` (the prompts ``ckd evaluate`` uses), for every method m the
error e_m[b, t] = |m(x)[b, t] - x[b, t+1]|, t = 0..T-2, summarised as its median over prompts at
each t, and the mean squared error over t = 1..T-2 (``ckd.evaluate.summarize``). Methods: the
model (weights cast to float64), CKD at the model's depth, at the best depth and at depth inf
(kernel parameter and step tuned on separate prompts, ``ckd.evaluate.ckd_settings``; the card
stores the settings), the baselines of SPEC §6 and the oracle f.

``build`` (``ckd zoo build``) retrains every model of ``ZOO`` from scratch with ``ckd.train.train``
on one thread and writes the two files: same machine, same torch -> the same weights, bit for bit.
"""

from __future__ import annotations

import builtins
import hashlib
import inspect
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .train import TrainConfig, atomic_write, build_model, load_model, read_metrics, train, write_json

FORMAT = "ckd-zoo-1"
SIZE_LIMIT = 1_000_000  # bytes: the whole zoo (weights and cards) stays under this
EVAL_SEQUENCES = 64

_TRAIN = dict(length=32, dim=3, batch=32, steps=1000, warmup=50, lr=2e-2, seed=0)
_WIDE = dict(length=32, dim=3, batch=32, steps=3000, warmup=100, lr=1e-2, seed=0, layers=8, heads=4, width=32,
             layernorm=True, log_every=50, eval_every=500)

# name: (one-line description, TrainConfig fields). Every field must have a `ckd train` flag.
ZOO: dict[str, tuple[str, dict]] = {
    "periodic-softmax-2": ("periodic sequences (P = 5 on the sphere), softmax attention, 2 layers",
                           dict(task="periodic", attention="softmax", layers=2, **_TRAIN)),
    "periodic-softmax-4": ("periodic sequences (P = 5 on the sphere), softmax attention, 4 layers",
                           dict(task="periodic", attention="softmax", layers=4, **_TRAIN)),
    "periodic-softmax-2-raw": ("periodic sequences, softmax attention, 2 layers, raw tokens (x_t, 1, one-hot "
                               "position) and a learned previous-token layer. It learned a positional shortcut "
                               "for the family's fixed period 5 (its previous-token layer attends to t - 4): "
                               "it fails on other periods",
                               dict(task="periodic", attention="softmax", layers=2, tokens="raw", **_TRAIN)),
    "linear-linear-2": ("x_{t+1} = A x_t, A Haar-orthogonal, linear attention, 2 layers",
                        dict(task="linear", attention="linear", layers=2, **_TRAIN)),
    "linear-linear-4": ("x_{t+1} = A x_t, A Haar-orthogonal, linear attention, 4 layers",
                        dict(task="linear", attention="linear", layers=4, **_TRAIN)),
    "nonlinear-softmax-2": ("x_{t+1} = tanh(2 W x_t), W ~ N(0, 1/d), softmax attention, 2 layers",
                            dict(task="nonlinear", attention="softmax", layers=2, **_TRAIN)),
    "nonlinear-softmax-4": ("x_{t+1} = tanh(2 W x_t), W ~ N(0, 1/d), softmax attention, 4 layers",
                            dict(task="nonlinear", attention="softmax", layers=4, **_TRAIN)),
    # the best recipe of docs/results.md ("Training recipes": wide), 3000 steps
    "periodic-softmax-8": ("periodic sequences (P = 5 on the sphere), softmax attention, 8 layers, 4 heads, width 32, "
                           "LayerNorm: the best recipe of docs/results.md",
                           dict(task="periodic", attention="softmax", **_WIDE)),
    # benchmarks/looped_descent.py, variant ckd-deep: one CKD-shaped block looped, from random init (issue 20)
    "periodic-softmax-loop-ckd": ("periodic sequences (P = 5 on the sphere), softmax attention, one block looped "
                                  "(8 loops; trained with 1..16), queries and keys on the input tokens, held to CKD's "
                                  "layout, from random init, loss on rows t >= 5: the same error at 1 to 64 loops",
                                  dict(task="periodic", attention="softmax", layers=8, loop=8, loop_range=[1, 16],
                                       loop_qk="input", loop_shape="ckd", loss_from=5, log_every=50,
                                       eval_every=1000, checkpoint_every=1000, **_TRAIN)),
    # benchmarks/looped_descent.py, variant ckd-deep-lbfgs-1024: the model above, then full-batch L-BFGS
    "periodic-softmax-loop-ckd-lbfgs": ("periodic-softmax-loop-ckd's training, then 300 iterations of full-batch "
                                        "L-BFGS (float64, 1024 fixed prompts, --lbfgs-steps 300 --lbfgs-batch 1024): "
                                        "7.0e-4 at t = 30 (median), but 2.4 % of prompts (two cycle points close) "
                                        "fail at some row t >= 5 (errors up to 12, growing with the loops)",
                                        dict(task="periodic", attention="softmax", layers=8, loop=8,
                                             loop_range=[1, 16], loop_qk="input", loop_shape="ckd", loss_from=5,
                                             log_every=50, eval_every=1000, checkpoint_every=1000, lbfgs_steps=300,
                                             lbfgs_batch=1024, **_TRAIN)),
    # benchmarks/looped_descent.py, variant ckd-range-16-32-nominal-32 (seed 1 of that recipe does not converge)
    "linear-linear-loop-ckd": ("x_{t+1} = A x_t, A Haar-orthogonal, linear attention, one block looped (32 loops; "
                               "trained with 16..32), queries and keys on the input tokens, held to CKD's layout, "
                               "from random init: 0.016 at 64 loops (--loops 64)",
                               dict(task="linear", attention="linear", layers=32, loop=32, loop_range=[16, 32],
                                    loop_qk="input", loop_shape="ckd", log_every=50, eval_every=1000,
                                    checkpoint_every=1000, **(_TRAIN | dict(lr=1e-2)))),
    "linear-linear-8": ("x_{t+1} = A x_t, A Haar-orthogonal, linear attention, 8 layers, 4 heads, width 32, "
                        "LayerNorm: the best recipe of docs/results.md",
                        dict(task="linear", attention="linear", **_WIDE)),
}
# stages trained only as the start of a zoo model ("@NAME" in its init_from: ``train_stages``), not shipped
STAGES: dict[str, dict] = {
    "linear-linear-loop-ckd-32-64": ZOO["linear-linear-loop-ckd"][1] | dict(
        init_from="@linear-linear-loop-ckd", layers=64, loop=64, loop_range=[32, 64], lr=2e-3),
}
# benchmarks/looped_descent.py, variant ckd-deep-then-log (docs/results.md: the log loss)
ZOO["periodic-softmax-loop-ckd-log"] = (
    "periodic sequences (P = 5 on the sphere), softmax attention, one block looped (8 loops), held to CKD's layout, "
    "from random init in two stages: periodic-softmax-loop-ckd's run, then 1000 steps with the log loss (lr 2e-3)",
    ZOO["periodic-softmax-loop-ckd"][1] | dict(init_from="@periodic-softmax-loop-ckd", row_loss="log", lr=2e-3))
# benchmarks/looped_descent.py, variant ckd-curr-32-64-lr-log (docs/results.md: a curriculum and the log loss)
ZOO["linear-linear-loop-ckd-log"] = (
    "x_{t+1} = A x_t, A Haar-orthogonal, linear attention, one block looped (64 loops), held to CKD's layout, from "
    "random init in three stages: loops 16..32, then 32..64 (lr 2e-3), then 32..64 with the log loss: 0.0022 at 64 "
    "loops", STAGES["linear-linear-loop-ckd-32-64"] | dict(init_from="@linear-linear-loop-ckd-32-64", row_loss="log"))


def zoo_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder of the zoo: ``root``, or the package's ``ckd/zoo``."""
    return Path(root) if root is not None else Path(str(resources.files("ckd") / "zoo"))


def list(root: str | os.PathLike | None = None) -> list[str]:  # noqa: A001 - ckd.pretrained.list()
    """Names of the models in the zoo (the cards NAME.json), sorted."""
    folder = zoo_dir(root)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def card(name: str, root: str | os.PathLike | None = None) -> dict:
    """The model card of ``name`` (a one-line ``ValueError`` for an unknown name or a broken card)."""
    names = list(root)
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"unknown pretrained model {name!r}; choose one of {', '.join(names) or '(none)'}")
    path = zoo_dir(root) / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"pretrained model {name!r}: its card {path} cannot be read ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"pretrained model {name!r}: {path} is not a ckd model card (format {FORMAT})")
    return upgrade(data)


def upgrade(info: dict) -> dict:
    """A card as this version writes it: fields added to ``TrainConfig`` / ``TransformerConfig`` after
    the card was built take their defaults (the behaviour it was trained with) in ``training.config``
    and ``architecture``. A part that does not parse is left as is (``load`` then says why)."""
    from .transformer import TransformerConfig

    try:
        info["training"]["config"] = asdict(TrainConfig.from_dict(info["training"]["config"]))
    except (KeyError, TypeError, ValueError):
        pass
    try:
        arch = info["architecture"]
        fields = {k: v for k, v in arch.items() if k not in ("class", "width_used", "parameters")}
        info["architecture"] = {**arch, **asdict(TransformerConfig(**fields))}
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    return info


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_with_config(name: str, root: str | os.PathLike | None = None) -> tuple[TrainConfig, nn.Module, dict]:
    """(training config, model in eval mode, card) of the pretrained model ``name``.

    The weights file is read once, its SHA-256 checked against the card, then parsed by
    safetensors (no pickle). Unknown name, missing or modified file: a one-line ``ValueError``.
    The global torch RNG is left as it was.
    """
    info = card(name, root)
    try:
        file, expected = info["weights"]["file"], info["weights"]["sha256"]
        if Path(file).name != file:
            raise ValueError(f"weights file {file!r} outside the zoo folder")
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"pretrained model {name!r}: its card has no valid weights entry ({err})") from None
    path = zoo_dir(root) / file
    if not path.is_file():
        raise ValueError(f"pretrained model {name!r}: weights file {path} is missing (reinstall ckd, or rebuild "
                         "the zoo with `ckd zoo build`)")
    data = path.read_bytes()
    digest = sha256(data)
    if digest != expected:
        raise ValueError(f"pretrained model {name!r}: {path} does not match its card's SHA-256 (expected "
                         f"{str(expected)[:16]}..., got {digest[:16]}...): the file is damaged or modified")
    from safetensors.torch import load as load_safetensors

    try:
        state = load_safetensors(data)
        cfg = TrainConfig.from_dict(info["training"]["config"]).validate()
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the user's RNG alone
            model = build_model(cfg)
        model.load_state_dict(state)
    except Exception as err:  # a card and weights that do not fit each other
        msg = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        raise ValueError(f"pretrained model {name!r}: weights and card do not fit ({msg})") from None
    return cfg, model.eval(), info


def load(name: str, root: str | os.PathLike | None = None) -> nn.Module:
    """The pretrained ``CausalTransformer`` ``name`` in eval mode (float32 weights; ``list()`` names them).

    >>> model = ckd.pretrained.load("periodic-softmax-2")
    >>> pred = model(x)   # x (B, T, 3): row t predicts x_{t+1}
    """
    return load_with_config(name, root)[1]


# --------------------------------------------------------------------------- evaluation on a card


def evaluation(model: nn.Module, cfg: TrainConfig, settings: dict | None = None,
               sequences: int = EVAL_SEQUENCES) -> dict:
    """The card's evaluation of ``model`` (module doc): {"sequences", "seed", "prompts", "t",
    "median_error": {method: [median over prompts at t]}, "mse": {method}, "settings", "probe"}.
    ``settings`` (CKD settings of a card) skips the tuning and reuses them."""
    from .evaluate import evaluate_model, reference

    ref = reference(cfg, sequences=sequences, settings=settings)
    mine = evaluate_model(model, cfg, ref)
    errors = {"transformer": mine["errors"], **ref["errors"]}
    summary = {"transformer": mine["summary"], **ref["summary"]}
    return dict(sequences=sequences, seed=ref["seed"],
                prompts=f"ckd.make_task({cfg.task!r}, {sequences}, {cfg.length}, {cfg.dim}, "
                        f"seed=ckd.train.seed_for({ref['seed']}, ckd.train.TEST))",
                t=[*range(cfg.length - 1)],
                median_error={k: e.median(0).values.tolist() for k, e in errors.items()},
                mse={k: s["mse"] for k, s in summary.items()}, settings=ref["settings"], probe=mine["probe"])


# The generator of each zoo family in ``ckd.sequences`` and the keywords ``make_task`` fixes for it
# (tested: this call draws the same prompts as make_task).
FAMILIES = {"periodic": ("periodic", dict(on="sphere")), "linear": ("linear", dict(kind="orthogonal")),
            "nonlinear": ("nonlinear", dict(kind="tanh"))}


def task_parameters(task: str) -> dict:
    """Generator and parameters of a zoo task family: {"generator": "ckd.sequences.NAME", keyword: value}
    (the generator's defaults, with the keywords ``make_task`` fixes)."""
    from . import sequences

    name, fixed = FAMILIES[task]
    defaults = {k: p.default for k, p in inspect.signature(getattr(sequences, name)).parameters.items()
                if p.kind is p.KEYWORD_ONLY and k not in ("seed", "dtype")}
    return {"generator": f"ckd.sequences.{name}", **defaults, **fixed}


def train_command(cfg: TrainConfig) -> str:
    """The ``ckd train`` command line that trains ``cfg`` (flags for the fields off their defaults)."""
    flags, defaults = [], asdict(TrainConfig())
    for key, value in asdict(cfg).items():
        if (key == "norm" and cfg.layernorm) or key == "init_sha256":
            continue  # --layernorm says it (the spelling of the older cards); the hash is filled in by the run
        if value != defaults[key] or key in ("task", "attention", "layers"):
            flag = "--" + key.replace("_", "-")
            if isinstance(value, builtins.list):  # --loop-range LO,HI
                value = ",".join(str(v) for v in value)
            flags.append((flag if value else "--no-" + flag[2:]) if isinstance(value, bool) else f"{flag} {value}")
    return "OMP_NUM_THREADS=1 ckd train " + " ".join(flags) + " --out DIR"


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs, {platform.system()}, torch {torch.__version__}, 1 thread"


def recipe(name: str, zoo: dict | None = None) -> dict:
    """The ``TrainConfig`` fields of ``name``: a model of ``zoo`` (default ``ZOO``) or a ``STAGES`` entry."""
    zoo = ZOO if zoo is None else zoo
    return zoo[name][1] if name in zoo else STAGES[name]


def train_stages(name: str, root: Path, progress: bool = True, zoo: dict | None = None) -> list[tuple[str, Path]]:
    """Train ``name`` from scratch into root/NAME: first, when its ``init_from`` is "@PARENT", the chain of
    PARENT's stages (each warm-started from the one before, ``ckd train --init-from``). Returns the
    (name, run folder) of every stage, the first first."""
    fields = recipe(name, zoo)
    stages: list[tuple[str, Path]] = []
    parent = fields.get("init_from")
    if isinstance(parent, str) and parent.startswith("@"):
        stages = train_stages(parent[1:], root, progress, zoo)
        fields = fields | dict(init_from=str(stages[-1][1]))
    train(TrainConfig(**fields).validate(), root / name, progress=progress)
    return [*stages, (name, root / name)]


def build_one(name: str, out: Path, progress: bool = True, zoo: dict | None = None) -> dict:
    """Train the model ``name`` of ``zoo`` (default ``ZOO``) from scratch, with its stages if it has any,
    and write out/NAME.safetensors and out/NAME.json."""
    description = (ZOO if zoo is None else zoo)[name][0]
    with tempfile.TemporaryDirectory(prefix=f"ckd-zoo-{name}-") as root:
        t0 = time.perf_counter()
        stages = train_stages(name, Path(root), progress, zoo)
        return package(name, description, stages[-1][1], time.perf_counter() - t0, out,
                       [(stage, TrainConfig(**recipe(stage, zoo))) for stage, _ in stages])


def package(name: str, description: str, run: Path, wall: float, out: Path,
            stages: list[tuple[str, TrainConfig]] | None = None) -> dict:
    """Write out/NAME.safetensors and out/NAME.json from the finished ``ckd train`` run folder ``run``
    (its checkpoint, config and metrics; ``wall``: its training time in seconds). ``stages``: (name, recipe)
    of each stage of a warm-started chain, the last this model: the card lists their commands, each
    ``--init-from`` the folder of the one before, and its config names the last one's parent folder."""
    from safetensors.torch import save as save_safetensors

    cfg, trained, state = load_model(run / "checkpoint.pt")
    if stages and len(stages) > 1:  # the parent as the card's commands name it, not the temporary folder
        cfg = replace(cfg, init_from=stages[-2][0], init_sha256=None)
    if state["step"] != cfg.steps:
        raise ValueError(f"{run}: the run stopped at step {state['step']} of {cfg.steps}")
    records = read_metrics(run / "metrics.jsonl")
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in trained.state_dict().items()}
    data = save_safetensors(state, metadata={"format": FORMAT})  # one key: safetensors writes a map unordered
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg)
    from safetensors.torch import load as load_safetensors

    model.load_state_dict(load_safetensors(data))  # the card describes exactly the shipped weights
    info = dict(
        format=FORMAT, name=name, description=description,
        task=dict(family=cfg.task, dim=cfg.dim, length=cfg.length, parameters=task_parameters(cfg.task)),
        architecture={"class": "ckd.transformer.CausalTransformer", **asdict(model.config),
                      "width_used": model.config.d_model, "parameters": sum(p.numel() for p in model.parameters())},
        training=dict(command=train_command(cfg), config=asdict(cfg), **chain(stages), steps=cfg.steps,
                      wall_seconds=round(wall, 1),
                      machine=machine(), final_loss=records[-1]["loss"],
                      loss_curve=[[r["step"], r["loss"]] for r in records if r["step"] % 100 == 0]),
        evaluation=evaluation(model.double(), cfg),
        weights=dict(file=f"{name}.safetensors", sha256=sha256(data), bytes=len(data), dtype="float32",
                     format="safetensors"),
    )
    atomic_write(out / f"{name}.safetensors", lambda fh: fh.write(data))
    write_json(out / f"{name}.json", strict_json(info))
    return info


def chain(stages: list[tuple[str, TrainConfig]] | None) -> dict:
    """{"stages": [{"name", "command"}, ...]} for a warm-started chain (``package``); {} for one run."""
    if not stages or len(stages) == 1:
        return {}
    rows = []
    for i, (stage, cfg) in enumerate(stages):
        cfg = replace(cfg, init_from=stages[i - 1][0]) if i else cfg
        out = "DIR" if i == len(stages) - 1 else stage
        rows.append({"name": stage, "command": train_command(cfg).removesuffix("--out DIR") + f"--out {out}"})
    return {"stages": rows}


def strict_json(obj):
    """``obj`` with every non-finite float (the probe's NaN at depth 0) replaced by None: strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, builtins.list)):
        return [strict_json(v) for v in obj]
    return obj


def build(out: str | os.PathLike = "ckd-zoo", names: list[str] | None = None, *, force: bool = False,
          progress: bool = True, zoo: dict | None = None) -> list[dict]:
    """Retrain the zoo (``names``, default all of ``zoo``, default ``ZOO``) into ``out`` on one torch
    thread; returns the cards.

    Refuses (before any work) to overwrite an existing NAME.safetensors / NAME.json unless ``force``.
    """
    zoo = ZOO if zoo is None else zoo
    names = [*zoo] if names is None else names
    unknown = [n for n in names if n not in zoo]
    if unknown:
        raise ValueError(f"unknown zoo model {unknown[0]!r}; choose among {', '.join(zoo)}")
    from .io import check_file_target, check_output_dir

    out = check_output_dir(out)  # a folder (or nothing yet) whose first existing parent is writable
    files = [out / f"{n}{suffix}" for n in names for suffix in (".safetensors", ".json")]
    taken = [p for p in files if os.path.lexists(p)]
    if taken and not force:
        raise ValueError(f"{taken[0]} exists; pass --force to overwrite, or choose another --out")
    if out.exists():  # before any training: never a folder, pipe or device, even with --force
        for p in files:
            check_file_target(p)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [build_one(name, out, progress, zoo) for name in names]
    finally:
        torch.set_num_threads(threads)


def compare(built: dict, shipped: dict) -> dict:
    """How a rebuilt card differs from the shipped one: same weights? final losses, largest
    difference between evaluation numbers (median errors and mse of every method)."""
    def numbers(c):
        e = c["evaluation"]
        return [v for k in sorted(e["mse"]) for v in (*e["median_error"][k], e["mse"][k])]

    a, b = numbers(built), numbers(shipped)
    return dict(same_weights=built["weights"]["sha256"] == shipped["weights"]["sha256"],
                loss=built["training"]["final_loss"], shipped_loss=shipped["training"]["final_loss"],
                max_eval_diff=max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf"))


def trained_model(checkpoint: Any, shape: tuple[int, ...], device: torch.device,
                  loops: int | None = None) -> torch.nn.Module:
    """The Transformer of a ``ckd train`` checkpoint or of the zoo (``"pretrained:NAME"``), in float64
    on ``device``, for trajectories of shape (B, T, d): d must be its dim, and T at most its positional
    table (raw tokens). Serves ``ckd.predict(backend="pretrained:NAME")`` and ``forecast --method transformer``.
    ``loops``: a looped model run for that many loops (``ckd.looped.with_loops``)."""
    from .looped import with_loops

    if isinstance(checkpoint, str) and checkpoint.startswith("pretrained:"):  # a model of the zoo
        cfg, model, _ = load_with_config(checkpoint.removeprefix("pretrained:"))
    else:
        cfg, model, _ = load_model(checkpoint)
    cfg, model = with_loops(cfg, model, loops)
    T, d = shape[-2:]
    if cfg.dim != d:
        raise ValueError(f"{checkpoint}: the model was trained on dim={cfg.dim}, the trajectory has d={d}")
    if cfg.tokens == "raw" and T > model.config.max_len:
        raise ValueError(f"{checkpoint}: raw-token model with positions up to {model.config.max_len}, "
                         f"the trajectory has T={T} rows")
    return model.to(device=device, dtype=torch.float64)
