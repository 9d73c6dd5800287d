"""Supervised fine-tuning (`posttrain sft`), readable top to bottom.

Data: conversations -> assistant-only labels -> per step, `train.batch_size` sequences packed into
micro-batches of at most `train.micro_batch_tokens` tokens (padding-free). Loss: summed token NLL
divided by the step's global trainable-token count ("mean") or by a fixed constant ("sum", Tülu 3).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import field
from posttrain.data.chat import IGNORE_INDEX, LoadStats, load_conversations, tokenize_dataset
from posttrain.data.packing import pack, packed_forward, plan_micro_batches
from posttrain.losses.sft import token_nll_sum
from posttrain.models import load_tokenizer
from posttrain.train import checkpoint as ckpt
from posttrain.train.common import (CheckpointConfig, ModelConfig, OptimConfig, RunConfig, config_text,
                                    load_for_training, peak_rss_mb, prepare_run_dir, resolve_dtype,
                                    seed_everything, write_summary)
from posttrain.train.dist import all_reduce_max, all_reduce_sum, cleanup, init_distributed, print0
from posttrain.train.metrics import MetricsLogger
from posttrain.train.optim import build_optimizer, build_scheduler
from posttrain.train.parallel import (load_optimizer_state, model_state_dict, optimizer_state_dict, parallelize,
                                      sync_grads_context)


@dataclasses.dataclass
class SFTData:
    paths: list[str] = field([], "training files (.jsonl/.json/.parquet), dataset dirs or hub names")
    format: str = field("auto", "auto, messages, sharegpt, prompt_completion")
    max_length: int = field(2048, "maximum tokens per conversation")
    too_long: Literal["raise", "skip", "truncate"] = field("raise", "what to do with longer conversations")
    on_error: Literal["raise", "skip"] = field("raise", "bad rows: stop with an error, or drop and count")
    limit: int | None = field(None, "use at most this many rows per source (for quick runs)")

    def validate(self):
        if not self.paths:
            raise ValueError("data.paths is empty: give at least one training file")


@dataclasses.dataclass
class SFTTrain:
    epochs: int = field(1, "passes over the data")
    max_steps: int | None = field(None, "stop after this many optimizer steps (overrides epochs)")
    batch_size: int = field(8, "sequences per optimizer step (across all ranks)")
    micro_batch_tokens: int = field(4096, "token budget of one packed micro-batch (per rank)")
    loss_reduction: Literal["sum", "mean"] = field("sum", "sum: Tülu 3 (fixed divisor); mean: over the step's tokens")
    sum_divisor: float | None = field(None, "divisor for 'sum' (default: batch_size)")

    def validate(self):
        if self.batch_size < 1 or self.micro_batch_tokens < 1:
            raise ValueError("train.batch_size and train.micro_batch_tokens must be >= 1")


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
    log(f"[data] {stats.summary()}; {len(examples)} examples after tokenization")
    for msg in stats.examples:
        log(f"[data] dropped: {msg}")
    if not examples:
        raise ValueError("no training examples left after loading and filtering")
    return examples


def step_indices(n: int, batch_size: int, step: int, steps_per_epoch: int, seed: int) -> list[int]:
    """Example indices of a global optimizer step: a fresh permutation per epoch, from the seed."""
    epoch, k = divmod(step, steps_per_epoch)
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return perm[k * batch_size:(k + 1) * batch_size]


def accumulate_gradients(model, batches: list, n_micro: int, scale: float, device) -> float:
    """Forward/backward every packed micro-batch of one optimizer step; returns the summed NLL.

    Each micro-batch contributes (its summed token NLL) * scale, where scale = world_size / the
    step's normaliser, so the accumulated gradient is that of (global NLL sum / normaliser).
    """
    nll_sum = 0.0
    for m in range(n_micro):
        with sync_grads_context(model, last=(m == n_micro - 1)):
            if m >= len(batches):  # padding pass: ranks with fewer micro-batches still join collectives
                out = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
                (out.logits.sum() * 0.0).backward()
                continue
            batch = batches[m].to(device)
            # Logits only where there is a target: prompt positions never reach the LM head.
            keep = (batch.targets[0] != IGNORE_INDEX).nonzero()[:, 0]
            logits = packed_forward(model, batch, logits_to_keep=keep).logits
            nll = token_nll_sum(logits, batch.targets[:, keep])
            (nll * scale).backward()
            nll_sum += nll.item()
    return nll_sum


def main(cfg: SFTConfig) -> Path:
    info = init_distributed(cfg.run.device)
    log = lambda msg: print0(msg, info=info)  # noqa: E731
    run_dir = prepare_run_dir(cfg, cfg.run, info, "sft")
    seed_everything(cfg.run.seed)
    dtype = resolve_dtype(cfg.model.dtype, info.device)

    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template)
    examples = build_dataset(cfg, tokenizer, log)
    steps_per_epoch = math.ceil(len(examples) / cfg.train.batch_size)
    total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs

    resume_from = ckpt.latest_checkpoint(run_dir) if cfg.run.resume else None
    model = load_for_training(cfg.model, info, dtype, init_from=str(resume_from) if resume_from else None)
    model = parallelize(model, info)
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, (cfg.optim.beta1, cfg.optim.beta2),
                                cfg.optim.eps)
    scheduler = build_scheduler(optimizer, cfg.optim.schedule, total_steps, cfg.optim.warmup_ratio,
                                cfg.optim.min_lr_ratio)
    start_step = 0
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        load_optimizer_state(model, optimizer, state["optimizer"], info)
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        start_step = state["step"]
        log(f"[resume] from {resume_from} at step {start_step}/{total_steps}")
    elif cfg.run.resume:
        log(f"[resume] no checkpoint in {run_dir}; starting from scratch")

    logger = MetricsLogger(run_dir, total_steps, start_step, enabled=info.is_main,
                           tensorboard=cfg.run.tensorboard, desc="sft", progress=cfg.run.progress)
    sum_divisor = cfg.train.sum_divisor or float(cfg.train.batch_size)
    t_start = time.time()
    model.train()
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        idx = step_indices(len(examples), cfg.train.batch_size, step, steps_per_epoch, cfg.run.seed)
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
        nll_sum = accumulate_gradients(model, batches, n_micro, scale, info.device)
        if cfg.optim.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        nll_global = all_reduce_sum(nll_sum, info)
        dt = time.perf_counter() - t0
        logger.log(step + 1, {
            "epoch": step / steps_per_epoch, "loss": nll_global / max(n_targets, 1),
            "objective": nll_global / normalizer, "lr": lr, "grad_norm": float(grad_norm),
            "trainable_tokens": n_targets, "tokens": n_tokens, "tokens_per_s": n_tokens / dt,
            "micro_batches": n_micro, "elapsed_s": time.time() - t_start,
        })
        done = step + 1
        if cfg.checkpoint.every_steps and done % cfg.checkpoint.every_steps == 0 and done < total_steps:
            save(cfg, run_dir, done, model, tokenizer, optimizer, scheduler, info)
    logger.close()
    final = run_dir / "final"
    sd = model_state_dict(model, info)
    if info.is_main:
        ckpt.save_hf(_unwrap(model), tokenizer, final, state_dict=sd)
        write_summary(run_dir, {"stage": "sft", "steps": total_steps, "examples": len(examples),
                                "world_size": info.world_size,
                                "wall_s": time.time() - t_start, "peak_rss_mb": peak_rss_mb(),
                                "final_model": str(final)})
        log(f"[sft] done: {total_steps} steps; model saved to {final}")
    cleanup(info)
    return final


def save(cfg, run_dir, step, model, tokenizer, optimizer, scheduler, info):
    sd = model_state_dict(model, info)
    state = {"step": step, "optimizer": optimizer_state_dict(model, optimizer, info),
             "scheduler": scheduler.state_dict(), "rng": ckpt.rng_state()}
    ckpt.save_checkpoint(run_dir, step, _unwrap(model), tokenizer, state, config_text(cfg),
                         cfg.checkpoint.keep_last, state_dict=sd, write=info.is_main)


def _unwrap(model):
    return getattr(model, "module", model)
