"""The shared training skeleton (`posttrain.train.loop`): callback cadence, the padding pass,
checkpoint round trips with extra models, the KL loss term, and config checks every stage shares."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from posttrain.config import load_config
from posttrain.losses.pg import kl_regularized_loss
from posttrain.train.dist import DistInfo
from posttrain.train.loop import (Run, Trainable, accumulate, due, eval_every, padding_pass, restore, save_checkpoint,
                                  save_every, train_loop)


def test_callbacks_run_in_order_with_eval_cadence_and_no_checkpoint_after_the_last_step():
    events = []
    evals = eval_every(2, 5, lambda: {"eval/x": 1.0})

    def log(done, row):
        events.append(("log", done, dict(row)))

    def save(done, row):
        if done % 2 == 0 and done < 5:
            events.append(("save", done))

    train_loop(0, 5, lambda step: {"loss": float(step)}, [evals, log, save])
    logged = [e for e in events if e[0] == "log"]
    assert [d for _, d, _ in logged] == [1, 2, 3, 4, 5]
    # evaluation joins the row before it is logged: at 2, 4 (cadence) and 5 (the end)
    assert [d for _, d, row in logged if "eval/x" in row] == [2, 4, 5]
    assert [e for e in events if e[0] == "save"] == [("save", 2), ("save", 4)]
    # the save of step 2 comes after its log line
    assert events.index(("save", 2)) == events.index(logged[1]) + 1


def test_due_and_disabled_eval():
    assert [d for d in range(1, 8) if due(d, 3, 7)] == [3, 6, 7]
    assert [d for d in range(1, 8) if due(d, 0, 7)] == [7]
    assert [d for d in range(1, 8) if due(d, 0, 7, at_end=False)] == []
    row = {}
    eval_every(1, 3, lambda: {"eval/x": 1.0}, enabled=False)(3, row)
    assert row == {}


def test_loop_resumes_at_start_step():
    seen = []
    train_loop(3, 6, lambda step: seen.append(step) or {}, [])
    assert seen == [3, 4, 5]


def test_padding_pass_adds_nothing_to_the_gradient():
    model = tiny_model(seed=1)
    model(input_ids=torch.tensor([[5, 6, 7]])).logits.sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    padding_pass(model, torch.device("cpu"), backward=True)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.grad)


def test_accumulate_pads_to_n_micro_and_calls_fn_on_each_micro_batch():
    model = tiny_model(seed=1)
    seen = []
    calls = []
    real_forward = model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs.get("input_ids", args[0] if args else None).shape)
        return real_forward(*args, **kwargs)

    model.forward = counting_forward
    accumulate(model, ["a", "b"], 4, DistInfo(), seen.append, backward=False)
    assert seen == ["a", "b"]
    assert calls == [torch.Size([1, 1])] * 2  # two padding passes of one token each


def test_checkpoint_round_trip_restores_optimizer_schedule_and_extra_models(tmp_path, tokenizer):
    from posttrain.train.optim import build_optimizer, build_scheduler

    def make(seed):
        torch.manual_seed(seed)
        policy, value = tiny_model(seed=seed), torch.nn.Linear(4, 1)
        opt = build_optimizer(policy, 1e-2, 0.0, (0.9, 0.999), 1e-8)
        sched = build_scheduler(opt, "linear", 10, 0.1, 0.0)
        vopt = torch.optim.AdamW(value.parameters(), lr=1e-2)
        return [Trainable("policy", policy, opt, sched), Trainable("value", value, vopt)]

    parts = make(0)
    for p in parts:  # one real step so that the optimizer states are non-trivial
        p.model.train()
        out = p.model(input_ids=torch.tensor([[3, 4, 5]])).logits.sum() if p.name == "policy" else \
            p.model(torch.ones(2, 4)).sum()
        out.backward()
        p.optimizer.step()
        if p.scheduler is not None:
            p.scheduler.step()

    from posttrain.recipes.sft import SFTConfig

    cfg = load_config(SFTConfig, None, ["data.paths=[x.jsonl]"])
    run = Run("test", DistInfo(), tmp_path, torch.float32)
    save_checkpoint(run, cfg, 3, tokenizer, parts)
    fresh = make(1)
    step = restore(run, tmp_path / "checkpoints" / "step_000003", fresh, total_steps=10)
    assert step == 3
    assert fresh[0].scheduler.get_last_lr() == parts[0].scheduler.get_last_lr()
    for a, b in zip(parts[1].model.state_dict().values(), fresh[1].model.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = parts[1].optimizer.state_dict()["state"], fresh[1].optimizer.state_dict()["state"]
    assert torch.equal(sa[0]["exp_avg"], sb[0]["exp_avg"])
    pa, pb = parts[0].optimizer.state_dict()["state"], fresh[0].optimizer.state_dict()["state"]
    assert torch.equal(pa[0]["exp_avg_sq"], pb[0]["exp_avg_sq"])


def test_save_every_skips_the_last_step(tmp_path):
    calls = []

    class Cfg:
        class checkpoint:
            every_steps = 2

    import posttrain.train.loop as loop

    real = loop.save_checkpoint
    loop.save_checkpoint = lambda run, cfg, step, tok, parts: calls.append(step)
    try:
        cb = save_every(None, Cfg, 4, None, [])
        for done in range(1, 5):
            cb(done, {})
    finally:
        loop.save_checkpoint = real
    assert calls == [2]


def test_kl_loss_term_by_hand():
    per_token = torch.tensor([[0.5, -1.0, 2.0]])
    lp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -2.0, -0.25]])
    assert kl_regularized_loss(per_token, lp, None, 0.0) is per_token
    # k1: d = lp - ref = [0.5, 0, -0.25]; loss + 0.1 d
    got = kl_regularized_loss(per_token, lp, ref, 0.1, "k1")
    torch.testing.assert_close(got, torch.tensor([[0.55, -1.0, 1.975]]))
    # k3: exp(-d) - 1 + d
    d = torch.tensor([0.5, 0.0, -0.25])
    want = per_token + 2.0 * (torch.exp(-d) - 1 + d)
    torch.testing.assert_close(kl_regularized_loss(per_token, lp, ref, 2.0, "k3"), want)
    with pytest.raises(ValueError, match="reference"):
        kl_regularized_loss(per_token, lp, None, 0.1)


def test_kl_placement_is_decided_in_one_place():
    from posttrain.rl.config import KLConfig

    assert (KLConfig(beta=0.05, placement="loss").loss_beta, KLConfig(beta=0.05, placement="loss").reward_beta) == \
        (0.05, 0.0)
    assert (KLConfig(beta=0.05, placement="reward").loss_beta, KLConfig(beta=0.05, placement="reward").reward_beta) \
        == (0.0, 0.05)


@pytest.mark.parametrize("module,cls", [("posttrain.recipes.sft", "SFTConfig"), ("posttrain.recipes.dpo", "DPOConfig"),
                                        ("posttrain.recipes.rm", "RMConfig"), ("posttrain.recipes.rlvr", "RLVRConfig")])
def test_max_steps_zero_is_an_error_not_no_limit(module, cls):
    import importlib

    config_cls = getattr(importlib.import_module(module), cls)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        load_config(config_cls, None, ["data.paths=[x.jsonl]", "train.max_steps=0"])
    assert load_config(config_cls, None, ["data.paths=[x.jsonl]", "train.max_steps=1"]).train.max_steps == 1
