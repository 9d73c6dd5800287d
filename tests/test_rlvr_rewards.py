"""RLVR step pieces as pure functions: rewards, GRPO selection, PPO per-token rewards and GAE,
and the packing of rollouts (per-token tensors line up with the packed targets)."""

import math

import pytest
import torch

from posttrain.data.chat import IGNORE_INDEX
from posttrain.rl.advantages import grpo_selection, ppo_advantages, ppo_token_rewards
from posttrain.rl.buffer import TrainSamples, from_padded, per_sample_to_tokens, to_padded
from posttrain.rl.rewards import accuracy_by_verifier, combine_rewards
from posttrain.rl.rollouts import step_seed


def test_combine_rewards_hand_values():
    scores = torch.tensor([1.0, 0.0, 0.5, 1.0])
    truncated = torch.tensor([False, False, False, True])
    assert combine_rewards(scores, truncated).tolist() == [10.0, 0.0, 5.0, 10.0]
    rm = torch.tensor([0.3, 0.1, 0.0, 2.0])
    out = combine_rewards(scores, truncated, 10.0, truncated_reward=-10.0, rm_scores=rm, rm_weight=0.5)
    assert out.tolist() == pytest.approx([10.15, 0.05, 5.0, -10.0])
    assert accuracy_by_verifier(scores, ["gsm8k", "ifeval", "gsm8k", "ifeval"]) == {"gsm8k": 0.75, "ifeval": 0.5}


def test_grpo_selection_filters_constant_groups():
    rewards = torch.tensor([10.0, 0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 10.0])
    sel = grpo_selection(rewards, 4)
    s = math.sqrt(75 / 4)  # population std of (10, 0, 0, 0)
    assert sel.advantages.tolist() == pytest.approx([7.5 / s, -2.5 / s, -2.5 / s, -2.5 / s, 0, 0, 0, 0], abs=1e-6)
    assert sel.keep == [0, 1, 2, 3] and (sel.num_groups, sel.num_constant_groups) == (2, 1)
    assert grpo_selection(rewards, 4, filter_constant_groups=False).keep == list(range(8))
    plain = grpo_selection(rewards, 4, normalize_std=False)
    assert plain.advantages[:4].tolist() == [7.5, -2.5, -2.5, -2.5]


def test_ppo_token_rewards_k1_penalty_and_last_token_score():
    old = [torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.0])]
    ref = [torch.tensor([-1.5, -2.0, -2.0]), torch.tensor([-0.5])]
    out = ppo_token_rewards(torch.tensor([1.0, 2.0]), [3, 1], old, ref, beta=0.1, estimator="k1")
    # −β·(log π − log π_ref) per token, the score added on the last token
    assert out[0].tolist() == pytest.approx([-0.05, 0.0, 1.1])
    assert out[1].tolist() == pytest.approx([2.05])
    no_kl = ppo_token_rewards(torch.tensor([1.0, 2.0]), [3, 1])
    assert [t.tolist() for t in no_kl] == [[0.0, 0.0, 1.0], [2.0]]


def test_ppo_advantages_gae_hand_values():
    rewards = [torch.tensor([0.0, 0.0, 1.0]), torch.tensor([2.0])]
    values = [torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1.0])]
    adv, ret = ppo_advantages(rewards, values, gamma=1.0, lam=0.95, whiten_advantages=False)
    # δ = (0, 0, 0.5); A_2 = 0.5, A_1 = 0.95·0.5, A_0 = 0.95²·0.5; the 1-token episode: A = 2 − 1
    assert adv[0].tolist() == pytest.approx([0.45125, 0.475, 0.5])
    assert adv[1].tolist() == pytest.approx([1.0])
    assert ret[0].tolist() == pytest.approx([0.95125, 0.975, 1.0]) and ret[1].tolist() == pytest.approx([2.0])
    white, ret_w = ppo_advantages(rewards, values, whiten_advantages=True)
    flat = torch.cat(white)
    assert flat.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert flat.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(torch.cat(ret_w), torch.cat(ret))  # returns come from the raw advantages


def test_packed_targets_line_up_with_per_token_tensors():
    samples = TrainSamples([[1, 2, 3], [6]], [[4, 5], [7, 8, 9]])
    samples.set("advantages", per_sample_to_tokens(torch.tensor([0.5, -1.0]), samples.response_lengths))
    batch = samples.pack([0, 1])
    targets = batch.targets[0]
    keep = targets != IGNORE_INDEX
    assert targets[keep].tolist() == [4, 5, 7, 8, 9]
    assert samples.cat("advantages", [0, 1]).tolist() == [0.5, 0.5, -1.0, -1.0, -1.0]
    # the response token at input position t is predicted at t - 1, never across the boundary
    assert keep.nonzero().squeeze(-1).tolist() == [2, 3, 5, 6, 7]
    assert batch.input_ids[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="one \\[R_i\\] tensor per sample"):
        samples.set("returns", [torch.zeros(2)])
    padded, mask = to_padded(samples.token["advantages"])
    assert padded.shape == (2, 3) and mask.sum().item() == 5
    assert [t.tolist() for t in from_padded(padded, [2, 3])] == [[0.5, 0.5], [-1.0, -1.0, -1.0]]


def test_step_seed_is_stable_and_distinct():
    assert step_seed(42, 3) == step_seed(42, 3)
    assert len({step_seed(42, s) for s in range(100)} | {step_seed(43, 0)}) == 101
    assert 0 <= step_seed(0, 0) < 2**62
