"""A second training stage: full-batch L-BFGS after the AdamW steps (``TrainConfig.lbfgs_steps``).

AdamW on fresh mini-batches stops at the noise floor of its gradient estimates; on a tiny, ill-conditioned
model (the CKD-shaped loop: 129 weights whose gains must be exact) that floor can be far above the model's best.
This stage minimises the *expected* training objective (``expected_loss``: the mean of ``training_loss`` over
the loop counts a step may draw) on one fixed batch of ``lbfgs_batch`` prompts (seed stream ``LBFGS``) with
``torch.optim.LBFGS`` (strong Wolfe line search, history 50) in float64, for at most ``lbfgs_steps`` iterations
(calls of ``CHUNK`` iterations, each with torch's default budget of 1.25x as many loss evaluations: a call whose
line searches use the budget up stops early); the model is cast back to the run's dtype afterwards. Every
iterate of a strong-Wolfe line search lowers the objective (sufficient decrease), so the stage never raises the
full-batch loss; the loss on fresh prompts may rise (a fixed batch can be overfitted: docs/results.md, "A second
stage: full-batch L-BFGS"). Gradient hooks (a CKD-shaped loop's masks) apply: L-BFGS's directions are
combinations of masked gradients, so masked entries stay 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import TrainConfig, rows_loss, training_loss

LBFGS = 4  # the seed stream of the stage's fixed prompts (after TRAIN, TUNE, EVAL, TEST = 0..3; LOOPS is 5)
CHUNK = 10  # iterations per optimizer.step call (the progress and the non-finite check between chunks)


def expected_loss(cfg: TrainConfig, net: nn.Module, x: Tensor) -> Tensor:
    """The training objective of ``training_loss`` averaged over the loop count k ~ uniform lo..hi of
    ``loop_range`` (exactly: one forward of hi passes read out after every pass; the loss after pass k is the
    loss of a k-loop forward); a model with a fixed loop count, or not looped: ``training_loss`` itself.

    loop_loss "last": mean_k L(pass k); "every": mean_k mean_{j in window(k)} L(pass j), window(k) the last
    ``loop_window`` passes of k (all k when 0)."""
    if not cfg.loop or cfg.loop_range is None:
        return training_loss(cfg, net, x, 0)
    lo, hi = cfg.loop_range
    t0 = min(cfg.loss_from, x.shape[1] - 2)
    losses = torch.stack([rows_loss(p, x, t0, cfg.row_loss) for p in net(x, loops=hi, every_pass=True)])
    if cfg.loop_loss == "last":
        return losses[lo - 1:].mean()
    w = cfg.loop_window
    return torch.stack([losses[(k - w if w and k > w else 0):k].mean() for k in range(lo, hi + 1)]).mean()


def refine(cfg: TrainConfig, model: nn.Module, x: Tensor, *, on_chunk=None) -> list[float]:
    """Run ``cfg.lbfgs_steps`` L-BFGS iterations on ``expected_loss(cfg, model, x)`` in float64, in place
    (the model is returned to its dtype); returns the objective before and after every chunk of ``CHUNK``
    iterations (non-increasing). Raises ``FloatingPointError`` (the model left as it was) if the objective
    or the weights stop being finite. ``on_chunk(iterations_done, loss)``: called after every chunk."""
    dtype = next(model.parameters()).dtype
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.double().train()
    x = x.double()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=CHUNK, history_size=50, line_search_fn="strong_wolfe",
                            tolerance_grad=0.0, tolerance_change=0.0)

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=False)
        loss = expected_loss(cfg, model, x)
        loss.backward()
        return loss

    with torch.no_grad():
        history = [float(expected_loss(cfg, model, x))]
    done = 0
    try:
        while done < cfg.lbfgs_steps:
            opt.param_groups[0]["max_iter"] = min(CHUNK, cfg.lbfgs_steps - done)
            opt.param_groups[0]["max_eval"] = opt.param_groups[0]["max_iter"] * 5 // 4
            opt.step(closure)
            done += opt.param_groups[0]["max_iter"]
            with torch.no_grad():
                loss = float(expected_loss(cfg, model, x))
            if not (math.isfinite(loss) and all(torch.isfinite(p).all() for p in params)):
                raise FloatingPointError(f"the L-BFGS stage's loss ({loss}) or weights are not finite after "
                                         f"{done} iterations")
            history.append(loss)
            if on_chunk is not None:
                on_chunk(done, loss)
    except FloatingPointError:
        model.load_state_dict(saved)
        raise
    finally:
        model.to(dtype).train(was_training)
    return history


def check_lbfgs_memory(cfg: TrainConfig, device: torch.device | str = "cpu") -> None:
    """Refuse (one-line ``ValueError``) an L-BFGS stage that cannot fit: the model's training bytes
    (``model_bytes``) for ``lbfgs_batch`` prompts in float64, its prompts, and L-BFGS's history (100 vectors of
    the weights' size, about)."""
    if not cfg.lbfgs_steps:
        return
    from ..validation import check_fits
    from .config import model_bytes, transformer_config

    c = transformer_config(cfg)
    weights = c.n_layers * 4 * c.d_model ** 2 + 2 * c.d_model * (c.d_in + cfg.dim)  # about, without an MLP
    need = (model_bytes(cfg, cfg.lbfgs_batch, cfg.length, 8, training=True)
            + cfg.lbfgs_batch * cfg.length * cfg.dim * 8 * 2 + 104 * weights * 8)
    check_fits(need, f"the L-BFGS stage (--lbfgs-batch {cfg.lbfgs_batch}, float64)",
               "use a smaller --lbfgs-batch", device)
