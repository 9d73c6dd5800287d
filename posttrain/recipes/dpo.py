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
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from posttrain.config import field
from posttrain.data.preference import (PreferenceData, TokenizedPair, build_preference_splits, fingerprint_pairs,
                                       pack_pairs)
from posttrain.losses.dpo import LOSSES, REFERENCE_FREE, PreferenceLossFn, bind_preference_loss
from posttrain.models import cache_dir, load_tokenizer, resolve_model_path
from posttrain.train.common import (CheckpointConfig, ModelConfig, OptimConfig, PairStepsConfig, RunConfig,
                                    load_for_training)
from posttrain.train.dist import DistInfo, all_reduce_max
from posttrain.train.lora import adapters_disabled
from posttrain.train.loop import (Row, Trainable, build_optimization, clip_and_step, fmt, open_run_dir, restore,
                                  resume_point, start_run, step_indices)
from posttrain.train.pairs import evaluate_pairs, mean_stats, pair_passes, plan_pairs, train_pair_stage
from posttrain.train.parallel import parallelize
from posttrain.train.refcache import cache_key, compute_pair_logps, model_fingerprint, pair_logps, reference_logps


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
class DPOTrain(PairStepsConfig):
    batch_size: int = field(128, "pairs per optimizer step (across all ranks): the effective batch")


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
    return with_margin(mean_stats(sums, STAT_NAMES, n_pairs, info, prefix), prefix)


def with_margin(means: dict[str, float], prefix: str = "") -> dict[str, float]:
    means[prefix + "margin"] = means[prefix + "rewards/chosen"] - means[prefix + "rewards/rejected"]
    return means


def loss_on(loss_fn: PreferenceLossFn, logps: Tensor, lengths: Tensor, ref: Tensor | None):
    return loss_fn(policy_chosen_logps=logps[:, 0], policy_rejected_logps=logps[:, 1],
                   ref_chosen_logps=None if ref is None else ref[:, 0],
                   ref_rejected_logps=None if ref is None else ref[:, 1],
                   chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1])


def preference_micro_batch(model, pairs: Sequence[TokenizedPair], ref: Tensor | None, loss_fn: PreferenceLossFn,
                           device):
    """The per-micro-batch function of `posttrain.train.pairs`: packed pair log-probs, then the loss."""
    def fn(idx: list[int]) -> tuple[Tensor, Tensor]:
        logps, lengths = pair_logps(model, pack_pairs([pairs[i] for i in idx]).to(device))
        out = loss_on(loss_fn, logps, lengths, None if ref is None else ref[idx].to(device))
        return out.losses.sum(), pair_stats(out, logps, lengths)
    return fn


def evaluate(model, pairs, ref: Tensor | None, loss_fn, micro_batch_tokens: int, info: DistInfo) -> dict[str, float]:
    """Held-out loss, implicit-reward accuracy and margins, averaged over all pairs."""
    fn = preference_micro_batch(model, pairs, ref, loss_fn, info.device)
    return with_margin(evaluate_pairs(model, pairs, micro_batch_tokens, STAT_NAMES, info, fn), "eval/")


def reference_for_run(cfg: DPOConfig, policy, pairs: list[TokenizedPair], info: DistInfo, dtype: torch.dtype,
                      resumed: bool, log: Callable[[str], None]) -> tuple[Tensor, dict]:
    """Reference log-probs of `pairs` from the cache, or computed now and cached.

    When the reference is the policy's starting point and training has not begun, the policy
    itself (same weights) runs the pass; under LoRA the policy with its adapters switched off does,
    also on resume (no second copy of the model); otherwise a reference model is loaded for the
    pass and freed before training.
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
        if ref_path == cfg.model.name_or_path and cfg.model.lora.enabled:
            with adapters_disabled(policy):  # the base under the adapters is the reference, resumed or not
                return compute_pair_logps(policy, pairs, mbt, info)
        if ref_path == cfg.model.name_or_path and not resumed:
            return compute_pair_logps(policy, pairs, mbt, info)
        ref_model = parallelize(load_for_training(cfg.model, info, dtype, init_from=ref_path,
                                                  reference=True).requires_grad_(False), info)
        try:
            return compute_pair_logps(ref_model, pairs, mbt, info)
        finally:
            del ref_model
            gc.collect()

    logps, hit = reference_logps(folder, key, len(pairs), compute, info, meta, log)
    return logps, {"ref_cache_hit": hit, "ref_key": key, "ref_pass_s": time.time() - t0}


def main(cfg: DPOConfig) -> Path:
    run = start_run(cfg, "dpo")
    info = run.info
    loss_fn = cfg.loss.build()
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template)
    train_pairs, eval_pairs = build_preference_splits(cfg.data, tokenizer, cfg.run.seed, run.log)
    steps_per_epoch, total_steps = cfg.train.steps(len(train_pairs))

    open_run_dir(run, cfg)
    resume_from = resume_point(run, cfg)
    model = load_for_training(cfg.model, info, run.dtype, init_from=str(resume_from) if resume_from else None)
    model = parallelize(model, info)
    ref_train = ref_eval = None
    ref_info: dict = {"ref_cache_hit": None}
    if cfg.loss.name not in REFERENCE_FREE:
        ref_all, ref_info = reference_for_run(cfg, model, train_pairs + eval_pairs, info, run.dtype,
                                              resumed=resume_from is not None, log=run.log)
        ref_train, ref_eval = ref_all[:len(train_pairs)], ref_all[len(train_pairs):]
    parts = [Trainable("policy", model, *build_optimization(model, cfg.optim, total_steps))]
    optimizer, scheduler = parts[0].optimizer, parts[0].scheduler
    start_step = restore(run, resume_from, parts, total_steps)

    def run_eval() -> Row:
        return evaluate(model, eval_pairs, ref_eval, loss_fn, cfg.train.micro_batch_tokens, info)

    summary: dict = {"loss": cfg.loss.name, "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs), **ref_info}
    if cfg.train.eval_at_start and start_step == 0 and eval_pairs:
        summary["eval_start"] = run_eval()
        run.log(f"[eval] before training: {fmt(summary['eval_start'])}")
    t_start = time.time()
    train_fn = preference_micro_batch(model, train_pairs, ref_train, loss_fn, info.device)

    def step_fn(step: int) -> Row:
        t0 = time.perf_counter()
        idx = step_indices(len(train_pairs), cfg.train.batch_size, step, steps_per_epoch, cfg.run.seed)
        groups = plan_pairs(train_pairs, idx[info.rank::info.world_size], cfg.train.micro_batch_tokens)
        # Every rank must run the same number of forward/backward passes under FSDP.
        n_micro = int(all_reduce_max(len(groups), info))
        n_tokens = sum(train_pairs[i].num_tokens for i in idx)
        sums = pair_passes(model, groups, n_micro, len(STAT_NAMES), info, train_fn, n_pairs=len(idx))
        lr = scheduler.get_last_lr()[0]
        grad_norm = clip_and_step(model, optimizer, cfg.optim.max_grad_norm)
        scheduler.step()
        dt = time.perf_counter() - t0
        return {"epoch": step / steps_per_epoch, **finish_stats(sums, len(idx), info), "lr": lr,
                "grad_norm": grad_norm, "pairs": len(idx), "pairs_per_s": len(idx) / dt,
                "tokens_per_s": n_tokens / dt, "micro_batches": n_micro, "elapsed_s": time.time() - t_start}

    return train_pair_stage(run, cfg, tokenizer, parts, start_step, total_steps, step_fn,
                            run_eval if eval_pairs else None, summary)
