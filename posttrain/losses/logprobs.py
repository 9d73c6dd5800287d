"""Per-token log-probs, per-sequence sums and entropies from model logits, memory-aware.

``token_logprobs`` computes log p(label) = z[label] − logsumexp(z) in float32 over chunks of
rows, keeping only the logits (in their own dtype) and one float per token for backward; the
gradient is rebuilt chunk by chunk as (onehot − softmax)·g. A plain ``log_softmax(logits.float())``
would hold two float32 copies of the [N, V] logits until backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from posttrain.data.chat import IGNORE_INDEX


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, temperature: float, chunk_size: int) -> Tensor:
        acc = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 for float64 input
        out = torch.zeros(targets.shape, dtype=acc, device=logits.device)
        lse = torch.zeros(targets.shape, dtype=acc, device=logits.device)
        for s in range(0, logits.shape[0], chunk_size):
            z = logits[s:s + chunk_size].to(acc)
            if temperature != 1.0:
                z = z / temperature
            tgt = targets[s:s + chunk_size]
            lse[s:s + chunk_size] = torch.logsumexp(z, dim=-1)
            picked = z.gather(-1, tgt.clamp(min=0)[:, None]).squeeze(-1)
            out[s:s + chunk_size] = torch.where(tgt != IGNORE_INDEX, picked - lse[s:s + chunk_size], 0.0)
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, targets, lse = ctx.saved_tensors
        temperature = ctx.temperature
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk_size):
            tgt = targets[s:s + ctx.chunk_size]
            g = torch.where(tgt != IGNORE_INDEX, grad_out[s:s + ctx.chunk_size].to(lse.dtype), 0.0)
            if temperature != 1.0:
                g = g / temperature
            # in place on one float32 chunk: dz = (onehot − softmax(z))·g
            dz = logits[s:s + ctx.chunk_size].to(lse.dtype, copy=True)  # never write into the logits
            if temperature != 1.0:
                dz.div_(temperature)
            dz.sub_(lse[s:s + ctx.chunk_size, None]).exp_().mul_(-g[:, None])
            dz.scatter_add_(-1, tgt.clamp(min=0)[:, None], g[:, None])
            grad[s:s + ctx.chunk_size].copy_(dz)
        return grad, None, None, None


def token_logprobs(logits: Tensor, labels: Tensor, *, shift: bool, temperature: float = 1.0,
                   chunk_size: int = 1024) -> Tensor:
    """Log-prob of each label under ``logits / temperature`` in float32 (float64 for float64
    logits), 0 where the label is -100.

    logits [B, T, V] (a packed batch is [1, N, V]); labels [B, T] of token ids with -100 for
    ignored positions. ``shift`` has no default because an off-by-one trains silently wrong:
      shift=False: labels are next-token targets (``PackedBatch.targets``, shifted per document
                   by the data layer); returns [B, T].
      shift=True:  labels are aligned with the inputs (labels or input_ids); position t scores
                   labels[:, t+1] with logits[:, t]; returns [B, T-1], whose mask is
                   labels[:, 1:] != -100. In a packed row the first label of each document must
                   then be -100, or it is scored from the previous document.
    ``temperature`` must match the sampler's when scoring RL rollouts.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"token_logprobs: logits must be [B, T, V] and labels [B, T], got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if temperature <= 0 or chunk_size < 1:
        raise ValueError(f"token_logprobs: temperature and chunk_size must be > 0, got {temperature}, {chunk_size}")
    if shift:
        # Score every position against the next label and drop the last column: this keeps the
        # logits un-sliced, so flattening them below is a view and not a [B, T, V] copy.
        labels = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)
    b, t, v = logits.shape
    out = _TokenLogprobs.apply(logits.reshape(b * t, v), labels.reshape(b * t).long(), float(temperature), chunk_size)
    out = out.view(b, t)
    return out[:, :-1] if shift else out


def sequence_logprobs(per_token_logprobs: Tensor, mask: Tensor) -> Tensor:
    """[B, T] → [B]: sum of log-probs over positions where mask is set (a response)."""
    if per_token_logprobs.shape != mask.shape:
        raise ValueError(f"sequence_logprobs: shapes differ: {tuple(per_token_logprobs.shape)} vs {tuple(mask.shape)}")
    return torch.where(mask.bool(), per_token_logprobs, torch.zeros_like(per_token_logprobs)).sum(dim=-1)


def segment_sum(values: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    """[N] → [num_segments]: out[s] = Σ values[i] over i with segment_ids[i] = s (differentiable).

    For packed batches: per-document sums of per-token log-probs. Ids must lie in
    [0, num_segments); zero the values of positions that belong to no segment (padding, prompt).
    """
    if values.dim() != 1 or segment_ids.shape != values.shape:
        raise ValueError(f"segment_sum: values and segment_ids must both be [N], got "
                         f"{tuple(values.shape)} and {tuple(segment_ids.shape)}")
    out = torch.zeros(num_segments, dtype=values.dtype, device=values.device)
    return out.index_add(0, segment_ids.long(), values)


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024) -> Tensor:
    """Entropy of softmax(logits) per position, [..., V] → [...], in float32 (or float64):
    H = logsumexp(z) − Σ softmax(z)·z, computed over chunks of rows.

    Chunking bounds memory only without autograd: call under torch.no_grad() for logging.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for s in range(0, flat.shape[0], chunk_size):
        z = flat[s:s + chunk_size].to(torch.promote_types(flat.dtype, torch.float32))
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        parts.append(lse.squeeze(-1) - (torch.exp(z - lse) * z).sum(dim=-1))
    if not parts:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.promote_types(logits.dtype, torch.float32))
    return torch.cat(parts).view(logits.shape[:-1])
