"""Generation throughput, side by side in one invocation: HF `model.generate` vs our engine.

    python benchmarks/bench_generate.py                                  # CPU, fp32, batch 1,8,32 x 128
    python benchmarks/bench_generate.py --batch-sizes 32 --modes fixed
    python benchmarks/bench_generate.py --device cuda --batch-sizes 64 --new-tokens 256

Same chat-templated prompts, greedy decoding, for each batch size:
  fixed: every row generates exactly --new-tokens (HF: min_new_tokens; ours: ignore_eos) -- the
         like-for-like compute comparison.
  eos:   rows stop at EOS (HF pads finished rows until the longest is done; we drop them and,
         with more prompts than rows, refill) -- time to finish the same workload.
tok/s counts generated tokens only (up to and including EOS in `eos` mode). Each (method, batch)
runs in a fresh subprocess after a warm-up, so peak RSS is its own. On CUDA, HF's static cache +
torch.compile path is measured too. `--methods hf,ours,ours-unpacked` adds the engine without its
oneDNN-packed weights (CPU fp32), to see what packing buys.

`--backends native,vllm` measures posttrain's engine against vLLM (`vllm` method: VLLMEngine, same
prompts as token ids, same greedy settings; needs vLLM, see scripts/check_vllm_cpu.sh):
    python benchmarks/bench_generate.py --backends native,vllm --batch-sizes 32 --new-tokens 256 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

QUESTIONS = [
    "What is 17 times 23?", "Name the capital of France.", "Write a haiku about autumn leaves.",
    "Explain in detail how a refrigerator works.", "Give me three tips for learning a new language.",
    "What is the boiling point of water in Fahrenheit?", "Describe the plot of Romeo and Juliet.",
    "Translate 'good morning' into Spanish.", "Write a short story about a robot who learns to paint.",
    "List the planets of the solar system in order.", "Why is the sky blue? Explain step by step.",
    "What is photosynthesis?", "Suggest a name for a pet goldfish.", "How do I make a cup of tea?",
    "Summarise the causes of the First World War.", "What is 2 + 2?", "Write a limerick about a cat.",
    "Compare Python and JavaScript for a beginner.", "What does DNA stand for?",
    "Give a recipe for pancakes.", "Who wrote Pride and Prejudice?", "Explain recursion to a child.",
    "What are the benefits of regular exercise? Answer at length.", "Is a tomato a fruit?",
    "Write an email asking my manager for a day off.", "What is the square root of 144?",
    "Describe a sunset over the ocean.", "How many continents are there? Name them.",
    "Explain the difference between weather and climate.", "What is the largest mammal?",
    "Write a motivational speech for a football team.", "Define the word 'ephemeral'.",
]


def build_prompts(tok, n: int) -> list[str]:
    qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    return [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
            for q in qs]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """This process's CPU time: over a timed run's wall time it shows whether the threads got their
    cores (about --threads) or shared them with something else on the machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _hf_run(model, tok, prompts, new_tokens: int, fixed: bool, device: str, static: bool):
    import torch
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    kw = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    if fixed:
        kw["min_new_tokens"] = new_tokens
    if static:
        kw["cache_implementation"] = "static"
    with torch.inference_mode():
        out = model.generate(**enc, **kw)
    rows = []
    eos = tok.eos_token_id
    for r in out[:, enc.input_ids.shape[1]:].tolist():
        rows.append(r if fixed or eos not in r else r[: r.index(eos) + 1])
    return rows


def child(args) -> None:
    """Runs one (method, batch size) in this process and prints one JSON line per mode."""
    import torch

    from posttrain.models import default_dtype, load_model, load_tokenizer, parse_dtype
    from posttrain.generation import Engine, SamplingParams

    dtype = parse_dtype(args.dtype) if args.dtype else default_dtype(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    prompts = build_prompts(tok, args.batch)
    engine = None
    setup = time.perf_counter()
    if args.method == "vllm":  # loads the weights itself (and compiles, unless --vllm-eager)
        from posttrain.generation.vllm_engine import VLLMEngine

        engine = VLLMEngine(args.model, tok, dtype=dtype, max_batch_size=args.batch, enforce_eager=args.vllm_eager)
    else:
        model = load_model(args.model, dtype=dtype, device=args.device).eval()
    if args.method.startswith("ours"):  # ours-unpacked: MKL on the live weights (no oneDNN copies)
        engine = Engine(model, tok, max_batch_size=args.batch,
                        packed_gemm=False if args.method == "ours-unpacked" else None)

    def run(batch, fixed, n_new):
        if engine is not None:
            params = SamplingParams(temperature=0, max_new_tokens=n_new, ignore_eos=fixed)
            return [o.token_ids for o in engine.generate(batch, params)]
        return _hf_run(model, tok, batch, n_new, fixed, args.device, static=args.method == "hf-static")

    setup = time.perf_counter() - setup
    # warm-up: one-time costs (oneDNN/cuBLAS init, CUDA graphs, torch.compile) stay out of timings
    if args.method == "hf-static":
        run(prompts, True, args.new_tokens)  # compiles for this exact shape
    else:
        run(prompts[: min(2, len(prompts))], True, 4)
        if engine is not None and args.device.startswith("cuda"):
            run(prompts, True, args.new_tokens)  # captures the CUDA graphs for every bucket
    for mode in args.modes.split(","):
        _sync(args.device)
        t, cpu = time.perf_counter(), cpu_seconds()
        rows = run(prompts, mode == "fixed", args.new_tokens)
        _sync(args.device)
        dt = time.perf_counter() - t
        cpu = cpu_seconds() - cpu
        gen = sum(len(r) for r in rows)
        print(json.dumps({"method": args.method, "batch": args.batch, "mode": mode, "seconds": dt,
                          "tokens": gen, "tok_s": gen / dt, "peak_rss_mib": peak_rss_mib(), "eos": tok.eos_token_id, "rows": rows,
                          "setup_s": setup, "cpu_per_s": cpu / dt, "loadavg": os.getloadavg()[0]}),
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--modes", default="fixed,eos")
    ap.add_argument("--methods", default=None, help="default: hf,ours (+ hf-static on CUDA); also ours-unpacked, vllm")
    ap.add_argument("--backends", default=None, help="native,vllm: shorthand for --methods ours,vllm")
    ap.add_argument("--threads", type=int, default=0, help="torch / OpenMP threads of each run (0: torch's default)")
    ap.add_argument("--vllm-eager", action="store_true", help="vLLM without torch.compile (starts faster)")
    ap.add_argument("--json", default=None, help="also write all results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.backends:
        names = {"native": "ours", "vllm": "vllm"}
        args.methods = ",".join(names[b] for b in args.backends.split(","))
    methods = args.methods or ("hf,hf-static,ours" if args.device.startswith("cuda") else "hf,ours")
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    results = []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        for method in methods.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--method", method, "--batch", str(b),
                   "--model", args.model, "--device", args.device, "--new-tokens", str(args.new_tokens),
                   "--modes", args.modes, "--threads", str(args.threads)] \
                + (["--dtype", args.dtype] if args.dtype else []) + (["--vllm-eager"] if args.vllm_eager else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                print(f"{method} batch {b} FAILED:\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            for ln in lines:
                r = json.loads(ln)
                results.append(r)
                print(f"  {method:9s} batch {b:3d} {r['mode']:5s}: {r['tok_s']:8.1f} tok/s  {r['seconds']:7.2f}s  "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB  (load {r['setup_s']:.0f} s; CPU {r['cpu_per_s']:.2f} "
                      f"cores busy, loadavg {r['loadavg']:.1f})", flush=True)
    print_table(results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{k: v for k, v in r.items() if k != "rows"} for r in results], fh, indent=1)


def print_table(results: list[dict]) -> None:
    by = {(r["method"], r["batch"], r["mode"]): r for r in results}
    base = "hf" if any(m == "hf" for m, _, _ in by) else "ours"  # HF, or the native engine when vs vLLM
    print(f"\n| batch | mode | method | tok/s | time s | speed-up vs {base} | peak RSS MiB | same tokens as {base} |")
    print("|---|---|---|---|---|---|---|---|")
    for (method, b, mode), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        hf = by.get((base, b, mode))
        speed = f"{r['tok_s'] / hf['tok_s']:.2f}x" if hf else "-"
        if mode == "eos" and hf:  # same workload, so wall time is the fair ratio
            speed = f"{hf['seconds'] / r['seconds']:.2f}x (time)"
        same = "-"
        if hf and method != base:
            # in fixed mode HF's min_new_tokens masks EOS, so compare up to our first EOS only
            e = r["eos"]
            pairs = [(_before_eos(a, e), h[: len(_before_eos(a, e))]) if mode == "fixed" else (a, h)
                     for a, h in zip(r["rows"], hf["rows"])]
            same = f"{sum(a == h for a, h in pairs)}/{len(pairs)}"
        print(f"| {b} | {mode} | {method} | {r['tok_s']:.1f} | {r['seconds']:.2f} | {speed} | "
              f"{r['peak_rss_mib']:.0f} | {same} |")


def _before_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row


if __name__ == "__main__":
    main()
