"""Config sections and run set-up shared by every training recipe."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from posttrain.config import dump_config, field
from posttrain.train.dist import DistInfo, print0
from posttrain.train.lora import LoraConfig


@dataclasses.dataclass
class ModelConfig:
    name_or_path: str = field("smollm2-135m", "HF directory, hub id, or embedded model name")
    chat_template: str = field("model", "'model' (the tokenizer's own), 'tulu', or a Jinja template")
    dtype: Literal["auto", "float32", "bfloat16"] = field("auto", "auto = fp32 on CPU, bf16 on CUDA")
    gradient_checkpointing: bool = field(False, "recompute activations in backward to save memory")
    attn_implementation: str = field("varlen", "varlen (packed, per-document fused attention), varlen_flash "
                                     "(same, through torch's varlen flash kernel on CUDA; opt-in, unmeasured), "
                                     "or an HF implementation: sdpa, eager, flash_attention_2")
    lora: LoraConfig = field(LoraConfig(), "LoRA / DoRA / QLoRA adapters (peft) instead of full fine-tuning")


@dataclasses.dataclass
class OptimConfig:
    lr: float = field(5e-6, "peak learning rate")
    weight_decay: float = field(0.0, "AdamW weight decay (not applied to biases and norms)")
    beta1: float = field(0.9, "AdamW beta1")
    beta2: float = field(0.999, "AdamW beta2")
    eps: float = field(1e-8, "AdamW epsilon")
    schedule: Literal["constant", "linear", "cosine"] = field("linear", "lr decay after warmup")
    warmup_ratio: float = field(0.03, "fraction of total steps spent warming up linearly")
    min_lr_ratio: float = field(0.0, "final lr as a fraction of the peak (linear/cosine)")
    max_grad_norm: float = field(1.0, "gradient clipping norm; <= 0 disables clipping")

    def validate(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclasses.dataclass
class StepsConfig:
    """How a stage walks its data: the `train` section's shared keys (each stage adds its own)."""

    epochs: int = field(1, "passes over the data")
    max_steps: int | None = field(None, "stop after this many optimizer steps (overrides epochs)")
    batch_size: int = field(8, "examples (sequences, or pairs) per optimizer step, across all ranks")
    micro_batch_tokens: int = field(4096, "token budget of one packed micro-batch (per rank; both sides of a pair)")

    def validate(self):
        check_max_steps(self.max_steps)
        if self.batch_size < 1 or self.micro_batch_tokens < 1:
            raise ValueError("train.batch_size and train.micro_batch_tokens must be >= 1")

    def steps(self, n_examples: int) -> tuple[int, int]:
        """(optimizer steps per epoch, total optimizer steps) over `n_examples`."""
        per_epoch = math.ceil(n_examples / self.batch_size)
        return per_epoch, self.max_steps or per_epoch * self.epochs


@dataclasses.dataclass
class PairStepsConfig(StepsConfig):
    """`train` keys of the stages that learn from preference pairs (DPO, reward models)."""

    eval_every_steps: int = field(0, "evaluate on the held-out pairs every N steps (0: only at the end)")
    eval_at_start: bool = field(False, "also evaluate before the first step")


@dataclasses.dataclass
class CheckpointConfig:
    every_steps: int = field(0, "save a resumable checkpoint every N optimizer steps (0 = only at the end)")
    keep_last: int = field(2, "how many step checkpoints to keep")


@dataclasses.dataclass
class RunConfig:
    output_dir: str = field("runs/sft", "run directory: config, metrics, checkpoints, final model")
    resume: bool = field(False, "continue from the latest checkpoint in output_dir")
    seed: int = field(42, "seed for data order and initialisation")
    device: str = field("auto", "auto, cpu, cuda")
    tensorboard: bool = field(False, "also write TensorBoard event files (the same as report_to: [tensorboard])")
    report_to: list[str] = field([], "experiment trackers: any of tensorboard, wandb, mlflow, trackio "
                                     "(pip install -e .[trackers])")
    run_name: str | None = field(None, "tracker run name (default: the run directory's name)")
    run_group: str | None = field(None, "tracker group tying runs together (the pipeline sets its own name)")
    progress: bool = field(True, "show a progress bar")

    def validate(self):
        if self.report_to:
            from posttrain.tracking import check_report_to

            check_report_to(self.report_to)


def check_max_steps(max_steps: int | None) -> None:
    # 0 used to fall through `max_steps or ...` and silently mean "no limit".
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"train.max_steps must be >= 1, or null to run the configured epochs; got {max_steps}")


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[choice]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_run_dir(run: RunConfig, info: DistInfo) -> Path:
    """Refuse to overwrite a finished or existing run unless resuming; writes nothing."""
    out = Path(run.output_dir)
    if info.is_main and out.exists() and any(out.iterdir()) and not run.resume:
        if (out / "checkpoints").exists() or (out / "final").exists():
            raise ValueError(f"{out} already holds a run; pass run.resume=true to continue it "
                             f"or choose another run.output_dir")
    return out


def save_resolved_config(cfg, run: RunConfig, info: DistInfo, stage: str) -> None:
    """Create the run directory and save + print the resolved config (rank 0)."""
    out = Path(run.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        text = dump_config(cfg, out / "config.yaml")
        print0(f"[posttrain {stage}] resolved config (saved to {out / 'config.yaml'}):\n{text}", info=info)


def prepare_run_dir(cfg, run: RunConfig, info: DistInfo, stage: str) -> Path:
    """`check_run_dir`, then `save_resolved_config`."""
    out = check_run_dir(run, info)
    save_resolved_config(cfg, run, info, stage)
    return out


def config_text(cfg) -> str:
    import yaml

    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def write_summary(run_dir: Path, summary: dict) -> None:
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2))


class Timer:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def load_for_training(mcfg: ModelConfig, info: DistInfo, dtype: torch.dtype, init_from: str | None = None,
                      reference: bool = False):
    """Load the policy model for training: dtype, attention, checkpointing, device.

    With `model.lora.enabled` (and not `reference`, a frozen model loaded for scoring) the model is
    the base `model.name_or_path` wrapped in trainable adapters; `init_from` is then a checkpoint's
    adapter directory, re-attached to the base for an exact resume."""
    from posttrain.models import load_model

    from posttrain.train.lora import apply_lora, quantization_config, resume_lora
    from posttrain.train.varlen_attn import hf_attn_implementation, install

    impl = mcfg.attn_implementation
    lora = mcfg.lora.enabled and not reference
    quant = quantization_config(mcfg.lora, info.device, dtype) if lora else None
    path = mcfg.name_or_path if lora else (init_from or mcfg.name_or_path)
    model = install(load_model(path, dtype=dtype, attn_implementation=hf_attn_implementation(impl),
                               quantization_config=quant, device=info.device if quant else None), impl)
    if mcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if lora:
        model = resume_lora(model, init_from) if init_from else apply_lora(model, mcfg.lora, "causal",
                                                                           mcfg.gradient_checkpointing)
    return model if quant else model.to(info.device)
