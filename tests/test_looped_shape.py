"""Looped models whose scores read the input tokens (``--loop-qk input``) and the CKD-shaped loop body
(``--loop-shape ckd``): ``ckd.looped`` (issue 20)."""

import pytest
import torch
from conftest import one_error, rel_err
from test_looped import ckd_of, tiny

from ckd.cli import main
from ckd.looped import ckd_shape, shape_masks
from ckd.train import EVAL, build_model, construction_setting, load_model, sample, train


@pytest.mark.parametrize("attention", ["softmax", "linear", "exp", "gaussian"])
@pytest.mark.parametrize("shape", ["free", "ckd"])
def test_construction_with_scores_on_the_input_is_ckd_at_every_loop_count(attention, shape):
    """``--init construction --loop 3 --loop-qk input`` (and ``--loop-shape ckd``): the construction's query and key
    maps composed with its embedding give the same scores, so K loops are CKD at depth K (float64, 1e-9), and the
    construction lies inside the CKD shape (no weight outside its masks)."""
    cfg = tiny(attention=attention, init="construction", dtype="float64", loop=3, layers=3, loop_qk="input",
               loop_shape=shape).validate()
    setting = construction_setting(cfg)
    model = build_model(cfg, setting)
    assert model.blocks[0].attn.query.weight.shape[1] == 2 * cfg.dim + 1  # reads e_t = (x_{t-1}, x_t, 1)
    x = sample(cfg, 6, EVAL)
    with torch.no_grad():
        for k in (1, 3, 7):
            assert rel_err(model(x, loops=k), ckd_of(x, setting, k)) < 1e-9
    params = dict(model.named_parameters())
    for name, mask in shape_masks(model).items():
        assert not params[name][~mask].any(), name


def test_random_ckd_shape_trains_inside_its_masks(tmp_path):
    """A random-init CKD-shaped loop starts with the construction's embedding and zeros outside the masks; after
    training (AdamW, weight decay on) every entry outside them is still exactly 0 and the embedding unchanged,
    while the entries inside moved; the checkpoint reloads as the same function."""
    cfg = tiny(loop=2, layers=2, loop_range=[1, 3], loop_qk="input", loop_shape="ckd", weight_decay=0.1,
               dtype="float64")
    torch.manual_seed(0)
    start = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
    d = cfg.dim
    embed = start["embed.weight"]
    assert torch.equal(embed[2 * d:3 * d, d:2 * d], torch.eye(d)) and embed.abs().sum() == 3 * d + 1
    train(cfg, tmp_path / "run", progress=False)
    _, model, _ = load_model(tmp_path / "run" / "checkpoint.pt")
    state, masks = model.state_dict(), shape_masks(model)
    assert torch.equal(state["embed.weight"], embed)
    for name, mask in masks.items():
        assert not state[name][~mask].any(), name
        assert not torch.equal(state[name][mask], start[name][mask]), name
    x = sample(cfg, 3, EVAL)
    again = build_model(cfg)
    again.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(again(x, loops=5), model(x, loops=5))


def test_refusals(tmp_path, capsys):
    for changes, words in [(dict(loop_qk="input"), "loop_qk applies to a looped model"),
                           (dict(loop=2, layers=2, loop_qk="keys"), "unknown loop_qk"),
                           (dict(loop=2, layers=2, loop_shape="ckd"), "--loop-qk input"),
                           (dict(loop=2, layers=2, loop_qk="input", loop_shape="ckd", mlp=True), "no norm, MLP"),
                           (dict(loop=2, layers=2, loop_qk="input", loop_shape="ckd", reinject=True), "--reinject"),
                           (dict(loop=2, layers=2, loop_qk="input", init="construction", tokens="raw"),
                            "augmented tokens")]:
        with pytest.raises(ValueError, match=words):
            tiny(**changes).validate()
    cfg = tiny(loop=2, layers=2)
    with pytest.raises(ValueError, match="--loop-qk input"):
        ckd_shape(build_model(cfg), init=True)
    out = tmp_path / "run"
    assert main(["train", "--task", "periodic", "--loop", "2", "--loop-shape", "ckd", "--steps", "1",
                 "--out", str(out), "--quiet"]) == 2
    one_error(capsys, "--loop-qk input")
    assert not out.exists()


def test_cli_trains_a_ckd_shaped_loop(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--task", "linear", "--attention", "linear", "--loop", "2", "--loop-qk", "input",
                 "--loop-shape", "ckd", "--steps", "3", "--batch", "4", "--length", "10", "--eval-every", "3",
                 "--out", str(out), "--quiet"]) == 0
    cfg, model, _ = load_model(out / "checkpoint.pt")
    assert (cfg.loop_qk, cfg.loop_shape, model.qk) == ("input", "ckd", "input")
