"""``ckd compare PRED --data SEQS --out DIR``: any model's predictions against CKD (see ``ckd.compare``).

DIR receives compare.json (every number, the settings and the steps), compare.md (a table at a few
t) and compare.png (when matplotlib imports). Files of those names are replaced only when DIR's
compare.json was written by ``ckd compare``; otherwise the folder is refused before any work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..cli import path
from ..figures import PLOT_EXTRA, matplotlib_problem, save_figure_as
from ..names import FITS, KERNELS, parse_float

FORMAT = "ckd-compare-1"  # marks a compare.json as ours
FILES = ("compare.json", "compare.md", "compare.png")
HELP = "compare any model's predictions with CKD (cosine, scale, distances, errors)"


def step_arg(text: str):
    """--step: a number >= 0, 'fit' or 'fit-per-row'."""
    if text in FITS:
        return text
    try:
        return parse_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a number, fit or fit-per-row, got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help=HELP,
                       description="Row t of PRED is a model's prediction of x_{t+1} for the sequences of --data. "
                                   "For each depth, per row t: cosine, median cosine, least-squares scale, relative "
                                   "distances and next-token errors against CKD (SPEC §10). Writes DIR/compare.json, "
                                   "DIR/compare.md and DIR/compare.png (with matplotlib).")
    p.add_argument("pred", metavar="PRED", type=path,
                   help="the model's predictions, (T, d) or (B, T, d): .npy, .npz (one array) or .csv")
    p.add_argument("--data", metavar="SEQS", type=path, required=True, help="the sequences x, same shape as PRED")
    p.add_argument("--kernel", default="exp", help=f"CKD kernel: one of {', '.join(KERNELS)} (default exp)")
    p.add_argument("--beta", type=parse_float, default=1.0, help="inverse temperature of exp/softmax (default 1)")
    p.add_argument("--sigma", type=parse_float, default=1.0, help="bandwidth of the gaussian kernel (default 1)")
    p.add_argument("--ridge", type=parse_float, default=0.0, help="ridge lambda >= 0 (default 0)")
    p.add_argument("--depth", default="1,4,16,inf", metavar="N,N,...",
                   help="CKD depths, comma-separated, each an integer >= 0 or inf (default 1,4,16,inf)")
    p.add_argument("--step", type=step_arg, default=None, metavar="VALUE|fit|fit-per-row",
                   help="CKD step: a number, or the least-squares step against PRED (one, or one per row); "
                        "default 0.5 / max_t (R[t,t] + ridge)")
    p.add_argument("--out", metavar="DIR", type=path, required=True,
                   help="folder for compare.json, .md, .png (created)")
    p.set_defaults(run=run)


def is_ours(path: Path) -> bool:
    """``path`` is a compare.json written by ``ckd compare`` (never opens a pipe)."""
    from ..io import json_format

    return json_format(path) == FORMAT


def check_out(out: str, inputs: list[str]) -> Path:
    """Before any work: DIR is a folder (or will be), and its compare.* files, if any, are ours."""
    from ..io import check_file_target, check_output_dir

    folder = check_output_dir(out)
    if not folder.exists():
        return folder
    ours = is_ours(folder / "compare.json")
    for name in FILES:
        path = folder / name
        if os.path.lexists(path):
            check_file_target(path, inputs)
            if not ours:
                raise ValueError(f"{path}: exists and was not written by ckd compare; choose a new or empty --out "
                                 "(it is never replaced)")
    return folder


def run(args) -> int:
    import torch

    from ..compare import check_depths, compare, plot, table
    from ..io import atomic_write, jsonable, load_array
    from ..validation import as_batch

    try:
        depths = check_depths(args.depth.split(",") if args.depth.strip() else [])
    except ValueError as err:
        raise ValueError(f"--depth {args.depth!r}: {err}") from None
    folder = check_out(args.out, [args.pred, args.data])
    pred, x = load_array(args.pred), load_array(args.data)
    if pred.shape != x.shape:
        raise ValueError(f"{args.pred} has shape {pred.shape} but {args.data} has shape {x.shape}; row t of PRED "
                         "predicts x_{t+1}: they must have the same shape")
    as_batch(pred, torch.float64, args.pred)  # one line naming the file (NaN, rank, size)
    as_batch(x, torch.float64, args.data)
    result = compare(pred, x, args.kernel, beta=args.beta, sigma=args.sigma, ridge=args.ridge, depths=depths,
                     step=args.step)
    settings = dict(result["settings"], pred=str(args.pred), data=str(args.data))
    data = dict(format=FORMAT, settings=settings, t=result["t"],
                depths={str(n): m for n, m in result["depths"].items()},
                steps={str(n): s for n, s in result["steps"].items()})
    folder.mkdir(parents=True, exist_ok=True)
    text = table(result)
    written = []
    for name, payload in (("compare.json", json.dumps(jsonable(data, 12)) + "\n"), ("compare.md", text)):
        blob = payload.encode()
        atomic_write(folder / name, lambda fh, blob=blob: fh.write(blob))
        written.append(folder / name)
    png = folder / "compare.png"
    problem = matplotlib_problem()  # not installed or broken alike: the figure is optional here
    if problem is not None:
        if png.exists():
            png.unlink()  # ours (check_out): it would no longer match compare.json
        print(f"ckd: note: matplotlib {problem}: compare.png not written ({PLOT_EXTRA})", file=sys.stderr)
    else:
        save_figure_as(plot(result), png)
        written.append(png)
    print(text)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
