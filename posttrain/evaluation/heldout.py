"""Held-out evaluation during RLVR: greedy responses to held-out prompts, scored by the eval
runner's own `generate_rows` with the `verifiable` task, i.e. by the verifiers the rewards use.
With tools, greedy multi-turn trajectories in the rollouts' environment, the model's own turns
scored by the same task, with how it used the tools (calls, valid calls, turns)."""

from __future__ import annotations

from typing import Sequence

import torch

from posttrain.evaluation.runner import generate_rows
from posttrain.evaluation.tasks import Sample
from posttrain.evaluation.tasks.verifiable import VerifiableTask
from posttrain.generation import Engine, SamplingParams
from posttrain.rl.multiturn import MultiTurnSettings, generate_trajectories
from posttrain.rl.rewards import accuracy_by_verifier
from posttrain.rl.rollouts import Prompt


@torch.no_grad()
def evaluate_prompts(engine: Engine, prompts: Sequence[Prompt], max_new_tokens: int,
                     stop: Sequence[str] = (), tools: MultiTurnSettings | None = None) -> dict[str, float]:
    """accuracy (share of rows with verifier score 1), mean_score (when some score is partial), per-verifier accuracy, mean response length, truncated rate."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, n=1, stop=tuple(stop), logprobs=False)
    if tools is not None:
        return _evaluate_multiturn(engine, prompts, params, tools)
    samples = [Sample(id=str(i), messages=p.row.messages, assistant_prefix="",
                      ground_truth={"dataset": p.row.dataset, "ground_truth": p.row.ground_truth})
               for i, p in enumerate(prompts)]
    # The prompts are already rendered with the training chat template; the ids are what is scored.
    rows, _ = generate_rows(VerifiableTask(name="heldout"), samples, [""] * len(samples),
                            [p.ids for p in prompts], engine, params)
    # float32 mean, as the training-side reward statistics are computed. A row is correct when its
    # score is 1 (for code rows: every test passed, whatever reward.code_mode trains on); partial
    # credit shows as mean_score.
    scores = torch.tensor([r["scores"]["correct"] for r in rows], dtype=torch.float32)
    partial = torch.tensor([r["scores"]["score"] for r in rows], dtype=torch.float32)
    out = {"accuracy": scores.mean().item(),
           "response_len": sum(r["num_tokens"] for r in rows) / len(rows),
           "truncated_rate": sum(r["finish_reason"] == "length" for r in rows) / len(rows)}
    if not torch.equal(scores, partial):
        out["mean_score"] = partial.mean().item()
    per = accuracy_by_verifier(scores, [p.row.verifier_key for p in prompts])
    if len(per) > 1:
        out.update({f"accuracy/{k}": v for k, v in per.items()})
    return out


def _evaluate_multiturn(engine: Engine, prompts: Sequence[Prompt], params: SamplingParams,
                        tools: MultiTurnSettings) -> dict[str, float]:
    task = VerifiableTask(name="heldout")
    trajs = generate_trajectories(engine, [p.ids for p in prompts], list(range(len(prompts))), params, tools)
    scored = [task.score(Sample(id=str(i), messages=p.row.messages, assistant_prefix="",
                                ground_truth={"dataset": p.row.dataset, "ground_truth": p.row.ground_truth}),
                         "".join(t.model_text))
              for i, (p, t) in enumerate(zip(prompts, trajs))]
    scores = torch.tensor([s["correct"] for s in scored], dtype=torch.float32)
    partial = torch.tensor([s["score"] for s in scored], dtype=torch.float32)
    n = len(trajs)
    out = {"accuracy": scores.mean().item(),
           "response_len": sum(len(t.token_ids) for t in trajs) / n,  # tool answers included, as the budget counts
           "truncated_rate": sum(t.finish_reason == "length" for t in trajs) / n}
    if not torch.equal(scores, partial):
        out["mean_score"] = partial.mean().item()
    out |= MultiTurnSettings.stats(trajs)
    per = accuracy_by_verifier(scores, [p.row.verifier_key for p in prompts])
    if len(per) > 1:
        out.update({f"accuracy/{k}": v for k, v in per.items()})
    return out
