"""Padding-free packing: documents concatenated into token-budgeted micro-batches.

A packed micro-batch is one row of `N` tokens holding several documents. `position_ids` restart at
0 for each document, and the attention mask is block-diagonal-causal so no token attends across a
document boundary. Targets are shifted here (the data layer's job) and never cross a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from posttrain.data.chat import IGNORE_INDEX


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, N]
    targets: torch.Tensor  # [1, N]: next token to predict at each position, IGNORE_INDEX if none
    position_ids: torch.Tensor  # [1, N]
    seq_lens: list[int]  # document lengths, summing to N

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def segment_ids(self) -> torch.Tensor:
        return torch.repeat_interleave(torch.arange(len(self.seq_lens)), torch.tensor(self.seq_lens))

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.targets.to(device),
                           self.position_ids.to(device), self.seq_lens)


def shift_labels(labels: Sequence[int]) -> list[int]:
    """targets[t] = labels[t + 1]; the last position of a document predicts nothing."""
    return list(labels[1:]) + [IGNORE_INDEX]


def pack(docs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> PackedBatch:
    """Concatenate (input_ids, labels) documents into one packed row."""
    ids, tgts, pos, lens = [], [], [], []
    for input_ids, labels in docs:
        n = len(input_ids)
        assert n == len(labels) and n > 0
        ids.extend(input_ids)
        tgts.extend(shift_labels(labels))
        pos.extend(range(n))
        lens.append(n)
    return PackedBatch(torch.tensor([ids]), torch.tensor([tgts]), torch.tensor([pos]), lens)


def plan_micro_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group document indices, in order, into micro-batches of at most `max_tokens` tokens.

    Order is kept (the caller shuffles) so that a step's content depends only on the sampler,
    which makes resumption exact.
    """
    batches, cur, cur_len = [], [], 0
    for i, n in enumerate(lengths):
        if n > max_tokens:
            raise ValueError(f"document {i} has {n} tokens, more than the micro-batch budget {max_tokens}; "
                             f"raise train.micro_batch_tokens or lower data.max_length")
        if cur and cur_len + n > max_tokens:
            batches.append(cur)
            cur, cur_len = [], 0
        cur.append(i)
        cur_len += n
    if cur:
        batches.append(cur)
    return batches


def packed_attention_mask(seq_lens: Sequence[int], dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive [1, 1, N, N] mask: 0 where a query may attend (same document, not in the future).

    HF models accept a custom 4D mask with every attention implementation; an additive float mask
    behaves the same under eager and SDPA attention.
    """
    seg = torch.repeat_interleave(torch.arange(len(seq_lens), device=device),
                                  torch.tensor(list(seq_lens), device=device))
    n = seg.numel()
    allowed = (seg[:, None] == seg[None, :]) & torch.ones(n, n, dtype=torch.bool, device=device).tril()
    mask = torch.zeros(n, n, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def cu_seqlens(seq_lens: Sequence[int], device=None) -> torch.Tensor:
    out = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    out[1:] = torch.cumsum(torch.tensor(list(seq_lens)), 0)
    return out.to(device)


def packed_forward(model, batch: PackedBatch, **kwargs):
    """Run a HF causal LM on a packed row with document-local attention; returns the model output.

    With the "posttrain_varlen" attention implementation (see train/varlen_attn.py) documents are
    attended one by one through fused kernels; any other implementation gets a dense 4D mask.
    Pass `logits_to_keep=<1-D index tensor>` to compute logits only where there is a target.
    """
    device = batch.input_ids.device
    if getattr(model.config, "_attn_implementation", None) == "posttrain_varlen":
        cu = cu_seqlens(batch.seq_lens, device)
        return model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                     cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(batch.seq_lens),
                     max_length_k=max(batch.seq_lens), **kwargs)
    dtype = next(model.parameters()).dtype
    mask = packed_attention_mask(batch.seq_lens, dtype, device)
    return model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=mask,
                 use_cache=False, **kwargs)
