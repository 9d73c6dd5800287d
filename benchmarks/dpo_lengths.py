"""Average greedy response length of several models on the same prompts (the length-bias check:
summed-log-prob DPO tends to lengthen responses, length-normalised dpo_norm much less).

    python benchmarks/dpo_lengths.py --models base=smollm2-135m dpo=runs/pref-evidence/dpo/final \
        dpo_norm=runs/pref-evidence/dpo_norm/final --skip 560 --prompts 32 --max-new-tokens 128 \
        --out runs/pref-evidence/lengths.json

(the command behind docs/RESULTS_PREFERENCE.md; --data defaults to the hh-rlhf helpful-base file)

Prompts: the first `--prompts` single-turn prompts after the first `--skip` valid pairs of the
preference file (pairs a run with data.limit=<skip> never saw), rendered with each model's chat
template. Decoding:
greedy, at most `--max-new-tokens`, through posttrain.generation's engine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_prompts(path: str, skip: int, n: int) -> list[list[dict]]:
    """Single-turn prompts after the first `skip` valid pairs (`skip` counts as `data.limit` does)."""
    from posttrain.data.io import DataError, read_records
    from posttrain.data.preference import to_pair

    out, valid = [], 0
    for _, rec in read_records(path):
        try:
            pair = to_pair(rec)
        except DataError:
            continue
        valid += 1
        if valid > skip and len(pair.prompt) == 1:
            out.append(pair.prompt)
        if len(out) == n:
            break
    return out


def measure(name: str, path: str, prompts: list[list[dict]], max_new: int) -> dict:
    import torch

    from posttrain.models import load_model, load_tokenizer
    from posttrain.generation.engine import Engine
    from posttrain.generation.sampling import SamplingParams

    tok = load_tokenizer(path)
    model = load_model(path, dtype=torch.float32).eval()
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    t0 = time.perf_counter()
    outs = Engine(model, tok).generate(texts, SamplingParams(max_new_tokens=max_new, temperature=0.0, logprobs=False))
    lengths = [len(o.token_ids) for o in outs]
    return {"model": name, "path": path, "mean_tokens": statistics.mean(lengths),
            "median_tokens": statistics.median(lengths),
            "hit_max": sum(o.finish_reason == "length" for o in outs) / len(outs),
            "mean_chars": statistics.mean(len(o.text) for o in outs), "seconds": time.perf_counter() - t0,
            "samples": [{"prompt": p[-1]["content"], "response": o.text} for p, o in zip(prompts, outs)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="name=path (HF directory or embedded name)")
    p.add_argument("--data", default=str(REPO.parent / "shared/data/preference/hh_rlhf_helpful_base_test.jsonl"))
    p.add_argument("--skip", type=int, default=560, help="skip the first N valid pairs (a run's data.limit)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--out", default=None, help="write results and every response as JSON here")
    args = p.parse_args()

    prompts = load_prompts(args.data, args.skip, args.prompts)
    results = []
    for spec in args.models:
        name, _, path = spec.partition("=")
        results.append(measure(name, path, prompts, args.max_new_tokens))
        r = results[-1]
        print(f"[lengths] {name}: mean {r['mean_tokens']:.1f} tokens ({r['seconds']:.0f} s)", flush=True)
    print(f"\n{len(prompts)} prompts, greedy, max {args.max_new_tokens} new tokens\n")
    print("| model | mean tokens | median tokens | hit max | mean chars |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['mean_tokens']:.1f} | {r['median_tokens']:.1f} | {r['hit_max']:.2f} | "
              f"{r['mean_chars']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
