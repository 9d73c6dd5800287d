"""Reward-model loss: Bradley–Terry over scalar scores of chosen and rejected responses."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class RewardLossOutput:
    losses: Tensor  # [B], differentiable
    accuracies: Tensor  # [B] float, 1.0 where r_chosen > r_rejected (a tie counts as wrong), detached
    margins: Tensor  # [B] r_chosen − r_rejected, detached


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor,
                       margin: Tensor | float | None = None) -> RewardLossOutput:
    """L = −log σ(r_w − r_l − m) per pair; m is an optional required margin (Llama 2 style),
    a float or a [B] tensor, 0 when None. Per-pair outputs: the trainer reduces over the
    global batch itself.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError("bradley_terry_loss: chosen_rewards and rejected_rewards must both be [B], got "
                         f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}")
    if isinstance(margin, Tensor) and margin.shape != chosen_rewards.shape:
        raise ValueError(f"bradley_terry_loss: margin must be [B]={tuple(chosen_rewards.shape)}, "
                         f"got {tuple(margin.shape)}")
    diff = chosen_rewards - rejected_rewards
    losses = -F.logsigmoid(diff if margin is None else diff - margin)
    diff = diff.detach()
    return RewardLossOutput(losses, (diff > 0).float(), diff)
