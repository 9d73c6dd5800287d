"""What bench_sft.py and bench_dpo.py share for their LoRA rows (`--modes full,lora`).

posttrain gets `model.lora.*` overrides; TRL gets `peft_config=` the very `peft.LoraConfig`
posttrain builds from the same section (`posttrain.train.lora.peft_config`), so both wrap the same
modules the same way. Both seed torch right before the adapters are created, so they start from the
same A matrices (B is zero) and the per-step losses stay comparable.
"""

from __future__ import annotations

import resource

MODES = ("full", "lora")


def add_lora_args(p) -> None:
    p.add_argument("--lora-lr", type=float, default=2e-4, help="LoRA lr (--lr is full fine-tuning's)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)


def parse_modes(text: str) -> list[str]:
    modes = [m for m in text.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"modes: choose from {','.join(MODES)}, got {text!r}")
    return modes


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def lr_for(args) -> float:
    return args.lora_lr if args.mode == "lora" else args.lr


def lora_config(args):
    from posttrain.train.lora import LoraConfig

    return LoraConfig(enabled=True, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                      target_modules=["all-linear"])


def seeded(fn, seed: int):
    """`fn` with torch seeded first: both trainers create their adapters from the same RNG state."""
    import torch

    def wrapper(*a, **kw):
        torch.manual_seed(seed)
        return fn(*a, **kw)
    return wrapper


def trainable_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def posttrain_side(args) -> tuple[list[str], dict]:
    """The `model.lora.*` overrides for this run, and a dict that will hold `peak_rss_train_mb`.

    TRL saves nothing (save_strategy="no"); posttrain always writes its final model, and a LoRA
    save also merges the adapters into a full copy of the weights. So the peak RSS is read just
    before that save as well as for the whole process.
    """
    from posttrain.train import checkpoint as ckpt, lora

    seen: dict = {}
    original_save = ckpt.save_hf

    def save_hf(*a, **kw):
        seen.setdefault("peak_rss_train_mb", peak_rss_mb())
        return original_save(*a, **kw)

    ckpt.save_hf = save_hf
    if args.mode != "lora":
        return [], seen
    lora.apply_lora = seeded(lora.apply_lora, args.seed)  # the recipes import it per call
    c = lora_config(args)
    return ["model.lora.enabled=true", f"model.lora.r={c.r}", f"model.lora.alpha={c.alpha}",
            f"model.lora.dropout={c.dropout}", "model.lora.target_modules=[all-linear]"], seen


def trl_side(args, trainer_module) -> dict:
    """`peft_config=` for TRL's trainer (empty for full fine-tuning), its adapter creation seeded."""
    if args.mode != "lora":
        return {}
    from posttrain.train.lora import peft_config

    trainer_module.get_peft_model = seeded(trainer_module.get_peft_model, args.seed)
    return {"peft_config": peft_config(lora_config(args), "causal")}
