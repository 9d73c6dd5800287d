"""`posttrain merge ADAPTER_DIR OUT_DIR`: a LoRA adapter directory folded into its base model and
written as a plain Hugging Face directory (`from_pretrained` loads it without peft), tokenizer
included. Causal LMs and reward models (a sequence-classification adapter) both work; the base
is the adapter's `base_model_name_or_path`, or `base=` to point elsewhere (a moved checkpoint)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from posttrain.config import describe, field, load_config, parse_argv
from posttrain.models import adapter_base, is_adapter_dir, load_tokenizer, parse_dtype, resolve_model_path


@dataclasses.dataclass
class MergeConfig:
    adapter: str = field("", "PEFT adapter directory (a LoRA stage's final_adapter, or a checkpoint)")
    output_dir: str = field("", "where the merged HF directory is written")
    base: str | None = field(None, "base model (default: the adapter's base_model_name_or_path)")
    dtype: str = field("float32", "dtype of the merged weights: float32, bfloat16, float16")


def merge(cfg: MergeConfig) -> Path:
    from peft import PeftModel

    from posttrain.train.checkpoint import save_hf

    if not is_adapter_dir(cfg.adapter):
        raise ValueError(f"{cfg.adapter}: not a PEFT adapter directory (no adapter_config.json, or it also holds "
                         f"a full model's config.json)")
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose another OUT_DIR")
    base = cfg.base or adapter_base(cfg.adapter)
    dtype = parse_dtype(cfg.dtype)
    task = json.loads((Path(cfg.adapter) / "adapter_config.json").read_text()).get("task_type")
    tokenizer = load_tokenizer(cfg.adapter if (Path(cfg.adapter) / "tokenizer_config.json").is_file() else base)
    if task == "SEQ_CLS":
        from posttrain.reward_model import load_reward_model

        model = load_reward_model(base, tokenizer, dtype)
    else:
        from posttrain.models import load_model

        model = load_model(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, cfg.adapter).merge_and_unload()
    save_hf(merged, tokenizer, out)
    print(f"[merge] {cfg.adapter} + {resolve_model_path(base)} -> {out}")
    return out


CLI_STAGES = ("merge",)
USAGE = "usage: posttrain merge ADAPTER_DIR OUT_DIR [base=...] [dtype=...]"


def cli(argv: list[str], stage: str = "merge") -> int:
    positional = [a for a in argv if "=" not in a and not a.startswith("--")]
    rest = [a for a in argv if a not in positional]
    _, overrides, want_help = parse_argv(rest, MergeConfig)
    if want_help:
        print(USAGE + "\n\n" + "\n".join(describe(MergeConfig)))
        return 0
    cfg = load_config(MergeConfig, None, overrides)
    if len(positional) > 2:
        raise ValueError(f"{USAGE} (got {len(positional)} positional arguments)")
    cfg.adapter, cfg.output_dir = (positional + [cfg.adapter, cfg.output_dir][len(positional):])[:2]
    if not cfg.adapter or not cfg.output_dir:
        raise ValueError(USAGE)
    merge(cfg)
    return 0
