"""Held-out chat NLL: how well a model predicts the last assistant turn of conversations it never
trained on. This is what SFT optimises, measured on rows the stage did not see (the pipeline holds
them out of the SFT data: `sft.heldout`), so it shows whether SFT learned the data's responses in
general rather than its training rows.

Data: chat rows in the Tülu 3 SFT format, `{"messages": [{"role", "content"}, ...]}` (any other
field, e.g. `id` or `source`, is ignored; roles are system/user/assistant). There is no default
file: pass one (`--data chat_nll=PATH`; the pipeline passes the rows SFT held out).

One sample per row. Its context is every message before the row's LAST assistant message (the
runner renders it with the chat template and the generation prompt) and its one continuation is
that message's content; messages after it, if any, are dropped. Only the content's tokens are
scored: the template's end-of-turn token is not, so the number is close to, but not the same as,
the SFT training loss on that turn (which also counts the end-of-turn token, and every assistant
turn of the conversation, not just the last).

Per sample: `nll_sum` = -log p(response | context) in nats, `tokens` = its token count,
`nll_per_token` = nll_sum / tokens. Metrics (lower is better for all three estimates):
- `nll` (primary): token-weighted NLL per token, sum(nll_sum) / sum(tokens): the corpus-level
  number, where a long response weighs by its length (as in an SFT loss summed over tokens);
- `mean_nll`: the mean over samples of nll_per_token (every conversation weighs the same);
- `ppl`: exp(nll); and the counts `num_samples`, `num_tokens` (no interval).
Intervals are bootstraps over samples: no score field is a 0/1 indicator whose mean is a metric.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from posttrain.evaluation.tasks.base import GenerationConfig, LoglikOutput, MissingData, Sample, iter_rows, take

ROLES = ("system", "user", "assistant")
_MAX_LOG = 700.0  # exp() of more than this overflows a float: such a perplexity is reported as inf


def message_list(value: Any, where: str, field: str) -> list[dict[str, str]]:
    """`value` as clean `{"role", "content"}` messages, or a ValueError naming file:line and field."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else type(value).__name__
        raise ValueError(f"{where}: field '{field}' should be a non-empty list of messages, got {got}")
    clean = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(f"{where}: field '{field}[{i}]' should be a message object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}: field '{field}[{i}].role' is {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{where}: field '{field}[{i}].content' should be a string, got {type(content).__name__}")
        clean.append({"role": role, "content": content})
    return clean


def split_last_assistant(messages: list[dict[str, str]], where: str, field: str = "messages"
                         ) -> tuple[list[dict[str, str]], str]:
    """(context, response): the messages before the last assistant message, and its content."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError(f"{where}: field '{field}' has no assistant message to score")
    if not messages[last]["content"].strip():
        raise ValueError(f"{where}: field '{field}[{last}].content' (the last assistant message) is empty")
    if last == 0:
        raise ValueError(f"{where}: field '{field}' opens with the assistant message: no context to condition on")
    return messages[:last], messages[last]["content"]


def parse_chat_row(row: Any, where: str) -> tuple[list[dict[str, str]], str]:
    """(context, response) of one chat row, or the ValueError the task would raise: what the
    held-out split can call to refuse rows this task cannot score before anything trains."""
    if not isinstance(row, dict) or "messages" not in row:
        raise ValueError(f"{where}: missing field 'messages'")
    return split_last_assistant(message_list(row["messages"], where, "messages"), where)


@dataclass
class ChatNLLTask:
    name: str = "chat_nll"  # a variant ("chat_nll:sft") is this task under another name and data path
    kind: str = "loglik"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=0)  # nothing is generated
    primary_metric: str = "nll"
    hf_split: str = "train"  # for hf:<dataset id>: Tülu 3's SFT mixture has only a train split
    lower_is_better: ClassVar[tuple[str, ...]] = ("nll", "mean_nll", "ppl")  # for the report's direction

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        if path is None:
            raise MissingData(f"{self.name}: no default data: pass a file of held-out chat rows with a "
                              f"'messages' list (--data {self.name}=PATH; the pipeline passes the rows SFT "
                              f"held out)")
        rows = take(iter_rows(path, hf_split=self.hf_split), limit)
        return [self._sample(i, where, row) for i, (where, row) in enumerate(rows)]

    def _sample(self, index: int, where: str, row: dict) -> Sample:
        context, response = parse_chat_row(row, where)
        meta: dict[str, Any] = {"context_messages": len(context)}
        if isinstance(row.get("id"), str):
            meta["source_id"] = row["id"]
        # ids by position: always unique (a mixture's own ids need not be), stable for one file
        return Sample(id=f"{self.name}/{index}", messages=context, assistant_prefix="", ground_truth=response,
                      meta=meta)

    def continuations(self, sample: Sample) -> list[str]:
        return [sample.ground_truth]

    def score(self, sample: Sample, output: LoglikOutput) -> dict[str, Any]:
        if not isinstance(output, LoglikOutput):
            raise ValueError(f"expected a LoglikOutput, got {type(output).__name__}")
        if len(output.logprobs) != 1 or len(output.num_tokens) != 1:
            raise ValueError(f"{sample.id}: expected one scored continuation, got {len(output.logprobs)}")
        nll, tokens = -float(output.logprobs[0]), int(output.num_tokens[0])
        if tokens < 1:
            raise ValueError(f"{sample.id}: the response was scored over {tokens} tokens")
        return {"nll_sum": nll, "tokens": tokens, "nll_per_token": nll / tokens}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        total = sum(int(s["tokens"]) for s in scores)
        if not scores or total == 0:  # no estimate from nothing (the runner never asks)
            return {"num_samples": float(len(scores)), "num_tokens": float(total)}
        nll = sum(float(s["nll_sum"]) for s in scores) / total
        return {"nll": nll,
                "mean_nll": sum(float(s["nll_per_token"]) for s in scores) / len(scores),
                "ppl": math.exp(nll) if nll < _MAX_LOG else math.inf,
                "num_samples": float(len(scores)), "num_tokens": float(total)}

    def reward(self, completion: str, ground_truth: Any) -> float:
        # The Task Protocol declares `reward`; this task grades likelihoods, not completions.
        raise TypeError(f"{self.name} is not verifiable: it scores the log-likelihood of a reference "
                        f"response and has no completion reward")
