"""Reward-model training (`posttrain rm`): Bradley–Terry on a scalar head; readable top to bottom.

The reward model is `AutoModelForSequenceClassification(num_labels=1)` initialised from a causal
LM checkpoint (the head is new), so its checkpoints load with the same class. Both sides of each
pair are packed into one padding-free row; the reward of a sequence is the head's output at its
last non-pad token, exactly where the HF class reads it on a right-padded batch. `score()` gives
rewards for any list of conversations (data filtering, PPO value-model init, analysis).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from posttrain.config import field
from posttrain.data.packing import PackedBatch, pack, packed_forward, plan_micro_batches
from posttrain.data.preference import (PreferenceData, TokenizedPair, build_preference_splits, encode_conversation,
                                       last_non_pad_positions, pack_pairs)
from posttrain.losses.rm import bradley_terry_loss
from posttrain.models import load_tokenizer, parse_dtype, resolve_model_path
from posttrain.recipes.sft import step_indices
from posttrain.train import checkpoint as ckpt
from posttrain.train.common import (CheckpointConfig, ModelConfig, OptimConfig, RunConfig, config_text, peak_rss_mb,
                                    prepare_run_dir, resolve_dtype, seed_everything, write_summary)
from posttrain.train.dist import DistInfo, all_reduce_max, cleanup, init_distributed, print0
from posttrain.train.metrics import MetricsLogger
from posttrain.train.optim import build_optimizer, build_scheduler
from posttrain.train.parallel import (load_optimizer_state, model_state_dict, optimizer_state_dict, parallelize,
                                      sync_grads_context)
from posttrain.train.refcache import reshard


@dataclasses.dataclass
class RMTrain:
    epochs: int = field(1, "passes over the data")
    max_steps: int | None = field(None, "stop after this many optimizer steps (overrides epochs)")
    batch_size: int = field(64, "pairs per optimizer step (across all ranks)")
    micro_batch_tokens: int = field(4096, "token budget of one packed micro-batch (per rank; both sides of a pair)")
    margin: float = field(0.0, "required reward margin m in −log σ(r_w − r_l − m)")
    eval_every_steps: int = field(0, "evaluate on the held-out pairs every N steps (0: only at the end)")
    eval_at_start: bool = field(True, "also evaluate before the first step (the untrained head's accuracy)")

    def validate(self):
        if self.batch_size < 1 or self.micro_batch_tokens < 1:
            raise ValueError("train.batch_size and train.micro_batch_tokens must be >= 1")


@dataclasses.dataclass
class RMConfig:
    model: ModelConfig = field(ModelConfig(), "causal LM (or reward model) to start from")
    data: PreferenceData = field(PreferenceData(), "preference pairs")
    optim: OptimConfig = field(OptimConfig(lr=3e-6, warmup_ratio=0.03), "optimizer and schedule")
    train: RMTrain = field(RMTrain(), "batching, margin and evaluation")
    checkpoint: CheckpointConfig = field(CheckpointConfig(), "checkpointing")
    run: RunConfig = field(RunConfig(output_dir="runs/rm"), "run directory, resume, seed, device")


# ---------------------------------------------------------------- model, forward, score()

def load_reward_model(name_or_path: str, tokenizer=None, dtype: torch.dtype | str | None = None,
                      device=None, attn_implementation: str = "varlen"):
    """`AutoModelForSequenceClassification(num_labels=1)` from a causal LM or reward-model
    checkpoint, with `pad_token_id` set (the HF class needs it to find the last real token).
    `attn_implementation` as in `ModelConfig`: "varlen" (per-document attention for packed rows,
    our default), "varlen_flash", or an HF implementation."""
    from transformers import AutoModelForSequenceClassification

    from posttrain.train.varlen_attn import hf_attn_implementation, install

    kwargs = {"num_labels": 1, "dtype": parse_dtype(dtype) if isinstance(dtype, str) else (dtype or torch.float32),
              "attn_implementation": hf_attn_implementation(attn_implementation)}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(name_or_path), **kwargs)
    except OSError as e:
        raise ValueError(f"cannot load reward model from '{name_or_path}': {e}") from None
    install(model, attn_implementation)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    if model.config.pad_token_id is None:
        if tokenizer is None or tokenizer.pad_token_id is None:
            raise ValueError(f"{name_or_path}: the config has no pad_token_id; pass a tokenizer with a pad token")
        model.config.pad_token_id = tokenizer.pad_token_id
    _head(model)
    return model.to(device) if device is not None else model


def _head(model) -> torch.nn.Module:
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ValueError(f"{type(model).__name__}: expected a scalar `score` head (num_labels=1)")
    return head


def sequence_rewards(model, batch: PackedBatch) -> Tensor:
    """[D] float32 reward of each document of a packed row, read at its last non-pad token.

    The model is called through its own forward (so FSDP hooks run); a forward hook on the head
    captures its per-position output, because the HF class itself pools a single position per row.
    """
    captured: list[Tensor] = []
    handle = _head(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        packed_forward(model, batch)
    finally:
        handle.remove()
    positions = last_non_pad_positions(batch, model.config.pad_token_id).to(captured[0].device)
    return captured[0][0, positions, 0].float()


@torch.no_grad()
def score(model, tokenizer, conversations: Sequence[list[dict] | str], micro_batch_tokens: int = 8192,
          max_length: int | None = None) -> list[float]:
    """Reward of each conversation (a message list, rendered with the tokenizer's chat template
    exactly as in training, or an already-rendered string). Longer than `max_length`: the start is
    cut, keeping the end where the reward is read."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    docs = []
    for conv in conversations:
        ids = (tokenizer(conv, add_special_tokens=False)["input_ids"] if isinstance(conv, str)
               else encode_conversation(tokenizer, conv)[1])
        if not ids:
            raise ValueError("score: a conversation rendered to zero tokens")
        docs.append(ids[-max_length:] if max_length else ids)
    budget = max(micro_batch_tokens, max((len(d) for d in docs), default=1))
    out: list[float] = []
    for group in plan_micro_batches([len(d) for d in docs], budget):
        batch = pack([(docs[i], docs[i]) for i in group]).to(device)
        out += sequence_rewards(model, batch).tolist()
    model.train(was_training)
    return out


# ---------------------------------------------------------------- training

STAT_NAMES = ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "length/chosen", "length/rejected")


def pair_rewards(model, pairs: Sequence[TokenizedPair], device) -> Tensor:
    """[P, 2] rewards (chosen, rejected) from one packed forward."""
    return sequence_rewards(model, pack_pairs(pairs).to(device)).view(-1, 2)


def pair_stats(out, rewards: Tensor, pairs: Sequence[TokenizedPair]) -> Tensor:
    r = rewards.detach().double()
    lengths = torch.tensor([[p.chosen.num_trainable, p.rejected.num_trainable] for p in pairs], dtype=torch.float64)
    return torch.stack([out.losses.detach().double().sum().cpu(), out.accuracies.double().sum().cpu(),
                        out.margins.double().sum().cpu(), r[:, 0].sum().cpu(), r[:, 1].sum().cpu(),
                        lengths[:, 0].sum(), lengths[:, 1].sum()])


def finish_stats(sums: Tensor, n_pairs: int, info: DistInfo, prefix: str = "") -> dict[str, float]:
    if info.distributed:
        dist.all_reduce(sums)
    return {prefix + k: v / max(n_pairs, 1) for k, v in zip(STAT_NAMES, sums.tolist())}


def plan_step(pairs: Sequence[TokenizedPair], indices: list[int], micro_batch_tokens: int) -> list[list[int]]:
    plan = plan_micro_batches([pairs[i].num_tokens for i in indices], micro_batch_tokens)
    return [[indices[j] for j in group] for group in plan]


def train_step(model, pairs, groups: list[list[int]], n_micro: int, n_pairs: int, margin: float,
               info: DistInfo) -> Tensor:
    """Forward/backward one optimizer step; the gradient is that of the global per-pair mean."""
    scale = info.world_size / max(n_pairs, 1)
    sums = torch.zeros(len(STAT_NAMES), dtype=torch.float64)
    for m in range(n_micro):
        with sync_grads_context(model, last=(m == n_micro - 1)):
            if m >= len(groups):  # padding pass for ranks with fewer micro-batches
                out = model(input_ids=torch.ones(1, 1, dtype=torch.long, device=info.device), use_cache=False)
                (out.logits.sum() * 0.0).backward()
                continue
            chunk = [pairs[i] for i in groups[m]]
            rewards = pair_rewards(model, chunk, info.device)
            out = bradley_terry_loss(rewards[:, 0], rewards[:, 1], margin=margin or None)
            (out.losses.sum() * scale).backward()
            sums += pair_stats(out, rewards, chunk)
    return sums


@torch.no_grad()
def evaluate(model, pairs, micro_batch_tokens: int, info: DistInfo) -> dict[str, float]:
    """Held-out pairwise accuracy (r_chosen > r_rejected), loss and margin."""
    was_training = model.training
    model.eval()
    groups = plan_step(pairs, list(range(info.rank, len(pairs), info.world_size)), micro_batch_tokens)
    n_micro = int(all_reduce_max(len(groups), info))
    sums = torch.zeros(len(STAT_NAMES), dtype=torch.float64)
    for m in range(n_micro):
        if m >= len(groups):
            model(input_ids=torch.ones(1, 1, dtype=torch.long, device=info.device), use_cache=False)
            continue
        chunk = [pairs[i] for i in groups[m]]
        rewards = pair_rewards(model, chunk, info.device)
        sums += pair_stats(bradley_terry_loss(rewards[:, 0], rewards[:, 1]), rewards, chunk)
    reshard(model)
    model.train(was_training)
    return finish_stats(sums, len(pairs), info, prefix="eval/")


def main(cfg: RMConfig) -> Path:
    info = init_distributed(cfg.run.device)
    log = lambda msg: print0(msg, info=info)  # noqa: E731
    run_dir = prepare_run_dir(cfg, cfg.run, info, "rm")
    seed_everything(cfg.run.seed)
    dtype = resolve_dtype(cfg.model.dtype, info.device)

    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template)
    train_pairs, eval_pairs = build_preference_splits(cfg.data, tokenizer, cfg.run.seed, log)
    steps_per_epoch = math.ceil(len(train_pairs) / cfg.train.batch_size)
    total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs

    resume_from = ckpt.latest_checkpoint(run_dir) if cfg.run.resume else None
    model = load_reward_model(str(resume_from) if resume_from else cfg.model.name_or_path, tokenizer, dtype,
                              attn_implementation=cfg.model.attn_implementation)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model = parallelize(model.to(info.device), info)
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

    summary: dict = {"stage": "rm", "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs)}
    if cfg.train.eval_at_start and start_step == 0 and eval_pairs:
        summary["eval_start"] = evaluate(model, eval_pairs, cfg.train.micro_batch_tokens, info)
        log(f"[eval] before training: {_fmt(summary['eval_start'])}")

    logger = MetricsLogger(run_dir, total_steps, start_step, enabled=info.is_main, tensorboard=cfg.run.tensorboard,
                           desc="rm", progress=cfg.run.progress)
    t_start = time.time()
    last_eval: dict[str, float] = {}
    model.train()
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        idx = step_indices(len(train_pairs), cfg.train.batch_size, step, steps_per_epoch, cfg.run.seed)
        groups = plan_step(train_pairs, idx[info.rank::info.world_size], cfg.train.micro_batch_tokens)
        n_micro = int(all_reduce_max(len(groups), info))
        sums = train_step(model, train_pairs, groups, n_micro, len(idx), cfg.train.margin, info)
        if cfg.optim.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        row = {"epoch": step / steps_per_epoch, **finish_stats(sums, len(idx), info), "lr": lr,
               "grad_norm": float(grad_norm), "pairs": len(idx), "pairs_per_s": len(idx) / dt,
               "micro_batches": n_micro, "elapsed_s": time.time() - t_start}
        done = step + 1
        if eval_pairs and (done == total_steps or _every(done, cfg.train.eval_every_steps)):
            last_eval = evaluate(model, eval_pairs, cfg.train.micro_batch_tokens, info)
            row.update(last_eval)
        logger.log(done, row)
        if cfg.checkpoint.every_steps and done % cfg.checkpoint.every_steps == 0 and done < total_steps:
            save(cfg, run_dir, done, model, tokenizer, optimizer, scheduler, info)
    logger.close()
    if last_eval:
        log(f"[eval] after training: {_fmt(last_eval)}")
    final = run_dir / "final"
    sd = model_state_dict(model, info)
    if info.is_main:
        ckpt.save_hf(_unwrap(model), tokenizer, final, state_dict=sd)
        write_summary(run_dir, {**summary, "steps": total_steps, "eval_end": last_eval, "world_size": info.world_size,
                                "wall_s": time.time() - t_start, "peak_rss_mb": peak_rss_mb(),
                                "final_model": str(final)})
        log(f"[rm] done: {total_steps} steps; reward model saved to {final}")
    cleanup(info)
    return final


def _every(step: int, n: int) -> bool:
    return bool(n) and step % n == 0


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def save(cfg, run_dir, step, model, tokenizer, optimizer, scheduler, info):
    sd = model_state_dict(model, info)
    state = {"step": step, "optimizer": optimizer_state_dict(model, optimizer, info),
             "scheduler": scheduler.state_dict(), "rng": ckpt.rng_state()}
    ckpt.save_checkpoint(run_dir, step, _unwrap(model), tokenizer, state, config_text(cfg),
                         cfg.checkpoint.keep_last, state_dict=sd, write=info.is_main)


def _unwrap(model):
    return getattr(model, "module", model)
