"""``ckd predict IN -o OUT``: the CLI face of ``ckd.predict`` (SPEC §4). A complex ``.npy`` IN runs
with ``--kernel linear`` (SPEC §10) and gives a complex ``.npy`` OUT."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..cli import MAX_INT, integer, path
from ..names import BACKENDS, DTYPE_NAMES, KERNELS, TOKENS, parse_float

if TYPE_CHECKING:
    import numpy as np

from ..cost import check_time
from ..progress import estimated_progress

HELP = "next-token predictions of causal kernel descent for IN"


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help=HELP,
                       description="Row t of OUT is the prediction of x_{t+1} from x_0..x_t.")
    p.add_argument("input", metavar="IN", type=path,
                   help="(T, d) or (B, T, d) array, .npy (or .csv for (T, d)); a complex .npy needs --kernel linear")
    p.add_argument("-o", "--output", metavar="OUT", type=path, required=True,
                   help="where to write the predictions (.npy)")
    p.add_argument("--kernel", default="exp", help=f"one of {', '.join(KERNELS)} (default exp)")
    p.add_argument("--beta", type=parse_float, default=1.0, help="inverse temperature of exp/softmax (default 1)")
    p.add_argument("--sigma", type=parse_float, default=1.0, help="bandwidth of the gaussian kernel (default 1)")
    p.add_argument("--depth", default="16", help="number of layers N >= 0, or inf (default 16)")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--step", type=parse_float, default=None,
                       help="step eta (default 0.5 / max_t (R[t,t] + ridge))")
    steps.add_argument("--step-file", metavar="ETA", type=path, default=None,
                       help="per-row steps eta_0..eta_{T-1} (SPEC §10; eta_0 unused): a (T,) .npy, or one row or "
                            "column of a .csv; at depth inf they change the answer (docs: per-row steps)")
    p.add_argument("--ridge", type=parse_float, default=0.0, help="ridge lambda >= 0 (default 0)")
    p.add_argument("--sweeps", type=integer(1), default=1,
                   help="sweeps over the prompt at depth inf (default 1; many -> kernel ridge, docs/results.md)")
    p.add_argument("--backend", default="descent", metavar="BACKEND",
                   help=f"{', '.join(BACKENDS)}, or pretrained:NAME (a trained model of the zoo: ckd zoo list; "
                        "it brings its own attention and layers), or checkpoint:PATH (the model of a ckd train "
                        "checkpoint, likewise) (default descent)")
    p.add_argument("--loops", type=integer(1), default=None, metavar="K",
                   help="with a looped trained model (ckd train --loop): run K loops instead of the trained count")
    p.add_argument("--tokens", default="augmented", choices=TOKENS, help="transformer input tokens")
    p.add_argument("--dtype", default="float64", choices=DTYPE_NAMES)
    p.add_argument("--force", action="store_true",
                   help="run even when the estimated time exceeds an hour (refused by default, with the estimate)")
    p.set_defaults(run=run)


def run(args) -> int:
    import numpy as np

    from ..api import predict
    from ..io import check_output_path, load_array, save_array

    if args.depth.strip().isdigit() and int(args.depth) > MAX_INT:
        raise ValueError(f"--depth must be an integer in 0 .. 2**63 - 1 or inf, got {args.depth}")
    x = load_array(args.input, complex_ok=True)
    if np.iscomplexobj(x):  # SPEC §10: the linear kernel of the descent backend only
        if args.kernel != "linear" or args.backend != "descent":
            raise ValueError(f"{args.input}: dtype {x.dtype} is complex; complex sequences need --kernel linear "
                             "(k(a, b) = b^H a) and the descent backend")
        if Path(args.output).suffix.lower() == ".csv":
            raise ValueError(f"{args.output}: a .csv output holds real numbers; use .npy for complex predictions")
    inputs = [args.input] + ([args.step_file] if args.step_file else [])
    out_path = check_output_path(args.output, x.ndim, inputs=inputs)
    step = args.step if args.step_file is None else load_step(args.step_file, x.shape[-2])
    check_memory_first(args, x)
    seconds = estimate(args, x.shape)
    advice = ("use fewer --sweeps (each is a triangular solve over the prompt)" if args.sweeps > 1 else
              "use a smaller --depth or fewer tokens (a layer costs B T^2 d), or --depth inf (one sweep)")
    check_time(seconds, f"ckd predict --depth {args.depth}" + (f" --sweeps {args.sweeps}" if args.sweeps > 1 else "")
               + f" on {x.shape}", advice, args.force)
    with estimated_progress(seconds, "ckd predict"):
        pred = predict(x, args.kernel, beta=args.beta, sigma=args.sigma, depth=args.depth, step=step,
                       ridge=args.ridge, backend=args.backend, tokens=args.tokens, dtype=args.dtype,
                       sweeps=args.sweeps, loops=args.loops)
    save_array(out_path, pred)
    return 0


def check_memory_first(args, x) -> None:
    """The transformer backend's memory refusal before the time refusal: what cannot fit is refused
    as such, even with --force (``ckd.predict`` checks it again, for every caller)."""
    from ..names import KERNELS
    from ..validation import parse_depth

    try:
        depth = parse_depth(args.depth)
    except ValueError:
        return  # refused by ckd.predict, with its own message
    if args.backend != "transformer" or depth == "inf" or args.kernel not in KERNELS or x.ndim not in (2, 3):
        return
    import torch

    from ..api import DTYPES, check_transformer_memory

    shape = (1, *x.shape) if x.ndim == 2 else x.shape
    view = torch.zeros((), dtype=DTYPES[args.dtype]).expand(*shape)  # its shape and itemsize; no allocation
    check_transformer_memory(view, kernel=args.kernel, depth=depth, ridge=args.ridge, tokens=args.tokens)


def estimate(args, shape: tuple[int, ...]) -> float:
    """Estimated seconds of the request (``ckd.cost``); 0 when its options are invalid (refused later)."""
    from ..cost import descent_seconds, transformer_seconds
    from ..validation import parse_depth

    if len(shape) not in (2, 3):
        return 0.0  # refused by ckd.predict, with its own message
    B, T, d = (1, *shape) if len(shape) == 2 else shape
    try:
        depth = parse_depth(args.depth)
    except ValueError:
        return 0.0
    if args.backend == "transformer" and depth != "inf":
        return transformer_seconds(B, T, d, depth)
    if args.backend != "descent":
        return 0.0  # a trained model: its size bounds the work
    return descent_seconds(B, T, d, depth, sweeps=args.sweeps, linear_time=args.kernel == "linear")


def load_step(path: str, length: int) -> np.ndarray:
    """A per-row step file: a (T,) array (``ckd.io.load_array``: .npy, or .csv whose one row or one
    column is the vector) with the checks of ``ckd.validation.parse_step`` (``length`` values, finite,
    >= 0 from row 1 on), each error naming the file."""
    import numpy as np

    from ..io import load_array
    from ..validation import parse_step

    eta = load_array(path)
    if eta.ndim == 2 and Path(path).suffix.lower() == ".csv" and 1 in eta.shape:
        eta = eta.reshape(-1)
    if eta.ndim != 1:
        raise ValueError(f"{path}: a step file holds one vector eta_0..eta_(T-1), got shape {eta.shape}")
    if eta.dtype == np.bool_:
        raise ValueError(f"{path}: dtype bool is not a step; save numbers")
    try:
        parse_step(eta, length)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return eta
