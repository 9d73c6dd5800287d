"""SFT loss: token cross-entropy, summed, divided by a normaliser chosen by the trainer.

The trainer picks the normaliser once per optimizer step, before any forward pass:
- reduction "mean": the number of trainable tokens in the whole step (all micro-batches, all
  ranks), so the result is the true token mean however the step is split;
- reduction "sum" (Tülu 3): a fixed constant, so every token weighs the same in every step.
Never a per-micro-batch mean, which would up-weight tokens of short micro-batches.
"""

from __future__ import annotations

import torch

from posttrain.losses.logprobs import token_logprobs


def token_nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of -log p(target) over positions whose target is not IGNORE_INDEX.

    logits: [B, T, V]; targets: [B, T], already shifted (the packing layer does it). The log-probs
    come from a chunked kernel whose backward keeps only the logits, not a float32 log-softmax.
    """
    return -token_logprobs(logits, targets, shift=False).sum()


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, normalizer: float) -> torch.Tensor:
    """Summed token NLL divided by `normalizer` (see the module docstring for how to choose it)."""
    if normalizer <= 0:
        raise ValueError(f"normalizer must be positive, got {normalizer}")
    return token_nll_sum(logits, targets) / normalizer
