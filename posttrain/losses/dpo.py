"""Preference losses (DPO family) over per-sequence log-probs.

Every function in ``LOSSES`` has the same tensor contract, passed by keyword:
  policy_chosen_logps, policy_rejected_logps  [B] log πθ(y|x) summed over response tokens
  ref_chosen_logps, ref_rejected_logps        [B] the same under π_ref; None only for SimPO
  chosen_lengths, rejected_lengths            [B] response token counts, >= 1 (the data layer
                                              drops rows with no response token)
Hyperparameters are keyword arguments bound once (``bind_preference_loss``). Each returns
per-example losses [B]; the trainer reduces over the global batch itself.
Notation: Δ_w = log πθ(y_w|x) − log π_ref(y_w|x), Δ_l likewise, |y| a response length,
ε the label-smoothing rate (conservative DPO: the label is flipped with probability ε).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PreferenceLossOutput:
    losses: Tensor  # [B], differentiable
    chosen_rewards: Tensor  # [B], β-scaled implicit reward, detached
    rejected_rewards: Tensor  # [B], detached

    @property
    def accuracies(self) -> Tensor:
        return (self.chosen_rewards > self.rejected_rewards).float()


class PreferenceLossFn(Protocol):
    def __call__(self, *, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                 ref_chosen_logps: Tensor | None, ref_rejected_logps: Tensor | None,
                 chosen_lengths: Tensor, rejected_lengths: Tensor) -> PreferenceLossOutput: ...


def _check(name: str, beta: float, label_smoothing: float, **tensors: Tensor | None) -> None:
    if beta <= 0:
        raise ValueError(f"{name}: beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"{name}: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    missing = [k for k, v in tensors.items() if v is None]
    if missing:
        raise ValueError(f"{name}: needs {missing} (reference log-probs are required except for simpo)")
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
        raise ValueError(f"{name}: expected 1-D tensors of one shape [B], got {shapes}")


def _sigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    # −(1−ε)·log σ(z) − ε·log σ(−z); logsigmoid is stable for large |z|.
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo_loss(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             chosen_lengths, rejected_lengths, beta: float, label_smoothing: float = 0.0) -> PreferenceLossOutput:
    """Sigmoid DPO: L = −(1−ε)·log σ(β(Δ_w − Δ_l)) − ε·log σ(−β(Δ_w − Δ_l)), summed log-probs.

    Rewards β·Δ_w, β·Δ_l. Lengths are unused (accepted for the shared contract).
    """
    _check("dpo", beta, label_smoothing, policy_chosen_logps=policy_chosen_logps,
           policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
           ref_rejected_logps=ref_rejected_logps)
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    losses = _sigmoid_loss(beta * (chosen - rejected), label_smoothing)
    return PreferenceLossOutput(losses, (beta * chosen).detach(), (beta * rejected).detach())


def dpo_norm_loss(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                  chosen_lengths, rejected_lengths, beta: float, label_smoothing: float = 0.0) -> PreferenceLossOutput:
    """Length-normalised DPO (Tülu 3's choice, β = 5): the sigmoid DPO loss with
    z = β(Δ_w/|y_w| − Δ_l/|y_l|). Rewards β·Δ_w/|y_w|, β·Δ_l/|y_l|.
    """
    _check("dpo_norm", beta, label_smoothing, policy_chosen_logps=policy_chosen_logps,
           policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
           ref_rejected_logps=ref_rejected_logps, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    chosen = (policy_chosen_logps - ref_chosen_logps) / chosen_lengths
    rejected = (policy_rejected_logps - ref_rejected_logps) / rejected_lengths
    losses = _sigmoid_loss(beta * (chosen - rejected), label_smoothing)
    return PreferenceLossOutput(losses, (beta * chosen).detach(), (beta * rejected).detach())


def simpo_loss(*, policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths,
               beta: float, gamma_beta_ratio: float = 0.3, label_smoothing: float = 0.0,
               ref_chosen_logps=None, ref_rejected_logps=None) -> PreferenceLossOutput:
    """SimPO, reference-free: z = β(log πθ(y_w|x)/|y_w| − log πθ(y_l|x)/|y_l|) − γ, then the
    sigmoid loss above. The config gives γ as ``gamma_beta_ratio`` = γ/β (Tülu default 0.3), so
    γ = gamma_beta_ratio·β and the target margin stays fixed in nats per token when β changes.
    Rewards β·avg log πθ. Reference log-probs are ignored (may be None).
    """
    _check("simpo", beta, label_smoothing, policy_chosen_logps=policy_chosen_logps,
           policy_rejected_logps=policy_rejected_logps, chosen_lengths=chosen_lengths,
           rejected_lengths=rejected_lengths)
    chosen = policy_chosen_logps / chosen_lengths
    rejected = policy_rejected_logps / rejected_lengths
    losses = _sigmoid_loss(beta * (chosen - rejected - gamma_beta_ratio), label_smoothing)
    return PreferenceLossOutput(losses, (beta * chosen).detach(), (beta * rejected).detach())


def ipo_loss(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             chosen_lengths, rejected_lengths, beta: float) -> PreferenceLossOutput:
    """IPO (Azar et al. 2023): L = (h − 1/(2β))² with h = Δ_w/|y_w| − Δ_l/|y_l|.

    Log-ratios are length-averaged, as in TRL, so β means the same as in a TRL run; Azar et al.
    write h with summed log-probs: pass lengths of ones to get that form. Rewards β·Δ/|y|.
    """
    _check("ipo", beta, 0.0, policy_chosen_logps=policy_chosen_logps,
           policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
           ref_rejected_logps=ref_rejected_logps, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    chosen = (policy_chosen_logps - ref_chosen_logps) / chosen_lengths
    rejected = (policy_rejected_logps - ref_rejected_logps) / rejected_lengths
    losses = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLossOutput(losses, (beta * chosen).detach(), (beta * rejected).detach())


def wpo_loss(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             chosen_lengths, rejected_lengths, beta: float, label_smoothing: float = 0.0) -> PreferenceLossOutput:
    """WPO as Tülu 3 ran it: the sigmoid DPO loss (summed log-probs) times a detached weight
    w = min(1, exp(log πθ(y_w|x)/|y_w| + log πθ(y_l|x)/|y_l|)), which favours pairs the policy
    itself would likely generate. Rewards as in ``dpo_loss``.
    """
    _check("wpo", beta, label_smoothing, policy_chosen_logps=policy_chosen_logps,
           policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
           ref_rejected_logps=ref_rejected_logps, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    out = dpo_loss(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                   ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                   chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
                   beta=beta, label_smoothing=label_smoothing)
    avg = policy_chosen_logps / chosen_lengths + policy_rejected_logps / rejected_lengths
    weight = torch.exp(avg.detach()).clamp(max=1.0)
    return PreferenceLossOutput(out.losses * weight, out.chosen_rewards, out.rejected_rewards)


LOSSES: dict[str, PreferenceLossFn] = {
    "dpo": dpo_loss, "dpo_norm": dpo_norm_loss, "simpo": simpo_loss, "ipo": ipo_loss, "wpo": wpo_loss,
}
REFERENCE_FREE: frozenset[str] = frozenset({"simpo"})  # the recipe skips the reference pass for these


def bind_preference_loss(name: str, **hparams: float) -> PreferenceLossFn:
    """Pick a loss by name and bind its hyperparameters once, failing early on a name or a
    hyperparameter the loss does not take (e.g. label_smoothing for ipo)."""
    if name not in LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; choose one of {sorted(LOSSES)}")
    fn = LOSSES[name]
    params = inspect.signature(fn).parameters
    extra = sorted(k for k in hparams if k not in params or k.endswith(("_logps", "_lengths")))
    if extra:
        raise ValueError(f"preference loss {name!r} does not take {extra}")
    return functools.partial(fn, **hparams)
