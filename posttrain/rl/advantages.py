"""Advantages for one RL step, one pure function per baseline, over CPU tensors:

- group baselines over the k samples of a prompt (``rewards`` is [P·k], a prompt's k contiguous):
  GRPO (mean, ÷ std), Dr. GRPO (mean only), RLOO (leave-one-out mean); constant groups carry no
  signal and are filtered (`select_groups`);
- per-token returns: REINFORCE++ (KL penalty in the per-token reward, returns normalised over
  every token of the batch) and PPO (the same rewards, GAE on a value model, whitening).

Which one a run uses is `rl.algorithms.ALGORITHMS[cfg.algorithm]`, picked once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from posttrain.losses.pg import GroupAdvantages, KLEstimator, grpo_advantages, kl_penalty
from posttrain.losses.ppo import gae, whiten
from posttrain.rl.buffer import from_padded, to_padded


@dataclass(frozen=True)
class GroupSelection:
    advantages: Tensor  # [N] per sample (0 for constant groups)
    keep: list[int]  # samples to train on
    num_groups: int
    num_constant_groups: int  # groups whose k rewards are all equal: no signal


def select_groups(ga: GroupAdvantages, filter_constant_groups: bool = True) -> GroupSelection:
    """The samples to train on: all, or (filtering) those of groups whose rewards differ. A constant
    group's advantages are 0, so it would only add the KL term and dilute the token normaliser."""
    mask = ga.sample_mask() if filter_constant_groups else torch.ones(ga.advantages.numel(), dtype=torch.bool)
    keep = mask.nonzero().squeeze(-1).tolist()
    return GroupSelection(ga.advantages, keep, ga.constant_groups.numel(), ga.num_constant_groups)


def grpo_selection(rewards: Tensor, group_size: int, normalize_std: bool = True,
                   filter_constant_groups: bool = True) -> GroupSelection:
    """A_i = r_i − group mean (÷ group std), constant groups dropped when filtering."""
    return select_groups(grpo_advantages(rewards, group_size, normalize_std), filter_constant_groups)


def dr_grpo_advantages(rewards: Tensor, group_size: int) -> GroupAdvantages:
    """Dr. GRPO (Liu et al. 2025, arXiv 2503.20783): A_i = r_i − mean(group), no ÷ std (which
    up-weights prompts that are nearly always or never solved)."""
    return grpo_advantages(rewards, group_size, normalize_std=False)


def rloo_advantages(rewards: Tensor, group_size: int) -> GroupAdvantages:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, arXiv 2402.14740): the baseline of sample i is
    the mean of the other k − 1 rewards of its group, A_i = r_i − (Σ_j r_j − r_i) / (k − 1), which
    equals k/(k − 1)·(r_i − mean): unbiased, since the baseline does not depend on sample i.
    Constant groups get exactly 0."""
    if group_size < 2 or rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rloo_advantages: rewards must be 1-D with a multiple of group_size={group_size} >= 2 "
                         f"entries, got shape {tuple(rewards.shape)}")
    groups = rewards.float().view(-1, group_size)
    constant = (groups == groups[:, :1]).all(dim=-1)
    others = (groups.sum(dim=-1, keepdim=True) - groups) / (group_size - 1)
    adv = torch.where(constant[:, None], torch.zeros_like(groups), groups - others)
    return GroupAdvantages(adv.reshape(-1), constant)


def ppo_token_rewards(rewards: Tensor, lengths: list[int], old_logprobs: list[Tensor] | None = None,
                      ref_logprobs: list[Tensor] | None = None, beta: float = 0.0,
                      estimator: KLEstimator = "k1", masks: list[Tensor] | None = None) -> list[Tensor]:
    """Tülu 3 PPO rewards per token: −β·KL_t on every token, plus the scalar reward on the last.
    `masks` (multi-turn): tokens with mask 0 (tool output) are not the policy's and get no KL."""
    out = []
    for i, n in enumerate(lengths):
        r = torch.zeros(n)
        if beta and old_logprobs is not None and ref_logprobs is not None:
            kl = kl_penalty(old_logprobs[i], ref_logprobs[i], estimator)
            r = r - beta * (kl if masks is None else kl * masks[i])
        r[-1] += rewards[i]
        out.append(r)
    return out


def ppo_advantages(token_rewards: list[Tensor], values: list[Tensor], gamma: float = 1.0, lam: float = 0.95,
                   whiten_advantages: bool = True, masks: list[Tensor] | None = None
                   ) -> tuple[list[Tensor], list[Tensor]]:
    """GAE (advantages, returns) per sample; advantages whitened over every (trained) token of the
    batch. Returns come from the raw advantages (R = A + V), as the value target."""
    r, mask = to_padded(token_rewards)
    v, _ = to_padded(values)
    adv, ret = gae(r, v, mask, gamma, lam)
    if whiten_advantages:
        adv = whiten(adv, mask if masks is None else to_padded(masks)[0].bool())
    lengths = [t.numel() for t in token_rewards]
    return from_padded(adv, lengths), from_padded(ret, lengths)


def reinforce_pp_advantages(token_rewards: list[Tensor], gamma: float = 1.0,
                            masks: list[Tensor] | None = None) -> list[Tensor]:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): the return G_t = Σ_{s>=t} γ^{s−t} r_s of the
    per-token rewards (−β·KL_t, plus the reward on the last token), normalised over every trained
    token of the whole batch, (G − mean) / std: no critic and no per-prompt baseline."""
    r, mask = to_padded(token_rewards)
    returns, _ = gae(r, torch.zeros_like(r), mask, gamma, lam=1.0)  # V = 0, λ = 1: plain discounted returns
    adv = whiten(returns, mask if masks is None else to_padded(masks)[0].bool())
    return from_padded(adv, [t.numel() for t in token_rewards])
