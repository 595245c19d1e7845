"""Looped Transformers (issue 20): ``ckd.looped``, ``ckd train --loop``, ``--loops`` at evaluation and prediction."""

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import one_error, rel_err

import ckd
from ckd.cli import main
from ckd.descent import descend
from ckd.evaluate import evaluate
from ckd.looped import LoopedTransformer, loop_model, looped_memory_bytes, with_loops
from ckd.train import (
    EVAL,
    TrainConfig,
    build_model,
    construction_setting,
    load_checkpoint,
    load_model,
    loops_at,
    next_token_loss,
    sample,
    save_checkpoint,
    train,
)
from ckd.transformer import CausalTransformer, TransformerConfig, memory_bytes, parameter_count

TINY = dict(task="periodic", attention="softmax", batch=8, length=12, dim=2, steps=8, warmup=2, log_every=1,
            eval_every=4, eval_batch=8, checkpoint_every=3)


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**(TINY | changes))


def ckd_of(x, setting, depth):
    return descend(x, setting["kernel"], beta=setting["beta"], sigma=setting["sigma"], depth=depth,
                   step=setting["step"])


@pytest.mark.parametrize("attention", ["softmax", "linear", "exp", "gaussian"])
@pytest.mark.parametrize("loop, blocks", [(1, 1), (3, 1), (6, 1), (2, 2)])
def test_looped_construction_is_ckd_at_depth_loop_times_blocks(attention, loop, blocks):
    """``--init construction --loop L``: one constructed layer (or K) looped L times is CKD at depth L K (float64,
    1e-9), with the step the construction was tuned for; run for other loop counts it is CKD at those depths."""
    cfg = tiny(attention=attention, init="construction", dtype="float64", loop=loop, loop_blocks=blocks,
               layers=loop * blocks)
    setting = construction_setting(cfg)
    model = build_model(cfg, setting)
    assert isinstance(model, LoopedTransformer) and len(model.blocks) == blocks and model.depth == loop * blocks
    x = sample(cfg, 6, EVAL)
    with torch.no_grad():
        assert rel_err(model(x), ckd_of(x, setting, loop * blocks)) < 1e-9
        for k in (1, 2 * loop + 1):
            assert rel_err(model(x, loops=k), ckd_of(x, setting, k * blocks)) < 1e-9
        pred, hidden = model(x, return_hidden=True)
    assert len(hidden) == 1 + loop * blocks
    p = descend(x, attention, beta=setting["beta"], sigma=setting["sigma"], depth=loop * blocks,
                step=setting["step"], return_all=True)  # CKD's iterates p_0 .. p_{L K}
    d = cfg.dim
    for n, h in enumerate(hidden):  # the p slot after each block of each pass holds p_n
        assert rel_err(h[:, 1:, 3 * d:4 * d], p[n][:, 1:]) < 1e-9, n


def test_looped_raw_tokens_construction_is_ckd():
    """Raw tokens: the (exact, linear) previous-token layer runs once, then the loop."""
    cfg = tiny(attention="linear", init="construction", dtype="float64", tokens="raw", loop=4, layers=4)
    setting = construction_setting(cfg)
    model = build_model(cfg, setting)
    x = sample(cfg, 4, EVAL)
    with torch.no_grad():
        assert rel_err(model(x), ckd_of(x, setting, 4)) < 1e-9
        assert len(model(x, return_hidden=True)[1]) == 2 + 4


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_looped_construction_training_starts_at_ckd_loss(tmp_path, attention):
    """The logged step-0 losses of ``ckd train --init construction --loop 3`` (float64) are CKD's at depth 3."""
    cfg = tiny(attention=attention, init="construction", dtype="float64", loop=3, layers=3, steps=0)
    rec = train(cfg, tmp_path / "run", progress=False)
    setting = construction_setting(cfg)
    x_eval = sample(cfg, cfg.eval_batch, EVAL)
    assert rel_err(torch.tensor(rec[0]["eval_loss"], dtype=torch.float64),
                   next_token_loss(ckd_of(x_eval, setting, 3), x_eval)) < 1e-9


def test_weights_are_tied_and_random_init_scaled_to_the_looped_depth():
    """The looped model holds one block's weights (plus W_r when reinjecting, zero at init); its random init is the
    K-block model's, with the residual writes divided by sqrt(L); the global RNG is left alone by loop_model."""
    cfg = tiny(loop=5, layers=5, reinject=True)
    torch.manual_seed(3)
    looped = build_model(cfg)
    torch.manual_seed(3)
    plain = CausalTransformer(TransformerConfig(dim=2, n_layers=1, max_len=12))
    tc = plain.config
    assert sum(p.numel() for p in looped.parameters()) == parameter_count(tc) + tc.d_model * tc.d_in
    assert torch.equal(looped.reinject.weight, torch.zeros(tc.d_model, tc.d_in))
    ours, theirs = looped.state_dict(), plain.state_dict()
    for k, v in theirs.items():
        expect = v / math.sqrt(5) if k.endswith("attn.out.weight") else v
        assert torch.allclose(ours[k], expect, rtol=1e-6, atol=0), k
    before = torch.get_rng_state()
    loop_model(plain, 3)
    assert torch.equal(torch.get_rng_state(), before)
    x = sample(cfg, 2, EVAL).float()
    with torch.no_grad():  # zero W_r: the same function as without reinjection; W_r != 0 changes it
        same = loop_model(plain, 5, rescale=True)
        assert torch.allclose(looped(x), same(x), atol=1e-7)
        looped.reinject.weight.fill_(0.1)
        assert not torch.allclose(looped(x), same(x), atol=1e-3)
        assert not torch.allclose(same(x, loops=2), same(x, loops=9), atol=1e-6)


def test_loop_counts_drawn_per_step_are_seeded_and_in_range():
    cfg = tiny(loop=4, layers=4, loop_range=[2, 7])
    draws = [loops_at(cfg, s) for s in range(200)]
    assert draws == [loops_at(cfg, s) for s in range(200)] and set(draws) == set(range(2, 8))
    assert [loops_at(tiny(loop=4, layers=4, loop_range=[2, 7], seed=1), s) for s in range(200)] != draws
    assert {loops_at(tiny(loop=4, layers=4), s) for s in range(20)} == {4}


def test_resume_with_a_loop_range_is_bit_for_bit(tmp_path):
    cfg = tiny(loop=3, layers=3, loop_range=[1, 5], reinject=True)
    full = train(cfg, tmp_path / "full", progress=False)
    run = tmp_path / "run"
    train(cfg, run, stop_after=5, progress=False)
    assert train(cfg, run, resume=True, progress=False) == full
    a, b = (load_checkpoint(p / "checkpoint.pt")["model"] for p in (tmp_path / "full", run))
    assert set(a) == set(b) and "reinject.weight" in a and all(torch.equal(a[k], b[k]) for k in a)


def test_a_range_of_loops_trains_every_count(tmp_path, monkeypatch):
    """The forward pass of step s runs loops_at(cfg, s) loops (recorded by wrapping the model's forward)."""
    seen = []
    forward = LoopedTransformer.forward

    def spy(self, x, return_hidden=False, loops=None):
        seen.append(loops)  # None: evaluation, at the model's own loops
        return forward(self, x, return_hidden, loops)

    monkeypatch.setattr(LoopedTransformer, "forward", spy)
    cfg = tiny(loop=3, layers=3, loop_range=[1, 6], eval_every=100)
    train(cfg, tmp_path / "run", progress=False)
    # steps 0..S-1, then the final model's loss measured on the prompts of step S
    assert [n for n in seen if n is not None] == [loops_at(cfg, s) for s in range(cfg.steps + 1)]
    assert len(set(n for n in seen if n is not None)) > 2


def test_config_refusals():
    for changes, words in [(dict(reinject=True), "reinject applies to a looped model"),
                           (dict(loop_blocks=2), "loop_blocks applies"),
                           (dict(loop_range=[1, 2]), "loop_range applies"),
                           (dict(loop=3, layers=2), "loop x loop_blocks = 3"),
                           (dict(loop=3, layers=3, loop_range=[4, 2]), "1 <= lo <= hi"),
                           (dict(loop=3, layers=3, loop_range=[0, 2]), "1 <= lo <= hi"),
                           (dict(loop=-1), "loop must be an integer >= 0"), (dict(loop=True), "loop must be")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            tiny(**changes).validate()


def test_memory_of_the_loops():
    c = TransformerConfig(dim=3, n_layers=1)
    assert looped_memory_bytes(c, 1, 4, 16, 4, training=True) == memory_bytes(c, 4, 16, 4, training=True)
    for training, hidden in [(True, False), (False, True), (False, False)]:
        one, eight = (looped_memory_bytes(c, n, 4, 16, 4, training=training, hidden=hidden) for n in (1, 8))
        deep = memory_bytes(TransformerConfig(dim=3, n_layers=8), 4, 16, 4, training=training, hidden=hidden)
        weights = (parameter_count(TransformerConfig(dim=3, n_layers=8)) - parameter_count(c)) * 4 * (
            4 if training else 1)
        assert eight == deep - weights - 7 * 24 * 1024 and (eight > one if training or hidden else eight == one)


def cli(cfg: TrainConfig, out) -> list[str]:
    return ["train", "--task", cfg.task, "--attention", cfg.attention, "--batch", str(cfg.batch), "--length",
            str(cfg.length), "--dim", str(cfg.dim), "--steps", str(cfg.steps), "--warmup", str(cfg.warmup),
            "--eval-every", str(cfg.eval_every), "--quiet", "--out", str(out)]


def test_cli_train_evaluate_predict_with_loops(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*cli(tiny(), out), "--loop", "3", "--loop-blocks", "2", "--loop-range", "2,4", "--reinject"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["loop"], cfg["loop_blocks"], cfg["loop_range"], cfg["reinject"], cfg["layers"]) == (3, 2, [2, 4],
                                                                                                   True, 6)
    capsys.readouterr()
    result = evaluate(out / "checkpoint.pt", sequences=4, loops=5)
    assert result["config"]["loop"] == 5 and result["config"]["layers"] == 10
    assert "ckd depth 10" in result["summary"] and len(result["probe"]) == 11
    np.save(tmp_path / "x.npy", sample(tiny(), 2, EVAL).numpy())
    assert main(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy"), "--backend",
                 f"checkpoint:{out / 'checkpoint.pt'}", "--loops", "7"]) == 0
    _, model, _ = load_model(out / "checkpoint.pt")
    with torch.no_grad():
        expect = model.double()(torch.from_numpy(np.load(tmp_path / "x.npy")), loops=7)
    assert np.allclose(np.load(tmp_path / "p.npy"), expect.numpy(), rtol=1e-12, atol=1e-12)
    assert not np.allclose(ckd.predict(np.load(tmp_path / "x.npy"), backend=f"checkpoint:{out / 'checkpoint.pt'}"),
                           expect.numpy())  # the trained 3 loops differ from 7
    assert main(["evaluate", str(out), "--loops", "2", "--sequences", "4"]) == 0
    assert "6 layers" not in capsys.readouterr().out  # 2 loops x 2 blocks = 4 layers


@pytest.mark.parametrize("args, words", [
    (["--reinject"], "reinject applies to a looped model"), (["--loop", "3", "--layers", "2"], "loop x loop_blocks"),
    (["--loop", "2", "--loop-range", "3"], "LO,HI"), (["--loop", "2", "--loop-range", "0,3"], "1 <= LO <= HI"),
    (["--loop", "0"], "--loop")])
def test_cli_train_refusals(tmp_path, capsys, args, words):
    out = tmp_path / "run"
    assert main([*cli(tiny(), out), *args]) == 2
    one_error(capsys, words)
    assert not out.exists()


def test_loops_refused_where_they_do_not_apply(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(steps=1), out, progress=False)
    assert main(["evaluate", str(out), "--loops", "4", "--sequences", "4"]) == 2
    one_error(capsys, "not looped")
    np.save(tmp_path / "x.npy", sample(tiny(), 1, EVAL)[0].numpy())
    for backend in ("descent", f"checkpoint:{out / 'checkpoint.pt'}"):
        assert main(["predict", str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.npy"), "--backend", backend,
                     "--loops", "2"]) == 2
        one_error(capsys, "loop")
    assert not (tmp_path / "p.npy").exists()
    with pytest.raises(ValueError, match="not looped"):
        with_loops(tiny(), CausalTransformer(TransformerConfig(dim=2, n_layers=1)), 3)
    assert main(["evaluate", "--pretrained", "periodic-softmax-2", "--loops", "3"]) == 2
    one_error(capsys, "not looped")


def test_a_checkpoint_claiming_a_billion_loops_is_refused_by_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(steps=1, loop=2, layers=2), out, progress=False)
    state = load_checkpoint(out / "checkpoint.pt")
    state["config"] |= {"loop": 10**9, "layers": 10**9}
    save_checkpoint(tmp_path / "big.pt", state)
    assert main(["evaluate", str(tmp_path / "big.pt"), "--sequences", "4"]) == 2
    one_error(capsys, "needs about")
    shutil.rmtree(out)


def test_training_loss_rows_and_every_pass():
    """``training_loss``: rows t >= loss_from only (the last row alone at length - 2); loop_loss "every": the mean of
    the losses after every pass; the default is ``next_token_loss`` bit for bit."""
    from ckd.train import rows_loss, training_loss

    x = sample(tiny(), 4, EVAL).float()
    torch.manual_seed(0)
    plain = build_model(tiny(layers=1))
    with torch.no_grad():
        pred = plain(x)
        assert torch.equal(training_loss(tiny(layers=1), plain, x, 0), next_token_loss(pred, x))
        last = training_loss(tiny(layers=1, loss_from=10), plain, x, 0)
        assert torch.allclose(last, (pred[:, 10] - x[:, 11]).square().sum(-1).mean())
        assert torch.allclose(training_loss(tiny(layers=1, loss_from=4), plain, x, 0),
                              (pred[:, 4:-1] - x[:, 5:]).square().sum(-1).mean())
        cfg = tiny(loop=3, layers=3, loop_loss="every", loss_from=2)
        looped = build_model(cfg)
        expect = sum(rows_loss(looped(x, loops=k), x, 2) for k in (1, 2, 3)) / 3
        assert torch.allclose(training_loss(cfg, looped, x, 0), expect, rtol=1e-6)
        window = replace(cfg, loop_window=2)  # the last two passes of three
        expect = sum(rows_loss(looped(x, loops=k), x, 2) for k in (2, 3)) / 2
        assert torch.allclose(training_loss(window, looped, x, 0), expect, rtol=1e-6)
        assert torch.equal(training_loss(replace(cfg, loop_window=3), looped, x, 0), training_loss(cfg, looped, x, 0))
        assert torch.allclose(training_loss(replace(cfg, loop_window=9), looped, x, 0),
                              training_loss(cfg, looped, x, 0))  # a window wider than the passes: every pass
    for changes, words in [(dict(loop=2, layers=2, loop_window=2), "loop_window applies"),
                           (dict(loop=2, layers=2, loop_loss="every", loop_window=-1), "loop_window must be"),
                           (dict(loop=2, layers=2, loop_loss="every", loop_window=True), "loop_window must be"),
                           (dict(loss_from=11), "loss_from must be an integer in 1 .. length - 2 = 10"),
                           (dict(loss_from=0), "loss_from"), (dict(loop_loss="every"), "loop_loss applies"),
                           (dict(loop=2, layers=2, loop_loss="all"), "unknown loop_loss")]:
        with pytest.raises(ValueError, match=words):
            tiny(**changes).validate()


def test_row_loss_log_is_the_mean_log_squared_error(tmp_path, capsys):
    """row_loss "log": the mean over rows t >= loss_from of log(|e|^2 + 1e-12), in ``training_loss`` (plain and
    every pass) and in the L-BFGS objective; "mse" stays the squared error; unknown kinds are refused, and the CLI
    records the flag."""
    from ckd.train import expected_loss, training_loss

    cfg = tiny(dtype="float64", loss_from=3, row_loss="log").validate()
    x = sample(cfg, 4, EVAL)
    torch.manual_seed(0)
    plain = build_model(replace(cfg, layers=1))
    with torch.no_grad():
        e = (plain(x)[:, 3:-1] - x[:, 4:]).square().sum(-1)
        want = torch.log(e + 1e-12).mean()
        assert rel_err(training_loss(replace(cfg, layers=1), plain, x, 0), want) <= 1e-12
        assert rel_err(expected_loss(replace(cfg, layers=1), plain, x), want) <= 1e-12
        assert rel_err(training_loss(replace(cfg, layers=1, row_loss="mse"), plain, x, 0), e.mean()) <= 1e-12
        loop = replace(cfg, loop=2, layers=2, loop_loss="every")
        looped = build_model(loop)
        per = [torch.log((looped(x, loops=k)[:, 3:-1] - x[:, 4:]).square().sum(-1) + 1e-12).mean() for k in (1, 2)]
        assert rel_err(training_loss(loop, looped, x, 0), sum(per) / 2) <= 1e-12
    with pytest.raises(ValueError, match="unknown row_loss 'l1'"):
        tiny(row_loss="l1").validate()
    out = tmp_path / "run"
    assert main([*cli(tiny(steps=3), out), "--row-loss", "log"]) == 0
    assert json.loads((out / "config.json").read_text())["row_loss"] == "log"
    assert math.isfinite(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["loss"])
    assert main([*cli(tiny(), tmp_path / "bad"), "--row-loss", "l1"]) == 2
    one_error(capsys, "invalid choice")


def test_loss_from_trains_and_is_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*cli(tiny(steps=3), out), "--loss-from", "5", "--loop", "2", "--loop-loss", "every"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["loss_from"], cfg["loop_loss"], cfg["loop_window"]) == (5, "every", 0)
    assert main([*cli(tiny(steps=3), tmp_path / "w"), "--loop", "3", "--loop-loss", "every", "--loop-window", "2"]) == 0
    assert json.loads((tmp_path / "w" / "config.json").read_text())["loop_window"] == 2
    assert main([*cli(tiny(), tmp_path / "bad"), "--loss-from", "11"]) == 2
    one_error(capsys, "loss_from")


def test_reproduce_looped_quick(tmp_path):
    """``ckd reproduce looped --quick``: figures and numbers written; CKD run at depth K with the step of depth L
    is the construction looped K times, so at K = L it equals CKD tuned at L; the construction-init model's first
    pass still holds CKD's iterate p_1 closely after a few fine-tuning steps, unlike the random-init one."""
    from ckd.experiments import EXPERIMENTS, looped

    assert EXPERIMENTS["looped"] == "ckd.experiments.looped"
    threads = torch.get_num_threads()
    try:
        assert main(["reproduce", "looped", "--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    for name in ("looped.png", "looped.pdf", "looped-vs-t.png", "looped.json"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "looped.json").read_text())
    L = looped.QUICK["loops"]
    assert data["config"]["loops"] == looped.loop_counts(L) == [1, 2, 4, 8, 16]
    e = data["results"]["periodic/softmax"]
    assert e["ckd_step_of_L"][str(L)] == e["ckd_tuned"][str(L)]
    runs = e["runs"]
    assert runs["random"]["config"]["loop_range"] == [1, 4] and runs["random"]["config"]["loop_loss"] == "every"
    assert [r["ckd_depth"] for r in runs["construction"]["probe"]] == list(range(4 * L + 1))
    assert runs["construction"]["probe"][1]["probe_to_ckd"] < 0.2 < runs["random"]["probe"][1]["probe_to_ckd"]
    assert looped.falls_until({1: {"err_last": 1}, 2: {"err_last": 0.5}, 4: {"err_last": 0.4},
                               8: {"err_last": 0.6}}, 1) == 4
