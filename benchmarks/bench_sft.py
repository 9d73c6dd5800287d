"""SFT throughput and memory: posttrain vs TRL's SFTTrainer, side by side in one invocation.

Both trainers get the embedded model, the same single-exchange chat examples (first user turn +
first assistant turn of the shared Tülu-format SFT sample), the same max length, the same
effective batch (sequences per optimizer step), learning rate, schedule and number of optimizer
steps, loss only on the assistant completion, mean reduction. Each runs in its own subprocess so
its peak RSS is its own. Tokens/s counts real (non-padding) tokens through forward+backward.

    python benchmarks/bench_sft.py                 # both, defaults below
    python benchmarks/bench_sft.py --steps 3 --max-length 256   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sft" / "open_instruct_sft_sample.jsonl"


def make_data(path: Path, n: int, max_chars: int) -> None:
    rows = []
    for line in DATA.read_text().splitlines():
        msgs = json.loads(line)["messages"]
        user = next(m for m in msgs if m["role"] == "user")
        asst = next(m for m in msgs if m["role"] == "assistant")
        rows.append({"prompt": [{"role": "user", "content": user["content"][:max_chars]}],
                     "completion": [{"role": "assistant", "content": asst["content"][:max_chars]}]})
        if len(rows) == n:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_posttrain(args, data: Path, out: Path) -> dict:
    from posttrain.config import load_config
    from posttrain.recipes import sft
    from posttrain.train.metrics import read_metrics

    cfg = load_config(sft.SFTConfig, None, [
        "model.name_or_path=smollm2-135m", f"data.paths=[{data}]", "data.format=prompt_completion",
        f"data.max_length={args.max_length}", "data.too_long=truncate", f"train.batch_size={args.batch}",
        f"train.micro_batch_tokens={args.micro_tokens}", f"train.max_steps={args.steps}",
        "train.loss_reduction=mean", f"optim.lr={args.lr}", "optim.warmup_ratio=0", "optim.schedule=linear",
        "optim.max_grad_norm=1.0", f"run.output_dir={out}", "run.progress=false", f"run.seed={args.seed}"])
    sft.main(cfg)
    rows = read_metrics(out)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
    return {"tokens": sum(r["tokens"] for r in rows), "seconds": seconds, "final_loss": rows[-1]["loss"]}


def run_trl(args, data: Path, out: Path) -> dict:
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from posttrain.models import load_model, load_tokenizer

    model = load_model("smollm2-135m")
    tok = load_tokenizer("smollm2-135m")
    ds = load_dataset("json", data_files=str(data), split="train")
    times, history = {}, []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            times["end"] = time.perf_counter()

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                history.append(dict(logs, step=state.global_step))

    micro = args.trl_micro_batch
    cfg = SFTConfig(output_dir=str(out), max_length=args.max_length, per_device_train_batch_size=micro,
                    gradient_accumulation_steps=args.batch // micro, max_steps=args.steps,
                    learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                    logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                    dataloader_num_workers=0, seed=args.seed, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
    trainer.train()
    tokens = max(r.get("num_tokens", 0) for r in history)
    return {"tokens": int(tokens), "seconds": times["end"] - times["start"], "final_loss": history[-1]["loss"]}


def child(args) -> None:
    out = Path(tempfile.mkdtemp(prefix=f"bench-sft-{args.child}-"))
    fn = run_posttrain if args.child == "posttrain" else run_trl
    res = fn(args, Path(args.data), out)
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=["posttrain", "trl"])
    p.add_argument("--data")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="sequences per optimizer step (both trainers)")
    p.add_argument("--trl-micro-batch", type=int, default=4, help="TRL per-device batch; accumulation fills the rest")
    p.add_argument("--micro-tokens", type=int, default=1024, help="posttrain packed micro-batch token budget")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["posttrain", "trl"])
    args = p.parse_args()
    if args.child:
        return child(args)
    data = Path(tempfile.mkdtemp(prefix="bench-sft-data-")) / "pc.jsonl"
    make_data(data, args.examples, max_chars=4 * args.max_length)
    results = {}
    for name in ([args.only] if args.only else ["posttrain", "trl"]):
        cmd = [sys.executable, __file__, "--child", name, "--data", str(data)] + [
            a for a in sys.argv[1:] if not a.startswith("--only")]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{name} failed")
        results[name] = json.loads(line[-1][7:])
        r = results[name]
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        print(f"{name:10s} tokens={r['tokens']:7d} time={r['seconds']:7.1f}s tok/s={r['tokens_per_s']:8.1f} "
              f"peak_rss={r['peak_rss_gb']:.2f}GB final_loss={r['final_loss']:.4f}", flush=True)
    if len(results) == 2:
        a, b = results["posttrain"], results["trl"]
        print(f"\nposttrain/TRL tokens/s ratio: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x; "
              f"peak RSS ratio: {a['peak_rss_gb'] / b['peak_rss_gb']:.2f}x")
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
