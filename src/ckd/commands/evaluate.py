"""``ckd evaluate CHECKPOINT``: a trained Transformer vs CKD and the baselines, and a probe (see ``ckd.evaluate``)."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="compare a trained Transformer with CKD and the baselines on fresh prompts",
                       description="Error vs t of the model of CHECKPOINT, of CKD (depth of the model, best depth, "
                                   "depth inf; kernel and step chosen on separate prompts) and of the baselines, "
                                   "and a least-squares probe of each layer's residual stream against CKD.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?",
                   help="checkpoint.pt written by ckd train (or its run folder)")
    p.add_argument("--pretrained", metavar="NAME", default=None,
                   help="a model of the zoo instead of CHECKPOINT (ckd zoo list)")
    p.add_argument("--out", metavar="DIR", default=None, help="write DIR/evaluation.json, .png and .pdf")
    p.add_argument("--sequences", type=int, default=64, help="fresh prompts (default 64)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fresh prompts (default: the run's seed)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..evaluate import evaluate, report, save

    if (args.checkpoint is None) == (args.pretrained is None):
        raise ValueError("give either CHECKPOINT or --pretrained NAME")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"{args.out}: exists and is not a folder")
    if args.pretrained is not None:
        from ..evaluate import evaluate_trained
        from ..pretrained import load_with_config

        cfg, model, card = load_with_config(args.pretrained)
        result = evaluate_trained(model, cfg, card["training"]["steps"], sequences=args.sequences, seed=args.seed)
    else:
        path = Path(args.checkpoint)
        result = evaluate(path / "checkpoint.pt" if path.is_dir() else path, sequences=args.sequences, seed=args.seed)
    print(report(result))
    if args.out is not None:
        paths = save(result, Path(args.out))
        print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0
