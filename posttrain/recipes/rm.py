"""Reward-model training (`posttrain rm`): Bradley–Terry on a scalar head; readable top to bottom.

The model is a reward model from `posttrain.reward_model` (a sequence-classification head on a
causal LM checkpoint). Both sides of each pair are packed into one padding-free row and the
reward of each side is read at its last non-pad token; the loss is −log σ(r_w − r_l − m) averaged
over the step's pairs (`posttrain.train.pairs`). `posttrain.reward_model.score()` gives rewards for
any list of conversations once trained.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from posttrain.config import field
from posttrain.data.preference import PreferenceData, TokenizedPair, build_preference_splits
from posttrain.losses.rm import bradley_terry_loss
from posttrain.models import load_tokenizer
from posttrain.reward_model import load_reward_model, pair_rewards
from posttrain.train.common import CheckpointConfig, ModelConfig, OptimConfig, PairStepsConfig, RunConfig
from posttrain.train.dist import all_reduce_max
from posttrain.train.lora import apply_lora, resume_lora
from posttrain.train.loop import (Row, Trainable, build_optimization, clip_and_step, fmt, open_run_dir, restore,
                                  resume_point, start_run, step_indices)
from posttrain.train.pairs import evaluate_pairs, mean_stats, pair_passes, plan_pairs, train_pair_stage
from posttrain.train.parallel import parallelize

# Deprecated spellings: the reward-model library now lives in posttrain.reward_model.
from posttrain.reward_model import score, sequence_rewards  # noqa: E402,F401


@dataclasses.dataclass
class RMTrain(PairStepsConfig):
    batch_size: int = field(64, "pairs per optimizer step (across all ranks)")
    margin: float = field(0.0, "required reward margin m in −log σ(r_w − r_l − m)")
    eval_at_start: bool = field(True, "also evaluate before the first step (the untrained head's accuracy)")


@dataclasses.dataclass
class RMConfig:
    model: ModelConfig = field(ModelConfig(), "causal LM (or reward model) to start from")
    data: PreferenceData = field(PreferenceData(), "preference pairs")
    optim: OptimConfig = field(OptimConfig(lr=3e-6, warmup_ratio=0.03), "optimizer and schedule")
    train: RMTrain = field(RMTrain(), "batching, margin and evaluation")
    checkpoint: CheckpointConfig = field(CheckpointConfig(), "checkpointing")
    run: RunConfig = field(RunConfig(output_dir="runs/rm"), "run directory, resume, seed, device")


STAT_NAMES = ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "length/chosen", "length/rejected")


def pair_stats(out, rewards: Tensor, pairs: Sequence[TokenizedPair]) -> Tensor:
    r = rewards.detach().double()
    lengths = torch.tensor([[p.chosen.num_trainable, p.rejected.num_trainable] for p in pairs], dtype=torch.float64)
    return torch.stack([out.losses.detach().double().sum().cpu(), out.accuracies.double().sum().cpu(),
                        out.margins.double().sum().cpu(), r[:, 0].sum().cpu(), r[:, 1].sum().cpu(),
                        lengths[:, 0].sum(), lengths[:, 1].sum()])


def bt_micro_batch(model, pairs: Sequence[TokenizedPair], margin: float, device):
    """The per-micro-batch function of `posttrain.train.pairs`: Bradley–Terry on packed rewards."""
    def fn(idx: list[int]) -> tuple[Tensor, Tensor]:
        chunk = [pairs[i] for i in idx]
        rewards = pair_rewards(model, chunk, device)
        out = bradley_terry_loss(rewards[:, 0], rewards[:, 1], margin=margin or None)
        return out.losses.sum(), pair_stats(out, rewards, chunk)
    return fn


def evaluate(model, pairs, micro_batch_tokens: int, info) -> dict[str, float]:
    """Held-out pairwise accuracy (r_chosen > r_rejected), loss and margin."""
    return evaluate_pairs(model, pairs, micro_batch_tokens, STAT_NAMES, info,
                          bt_micro_batch(model, pairs, 0.0, info.device))


def main(cfg: RMConfig) -> Path:
    run = start_run(cfg, "rm")
    info = run.info
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template)
    train_pairs, eval_pairs = build_preference_splits(cfg.data, tokenizer, cfg.run.seed, run.log)
    steps_per_epoch, total_steps = cfg.train.steps(len(train_pairs))

    open_run_dir(run, cfg)
    resume_from = resume_point(run, cfg)
    lora = cfg.model.lora
    if lora.load_in_4bit:
        raise ValueError("model.lora.load_in_4bit (QLoRA) is not offered for reward models: train plain LoRA")
    # Under LoRA a checkpoint is the adapter (and head): the base is always model.name_or_path.
    start = cfg.model.name_or_path if lora.enabled or not resume_from else str(resume_from)
    model = load_reward_model(start, tokenizer, run.dtype, attn_implementation=cfg.model.attn_implementation)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if lora.enabled:  # adapters on the body, the new score head trained in full
        model = resume_lora(model, resume_from) if resume_from else apply_lora(model, lora, "reward",
                                                                               cfg.model.gradient_checkpointing)
    model = parallelize(model.to(info.device), info)
    parts = [Trainable("policy", model, *build_optimization(model, cfg.optim, total_steps))]
    optimizer, scheduler = parts[0].optimizer, parts[0].scheduler
    start_step = restore(run, resume_from, parts, total_steps)

    summary: dict = {"train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs)}
    if cfg.train.eval_at_start and start_step == 0 and eval_pairs:
        summary["eval_start"] = evaluate(model, eval_pairs, cfg.train.micro_batch_tokens, info)
        run.log(f"[eval] before training: {fmt(summary['eval_start'])}")
    t_start = time.time()
    train_fn = bt_micro_batch(model, train_pairs, cfg.train.margin, info.device)

    def step_fn(step: int) -> Row:
        t0 = time.perf_counter()
        idx = step_indices(len(train_pairs), cfg.train.batch_size, step, steps_per_epoch, cfg.run.seed)
        groups = plan_pairs(train_pairs, idx[info.rank::info.world_size], cfg.train.micro_batch_tokens)
        n_micro = int(all_reduce_max(len(groups), info))
        sums = pair_passes(model, groups, n_micro, len(STAT_NAMES), info, train_fn, n_pairs=len(idx))
        lr = scheduler.get_last_lr()[0]
        grad_norm = clip_and_step(model, optimizer, cfg.optim.max_grad_norm)
        scheduler.step()
        dt = time.perf_counter() - t0
        return {"epoch": step / steps_per_epoch, **mean_stats(sums, STAT_NAMES, len(idx), info), "lr": lr,
                "grad_norm": grad_norm, "pairs": len(idx), "pairs_per_s": len(idx) / dt,
                "micro_batches": n_micro, "elapsed_s": time.time() - t_start}

    def run_eval() -> Row:
        return evaluate(model, eval_pairs, cfg.train.micro_batch_tokens, info)

    return train_pair_stage(run, cfg, tokenizer, parts, start_step, total_steps, step_fn,
                            run_eval if eval_pairs else None, summary)
