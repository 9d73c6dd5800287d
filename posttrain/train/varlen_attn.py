"""Document-local causal attention for packed rows, without an N x N mask.

Registered with transformers as the attention implementation "posttrain_varlen". Each document
of a packed row (boundaries in `cu_seq_lens_q`) runs through `scaled_dot_product_attention` with
`is_causal=True`, which uses the fused flash kernels on CPU and GPU; a dense block-diagonal mask
would instead force the unfused path and materialise every head's N x N scores. RL rows may
instead carry prompt groups (`posttrain_groups`): one prompt shared by several responses.
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
    groups = kwargs.get("posttrain_groups")
    if groups is not None:
        out = grouped_attention(query, key, value, groups, scaling)
    elif attention_mask is not None:  # a caller passed an explicit mask (e.g. padded batch): honour it
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


def grouped_attention(query, key, value, groups, scaling):
    """Attention over a row of prompt groups: `groups` holds, per group, (start, prompt_len,
    response_lens) for a segment laid out [prompt, r_1, ..., r_m]. The prompt attends causally to
    itself and each response to the whole prompt and causally to itself, so the m responses of one
    prompt (a GRPO group) are trained on with the prompt run once instead of m times.

    query/key/value: [1, H, N, D] (key/value already expanded to H heads). The responses of a
    group run as one SDPA batch, right-padded to the longest; padded keys are masked out and
    padded queries are dropped.
    """
    outs = []
    for start, p, lens in groups:
        end = start + p
        outs.append(F.scaled_dot_product_attention(query[:, :, start:end], key[:, :, start:end],
                                                   value[:, :, start:end], is_causal=True, scale=scaling))
        m, width = len(lens), max(lens)
        offsets = [end + sum(lens[:j]) for j in range(m)]

        def padded(x):  # [1, H, N, D] -> [m, H, width, D]
            return torch.stack([F.pad(x[0, :, o:o + n], (0, 0, 0, width - n)) for o, n in zip(offsets, lens)])

        keys = torch.cat([key[:, :, start:end].expand(m, -1, -1, -1), padded(key)], dim=2)
        vals = torch.cat([value[:, :, start:end].expand(m, -1, -1, -1), padded(value)], dim=2)
        own = torch.ones(width, width, dtype=torch.bool, device=query.device).tril()
        real = torch.arange(width, device=query.device)[None, :] < torch.tensor(lens, device=query.device)[:, None]
        mask = torch.cat([torch.ones(m, width, p, dtype=torch.bool, device=query.device),
                          own[None] & real[:, None, :]], dim=2)[:, None]  # [m, 1, width, p + width]
        out = F.scaled_dot_product_attention(padded(query), keys, vals, attn_mask=mask, scale=scaling)
        outs += [out[j:j + 1, :, :n] for j, n in enumerate(lens)]
    return torch.cat(outs, dim=2)


def register() -> str:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, varlen_attention)
        _registered = True
    return NAME
