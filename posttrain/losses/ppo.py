"""PPO pieces for RLVR as Tülu 3 ran it: GAE, whitening and the clipped value loss.

Tensors are [B, T] with a 0/1 (or bool) ``mask`` over response tokens; each maximal run of set
entries in a row is one episode (right padding, variable lengths, or a packed row where prompt
tokens separate the responses; two responses must not touch). The policy loss is
``pg.policy_gradient_loss``; per-token outputs are reduced by the trainer with a global count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from posttrain.losses.pg import masked_mean


def _check_same_shape(name: str, **tensors: Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"{name}: expected tensors of one [B, T] shape, got {shapes}")


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Tülu 3: γ = 1, λ = 0.95), returns (advantages, returns):

        δ_t = r_t + γ·m_{t+1}·V_{t+1} − V_t,   A_t = δ_t + γλ·m_{t+1}·A_{t+1},   R_t = A_t + V_t

    with m_{T} = 0, so the last token of each run of the mask bootstraps from 0 (episode end)
    and nothing leaks in from padding or from the next packed episode. ``rewards`` is per token
    (KL penalty on every token, the verifier score on the last). Outputs are 0 where mask is 0
    and carry no gradient.
    """
    _check_same_shape("gae", rewards=rewards, values=values, mask=mask)
    m = mask.to(values.dtype)
    r = torch.where(mask.bool(), rewards.to(values.dtype), torch.zeros_like(values))
    v = torch.where(mask.bool(), values, torch.zeros_like(values))
    next_m = torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], dim=1)
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    deltas = r + gamma * next_v - v  # next_v is 0 past the end of a run: v is masked
    running = torch.zeros_like(v[:, 0])
    steps = []
    for t in reversed(range(v.shape[1])):  # a recurrence: T small kernels, cheap next to the model
        running = deltas[:, t] + gamma * lam * next_m[:, t] * running
        steps.append(running)
    advantages = torch.stack(steps[::-1], dim=1) * m
    return advantages, (advantages + v) * m


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean)/sqrt(var + eps) over the set entries (population variance); with
    shift_mean=False the mean is added back (scale only, as for PPO rewards). Statistics are
    local to this tensor: whiten the full rollout batch, not a micro-batch. 0 where mask is 0.
    """
    _check_same_shape("whiten", x=x, mask=mask)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


@dataclass(frozen=True)
class ValueLossOutput:
    losses: Tensor  # [B, T] per-token loss, 0 where mask is 0
    clipped: Tensor  # [B, T] float, 1 where the clipped prediction gave the larger loss, detached


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip_range: float = 0.2) -> ValueLossOutput:
    """Clipped value loss, per token (Tülu 3 value clip 0.2; the coefficient 0.1 is the trainer's):

        V_clip = V_old + clip(V − V_old, −c, c),   L = ½·max((V − R)², (V_clip − R)²)
    """
    _check_same_shape("value_loss", values=values, old_values=old_values, returns=returns, mask=mask)
    if clip_range < 0:
        raise ValueError(f"value_loss: clip_range must be >= 0, got {clip_range}")
    old_values, returns = old_values.detach(), returns.detach()
    v_clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (v_clipped - returns) ** 2
    valid = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    losses = torch.where(valid, 0.5 * torch.maximum(unclipped_loss, clipped_loss), zero)
    clipped = torch.where(valid, (clipped_loss > unclipped_loss).to(values.dtype), zero).detach()
    return ValueLossOutput(losses, clipped)
