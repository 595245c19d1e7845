"""``ckd reproduce``: run the experiments of ``ckd.experiments`` and write their figures,
numbers and a ``summary.md`` of headline numbers.

    ckd reproduce [NAME ...] [--quick | --full] [--force] [--out DIR] [--seed S] [--device cpu|cuda] [--threads N]

Three sizes (``ckd.experiments.SIZES``): the default one finishes in minutes on 2 cores (the heavy
experiments at a documented smaller size), ``--full`` is the size of docs/, ``--quick`` a smoke
test. Each experiment writes DIR/<name>.png, .pdf and .json. ``summary.json`` keeps, per
experiment, its headline numbers, the command, size, seed and time of its latest run, so
that re-running one experiment updates its rows and keeps the others'; ``summary.md``
is rendered from it. An interrupted run continues where it stopped: an experiment already
finished in DIR at the same size, seed and device (status ok, its figure there) is kept and
skipped, unless ``--force``.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone

from ..cli import integer, path
from ..experiments import EXPECTED_SECONDS, EXPERIMENTS, load
from ..figures import require_matplotlib

HELP = "run the experiments: figures, numbers and summary.md"


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help=HELP,
                       description="Run the experiments that turn SPEC §2's claims into measured figures.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"experiments to run (default: all): {', '.join(EXPERIMENTS)}")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="few sequences, short prompts (everything < 60 s)")
    size.add_argument("--full", action="store_true",
                      help="the full size of docs/ (about 2 h on 2 cores; default: a smaller size, minutes)")
    p.add_argument("--force", action="store_true",
                   help="run again the experiments already finished in the output folder at this size")
    p.add_argument("--out", type=path, default="ckd-results", help="output folder (default: ckd-results/)")
    p.add_argument("--seed", type=integer(0), default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device (default cpu)")
    p.add_argument("--threads", type=integer(1, 4096), default=1,
                   help="torch CPU threads (default 1: the experiments are many small operations, for which "
                        "extra threads cost more than they give, ten times more on a busy machine)")
    p.set_defaults(run=run)


def check_args(args) -> tuple[list[str], pathlib.Path]:
    """Validate names, device and output folder before any work; return (names, out)."""
    import torch

    from ..io import check_file_target, check_output_dir

    names = list(dict.fromkeys(args.names)) or list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment {unknown[0]!r}; choose from {', '.join(EXPERIMENTS)}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available to torch here; use --device cpu")
    require_matplotlib("ckd reproduce")  # before importing any experiment: they draw with it
    if "chaos-forecast" in names:  # its worker count comes from the environment: check it now, not mid-run
        from ..experiments.chaos_forecast import workers

        workers()
    out = check_output_dir(args.out)
    if out.exists():  # files it will write: never through a pipe, never onto a folder
        for file in ["summary.json", "summary.md", *(f"{n}.{ext}" for n in names for ext in ("json", "png", "pdf"))]:
            check_file_target(out / file)
    return names, out


def size_of(args) -> str:
    return "quick" if args.quick else "full" if args.full else "default"


def finished(entry: dict | None, size: str, args, out: pathlib.Path, name: str) -> bool:
    """Whether ``name`` already ran to completion in ``out`` at this size, seed and device."""
    return (isinstance(entry, dict) and entry.get("status") == "ok" and entry.get("size") == size
            and entry.get("seed") == args.seed and entry.get("device") == args.device
            and (out / f"{name}.json").exists())


def run(args) -> int:
    import torch

    from ..io import atomic_write

    names, out = check_args(args)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    size = size_of(args)
    command = "ckd " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "ckd reproduce"
    summary_path = out / "summary.json"
    summary = _read_summary(summary_path)
    kept = [] if args.force else [n for n in names if finished(summary.get(n), size, args, out, n)]
    todo = [n for n in names if n not in kept]
    if kept:
        print(f"kept (finished earlier in {out}/, --force runs them again): {', '.join(kept)}")
    failed = []
    start = time.perf_counter()
    from tqdm.auto import tqdm

    # one bar for the whole run, in expected seconds (each experiment's measured time at this size)
    weights = {n: EXPECTED_SECONDS.get(n, {}).get(size, 10.0) for n in todo}
    bar = tqdm(total=round(sum(weights.values())), desc="ckd reproduce", unit="s", dynamic_ncols=True,
               disable=not todo,  # nothing left to run: no empty bar
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s expected [{elapsed}<{remaining}]{postfix}")
    for name in todo:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experiments measure instability; they need no warnings
                headline = load(name).run(out, size=size, seed=args.seed, device=args.device)
            status = "ok"
        except Exception as err:  # keep going: one broken experiment must not lose the others
            traceback.print_exc()
            headline, status = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}, "failed"
            failed.append(name)
        seconds = time.perf_counter() - t0
        bar.update(weights[name])
        summary[name] = dict(headline=headline, status=status, seconds=round(seconds, 2), command=command,
                             seed=args.seed, size=size, quick=size == "quick", device=args.device,
                             date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        tqdm.write(f"{name}: {status} in {seconds:.1f} s")
        atomic_write(summary_path, lambda fh: fh.write((json.dumps(summary, indent=1) + "\n").encode()))
        atomic_write(out / "summary.md", lambda fh: fh.write(render_summary(summary, out).encode()))
    bar.close()
    if kept and not todo:  # nothing ran: summary.md is still rendered from what is there
        atomic_write(out / "summary.md", lambda fh: fh.write(render_summary(summary, out).encode()))
    total = time.perf_counter() - start
    done = f"{len(todo)} experiment(s) in {total:.1f} s" if todo else "nothing left to run"
    print(f"{done} ({size} size); figures, numbers and summary.md in {out}/")
    if failed:
        print(f"ckd: error: experiment(s) failed: {', '.join(failed)} (see the traceback above)", file=sys.stderr)
        return 1
    return 0


def _read_summary(path: pathlib.Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _fmt(value) -> str:
    """A table cell: floats to 3 significant digits, '|' escaped for markdown."""
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def render_summary(summary: dict, out: pathlib.Path) -> str:
    """summary.md: per experiment (in ``EXPERIMENTS`` order), its headline numbers and how it ran."""
    order = [n for n in EXPERIMENTS if n in summary] + [n for n in summary if n not in EXPERIMENTS]
    lines = ["# ckd reproduce: summary", "",
             "Headline numbers of each experiment (figures and full numbers: `<name>.png`, `<name>.json`).", ""]
    total = 0.0
    for name in order:
        s = summary[name]
        total += s.get("seconds", 0.0)
        mode = s.get("size") or ("quick" if s.get("quick") else "full")
        lines += [f"## {name}", "",
                  f"`{s.get('command')}` ({mode} run, seed {s.get('seed')}, device {s.get('device')}, "
                  f"{s.get('seconds')} s, {s.get('date')}, {s.get('status')})", "",
                  *([f"![{name}]({name}.png)", ""] if (out / f"{name}.png").exists() else []),
                  "| quantity | value |", "|---|---|"]
        lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in s.get("headline", {}).items()]
        lines.append("")
    lines.append(f"Total time of the runs listed: {total:.1f} s.")
    return "\n".join(lines) + "\n"
