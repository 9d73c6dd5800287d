"""Forward passes over packed rollouts and the optimizer updates of the policy and value models.

Only response positions go through the LM head (`logits_to_keep`): prompt tokens need no logits.
Losses are summed per micro-batch and divided by a normaliser counted over the whole minibatch
before the forward passes (its trained response tokens; Dr. GRPO: sequences × a fixed length;
GSPO: sequences), so the gradient is the same however a minibatch is split. Tokens with loss mask
0 (tool output in multi-turn rollouts, "loss_mask") are in the forward pass but not in the loss.

Under torchrun every rank holds the whole rollout batch, so the micro-batch plan and the token
counts are the same everywhere; rank r runs micro-batches r, r + world, ... and pads with
zero-weight passes so that all ranks join the same number of FSDP collectives. Scores (reference
and old log-probs, values) are gathered back to every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from torch import Tensor

from posttrain.data.chat import IGNORE_INDEX
from posttrain.data.packing import PackedBatch, packed_forward, plan_micro_batches
from posttrain.losses.gspo import gspo_loss
from posttrain.losses.pg import (KLEstimator, kl_penalty, kl_regularized_loss, policy_gradient_loss,
                                 sequence_level_loss, token_level_loss)
from posttrain.losses.ppo import value_loss
from posttrain.rl.buffer import GroupedRow, TrainSamples
from posttrain.train.dist import DistInfo
from posttrain.losses.logprobs import entropy_from_logits, token_logprobs
from posttrain.train.loop import clip_and_step, padding_pass
from posttrain.train.parallel import sync_grads_context
from posttrain.train.refcache import reshard
from posttrain.train.varlen_attn import NAME as VARLEN

ONE_PROCESS = DistInfo()


def response_logits(model, batch: PackedBatch | GroupedRow) -> tuple[Tensor, Tensor]:
    """([1, K, V] logits at the K response-predicting positions, [K] target token ids)."""
    if isinstance(batch, GroupedRow):
        out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                    logits_to_keep=batch.keep, posttrain_groups=batch.groups)
        return out.logits, batch.targets
    targets = batch.targets[0]
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    logits = packed_forward(model, batch, logits_to_keep=keep).logits
    return logits, targets[keep]


def response_logprobs(model, batch: PackedBatch | GroupedRow, temperature: float) -> tuple[Tensor, Tensor]:
    """([K] log-probs of the response tokens under softmax(logits / T), [1, K, V] logits)."""
    logits, targets = response_logits(model, batch)
    return token_logprobs(logits, targets[None], shift=False, temperature=temperature)[0], logits


def response_values(value_model, batch: PackedBatch) -> Tensor:
    """[K] value-head outputs at the response-predicting positions (V(s_t) before token t).

    The sequence-classification class pools one position per row, so a forward hook on its
    scalar `score` head reads every position.
    """
    captured: list[Tensor] = []
    handle = value_model.score.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        packed_forward(value_model, batch)
    finally:
        handle.remove()
    keep = (batch.targets[0] != IGNORE_INDEX).nonzero().squeeze(-1)
    return captured[0][0, keep.to(captured[0].device), 0].float()


def shares_prompts(model, enabled: bool = True) -> bool:
    """Can `model` train on rows whose responses share one copy of their prompt?"""
    return enabled and getattr(model.config, "_attn_implementation", None) == VARLEN


def _pack(samples: TrainSamples, idx: list[int], share: bool) -> PackedBatch | GroupedRow:
    return samples.pack_grouped(idx) if share else samples.pack(idx)


def _micro_batches(samples: TrainSamples, idx: list[int], budget: int, share: bool = False) -> Iterator[list[int]]:
    """Consecutive samples of `idx` in micro-batches of at most `budget` row tokens; with `share`,
    a sample whose prompt equals the previous one's in the same micro-batch costs its response only."""
    if not share:
        lengths = samples.lengths
        for group in plan_micro_batches([lengths[i] for i in idx], budget):
            yield [idx[j] for j in group]
        return
    cur: list[int] = []
    used = 0
    for i in idx:
        p, r = samples.prompt_ids[i], len(samples.response_ids[i])
        prev = samples.prompt_ids[cur[-1]] if cur else None
        cost = r if prev is not None and (p is prev or p == prev) else len(p) + r
        if cur and used + cost > budget:
            yield cur
            cur, used, cost = [], 0, len(p) + r
        if cost > budget:
            raise ValueError(f"a sample has {cost} tokens, more than the micro-batch budget {budget}; "
                             f"raise train.micro_batch_tokens")
        cur.append(i)
        used += cost
    if cur:
        yield cur


def _rank_micro_batches(samples: TrainSamples, idx: list[int], budget: int, info: DistInfo,
                        share: bool = False) -> list[list[int] | None]:
    """This rank's micro-batches of `idx`, padded with None (a zero-weight pass) to the same count
    on every rank."""
    plan = list(_micro_batches(samples, idx, budget, share))
    if not info.distributed:
        return plan
    mine = plan[info.rank::info.world_size]
    return mine + [None] * (-(-len(plan) // info.world_size) - len(mine))


def _gather_scores(local: dict[int, Tensor], n: int, info: DistInfo) -> list[Tensor]:
    """Per-sample tensors computed by each rank for its samples -> all n, on every rank."""
    if info.distributed:
        import torch.distributed as dist

        parts: list[dict[int, Tensor]] = [{} for _ in range(info.world_size)]
        dist.all_gather_object(parts, local)
        local = {i: t for part in parts for i, t in part.items()}
    assert sorted(local) == list(range(n)), "every sample is scored exactly once"
    return [local[i] for i in range(n)]


def _all_reduce(sums: "_Sums", info: DistInfo) -> None:
    """Sum the statistics over ranks (the `*_max` ones take the maximum)."""
    if not info.distributed or not sums.v:
        return
    import torch.distributed as dist

    keys = sorted(sums.v)
    for op, names in ((dist.ReduceOp.SUM, [k for k in keys if not k.endswith("_max")]),
                      (dist.ReduceOp.MAX, [k for k in keys if k.endswith("_max")])):
        if names:
            t = torch.tensor([sums.v[k] for k in names], dtype=torch.float64)
            dist.all_reduce(t, op=op)
            sums.v.update(zip(names, t.tolist()))


def _split(tensor: Tensor, idx: list[int], samples: TrainSamples) -> list[Tensor]:
    return list(tensor.detach().float().cpu().split([samples.response_lengths[i] for i in idx]))


@torch.no_grad()
def score_logprobs(model, samples: TrainSamples, micro_batch_tokens: int, temperature: float, device,
                   info: DistInfo = ONE_PROCESS, share_prompts: bool = True) -> list[Tensor]:
    """Per-sample response log-probs without gradients (reference, or the policy before updating)."""
    out: dict[int, Tensor] = {}
    share = shares_prompts(model, share_prompts)
    for idx in _rank_micro_batches(samples, list(range(len(samples))), micro_batch_tokens, info, share):
        if idx is None:
            padding_pass(model, info.device, backward=False)
            continue
        lp, _ = response_logprobs(model, _pack(samples, idx, share).to(device), temperature)
        out.update(zip(idx, _split(lp, idx, samples)))
    if info.distributed:
        reshard(model)
    return _gather_scores(out, len(samples), info)


@torch.no_grad()
def score_values(value_model, samples: TrainSamples, micro_batch_tokens: int, device,
                 info: DistInfo = ONE_PROCESS) -> list[Tensor]:
    out: dict[int, Tensor] = {}
    for idx in _rank_micro_batches(samples, list(range(len(samples))), micro_batch_tokens, info):
        if idx is None:
            padding_pass(value_model, info.device, backward=False)
            continue
        out.update(zip(idx, _split(response_values(value_model, samples.pack(idx).to(device)), idx, samples)))
    if info.distributed:
        reshard(value_model)
    return _gather_scores(out, len(samples), info)


@dataclass(frozen=True)
class PassSettings:
    """How samples are cut into optimizer steps: `epochs` passes, each over `num_minibatches`
    shuffled minibatches (one optimizer step each), packed into `micro_batch_tokens` micro-batches."""

    epochs: int = 1
    num_minibatches: int = 1
    micro_batch_tokens: int = 4096
    max_grad_norm: float = 1.0
    seed: int = 0
    share_prompts: bool = True  # responses of one prompt share its copy in a packed row (varlen attention)

    @property
    def single_pass(self) -> bool:
        return self.epochs == 1 and self.num_minibatches == 1


def minibatches(n: int, s: PassSettings, epoch: int) -> list[list[int]]:
    order = list(range(n))
    if not s.single_pass:
        g = torch.Generator().manual_seed(s.seed * 1000 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    size = -(-n // s.num_minibatches)
    return [order[i:i + size] for i in range(0, n, size)]


@dataclass(frozen=True)
class PolicyLoss:
    """The clipped policy-gradient loss plus an optional KL loss term, and how it is reduced.

    ratio "token": pg.policy_gradient_loss (PPO/GRPO); "sequence": gspo.gspo_loss (one ratio per
    sequence, needs normaliser "sequences" and no token-level TIS). normaliser: "tokens" (the
    minibatch's trained tokens: the token mean of DAPO and Tülu), "constant" (sequences ×
    `constant_length`, Dr. GRPO's fixed generation budget) or "sequences" (the sequence mean)."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    tis_cap: float | None = 2.0  # truncated IS between generator and trainer log-probs; None: off
    kl_beta: float = 0.0  # KL-to-reference loss coefficient (0 when the KL is in the reward)
    kl_estimator: KLEstimator = "k3"
    temperature: float = 1.0
    ratio: Literal["token", "sequence"] = "token"
    normaliser: Literal["tokens", "constant", "sequences"] = "tokens"
    constant_length: int = 0  # normaliser "constant": tokens per sequence (max response length)

    def __post_init__(self):
        if self.ratio == "sequence" and (self.normaliser != "sequences" or self.tis_cap is not None):
            raise ValueError("PolicyLoss: a sequence-level ratio needs normaliser='sequences' and tis_cap=None")
        if self.normaliser == "constant" and self.constant_length < 1:
            raise ValueError("PolicyLoss: normaliser='constant' needs constant_length >= 1")


def loss_normaliser(loss: PolicyLoss, samples: TrainSamples, mb: list[int], world_size: int = 1) -> float:
    """The minibatch's normaliser, counted over all its samples before any micro-batch runs; FSDP
    averages gradients over ranks, so each rank's sum is scaled up by the world size."""
    if loss.normaliser == "sequences":
        n = len(mb)
    elif loss.normaliser == "constant":
        n = len(mb) * loss.constant_length
    else:
        n = sum(samples.trained_tokens(i) for i in mb)
    return n / world_size


class _Sums:
    def __init__(self):
        self.v: dict[str, float] = {}

    def add(self, **kv: float) -> None:
        for k, x in kv.items():
            self.v[k] = self.v.get(k, 0.0) + float(x)

    def max(self, **kv: float) -> None:
        for k, x in kv.items():
            self.v[k] = max(self.v.get(k, float("-inf")), float(x))


def policy_update(model, optimizer, samples: TrainSamples, loss: PolicyLoss, passes: PassSettings,
                  device, info: DistInfo = ONE_PROCESS) -> dict[str, float]:
    """Optimizer steps of the policy on `samples` (needs token tensors "advantages",
    "gen_logprobs"; "ref_logprobs" when loss.kl_beta > 0; "old_logprobs" unless single-pass,
    where π_old is the policy itself and its detached log-probs are used)."""
    sums, first = _Sums(), _Sums()
    use_old = samples.has("old_logprobs")
    assert use_old or passes.single_pass, "several passes need old log-probs computed before the first update"
    steps, grad_norms = 0, 0.0
    share = shares_prompts(model, passes.share_prompts)
    for epoch in range(passes.epochs):
        for mb in minibatches(len(samples), passes, epoch):
            n_tokens = loss_normaliser(loss, samples, mb, info.world_size)
            plan = _rank_micro_batches(samples, mb, passes.micro_batch_tokens, info, share)
            for m, idx in enumerate(plan):
                with sync_grads_context(model, last=m == len(plan) - 1):
                    if idx is None:
                        padding_pass(model, info.device, backward=True)
                    else:
                        _policy_micro_batch(model, _pack(samples, idx, share), samples, idx, loss, n_tokens,
                                            use_old, device, sums, first if epoch == 0 else None)
            grad_norms += clip_and_step(model, optimizer, passes.max_grad_norm)
            steps += 1
    _all_reduce(sums, info)
    _all_reduce(first, info)
    n, f = max(sums.v.get("tokens", 0.0), 1.0), max(first.v.get("tokens", 0.0), 1.0)
    stats = {
        "loss/policy": sums.v.get("objective", 0.0) / info.world_size / max(steps, 1),
        "grad_norm": grad_norms / max(steps, 1), "optimizer_steps": steps,
        "clip_frac": sums.v.get("clipped", 0.0) / n, "approx_kl_old": sums.v.get("approx_kl", 0.0) / n,
        "entropy": first.v.get("entropy", 0.0) / f,
        "logprob_diff/mean_abs": first.v.get("diff", 0.0) / f, "logprob_diff/max_abs": first.v.get("diff_max", 0.0),
        "tis/mean_weight": first.v.get("tis_w", 0.0) / f, "tis/capped_frac": first.v.get("tis_capped", 0.0) / f,
    }
    if "k1" in first.v:
        stats.update({"kl/k1": first.v["k1"] / f, "kl/k3": first.v["k3"] / f})
    return stats


def _policy_micro_batch(model, row: PackedBatch | GroupedRow, samples: TrainSamples, idx: list[int],
                        loss: PolicyLoss, n_tokens: float, use_old: bool, device, sums: _Sums,
                        first: _Sums | None) -> None:
    """Forward/backward of one micro-batch (samples `idx`, packed as `row`); `first` (first epoch
    only) collects the statistics of the policy before this step's updates."""
    lp, logits = response_logprobs(model, row.to(device), loss.temperature)
    old = samples.cat("old_logprobs", idx).to(device) if use_old else lp.detach()
    gen = samples.cat("gen_logprobs", idx).to(device)
    ref = samples.cat("ref_logprobs", idx).to(device) if samples.has("ref_logprobs") else None
    mask = samples.cat("loss_mask", idx).to(device) if samples.has("loss_mask") else torch.ones_like(lp)
    if loss.ratio == "sequence":
        out, total = _sequence_loss(lp, old, ref, mask, samples, idx, loss, n_tokens, device)
    else:
        adv = samples.cat("advantages", idx).to(device)
        out = policy_gradient_loss(lp[None], old[None], adv[None], mask[None], eps_low=loss.eps_low,
                                   eps_high=loss.eps_high, tis_cap=loss.tis_cap or 2.0,
                                   generator_logprobs=gen[None] if loss.tis_cap else None)
        per_token = kl_regularized_loss(out.losses, lp[None], None if ref is None else ref[None], loss.kl_beta,
                                        loss.kl_estimator)
        total = token_level_loss(per_token, mask[None], n_tokens)
    total.backward()
    n_trained = mask.sum()
    sums.add(objective=total.item(), tokens=n_trained, clipped=out.clipped.sum(), approx_kl=out.approx_kl.sum())
    if first is None:
        return
    with torch.no_grad():
        diff = (old - gen).abs() * mask
        w = torch.exp(old - gen)
        cap = loss.tis_cap or float("inf")
        first.add(tokens=n_trained, entropy=(entropy_from_logits(logits[0] / loss.temperature) * mask).sum(),
                  diff=diff.sum(), tis_w=(w.clamp(max=cap) * mask).sum(), tis_capped=((w > cap) * mask).sum())
        first.max(diff_max=diff.max())
        if ref is not None:
            first.add(k1=((old - ref) * mask).sum(), k3=(kl_penalty(old, ref, "k3") * mask).sum())


def _sequence_loss(lp: Tensor, old: Tensor, ref: Tensor | None, mask: Tensor, samples: TrainSamples,
                   idx: list[int], loss: PolicyLoss, n_sequences: float, device):
    """GSPO on one micro-batch: its concatenated response tokens as one padded row per sample."""
    lengths = [samples.response_lengths[i] for i in idx]

    def rows(x: Tensor) -> Tensor:
        return torch.nn.utils.rnn.pad_sequence(list(x.split(lengths)), batch_first=True)

    adv = torch.stack([samples.token["advantages"][i][0] for i in idx]).to(device)  # one per sequence
    out = gspo_loss(rows(lp), rows(old), adv, rows(mask), eps_low=loss.eps_low, eps_high=loss.eps_high)
    per_token = kl_regularized_loss(out.losses, rows(lp), None if ref is None else rows(ref), loss.kl_beta,
                                    loss.kl_estimator)
    return out, sequence_level_loss(per_token, rows(mask), n_sequences)


def value_update(value_model, optimizer, samples: TrainSamples, clip_range: float, coef: float,
                 passes: PassSettings, device, info: DistInfo = ONE_PROCESS) -> dict[str, float]:
    """Optimizer steps of the value model on the clipped value loss (token tensors "old_values",
    "returns"), scaled by the value-loss coefficient."""
    sums = _Sums()
    steps, grad_norms = 0, 0.0
    for epoch in range(passes.epochs):
        for mb in minibatches(len(samples), passes, epoch):
            n_tokens = sum(samples.trained_tokens(i) for i in mb) / info.world_size  # as in policy_update
            plan = _rank_micro_batches(samples, mb, passes.micro_batch_tokens, info)
            for m, idx in enumerate(plan):
                with sync_grads_context(value_model, last=m == len(plan) - 1):
                    if idx is None:
                        padding_pass(value_model, info.device, backward=True)
                        continue
                    values = response_values(value_model, samples.pack(idx).to(device))
                    old = samples.cat("old_values", idx).to(device)
                    ret = samples.cat("returns", idx).to(device)
                    mask = (samples.cat("loss_mask", idx).to(device) if samples.has("loss_mask")
                            else torch.ones_like(values))[None]
                    out = value_loss(values[None], old[None], ret[None], mask, clip_range)
                    total = coef * token_level_loss(out.losses, mask, n_tokens)
                    total.backward()
                    sums.add(objective=total.item(), tokens=mask.sum(), clipped=out.clipped.sum())
            grad_norms += clip_and_step(value_model, optimizer, passes.max_grad_norm)
            steps += 1
    _all_reduce(sums, info)
    n = max(sums.v.get("tokens", 0.0), 1.0)
    return {"loss/value": sums.v.get("objective", 0.0) / info.world_size / max(steps, 1),
            "value/clip_frac": sums.v.get("clipped", 0.0) / n, "value/grad_norm": grad_norms / max(steps, 1)}
