"""Training and evaluation passes over preference pairs, shared by DPO and reward-model training.

Both stages pack each pair's chosen and rejected side next to each other in padding-free
micro-batches and sum per-pair losses and statistics; they differ only in the per-micro-batch
function (policy log-probs + a preference loss, or scalar rewards + Bradley–Terry). The step's
gradient is that of the global per-pair mean: each micro-batch backpropagates
sum(per-pair loss) · world_size / (pairs in the step, counted over all ranks), and data-parallel
averaging divides by the world size again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from posttrain.data.packing import plan_micro_batches
from posttrain.data.preference import TokenizedPair
from posttrain.train.dist import DistInfo, all_reduce_max
from posttrain.train.loop import (Row, Run, Trainable, accumulate, eval_every, finish, fmt, log_to, metrics_logger,
                                  save_every, train_loop)
from posttrain.train.refcache import reshard

# (pair indices of one micro-batch) -> (summed per-pair loss, [n_stats] float64 statistic sums)
MicroFn = Callable[[list[int]], tuple[Tensor, Tensor]]


def plan_pairs(pairs: Sequence[TokenizedPair], indices: list[int], micro_batch_tokens: int) -> list[list[int]]:
    """Pair indices of each micro-batch (order kept, both sides of a pair in one row)."""
    plan = plan_micro_batches([pairs[i].num_tokens for i in indices], micro_batch_tokens)
    return [[indices[j] for j in group] for group in plan]


def pair_passes(model, groups: list[list[int]], n_micro: int, n_stats: int, info: DistInfo, fn: MicroFn,
                n_pairs: int | None = None) -> Tensor:
    """Run `fn` on every micro-batch; with `n_pairs` (the step's global pair count) also
    backpropagate the loss so the gradient is that of the global pair mean. Local statistic sums."""
    sums = torch.zeros(n_stats, dtype=torch.float64)
    scale = None if n_pairs is None else info.world_size / max(n_pairs, 1)

    def micro(idx: list[int]) -> None:
        nonlocal sums
        loss_sum, stats = fn(idx)
        if scale is not None:
            (loss_sum * scale).backward()
        sums += stats

    accumulate(model, groups, n_micro, info, micro, backward=scale is not None)
    return sums


def mean_stats(sums: Tensor, names: Sequence[str], n_pairs: int, info: DistInfo, prefix: str = "") -> dict[str, float]:
    """Statistic sums (summed over ranks) divided by the global pair count."""
    if info.distributed:
        dist.all_reduce(sums)
    return {prefix + k: v / max(n_pairs, 1) for k, v in zip(names, sums.tolist())}


@torch.no_grad()
def evaluate_pairs(model, pairs: Sequence[TokenizedPair], micro_batch_tokens: int, names: Sequence[str],
                   info: DistInfo, fn: MicroFn) -> dict[str, float]:
    """Held-out statistics averaged over all pairs (each rank takes every world_size-th pair)."""
    was_training = model.training
    model.eval()
    groups = plan_pairs(pairs, list(range(info.rank, len(pairs), info.world_size)), micro_batch_tokens)
    n_micro = int(all_reduce_max(len(groups), info))
    sums = pair_passes(model, groups, n_micro, len(names), info, fn)
    reshard(model)
    model.train(was_training)
    return mean_stats(sums, names, len(pairs), info, prefix="eval/")


def train_pair_stage(run: Run, cfg, tokenizer, parts: Sequence[Trainable], start_step: int, total_steps: int,
                     step_fn: Callable[[int], Row], evaluate: Callable[[], Row] | None, summary: Row) -> Path:
    """The loop of a pair stage: held-out evaluation at its cadence and after the last step (when
    `evaluate` is given), metrics, checkpoints, then the final model with the last evaluation."""
    last_eval: Row = {}

    def run_eval() -> Row:
        last_eval.update(evaluate())
        return last_eval

    logger = metrics_logger(run, cfg, total_steps, start_step)
    parts[0].model.train()
    train_loop(start_step, total_steps, step_fn, [
        eval_every(cfg.train.eval_every_steps, total_steps, run_eval, enabled=evaluate is not None),
        log_to(logger), save_every(run, cfg, total_steps, tokenizer, parts)])
    logger.close()
    if last_eval:
        run.log(f"[eval] after training: {fmt(last_eval)}")
    return finish(run, tokenizer, {"final": parts[0].model}, {**summary, "eval_end": last_eval}, total_steps)
