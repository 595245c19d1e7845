"""icml2024: the main finding of Sander, Giryes, Suzuki, Blondel, Peyré (ICML 2024), on CKD's terms.

*How do Transformers Perform In-Context Autoregressive Learning?* (arXiv 2402.05787; their code:
github.com/michaelsdr/ical, not used here): on x_{t+1} = W x_t with W random orthogonal and x_0
fixed (d = 5, T = 51), one trained linear-attention layer is one gradient step from W = 0 on the
in-context least-squares loss sum_{s<=t} |x_s - W x_{s-1}|^2. In CKD's terms (SPEC §10) that is
depth-1 CKD with the linear kernel and a per-row step eta_t:

    p_t = eta_t (sum_{s<=t} x_s x_{s-1}^T) x_t,

and the step such models learn is about d / (2 t) (the position-normalised step c d / t, c ~ 1/2).

Here, end to end with ckd's own tools, as a user bringing their own data would:
  1. the distribution (seeded ``make_task("linear", x0=...)``: W Haar-orthogonal per prompt,
     x_0 = (1, ..., 1) / sqrt(d) for every prompt), written to .npy files;
  2. three one-layer, one-head linear-attention models trained with ``ckd train --data``: plain (a
     constant step is all it can express), with LayerNorm on the attention's output (``--norm
     output``, where their code puts it), and with position-normalised attention (each head's sum
     divided by the number of keys it sees);
  3. ``ckd.compare`` of each model's predictions with depth-1 CKD at the per-row step fitted to
     the model (and at the best constant step), and with depth inf;
  4. the per-row fitted step against c d / t (c by least squares over t >= 10), beside the step
     fitted to the truth (``ckd.fit_step``);
  5. the attention blocks of each model (``ckd.inspect.attention_blocks``) and their distance to
     the construction's.
"""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np
import torch

from ..compare import compare
from ..descent.fit import fit_step
from ..inspect import attention_blocks
from ..sequences import make_task
from . import plotting, progress

NAME = "icml2024"
DIM, LENGTH = 5, 51
FROM_T = 10  # the goal's range: t >= 10
# name -> extra `ckd train` flags (every model: one linear-attention layer, augmented tokens)
MODELS = {"linear attention": [], "+ LayerNorm": ["--norm", "output"],
          "position-normalised": ["--attention-norm", "keys"]}
FULL = dict(train=4096, test=512, steps=2000, batch=64, lr=1e-2, warmup=50)
QUICK = dict(train=64, test=32, steps=30, batch=16, lr=1e-2, warmup=5)


def start_point(dim: int = DIM) -> torch.Tensor:
    """The fixed x_0 of every prompt: (1, ..., 1) / sqrt(d)."""
    return torch.full((dim,), dim ** -0.5, dtype=torch.float64)


def sequences(n: int, seed: int) -> torch.Tensor:
    """n prompts of the ICML 2024 distribution, (n, T, d), float64."""
    return make_task("linear", n, LENGTH, DIM, seed=seed, x0=start_point()).x


def fit_c(eta: np.ndarray, dim: int = DIM, from_t: int = FROM_T) -> tuple[float, float]:
    """(c, relative residual) of the least-squares fit eta_t ~ c d / t over t >= from_t (last row
    excluded: it has no target)."""
    t = np.arange(len(eta))[from_t:-1]
    e, basis = np.asarray(eta, dtype=np.float64)[from_t:-1], dim / t
    c = float(basis @ e / (basis @ basis))
    return c, float(np.linalg.norm(e - c * basis) / np.linalg.norm(e))


def train_model(folder: pathlib.Path, train_file: pathlib.Path, val_file: pathlib.Path, flags: list[str],
                cfg: dict, seed: int, device: str) -> torch.nn.Module:
    """``ckd train --data`` (the CLI, in-process) and the trained model in float64."""
    from ..cli import main
    from ..train import load_model

    argv = ["train", "--data", str(train_file), "--val-data", str(val_file), "--attention", "linear",
            "--layers", "1", "--heads", "1", "--steps", str(cfg["steps"]), "--batch", str(cfg["batch"]),
            "--lr", str(cfg["lr"]), "--warmup", str(cfg["warmup"]), "--seed", str(seed), "--device", device,
            "--out", str(folder), "--quiet", *flags]
    if main(argv) != 0:
        raise RuntimeError(f"ckd {' '.join(argv)} failed")
    _, model, _ = load_model(folder / "checkpoint.pt")
    return model.to(torch.float64)


def run(out: pathlib.Path, *, size: str = "full", seed: int = 0, device: str = "cpu") -> dict:
    quick = size == "quick"
    cfg = QUICK if quick else FULL
    train_x, val_x = sequences(cfg["train"], seed), sequences(cfg["test"], seed + 1)
    test_x = sequences(cfg["test"], seed + 2)
    truth = torch.cat([test_x[:, 1:], test_x[:, -1:]], 1)  # row t: x_{t+1} (last row: no target, unused)
    eta_truth = fit_step(test_x, truth, "linear", depth=1, per_row=True).numpy()
    res: dict = {"t": np.arange(LENGTH), "models": {}, "truth_step": eta_truth}
    head = {"c fitted to the truth (eta_t ~ c d / t, t >= 10)": fit_c(eta_truth)[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        np.save(tmp / "train.npy", train_x.numpy())
        np.save(tmp / "val.npy", val_x.numpy())
        for i, (name, flags) in enumerate(progress(list(MODELS.items()), NAME, quick=quick)):
            model = train_model(tmp / f"m{i}", tmp / "train.npy", tmp / "val.npy", flags, cfg, seed, device)
            with torch.no_grad():
                pred = model(test_x.to(device)).cpu()
            per_row = compare(pred, test_x, "linear", depths=(1,), step="fit-per-row")
            constant = compare(pred, test_x, "linear", depths=(1,), step="fit")
            limit = compare(pred, test_x, "linear", depths=("inf",))
            eta = np.asarray(per_row["steps"][1], dtype=np.float64)
            c, resid = fit_c(eta)
            blocks = attention_blocks(model)
            res["models"][name] = dict(
                flags=flags, per_row=per_row["depths"][1], constant=constant["depths"][1],
                constant_step=constant["steps"][1], inf=limit["depths"]["inf"], step=eta, c=c, c_residual=resid,
                blocks=[{"layer": b["layer"], "head": b["head"], "construction": b["construction"]} for b in blocks])
            cos = per_row["depths"][1]["cosine"][FROM_T:]  # a row's cosine does not depend on its step
            head[f"{name}: min cosine with depth-1 CKD, t >= 10"] = float(np.nanmin(cos))
            head[f"{name}: median rel. distance to depth-1 CKD at fitted per-row steps, t >= 10"] = float(
                np.nanmedian(per_row["depths"][1]["rel_distance"][FROM_T:]))
            head[f"{name}: median rel. distance at the best constant step, t >= 10"] = float(
                np.nanmedian(constant["depths"][1]["rel_distance"][FROM_T:]))
            head[f"{name}: c of its per-row step (eta_t ~ c d / t)"] = c
            head[f"{name}: median error at t = {LENGTH - 2}"] = float(per_row["depths"][1]["error_model"][-2])
    head["depth-1 CKD at the truth's per-row step: median error at t = 49"] = _ckd_error(test_x, eta_truth)
    head["depth inf (one Kaczmarz sweep): median error at t = 49"] = float(
        next(iter(res["models"].values()))["inf"]["error_ckd"][-2])
    plot(out, res)
    config = dict(cfg, dim=DIM, length=LENGTH, x0="(1, ..., 1) / sqrt(d)", task="linear (Haar orthogonal W)",
                  models={k: v for k, v in MODELS.items()}, quick=quick, size=size, seed=seed, device=device,
                  reference="Sander, Giryes, Suzuki, Blondel, Peyre, ICML 2024, arXiv 2402.05787")
    plotting.save_json(out, NAME, dict(config=config, headline=head, results=res))
    return head


def _ckd_error(x: torch.Tensor, eta: np.ndarray) -> float:
    """Median error at t = T-2 of depth-1 CKD with the per-row step ``eta``."""
    from ..api import predict

    p = predict(x, "linear", depth=1, step=eta)
    return float((p[:, -2] - x[:, -1]).norm(dim=-1).median())


def plot(out: pathlib.Path, res: dict) -> None:
    fig, (a, d, b, c) = plotting.figure(1, 4, width=3.9, height=3.3)
    t = res["t"]
    rows = slice(1, -1)
    colors = plotting.colors(len(res["models"]) + 1)
    for color, (name, r) in zip(colors, res["models"].items()):
        a.plot(t[rows], r["per_row"]["cosine"][rows], color=color, label=name)
        d.plot(t[rows], r["per_row"]["rel_distance"][rows], color=color, label=f"{name}, per-row step")
        d.plot(t[rows], r["constant"]["rel_distance"][rows], color=color, ls=":", label=f"{name}, constant step")
        b.plot(t[rows], r["step"][rows] * t[rows] / DIM, color=color, label=f"{name}: c = {r['c']:.2f}")
        c.plot(t[rows], r["per_row"]["error_model"][rows], color=color, label=name)
    b.plot(t[rows], res["truth_step"][rows] * t[rows] / DIM, color=colors[-1], ls="--", label="fitted to the truth")
    first = next(iter(res["models"].values()))
    c.plot(t[rows], first["inf"]["error_ckd"][rows], color="k", ls="--", label="CKD depth inf")
    a.set(xlabel="t", ylabel="cosine with depth-1 CKD", title="(a) model vs one gradient step")
    for ax in (a, d):
        ax.axvline(FROM_T, color="0.7", lw=0.8)
    d.set(xlabel="t", ylabel="|q_t - c_t| / |q_t|", title="(b) distance at the fitted step")
    b.set(xlabel="t", ylabel="fitted step  eta_t t / d", title="(c) the learned step ~ c d / t")
    c.set(xlabel="t", ylabel="median |x^_{t+1} - x_{t+1}|", title="(d) next-token error")
    plotting.log_axes(c)
    plotting.log_axes(d)
    for ax in (a, d, b, c):
        ax.legend(fontsize=6)
    plotting.save_figure(fig, out, NAME)
