"""The training skeleton every stage shares: set-up, resume, the optimizer step, the loop with its
eval/log/save callbacks, and the final save.

A recipe keeps what is its own (data, forward/backward, metrics) and calls these pieces in the same
order every time:

    run = start_run(cfg, "sft")                      # process group, run-dir check, seed, dtype
    ... load the data (bad input stops here, before anything is written) ...
    open_run_dir(run, cfg)                           # the run dir and its config.yaml
    resume_from = resume_point(run, cfg)             # latest checkpoint, or None
    ... build the model from resume_from or cfg.model ...
    parts = [Trainable("", model, *build_optimization(model, cfg.optim, total_steps))]
    start = restore(run, resume_from, parts, total_steps)
    train_loop(start, total_steps, step_fn, [eval_every(...), log_to(logger), save_every(...)])
    final = finish(run, tokenizer, {"final": model}, summary)

`step_fn(step)` does one optimizer step and returns its metrics row; the callbacks run after it in
list order (evaluation adds its metrics to the row before it is logged, then the checkpoint is
written), the OLMo-core arrangement of a short loop plus callbacks instead of flags in the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from posttrain.train import checkpoint as ckpt
from posttrain.train.common import (check_run_dir, config_text, peak_rss_mb, resolve_dtype, save_resolved_config,
                                    seed_everything, write_summary)
from posttrain.train.dist import DistInfo, cleanup, init_distributed, print0
from posttrain.train.lora import is_peft, save_merged, trainable_summary
from posttrain.train.metrics import MetricsLogger
from posttrain.train.optim import build_optimizer, build_scheduler
from posttrain.train.parallel import (load_model_state, load_optimizer_state, model_state_dict, optimizer_state_dict,
                                      sync_grads_context)

Row = dict[str, Any]
Callback = Callable[[int, Row], None]  # (steps done, the step's metrics row; may be extended)


@dataclasses.dataclass
class Run:
    """One stage's process context: who we are, where we write, what dtype we train in."""

    stage: str
    info: DistInfo
    run_dir: Path
    dtype: torch.dtype
    started: float = dataclasses.field(default_factory=time.time)

    @property
    def device(self) -> torch.device:
        return self.info.device

    def log(self, msg: str) -> None:
        print0(msg, info=self.info)


def start_run(cfg, stage: str) -> Run:
    """Join the process group (if any), check the run directory (an existing run is only
    continued with run.resume=true), seed every generator and pick the training dtype. Nothing is
    written until `open_run_dir`, which recipes call once their data has loaded, so bad input
    leaves no trace."""
    info = init_distributed(cfg.run.device)
    run_dir = check_run_dir(cfg.run, info)
    seed_everything(cfg.run.seed)
    return Run(stage, info, run_dir, resolve_dtype(cfg.model.dtype, info.device))


def open_run_dir(run: Run, cfg) -> None:
    """Create the run directory and save (and print) the resolved config."""
    save_resolved_config(cfg, cfg.run, run.info, run.stage)


def step_indices(n: int, batch_size: int, step: int, steps_per_epoch: int, seed: int) -> list[int]:
    """Example indices of a global optimizer step: a fresh permutation per epoch, from the seed."""
    epoch, k = divmod(step, steps_per_epoch)
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return perm[k * batch_size:(k + 1) * batch_size]


def resume_point(run: Run, cfg) -> Path | None:
    """The checkpoint to continue from when `run.resume` is set (None: start from scratch)."""
    if not cfg.run.resume:
        return None
    found = ckpt.latest_checkpoint(run.run_dir)
    if found is None:
        run.log(f"[resume] no checkpoint in {run.run_dir}; starting from scratch")
    return found


def build_optimization(model, optim, total_steps: int):
    """(AdamW, lr schedule) from an `OptimConfig`."""
    optimizer = build_optimizer(model, optim.lr, optim.weight_decay, (optim.beta1, optim.beta2), optim.eps)
    return optimizer, build_scheduler(optimizer, optim.schedule, total_steps, optim.warmup_ratio, optim.min_lr_ratio)


@dataclasses.dataclass
class Trainable:
    """A model with the optimizer (and schedule) that trains it; checkpointed and restored together.

    The first one of a stage is the policy, saved as the checkpoint's HF model; any other (PPO's
    value model) goes into the trainer state as `<name>_model` / `<name>_optimizer`."""

    name: str
    model: Any
    optimizer: Any
    scheduler: Any = None


def restore(run: Run, resume_from: Path | None, parts: Sequence[Trainable], total_steps: int) -> int:
    """Load optimizer, schedule, extra models and RNG state from `resume_from`; the step to start at."""
    if resume_from is None:
        return 0
    state = ckpt.load_trainer_state(resume_from)
    main, extra = parts[0], parts[1:]
    load_optimizer_state(main.model, main.optimizer, state["optimizer"], run.info)
    if main.scheduler is not None:
        main.scheduler.load_state_dict(state["scheduler"])
    for p in extra:
        load_model_state(p.model, state[f"{p.name}_model"], run.info)
        load_optimizer_state(p.model, p.optimizer, state[f"{p.name}_optimizer"], run.info)
    ckpt.set_rng_state(state["rng"])
    run.log(f"[resume] from {resume_from} at step {state['step']}/{total_steps}")
    return state["step"]


def save_checkpoint(run: Run, cfg, step: int, tokenizer, parts: Sequence[Trainable]) -> None:
    """A resumable checkpoint; collective under FSDP (full states gathered), written by rank 0."""
    main, extra = parts[0], parts[1:]
    sd = model_state_dict(main.model, run.info)
    state = {"step": step, "optimizer": optimizer_state_dict(main.model, main.optimizer, run.info),
             "scheduler": main.scheduler.state_dict() if main.scheduler is not None else None,
             "rng": ckpt.rng_state()}
    for p in extra:
        part_sd = model_state_dict(p.model, run.info)
        state[f"{p.name}_model"] = part_sd if part_sd is not None else p.model.state_dict()
        state[f"{p.name}_optimizer"] = optimizer_state_dict(p.model, p.optimizer, run.info)
    ckpt.save_checkpoint(run.run_dir, step, unwrap(main.model), tokenizer, state, config_text(cfg),
                         cfg.checkpoint.keep_last, state_dict=sd, write=run.info.is_main)


def clip_and_step(model, optimizer, max_grad_norm: float) -> float:
    """Clip the gradient (max_grad_norm <= 0: only measure it), step, clear; the pre-clip norm."""
    grads = [p for p in model.parameters() if p.grad is not None]
    if max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(grads, max_grad_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def padding_pass(model, device, backward: bool) -> None:
    """A one-token forward (and a zero backward) so that a rank with fewer micro-batches than the
    others still joins every FSDP collective; it adds exactly nothing to the gradient."""
    out = model(input_ids=torch.ones(1, 1, dtype=torch.long, device=device), use_cache=False)
    if backward:
        (out.logits.float().sum() * 0.0).backward()


def accumulate(model, micro_batches: Sequence, n_micro: int, info: DistInfo, fn: Callable[[Any], None],
               backward: bool = True) -> None:
    """Run `fn` (forward, and backward when training) on each micro-batch of one step.

    Every rank runs `n_micro` passes (the maximum over ranks): missing ones are padding passes.
    Gradients are reduced across ranks only on the last pass."""
    for m in range(n_micro):
        sync = sync_grads_context(model, last=m == n_micro - 1) if backward else contextlib.nullcontext()
        with sync:
            if m >= len(micro_batches):
                padding_pass(model, info.device, backward)
            else:
                fn(micro_batches[m])


def train_loop(start_step: int, total_steps: int, step_fn: Callable[[int], Row], callbacks: Sequence[Callback]) -> None:
    for step in range(start_step, total_steps):
        row = step_fn(step)
        for callback in callbacks:
            callback(step + 1, row)


def due(done: int, every: int, total_steps: int, at_end: bool = True) -> bool:
    return (at_end and done == total_steps) or (bool(every) and done % every == 0)


def eval_every(every: int, total_steps: int, evaluate: Callable[[], Row], at_end: bool = True,
               enabled: bool = True) -> Callback:
    """Evaluate every `every` steps (0: never mid-run) and after the last step; the metrics join
    the step's row."""
    def callback(done: int, row: Row) -> None:
        if enabled and due(done, every, total_steps, at_end):
            row.update(evaluate())
    return callback


def log_to(logger: MetricsLogger) -> Callback:
    return lambda done, row: logger.log(done, row)


def save_every(run: Run, cfg, total_steps: int, tokenizer, parts: Sequence[Trainable]) -> Callback:
    """A resumable checkpoint every `checkpoint.every_steps` steps (the final model is saved by
    `finish`, so no checkpoint is written after the last step)."""
    every = cfg.checkpoint.every_steps

    def callback(done: int, row: Row) -> None:
        if every and done % every == 0 and done < total_steps:
            save_checkpoint(run, cfg, done, tokenizer, parts)
    return callback


def metrics_logger(run: Run, cfg, total_steps: int, start_step: int) -> MetricsLogger:
    return MetricsLogger(run.run_dir, total_steps, start_step, enabled=run.info.is_main,
                         tensorboard=cfg.run.tensorboard, desc=run.stage, progress=cfg.run.progress,
                         report_to=cfg.run.report_to, run_name=cfg.run.run_name, run_group=cfg.run.run_group,
                         config=dataclasses.asdict(cfg))


def finish(run: Run, tokenizer, models: dict[str, Any], summary: Row, steps: int,
           save_as: dict[str, Any] | None = None) -> Path:
    """Save each model as a plain HF directory `<run_dir>/<name>` (`save_as[name]` is the module
    whose config and class are written, default the unwrapped model), write summary.json, leave
    the process group. A LoRA model is saved twice: its adapter directory `<name>_adapter`
    (`PeftModel.from_pretrained` loads it) and, merged into the base, the plain `<name>` that the
    next stage and the evaluation read. Gathering full weights is collective: every rank calls this."""
    state_dicts = {name: model_state_dict(m, run.info) for name, m in models.items()}
    final = run.run_dir / next(iter(models))
    adapters = {}
    if run.info.is_main:
        for name, m in models.items():
            if is_peft(m):
                adapters[name] = str(run.run_dir / f"{name}_adapter")
                ckpt.save_hf(m, tokenizer, run.run_dir / f"{name}_adapter", state_dict=state_dicts[name])
                save_merged(m, run.run_dir / name, tokenizer, state_dicts[name])
                continue
            ckpt.save_hf((save_as or {}).get(name, unwrap(m)), tokenizer, run.run_dir / name,
                         state_dict=state_dicts[name])
        extra = {"adapters": adapters, **trainable_summary(next(iter(models.values())))} if adapters else {}
        write_summary(run.run_dir, {"stage": run.stage, **summary, "steps": steps,
                                    "world_size": run.info.world_size, "wall_s": time.time() - run.started,
                                    "peak_rss_mb": peak_rss_mb(), "final_model": str(final), **extra})
    run.log(f"[{run.stage}] done: {steps} steps; model saved to {final}"
            + (f" (adapter: {final}_adapter)" if adapters else ""))
    cleanup(run.info)
    return final


def unwrap(model):
    return getattr(model, "module", model)


def fmt(metrics: Row) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
