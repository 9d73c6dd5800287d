"""The prepared GPU check of the vLLM backend (docs/VLLM.md): posttrain's engine and vLLM side by side.

Needs torch, transformers and vLLM (`pip install -e .[vllm]`), nothing else: it builds a
random-init Llama with Llama-3.2-1B's shape (16 layers, hidden 2048, 32 heads, 8 KV heads, MLP
8192, tied embeddings) and SmolLM2's 49,152-token vocabulary, in bf16, and feeds token-id prompts,
so no tokenizer file, download or embedded model is needed.

    python scripts/gpu_vllm_check.py                           # one GPU: 64 x 256, a few minutes
    python scripts/gpu_vllm_check.py --tp 2                    # vLLM tensor parallelism over 2 GPUs
    python scripts/gpu_vllm_check.py --skip-vllm               # the native half only
    python scripts/gpu_vllm_check.py --device cpu --dtype float32 --layers 2 --hidden 128 --heads 2 \\
        --kv-heads 1 --intermediate 256 --batch 2 --new-tokens 4 --enforce-eager   # smoke test

Checks, each printed as one line, then one table of tokens/s:
  logprobs   vLLM's per-token log-probs (greedy and T=1) against a float32 forward of the same
             tokens, next to the native engine's own error against it;
  greedy     rows whose greedy tokens equal the native engine's (bf16: near-ties may flip, so the
             first diverging position is reported, and the check asks for most rows, not all);
  weights    update_weights with perturbed weights: vLLM's greedy output then equals the native
             engine's on the perturbed model, and differs from before;
  tok/s      fixed length (ignore_eos) greedy, and T=1 sampling, both engines, same prompts.
Exits 1 on a failed check, 2 when vLLM is not installed (the native numbers still print).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--min-prompt", type=int, default=16)
    ap.add_argument("--max-prompt", type=int, default=64)
    ap.add_argument("--tp", type=int, default=1, help="vLLM tensor_parallel_size")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.4)
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile / CUDA graphs")
    ap.add_argument("--skip-native", action="store_true")
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--min-greedy-agreement", type=float, default=0.5, help="fraction of rows (bf16 near-ties)")
    args = ap.parse_args(argv)
    if args.hidden % args.heads or args.heads % args.kv_heads:
        ap.error("--hidden must be a multiple of --heads, and --heads of --kv-heads")
    return args


VOCAB = 49152


def build_model(args, seed: int = 0, scale: float = 1.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, tie_word_embeddings=True, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      initializer_range=0.05)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if scale != 1.0:
        with torch.no_grad():
            for w in model.parameters():
                w.mul_(scale)
    return model.to(dtype=getattr(torch, args.dtype), device=args.device).eval()


def make_prompts(args) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(args.min_prompt, args.max_prompt + 1, (args.batch,), generator=g)
    return [torch.randint(3, VOCAB, (int(n),), generator=g).tolist() for n in lens]


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def fp32_logprobs(f32, outs, temperature: float = 1.0) -> list[torch.Tensor]:
    """Each completion's tokens scored by the float32 copy of the model (teacher forcing)."""
    from posttrain.losses.logprobs import token_logprobs

    ref = []
    with torch.no_grad():
        for o in outs:
            seq = torch.tensor([o.prompt_token_ids + o.token_ids], device=f32.device)
            labels = seq.clone()
            labels[:, : len(o.prompt_token_ids)] = -100
            lp = token_logprobs(f32(seq).logits, labels, shift=True, temperature=temperature)
            ref.append(lp[0, len(o.prompt_token_ids) - 1:].cpu())
    return ref


def logprob_error(outs, ref) -> tuple[float, float]:
    diffs = torch.cat([(torch.tensor(o.logprobs) - r).abs() for o, r in zip(outs, ref)])
    return diffs.max().item(), diffs.mean().item()


def first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def timed(engine, prompts, params, device) -> tuple[float, float]:
    engine.generate(prompts[:2], dataclasses.replace(params, max_new_tokens=4))  # warm-up
    sync(device)
    t = time.perf_counter()
    outs = engine.generate(prompts, params)
    sync(device)
    dt = time.perf_counter() - t
    return sum(len(o.token_ids) for o in outs) / dt, dt


def main(argv=None) -> int:
    args = parse_args(argv)
    from posttrain.generation import Engine, SamplingParams

    failed, table = [], []
    prompts = make_prompts(args)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens, ignore_eos=True)
    sampled = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, ignore_eos=True, seed=0)
    model = build_model(args)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, {args.dtype}, "
          f"{args.device}; {len(prompts)} prompts x {args.new_tokens} new tokens", flush=True)
    native = None if args.skip_native else Engine(model, None, max_batch_size=args.batch)
    native_greedy = None
    if native is not None:
        for label, params in (("greedy", greedy), ("T=1", sampled)):
            tok_s, dt = timed(native, prompts, params, args.device)
            table.append(("native", label, tok_s, dt))
        native_greedy = native.generate(prompts, greedy)
    vllm_missing = False
    if not args.skip_vllm:
        try:
            from posttrain.generation.vllm_engine import VLLMEngine

            t = time.perf_counter()
            engine = VLLMEngine(model, None, tensor_parallel_size=args.tp, max_batch_size=args.batch,
                                gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
                                max_model_len=args.max_prompt + args.new_tokens + 8)
            print(f"vLLM engine ready in {time.perf_counter() - t:.0f} s", flush=True)
        except ValueError as e:  # ConfigError: vLLM is not installed
            print(f"vLLM: {e}", flush=True)
            vllm_missing = True
        else:
            failed += check_vllm(args, model, engine, native, native_greedy, prompts, greedy, sampled, table)
    print("\n| engine | decoding | tok/s | seconds |\n|---|---|---|---|")
    for name, label, tok_s, dt in table:
        print(f"| {name} | {label} | {tok_s:,.0f} | {dt:.2f} |")
    if failed:
        print("FAILED: " + "; ".join(failed))
        return 1
    return 2 if vllm_missing else 0


def check_vllm(args, model, engine, native, native_greedy, prompts, greedy, sampled, table) -> list[str]:
    from posttrain.generation import Engine

    failed = []
    f32 = copy.deepcopy(model).float()
    outs = engine.generate(prompts, greedy)
    for label, params in (("greedy", greedy), ("T=1", sampled)):
        got = outs if params is greedy else engine.generate(prompts, params)
        err_max, err_mean = logprob_error(got, fp32_logprobs(f32, got))
        line = f"logprobs {label}: vLLM vs float32 forward max {err_max:.4f}, mean {err_mean:.5f}"
        if native is not None:
            mine = native_greedy if params is greedy else native.generate(prompts, params)
            n_max, n_mean = logprob_error(mine, fp32_logprobs(f32, mine))
            line += f" (native engine: max {n_max:.4f}, mean {n_mean:.5f})"
        print(line, flush=True)
        if err_mean > (0.05 if args.dtype != "float32" else 1e-3):
            failed.append(f"vLLM {label} log-probs off by {err_mean:.4f} on average")
    if native_greedy is not None:
        same = sum(a.token_ids == b.token_ids for a, b in zip(outs, native_greedy))
        div = sorted(first_divergence(a.token_ids, b.token_ids) for a, b in zip(outs, native_greedy))
        print(f"greedy: {same}/{len(outs)} rows equal the native engine's; median first divergence at token "
              f"{div[len(div) // 2]} of {args.new_tokens}", flush=True)
        if same < args.min_greedy_agreement * len(outs):
            failed.append(f"greedy agreement {same}/{len(outs)}")
    del f32
    perturbed = build_model(args, seed=1, scale=2.0)
    engine.update_weights(perturbed.state_dict())
    after = engine.generate(prompts, greedy)
    changed = sum(a.token_ids != b.token_ids for a, b in zip(after, outs))
    line = f"weights: update_weights changed {changed}/{len(outs)} greedy rows"
    if native is not None:
        ref_after = Engine(perturbed, None, max_batch_size=args.batch).generate(prompts, greedy)
        agree = sum(a.token_ids == b.token_ids for a, b in zip(after, ref_after))
        line += f"; {agree}/{len(outs)} equal the native engine on the perturbed model"
        if agree < args.min_greedy_agreement * len(outs):
            failed.append(f"after update_weights only {agree}/{len(outs)} rows agree")
    print(line, flush=True)
    if changed == 0:
        failed.append("update_weights changed nothing")
    engine.update_weights(model.state_dict())
    for label, params in (("greedy", greedy), ("T=1", sampled)):
        tok_s, dt = timed(engine, prompts, params, args.device)
        table.append((f"vLLM (tp={args.tp})", label, tok_s, dt))
    engine.close()
    return failed


if __name__ == "__main__":
    sys.exit(main())
