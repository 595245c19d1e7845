"""``krr-or-parrot``: per sequence, krr or context parroting, whichever held-out rollouts prefer (SPEC §8).

Kernel ridge regression (``krr``) iterates a smooth fitted map; context parroting (``parrot``)
copies a stretch of the context. On quasi-periodic or non-smooth flows the copy can forecast far
longer than the map (docs/forecast.md), and which of the two is better can be read from the
context alone, by the held-out rollouts that already choose krr's settings (``ckd.heldout``):

    S_krr    = the held-out score of krr's chosen setting (the smallest over krr's grid),
    S_parrot = mean over origins o of the clipped error of parrot(z_0..z_{T-1-o}, o steps, window D)
               against z_{T-o}..z_{T-1} (the same origins, the same standardised units and clip),
    forecast = krr's rollout if S_krr < S_parrot, else parrot's rollout (ties: parrot),

with z the standardised context (``ckd.rollout.standardise``) and D = ``embed`` (parroting's
window, 5 by default). Each output is that method's own, bit for bit: krr's rollout or
``ckd.parroting.parrot`` on the raw context. In the full-state mode the choice is per sequence
(the error is the norm over all coordinates, as for krr); with ``univariate`` per coordinate.
Only context values are read. S_krr is a minimum over krr's 18 settings against one parroting
setting: the choice leans to krr when the two are close.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .heldout import heldout_error, heldout_origins
from .parroting import parrot


def parrot_heldout(z: Tensor, embed: int) -> float:
    """S_parrot of one standardised context z (T, c): the mean over ``heldout_origins(T)`` of the
    clipped held-out error of parroting (window ``embed``) fitted on z_0..z_{T-1-o}."""
    T = z.shape[0]
    origins = heldout_origins(T)
    zn = z.detach().cpu().numpy()
    total = 0.0
    for o in origins:
        pred = torch.from_numpy(parrot(zn[: T - o], o, embed)).to(z)
        total += float(heldout_error(pred[None], z[T - o:])[0]) / len(origins)
    return total


def chosen_setting(krr_setting: dict, krr_score: float | None, parrot_score: float, embed: int) -> dict:
    """The setting reported for one sequence (or coordinate): ``chosen`` ("krr" or "parrot"), both
    held-out scores, then krr's setting and parroting's window."""
    if krr_score is None:  # ckd.rollout always searches krr's grid (embed or lag): scored
        raise RuntimeError("krr-or-parrot needs krr's held-out score")
    pick = "krr" if krr_score < parrot_score else "parrot"
    return {"chosen": pick, "heldout_krr": krr_score, "heldout_parrot": parrot_score, **krr_setting,
            "parrot_embed": int(embed)}


def take_parrot(pred: Tensor, x: Tensor, settings: list, embed: int, univariate: bool) -> Tensor:
    """pred (B, H, d) of krr in x's units, with every sequence (full state) or coordinate
    (``univariate``) whose setting chose parrot replaced by ``parrot(x, H, embed)``."""
    B, H, d = pred.shape
    rows = [[s["chosen"] == "parrot" for s in per] if univariate else [per["chosen"] == "parrot"] * d
            for per in settings]
    mask = torch.tensor(rows, dtype=torch.bool, device=pred.device)  # (B, d)
    if not bool(mask.any()):
        return pred
    copy = torch.from_numpy(np.ascontiguousarray(parrot(x.detach().cpu().numpy(), H, embed))).to(pred)
    return torch.where(mask[:, None, :], copy, pred)
