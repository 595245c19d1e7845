"""The field's in-context baselines from ``reservoirpy``: NVAR and echo state networks (rollouts).

Both are fitted on one standardised context z_0..z_{T-1} (T, c) -- the same units as every other
rollout of ``ckd.rollout`` -- and then run in closed loop, each prediction fed back as the next
input (an autoregressive rollout, SPEC §8). Their settings are chosen from the context alone by
held-out rollouts (``ckd.heldout``), as for ``krr``. Optional dependency:
``pip install 'ckd[reservoir]'`` (reservoirpy >= 0.4).

NVAR (next-generation reservoir computing; Gauthier, Bollt, Griffith & Barbosa, Nat. Commun. 12,
5564, 2021; ``reservoirpy.nodes.NVAR``): the feature vector of step t is the linear part
l_t = (z_t, z_{t-1}, ..., z_{t-k+1}) (delay k, stride 1) and every monomial of order 2 of l_t;
a ridge read-out (``reservoirpy.nodes.Ridge``, with bias, ridge lambda) fits the increment
z_{t+1} - z_t on the rows t >= k - 1, and the rollout is z^_{t+1} = z^_t + W_out phi_t + b, as in
reservoirpy's own NVAR forecasting example. Grid ``GRIDS["nvar"]``: k and lambda.

ESN (Jaeger 2001; ``reservoirpy.nodes.Reservoir`` and ``Ridge``): ``UNITS`` leaky tanh units,
s_t = (1 - a) s_{t-1} + a tanh(rho W0 s_{t-1} + g Win0 z_t), s_{-1} = 0, with W0 a sparse normal
matrix (connectivity 0.1, ``mat_gen.normal``) scaled to spectral radius 1 and Win0 a sparse
Bernoulli +-1 matrix (connectivity 0.1, ``mat_gen.bernoulli``), both drawn once with fixed seeds
(``SEED``): rho is the spectral radius, a the leak rate, g the input scaling. The read-out sees
the state and the input (reservoirpy's ``input_to_readout``) and fits z_{t+1} from (s_t, z_t) by
ridge regression (with bias) on the rows after a warm-up of min(``WARMUP``, n / 4) steps; the
rollout feeds each prediction back as the next input. Grid ``GRIDS["esn"]``: rho, a, g, lambda.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .heldout import best, heldout_error, heldout_origins

GRIDS = {
    "nvar": {"delay": (1, 2, 3, 4), "ridge": (1e-8, 1e-6, 1e-4, 1e-2)},
    "esn": {"sr": (0.5, 0.9, 1.2), "lr": (0.3, 1.0), "input_scaling": (0.3, 1.0), "ridge": (1e-7, 1e-5, 1e-3)},
}
UNITS = 500
SEED = 0
WARMUP = 50
ORDER = 2  # NVAR: monomials of order 2, as in Gauthier et al.


def reservoirpy() -> Any:
    """The ``reservoirpy`` module, or one clear error naming the extra to install."""
    try:
        import reservoirpy as rpy
        from reservoirpy import mat_gen, nodes  # noqa: F401 - the parts used below
    except ImportError:
        raise ValueError("methods nvar and esn need reservoirpy: pip install 'ckd[reservoir]'") from None
    return rpy


def min_context(method: str) -> int:
    """The shortest context the held-out selection can fit (the longest origin leaves enough rows)."""
    return 16 if method == "esn" else 2 * (max(GRIDS["nvar"]["delay"]) + 4)


# ----------------------------------------------------------------------------- NVAR

def _nvar_fit(head: np.ndarray, delay: int, ridges) -> tuple[Any, list]:
    """An NVAR run over ``head`` (its store then holds the last k inputs) and one fitted read-out
    per ridge (increments z_{t+1} - z_t on the rows t >= k - 1)."""
    nodes = reservoirpy().nodes
    nvar = nodes.NVAR(delay=delay, order=ORDER, strides=1)
    feats = nvar.run(head)
    readouts = []
    for lam in ridges:
        r = nodes.Ridge(ridge=lam)
        r.fit(feats[:-1], head[1:] - head[:-1], warmup=delay - 1)
        readouts.append(r)
    return (nvar, feats[-1]), readouts


def _nvar_roll(fitted, readout, last: np.ndarray, H: int) -> np.ndarray:
    """z^_{t+1} = z^_t + readout(phi_t), feeding each prediction back into the NVAR."""
    nvar, feat = fitted
    store = nvar.store.copy()  # the NVAR's window after the head: restored for each read-out
    out = np.empty((H, last.shape[0]))
    u = last
    for h in range(H):
        u = u + readout.step(feat)
        out[h] = u
        if h + 1 < H:
            feat = nvar.step(u)
    nvar.store = store
    return out


# ----------------------------------------------------------------------------- ESN

@functools.lru_cache(maxsize=8)
def _matrices(c: int) -> tuple[Any, Any]:
    """W0 (UNITS, UNITS), spectral radius 1 (dense LAPACK eigenvalues: deterministic), and Win0 (UNITS, c)."""
    mat_gen = reservoirpy().mat_gen
    W = mat_gen.normal(UNITS, UNITS, connectivity=0.1, seed=SEED)
    rho = float(np.abs(np.linalg.eigvals(W.toarray())).max())
    Win = mat_gen.bernoulli(UNITS, c, input_scaling=1.0, connectivity=0.1, seed=SEED + 1)
    return W / rho, Win


def _reservoir(c: int, sr: float, lr: float, scaling: float) -> Any:
    W0, Win0 = _matrices(c)
    return reservoirpy().nodes.Reservoir(W=W0 * sr, Win=Win0 * scaling, lr=lr)


def _esn_readouts(states: np.ndarray, z: np.ndarray, n: int, ridges) -> list:
    """Read-outs fitted on the first n steps: (s_t, z_t) -> z_{t+1}, t = warm-up..n-2."""
    nodes = reservoirpy().nodes
    X = np.concatenate([states[:n - 1], z[:n - 1]], 1)
    warm = min(WARMUP, n // 4)
    out = []
    for lam in ridges:
        r = nodes.Ridge(ridge=lam)
        r.fit(X, z[1:n], warmup=warm)
        out.append(r)
    return out


def _esn_roll(res, readout, state: np.ndarray, last: np.ndarray, H: int) -> np.ndarray:
    """From the state s_t after input z_t: z^_{t+1} = readout(s_t, z_t), then s_{t+1} from z^_{t+1}, ..."""
    res.state = {"out": state.copy()}
    out = np.empty((H, last.shape[0]))
    u = last
    for h in range(H):
        u = readout.step(np.concatenate([res.state["out"], u]))
        out[h] = u
        if h + 1 < H:
            res.step(u)
    return out


# ----------------------------------------------------------------------------- rollouts

def _settings(method: str, fixed: dict) -> tuple[list[dict], tuple]:
    """The grid's settings without the ridge (the read-outs of every ridge share one run) and the
    ridges; a key of ``fixed`` replaces that axis of the grid by its one value."""
    grid = {**GRIDS[method], **{k: (v,) for k, v in fixed.items() if v is not None}}
    ridges = grid["ridge"]
    keys = [k for k in grid if k != "ridge"]
    combos = [{}]
    for k in keys:
        combos = [{**c, k: v} for c in combos for v in grid[k]]
    return combos, ridges


def _rolls(method: str, z: np.ndarray, n: int, setting: dict, ridges, H: int) -> list[np.ndarray]:
    """Rollouts of H steps after z_0..z_{n-1}, one per ridge, for one setting."""
    if method == "nvar":
        fitted, readouts = _nvar_fit(z[:n], setting["delay"], ridges)
        return [_nvar_roll(fitted, r, z[n - 1], H) for r in readouts]
    res = _reservoir(z.shape[1], setting["sr"], setting["lr"], setting["input_scaling"])
    states = res.run(z)  # s_t depends on z_0..z_t only: a head's states are a prefix
    return [_esn_roll(res, r, states[n - 1], z[n - 1], H) for r in _esn_readouts(states, z, n, ridges)]


def reservoir_rollout(z: Tensor, H: int, method: str, *, ridge: float | None = None, fixed: dict | None = None,
                      diagnostics: dict | None = None) -> tuple[Tensor, dict]:
    """nvar or esn rollout of one standardised context z (T, c): (H, c), and the chosen setting.
    ``ridge`` fixes lambda and ``fixed`` any other key of ``GRIDS[method]``; the settings left
    free are chosen by held-out rollouts (``ckd.heldout``). ``diagnostics`` (a dict) receives
    ``heldout_error`` (None when nothing was chosen) and ``settings_scored``."""
    with np.errstate(all="ignore"):  # a diverging setting is scored (clipped error), not reported
        return _reservoir_rollout(z, H, method, {**(fixed or {}), "ridge": ridge}, diagnostics)


def _reservoir_rollout(z: Tensor, H: int, method: str, fixed: dict, diagnostics: dict | None
                       ) -> tuple[Tensor, dict]:
    zn = z.detach().cpu().numpy().astype(np.float64)
    T = zn.shape[0]
    combos, ridges = _settings(method, fixed)
    scores: dict[tuple, float] = {}
    if len(combos) * len(ridges) > 1:
        origins = heldout_origins(T)
        for setting in combos:
            for o in origins:
                preds = torch.tensor(np.stack(_rolls(method, zn, T - o, setting, ridges, o)))
                err = heldout_error(preds, z[T - o:].cpu())
                for lam, e in zip(ridges, err.tolist()):
                    key = tuple({**setting, "ridge": lam}.items())
                    scores[key] = scores.get(key, 0.0) + e / len(origins)
        chosen = dict(best(scores))
    else:
        chosen = {**combos[0], "ridge": ridges[0]}
    pred = _rolls(method, zn, T, {k: v for k, v in chosen.items() if k != "ridge"}, (chosen["ridge"],), H)[0]
    if diagnostics is not None:
        diagnostics.update(heldout_error=scores.get(tuple(chosen.items())), settings_scored=max(1, len(scores)))
    return torch.tensor(pred, dtype=z.dtype, device=z.device), chosen
