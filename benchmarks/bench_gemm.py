"""What the engine's oneDNN-packed weights buy on this CPU, side by side in one process.

    python benchmarks/bench_gemm.py                  # 2 threads, rows 8,32,64, decode step at batch 32
    python benchmarks/bench_gemm.py --rows 32 --skip-decode

1. Per matrix (cache-hot, random fp32 weights of SmolLM2-135M's shapes): `F.linear` (MKL) against
   oneDNN on a weight reordered once, and the sum over one decode step's 30 layers + LM head (the
   LM head for MKL is the engine's chunked form, whichever is faster).
2. The engine's decode step (FastLlama, the embedded model, 64-token prompts) with packed and
   live weights, alternated over rounds so that machine noise hits both.
3. `--profile`: where the packed decode step's time goes, by operator (torch.profiler, 10 steps).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posttrain.generation.fast_llama import FastLlama, linear, pack_weight  # noqa: E402

# (out, in, how many per decode step) for SmolLM2-135M: q/o, k/v, gate/up, down, LM head
SHAPES = [(576, 576, 60), (192, 576, 60), (1536, 576, 60), (576, 1536, 30), (49152, 576, 1)]


def timed(fn, n: int) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def per_matrix(rows: int, n: int) -> None:
    total_mkl = total_dnnl = 0.0
    for o, i, per_step in SHAPES:
        w, x = torch.randn(o, i), torch.randn(rows, i)
        wp = pack_weight(w, rows)
        mkl = timed(lambda: F.linear(x, w), n)
        if o > 4096:  # the engine's unpacked LM head goes in 1024-row slices
            def chunked():
                out = x.new_empty(rows, o)
                for s in range(0, o, 1024):
                    out[:, s:s + 1024] = F.linear(x, w[s:s + 1024])
            mkl = min(mkl, timed(chunked, n))
        dnnl = timed(lambda: linear(x, wp), n)
        total_mkl += mkl * per_step
        total_dnnl += dnnl * per_step
        print(f"rows {rows:3d}  {o:5d} x {i:4d}: MKL {mkl * 1e3:7.2f} ms  oneDNN packed {dnnl * 1e3:7.2f} ms  "
              f"{mkl / dnnl:.2f}x", flush=True)
    print(f"rows {rows:3d}  one decode step's matrices: MKL {total_mkl * 1e3:.1f} ms, oneDNN packed "
          f"{total_dnnl * 1e3:.1f} ms, {total_mkl / total_dnnl:.2f}x\n", flush=True)


def decode_step(model_name: str, batch: int, prompt_len: int, rounds: int, steps: int,
                profile: bool = False) -> None:
    from posttrain.models import load_model

    model = load_model(model_name).eval()
    engines = {"live": FastLlama(model, packed_gemm=False), "packed": FastLlama(model, packed_gemm=True)}
    prompts = [[1] + list(range(100, 100 + prompt_len - 1)) for _ in range(batch)]
    tok = torch.full((batch,), 300)
    times = {k: [] for k in engines}
    for _ in range(rounds):
        for name, fast in engines.items():
            fast.allocate(batch, prompt_len + steps + 8)
            fast.prefill(prompts, list(range(batch)), list(range(batch)))
            times[name].append(timed(lambda: fast.decode(tok, batch), steps))
    for name, ts in times.items():
        print(f"decode step, batch {batch}, {name:6s} weights: " + " ".join(f"{t * 1e3:.0f}" for t in ts)
              + f" ms (median {sorted(ts)[len(ts) // 2] * 1e3:.0f})")
    t0 = time.perf_counter()
    engines["packed"].refresh_weights(force=True)
    print(f"repacking every weight: {time.perf_counter() - t0:.2f} s")
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        fast = engines["packed"]
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                fast.decode(tok, batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="8,32,64")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="then profile 10 packed decode steps by operator")
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        for r in [int(x) for x in args.rows.split(",")]:
            per_matrix(r, args.iters)
    if not args.skip_decode:
        decode_step(args.model, args.batch, 64, args.rounds, 8, args.profile)


if __name__ == "__main__":
    main()
