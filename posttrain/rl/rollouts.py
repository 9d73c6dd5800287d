"""Rollouts: tokenized prompts, one step's generation through the engine, and its rewards.

Sampling is seeded per step (`step_seed`), and the engine's noise depends only on (seed, prompt,
sample, position), so the batch of a given step is the same whatever ran before it: a resumed run
regenerates exactly what the uninterrupted run generated.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from posttrain.data.chat import LoadStats
from posttrain.data.rlvr import RLVRRow
from posttrain.rl.rewards import accuracy_by_verifier, combine_rewards, verifier_scores
from posttrain.generation import Engine, SamplingParams


@dataclass(frozen=True)
class Prompt:
    row: RLVRRow
    ids: list[int]  # chat-templated prompt with the generation header, tokenized


def encode_prompts(tokenizer, rows: Sequence[RLVRRow], max_prompt_length: int,
                   stats: LoadStats | None = None) -> list[Prompt]:
    """Render each prompt with the chat template (+ generation prompt); drop and count long ones."""
    out = []
    for row in rows:
        text = tokenizer.apply_chat_template(row.messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length:
            if stats is not None:
                stats.drop("prompt longer than max_prompt_length", f"{row.source}: {len(ids)} prompt tokens")
            continue
        out.append(Prompt(row, ids))
    return out


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of one step: a hash, so neighbouring steps get unrelated streams."""
    digest = hashlib.sha256(f"rlvr-rollout:{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


@dataclass
class RolloutBatch:
    """One step's samples: P prompts × k samples, the k samples of a prompt contiguous."""

    step: int
    policy_version: int  # optimizer updates applied to the weights that generated it
    group_size: int
    prompt_ids: list[list[int]]  # [N]
    response_ids: list[list[int]]  # [N] sampled tokens, end token included
    gen_logprobs: list[list[float]]  # [N] the engine's log-probs of response_ids
    texts: list[str]
    finish_reasons: list[str]
    verifier_keys: list[str]
    scores: Tensor  # [N] verifier score in [0, 1]
    rewards: Tensor  # [N] scalar reward
    gen_seconds: float = 0.0
    reward_seconds: float = 0.0
    samples: list[dict] = field(default_factory=list)  # a few (prompt, response, reward) for the log

    @property
    def num_samples(self) -> int:
        return len(self.response_ids)

    @property
    def truncated(self) -> Tensor:
        return torch.tensor([f == "length" for f in self.finish_reasons])

    @property
    def response_lengths(self) -> Tensor:
        return torch.tensor([len(r) for r in self.response_ids], dtype=torch.float32)

    def stats(self) -> dict[str, float]:
        lengths = self.response_lengths
        out = {
            "reward/mean": self.rewards.mean().item(), "reward/std": self.rewards.std(correction=0).item(),
            "score/mean": self.scores.mean().item(), "response_len/mean": lengths.mean().item(),
            "response_len/max": lengths.max().item(), "truncated_rate": self.truncated.float().mean().item(),
            "policy_version": self.policy_version,
        }
        out.update({f"accuracy/{k}": v for k, v in accuracy_by_verifier(self.scores, self.verifier_keys).items()})
        return out


RMScorer = Callable[[Sequence[RLVRRow], Sequence[str]], Tensor]


@dataclass(frozen=True)
class RolloutSettings:
    group_size: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    correct_value: float = 10.0
    truncated_reward: float | None = None
    rm_weight: float = 0.0
    log_samples: int = 2
    ignore_eos: bool = False

    @classmethod
    def from_config(cls, rollout, reward) -> "RolloutSettings":
        """From an RLVR config's `rollout` and `reward` sections (`rl/config.py`)."""
        return cls(rollout.samples_per_prompt, rollout.max_new_tokens, rollout.temperature, rollout.top_p,
                   tuple(rollout.stop), reward.correct_value, reward.truncated_reward, reward.rm_weight,
                   ignore_eos=rollout.ignore_eos)


def generate_rollouts(engine: Engine, prompts: Sequence[Prompt], indices: Sequence[int], step: int, version: int,
                      seed: int, s: RolloutSettings, rm: RMScorer | None = None,
                      shard: tuple[int, int] = (0, 1)) -> RolloutBatch:
    """Sample `s.group_size` responses for each prompt in `indices` and score them.

    `shard=(rank, world)`: only the prompts at positions rank, rank + world, ... of `indices`, with
    the random streams those positions have in the whole batch (`merge_rollouts` reassembles it).
    """
    rank, world = shard
    positions = list(range(rank, len(indices), world))
    indices = [indices[p] for p in positions]
    params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                            n=s.group_size, stop=tuple(s.stop), seed=step_seed(seed, step), logprobs=True,
                            ignore_eos=s.ignore_eos)
    t0 = time.perf_counter()
    outs = engine.generate([prompts[i].ids for i in indices], params, prompt_keys=positions) if indices else []
    t1 = time.perf_counter()
    assert len(outs) == len(indices) * s.group_size and all(o.token_ids for o in outs)
    rows = [prompts[indices[o.prompt_index]].row for o in outs]
    texts = [o.text for o in outs]
    scores = verifier_scores(texts, rows)
    truncated = torch.tensor([o.finish_reason == "length" for o in outs])
    rm_scores = rm(rows, texts) if rm is not None and rows else None
    rewards = combine_rewards(scores, truncated, s.correct_value, s.truncated_reward, rm_scores, s.rm_weight)
    t2 = time.perf_counter()
    samples = [{"step": step + 1, "prompt": rows[i].messages[-1]["content"], "response": texts[i],
                "reward": rewards[i].item(), "finish": outs[i].finish_reason}
               for i in range(0, len(outs), max(1, len(outs) // max(s.log_samples, 1)))][:s.log_samples]
    return RolloutBatch(
        step=step, policy_version=version, group_size=s.group_size,
        prompt_ids=[o.prompt_token_ids for o in outs], response_ids=[list(o.token_ids) for o in outs],
        gen_logprobs=[list(o.logprobs) for o in outs], texts=texts,
        finish_reasons=[o.finish_reason for o in outs], verifier_keys=[r.verifier_key for r in rows],
        scores=scores, rewards=rewards, gen_seconds=t1 - t0, reward_seconds=t2 - t1, samples=samples,
    )


def merge_rollouts(parts: Sequence[RolloutBatch]) -> RolloutBatch:
    """The whole step's batch from the shards `generate_rollouts(..., shard=(r, len(parts)))` made:
    prompt p of the batch is prompt p // world of shard p % world, its k samples kept together."""
    world, k = len(parts), parts[0].group_size
    if world == 1:
        return parts[0]
    order = []  # (shard, first sample of the group) in batch order
    counts = [p.num_samples // k for p in parts]
    for pos in range(sum(counts)):
        order.append((pos % world, (pos // world) * k))

    def gather(get):
        return [x for r, start in order for x in get(parts[r])[start:start + k]]

    def gather_t(get):
        return torch.cat([get(parts[r])[start:start + k] for r, start in order]) if order else torch.zeros(0)

    return RolloutBatch(
        step=parts[0].step, policy_version=parts[0].policy_version, group_size=k,
        prompt_ids=gather(lambda b: b.prompt_ids), response_ids=gather(lambda b: b.response_ids),
        gen_logprobs=gather(lambda b: b.gen_logprobs), texts=gather(lambda b: b.texts),
        finish_reasons=gather(lambda b: b.finish_reasons), verifier_keys=gather(lambda b: b.verifier_keys),
        scores=gather_t(lambda b: b.scores), rewards=gather_t(lambda b: b.rewards),
        gen_seconds=max(b.gen_seconds for b in parts), reward_seconds=max(b.reward_seconds for b in parts),
        samples=[x for b in parts for x in b.samples][: max(len(b.samples) for b in parts)],
    )
