"""Shared prefixes: GSM8K's 8-shot prompts with the exemplars run once vs per prompt.

    python benchmarks/bench_prefix.py --prompts 8 --repeats 2          # prefill only
    python benchmarks/bench_prefix.py --prompts 16 --decode 128        # + whole generate() calls

--decode N also times `Engine.generate` on the same prompts (greedy, N new tokens, GSM8K's stop
strings) with cascade attention on (the exemplars' KV held once, read once per decode step) and
off (each row holds and reads its own copy), and checks that both give the same tokens.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--decode", type=int, default=0, help="also time generate() with N new tokens")
    args = ap.parse_args()
    from posttrain.models import load_model, load_tokenizer
    from posttrain.generation.fast_llama import FastLlama
    from posttrain.evaluation.tasks import get_task, render_prompt

    model, tok = load_model("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    samples = get_task("gsm8k").load(limit=args.prompts)
    prompts = [tok(render_prompt(tok, s), add_special_tokens=False)["input_ids"] for s in samples]
    fast = FastLlama(model)
    fast.allocate(len(prompts), max(map(len, prompts)) + 8)
    slots = list(range(len(prompts)))
    out = {}
    for label, minimum in (("per prompt", 0), ("shared prefix", 32)):
        fast.min_shared_prefix = minimum
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            logits = fast.prefill(prompts, slots, slots)
            best = min(best, time.perf_counter() - t)
        out[label] = (best, logits)
    shared = min(len(p) for p in prompts)
    from posttrain.generation.fast_llama import shared_prefix_len
    print(f"{len(prompts)} GSM8K 8-shot prompts, {sum(map(len, prompts))} tokens, shared prefix "
          f"{shared_prefix_len(prompts)} tokens (shortest prompt {shared})")
    for label, (sec, _) in out.items():
        print(f"{label:14s} {sec:6.2f} s  {sum(map(len, prompts)) / sec:7.0f} prompt tok/s")
    a, b = out["per prompt"], out["shared prefix"]
    print(f"speed-up {a[0] / b[0]:.1f}x; max |logit diff| {float((a[1] - b[1]).abs().max()):.2e}; "
          f"same argmax {bool((a[1].argmax(-1) == b[1].argmax(-1)).all())}; threads {torch.get_num_threads()}")


    if args.decode:
        bench_decode(model, tok, samples, prompts, args.decode)


def bench_decode(model, tok, samples, prompts, new_tokens: int) -> None:
    from posttrain.generation import Engine, SamplingParams
    from posttrain.evaluation.tasks import get_task

    stop = tuple(get_task("gsm8k").generation.stop)
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, stop=stop)
    res = {}
    for cascade in (True, False):
        engine = Engine(model, tok, max_batch_size=len(prompts), cascade=cascade)
        t = time.perf_counter()
        outs = engine.generate(prompts, params)
        sec = time.perf_counter() - t
        res[cascade] = (sec, outs, engine.stats.generated_tokens)
        print(f"generate, cascade={str(cascade):5s} {sec:7.1f} s  {engine.stats.generated_tokens / sec:6.1f} "
              f"generated tok/s  ({engine.stats.generated_tokens} tokens, {engine.stats.decode_steps} decode steps)")
    same = sum(a.token_ids == b.token_ids for a, b in zip(res[True][1], res[False][1]))
    print(f"cascade speed-up {res[False][0] / res[True][0]:.2f}x; same tokens {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
