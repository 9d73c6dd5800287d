"""Document-local causal attention for packed rows, without an N x N mask.

Registered with transformers as the attention implementation "posttrain_varlen". Each document
of a packed row (boundaries in `cu_seq_lens_q`) runs through `scaled_dot_product_attention` with
`is_causal=True`, which uses the fused flash kernels on CPU and GPU; a dense block-diagonal mask
would instead force the unfused path and materialise every head's N x N scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "posttrain_varlen"
_registered = False


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query: [B, H, T, D]; key/value: [B, Hkv, T, D]. Returns [B, T, H, D] like HF's own kernels.
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    cu = kwargs.get("cu_seq_lens_q")
    if attention_mask is not None:  # a caller passed an explicit mask (e.g. padded batch): honour it
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
    elif cu is None or cu.numel() <= 2:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1, scale=scaling)
    else:
        bounds = cu.tolist()
        out = torch.cat([
            F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                           is_causal=True, scale=scaling)
            for s, e in zip(bounds[:-1], bounds[1:])], dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, varlen_attention)
        _registered = True
    return NAME
