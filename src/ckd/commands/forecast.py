"""``ckd forecast IN -o OUT``: strictly causal one-step forecasts of a raw trajectory."""

from __future__ import annotations

from ..forecast import METHODS, forecast
from ..io import check_output_path, load_array, save_array


def add_parser(sub) -> None:
    p = sub.add_parser("forecast", help="one-step forecasts of a raw trajectory, strictly causal",
                       description="Row t of OUT forecasts IN[t+1] from IN[0..t] only (scaling and settings "
                                   "included), in the units of IN. See docs/forecast.md.")
    p.add_argument("input", metavar="IN", help="(T, d) or (B, T, d) trajectory, .npy (or .csv for (T, d)), T >= 3")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="where to write the forecasts")
    p.add_argument("--method", default="ckd", choices=METHODS, help="default ckd")
    p.add_argument("--sigma", type=float, default=None,
                   help="gaussian bandwidth in standardised units (ckd, krr; default: chosen causally)")
    p.add_argument("--ridge", type=float, default=None, help="ridge lambda (ckd, krr; default: chosen causally)")
    p.add_argument("--k", type=int, default=1, help="neighbours of the analogues method (default 1)")
    p.add_argument("--depth", default="1", help="ckd depth: 1 (local linear read-out, default) or inf")
    p.add_argument("--checkpoint", default=None, metavar="PT",
                   help="checkpoint.pt of ckd train (method transformer: a trained Transformer as forecaster)")
    p.add_argument("--pretrained", default=None, metavar="NAME",
                   help="method transformer: a model of the zoo (ckd zoo list) instead of --checkpoint")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.pretrained is not None:
        if args.checkpoint is not None:
            raise ValueError("give either --checkpoint or --pretrained, not both")
        args.checkpoint = f"pretrained:{args.pretrained}"
    x = load_array(args.input)
    out_path = check_output_path(args.output, x.ndim)
    pred = forecast(x, args.method, sigma=args.sigma, ridge=args.ridge, k=args.k, depth=args.depth,
                    checkpoint=args.checkpoint)
    save_array(out_path, pred)
    return 0
