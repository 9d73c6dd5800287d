"""Generate the IFEval response fixture used by tests/test_tasks_ifeval.py (run once).

Greedy responses of the embedded SmolLM2-135M-Instruct to all 541 IFEval prompts, written to
tests/fixtures/ifeval/smollm2_responses.jsonl as {"key", "response"} lines. The agreement test
scores them with our checkers and with lm-eval's reference implementation.

    python scripts/make_ifeval_fixture.py            # seconds on a GPU, an hour+ on 2 busy CPU cores
    python scripts/make_ifeval_fixture.py --limit 8 --out /tmp/x.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from posttrain.data.io import write_jsonl_atomic
from posttrain.models import load_model, load_tokenizer
from posttrain.evaluation.tasks import get_task, render_prompt

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ifeval" / "smollm2_responses.jsonl"


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(
        **batch,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = out[:, batch["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", default=None, help="IFEval input_data.jsonl (default: shared data)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--force", action="store_true", help="overwrite an existing fixture")
    args = parser.parse_args()
    if args.out.exists() and not args.force:
        raise SystemExit(f"{args.out} exists; pass --force to regenerate it")

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    tokenizer.padding_side = "left"
    model = load_model(args.model, dtype=torch.float32, device=args.device).eval()
    samples = get_task("ifeval").load(args.data, limit=args.limit)
    prompts = [render_prompt(tokenizer, s) for s in samples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths per batch
    responses: dict[int, str] = {}
    start = time.time()
    for b in range(0, len(order), args.batch_size):
        idx = order[b : b + args.batch_size]
        for i, text in zip(idx, generate(model, tokenizer, [prompts[i] for i in idx], args.max_new_tokens)):
            responses[i] = text
        print(f"{len(responses)}/{len(order)} in {time.time() - start:.0f}s", flush=True)
    rows = [{"key": samples[i].meta["key"], "response": responses[i]} for i in range(len(samples))]
    n = write_jsonl_atomic(args.out, rows)
    print(f"wrote {n} responses to {args.out}")


if __name__ == "__main__":
    main()
