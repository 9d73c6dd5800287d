"""Any file of RLVR rows as an eval task: score each greedy response with the row's own verifier.

Rows are the Tülu 3 RLVR format (`messages`, `ground_truth`, `dataset`), the same rows `posttrain
rlvr` trains on, so a held-out split of an RL task is evaluated with exactly the reward the policy
was trained with (`posttrain.evaluation.tasks.verifiers.verify`, dispatched on `dataset`). There is no default
file: pass one (`posttrain eval --tasks verifiable --data verifiable=held_out.jsonl`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from posttrain.evaluation.tasks.base import GenerationConfig, Sample, as_text, iter_rows, mean, require_field, take
from posttrain.evaluation.tasks.verifiers import get_verifier, validate_ground_truth, verify


@dataclass
class VerifiableTask:
    name: str = "verifiable"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=256)
    primary_metric: str = "accuracy"

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        if path is None:
            raise ValueError(f"{self.name}: no default data; pass a file of RLVR rows "
                             f"(--data {self.name}=PATH, or eval.data in a pipeline recipe)")
        return [self._sample(where, row) for where, row in take(iter_rows(path), limit)]

    def _sample(self, where: str, row: dict) -> Sample:
        messages = require_field(row, "messages", where, list)
        if not messages or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
            raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} turns")
        if messages[-1]["role"] == "assistant":  # the answer may be stored with the prompt
            messages = messages[:-1]
        dataset = require_field(row, "dataset", where, (str, list))
        for d in dataset if isinstance(dataset, list) else [dataset]:
            try:
                get_verifier(d)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if "ground_truth" not in row:
            raise ValueError(f"{where}: missing field 'ground_truth'")
        try:  # at load time, not after every response has been generated
            validate_ground_truth(dataset, row["ground_truth"])
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: field 'ground_truth' for {e}") from None
        return Sample(id=str(row.get("id", "line" + where.rsplit(":", 1)[-1])), messages=messages, assistant_prefix="",
                      ground_truth={"dataset": dataset, "ground_truth": row["ground_truth"]})

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        response = as_text(output)
        score = verify(response, sample.ground_truth["dataset"], sample.ground_truth["ground_truth"])
        return {"score": score, "correct": float(score == 1.0), "extracted": response}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return {"accuracy": mean(s["correct"] for s in scores), "mean_score": mean(s["score"] for s in scores),
                "num_samples": float(len(scores))}

    def reward(self, completion: str, ground_truth: Any) -> float:
        return verify(as_text(completion), ground_truth["dataset"], ground_truth["ground_truth"])
