"""LoRA and QLoRA on one GPU, through posttrain's training path: a Llama-3.2-1B-shaped random model,
full fine-tuning vs LoRA vs QLoRA (4-bit NF4 base, needs bitsandbytes), tokens/s and peak memory
per mode, and the merged-weights check in bf16 (a plain copy loaded with `merged_state_dict` gives
the adapter model's logits).

    python scripts/gpu_lora_check.py                       # on a GPU (peft installed; bitsandbytes for QLoRA)
    python scripts/gpu_lora_check.py --device cpu --tiny   # smoke test of the same code path

Prints one `LORA_CHECK {json}` line per mode.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from types import SimpleNamespace

import torch


def save_model(args, path: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.tiny:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    else:  # Llama-3.2-1B shape
        cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                          rope_theta=500000.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)


def run_mode(args, path: str, mode: str) -> dict:
    from posttrain.recipes.sft import sft_step
    from posttrain.train.common import ModelConfig, load_for_training
    from posttrain.train.dist import DistInfo
    from posttrain.train.lora import LoraConfig, trainable_summary
    from posttrain.train.loop import Run, build_optimization, clip_and_step
    from posttrain.train.common import OptimConfig

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lora = LoraConfig(enabled=mode != "full", r=16, alpha=32, load_in_4bit=mode == "qlora")
    mcfg = ModelConfig(name_or_path=path, dtype="auto", gradient_checkpointing=True, lora=lora)
    info = DistInfo(device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = load_for_training(mcfg, info, dtype)
    optim = OptimConfig(lr=2e-4 if lora.enabled else 1e-5, schedule="constant", warmup_ratio=0.0)
    optimizer, _ = build_optimization(model, optim, args.steps)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    examples = [SimpleNamespace(input_ids=torch.randint(0, vocab, (args.seq_len,), generator=g).tolist(),
                                labels=torch.randint(0, vocab, (args.seq_len,), generator=g).tolist())
                for _ in range(args.seqs)]
    cfg = SimpleNamespace(train=SimpleNamespace(micro_batch_tokens=args.seq_len, loss_reduction="mean"))
    run = Run("lora-check", info, None, dtype)
    times = []
    model.train()
    for step in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sft_step(model, examples, list(range(args.seqs)), cfg, float(args.seqs), run)
        clip_and_step(model, optimizer, 1.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    out = {"mode": mode, "tokens_per_s": args.seqs * args.seq_len / (sum(steady) / len(steady)),
           **trainable_summary(model)}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if mode == "lora":
        out["merged_max_abs_logit_diff"] = merged_diff(model, device)
    return out


@torch.no_grad()
def merged_diff(model, device) -> float:
    """Randomise the adapters, then compare the adapter model with a plain copy of the merged weights."""
    from transformers import AutoModelForCausalLM

    from posttrain.train.lora import base_model, merged_state_dict

    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.02)
    model.eval()
    plain = AutoModelForCausalLM.from_config(base_model(model).config).to(device=device, dtype=next(model.parameters()).dtype)
    plain.load_state_dict(merged_state_dict(model))
    ids = torch.randint(0, model.config.vocab_size, (1, 256), device=device)
    a = model(input_ids=ids).logits.float()
    b = plain(input_ids=ids).logits.float()
    return float((a - b).abs().max())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--seqs", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--modes", default="full,lora,qlora")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as path:
        save_model(args, path)
        for mode in args.modes.split(","):
            if mode == "qlora":
                import importlib.util

                if args.device != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
                    print("LORA_CHECK " + json.dumps({"mode": mode, "skipped": "needs CUDA and bitsandbytes"}))
                    continue
            print("LORA_CHECK " + json.dumps(run_mode(args, path, mode)), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
