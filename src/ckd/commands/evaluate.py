"""``ckd evaluate CHECKPOINT``: a trained Transformer vs CKD and the baselines, and a probe (see ``ckd.evaluate``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..cli import integer, path

HELP = "compare a trained Transformer with CKD and the baselines on fresh prompts"


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help=HELP,
                       description="Error vs t of the model of CHECKPOINT, of CKD (depth of the model, best depth, "
                                   "depth inf; kernel and step chosen on separate prompts) and of the baselines, "
                                   "and a least-squares probe of each layer's residual stream against CKD.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?", type=path,
                   help="checkpoint.pt written by ckd train (or its run folder)")
    p.add_argument("--pretrained", metavar="NAME", default=None,
                   help="a model of the zoo instead of CHECKPOINT (ckd zoo list)")
    p.add_argument("--out", metavar="DIR", type=path, default=None, help="write DIR/evaluation.json, .png and .pdf")
    p.add_argument("--data", metavar="SEQS", type=path, default=None,
                   help="score on these sequences (B, T, d) (.npy, .npz with one array, .csv) instead of fresh prompts "
                        "of the run's task (no oracle then; CKD's settings are chosen on them)")
    p.add_argument("--sequences", type=integer(2), default=None, help="fresh prompts (default 64)")
    p.add_argument("--seed", type=integer(0), default=None, help="seed of the fresh prompts (default: the run's seed)")
    p.add_argument("--loops", type=integer(1), default=None, metavar="K",
                   help="a looped model (ckd train --loop): run K loops instead of the trained count, and compare "
                        "with CKD at that depth")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..evaluate import FORMAT, evaluate, evaluate_on, report, save
    from ..figures import require_matplotlib
    from ..io import check_file_target, check_own_folder, json_format, load_array

    if (args.checkpoint is None) == (args.pretrained is None):
        raise ValueError("give either CHECKPOINT or --pretrained NAME")
    path = None
    if args.checkpoint is not None:
        path = Path(args.checkpoint)
        if path.is_dir():
            path = path / "checkpoint.pt"
    if args.out is not None:  # the train rule: a new or empty folder, or one of an earlier ckd evaluate
        folder = check_own_folder(args.out, "evaluation.json", lambda p: json_format(p) == FORMAT,
                                  "an evaluation of ckd evaluate")
        if folder.exists():  # its files: never through a pipe, never onto a folder
            for suffix in (".json", ".png", ".pdf"):
                check_file_target(folder / f"evaluation{suffix}", [p for p in (path, args.data) if p])
        require_matplotlib("ckd evaluate --out")
    data = None
    if args.data is not None:
        if args.sequences is not None or args.seed is not None:
            raise ValueError("--sequences and --seed draw fresh prompts; they do not apply with --data")
        data = load_array(args.data)
    if args.pretrained is not None:
        from ..evaluate import evaluate_trained
        from ..looped import with_loops
        from ..pretrained import load_with_config

        cfg, model, card = load_with_config(args.pretrained)
        cfg, model = with_loops(cfg, model, args.loops)
        result = (evaluate_trained(model, cfg, card["training"]["steps"], sequences=args.sequences or 64,
                                   seed=args.seed) if data is None else
                  evaluate_on(model, data, config=asdict(cfg), step=card["training"]["steps"]))
    else:
        result = evaluate(path, data=data, sequences=args.sequences, seed=args.seed, loops=args.loops)
    print(report(result))
    if args.out is not None:
        paths = save(result, Path(args.out))
        print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0
