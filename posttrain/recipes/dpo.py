"""Preference tuning (`posttrain dpo`): DPO, dpo_norm (Tülu 3), SimPO, IPO, WPO; readable top to bottom.

Data: preference pairs -> both sides tokenized with response-only labels -> per step,
`train.batch_size` pairs, each pair's chosen and rejected packed next to each other in padding-free
micro-batches of at most `train.micro_batch_tokens` tokens (document-local attention).
Reference: summed response log-probs computed once in a no-grad pass and cached on disk
(`posttrain.train.refcache`); no reference model is in memory while training.
Loss: the per-pair losses of a step summed and divided by the step's global pair count, so
micro-batching and data parallelism do not change the gradient.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from posttrain.config import field
from posttrain.data.packing import plan_micro_batches
from posttrain.data.preference import (PreferenceData, TokenizedPair, build_preference_splits, fingerprint_pairs,
                                       pack_pairs)
from posttrain.losses.dpo import LOSSES, REFERENCE_FREE, PreferenceLossFn, bind_preference_loss
from posttrain.models import cache_dir, load_tokenizer, resolve_model_path
from posttrain.recipes.sft import step_indices
from posttrain.train import checkpoint as ckpt
from posttrain.train.common import (CheckpointConfig, ModelConfig, OptimConfig, RunConfig, config_text,
                                    load_for_training, peak_rss_mb, prepare_run_dir, resolve_dtype,
                                    seed_everything, write_summary)
from posttrain.train.dist import DistInfo, all_reduce_max, cleanup, init_distributed, print0
from posttrain.train.metrics import MetricsLogger
from posttrain.train.optim import build_optimizer, build_scheduler
from posttrain.train.parallel import (load_optimizer_state, model_state_dict, optimizer_state_dict, parallelize,
                                      sync_grads_context)
from posttrain.train.refcache import (cache_key, compute_pair_logps, model_fingerprint, pair_logps, reference_logps,
                                      reshard)


@dataclasses.dataclass
class DPOLoss:
    name: str = field("dpo_norm", f"preference loss: {', '.join(LOSSES)}")
    beta: float = field(5.0, "β: inverse strength of the pull towards the reference (5 for dpo_norm, ~0.1 for dpo)")
    label_smoothing: float = field(0.0, "conservative-DPO label flip rate ε (dpo, dpo_norm, simpo, wpo)")
    gamma_beta_ratio: float | None = field(None, "SimPO's γ/β (default 0.3)")

    def validate(self):
        if self.name not in LOSSES:
            raise ValueError(f"loss.name: unknown {self.name!r}; valid: {', '.join(LOSSES)}")

    def build(self) -> PreferenceLossFn:
        hparams = {"beta": self.beta}
        if self.label_smoothing:
            hparams["label_smoothing"] = self.label_smoothing
        if self.gamma_beta_ratio is not None:
            hparams["gamma_beta_ratio"] = self.gamma_beta_ratio
        return bind_preference_loss(self.name, **hparams)


@dataclasses.dataclass
class RefConfig:
    name_or_path: str | None = field(None, "reference model (default: model.name_or_path, the policy's start)")
    cache_dir: str | None = field(None, "where reference log-probs are cached (default: <posttrain cache>/ref_logps)")
    micro_batch_tokens: int | None = field(None, "token budget of a reference micro-batch (default: train's)")


@dataclasses.dataclass
class DPOTrain:
    epochs: int = field(1, "passes over the data")
    max_steps: int | None = field(None, "stop after this many optimizer steps (overrides epochs)")
    batch_size: int = field(128, "pairs per optimizer step (across all ranks): the effective batch")
    micro_batch_tokens: int = field(4096, "token budget of one packed micro-batch (per rank; both sides of a pair)")
    eval_every_steps: int = field(0, "evaluate on the held-out pairs every N steps (0: only at the end)")
    eval_at_start: bool = field(False, "also evaluate before the first step")

    def validate(self):
        if self.batch_size < 1 or self.micro_batch_tokens < 1:
            raise ValueError("train.batch_size and train.micro_batch_tokens must be >= 1")


@dataclasses.dataclass
class DPOConfig:
    model: ModelConfig = field(ModelConfig(), "policy model to tune (usually the SFT checkpoint)")
    data: PreferenceData = field(PreferenceData(), "preference pairs")
    loss: DPOLoss = field(DPOLoss(), "preference loss and its hyperparameters")
    ref: RefConfig = field(RefConfig(), "reference model and log-prob cache")
    optim: OptimConfig = field(OptimConfig(lr=5e-7, warmup_ratio=0.1), "optimizer and schedule")
    train: DPOTrain = field(DPOTrain(), "batching and evaluation")
    checkpoint: CheckpointConfig = field(CheckpointConfig(), "checkpointing")
    run: RunConfig = field(RunConfig(output_dir="runs/dpo"), "run directory, resume, seed, device")


# Per-pair statistics summed over a step (then divided by the global pair count).
STAT_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "accuracy", "logps/chosen", "logps/rejected",
              "length/chosen", "length/rejected")


def pair_stats(loss_out, logps: Tensor, lengths: Tensor) -> Tensor:
    """[len(STAT_NAMES)] float64 sums over the pairs of a micro-batch (detached)."""
    cols = [loss_out.losses.detach(), loss_out.chosen_rewards, loss_out.rejected_rewards, loss_out.accuracies,
            logps[:, 0].detach(), logps[:, 1].detach(), lengths[:, 0], lengths[:, 1]]
    return torch.stack([c.double().sum() for c in cols]).cpu()


def finish_stats(sums: Tensor, n_pairs: int, info: DistInfo, prefix: str = "") -> dict[str, float]:
    if info.distributed:
        dist.all_reduce(sums)
    means = {prefix + k: v / max(n_pairs, 1) for k, v in zip(STAT_NAMES, sums.tolist())}
    means[prefix + "margin"] = means[prefix + "rewards/chosen"] - means[prefix + "rewards/rejected"]
    return means


def loss_on(loss_fn: PreferenceLossFn, logps: Tensor, lengths: Tensor, ref: Tensor | None):
    return loss_fn(policy_chosen_logps=logps[:, 0], policy_rejected_logps=logps[:, 1],
                   ref_chosen_logps=None if ref is None else ref[:, 0],
                   ref_rejected_logps=None if ref is None else ref[:, 1],
                   chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1])


def plan_step(pairs: Sequence[TokenizedPair], indices: list[int], micro_batch_tokens: int) -> list[list[int]]:
    """Pair indices of each micro-batch (order kept, both sides of a pair in one row)."""
    plan = plan_micro_batches([pairs[i].num_tokens for i in indices], micro_batch_tokens)
    return [[indices[j] for j in group] for group in plan]


def train_step(model, pairs, ref: Tensor | None, loss_fn, groups: list[list[int]], n_micro: int,
               n_pairs: int, info: DistInfo) -> Tensor:
    """Forward/backward every micro-batch of one optimizer step; returns the local stat sums.

    Each micro-batch backpropagates sum(per-pair loss) * world_size / n_pairs (n_pairs counted
    over all ranks): data-parallel averaging then leaves the gradient of the global pair mean.
    """
    scale = info.world_size / max(n_pairs, 1)
    sums = torch.zeros(len(STAT_NAMES), dtype=torch.float64)
    for m in range(n_micro):
        with sync_grads_context(model, last=(m == n_micro - 1)):
            if m >= len(groups):  # padding pass: ranks with fewer micro-batches still join collectives
                out = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=info.device), use_cache=False)
                (out.logits.sum() * 0.0).backward()
                continue
            idx = groups[m]
            logps, lengths = pair_logps(model, pack_pairs([pairs[i] for i in idx]).to(info.device))
            out = loss_on(loss_fn, logps, lengths, None if ref is None else ref[idx].to(info.device))
            (out.losses.sum() * scale).backward()
            sums += pair_stats(out, logps, lengths)
    return sums


@torch.no_grad()
def evaluate(model, pairs, ref: Tensor | None, loss_fn, micro_batch_tokens: int, info: DistInfo) -> dict[str, float]:
    """Held-out loss, implicit-reward accuracy and margins, averaged over all pairs."""
    was_training = model.training
    model.eval()
    groups = plan_step(pairs, list(range(info.rank, len(pairs), info.world_size)), micro_batch_tokens)
    n_micro = int(all_reduce_max(len(groups), info))
    sums = torch.zeros(len(STAT_NAMES), dtype=torch.float64)
    for m in range(n_micro):
        if m >= len(groups):
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=info.device), use_cache=False)
            continue
        idx = groups[m]
        logps, lengths = pair_logps(model, pack_pairs([pairs[i] for i in idx]).to(info.device))
        sums += pair_stats(loss_on(loss_fn, logps, lengths, None if ref is None else ref[idx].to(info.device)),
                           logps, lengths)
    reshard(model)
    model.train(was_training)
    return finish_stats(sums, len(pairs), info, prefix="eval/")


def reference_for_run(cfg: DPOConfig, policy, pairs: list[TokenizedPair], info: DistInfo, dtype: torch.dtype,
                      resumed: bool, log: Callable[[str], None]) -> tuple[Tensor, dict]:
    """Reference log-probs of `pairs` from the cache, or computed now and cached.

    When the reference is the policy's starting point and training has not begun, the policy
    itself (same weights) runs the pass; otherwise a reference model is loaded for the pass and
    freed before training.
    """
    ref_path = cfg.ref.name_or_path or cfg.model.name_or_path
    key = cache_key(model=model_fingerprint(resolve_model_path(ref_path)), pairs=fingerprint_pairs(pairs),
                    dtype=str(dtype), chat_template=cfg.model.chat_template, max_length=str(cfg.data.max_length))
    meta = {"reference": ref_path, "dtype": str(dtype), "chat_template": cfg.model.chat_template[:200],
            "max_length": cfg.data.max_length, "data": list(cfg.data.paths) + list(cfg.data.eval_paths)}
    folder = cfg.ref.cache_dir or str(cache_dir() / "ref_logps")
    mbt = cfg.ref.micro_batch_tokens or cfg.train.micro_batch_tokens
    t0 = time.time()

    def compute() -> Tensor:
        log(f"[ref] computing reference log-probs of {len(pairs)} pairs with {ref_path} (no grad)")
        if ref_path == cfg.model.name_or_path and not resumed:
            return compute_pair_logps(policy, pairs, mbt, info)
        ref_model = parallelize(load_for_training(cfg.model, info, dtype, init_from=ref_path).requires_grad_(False),
                                info)
        try:
            return compute_pair_logps(ref_model, pairs, mbt, info)
        finally:
            del ref_model
            gc.collect()

    logps, hit = reference_logps(folder, key, len(pairs), compute, info, meta, log)
    return logps, {"ref_cache_hit": hit, "ref_key": key, "ref_pass_s": time.time() - t0}


def main(cfg: DPOConfig) -> Path:
    info = init_distributed(cfg.run.device)
    log = lambda msg: print0(msg, info=info)  # noqa: E731
    run_dir = prepare_run_dir(cfg, cfg.run, info, "dpo")
    seed_everything(cfg.run.seed)
    dtype = resolve_dtype(cfg.model.dtype, info.device)
    loss_fn = cfg.loss.build()

    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template)
    train_pairs, eval_pairs = build_preference_splits(cfg.data, tokenizer, cfg.run.seed, log)
    steps_per_epoch = math.ceil(len(train_pairs) / cfg.train.batch_size)
    total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs

    resume_from = ckpt.latest_checkpoint(run_dir) if cfg.run.resume else None
    model = load_for_training(cfg.model, info, dtype, init_from=str(resume_from) if resume_from else None)
    model = parallelize(model, info)

    ref_train = ref_eval = None
    ref_info: dict = {"ref_cache_hit": None}
    if cfg.loss.name not in REFERENCE_FREE:
        ref_all, ref_info = reference_for_run(cfg, model, train_pairs + eval_pairs, info, dtype,
                                              resumed=resume_from is not None, log=log)
        ref_train, ref_eval = ref_all[:len(train_pairs)], ref_all[len(train_pairs):]

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

    def run_eval() -> dict[str, float]:
        if not eval_pairs:
            return {}
        return evaluate(model, eval_pairs, ref_eval, loss_fn, cfg.train.micro_batch_tokens, info)

    summary: dict = {"stage": "dpo", "loss": cfg.loss.name, "train_pairs": len(train_pairs),
                     "eval_pairs": len(eval_pairs), **ref_info}
    if cfg.train.eval_at_start and start_step == 0 and eval_pairs:
        summary["eval_start"] = run_eval()
        log(f"[eval] before training: {_fmt(summary['eval_start'])}")

    logger = MetricsLogger(run_dir, total_steps, start_step, enabled=info.is_main, tensorboard=cfg.run.tensorboard,
                           desc="dpo", progress=cfg.run.progress)
    t_start = time.time()
    last_eval: dict[str, float] = {}
    model.train()
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        idx = step_indices(len(train_pairs), cfg.train.batch_size, step, steps_per_epoch, cfg.run.seed)
        groups = plan_step(train_pairs, idx[info.rank::info.world_size], cfg.train.micro_batch_tokens)
        # Every rank must run the same number of forward/backward passes under FSDP.
        n_micro = int(all_reduce_max(len(groups), info))
        n_tokens = sum(train_pairs[i].num_tokens for i in idx)
        sums = train_step(model, train_pairs, ref_train, loss_fn, groups, n_micro, len(idx), info)
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
               "tokens_per_s": n_tokens / dt, "micro_batches": n_micro, "elapsed_s": time.time() - t_start}
        done = step + 1
        if eval_pairs and (done == total_steps or _every(done, cfg.train.eval_every_steps)):
            last_eval = run_eval()
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
        log(f"[dpo] done: {total_steps} steps; model saved to {final}")
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
