"""Supervised fine-tuning (`posttrain sft`), readable top to bottom.

Data: conversations -> assistant-only labels -> per step, `train.batch_size` sequences packed into
micro-batches of at most `train.micro_batch_tokens` tokens (padding-free). Loss: summed token NLL
divided by the step's global trainable-token count ("mean") or by a fixed constant ("sum", Tülu 3).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal


from posttrain.config import field
from posttrain.data.chat import IGNORE_INDEX, LoadStats, load_conversations, tokenize_dataset
from posttrain.data.io import DataFiles
from posttrain.data.packing import pack, packed_forward, plan_micro_batches
from posttrain.losses.sft import token_nll_sum
from posttrain.models import load_tokenizer
from posttrain.train.common import (CheckpointConfig, ModelConfig, OptimConfig, RunConfig, StepsConfig,
                                    load_for_training)
from posttrain.train.dist import DistInfo, all_reduce_max, all_reduce_sum
from posttrain.train.loop import (Row, Run, Trainable, accumulate, build_optimization, clip_and_step, finish, log_to,
                                  metrics_logger, open_run_dir, restore, resume_point, save_every, start_run,
                                  step_indices, train_loop)
from posttrain.train.parallel import parallelize


@dataclasses.dataclass
class SFTData(DataFiles):
    format: str = field("auto", "auto, messages, sharegpt, prompt_completion")

    def validate(self):
        if not self.paths:
            raise ValueError("data.paths is empty: give at least one training file")


@dataclasses.dataclass
class SFTTrain(StepsConfig):
    loss_reduction: Literal["sum", "mean"] = field("sum", "sum: Tülu 3 (fixed divisor); mean: over the step's tokens")
    sum_divisor: float | None = field(None, "divisor for 'sum' (default: batch_size)")


@dataclasses.dataclass
class SFTConfig:
    model: ModelConfig = field(ModelConfig(), "model to fine-tune")
    data: SFTData = field(SFTData(), "training data")
    optim: OptimConfig = field(OptimConfig(), "optimizer and schedule")
    train: SFTTrain = field(SFTTrain(), "batching and loss")
    checkpoint: CheckpointConfig = field(CheckpointConfig(), "checkpointing")
    run: RunConfig = field(RunConfig(), "run directory, resume, seed, device")


def build_dataset(cfg: SFTConfig, tokenizer, log) -> list:
    examples, stats = [], LoadStats()
    for path in cfg.data.paths:
        convs = load_conversations(path, cfg.data.format, cfg.data.on_error, stats, cfg.data.limit)
        examples += tokenize_dataset(tokenizer, convs, cfg.data.max_length, cfg.data.too_long,
                                     cfg.data.on_error, stats, source=path)
    stats.report(log, f"{stats.summary()}; {len(examples)} examples after tokenization", len(examples),
                 "training examples")
    return examples


def accumulate_gradients(model, batches: list, n_micro: int, scale: float, info: DistInfo = DistInfo()) -> float:
    """Forward/backward every packed micro-batch of one optimizer step; returns the summed NLL.

    Each micro-batch contributes (its summed token NLL) * scale, where scale = world_size / the
    step's normaliser, so the accumulated gradient is that of (global NLL sum / normaliser).
    """
    nll_sum = 0.0

    def micro_step(batch) -> None:
        nonlocal nll_sum
        batch = batch.to(info.device)
        # Logits only where there is a target: prompt positions never reach the LM head.
        keep = (batch.targets[0] != IGNORE_INDEX).nonzero()[:, 0]
        logits = packed_forward(model, batch, logits_to_keep=keep).logits
        nll = token_nll_sum(logits, batch.targets[:, keep])
        (nll * scale).backward()
        nll_sum += nll.item()

    accumulate(model, batches, n_micro, info, micro_step)
    return nll_sum


def sft_step(model, examples: list, idx: list[int], cfg: SFTConfig, sum_divisor: float, run: Run) -> Row:
    """Forward/backward the step's packed micro-batches; the gradient is that of (global summed
    token NLL / normaliser), whatever the packing and the number of ranks."""
    info = run.info
    mine = [examples[i] for i in idx[info.rank::info.world_size]]
    plan = plan_micro_batches([len(e.input_ids) for e in mine], cfg.train.micro_batch_tokens)
    batches = [pack([(mine[i].input_ids, mine[i].labels) for i in group]) for group in plan]
    # Every rank must run the same number of forward/backward passes under FSDP.
    n_micro = int(all_reduce_max(len(batches), info))
    n_targets = int(all_reduce_sum(sum(b.num_targets for b in batches), info))
    n_tokens = all_reduce_sum(sum(b.num_tokens for b in batches), info)
    normalizer = n_targets if cfg.train.loss_reduction == "mean" else sum_divisor
    # Data-parallel gradient reduction averages over ranks; scaling by world size makes the
    # result the global sum divided by the normalizer.
    scale = info.world_size / max(normalizer, 1)
    nll_sum = accumulate_gradients(model, batches, n_micro, scale, info)
    nll_global = all_reduce_sum(nll_sum, info)
    return {"loss": nll_global / max(n_targets, 1), "objective": nll_global / normalizer,
            "trainable_tokens": n_targets, "tokens": n_tokens, "micro_batches": n_micro}


def main(cfg: SFTConfig) -> Path:
    run = start_run(cfg, "sft")
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template)
    examples = build_dataset(cfg, tokenizer, run.log)
    steps_per_epoch, total_steps = cfg.train.steps(len(examples))

    open_run_dir(run, cfg)
    resume_from = resume_point(run, cfg)
    model = load_for_training(cfg.model, run.info, run.dtype, init_from=str(resume_from) if resume_from else None)
    model = parallelize(model, run.info)
    parts = [Trainable("policy", model, *build_optimization(model, cfg.optim, total_steps))]
    optimizer, scheduler = parts[0].optimizer, parts[0].scheduler
    start_step = restore(run, resume_from, parts, total_steps)
    sum_divisor = cfg.train.sum_divisor or float(cfg.train.batch_size)
    t_start = time.time()

    def step_fn(step: int) -> Row:
        t0 = time.perf_counter()
        idx = step_indices(len(examples), cfg.train.batch_size, step, steps_per_epoch, cfg.run.seed)
        row = sft_step(model, examples, idx, cfg, sum_divisor, run)
        lr = scheduler.get_last_lr()[0]
        grad_norm = clip_and_step(model, optimizer, cfg.optim.max_grad_norm)
        scheduler.step()
        dt = time.perf_counter() - t0
        return {"epoch": step / steps_per_epoch, "loss": row.pop("loss"), "objective": row.pop("objective"),
                "lr": lr, "grad_norm": grad_norm, **row, "tokens_per_s": row["tokens"] / dt,
                "elapsed_s": time.time() - t_start}

    logger = metrics_logger(run, cfg, total_steps, start_step)
    model.train()
    train_loop(start_step, total_steps, step_fn, [log_to(logger), save_every(run, cfg, total_steps, tokenizer, parts)])
    logger.close()
    return finish(run, tokenizer, {"final": model}, {"examples": len(examples)}, total_steps)
