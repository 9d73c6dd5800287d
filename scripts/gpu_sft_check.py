"""SFT training throughput and MFU on one GPU: a 1.2B Llama-shaped random-init model, 4 x 4096
tokens per step in bf16, through posttrain's own training path (padding-free packing,
per-document fused attention, chunked log-prob loss, fused AdamW).

MFU uses the PaLM accounting (6 N + 12 L d T FLOPs per token, N = non-embedding parameters plus
the LM head) against the card's dense bf16 peak (989 TFLOP/s for H100/H200 SXM).

    python scripts/gpu_sft_check.py                       # on a GPU
    python scripts/gpu_sft_check.py --device cpu --tiny   # smoke test of the same code path
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def build(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.train.varlen_attn import install

    if args.tiny:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
    else:  # Llama-3.2-1B shape (1.24B parameters)
        cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                          rope_theta=500000.0, tie_word_embeddings=True)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16 if args.device == "cuda" else torch.float32)
    install(model, args.attn)
    model.config.use_cache = False
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, cfg


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--seqs", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--attn", default="varlen", choices=["varlen", "varlen_flash"],
                   help="per-document SDPA, or torch's varlen flash kernel (one launch per layer)")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    args = p.parse_args()

    from posttrain.data.packing import pack, packed_forward
    from posttrain.losses.sft import token_nll_sum

    model, cfg = build(args)
    if args.compile:
        for layer in model.model.layers:
            layer.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=args.device == "cuda")
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, cfg.vocab_size, (args.seq_len,), generator=g).tolist() for _ in range(args.seqs)]
    batch = pack([(d, d) for d in docs]).to(args.device)
    tokens = args.seqs * args.seq_len
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.model.embed_tokens.weight.numel()
    n_flop_params = n_params - n_embed + (n_embed if cfg.tie_word_embeddings else 0)  # LM head matmul counts
    flops_per_token = 6 * n_flop_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq_len
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    times = []
    for step in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        loss = token_nll_sum(packed_forward(model, batch).logits, batch.targets) / tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    dt = sum(times) / len(times)
    tps = tokens / dt
    res = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
           "params_b": n_params / 1e9, "tokens_per_step": tokens, "step_s": dt, "tokens_per_s": tps,
           "tflops": flops_per_token * tps / 1e12, "mfu": flops_per_token * tps / 1e12 / args.peak_tflops,
           "compile": args.compile, "attn": args.attn, "grad_ckpt": args.grad_ckpt, "loss": loss.item(),
           "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if args.device == "cuda" else None}
    print("SFT_CHECK " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
