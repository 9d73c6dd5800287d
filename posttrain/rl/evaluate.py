"""Held-out evaluation during RLVR: greedy responses to held-out prompts, scored by the same
verifiers as the rewards."""

from __future__ import annotations

from typing import Sequence

import torch

from posttrain.rl.rewards import accuracy_by_verifier, verifier_scores
from posttrain.rl.rollouts import Prompt
from posttrain.rollout import Engine, SamplingParams


@torch.no_grad()
def evaluate_prompts(engine: Engine, prompts: Sequence[Prompt], max_new_tokens: int,
                     stop: Sequence[str] = ()) -> dict[str, float]:
    """accuracy (mean verifier score), per-verifier accuracy, mean response length, truncated rate."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, n=1, stop=tuple(stop), logprobs=False)
    outs = engine.generate([p.ids for p in prompts], params)
    rows = [prompts[o.prompt_index].row for o in outs]
    scores = verifier_scores([o.text for o in outs], rows)
    out = {"accuracy": scores.mean().item(),
           "response_len": sum(len(o.token_ids) for o in outs) / len(outs),
           "truncated_rate": sum(o.finish_reason == "length" for o in outs) / len(outs)}
    per = accuracy_by_verifier(scores, [r.verifier_key for r in rows])
    if len(per) > 1:
        out.update({f"accuracy/{k}": v for k, v in per.items()})
    return out
