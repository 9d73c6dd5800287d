"""Rollouts: tokenized prompts, one step's generation through the engine, and its rewards.

Sampling is seeded per step (`step_seed`), and the engine's noise depends only on (seed, prompt,
sample, position), so the batch of a given step is the same whatever ran before it: a resumed run
regenerates exactly what the uninterrupted run generated.

Options of the producer: multi-turn rollouts with tools (`rl/multiturn.py`, when
`RolloutSettings.tools` is set), and DAPO's dynamic sampling: groups whose k rewards are equal are
dropped and fresh prompts (a seeded draw, `refill_indices`) sampled until the step has as many
groups with reward variance as it has prompts, or `max_refill` extra batches were spent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from posttrain.data.chat import LoadStats
from posttrain.data.rlvr import RLVRRow
from posttrain.rl.multiturn import MultiTurnSettings, generate_trajectories
from posttrain.rl.rewards import accuracy_by_verifier, combine_rewards, overlong_penalty, verifier_scores
from posttrain.generation import Engine, SamplingParams


@dataclass(frozen=True)
class Prompt:
    row: RLVRRow
    ids: list[int]  # chat-templated prompt with the generation header, tokenized


def encode_prompts(tokenizer, rows: Sequence[RLVRRow], max_prompt_length: int,
                   stats: LoadStats | None = None, system: str | None = None) -> list[Prompt]:
    """Render each prompt with the chat template (+ generation prompt); drop and count long ones.
    `system`: a system turn put first in prompts that have none (the tools' description)."""
    out = []
    for row in rows:
        messages = row.messages
        if system and not (messages and messages[0]["role"] == "system"):
            messages = [{"role": "system", "content": system}, *messages]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_length:
            if stats is not None:
                stats.drop("prompt longer than max_prompt_length", f"{row.source}: {len(ids)} prompt tokens")
            continue
        out.append(Prompt(row, ids))
    return out


def step_seed(seed: int, step: int, attempt: int = 0) -> int:
    """The sampling seed of one step (and of its `attempt`-th dynamic-sampling refill): a hash,
    so neighbouring steps get unrelated streams."""
    tag = f"rlvr-rollout:{seed}:{step}" + (f":refill{attempt}" if attempt else "")
    digest = hashlib.sha256(tag.encode()).digest()
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
    loss_masks: list[list[int]] | None = None  # [N] multi-turn: 1 on the policy's tokens, 0 on tool output
    extra: dict[str, float] = field(default_factory=dict)  # producer statistics (tools, dynamic sampling)

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
        return out | self.extra


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
    dynamic_sampling: bool = False
    max_refill: int = 4
    overlong_buffer: int = 0  # DAPO's soft overlong penalty window (tokens); 0: off
    overlong_penalty: float = 1.0
    verifier_options: dict = field(default_factory=dict)  # verifier name -> keyword arguments
    multiturn: MultiTurnSettings | None = None  # tools: multi-turn rollouts

    @classmethod
    def from_config(cls, rollout, reward, dynamic_sampling: bool = False) -> "RolloutSettings":
        """From an RLVR config's `rollout` and `reward` sections (`rl/config.py`); whether the
        algorithm samples dynamically is `rl.algorithms.uses_dynamic_sampling`."""
        return cls(rollout.samples_per_prompt, rollout.max_new_tokens, rollout.temperature, rollout.top_p,
                   tuple(rollout.stop), reward.correct_value, reward.truncated_reward, reward.rm_weight,
                   ignore_eos=rollout.ignore_eos, dynamic_sampling=dynamic_sampling or rollout.dynamic_sampling,
                   max_refill=rollout.max_refill, overlong_buffer=reward.overlong.buffer,
                   overlong_penalty=reward.overlong.penalty,
                   verifier_options={"code": {"mode": reward.code_mode, "timeout_s": reward.code_timeout_s}},
                   multiturn=MultiTurnSettings.from_config(rollout))


def generate_rollouts(engine: Engine, prompts: Sequence[Prompt], indices: Sequence[int], step: int, version: int,
                      seed: int, s: RolloutSettings, rm: RMScorer | None = None,
                      shard: tuple[int, int] = (0, 1)) -> RolloutBatch:
    """Sample `s.group_size` responses for each prompt in `indices` and score them; with dynamic
    sampling, refill from fresh prompts until every group has reward variance (module docstring).

    `shard=(rank, world)`: only the prompts at positions rank, rank + world, ... of `indices`, with
    the random streams those positions have in the whole batch (`merge_rollouts` reassembles it).
    """
    batch = sample_rollouts(engine, prompts, indices, step, version, seed, s, rm, shard)
    if not s.dynamic_sampling:
        return batch
    if shard[1] > 1:
        raise ValueError("rollout.dynamic_sampling (algorithm=dapo) decides refills over the whole batch: "
                         "run it in one process")
    return refill_groups(lambda idx, attempt: sample_rollouts(engine, prompts, idx, step, version, seed, s, rm,
                                                              attempt=attempt),
                         batch, list(indices), len(prompts), seed, step, s.max_refill)


def sample_rollouts(engine: Engine, prompts: Sequence[Prompt], indices: Sequence[int], step: int, version: int,
                    seed: int, s: RolloutSettings, rm: RMScorer | None = None, shard: tuple[int, int] = (0, 1),
                    attempt: int = 0) -> RolloutBatch:
    """One generation of `s.group_size` samples per prompt (single- or multi-turn) and its rewards."""
    rank, world = shard
    positions = list(range(rank, len(indices), world))
    indices = [indices[p] for p in positions]
    params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                            n=s.group_size, stop=tuple(s.stop), seed=step_seed(seed, step, attempt), logprobs=True,
                            ignore_eos=s.ignore_eos)
    t0 = time.perf_counter()
    masks, extra, shown = None, {}, None
    if s.multiturn is not None and indices:
        trajectories = generate_trajectories(engine, [prompts[i].ids for i in indices], positions, params,
                                             s.multiturn)
        outs = [t.as_completion() for t in trajectories]
        masks = [t.loss_mask for t in trajectories]
        shown = [t.full_text for t in trajectories]
        extra = MultiTurnSettings.stats(trajectories)
    else:
        outs = engine.generate([prompts[i].ids for i in indices], params, prompt_keys=positions) if indices else []
    t1 = time.perf_counter()
    assert len(outs) == len(indices) * s.group_size and all(o.token_ids for o in outs)
    rows = [prompts[indices[o.prompt_index]].row for o in outs]
    texts = [o.text for o in outs]
    scores = verifier_scores(texts, rows, s.verifier_options)
    truncated = torch.tensor([o.finish_reason == "length" for o in outs])
    rm_scores = rm(rows, texts) if rm is not None and rows else None
    rewards = combine_rewards(scores, truncated, s.correct_value, s.truncated_reward, rm_scores, s.rm_weight)
    if s.overlong_buffer:
        lengths = torch.tensor([len(o.token_ids) for o in outs])
        rewards = rewards + overlong_penalty(lengths, s.max_new_tokens, s.overlong_buffer, s.overlong_penalty)
    t2 = time.perf_counter()
    shown = shown or texts
    samples = [{"step": step + 1, "prompt": rows[i].messages[-1]["content"], "response": shown[i],
                "reward": rewards[i].item(), "finish": outs[i].finish_reason}
               for i in range(0, len(outs), max(1, len(outs) // max(s.log_samples, 1)))][:s.log_samples]
    return RolloutBatch(
        step=step, policy_version=version, group_size=s.group_size,
        prompt_ids=[o.prompt_token_ids for o in outs], response_ids=[list(o.token_ids) for o in outs],
        gen_logprobs=[list(o.logprobs) for o in outs], texts=texts,
        finish_reasons=[o.finish_reason for o in outs], verifier_keys=[r.verifier_key for r in rows],
        scores=scores, rewards=rewards, gen_seconds=t1 - t0, reward_seconds=t2 - t1, samples=samples,
        loss_masks=masks, extra=extra,
    )


# ---------------------------------------------------------------- dynamic sampling (DAPO)

def varied_groups(rewards: Tensor, group_size: int) -> list[int]:
    """Indices of the groups whose rewards are not all equal."""
    groups = rewards.view(-1, group_size)
    return (~(groups == groups[:, :1]).all(dim=-1)).nonzero().squeeze(-1).tolist()


def refill_indices(num_prompts: int, count: int, used: set[int], seed: int, step: int, attempt: int) -> list[int]:
    """`count` prompts for refill `attempt` of `step`: a seeded permutation, prompts not yet used
    in this step first (repeats only when the data set has too few)."""
    g = torch.Generator().manual_seed(step_seed(seed, step, attempt))
    order = torch.randperm(num_prompts, generator=g).tolist()
    return ([i for i in order if i not in used] + [i for i in order if i in used])[:count]


def take_groups(batch: RolloutBatch, groups: Sequence[int]) -> RolloutBatch:
    """The samples of `groups` (group indices of `batch`), in that order."""
    k = batch.group_size
    idx = [g * k + j for g in groups for j in range(k)]

    def pick(xs):
        return [xs[i] for i in idx]

    t = torch.tensor(idx, dtype=torch.long)
    return dataclasses.replace(
        batch, prompt_ids=pick(batch.prompt_ids), response_ids=pick(batch.response_ids),
        gen_logprobs=pick(batch.gen_logprobs), texts=pick(batch.texts), finish_reasons=pick(batch.finish_reasons),
        verifier_keys=pick(batch.verifier_keys), scores=batch.scores[t], rewards=batch.rewards[t],
        loss_masks=None if batch.loss_masks is None else pick(batch.loss_masks))


def concat_rollouts(parts: Sequence[RolloutBatch]) -> RolloutBatch:
    """The samples of every part in order (one step, one group size); timings add up."""
    first = parts[0]

    def cat(get):
        return [x for b in parts for x in get(b)]

    return dataclasses.replace(
        first, prompt_ids=cat(lambda b: b.prompt_ids), response_ids=cat(lambda b: b.response_ids),
        gen_logprobs=cat(lambda b: b.gen_logprobs), texts=cat(lambda b: b.texts),
        finish_reasons=cat(lambda b: b.finish_reasons), verifier_keys=cat(lambda b: b.verifier_keys),
        scores=torch.cat([b.scores for b in parts]), rewards=torch.cat([b.rewards for b in parts]),
        gen_seconds=sum(b.gen_seconds for b in parts), reward_seconds=sum(b.reward_seconds for b in parts),
        loss_masks=None if first.loss_masks is None else cat(lambda b: b.loss_masks),
        extra=_mean_stats(parts))


def refill_groups(sample: Callable[[list[int], int], RolloutBatch], first: RolloutBatch, indices: list[int],
                  num_prompts: int, seed: int, step: int, max_refill: int) -> RolloutBatch:
    """Dynamic sampling: keep the groups of `first` with reward variance, and while fewer than
    len(indices) are kept and fewer than `max_refill` refills ran, sample a fresh batch of as many
    prompts (`sample(indices, attempt)`) and keep its varied groups too. The result has at most
    len(indices) groups (the surplus of the last refill is dropped, as DAPO does); fewer when the
    refills run out, logged as `dynamic/groups_short`."""
    target, k = len(indices), first.group_size
    parts, batches, used = [], [first], set(indices)
    kept = dropped = 0
    attempt = 0
    while True:
        batch = batches[-1]
        varied = varied_groups(batch.rewards, k)
        dropped += batch.num_samples // k - len(varied)
        take = varied[:target - kept]
        if take:
            parts.append(take_groups(batch, take))
        kept += len(take)
        if kept >= target or attempt >= max_refill:
            break
        attempt += 1
        fresh = refill_indices(num_prompts, target, used, seed, step, attempt)
        used.update(fresh)
        batches.append(sample(fresh, attempt))
    # Nothing varied: the first batch as it is (its constant groups are filtered by the step).
    out = concat_rollouts(parts) if parts else dataclasses.replace(first, extra=dict(first.extra))
    out.extra |= {"dynamic/groups_kept": float(kept), "dynamic/groups_dropped": float(dropped),
                  "dynamic/refills": float(attempt), "dynamic/groups_short": float(target - kept)}
    out.samples = first.samples
    out.gen_seconds = sum(b.gen_seconds for b in batches)
    out.reward_seconds = sum(b.reward_seconds for b in batches)
    return out


def _mean_stats(parts: Sequence[RolloutBatch]) -> dict[str, float]:
    """Producer statistics of several batches, weighted by their sample counts."""
    n = sum(b.num_samples for b in parts)
    keys = sorted({k for b in parts for k in b.extra})
    return {k: sum(b.extra.get(k, 0.0) * b.num_samples for b in parts) / max(n, 1) for k in keys}


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
        loss_masks=None if parts[0].loss_masks is None else gather(lambda b: b.loss_masks),
        extra=_mean_stats(parts),
    )
