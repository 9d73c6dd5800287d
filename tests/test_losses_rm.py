"""Bradley–Terry reward-model loss: hand-computed values and gradients."""

import math

import pytest
import torch

from posttrain.losses.rm import bradley_terry_loss


def test_hand_values_accuracy_and_margins():
    chosen = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([1.0, 1.5, 1.0], dtype=torch.float64)
    out = bradley_terry_loss(chosen, rejected)
    expected = [math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0)), math.log(2.0)]
    assert out.losses.tolist() == pytest.approx(expected)
    assert out.accuracies.tolist() == [1.0, 0.0, 0.0]  # a tie is not a correct ranking
    assert out.margins.tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert not out.margins.requires_grad
    out.losses.sum().backward()
    # d/dr_w [−log σ(r_w − r_l)] = −σ(−(r_w − r_l)) = −1/(1 + e^{diff})
    assert chosen.grad.tolist() == pytest.approx([-1 / (1 + math.e), -1 / (1 + math.exp(-1.0)), -0.5])


def test_margin_float_and_tensor():
    chosen = torch.tensor([2.0, 3.0])
    rejected = torch.tensor([1.0, 1.0])
    out = bradley_terry_loss(chosen, rejected, margin=0.5)
    assert out.losses.tolist() == pytest.approx([math.log1p(math.exp(-0.5)), math.log1p(math.exp(-1.5))])
    out = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 3.0]))
    assert out.losses.tolist() == pytest.approx([math.log(2.0), math.log1p(math.exp(1.0))])
    assert out.accuracies.tolist() == [1.0, 1.0]  # accuracy ignores the margin


def test_shape_errors():
    with pytest.raises(ValueError, match="must both be"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), margin=torch.zeros(2))
