"""RLVR losses: masked reductions, GRPO advantages, the clipped policy-gradient loss, KL penalties.

Tensors are [B, T] over response tokens with a 0/1 (or bool) ``mask``. Losses come back per
token; the trainer reduces them with ``token_level_loss`` / ``sequence_level_loss`` and a
normaliser counted over the whole optimizer step on all ranks, never a per-micro-batch mean.
PPO pieces (GAE, whitening, value loss) live in ``ppo.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

# Bound on log-ratios before exp: e^20 is far beyond any healthy ratio, and an inf would turn
# into a NaN gradient through the branch that torch.maximum does not pick.
_MAX_LOG_RATIO = 20.0


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x where mask is set; masked-out entries may hold anything, NaN included."""
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Local mean over set entries (0 where none is set). For statistics and per-sequence means;
    a loss over a batch goes through ``token_level_loss`` instead."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def _check_normaliser(name: str, value: float | Tensor) -> None:
    if not isinstance(value, Tensor) and value <= 0:
        raise ValueError(f"{name} must be > 0 (count it over the optimizer step on all ranks), got {value}")


def token_level_loss(per_token_loss: Tensor, mask: Tensor, num_tokens: float | Tensor) -> Tensor:
    """Σ_{b,t} mask·loss / num_tokens, num_tokens = valid tokens in the whole optimizer step
    (all micro-batches, all ranks): every token weighs the same however the step is split."""
    _check_normaliser("num_tokens", num_tokens)
    return masked_sum(per_token_loss, mask) / num_tokens


def sequence_level_loss(per_token_loss: Tensor, mask: Tensor, num_sequences: float | Tensor) -> Tensor:
    """Σ_b (token mean of sequence b) / num_sequences, num_sequences counted over the step."""
    _check_normaliser("num_sequences", num_sequences)
    return masked_mean(per_token_loss, mask, dim=-1).sum() / num_sequences


@dataclass(frozen=True)
class GroupAdvantages:
    advantages: Tensor  # [n_prompts * k], 0 for every sample of a constant group
    constant_groups: Tensor  # [n_prompts] bool: all k rewards equal, so no learning signal

    @property
    def num_constant_groups(self) -> int:
        return int(self.constant_groups.sum())

    def sample_mask(self) -> Tensor:
        """[n_prompts * k] bool, True for samples of groups that carry signal (to filter)."""
        k = self.advantages.numel() // max(self.constant_groups.numel(), 1)
        return (~self.constant_groups).repeat_interleave(k)


def grpo_advantages(rewards: Tensor, group_size: int, normalize_std: bool = True,
                    eps: float = 1e-8) -> GroupAdvantages:
    """A_i = r_i − mean(group), divided by (std(group) + eps) when normalize_std.

    ``rewards`` is [n_prompts * k] with the k samples of a prompt contiguous. std is the
    population std (ddof 0, as open-instruct). Constant groups get exactly 0: a float mean of
    equal values can be off by one ulp, which eps = 1e-8 would blow up.
    """
    if group_size < 1 or rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"grpo_advantages: rewards must be 1-D with a multiple of group_size={group_size} "
                         f"entries, got shape {tuple(rewards.shape)}")
    groups = rewards.float().view(-1, group_size)
    constant = (groups == groups[:, :1]).all(dim=-1)
    adv = groups - groups.mean(dim=-1, keepdim=True)
    if normalize_std:
        adv = adv / (groups.std(dim=-1, correction=0, keepdim=True) + eps)
    adv = torch.where(constant[:, None], torch.zeros_like(adv), adv)
    return GroupAdvantages(adv.reshape(-1), constant)


@dataclass(frozen=True)
class PolicyLossOutput:
    losses: Tensor  # [B, T] per-token loss, 0 where mask is 0
    clipped: Tensor  # [B, T] float, 1 where the clipped branch was taken, detached
    approx_kl: Tensor  # [B, T] k3 estimate of KL(π_old ‖ πθ) per token, detached


def policy_gradient_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
                         eps_low: float = 0.2, eps_high: float = 0.2,
                         generator_logprobs: Tensor | None = None, tis_cap: float = 2.0) -> PolicyLossOutput:
    """PPO clipped surrogate with separate bounds ("clip-higher"), per token:

        ρ = exp(log πθ − log π_old),   L = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high)) · w

    A is [B] (one per sequence, broadcast over tokens) or [B, T]. With ``generator_logprobs``
    (the sampler's, e.g. vLLM's, log-probs of the same tokens) w = min(exp(log π_old − log π_gen),
    tis_cap), detached: truncated importance sampling for the sampler/trainer mismatch (Tülu
    cap 2); otherwise w = 1. old_logprobs, advantages and w are constants (detached here).
    """
    if logprobs.dim() != 2 or old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(f"policy_gradient_loss: logprobs, old_logprobs and mask must share one [B, T] shape, got "
                         f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(mask.shape)}")
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(f"policy_gradient_loss: advantages must be [B] or [B, T], got {tuple(advantages.shape)}")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"policy_gradient_loss: eps_low/eps_high must be >= 0, got {eps_low}/{eps_high}")
    valid = mask.bool()
    adv = advantages.detach().to(logprobs.dtype)
    adv = adv[:, None] if adv.dim() == 1 else adv
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    losses = torch.maximum(unclipped, clipped)
    if generator_logprobs is not None:
        if generator_logprobs.shape != logprobs.shape:
            raise ValueError(f"policy_gradient_loss: generator_logprobs must be {tuple(logprobs.shape)}, "
                             f"got {tuple(generator_logprobs.shape)}")
        gen_log_ratio = torch.where(valid, old_logprobs - generator_logprobs, torch.zeros_like(logprobs)).detach()
        losses = losses * torch.exp(gen_log_ratio).clamp(max=tis_cap)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    with torch.no_grad():
        was_clipped = torch.where(valid, (clipped > unclipped).to(logprobs.dtype), zero)
        approx_kl = torch.where(valid, ratio - 1.0 - log_ratio, zero)  # k3 with r = πθ/π_old
    return PolicyLossOutput(torch.where(valid, losses, zero), was_clipped, approx_kl)


KLEstimator = Literal["k1", "k2", "k3"]


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(πθ ‖ π_ref) from tokens sampled from πθ, d = log πθ − log π_ref.

    Schulman's "Approximating KL" with q = πθ, p = π_ref, r = p/q = exp(−d):
      k1 = −log r = d                          unbiased, high variance, can be negative
      k2 = ½ (log r)² = ½ d²                   biased, low variance, >= 0
      k3 = (r − 1) − log r = exp(−d) − 1 + d   unbiased, low variance, >= 0 (Tülu 3.1 GRPO)
    The recipe doc's ``exp(-d) - 1 + d`` is the same k3; for it d is clamped to ±20 against
    overflow. Not masked: reduce with the helpers above.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"kl_penalty: shapes differ: {tuple(logprobs.shape)} vs {tuple(ref_logprobs.shape)}")
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        d = d.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.expm1(-d) + d
    raise ValueError(f"kl_penalty: unknown estimator {estimator!r}; choose 'k1', 'k2' or 'k3'")


def kl_regularized_loss(per_token_loss: Tensor, logprobs: Tensor, ref_logprobs: Tensor | None, beta: float,
                        estimator: KLEstimator = "k3") -> Tensor:
    """Per-token policy loss plus GRPO's KL loss term, L + β·KL(πθ ‖ π_ref) (k1/k2/k3 estimate).

    β = 0 returns the loss unchanged and needs no reference; PPO puts the KL in the reward
    instead (`rl.advantages.ppo_token_rewards`) and calls this with β = 0."""
    if not beta:
        return per_token_loss
    if ref_logprobs is None:
        raise ValueError("kl_regularized_loss: beta > 0 needs reference log-probs")
    return per_token_loss + beta * kl_penalty(logprobs, ref_logprobs, estimator)
