"""Advantages for one RL step: GRPO (group baseline, constant groups filtered) and PPO (per-token
rewards with a KL penalty, GAE on a value model, whitening). Pure functions over CPU tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from posttrain.losses.pg import KLEstimator, grpo_advantages, kl_penalty
from posttrain.losses.ppo import gae, whiten
from posttrain.rl.buffer import from_padded, to_padded


@dataclass(frozen=True)
class GroupSelection:
    advantages: Tensor  # [N] per sample (0 for constant groups)
    keep: list[int]  # samples to train on
    num_groups: int
    num_constant_groups: int  # groups whose k rewards are all equal: no signal


def grpo_selection(rewards: Tensor, group_size: int, normalize_std: bool = True,
                   filter_constant_groups: bool = True) -> GroupSelection:
    """A_i = r_i − group mean (÷ group std); constant groups are dropped when filtering (their
    advantages are 0, so they would only add the KL term and dilute the token normaliser)."""
    ga = grpo_advantages(rewards, group_size, normalize_std)
    mask = ga.sample_mask() if filter_constant_groups else torch.ones(rewards.numel(), dtype=torch.bool)
    keep = mask.nonzero().squeeze(-1).tolist()
    return GroupSelection(ga.advantages, keep, ga.constant_groups.numel(), ga.num_constant_groups)


def ppo_token_rewards(rewards: Tensor, lengths: list[int], old_logprobs: list[Tensor] | None = None,
                      ref_logprobs: list[Tensor] | None = None, beta: float = 0.0,
                      estimator: KLEstimator = "k1") -> list[Tensor]:
    """Tülu 3 PPO rewards per token: −β·KL_t on every token, plus the scalar reward on the last."""
    out = []
    for i, n in enumerate(lengths):
        r = torch.zeros(n)
        if beta and old_logprobs is not None and ref_logprobs is not None:
            r = r - beta * kl_penalty(old_logprobs[i], ref_logprobs[i], estimator)
        r[-1] += rewards[i]
        out.append(r)
    return out


def ppo_advantages(token_rewards: list[Tensor], values: list[Tensor], gamma: float = 1.0, lam: float = 0.95,
                   whiten_advantages: bool = True) -> tuple[list[Tensor], list[Tensor]]:
    """GAE (advantages, returns) per sample; advantages whitened over every token of the batch.
    Returns come from the raw advantages (R = A + V), as the value target."""
    r, mask = to_padded(token_rewards)
    v, _ = to_padded(values)
    adv, ret = gae(r, v, mask, gamma, lam)
    if whiten_advantages:
        adv = whiten(adv, mask)
    lengths = [t.numel() for t in token_rewards]
    return from_padded(adv, lengths), from_padded(ret, lengths)
