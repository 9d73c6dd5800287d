"""The RL algorithms beyond GRPO/PPO (rl/algorithms.py): each advantage and loss function on tiny
tensors with values worked out by hand, the loss normalisers, dynamic sampling and the overlong
penalty, the config rules, and one short `posttrain rlvr` run per algorithm on a tiny model."""

import copy
import json
import math
import re

import pytest
import torch

from conftest import tiny_model
from posttrain.config import load_config
from posttrain.losses.gspo import gspo_loss
from posttrain.losses.pg import sequence_level_loss
from posttrain.rl.advantages import (dr_grpo_advantages, ppo_token_rewards, reinforce_pp_advantages,
                                     rloo_advantages, select_groups)
from posttrain.rl.buffer import TrainSamples, per_sample_to_tokens
from posttrain.rl.rewards import overlong_penalty
from posttrain.rl.rollouts import RolloutBatch, refill_groups, refill_indices, step_seed
from posttrain.rl.update import PassSettings, PolicyLoss, loss_normaliser, policy_update, response_logprobs
from posttrain.train.metrics import read_metrics


# ---------------------------------------------------------------- advantages

def test_rloo_leave_one_out_baseline_by_hand():
    # group 1 (4, 2, 0, 2), sum 8: A_0 = 4 - (8-4)/3 = 8/3, A_1 = 2 - 6/3 = 0, A_2 = 0 - 8/3, A_3 = 0
    # group 2 constant (1, 1, 1, 1): exactly 0, flagged constant
    ga = rloo_advantages(torch.tensor([4.0, 2.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0]), 4)
    assert ga.advantages.tolist() == pytest.approx([8 / 3, 0.0, -8 / 3, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert ga.constant_groups.tolist() == [False, True]
    assert select_groups(ga).keep == [0, 1, 2, 3]
    # = k/(k-1)·(r - mean): 4/3 · (4 - 2) = 8/3
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.tensor([1.0, 2.0]), 1)


def test_dr_grpo_has_no_std_scaling():
    # (4, 2, 0, 2): mean 2 -> (2, 0, -2, 0); GRPO divides by the population std sqrt((4+0+4+0)/4) = √2
    ga = dr_grpo_advantages(torch.tensor([4.0, 2.0, 0.0, 2.0]), 4)
    assert ga.advantages.tolist() == [2.0, 0.0, -2.0, 0.0]
    from posttrain.losses.pg import grpo_advantages

    assert grpo_advantages(torch.tensor([4.0, 2.0, 0.0, 2.0]), 4).advantages.tolist() == pytest.approx(
        [math.sqrt(2), 0.0, -math.sqrt(2), 0.0], abs=1e-6)


def test_reinforce_pp_returns_with_kl_normalised_over_the_batch():
    # sample A (2 tokens): k1 = old - ref = (0.5, 0), β = 0.2 -> rewards (-0.1, 0) + reward 1 on the last
    #   = (-0.1, 1.0); returns (γ = 1) (0.9, 1.0)
    # sample B (3 tokens, reward 0, no KL): returns (0, 0, 0)
    # all 5 tokens (0.9, 1, 0, 0, 0): mean 0.38, var (0.52² + 0.62² + 3·0.38²)/5 = 1.088/5 = 0.2176
    old = [torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0, -1.0])]
    ref = [torch.tensor([-1.5, -2.0]), torch.tensor([-1.0, -1.0, -1.0])]
    r = ppo_token_rewards(torch.tensor([1.0, 0.0]), [2, 3], old, ref, beta=0.2, estimator="k1")
    assert r[0].tolist() == pytest.approx([-0.1, 1.0])
    adv = reinforce_pp_advantages(r)
    std = math.sqrt(0.2176)
    assert adv[0].tolist() == pytest.approx([0.52 / std, 0.62 / std], abs=1e-5)
    assert adv[1].tolist() == pytest.approx([-0.38 / std] * 3, abs=1e-5)
    # a loss mask (tool output) takes a token out of the statistics: A (1, 1) -> returns (1, 1),
    # B's middle token masked: tokens (1, 1, 0, 0) -> mean 0.5, std 0.5 -> (1, 1) and (-1, [0], -1)
    r = [torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0, 0.0])]
    adv = reinforce_pp_advantages(r, masks=[torch.ones(2), torch.tensor([1.0, 0.0, 1.0])])
    assert adv[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([-1.0, 0.0, -1.0], abs=1e-6)


# ---------------------------------------------------------------- GSPO

def test_gspo_sequence_ratio_clipping_and_gradient_by_hand():
    old = torch.zeros(2, 3)
    lp = torch.tensor([[0.1, 0.2, 0.3], [-0.6, 0.0, 5.0]], requires_grad=True)  # row 2: last token is padding
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    out = gspo_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    # seq 1: s = exp(mean(0.1, 0.2, 0.3)) = e^0.2 = 1.22140 < 1.28: unclipped, L = -1.22140
    # seq 2: s = exp(mean(-0.6, 0)) = e^-0.3 = 0.74082; A = -1: max(0.74082, clip(s)=0.8) = 0.8, clipped
    s1 = math.exp(0.2)
    assert out.losses[0].tolist() == pytest.approx([-s1] * 3, abs=1e-6)
    assert out.losses[1].tolist() == pytest.approx([0.8, 0.8, 0.0], abs=1e-6)
    assert out.clipped.tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    total = sequence_level_loss(out.losses, mask, 2)
    assert total.item() == pytest.approx((-s1 + 0.8) / 2, abs=1e-6)
    total.backward()
    # dL/dlp_t = -A·s·(1/|y|)/2 on seq 1's tokens; the clipped sequence gets no gradient
    assert lp.grad[0].tolist() == pytest.approx([-s1 / 3 / 2] * 3, abs=1e-6)
    assert lp.grad[1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"advantages must be \[B\]"):
        gspo_loss(lp, old, torch.ones(2, 3), mask)


# ---------------------------------------------------------------- normalisers and the update

def _samples(lengths, mask=None):
    s = TrainSamples([[1, 2]] * len(lengths), [list(range(10, 10 + n)) for n in lengths])
    if mask is not None:
        s.set("loss_mask", [torch.tensor(m, dtype=torch.float32) for m in mask])
    return s


def test_loss_normalisers():
    s = _samples([3, 5])
    assert loss_normaliser(PolicyLoss(), s, [0, 1]) == 8  # tokens
    assert loss_normaliser(PolicyLoss(normaliser="constant", constant_length=16), s, [0, 1]) == 32  # 2 × 16
    assert loss_normaliser(PolicyLoss(ratio="sequence", normaliser="sequences", tis_cap=None), s, [0, 1]) == 2
    assert loss_normaliser(PolicyLoss(), s, [0, 1], world_size=2) == 4
    masked = _samples([3, 5], [[1, 0, 1], [1, 1, 1, 1, 1]])
    assert loss_normaliser(PolicyLoss(), masked, [0, 1]) == 7  # tool tokens are not counted
    with pytest.raises(ValueError, match="sequence-level ratio"):
        PolicyLoss(ratio="sequence", normaliser="tokens")
    with pytest.raises(ValueError, match="constant_length"):
        PolicyLoss(normaliser="constant")


@pytest.fixture(scope="module")
def rollout(tokenizer):
    from posttrain.generation import Engine, SamplingParams

    model = tiny_model("llama", seed=1)
    outs = Engine(model, tokenizer).generate([[1, 100, 200, 300], [1, 400, 500]],
                                             SamplingParams(max_new_tokens=6, temperature=1.0, n=2, seed=3))
    samples = TrainSamples([o.prompt_token_ids for o in outs], [o.token_ids for o in outs])
    samples.set("gen_logprobs", [torch.tensor(o.logprobs) for o in outs])
    samples.set("advantages", per_sample_to_tokens(torch.tensor([1.0, -1.0, 0.5, -0.5]), samples.response_lengths))
    return model, samples


def _update_delta(base, samples, loss, budget):
    m = copy.deepcopy(base).train()
    stats = policy_update(m, torch.optim.SGD(m.parameters(), lr=1.0), samples, loss,
                          PassSettings(micro_batch_tokens=budget, max_grad_norm=0), "cpu")
    return [p0 - p1 for p0, p1 in zip(base.parameters(), m.parameters())], stats


@pytest.mark.parametrize("kind", ["dr_grpo", "gspo", "masked"])
def test_on_policy_gradients_match_the_hand_written_objective(rollout, kind):
    """On-policy (ratio 1, nothing clipped) the update is the gradient of a REINFORCE objective:
    Dr. GRPO -Σ_t A·log π / (N·L); GSPO -Σ_i A_i·mean_t log π / N; with a loss mask, tokens of
    mask 0 drop out of the sum and of the token count. Same for any micro-batch split."""
    base, samples = rollout
    samples = copy.deepcopy(samples)
    lengths = samples.response_lengths
    if kind == "dr_grpo":
        loss = PolicyLoss(tis_cap=None, normaliser="constant", constant_length=6)
    elif kind == "gspo":
        loss = PolicyLoss(tis_cap=None, ratio="sequence", normaliser="sequences")
    else:
        loss = PolicyLoss(tis_cap=None)
        samples.set("loss_mask", [torch.tensor([float(t % 2 == 0) for t in range(n)]) for n in lengths])
    m = copy.deepcopy(base).train()
    lp, _ = response_logprobs(m, samples.pack(list(range(len(samples)))), 1.0)
    adv = samples.cat("advantages", list(range(len(samples))))
    # `manual` has the update's gradient; `value` is the surrogate's value at ratio 1 (what is logged)
    if kind == "dr_grpo":
        manual, value = -(adv * lp).sum() / (len(samples) * 6), -adv.sum() / (len(samples) * 6)
    elif kind == "gspo":
        seq_adv = torch.stack([a[0] for a in samples.token["advantages"]])
        manual = -sum(a * x.mean() for a, x in zip(seq_adv, lp.split(lengths))) / len(samples)
        value = -seq_adv.sum() / len(samples)
    else:
        mask = samples.cat("loss_mask", list(range(len(samples))))
        manual, value = -(adv * lp * mask).sum() / mask.sum(), -(adv * mask).sum() / mask.sum()
    manual.backward()
    for budget in (4096, 12):
        delta, stats = _update_delta(base, samples, loss, budget)
        assert stats["loss/policy"] == pytest.approx(value.item(), abs=1e-6)
        assert stats["clip_frac"] == 0.0
        for (name, _), d, p in zip(base.named_parameters(), delta, m.parameters()):
            torch.testing.assert_close(d, p.grad, atol=1e-6, rtol=1e-4, msg=name)


# ---------------------------------------------------------------- DAPO: overlong penalty, dynamic sampling

def test_overlong_penalty_soft_window():
    # L = 10, buffer 4: no penalty up to 6 tokens, then linear to -penalty (2) at 10
    got = overlong_penalty(torch.tensor([5, 6, 7, 8, 10]), max_new_tokens=10, buffer=4, penalty=2.0)
    assert got.tolist() == [0.0, 0.0, -0.5, -1.0, -2.0]  # (7-6)/4·2 = 0.5, (8-6)/4·2 = 1
    assert overlong_penalty(torch.tensor([10]), 10, 0).tolist() == [0.0]
    with pytest.raises(ValueError, match="less than max_new_tokens"):
        overlong_penalty(torch.tensor([1]), 10, 10)


def _batch(rewards, k=2, tag=0):
    n = len(rewards)
    return RolloutBatch(step=0, policy_version=0, group_size=k, prompt_ids=[[tag, i // k] for i in range(n)],
                        response_ids=[[i] for i in range(n)], gen_logprobs=[[0.0]] * n, texts=[""] * n,
                        finish_reasons=["eos"] * n, verifier_keys=["gsm8k"] * n, scores=torch.zeros(n),
                        rewards=torch.tensor(rewards, dtype=torch.float32))


def test_dynamic_sampling_refills_until_every_group_varies():
    first = _batch([1, 1, 0, 1, 0, 0])  # groups: constant, varied, constant
    calls = []

    def sample(idx, attempt):
        calls.append((idx, attempt))
        return _batch([1, 0, 1, 1, 0, 1], tag=attempt)  # varied, constant, varied

    out = refill_groups(sample, first, [0, 1, 2], num_prompts=20, seed=0, step=5, max_refill=4)
    assert out.rewards.tolist() == [0, 1, 1, 0, 0, 1]  # first's group 1, then the refill's groups 0 and 2
    assert out.prompt_ids == [[0, 1], [0, 1], [1, 0], [1, 0], [1, 2], [1, 2]]
    assert len(calls) == 1 and calls[0][1] == 1 and not set(calls[0][0]) & {0, 1, 2}  # fresh prompts
    assert out.extra == {"dynamic/groups_kept": 3.0, "dynamic/groups_dropped": 3.0, "dynamic/refills": 1.0,
                         "dynamic/groups_short": 0.0}
    # out of refills: train on what was found, and say how many are missing
    short = refill_groups(sample, first, [0, 1, 2], 20, 0, 5, max_refill=0)
    assert short.rewards.tolist() == [0, 1] and short.extra["dynamic/groups_short"] == 2.0
    # nothing varied at all: the batch as it is (the step filters its constant groups)
    none = refill_groups(lambda i, a: _batch([1, 1, 0, 0, 1, 1]), _batch([1, 1, 0, 0, 1, 1]), [0, 1, 2], 20, 0, 5, 2)
    assert none.num_samples == 6 and none.extra["dynamic/groups_kept"] == 0 and none.extra["dynamic/refills"] == 2


def test_refill_prompts_are_seeded_and_fresh_first():
    a = refill_indices(10, 4, {0, 1, 2}, seed=1, step=3, attempt=1)
    assert a == refill_indices(10, 4, {0, 1, 2}, 1, 3, 1) and not set(a) & {0, 1, 2}
    assert a != refill_indices(10, 4, {0, 1, 2}, 1, 3, 2)
    assert sorted(refill_indices(3, 3, {0, 1, 2}, 1, 3, 1)) == [0, 1, 2]  # too few fresh: repeats
    assert step_seed(1, 3) == step_seed(1, 3, 0) != step_seed(1, 3, 1)  # attempt 0 keeps the old seed


# ---------------------------------------------------------------- config rules

def _cfg(*overrides):
    from posttrain.rl.config import RLVRConfig

    return load_config(RLVRConfig, None, ["data.paths=[x.jsonl]", *overrides])


def test_every_algorithm_loads_and_bad_combinations_name_the_key():
    for a in ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo"):
        assert _cfg(f"algorithm={a}").algorithm == a
    assert _cfg("algorithm=gspo", "train.tis_cap=null").algorithm == "gspo"
    assert _cfg("algorithm=reinforce_pp", "kl.placement=reward", "rollout.samples_per_prompt=1")
    cases = [
        (["algorithm=rloo", "rollout.samples_per_prompt=1"], "algorithm=rloo needs rollout.samples_per_prompt >= 2"),
        (["algorithm=gspo"], "set train.tis_cap=null"),
        (["algorithm=dapo", "kl.placement=reward"], "kl.placement=reward needs per-token returns"),
        (["algorithm=grpo", "ppo.value_lr=0.001"], "ppo.value_lr is set, but algorithm=grpo"),
        (["algorithm=rloo", "train.normalize_adv_std=false"], "train.normalize_adv_std=false applies to"),
        (["algorithm=ppo", "rollout.dynamic_sampling=true"], "rollout.dynamic_sampling=true is about groups"),
        (["algorithm=reinforce_pp", "train.filter_constant_groups=false"], "train.filter_constant_groups=false"),
        (["reward.overlong.buffer=256"], "reward.overlong.buffer=256 must be less than rollout.max_new_tokens"),
        (["rollout.max_refill=-1"], "rollout.max_refill must be >= 0"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            _cfg(*overrides)


# ---------------------------------------------------------------- end to end

WORDS = json.dumps({"func_name": "validate_word_constraint", "N": 5, "quantifier": "at least"})
ROWS = [{"messages": [{"role": "user", "content": c}], "ground_truth": WORDS, "dataset": "ifeval"}
        for c in ("Say something.", "Tell me a story.", "Write a few words.", "Describe the sea.")]
ROWS.append({"messages": [{"role": "user", "content": "What is 2 + 2?"}], "ground_truth": "4", "dataset": "gsm8k"})


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rl-algos") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


@pytest.mark.parametrize("algorithm, extra", [
    ("dr_grpo", []),
    ("dapo", ["train.eps_high=0.28", "kl.beta=0", "reward.overlong.buffer=4", "rollout.max_refill=2"]),
    ("gspo", ["train.tis_cap=null", "train.eps_low=3e-4", "train.eps_high=4e-4"]),
    ("rloo", []),
    ("reinforce_pp", ["kl.placement=reward", "kl.estimator=k1"]),
])
def test_each_algorithm_trains_end_to_end(tiny_model_dir, rows_file, tmp_path, algorithm, extra):
    from posttrain.recipes.rlvr import RLVRConfig, main

    out = tmp_path / algorithm
    main(load_config(RLVRConfig, None, [
        f"model.name_or_path={tiny_model_dir}", f"data.paths=[{rows_file}]", "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8", "optim.lr=2e-2", "kl.beta=0.01",
        "train.max_steps=2", "run.progress=false", f"run.output_dir={out}", f"algorithm={algorithm}", *extra]))
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    trained = [r for r in rows if r.get("optimizer_steps")]
    assert trained and all(math.isfinite(r["loss/policy"]) and r["grad_norm"] > 0 for r in trained)
    assert json.loads((out / "summary.json").read_text())["algorithm"] == algorithm
    if algorithm == "dapo":  # the GSM8K prompt's group is always constant: dropped, then refilled
        assert all(r["dynamic/groups_kept"] + r["dynamic/groups_short"] == 2 for r in rows)
        assert all(r["groups/constant"] == 0 or r["dynamic/groups_kept"] == 0 for r in rows)
        assert all(r["reward/mean"] < 10 * r["score/mean"] + 1e-6 for r in rows)  # overlong penalty <= 0
    if algorithm == "reinforce_pp":  # no group filtering: every sample is trained on
        assert all(r["samples/trained"] == 8 for r in rows)
