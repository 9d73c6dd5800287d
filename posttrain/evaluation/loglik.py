"""Log-likelihood scoring for multiple-choice tasks: sum log p(continuation | context), batched.

A request is (context ids, continuation ids). Requests that share a context (the answer options
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
