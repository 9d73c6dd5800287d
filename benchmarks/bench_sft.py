"""SFT throughput and memory: posttrain vs TRL's SFTTrainer, full fine-tuning and LoRA, side by side.

Both trainers get the embedded model, the same single-exchange chat examples (first user turn +
first assistant turn of the shared Tülu-format SFT sample), the same max length, the same
effective batch (sequences per optimizer step), learning rate, schedule and number of optimizer
steps, loss only on the assistant completion, mean reduction. Each run is its own subprocess so
its peak RSS is its own. Tokens/s counts real (non-padding) tokens through forward+backward.

Modes (`--modes`, default `full`, which is the recorded full fine-tuning benchmark unchanged):
  full  every weight trained;
  lora  LoRA adapters (peft) on every linear layer except the output head, r/alpha/dropout from
        --lora-r/--lora-alpha/--lora-dropout, lr --lora-lr. posttrain gets `model.lora.*`; TRL gets
        `peft_config=` the very `peft.LoraConfig` posttrain builds from those keys
        (`posttrain.train.lora.peft_config`), so both wrap the same modules the same way. Both
        sides seed torch with --seed right before the adapters are created, so they start from the
        same A matrices (B is zero) and the per-step losses are comparable.
Gradient checkpointing: TRL's default is on, posttrain's off; `--posttrain-gc off,on` and
`--trl-gc on,off` run each trainer both ways (one run per value). posttrain's peak RSS is given
twice: before its final save ("training"; TRL saves nothing, and a LoRA save also builds a merged
copy of the weights) and for the whole process.

    python benchmarks/bench_sft.py                                  # full FT, both trainers
    python benchmarks/bench_sft.py --modes full,lora                # + LoRA, both trainers
    python benchmarks/bench_sft.py --modes full,lora --trl-modes lora   # skip TRL full
    python benchmarks/bench_sft.py --steps 3 --max-length 256      # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peft_side import (MODES, add_lora_args, lr_for, parse_modes, peak_rss_mb, posttrain_side, trainable_params,
                       trl_side)

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


def peak_rss_gb() -> float:
    return peak_rss_mb() / 1024


def run_posttrain(args, data: Path, out: Path) -> dict:
    from posttrain.config import load_config
    from posttrain.recipes import sft
    from posttrain.train.metrics import read_metrics

    overrides, seen = posttrain_side(args)
    cfg = load_config(sft.SFTConfig, None, [
        "model.name_or_path=smollm2-135m", f"data.paths=[{data}]", "data.format=prompt_completion",
        f"data.max_length={args.max_length}", "data.too_long=truncate", f"train.batch_size={args.batch}",
        f"train.micro_batch_tokens={args.micro_tokens}", f"train.max_steps={args.steps}",
        "train.loss_reduction=mean", f"optim.lr={lr_for(args)}", "optim.warmup_ratio=0", "optim.schedule=linear",
        "optim.max_grad_norm=1.0", f"run.output_dir={out}", "run.progress=false", f"run.seed={args.seed}",
        f"model.gradient_checkpointing={args.gc == 'on'}", *overrides])
    sft.main(cfg)
    rows = read_metrics(out)
    summary = json.loads((out / "summary.json").read_text())
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
    return {"tokens": sum(r["tokens"] for r in rows), "seconds": seconds, "final_loss": rows[-1]["loss"],
            "losses": [r["loss"] for r in rows], "trainable_params": summary.get("trainable_params"),
            "gradient_checkpointing": args.gc == "on",
            "peak_rss_train_gb": seen["peak_rss_train_mb"] / 1024 if seen else None}


def run_trl(args, data: Path, out: Path) -> dict:
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer import sft_trainer

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

    extra = trl_side(args, sft_trainer)
    micro = args.trl_micro_batch
    cfg = SFTConfig(output_dir=str(out), max_length=args.max_length, per_device_train_batch_size=micro,
                    gradient_accumulation_steps=args.batch // micro, max_steps=args.steps,
                    learning_rate=lr_for(args), lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                    logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                    dataloader_num_workers=0, seed=args.seed, completion_only_loss=True,
                    gradient_checkpointing=args.gc == "on")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()], **extra)
    trainer.train()
    tokens = max(r.get("num_tokens", 0) for r in history)
    return {"tokens": int(tokens), "seconds": times["end"] - times["start"], "final_loss": history[-1]["loss"],
            "losses": [r["loss"] for r in history], "trainable_params": trainable_params(trainer.model),
            "gradient_checkpointing": bool(cfg.gradient_checkpointing), "peak_rss_train_gb": None}


def child(args) -> None:
    out = Path(tempfile.mkdtemp(prefix=f"bench-sft-{args.child}-{args.mode}-"))
    fn = run_posttrain if args.child == "posttrain" else run_trl
    res = fn(args, Path(args.data), out)
    res["peak_rss_gb"] = peak_rss_gb()
    if res["peak_rss_train_gb"] is None:  # nothing saved: the whole process is the training
        res["peak_rss_train_gb"] = res["peak_rss_gb"]
    print("RESULT " + json.dumps(res), flush=True)


def plan(args) -> list[tuple[str, str, str]]:
    """(trainer, mode, gradient checkpointing) runs in order: for each mode, posttrain then TRL."""
    modes = parse_modes(args.modes)
    trl_modes = parse_modes(args.trl_modes) if args.trl_modes else modes
    runs = []
    for mode in modes:
        if args.only != "trl":
            runs += [("posttrain", mode, gc) for gc in args.posttrain_gc.split(",")]
        if args.only != "posttrain" and mode in trl_modes:
            runs += [("trl", mode, gc) for gc in args.trl_gc.split(",")]
    bad = {gc for *_, gc in runs} - {"on", "off"}
    if bad:
        raise SystemExit(f"--posttrain-gc/--trl-gc: comma lists of on,off, got {sorted(bad)}")
    return runs


PARENT_ONLY = ("--only", "--modes", "--trl-modes", "--posttrain-gc", "--trl-gc", "--out")


def run_child(name: str, mode: str, gc: str, data: Path) -> dict:
    argv, skip = [], False
    for a in sys.argv[1:]:  # drop parent-only flags, both "--x v" and "--x=v"
        if skip:
            skip = False
            continue
        if a in PARENT_ONLY:
            skip = True
            continue
        if a.startswith(tuple(d + "=" for d in PARENT_ONLY)):
            continue
        argv.append(a)
    cmd = [sys.executable, __file__, "--child", name, "--mode", mode, "--gc", gc, "--data", str(data)] + argv
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{name} {mode} gc={gc} failed")
    r = json.loads(line[-1][7:])
    r["tokens_per_s"] = r["tokens"] / r["seconds"]
    return r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=["posttrain", "trl"])
    p.add_argument("--mode", choices=MODES, default="full", help="(child) what this run trains")
    p.add_argument("--data")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="sequences per optimizer step (both trainers)")
    p.add_argument("--trl-micro-batch", type=int, default=4, help="TRL per-device batch; accumulation fills the rest")
    p.add_argument("--micro-tokens", type=int, default=1024, help="posttrain packed micro-batch token budget")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-5, help="full fine-tuning lr")
    add_lora_args(p)
    p.add_argument("--gc", choices=["on", "off"], default="off", help="(child) gradient checkpointing")
    p.add_argument("--posttrain-gc", default="off", help="posttrain runs with gradient checkpointing off/on "
                   "(comma list: one run each; posttrain's default is off)")
    p.add_argument("--trl-gc", default="on", help="the same for TRL (SFTConfig's default is on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="full", help="comma list of full,lora")
    p.add_argument("--trl-modes", default=None, help="modes TRL also runs (default: all of --modes)")
    p.add_argument("--only", choices=["posttrain", "trl"])
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args()
    if args.child:
        return child(args)
    data = Path(tempfile.mkdtemp(prefix="bench-sft-data-")) / "pc.jsonl"
    make_data(data, args.examples, max_chars=4 * args.max_length)
    results: dict[str, dict] = {}
    for name, mode, gc in plan(args):
        r = results[f"{name} {mode} {gc}"] = run_child(name, mode, gc, data)
        print(f"{name:10s} {mode:5s} gc={gc:3s} tokens={r['tokens']:7d} time={r['seconds']:7.1f}s "
              f"tok/s={r['tokens_per_s']:8.1f} peak_rss={r['peak_rss_gb']:.2f}GB final_loss={r['final_loss']:.4f}",
              flush=True)
        if args.out:  # after every run, so an interrupted benchmark keeps its rows
            Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print()
    print(report(results, args))
    print(json.dumps({"args": vars(args), "results": results}))


def report(results: dict[str, dict], args) -> str:
    """Markdown table of every run, then the posttrain/TRL ratios per mode and LoRA vs full."""
    seqs = args.steps * args.batch
    lines = [f"steps={args.steps} batch={args.batch} max_length={args.max_length} examples={args.examples} "
             f"micro_tokens={args.micro_tokens} trl_micro_batch={args.trl_micro_batch} "
             f"lora r={args.lora_r} alpha={args.lora_alpha:g} dropout={args.lora_dropout:g} all-linear",
             "",
             "| trainer | mode | grad ckpt | trainable params | tokens | loop s | tok/s | seq/s "
             "| peak RSS MB (training) | peak RSS MB (process) | loss per step |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key, r in results.items():
        name, mode, _ = key.split()
        trainable = f"{r['trainable_params']:,}" if mode == "lora" else "all"
        lines.append(f"| {name} | {mode} | {'on' if r['gradient_checkpointing'] else 'off'} | {trainable} | "
                     f"{r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | {seqs / r['seconds']:.3f} | "
                     f"{r['peak_rss_train_gb'] * 1024:.0f} | {r['peak_rss_gb'] * 1024:.0f} | "
                     f"{', '.join(f'{x:.4f}' for x in r['losses'])} |")
    lines.append("")
    runs = [(tuple(k.split()), r) for k, r in results.items()]
    for (pname, pmode, pgc), a in runs:
        for (tname, tmode, tgc), b in runs:
            if pname == "posttrain" and tname == "trl" and pmode == tmode:
                lines.append(f"{pmode}: posttrain (grad ckpt {pgc}) / TRL (grad ckpt {tgc}): tokens/s "
                             f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x; peak RSS (training) "
                             f"{a['peak_rss_train_gb'] / b['peak_rss_train_gb']:.2f}x "
                             f"(whole process: {a['peak_rss_gb'] / b['peak_rss_gb']:.2f}x)")
    for name in ("posttrain", "trl"):
        for gc in ("off", "on"):
            f, lo = results.get(f"{name} full {gc}"), results.get(f"{name} lora {gc}")
            if f and lo:
                lines.append(f"{name} (grad ckpt {gc}): lora/full tokens/s {lo['tokens_per_s'] / f['tokens_per_s']:.2f}x; "
                             f"peak RSS (training) {lo['peak_rss_train_gb'] / f['peak_rss_train_gb']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
