"""Held-out evaluation during RLVR: greedy responses to held-out prompts, scored by the eval
runner's own `generate_rows` with the `verifiable` task, i.e. by the verifiers the rewards use."""

from __future__ import annotations

from typing import Sequence

import torch

from posttrain.evaluation.runner import generate_rows
from posttrain.evaluation.tasks import Sample
from posttrain.evaluation.tasks.verifiable import VerifiableTask
from posttrain.generation import Engine, SamplingParams
from posttrain.rl.rewards import accuracy_by_verifier
from posttrain.rl.rollouts import Prompt


@torch.no_grad()
def evaluate_prompts(engine: Engine, prompts: Sequence[Prompt], max_new_tokens: int,
                     stop: Sequence[str] = ()) -> dict[str, float]:
    """accuracy (mean verifier score), per-verifier accuracy, mean response length, truncated rate."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, n=1, stop=tuple(stop), logprobs=False)
    samples = [Sample(id=str(i), messages=p.row.messages, assistant_prefix="",
                      ground_truth={"dataset": p.row.dataset, "ground_truth": p.row.ground_truth})
               for i, p in enumerate(prompts)]
    # The prompts are already rendered with the training chat template; the ids are what is scored.
    rows, _ = generate_rows(VerifiableTask(name="heldout"), samples, [""] * len(samples),
                            [p.ids for p in prompts], engine, params)
    # float32 mean, as the training-side reward statistics are computed
    scores = torch.tensor([r["scores"]["score"] for r in rows], dtype=torch.float32)
    out = {"accuracy": scores.mean().item(),
           "response_len": sum(r["num_tokens"] for r in rows) / len(rows),
           "truncated_rate": sum(r["finish_reason"] == "length" for r in rows) / len(rows)}
    per = accuracy_by_verifier(scores, [p.row.verifier_key for p in prompts])
    if len(per) > 1:
        out.update({f"accuracy/{k}": v for k, v in per.items()})
    return out
