"""``ckd reproduce icml2024`` (issue 16, item 8), quick: the whole chain -- data with a fixed x_0,
``ckd train --data``, ``ckd.compare`` at fitted per-row steps, ``ckd.fit_step``, the attention
blocks -- runs and reports what docs/results.md quotes."""

import json
import math

import numpy as np
import torch

from ckd.experiments import icml2024


def test_fit_c_recovers_a_position_normalised_step():
    t = np.arange(51, dtype=float)
    eta = np.r_[0.0, 0.5 * 5 / t[1:]]
    c, resid = icml2024.fit_c(eta)
    assert abs(c - 0.5) < 1e-12 and resid < 1e-12
    c2, resid2 = icml2024.fit_c(np.r_[0.0, np.full(50, 0.1)])  # a constant step is not c d / t
    assert resid2 > 0.3


def test_sequences_start_at_the_fixed_point_and_follow_an_orthogonal_map():
    x = icml2024.sequences(4, seed=0)
    assert x.shape == (4, icml2024.LENGTH, icml2024.DIM)
    assert torch.equal(x[:, 0], icml2024.start_point().expand(4, -1))
    norms = x.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-12)  # W orthogonal keeps |x_t| = |x_0| = 1


def test_quick_run(tmp_path):
    threads = torch.get_num_threads()
    try:
        head = icml2024.run(tmp_path, size="quick", seed=0, device="cpu")
    finally:
        torch.set_num_threads(threads)
    for suffix in ("png", "pdf", "json"):
        assert (tmp_path / f"icml2024.{suffix}").stat().st_size > 0
    data = json.loads((tmp_path / "icml2024.json").read_text())
    assert set(data["results"]["models"]) == set(icml2024.MODELS)
    # the step CKD needs to fit the truth is about d / (2 t) (SPEC §10: c ~ 0.5)
    assert 0.3 < head["c fitted to the truth (eta_t ~ c d / t, t >= 10)"] < 0.7
    for name in icml2024.MODELS:
        assert -1 <= head[f"{name}: min cosine with depth-1 CKD, t >= 10"] <= 1
        assert math.isfinite(head[f"{name}: c of its per-row step (eta_t ~ c d / t)"])
    # one Kaczmarz sweep learns W in context: far below the depth-1 error at the best per-row step
    assert head["depth inf (one Kaczmarz sweep): median error at t = 49"] < \
        0.2 * head["depth-1 CKD at the truth's per-row step: median error at t = 49"]
