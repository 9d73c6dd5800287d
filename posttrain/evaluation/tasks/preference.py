"""Held-out preference accuracy: on preference pairs a stage never trained on, does the model give
the chosen response a higher likelihood than the rejected one? This is what DPO optimises, so on
pairs held out of the DPO data (`dpo.heldout`) it shows whether DPO learned the preference in
general rather than its training pairs.

Data, one pair per row, in either of two shapes (other fields, e.g. `id` or `source`, are ignored):
- `{"chosen": [messages], "rejected": [messages]}`: two full conversations that share a prompt
  (the Tülu 3 preference format, and the shape the pipeline's held-out split writes);
- `{"prompt": str | [messages], "chosen": str | [messages], "rejected": str | [messages]}`: a
  string prompt is one user turn, a string response one assistant turn; a response list either
  holds only the response or repeats the prompt first (as the Tülu 3 preference files do).
Both become two full conversations. The prompt is their longest common message prefix, which must
end with a user message; what follows it on each side must be exactly one non-empty assistant
message. Anything else is a ValueError naming file:line and the field. There is no default file:
pass one (`--data preference=PATH`; the pipeline passes the pairs DPO held out).

The runner renders the prompt with the chat template and the generation prompt and scores both
responses' content after it (continuations: [chosen, rejected]); the end-of-turn token is not
scored. Per pair, with log p the summed log-probability and |y| the token count of a response:
- `correct` = 1 if log p(chosen)/|chosen| > log p(rejected)/|rejected| (per-token average: the
  length-normalised criterion that Tülu 3's dpo_norm optimises), else 0;
- `correct_sum` = 1 if log p(chosen) > log p(rejected) (the criterion plain DPO optimises);
- `margin` = the per-token difference, nats/token; `margin_sum` = the summed difference, nats;
- `chosen_avg_logprob`, `rejected_avg_logprob`, `chosen_tokens`, `rejected_tokens`;
- `chosen_longer` = 1 if the chosen response has more tokens than the rejected one; `tie` = 1 if
  the two per-token averages are equal.
Ties are not correct: equal scores give 0 (so a model that cannot tell the two apart scores 0, not
0.5), and equal lengths are not "chosen longer".

Metrics: `accuracy` (primary, mean of correct), `accuracy_sum`, `margin`, `margin_sum` (means),
`chosen_avg_logprob`, `rejected_avg_logprob` (means: DPO often lowers both while widening the gap),
`chosen_longer` (the "always pick the longer response" baseline: a model that only prefers length
scores about this), and the counts `num_samples`, `num_ties`. accuracy, accuracy_sum and
chosen_longer get Wilson intervals (each is the mean of a 0/1 field), the rest bootstraps over pairs.

Reading the margin after DPO: dpo_norm's implicit reward is r(y) = β(log π(y) − log π_ref(y))/|y|,
so r(chosen) − r(rejected) = β(margin_policy − margin_reference): the change of `margin` from the
reference model to the policy is the held-out implicit-reward margin divided by β (for plain DPO
the same holds for `margin_sum`), up to the end-of-turn token, which training counts and this task
does not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from posttrain.evaluation.tasks.base import (GenerationConfig, LoglikOutput, MissingData, Sample, iter_rows, mean,
                                             take)
from posttrain.evaluation.tasks.chat_nll import message_list

SIDES = ("chosen", "rejected")


def _prompt(row: dict, where: str) -> list[dict[str, str]] | None:
    if "prompt" not in row:
        return None
    value = row["prompt"]
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: field 'prompt' is empty")
        return [{"role": "user", "content": value}]
    return message_list(value, where, "prompt")


def _conversation(row: dict, side: str, prompt: list[dict[str, str]] | None, where: str) -> list[dict[str, str]]:
    """One side of the pair as a full conversation (prompt included)."""
    value = row[side]
    if prompt is None:  # the chosen/rejected shape: each side is already the whole conversation
        if not isinstance(value, list):
            raise ValueError(f"{where}: field '{side}' should be a list of messages (or give a 'prompt' field), "
                             f"got {type(value).__name__}")
        return message_list(value, where, side)
    if isinstance(value, str):
        return prompt + [{"role": "assistant", "content": value}]
    turns = message_list(value, where, side)
    if turns[0]["role"] == "assistant":
        return prompt + turns
    if turns[:len(prompt)] != prompt:
        raise ValueError(f"{where}: field '{side}' opens with a {turns[0]['role']} message but does not repeat "
                         f"'prompt'")
    return turns


def split_pair(chosen: list[dict[str, str]], rejected: list[dict[str, str]], where: str
               ) -> tuple[list[dict[str, str]], str, str]:
    """(prompt, chosen content, rejected content) of two full conversations."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == len(chosen) == len(rejected):
        raise ValueError(f"{where}: fields 'chosen' and 'rejected' are identical")
    prompt = chosen[:n]
    if not prompt or prompt[-1]["role"] != "user":
        got = f"ends with a {prompt[-1]['role']} message" if prompt else "is empty (their first messages differ)"
        raise ValueError(f"{where}: fields 'chosen'/'rejected': their shared prompt must end with a user message, "
                         f"but it {got}")
    contents = []
    for side, conv in zip(SIDES, (chosen, rejected)):
        rest = conv[n:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise ValueError(f"{where}: field '{side}': expected exactly one assistant message after the shared "
                             f"prompt, got roles {[m['role'] for m in rest]}")
        if not rest[0]["content"].strip():
            raise ValueError(f"{where}: field '{side}': the response is empty")
        contents.append(rest[0]["content"])
    return prompt, contents[0], contents[1]


def parse_preference_row(row: Any, where: str) -> tuple[list[dict[str, str]], str, str]:
    """(prompt, chosen content, rejected content) of one row in either shape, or the ValueError the
    task would raise: what the held-out split can call to refuse pairs this task cannot score
    (e.g. hh-rlhf pairs whose response is two assistant turns) before anything trains."""
    for side in SIDES:
        if not isinstance(row, dict) or side not in row:
            raise ValueError(f"{where}: missing field '{side}'")
    prompt = _prompt(row, where)
    chosen, rejected = (_conversation(row, side, prompt, where) for side in SIDES)
    return split_pair(chosen, rejected, where)


@dataclass
class PreferenceTask:
    name: str = "preference"  # a variant ("preference:dpo") is this task under another name and data path
    kind: str = "loglik"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=0)  # nothing is generated
    primary_metric: str = "accuracy"
    hf_split: str = "train"  # for hf:<dataset id>: Tülu 3's preference mixtures have only a train split

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        if path is None:
            raise MissingData(f"{self.name}: no default data: pass a file of held-out preference pairs "
                              f"({{chosen, rejected}} message lists or prompt/chosen/rejected; "
                              f"--data {self.name}=PATH; the pipeline passes the pairs DPO held out)")
        rows = take(iter_rows(path, hf_split=self.hf_split), limit)
        return [self._sample(i, where, row) for i, (where, row) in enumerate(rows)]

    def _sample(self, index: int, where: str, row: dict) -> Sample:
        messages, chosen_text, rejected_text = parse_preference_row(row, where)
        meta = {"chosen": chosen_text, "rejected": rejected_text}
        if isinstance(row.get("id"), str):
            meta["source_id"] = row["id"]
        # ground truth: the index of the preferred continuation, as multiple-choice tasks store it;
        # ids by position: always unique (a mixture's own ids need not be), stable for one file
        return Sample(id=f"{self.name}/{index}", messages=messages, assistant_prefix="", ground_truth=0, meta=meta)

    def continuations(self, sample: Sample) -> list[str]:
        return [sample.meta["chosen"], sample.meta["rejected"]]

    def score(self, sample: Sample, output: LoglikOutput) -> dict[str, Any]:
        if not isinstance(output, LoglikOutput):
            raise ValueError(f"expected a LoglikOutput, got {type(output).__name__}")
        if len(output.logprobs) != 2 or len(output.num_tokens) != 2:
            raise ValueError(f"{sample.id}: expected two scored continuations (chosen, rejected), "
                             f"got {len(output.logprobs)}")
        lc, lr = (float(x) for x in output.logprobs)
        tc, tr = (int(x) for x in output.num_tokens)
        if min(tc, tr) < 1:
            raise ValueError(f"{sample.id}: a response was scored over no tokens ({tc}, {tr})")
        avg_c, avg_r = lc / tc, lr / tr
        correct = int(avg_c > avg_r)  # strict: a tie is not a preference for the chosen response
        return {"correct": correct, "correct_sum": int(lc > lr), "margin": avg_c - avg_r, "margin_sum": lc - lr,
                "chosen_avg_logprob": avg_c, "rejected_avg_logprob": avg_r, "chosen_tokens": tc,
                "rejected_tokens": tr, "chosen_longer": int(tc > tr), "tie": int(avg_c == avg_r),
                "extracted": 0 if correct else 1}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        if not scores:  # no estimate from nothing (the runner never asks)
            return {"num_samples": 0.0, "num_ties": 0.0}
        return {"accuracy": mean(s["correct"] for s in scores),
                "accuracy_sum": mean(s["correct_sum"] for s in scores),
                "margin": mean(s["margin"] for s in scores),
                "margin_sum": mean(s["margin_sum"] for s in scores),
                "chosen_avg_logprob": mean(s["chosen_avg_logprob"] for s in scores),
                "rejected_avg_logprob": mean(s["rejected_avg_logprob"] for s in scores),
                "chosen_longer": mean(s["chosen_longer"] for s in scores),
                "num_samples": float(len(scores)), "num_ties": float(sum(s["tie"] for s in scores))}

    def reward(self, completion: str, ground_truth: Any) -> float:
        # The Task Protocol declares `reward`; this task compares likelihoods, it has no completion grader.
        raise TypeError(f"{self.name} is not verifiable: it compares the log-likelihoods of two reference "
                        f"responses and has no completion reward")
