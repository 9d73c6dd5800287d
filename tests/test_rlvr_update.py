"""Policy/value updates on a tiny model: the trainer's log-probs match the engine's, the engine
sees updated weights, the gradient is the hand-written on-policy gradient, and splitting a
minibatch into micro-batches does not change the update."""

import copy

import pytest
import torch

from conftest import tiny_model
from posttrain.rl.buffer import TrainSamples, per_sample_to_tokens
from posttrain.rl.update import (PassSettings, PolicyLoss, policy_update, response_logprobs, response_values,
                                 score_logprobs, value_update)
from posttrain.generation import Engine, SamplingParams


@pytest.fixture(scope="module")
def rollout(tokenizer):
    model = tiny_model("llama", seed=1)
    engine = Engine(model, tokenizer)
    prompts = [[1, 100, 200, 300], [1, 400, 500]]
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=6, temperature=1.0, n=2, seed=3))
    samples = TrainSamples([o.prompt_token_ids for o in outs], [o.token_ids for o in outs])
    samples.set("gen_logprobs", [torch.tensor(o.logprobs) for o in outs])
    samples.set("advantages", per_sample_to_tokens(torch.tensor([1.0, -1.0, 0.5, -0.5]), samples.response_lengths))
    return model, engine, samples


def test_trainer_logprobs_match_the_engine(rollout):
    model, _, samples = rollout
    lp = score_logprobs(model, samples, micro_batch_tokens=64, temperature=1.0, device="cpu")
    diff = max((a - b).abs().max().item() for a, b in zip(lp, samples.token["gen_logprobs"]))
    assert diff < 1e-4


def test_on_policy_gradient_is_the_reinforce_gradient_and_split_invariant(rollout):
    base, _, samples = rollout
    loss = PolicyLoss(eps_low=0.2, eps_high=0.28, tis_cap=2.0, kl_beta=0.0)
    models = {}
    for budget in (4096, 12):  # one micro-batch vs one sample per micro-batch
        m = copy.deepcopy(base).train()
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        stats = policy_update(m, opt, samples, loss, PassSettings(micro_batch_tokens=budget, max_grad_norm=0), "cpu")
        models[budget] = (m, stats)
    # hand-written: on-policy the ratio is 1 and nothing is clipped, so the loss is −Σ A_t·log π(y_t) / N
    m = copy.deepcopy(base).train()
    lp, _ = response_logprobs(m, samples.pack(list(range(len(samples)))), 1.0)
    adv = samples.cat("advantages", list(range(len(samples))))
    manual = -(adv * lp).sum() / lp.numel()
    manual.backward()
    n_tokens = sum(samples.response_lengths)
    expected_objective = -(adv.sum() / n_tokens).item()  # the value of the surrogate at ratio 1
    for budget, (trained, stats) in models.items():
        assert stats["loss/policy"] == pytest.approx(expected_objective, abs=1e-6)
        assert stats["clip_frac"] == 0.0 and stats["logprob_diff/mean_abs"] < 1e-4
        for (name, p0), p1, p in zip(base.named_parameters(), trained.parameters(), m.parameters()):
            torch.testing.assert_close(p0 - p1, p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_engine_generates_with_the_updated_weights(rollout, tokenizer):
    base, _, samples = rollout
    model = copy.deepcopy(base)
    engine = Engine(model, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=True)
    policy_update(model.train(), opt, samples, PolicyLoss(), PassSettings(), "cpu")
    outs = engine.generate([[1, 100, 200, 300]], SamplingParams(max_new_tokens=6, n=2, seed=5))
    after = TrainSamples([o.prompt_token_ids for o in outs], [o.token_ids for o in outs])
    lp = score_logprobs(model, after, 4096, 1.0, "cpu")
    stale = score_logprobs(base, after, 4096, 1.0, "cpu")
    new_diff = max((a - torch.tensor(o.logprobs)).abs().max().item() for a, o in zip(lp, outs))
    old_diff = max((a - torch.tensor(o.logprobs)).abs().max().item() for a, o in zip(stale, outs))
    assert new_diff < 1e-4 < old_diff  # the engine used the new weights, not the old ones


def test_kl_loss_term_and_several_passes(rollout):
    base, _, samples = rollout
    policy, ref = copy.deepcopy(base).train(), copy.deepcopy(base)
    samples = copy.deepcopy(samples)
    samples.set("ref_logprobs", score_logprobs(ref, samples, 4096, 1.0, "cpu"))
    samples.set("old_logprobs", score_logprobs(policy, samples, 4096, 1.0, "cpu"))
    opt = torch.optim.AdamW(policy.parameters(), lr=5e-2)
    passes = PassSettings(epochs=3, num_minibatches=2, micro_batch_tokens=4096, seed=0)
    stats = policy_update(policy, opt, samples, PolicyLoss(kl_beta=0.1, kl_estimator="k3"), passes, "cpu")
    assert stats["optimizer_steps"] == 6
    assert stats["kl/k3"] == pytest.approx(0.0, abs=1e-7)  # first pass: the policy is the reference
    assert stats["approx_kl_old"] > 0 and stats["clip_frac"] > 0  # later passes moved off π_old
    after = score_logprobs(policy, samples, 4096, 1.0, "cpu")
    moved = torch.cat(after) - torch.cat(samples.token["old_logprobs"])
    adv = samples.cat("advantages", list(range(len(samples))))
    assert (moved * adv).sum() > 0  # probability moved towards positive-advantage tokens


def test_value_head_reads_every_response_position_and_learns(rollout, tokenizer, tmp_path):
    from posttrain.reward_model import load_reward_model

    base, _, samples = rollout
    base.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    vm = load_reward_model(str(tmp_path / "m"), tokenizer).train()
    batch = samples.pack([0, 1])
    values = response_values(vm, batch)
    assert values.shape == (samples.response_lengths[0] + samples.response_lengths[1],)
    samples = copy.deepcopy(samples)
    with torch.no_grad():
        old = [response_values(vm, samples.pack([i])) for i in range(len(samples))]
    samples.set("old_values", old)
    samples.set("returns", [torch.full((n,), 3.0) for n in samples.response_lengths])
    opt = torch.optim.AdamW(vm.parameters(), lr=1e-2)
    first = value_update(vm, opt, samples, clip_range=10.0, coef=0.1, passes=PassSettings(), device="cpu")
    for _ in range(5):
        last = value_update(vm, opt, samples, clip_range=10.0, coef=0.1, passes=PassSettings(), device="cpu")
    assert last["loss/value"] < first["loss/value"]


def test_shared_prompt_rows_give_the_same_logprobs_and_gradients(rollout):
    """With varlen attention the responses of one prompt share a single copy of it in the packed
    row; log-probs and the update must equal the plain one-document-per-sample packing."""
    from posttrain.rl.update import _micro_batches
    from posttrain.train.varlen_attn import register

    base, _, rollout_samples = rollout
    base = copy.deepcopy(base)
    base.set_attn_implementation(register())
    # unequal response lengths inside a group exercise the padded batch of responses, the last
    # group (equal lengths) the copy-free view
    p1, p2, p3 = [1, 100, 200, 300], [1, 400, 500], [1, 600, 700, 800, 900]
    resp = [[5, 6, 7, 8, 9], [10, 11], [12], [13, 14, 15], [16, 17, 18, 19, 20, 21, 22], [23, 24, 25], [26, 27, 28]]
    samples = TrainSamples([p1, p1, p1, p2, p2, p3, p3], resp)
    samples.set("gen_logprobs", [torch.zeros(len(r)) for r in resp])
    samples.set("advantages", per_sample_to_tokens(torch.tensor([1.0, -0.5, 0.3, -1.0, 0.7, 0.2, -0.4]),
                                                   samples.response_lengths))
    row = samples.pack_grouped(list(range(7)))
    assert row.input_ids.shape[1] == len(p1) + len(p2) + len(p3) + sum(map(len, resp))  # each prompt once
    for share in (False, True):
        lp = score_logprobs(base, samples, 4096, 1.0, "cpu", share_prompts=share)
        if not share:
            plain = lp
    for a, b in zip(plain, lp):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the engine's log-probs agree with the shared rows too
    engine_lp = score_logprobs(base, rollout_samples, 4096, 1.0, "cpu")
    diff = max((a - b).abs().max().item() for a, b in zip(engine_lp, rollout_samples.token["gen_logprobs"]))
    assert diff < 1e-4
    # a shared micro-batch costs each prompt once: p1 and its responses 4+5+2+1 = 12, sample 3 adds
    # p2 and its response (3+3), sample 4 its response only (7) -> 25 > 20; plain rows cost 9,6,5,6,10
    assert list(_micro_batches(samples, list(range(5)), 20, share=True)) == [[0, 1, 2, 3], [4]]
    assert list(_micro_batches(samples, list(range(5)), 20, share=False)) == [[0, 1, 2], [3, 4]]
    assert list(_micro_batches(samples, [5, 6], 11, share=True)) == [[5, 6]]  # 5 + 3 + 3
    loss = PolicyLoss(eps_low=0.2, eps_high=0.28, tis_cap=None, kl_beta=0.0)
    grads = {}
    for share, budget in ((False, 4096), (True, 4096), (True, 10)):  # 10: a group split over micro-batches
        m = copy.deepcopy(base).train()
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        stats = policy_update(m, opt, samples, loss, PassSettings(micro_batch_tokens=budget, max_grad_norm=0,
                                                                  share_prompts=share), "cpu")
        grads[(share, budget)] = ([p0 - p1 for p0, p1 in zip(base.parameters(), m.parameters())], stats)
    ref_delta, ref_stats = grads[(False, 4096)]
    for key, (delta, stats) in grads.items():
        assert stats["loss/policy"] == pytest.approx(ref_stats["loss/policy"], abs=1e-6), key
        assert stats["entropy"] == pytest.approx(ref_stats["entropy"], rel=1e-5), key
        for a, b in zip(delta, ref_delta):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
