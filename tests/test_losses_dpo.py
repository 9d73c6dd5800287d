"""DPO-family losses: hand-computed values and gradients against a per-example Python loop."""

import math

import pytest
import torch

from posttrain.losses.dpo import (LOSSES, REFERENCE_FREE, bind_preference_loss, dpo_loss, dpo_norm_loss,
                                  ipo_loss, simpo_loss, wpo_loss)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def softplus(x):  # log(1 + eˣ); −log σ(z) = softplus(−z)
    return math.log1p(math.exp(x))


def test_dpo_hand_values():
    out = dpo_loss(policy_chosen_logps=t(-10.0), policy_rejected_logps=t(-12.0), ref_chosen_logps=t(-11.0),
                   ref_rejected_logps=t(-11.0), chosen_lengths=t(3.0), rejected_lengths=t(5.0), beta=0.1)
    # Δw = 1, Δl = −1, z = 0.1 · 2 = 0.2
    assert out.losses.item() == pytest.approx(softplus(-0.2))
    assert out.chosen_rewards.item() == pytest.approx(0.1)
    assert out.rejected_rewards.item() == pytest.approx(-0.1)
    assert out.accuracies.item() == 1.0
    smoothed = dpo_loss(policy_chosen_logps=t(-10.0), policy_rejected_logps=t(-12.0), ref_chosen_logps=t(-11.0),
                        ref_rejected_logps=t(-11.0), chosen_lengths=t(3.0), rejected_lengths=t(5.0),
                        beta=0.1, label_smoothing=0.1)
    assert smoothed.losses.item() == pytest.approx(0.9 * softplus(-0.2) + 0.1 * softplus(0.2))


def test_dpo_at_reference_is_log2():
    x = t(-3.0, -7.5, -1.0)
    out = dpo_loss(policy_chosen_logps=x, policy_rejected_logps=x - 2, ref_chosen_logps=x,
                   ref_rejected_logps=x - 2, chosen_lengths=t(1, 2, 3), rejected_lengths=t(1, 2, 3), beta=0.5)
    assert torch.allclose(out.losses, torch.full((3,), math.log(2), dtype=torch.float64))


def test_dpo_norm_hand_values():
    # Δw/|yw| = (−10 + 12)/4 = 0.5, Δl/|yl| = (−6 + 5)/2 = −0.5, β = 5 → z = 5
    out = dpo_norm_loss(policy_chosen_logps=t(-10.0), policy_rejected_logps=t(-6.0), ref_chosen_logps=t(-12.0),
                        ref_rejected_logps=t(-5.0), chosen_lengths=t(4.0), rejected_lengths=t(2.0), beta=5.0)
    assert out.losses.item() == pytest.approx(softplus(-5.0))
    assert out.chosen_rewards.item() == pytest.approx(2.5)
    assert out.rejected_rewards.item() == pytest.approx(-2.5)


def test_simpo_hand_values_and_no_reference():
    # avg w = −8/4 = −2, avg l = −9/3 = −3, β = 2, γ = 0.3 · 2 = 0.6 → z = 2 · 1 − 0.6 = 1.4
    out = simpo_loss(policy_chosen_logps=t(-8.0), policy_rejected_logps=t(-9.0), ref_chosen_logps=None,
                     ref_rejected_logps=None, chosen_lengths=t(4.0), rejected_lengths=t(3.0), beta=2.0)
    assert out.losses.item() == pytest.approx(softplus(-1.4))
    assert out.chosen_rewards.item() == pytest.approx(-4.0)
    assert out.rejected_rewards.item() == pytest.approx(-6.0)
    out = simpo_loss(policy_chosen_logps=t(-8.0), policy_rejected_logps=t(-9.0), chosen_lengths=t(4.0),
                     rejected_lengths=t(3.0), beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.2)
    assert out.losses.item() == pytest.approx(0.8 * softplus(-1.0) + 0.2 * softplus(1.0))


def test_ipo_hand_values():
    common = dict(policy_chosen_logps=t(-10.0), policy_rejected_logps=t(-6.0), ref_chosen_logps=t(-12.0),
                  ref_rejected_logps=t(-5.0), chosen_lengths=t(4.0), rejected_lengths=t(2.0))
    # h = 0.5 − (−0.5) = 1; β = 0.25 → target 1/(2β) = 2 → (1 − 2)² = 1
    out = ipo_loss(**common, beta=0.25)
    assert out.losses.item() == pytest.approx(1.0)
    assert out.chosen_rewards.item() == pytest.approx(0.125)
    assert ipo_loss(**common, beta=0.5).losses.item() == pytest.approx(0.0)
    # lengths of ones give Azar et al.'s summed form: h = 2 − (−1) = 3, β = 0.1 → (3 − 5)² = 4
    summed = {**common, "chosen_lengths": t(1.0), "rejected_lengths": t(1.0)}
    assert ipo_loss(**summed, beta=0.1).losses.item() == pytest.approx(4.0)


def test_wpo_hand_values():
    # avg w = −2/4, avg l = −3/2 → weight exp(−2); Δw = 1, Δl = −1, β = 0.1 → z = 0.2
    out = wpo_loss(policy_chosen_logps=t(-2.0), policy_rejected_logps=t(-3.0), ref_chosen_logps=t(-3.0),
                   ref_rejected_logps=t(-2.0), chosen_lengths=t(4.0), rejected_lengths=t(2.0), beta=0.1)
    assert out.losses.item() == pytest.approx(math.exp(-2.0) * softplus(-0.2))
    # the weight is capped at 1 (only reachable with positive "log-probs", hence fake numbers)
    out = wpo_loss(policy_chosen_logps=t(4.0), policy_rejected_logps=t(2.0), ref_chosen_logps=t(3.0),
                   ref_rejected_logps=t(3.0), chosen_lengths=t(1.0), rejected_lengths=t(1.0), beta=0.1)
    assert out.losses.item() == pytest.approx(softplus(-0.2))


def _naive(name, pc, pr, rc, rr, lc, lr, beta, ls=0.0, ratio=0.3):
    """Per-example loop with sigmoid/log written out; returns the summed loss."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(pc.shape[0]):
        if name == "simpo":
            z = beta * (pc[i] / lc[i] - pr[i] / lr[i]) - ratio * beta
        elif name in ("dpo_norm", "ipo"):
            z = (pc[i] - rc[i]) / lc[i] - (pr[i] - rr[i]) / lr[i]
            if name == "ipo":
                total = total + (z - 1 / (2 * beta)) ** 2
                continue
            z = beta * z
        else:
            z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
        loss = -(1 - ls) * torch.log(torch.sigmoid(z)) - ls * torch.log(torch.sigmoid(-z))
        if name == "wpo":
            loss = loss * min(1.0, math.exp(pc[i].item() / lc[i].item() + pr[i].item() / lr[i].item()))
        total = total + loss
    return total


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_match_per_example_loop(name):
    gen = torch.Generator().manual_seed(0)
    b = 6
    lc = torch.randint(1, 20, (b,), generator=gen).double()
    lr = torch.randint(1, 20, (b,), generator=gen).double()
    pc0 = -lc * torch.rand(b, generator=gen, dtype=torch.float64)
    pr0 = -lr * torch.rand(b, generator=gen, dtype=torch.float64)
    rc = pc0 + 0.3 * torch.randn(b, generator=gen, dtype=torch.float64)
    rr = pr0 + 0.3 * torch.randn(b, generator=gen, dtype=torch.float64)
    hp = {"beta": 0.7}
    if name != "ipo":
        hp["label_smoothing"] = 0.1
    fn = bind_preference_loss(name, **hp)
    pc, pr = pc0.clone().requires_grad_(), pr0.clone().requires_grad_()
    out = fn(policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=rc, ref_rejected_logps=rr,
             chosen_lengths=lc, rejected_lengths=lr)
    assert out.losses.shape == (b,) and not out.chosen_rewards.requires_grad
    out.losses.sum().backward()
    pc2, pr2 = pc0.clone().requires_grad_(), pr0.clone().requires_grad_()
    ref = _naive(name, pc2, pr2, rc, rr, lc, lr, 0.7, hp.get("label_smoothing", 0.0))
    ref.backward()
    assert out.losses.sum().item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(pc.grad, pc2.grad, rtol=1e-9, atol=1e-12)
    assert torch.allclose(pr.grad, pr2.grad, rtol=1e-9, atol=1e-12)


def test_registry_and_errors():
    assert set(LOSSES) == {"dpo", "dpo_norm", "simpo", "ipo", "wpo"} and REFERENCE_FREE == {"simpo"}
    with pytest.raises(ValueError, match="unknown preference loss"):
        bind_preference_loss("kto", beta=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        bind_preference_loss("ipo", beta=0.1, label_smoothing=0.1)
    with pytest.raises(ValueError, match="gamma_beta_ratio"):
        bind_preference_loss("dpo", beta=0.1, gamma_beta_ratio=0.3)
    args = dict(policy_chosen_logps=t(-1.0), policy_rejected_logps=t(-2.0), ref_chosen_logps=None,
                ref_rejected_logps=None, chosen_lengths=t(1.0), rejected_lengths=t(1.0))
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        dpo_loss(**args, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        simpo_loss(**args, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        simpo_loss(**args, beta=1.0, label_smoothing=0.5)
    with pytest.raises(ValueError, match="shape"):
        simpo_loss(**{**args, "chosen_lengths": t(1.0, 2.0)}, beta=1.0)
