"""Log-likelihood scoring for multiple-choice tasks: sum log p(continuation | context), batched.

Two paths, the same numbers (tests compare both with one plain forward per request):

`score_requests_cached` (the default): requests are visited in token order, so contexts that share
a prefix (the few-shot exemplars of one MMLU subject, TruthfulQA's QA primer) are neighbours; the
KV cache of the previous context is cut back to the common prefix and only the new tokens run.
The options of one question then run as one batch on copies of that cache, so a question costs its
own tokens plus its options', not its whole 5-shot prompt.

`score_requests` (packed): requests that share a context (the answer options
of one question) are laid out as one prompt group, [context, cont_1, ..., cont_m], and packed
with other groups into rows of at most `max_tokens` tokens; the grouped varlen attention of
training (`train/varlen_attn.grouped_attention`, via `rl/buffer.pack_grouped`) lets every
continuation attend to the one copy of its context, so each context is run once, however many
options it has, and no padding is computed. Logits are kept only at the positions that predict a
continuation token.

Tokenisation follows lm-eval: `context + continuation` is encoded whole and the continuation is
what follows the context's own encoding; whitespace at the end of the context moves to the
continuation ("Answer:" + " A", never "Answer: " + "A").
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Sequence

import torch


@dataclass(frozen=True)
class LoglikResult:
    logprob: float  # sum over the continuation's tokens
    num_tokens: int
    greedy: bool  # every continuation token is the argmax after its prefix


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    if not cont:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens after its context")
    return ctx, cont


def _groups(requests: Sequence[tuple[list[int], list[int]]], max_tokens: int) -> list[list[int]]:
    """Request indices per row: consecutive requests with the same context stay in one group, and
    whole groups are packed greedily up to `max_tokens` (a group larger than that gets its own row)."""
    rows, row, used, i = [], [], 0, 0
    while i < len(requests):
        j = i
        while j + 1 < len(requests) and requests[j + 1][0] == requests[i][0]:
            j += 1
        size = len(requests[i][0]) + sum(len(requests[k][1]) for k in range(i, j + 1))
        if row and used + size > max_tokens:
            rows.append(row)
            row, used = [], 0
        row += list(range(i, j + 1))
        used += size
        i = j + 1
    return rows + ([row] if row else [])


@torch.no_grad()
def score_requests(model, requests: Sequence[tuple[list[int], list[int]]], max_tokens: int = 4096,
                   device: torch.device | None = None) -> list[LoglikResult]:
    """One LoglikResult per (context ids, continuation ids) request, in order. Put requests with
    the same context next to each other to share its computation."""
    from posttrain.rl.buffer import pack_grouped
    from posttrain.rl.update import response_logits
    from posttrain.train.varlen_attn import NAME, install

    if not requests:
        return []
    if any(not ctx for ctx, _ in requests):
        raise ValueError("every request needs a non-empty context (at least a BOS or template token)")
    device = device or next(model.parameters()).device
    previous = getattr(model.config, "_attn_implementation", None)
    if previous != NAME:
        install(model, "varlen")
    was_training = model.training
    model.eval()
    out: list[LoglikResult | None] = [None] * len(requests)
    try:
        for idx in _groups(requests, max_tokens):
            items = SimpleNamespace(prompt_ids=[requests[i][0] for i in idx],
                                    response_ids=[requests[i][1] for i in idx])
            row = pack_grouped(items, list(range(len(idx)))).to(device)
            logits, targets = response_logits(model, row)
            logp = torch.log_softmax(logits[0].float(), dim=-1)
            picked = logp.gather(-1, targets[:, None])[:, 0]
            greedy = logp.argmax(-1) == targets
            at = 0
            for i in idx:  # targets run request by request, token by token
                n = len(requests[i][1])
                out[i] = LoglikResult(picked[at:at + n].sum().item(), n, bool(greedy[at:at + n].all()))
                at += n
    finally:
        if previous != NAME:
            model.set_attn_implementation(previous or "sdpa")
        model.train(was_training)
    return out  # type: ignore[return-value]


@torch.no_grad()
def score_requests_naive(model, requests: Sequence[tuple[list[int], list[int]]],
                         device: torch.device | None = None) -> list[LoglikResult]:
    """The reference: one plain forward pass per request over context + continuation."""
    device = device or next(model.parameters()).device
    out = []
    for ctx, cont in requests:
        ids = torch.tensor([ctx + cont], device=device)
        logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, len(ctx) - 1:-1].float(), -1)
        target = torch.tensor(cont, device=device)
        picked = logp.gather(-1, target[:, None])[:, 0]
        out.append(LoglikResult(picked.sum().item(), len(cont), bool((logp.argmax(-1) == target).all())))
    return out


def _cache_kw(model) -> str:
    """transformers >= 5.2x names the KV cache argument `cache` (`past_key_values` is deprecated)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@torch.no_grad()
def score_requests_cached(model, requests: Sequence[tuple[list[int], list[int]]],
                          device: torch.device | None = None, min_shared: int = 1) -> list[LoglikResult]:
    """One LoglikResult per request, in order, reusing the KV cache across shared context prefixes."""
    import copy

    from transformers import DynamicCache

    if any(not ctx for ctx, _ in requests):
        raise ValueError("every request needs a non-empty context (at least a BOS or template token)")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(requests)), key=lambda i: (requests[i][0], requests[i][1]))
    out: list[LoglikResult | None] = [None] * len(requests)
    cache, cached = None, []
    try:
        at = 0
        while at < len(order):
            ctx = requests[order[at]][0]
            end = at
            while end < len(order) and requests[order[end]][0] == ctx:
                end += 1
            group = order[at:end]
            at = end
            keep = min(_common_prefix(cached, ctx), len(ctx) - 1)  # at least one new token: its logits
            if cache is None or keep < min_shared:
                cache, keep = DynamicCache(), 0
            elif cache.get_seq_length() > keep:
                cache.crop(keep - cache.get_seq_length())  # negative: tokens to drop (old and new HF API)
            o = model(input_ids=torch.tensor([ctx[keep:]], device=device), use_cache=True,
                      position_ids=torch.arange(keep, len(ctx), device=device)[None], **{_cache_kw(model): cache})
            cached = ctx  # the cache object was extended in place
            last = torch.log_softmax(o.logits[0, -1].float(), -1)
            out_group = _score_options(model, cache, last, len(ctx), [requests[i][1] for i in group], device, copy)
            for i, res in zip(group, out_group):
                out[i] = res
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def _score_options(model, cache, last: torch.Tensor, ctx_len: int, conts: list[list[int]], device, copy
                   ) -> list[LoglikResult]:
    """Each continuation after a context whose cache is `cache` and whose last log-probs are `last`:
    the first tokens from `last`, the rest from one batched pass over copies of the cache."""
    first = [(last[c[0]].item(), bool(last.argmax() == c[0])) for c in conts]
    width = max(len(c) for c in conts) - 1
    rest: list[tuple[float, bool]] = [(0.0, True)] * len(conts)
    if width > 0:
        m = len(conts)
        branch = copy.deepcopy(cache)
        branch.batch_repeat_interleave(m)
        ids = torch.zeros(m, width, dtype=torch.long, device=device)
        mask = torch.zeros(m, ctx_len + width, dtype=torch.long, device=device)
        mask[:, :ctx_len] = 1
        for r, c in enumerate(conts):  # right-padded: a pad only ever follows a row's real tokens
            ids[r, :len(c) - 1] = torch.tensor(c[:-1], device=device)
            mask[r, ctx_len:ctx_len + len(c) - 1] = 1
        pos = torch.arange(ctx_len, ctx_len + width, device=device)[None].expand(m, -1)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                       **{_cache_kw(model): branch}).logits.float(), -1)
        for r, c in enumerate(conts):
            if len(c) > 1:
                target = torch.tensor(c[1:], device=device)
                rows = logp[r, :len(c) - 1]
                rest[r] = (rows.gather(-1, target[:, None]).sum().item(), bool((rows.argmax(-1) == target).all()))
    return [LoglikResult(f[0] + r[0], len(c), f[1] and r[1]) for f, r, c in zip(first, rest, conts)]
