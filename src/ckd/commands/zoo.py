"""``ckd zoo``: the pretrained Transformers shipped with ckd (list, show, rebuild; see ``ckd.pretrained``)."""

from __future__ import annotations

import json
import time

from ..cli import path

HELP = "pretrained Transformers shipped with ckd: list, show, rebuild"


def add_parser(sub) -> None:
    p = sub.add_parser("zoo", help=HELP,
                       description="The model zoo (ckd.pretrained): small Transformers trained with ckd train, "
                                   "each with a model card. Use one with ckd evaluate --pretrained NAME, "
                                   "ckd forecast --method transformer --pretrained NAME, or "
                                   "ckd predict --backend pretrained:NAME.")
    zoo = p.add_subparsers(dest="zoo_command", metavar="ACTION", parser_class=type(p))
    zoo.add_parser("list", help="the models, their task and their error at t = T against CKD")
    show = zoo.add_parser("show", help="print the model card of NAME (JSON)")
    show.add_argument("name", metavar="NAME")
    build = zoo.add_parser("build", help="retrain the whole zoo from scratch and write its files and cards",
                           description="Retrain every model of the zoo (or the NAMEs) from scratch with ckd train "
                                       "on one thread, write DIR/NAME.safetensors and DIR/NAME.json, and compare "
                                       "each with the shipped card.")
    build.add_argument("names", nargs="*", metavar="NAME", help="models to rebuild (default: all)")
    build.add_argument("--out", type=path, default="ckd-zoo", metavar="DIR",
                       help="where to write them (default ckd-zoo)")
    build.add_argument("--force", action="store_true", help="overwrite NAME files already in DIR")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    from .. import pretrained

    if args.zoo_command is None:
        raise ValueError("ckd zoo: choose an action: list, show or build")
    if args.zoo_command == "show":
        print(json.dumps(pretrained.card(args.name), indent=1))
        return 0
    if args.zoo_command == "list":
        names = pretrained.list()
        n = max([24, *(len(name) + 2 for name in names)])  # the name column fits the longest name
        print(f"{'name':<{n}}{'task':<11}{'attention':<10}{'layers':>7}{'tokens':>10}{'bytes':>8}"
              f"   median error at t = T-2: model / CKD depth L / CKD depth inf")
        for name in names:
            c = pretrained.card(name)
            cfg, med = c["training"]["config"], c["evaluation"]["median_error"]
            same_depth = med["ckd depth {}".format(cfg["layers"])][-1]
            print(f"{name:<{n}}{cfg['task']:<11}{cfg['attention']:<10}{cfg['layers']:>7}{cfg['tokens']:>10}"
                  f"{c['weights']['bytes']:>8}   {med['transformer'][-1]:.3g} / {same_depth:.3g} / "
                  f"{med['ckd depth inf'][-1]:.3g}")
        return 0
    shipped = set(pretrained.list())
    t0 = time.perf_counter()
    cards = pretrained.build(args.out, args.names or None, force=args.force, progress=not args.quiet)
    for c in cards:
        line = (f"{c['name']}: trained in {c['training']['wall_seconds']:.0f} s, final loss "
                f"{c['training']['final_loss']:.6g}")
        if c["name"] in shipped:
            d = pretrained.compare(c, pretrained.card(c["name"]))
            line += ("; same weights (SHA-256) as the shipped model" if d["same_weights"] else
                     f"; differs from the shipped model (its final loss {d['shipped_loss']:.6g}, largest "
                     f"evaluation difference {d['max_eval_diff']:.2g})")
        print(line)
    print(f"rebuilt {len(cards)} models into {args.out}/ in {time.perf_counter() - t0:.0f} s")
    return 0
