"""DPO training throughput and memory: `posttrain dpo` vs TRL's `DPOTrainer`, side by side.

Same model, same pairs in the same step order, same max length, effective batch, steps, optimizer
(AdamW, constant lr, clip 1.0), fp32, no gradient checkpointing. Each trainer runs in its own
subprocess, one after the other, and reports its own peak RSS. Pairs longer than the max length
are filtered out beforehand so neither side truncates. Defaults are the recorded CPU setting
(fits a 2-core, 24 GiB box in ~15 min):

    python benchmarks/bench_dpo.py --out runs/bench-dpo/result.json

Losses compared: ours `dpo` vs TRL `sigmoid`, ours `dpo_norm` vs TRL `sigmoid_norm`; TRL with the
reference model in memory, and with `precompute_ref_log_probs` (by default for `dpo` only, to fit
the time budget; --precompute-losses dpo,dpo_norm adds it for both). Ours always precomputes (one
no-grad pass, cached on disk; the benchmark uses a fresh cache directory so the pass is timed).
Columns: ref pass s = reference pass; loop s = first step to end of last step (ours stops before
writing its final model, TRL saves nothing); pairs/s over the loop and over reference pass + loop;
peak RSS before our final save ("training") and of the whole child process; the loss of every
step. The lr is high enough that the loss leaves ln 2 after step 1 (every step-1 loss is ln 2
because policy == reference), so agreement on later steps checks gradients and updates too.
Known difference: TRL's completion also holds the template's newline after <|im_end|> (one
token per side), ours stops at <|im_end|>; losses agree closely but not exactly.

Modes (`--modes`, default `full`, the recorded full fine-tuning benchmark unchanged; `full,lora`
adds LoRA rows): `lora` trains peft adapters on every linear layer except the output head
(--lora-r/--lora-alpha/--lora-dropout, lr --lora-lr). TRL gets `peft_config=` the very
`peft.LoraConfig` posttrain builds from its `model.lora.*` keys (`posttrain.train.lora.peft_config`);
both seed torch with --seed right before creating the adapters, so both start from the same
adapter weights and the per-step losses stay comparable. Under LoRA neither side holds a second
model: the reference is the base with the adapters switched off, run once and cached by posttrain,
run every step (inside TRL's loop) or once up front (`precompute_ref_log_probs`) by TRL.

    python benchmarks/bench_dpo.py --modes full,lora --out runs/bench-dpo/lora.json
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

from peft_side import MODES, add_lora_args, lr_for, parse_modes, peak_rss_mb, posttrain_side, trainable_params, trl_side

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = str(REPO.parent / "shared" / "data" / "preference" / "hh_rlhf_helpful_base_test.jsonl")
TRL_LOSS = {"dpo": "sigmoid", "dpo_norm": "sigmoid_norm"}


# ---------------------------------------------------------------- data shared by both trainers

def prepare(args, workdir: Path) -> tuple[Path, Path]:
    """Write the pairs twice: in file order for posttrain (which shuffles by seed) and in
    posttrain's step order for TRL (read sequentially), so step k sees the same pairs in both."""
    sys.path.insert(0, str(REPO))
    from posttrain.data.preference import load_preferences, tokenize_pair
    from posttrain.models import load_tokenizer
    from posttrain.train.loop import step_indices

    tok = load_tokenizer(args.model)
    n = args.steps * args.batch
    keep = []
    # one token of margin: TRL's completion also holds the newline after the end-of-turn token
    for pair in load_preferences(args.data, on_error="skip"):
        if tokenize_pair(tok, pair, args.max_length - 1, "skip") is not None:
            keep.append({"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected})
        if len(keep) == n:
            break
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} pairs fit max_length={args.max_length}; need {n}")
    ours, trl = workdir / "pairs.jsonl", workdir / "pairs_trl_order.jsonl"
    ours.write_text("".join(json.dumps(r) + "\n" for r in keep))
    order = [i for s in range(args.steps) for i in step_indices(n, args.batch, s, args.steps, args.seed)]
    trl.write_text("".join(json.dumps(keep[i]) + "\n" for i in order))
    return ours, trl


# ---------------------------------------------------------------- children

def run_ours(args) -> dict:
    import torch

    from posttrain.config import load_config
    from posttrain.recipes.dpo import DPOConfig, main

    torch.set_num_threads(args.threads)
    overrides, seen = posttrain_side(args)
    out = Path(args.workdir) / f"ours-{args.loss}-{args.mode}"
    beta = args.beta_norm if args.loss == "dpo_norm" else args.beta
    cfg = load_config(DPOConfig, None, [
        f"model.name_or_path={args.model}", "model.dtype=float32", f"data.paths=[{args.pairs}]",
        "data.format=prompt_chosen_rejected", f"data.max_length={args.max_length}", f"loss.name={args.loss}",
        f"loss.beta={beta}", f"train.batch_size={args.batch}", f"train.micro_batch_tokens={args.micro_tokens}",
        f"train.max_steps={args.steps}", f"optim.lr={lr_for(args)}", "optim.schedule=constant",
        "optim.warmup_ratio=0", "optim.max_grad_norm=1.0", f"run.seed={args.seed}", f"run.output_dir={out}",
        "run.progress=false", f"ref.cache_dir={Path(args.workdir) / f'refcache-{args.loss}-{args.mode}'}",
        *overrides])
    main(cfg)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # loop_s: start of step 1 to the end of the last step (elapsed_s), i.e. without the final save
    return {"ref_s": summary["ref_pass_s"], "loop_s": rows[-1]["elapsed_s"], "losses": [r["loss"] for r in rows],
            "peak_rss_train_mb": seen["peak_rss_train_mb"], "peak_rss_mb": peak_rss_mb(),
            "trainable_params": summary.get("trainable_params")}


def run_trl(args) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer
    from trl.trainer import dpo_trainer

    from posttrain.models import load_tokenizer, resolve_model_path

    torch.set_num_threads(args.threads)
    timing = {"ref_s": 0.0}
    original = DPOTrainer._precompute_ref_logps

    def timed(self, *a, **kw):  # the precompute pass runs inside __init__: time it on its own
        t0 = time.perf_counter()
        try:
            return original(self, *a, **kw)
        finally:
            timing["ref_s"] += time.perf_counter() - t0

    DPOTrainer._precompute_ref_logps = timed
    path = resolve_model_path(args.model)
    tok = load_tokenizer(args.model)
    rows = [json.loads(x) for x in Path(args.pairs).read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows)
    micro = min(args.trl_micro, args.batch)
    beta = args.beta_norm if args.loss == "dpo_norm" else args.beta
    cfg = DPOConfig(
        output_dir=str(Path(args.workdir) / f"trl-{args.loss}-{args.precompute}-{args.mode}"), max_steps=args.steps,
        per_device_train_batch_size=micro, gradient_accumulation_steps=args.batch // micro,
        learning_rate=lr_for(args), lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=beta, loss_type=[TRL_LOSS[args.loss]], max_length=args.max_length, logging_steps=1,
        save_strategy="no", report_to=[], bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        train_sampling_strategy="sequential", precompute_ref_log_probs=args.precompute == "yes",
        dataloader_num_workers=0, seed=args.seed, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    extra = trl_side(args, dpo_trainer)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, **extra)
    t0 = time.perf_counter()
    trainer.train()
    loop_s = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    rss = peak_rss_mb()
    return {"ref_s": timing["ref_s"], "loop_s": loop_s, "losses": losses, "peak_rss_train_mb": rss, "peak_rss_mb": rss,
            "trainable_params": trainable_params(trainer.model) if args.mode == "lora" else None}


# ---------------------------------------------------------------- parent

def child(args, which: str, loss: str, precompute: str, pairs: Path, mode: str = "full") -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--loss", loss, "--precompute", precompute,
           "--pairs", str(pairs), "--workdir", args.workdir, "--mode", mode]
    for k in ("model", "max_length", "batch", "steps", "lr", "beta", "beta_norm", "micro_tokens", "trl_micro",
              "threads", "seed", "lora_lr", "lora_r", "lora_alpha", "lora_dropout"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    print(f"[bench] {which} {mode} {loss} precompute={precompute} ...", flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:  # keep going: one side failing (e.g. killed for memory) is itself a result
        print(f"[bench] {which} {mode} {loss} precompute={precompute} FAILED (exit {r.returncode}):\n"
              f"{r.stderr[-3000:]}", flush=True)
        return {"error": f"exit {r.returncode}"}
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (effective batch)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-5, help="full fine-tuning lr")
    p.add_argument("--modes", default="full", help="comma list of full,lora")
    add_lora_args(p)
    p.add_argument("--beta", type=float, default=0.1, help="β for dpo / sigmoid")
    p.add_argument("--beta-norm", type=float, default=5.0, help="β for dpo_norm / sigmoid_norm")
    p.add_argument("--micro-tokens", type=int, default=1024,
                   help="posttrain micro-batch token budget, packed (TRL pads --trl-micro pairs: "
                        "up to 2 * trl_micro * max_length tokens)")
    p.add_argument("--trl-micro", type=int, default=2,
                   help="TRL per-device batch (pairs); gradient accumulation makes up the rest")
    p.add_argument("--losses", default="dpo,dpo_norm")
    p.add_argument("--trl-precompute", default="no,yes", help="TRL runs: without and/or with precompute_ref_log_probs")
    p.add_argument("--precompute-losses", default="dpo",
                   help="losses that get the TRL precompute variant (\"\": all in --losses)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    # child mode
    p.add_argument("--child", choices=["ours", "trl"])
    p.add_argument("--loss", default="dpo")
    p.add_argument("--precompute", default="no")
    p.add_argument("--mode", choices=MODES, default="full")
    p.add_argument("--pairs")
    p.add_argument("--workdir")
    args = p.parse_args()

    if args.child:
        result = run_ours(args) if args.child == "ours" else run_trl(args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    def save(results: list[dict]) -> None:  # after every child, so an interrupted run keeps its rows
        if args.out:
            Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))

    modes = parse_modes(args.modes)
    n = args.steps * args.batch
    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as workdir:
        args.workdir = workdir
        ours_pairs, trl_pairs = prepare(args, Path(workdir))
        results = []
        for mode, loss in ((m, x) for m in modes for x in args.losses.split(",")):
            runs = [("ours", "yes")] + [("trl", pre) for pre in args.trl_precompute.split(",")
                                        if pre == "no" or not args.precompute_losses
                                        or loss in args.precompute_losses.split(",")]
            for which, pre in runs:
                r = {"trainer": "posttrain" if which == "ours" else "trl", "mode": mode,
                     "loss": loss if which == "ours" else TRL_LOSS[loss], "ref": reference_label(which, pre, mode),
                     "precompute": pre,
                     **child(args, which, loss, pre, ours_pairs if which == "ours" else trl_pairs, mode)}
                if "error" not in r:
                    r["pairs_per_s_loop"] = n / r["loop_s"]
                    r["pairs_per_s_total"] = n / (r["loop_s"] + r["ref_s"])
                results.append(r)
                save(results)
    lora = (f" lora: r={args.lora_r} alpha={args.lora_alpha:g} dropout={args.lora_dropout:g} all-linear "
            f"lr={args.lora_lr}" if "lora" in modes else "")
    print(f"\nmodel={args.model} max_length={args.max_length} batch={args.batch} steps={args.steps} "
          f"threads={args.threads} lr={args.lr}{lora} ({n} pairs; pairs/s over the training loop, "
          f"and over ref pass + loop)\n")
    print(report(results))


def reference_label(which: str, precompute: str, mode: str) -> str:
    if mode == "lora":  # no second model on either side: the base with adapters off
        if which == "ours":
            return "adapters off, precomputed+cached"
        return "adapters off, precompute_ref_log_probs" if precompute == "yes" else "adapters off, every step"
    if which == "ours":
        return "precomputed+cached"
    return "precompute_ref_log_probs" if precompute == "yes" else "ref model in memory"


def report(results: list[dict]) -> str:
    """Markdown table, then per-loss ratios and loss agreement against each TRL variant."""
    lines = ["| trainer | mode | trainable params | loss | reference | ref pass s | loop s | pairs/s loop "
             "| pairs/s ref+loop | peak RSS MB (training) | peak RSS MB (process) | loss per step |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        mode = r["mode"]
        trainable = f"{r['trainable_params']:,}" if r.get("trainable_params") else "all"
        if "error" in r:
            lines.append(f"| {r['trainer']} | {mode} | | {r['loss']} | {r['ref']} | failed ({r['error']}) |||||||")
            continue
        lines.append(f"| {r['trainer']} | {mode} | {trainable} | {r['loss']} | {r['ref']} | {r['ref_s']:.1f} | "
                     f"{r['loop_s']:.1f} | "
                     f"{r['pairs_per_s_loop']:.3f} | {r['pairs_per_s_total']:.3f} | {r['peak_rss_train_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {', '.join(f'{x:.4f}' for x in r['losses'])} |")
    lines.append("")
    for ours in (r for r in results if r["trainer"] == "posttrain" and "error" not in r):
        for r in (x for x in results if x["trainer"] == "trl" and x["loss"] == TRL_LOSS[ours["loss"]]
                  and x["mode"] == ours["mode"] and "error" not in x):
            dloss = max(abs(a - b) for a, b in zip(ours["losses"], r["losses"]))
            lines.append(f"{ours['mode']}: {ours['loss']} vs trl {r['loss']} ({r['ref']}): "
                         f"pairs/s loop x{ours['pairs_per_s_loop'] / r['pairs_per_s_loop']:.2f}, "
                         f"ref+loop x{ours['pairs_per_s_total'] / r['pairs_per_s_total']:.2f}; peak RSS (training) "
                         f"{ours['peak_rss_train_mb']:.0f} vs {r['peak_rss_train_mb']:.0f} MB; "
                         f"max |Δloss| over steps {dloss:.2e}")
    for name in ("posttrain", "trl"):  # what LoRA buys each trainer, like for like (same loss, same reference)
        for lo in (r for r in results if r["trainer"] == name and r["mode"] == "lora" and "error" not in r):
            for f in (r for r in results if r["trainer"] == name and r["mode"] == "full" and "error" not in r
                      and r["loss"] == lo["loss"] and r["precompute"] == lo["precompute"]):
                lines.append(f"{name} {lo['loss']} ({lo['ref']} vs {f['ref']}): lora/full pairs/s loop "
                             f"x{lo['pairs_per_s_loop'] / f['pairs_per_s_loop']:.2f}, ref+loop "
                             f"x{lo['pairs_per_s_total'] / f['pairs_per_s_total']:.2f}; peak RSS (training) "
                             f"{lo['peak_rss_train_mb']:.0f} vs {f['peak_rss_train_mb']:.0f} MB")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
