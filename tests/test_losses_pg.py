"""RLVR losses: reductions, GRPO advantages, clipped PG loss, KL estimators, GAE, value loss."""

import math

import pytest
import torch

from posttrain.losses.pg import (grpo_advantages, kl_penalty, masked_mean, masked_sum, policy_gradient_loss,
                                 sequence_level_loss, token_level_loss)
from posttrain.losses.ppo import gae, value_loss, whiten

NAN = float("nan")


# ---- reductions -------------------------------------------------------------------------------

def test_masked_reductions_ignore_garbage():
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, NAN, NAN], [NAN, NAN, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert masked_sum(x, mask).item() == 7.0
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert masked_sum(x, mask, dim=-1).tolist() == [3.0, 4.0, 0.0]
    assert masked_mean(x, mask, dim=-1).tolist() == [1.5, 4.0, 0.0]


def test_token_level_loss_is_split_invariant():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [5.0, 6.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    full = token_level_loss(loss, mask, num_tokens=6)
    assert full.item() == pytest.approx(21 / 6)
    # two micro-batches with the step's global count add up to the full-batch value; a per-micro-batch
    # mean would give (6/3 + 15/3) / 2 = 3.5 here, not 21/6
    parts = token_level_loss(loss[:1], mask[:1], 6) + token_level_loss(loss[1:], mask[1:], 6)
    assert parts.item() == pytest.approx(21 / 6)
    # sequence level: token means 2, 4, 5.5 over 3 sequences
    assert sequence_level_loss(loss, mask, num_sequences=3).item() == pytest.approx((2 + 4 + 5.5) / 3)
    with pytest.raises(ValueError, match="num_tokens"):
        token_level_loss(loss, mask, 0)


# ---- GRPO advantages --------------------------------------------------------------------------

def test_grpo_advantages_hand_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.1, 0.1, 0.1, 0.1])
    out = grpo_advantages(rewards, group_size=4, normalize_std=True)
    s3 = math.sqrt(3)  # group 3: mean 1/4, population std √3/4
    expected = [1, -1, -1, 1, 0, 0, 0, 0, -1 / s3, -1 / s3, -1 / s3, s3, 0, 0, 0, 0]
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.constant_groups.tolist() == [False, True, False, True]
    assert out.num_constant_groups == 2
    assert out.advantages[12:].tolist() == [0.0] * 4  # exactly 0, not float noise / eps
    assert out.sample_mask().tolist() == [True] * 4 + [False] * 4 + [True] * 4 + [False] * 4
    plain = grpo_advantages(rewards, group_size=4, normalize_std=False)
    assert plain.advantages[:12].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.25, -0.25, -0.25, 0.75])
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(rewards, group_size=3)


# ---- policy-gradient loss ---------------------------------------------------------------------

def test_policy_gradient_hand_values_and_clip_higher():
    ratios = [1.5, 0.5, 1.1, 1.5, 0.5]
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.0, -3.0]])
    lp = (old + torch.tensor([[math.log(r) for r in ratios]])).requires_grad_()
    out = policy_gradient_loss(lp, old, adv, torch.ones(1, 5), eps_low=0.2, eps_high=0.28)
    # A>0: max(−ρ, −clip(ρ)): ρ=1.5 → −1.28 (clipped), ρ=0.5 → −0.5, ρ=1.1 → −1.1
    # A<0: max(ρ, clip(ρ)): ρ=1.5 → 1.5, ρ=0.5 → 0.8 (clipped)
    assert out.losses[0].tolist() == pytest.approx([-1.28, -0.5, -1.1, 1.5, 0.8], rel=1e-6)
    assert out.clipped[0].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    kl = [r - 1 - math.log(r) for r in ratios]
    assert out.approx_kl[0].tolist() == pytest.approx(kl, rel=1e-5)
    out.losses.sum().backward()
    # d/dlogπ of −A·ρ is −A·ρ; a clipped token has no gradient
    assert lp.grad[0].tolist() == pytest.approx([0.0, -0.5, -1.1, 1.5, 0.0], rel=1e-6)


def test_policy_gradient_mask_and_truncated_is():
    old = torch.tensor([[-1.0, -1.0, 0.0]])
    lp = torch.tensor([[-1.0, -1.0, 1000.0]], requires_grad=True)  # garbage at a padded position
    gen = torch.tensor([[-1.0 - math.log(3.0), -1.0 + math.log(2.0), 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    out = policy_gradient_loss(lp, old, torch.tensor([2.0]), mask, generator_logprobs=gen, tis_cap=2.0)
    # ρ = 1, A = 2 → −2; IS weights min(3, 2) = 2 and 0.5
    assert out.losses[0].tolist() == pytest.approx([-4.0, -1.0, 0.0])
    out.losses.sum().backward()
    assert lp.grad[0].tolist() == pytest.approx([-4.0, -1.0, 0.0])
    assert torch.isfinite(lp.grad).all()


def _naive_pg(lp, old, adv, mask, eps_low, eps_high):
    total = torch.zeros((), dtype=lp.dtype)
    for b in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            if not mask[b, t]:
                continue
            ratio = torch.exp(lp[b, t] - old[b, t])
            a = adv[b].item()
            surrogate = -a * ratio
            bounded = -a * min(max(ratio.item(), 1 - eps_low), 1 + eps_high)  # a constant: no gradient
            total = total + (surrogate if surrogate.item() >= bounded else torch.tensor(bounded, dtype=lp.dtype))
    return total


def test_policy_gradient_matches_per_token_loop():
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3
    lp0 = old + 0.4 * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    adv = torch.randn(4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [0] + [1] * 5])
    n = int(mask.sum())
    lp = lp0.clone().requires_grad_()
    out = policy_gradient_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    loss = token_level_loss(out.losses, mask, n)
    loss.backward()
    lp2 = lp0.clone().requires_grad_()
    ref = _naive_pg(lp2, old, adv, mask, 0.2, 0.28) / n
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(lp.grad, lp2.grad, rtol=1e-9, atol=1e-12)
    assert 0 < out.clipped.sum() < n  # the example exercises both branches


def test_policy_gradient_errors():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages"):
        policy_gradient_loss(z, z, torch.zeros(3), z)
    with pytest.raises(ValueError, match="shape"):
        policy_gradient_loss(z, torch.zeros(2, 4), torch.zeros(2), z)


# ---- KL estimators ----------------------------------------------------------------------------

def test_kl_estimators_hand_values():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # d = log 2
    d = math.log(2.0)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(d)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5 * d * d)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(0.5 - 1 + d)  # exp(−d) − 1 + d
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(lp, ref, "k4")


def test_k3_nonnegative():
    d = torch.linspace(-15, 15, 301, dtype=torch.float64)
    assert (kl_penalty(d, torch.zeros_like(d), "k3") >= 0).all()
    assert kl_penalty(torch.tensor([-0.3]), torch.tensor([-0.3]), "k3").item() == 0.0


def test_k1_and_k3_unbiased_under_policy_samples():
    pi, pi_ref = [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]
    true_kl = sum(p * math.log(p / q) for p, q in zip(pi, pi_ref))  # KL(π ‖ π_ref)
    lp = torch.tensor([math.log(p) for p in pi], dtype=torch.float64)
    ref = torch.tensor([math.log(q) for q in pi_ref], dtype=torch.float64)
    weights = torch.tensor(pi, dtype=torch.float64)
    for est in ("k1", "k3"):  # exact expectation over the sampling distribution π
        assert (weights * kl_penalty(lp, ref, est)).sum().item() == pytest.approx(true_kl, rel=1e-12)
    assert (kl_penalty(lp, ref, "k1") < 0).any()  # k1 is unbiased but not pointwise >= 0


# ---- PPO: GAE, whitening, value loss ----------------------------------------------------------

def test_gae_hand_values():
    rewards, values, mask = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.2]]), torch.ones(1, 2)
    # δ1 = 1 − 0.2 = 0.8 (terminal), δ0 = 0 + 0.2 − 0.5 = −0.3, A0 = −0.3 + 0.95 · 0.8 = 0.46
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert adv[0].tolist() == pytest.approx([0.46, 0.8])
    assert ret[0].tolist() == pytest.approx([0.96, 1.0])
    _, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)  # λ = 1: Monte-Carlo returns
    assert ret[0].tolist() == pytest.approx([1.0, 1.0])


def _naive_gae(rewards, values, length, gamma, lam):
    adv, running = [0.0] * length, 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        running = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        adv[t] = running
    return adv, [a + v for a, v in zip(adv, values)]


def test_gae_matches_loop_with_variable_lengths():
    rewards = torch.tensor([[0.1, -0.2, 0.0, 1.0, 7.0], [0.3, 2.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    values = torch.tensor([[0.4, 0.1, 0.9, 0.3, 99.0], [-0.5, 0.7, 99.0, 99.0, 99.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])  # padding holds garbage on purpose
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for b, length in enumerate([4, 2]):
        exp_adv, exp_ret = _naive_gae(rewards[b].tolist(), values[b].tolist(), length, 0.9, 0.8)
        assert adv[b, :length].tolist() == pytest.approx(exp_adv)
        assert ret[b, :length].tolist() == pytest.approx(exp_ret)
        assert adv[b, length:].abs().sum() == 0 and ret[b, length:].abs().sum() == 0


def test_gae_packed_row_keeps_episodes_apart():
    # one row: [prompt, resp A (3), prompt, prompt, resp B (2)]: B's advantage must not leak into A
    rewards = torch.tensor([[0.0, 0.2, 0.0, 1.0, 0.0, 0.0, 0.5, 2.0]], dtype=torch.float64)
    values = torch.tensor([[9.0, 0.3, 0.6, 0.1, 9.0, 9.0, 0.4, -0.2]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0, 1, 1]])
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for start, length in [(1, 3), (6, 2)]:
        span = slice(start, start + length)
        exp_adv, _ = _naive_gae(rewards[0, span].tolist(), values[0, span].tolist(), length, 0.9, 0.8)
        assert adv[0, span].tolist() == pytest.approx(exp_adv)


def test_whiten_hand_values():
    x, mask = torch.tensor([[1.0, 2.0, 3.0, 50.0]]), torch.tensor([[1, 1, 1, 0]])
    s = math.sqrt(1.5)  # mean 2, population variance 2/3 → 1/std = √1.5
    assert whiten(x, mask)[0].tolist() == pytest.approx([-s, 0.0, s, 0.0], rel=1e-6)
    assert whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx([2 - s, 2.0, 2 + s, 0.0], rel=1e-6)


def test_value_loss_hand_values():
    values = torch.tensor([[1.5, 0.9, 2.5, 7.0]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = value_loss(values, old, returns, mask, clip_range=0.2)
    # V_clip = 1.2, 0.9, 1.2: losses ½·max(0.25, 0.64), ½·0.81, ½·max(0.25, 0.64)
    assert out.losses[0].tolist() == pytest.approx([0.32, 0.405, 0.32, 0.0])
    assert out.clipped[0].tolist() == [1.0, 0.0, 1.0, 0.0]
    out.losses.sum().backward()
    # a clipped prediction gets no gradient; an unclipped one gets V − R
    assert values.grad[0].tolist() == pytest.approx([0.0, 0.9, 0.0, 0.0])
