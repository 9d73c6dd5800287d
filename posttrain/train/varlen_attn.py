"""Document-local causal attention for packed rows, without an N x N mask.

Registered with transformers as the attention implementation "posttrain_varlen". Each document
of a packed row (boundaries in `cu_seq_lens_q`) runs through `scaled_dot_product_attention` with
`is_causal=True`, which uses the fused flash kernels on CPU and GPU; a dense block-diagonal mask
would instead force the unfused path and materialise every head's N x N scores. RL rows may
instead carry prompt groups (`posttrain_groups`): one prompt shared by several responses.

`attn_implementation: varlen_flash` keeps the same name but, on CUDA, sends plain packed rows to
torch's variable-length flash kernel (`torch.nn.attention.varlen.varlen_attn`): one launch per
layer instead of one per document, and grouped-query attention without copying keys and values
to every query head. It is unmeasured on a GPU so far (no GPU was lent when it was written), so
it is opt-in; everything else (CPU, prompt groups, explicit masks) takes the SDPA path.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NAME = "posttrain_varlen"
IMPLEMENTATIONS = ("varlen", "varlen_flash")  # the `attn_implementation` values served here
_registered = False
_kernel = "sdpa"  # or "flash": torch's varlen flash kernel for plain packed rows on CUDA
_flash_on_cpu = False  # tests only: lets a stand-in kernel exercise the flash path's layout on CPU


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # query: [B, H, T, D]; key/value: [B, Hkv, T, D]. Returns [B, T, H, D] like HF's own kernels.
    cu = kwargs.get("cu_seq_lens_q")
    if (_kernel == "flash" and (query.is_cuda or _flash_on_cpu) and cu is not None and query.shape[0] == 1
            and attention_mask is None and kwargs.get("posttrain_groups") is None):
        return flash_varlen(query, key, value, cu, kwargs.get("max_length_q"), scaling), None
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
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


def flash_varlen(query, key, value, cu, max_len, scaling):
    """One packed row [1, H, T, D] (key/value [1, Hkv, T, D]) through torch's varlen flash kernel,
    causal within each document; returns [1, T, H, D]. Older torch releases spell causality
    `is_causal` and lack `enable_gqa`; both spellings are handled."""
    from torch.nn.attention import varlen

    params = _varlen_params(varlen.varlen_attn)
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, D] views
    extra = {}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    if "window_size" in params:
        extra["window_size"] = (-1, 0)
    else:
        extra["is_causal"] = True
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if max_len is None:
        max_len = int((cu[1:] - cu[:-1]).max())
    out = varlen.varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scaling, **extra)
    return out.unsqueeze(0)


@functools.lru_cache(maxsize=8)
def _varlen_params(fn) -> frozenset:
    import inspect

    return frozenset(inspect.signature(fn).parameters)


def grouped_attention(query, key, value, groups, scaling):
    """Attention over a row of prompt groups: `groups` holds, per group, (start, prompt_len,
    response_lens) for a segment laid out [prompt, r_1, ..., r_m]. The prompt attends causally to
    itself and each response to the whole prompt and causally to itself, so the m responses of one
    prompt (a GRPO group) are trained on with the prompt run once instead of m times.

    query/key/value: [1, H, N, D] (key/value already expanded to H heads). The responses of a
    group run as one SDPA batch, right-padded to the longest (views, no copy, when they are all
    equally long); padded keys are masked out and padded queries dropped.
    """
    # one split per tensor (its backward is one cat), not a slice per piece (each of whose
    # backward passes would write a zero-filled gradient of the whole row)
    sizes, equal = [], []
    for _, p, lens in groups:
        same = all(n == lens[0] for n in lens)
        equal.append(same)
        sizes += [p, sum(lens)] if same else [p, *lens]
    pieces = [t.split(sizes, dim=2) for t in (query, key, value)]
    outs, at = [], 0
    for (_, p, lens), same in zip(groups, equal):
        m, width = len(lens), max(lens)
        (qp, kp, vp) = (x[at] for x in pieces)
        outs.append(F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scaling))
        if same:  # [1, H, m * width, D] -> [m, H, width, D], a view
            q, k, v = (x[at + 1].unflatten(2, (m, width))[0].transpose(0, 1) for x in pieces)
            at += 2
        else:
            q, k, v = (torch.cat([F.pad(r, (0, 0, 0, width - r.shape[2])) for r in x[at + 1:at + 1 + m]])
                       for x in pieces)
            at += 1 + m
        keys = torch.cat([kp.expand(m, -1, -1, -1), k], dim=2)
        vals = torch.cat([vp.expand(m, -1, -1, -1), v], dim=2)
        out = F.scaled_dot_product_attention(q, keys, vals, attn_mask=_group_mask(p, lens, query.device),
                                             scale=scaling)
        if same:
            outs.append(out.transpose(0, 1).reshape(1, out.shape[1], m * width, out.shape[3]))
        else:
            outs += [r[None, :, :n] for r, n in zip(out.unbind(0), lens)]
    return torch.cat(outs, dim=2)


@functools.lru_cache(maxsize=256)
def _group_mask(p: int, lens: tuple[int, ...], device) -> torch.Tensor:
    """[m, 1, width, p + width] bool: the whole prompt, then the response's own keys causally."""
    m, width = len(lens), max(lens)
    own = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    real = torch.arange(width, device=device)[None, :] < torch.tensor(lens, device=device)[:, None]
    return torch.cat([torch.ones(m, width, p, dtype=torch.bool, device=device),
                      own[None] & real[:, None, :]], dim=2)[:, None]


def register(kernel: str = "sdpa") -> str:
    """Register the attention function with transformers; `kernel` is "sdpa" (per-document SDPA)
    or "flash" (torch's varlen flash kernel on CUDA). Returns the name to pass to
    `set_attn_implementation`."""
    global _registered, _kernel
    if kernel not in ("sdpa", "flash"):
        raise ValueError(f"unknown varlen kernel '{kernel}'; valid: sdpa, flash")
    _kernel = kernel
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, varlen_attention)
        _register_mask()
        _registered = True
    return NAME


def _register_mask() -> None:
    """A padding mask for calls that pass one (generation on left-padded batches, e.g. the HF
    generation path). Without a mask function transformers builds no mask for a custom attention
    name, so padded rows attended to their padding (log-probs off by ~0.2 on a tiny model). Packed
    training rows pass no attention mask and still get none: documents are separated by
    `cu_seq_lens_q`, with no N x N mask."""
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:  # transformers before the mask interface: it passes masks itself
        return

    def mask(*args, attention_mask=None, **kwargs):
        if attention_mask is None:
            return None
        return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)

    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, mask)


def hf_attn_implementation(impl: str) -> str:
    """What to load a model with for a `ModelConfig.attn_implementation` value: ours are
    installed after loading on top of SDPA."""
    return "sdpa" if impl in IMPLEMENTATIONS else impl


def install(model, impl: str):
    """Switch a loaded model to our attention when `impl` is one of ours; returns the model."""
    if impl in IMPLEMENTATIONS:
        model.set_attn_implementation(register("flash" if impl == "varlen_flash" else "sdpa"))
    return model
