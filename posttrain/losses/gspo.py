"""GSPO: the clipped surrogate on a sequence-level importance ratio (Zheng et al. 2025, "Group
Sequence Policy Optimization", arXiv 2507.18071).

Tensors are [B, T] over response tokens with a 0/1 (or bool) ``mask``, one row per sequence. The
loss comes back per token (each valid token of sequence i holds L_i), so that the trainer's
``sequence_level_loss`` (token mean per sequence, then Σ over sequences ÷ a count over the whole
step) gives mean_i L_i, and a per-token KL term added to it is averaged the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from posttrain.losses.pg import _MAX_LOG_RATIO, PolicyLossOutput, masked_mean


def gspo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
              eps_low: float = 3e-4, eps_high: float = 4e-4) -> PolicyLossOutput:
    """Per sequence i, with |y_i| its valid tokens:

        s_i = exp( Σ_t (log πθ − log π_old) / |y_i| )      (the geometric-mean token ratio)
        L_i = max(−A_i·s_i, −A_i·clip(s_i, 1 − ε_low, 1 + ε_high))

    so ∇L_i = −A_i·s_i·(1/|y_i|)·Σ_t ∇log πθ(y_t) where unclipped: every token of a sequence
    gets the same weight, and a sequence is clipped (all its tokens) or not. The paper's ε are
    small (3e-4 / 4e-4) because s_i is a per-token average. ``advantages`` is [B].
    `clipped` is the sequence's flag on each of its tokens; `approx_kl` the per-token k3 of
    πθ vs π_old (as `policy_gradient_loss`), for statistics.
    """
    if logprobs.dim() != 2 or old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(f"gspo_loss: logprobs, old_logprobs and mask must share one [B, T] shape, got "
                         f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(mask.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"gspo_loss: advantages must be [B] (one per sequence), got {tuple(advantages.shape)}")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"gspo_loss: eps_low/eps_high must be >= 0, got {eps_low}/{eps_high}")
    valid = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), zero)
    log_s = masked_mean(log_ratio, valid, dim=-1).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    s = torch.exp(log_s)
    adv = advantages.detach().to(logprobs.dtype)
    unclipped = -adv * s
    clipped = -adv * s.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_seq = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        was_clipped = torch.where(valid, (clipped > unclipped).to(logprobs.dtype)[:, None], zero)
        token_log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        approx_kl = torch.where(valid, torch.exp(token_log_ratio) - 1.0 - token_log_ratio, zero)
    return PolicyLossOutput(torch.where(valid, per_seq[:, None].expand_as(logprobs), zero), was_clipped, approx_kl)
