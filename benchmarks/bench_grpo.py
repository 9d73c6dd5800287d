"""GRPO throughput: posttrain vs TRL's GRPOTrainer (transformers generation, no vLLM), side by side.

Both get the same model, the same prompts (small-number arithmetic, graded by the same GSM8K
verifier, reward 10 when right), the same group size, exactly the same completion length (EOS is
ignored, so both generate `--completion-len` tokens per sample), one optimizer step per rollout
batch, the same lr / clipping (ε 0.2, ε_high 0.272) / KL (β 0.01, k3, reference model loaded) /
token-level loss / group-std scaling, no filtering of constant groups, and the same number of
steps. Each trainer runs in its own subprocess, one after the other. The first step is warm-up and
not timed; samples/s = samples per step / mean step time over the other steps, where a step is
generation + rewards + reference/log-prob passes + forward/backward + optimizer step. Peak RSS
is each subprocess's ru_maxrss (model, reference, generation caches, optimizer state).

    python benchmarks/bench_grpo.py                       # both on CPU, defaults below
    python benchmarks/bench_grpo.py --prompts 6 --group 4 --completion-len 32 --steps 5 --threads 2
                                                          # as recorded in BENCHMARKS.md (2-core CPU)
    python benchmarks/bench_grpo.py --device cuda --prompts 16 --group 8 --completion-len 256
    python benchmarks/bench_grpo.py --only posttrain --steps 2   # quicker
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


def make_prompts(path: Path, n: int, seed: int) -> None:
    from posttrain.data.rlvr import arithmetic_problems, arithmetic_row, split_held_out

    problems, _ = split_held_out(arithmetic_problems(1, 20, ["+"]), 0, seed)
    rows = [arithmetic_row(*p).to_record() for p in problems[:n]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def step_summary(step_s: list[float], gen_s: list[float], samples_per_step: int) -> dict:
    timed = slice(1, None) if len(step_s) > 1 else slice(None)  # the first step is warm-up
    s, g = step_s[timed], gen_s[timed]
    mean = sum(s) / len(s)
    return {"samples_per_s": samples_per_step / mean, "step_s": mean, "generate_s": sum(g) / len(g),
            "train_s": mean - sum(g) / len(g), "steps_timed": len(s)}


def run_posttrain(args, prompts: Path, out: Path) -> dict:
    from posttrain.config import load_config
    from posttrain.recipes import rlvr
    from posttrain.train.metrics import read_metrics

    cfg = load_config(rlvr.RLVRConfig, None, [
        f"model.name_or_path={args.model}", f"data.paths=[{prompts}]", f"rollout.prompts_per_step={args.prompts}",
        f"rollout.samples_per_prompt={args.group}", f"rollout.max_new_tokens={args.completion_len}",
        "rollout.ignore_eos=true", "rollout.temperature=1.0", f"rollout.engine_max_batch_size={args.prompts * args.group}",
        "kl.beta=0.01", "kl.estimator=k3", "train.eps_low=0.2", "train.eps_high=0.272", "train.filter_constant_groups=false",
        f"train.max_steps={args.steps}", f"train.micro_batch_tokens={args.micro_tokens}", f"optim.lr={args.lr}",
        "optim.schedule=constant", "optim.warmup_ratio=0", "optim.max_grad_norm=1.0", f"run.device={args.device}",
        f"run.output_dir={out}", "run.progress=false", f"run.seed={args.seed}"])
    rlvr.main(cfg)
    rows = read_metrics(out)
    # generation here = sampling + verifier rewards, as TRL's _generate_and_score minus its log-prob passes
    res = step_summary([r["time/step_s"] for r in rows], [r["time/generate_s"] for r in rows],
                       args.prompts * args.group)
    return res | {"reward_mean": sum(r["reward/mean"] for r in rows) / len(rows),
                  "completion_len": sum(r["response_len/mean"] for r in rows) / len(rows)}


def run_trl(args, prompts: Path, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.models import load_tokenizer, resolve_model_path
    from posttrain.evaluation.tasks.gsm8k import reward as gsm8k_reward

    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["messages"], "ground_truth": r["ground_truth"]} for r in rows])

    def reward(prompts, completions, ground_truth, **_):
        return [10.0 * gsm8k_reward(c[0]["content"], gt) for c, gt in zip(completions, ground_truth)]

    cuda = args.device == "cuda"
    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.prompts * args.group, gradient_accumulation_steps=1,
        num_generations=args.group, max_completion_length=args.completion_len, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, beta=0.01,
        epsilon=0.2, epsilon_high=0.272, loss_type="dapo", scale_rewards="group", num_iterations=1,
        temperature=1.0, generation_kwargs={"min_new_tokens": args.completion_len}, shuffle_dataset=False,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, seed=args.seed,
        use_cpu=not cuda, bf16=cuda, gradient_checkpointing=False,  # TRL defaults to True; ours is off
        model_init_kwargs={"dtype": torch.bfloat16 if cuda else torch.float32},
    )
    path = resolve_model_path(args.model)
    trainer = GRPOTrainer(model=path, reward_funcs=reward, args=config, train_dataset=ds,
                          processing_class=load_tokenizer(args.model))
    gen_s: list[float] = []
    generate = trainer._generate

    def timed_generate(*a, **kw):  # TRL's sampling; rewards are scored outside it
        t = time.perf_counter()
        try:
            return generate(*a, **kw)
        finally:
            gen_s.append(time.perf_counter() - t)

    trainer._generate = timed_generate
    step_s: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **kw):
            step_s.append(time.perf_counter() - self.t)

    trainer.add_callback(Clock())
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return step_summary(step_s, gen_s, args.prompts * args.group) | {
        "reward_mean": sum(rewards) / max(len(rewards), 1),
        "completion_len": sum(lengths) / len(lengths) if lengths else float("nan")}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.workdir) / args.child
    fn = run_posttrain if args.child == "posttrain" else run_trl
    t0 = time.perf_counter()
    result = fn(args, Path(args.workdir) / "prompts.jsonl", out)
    result["wall_s"] = time.perf_counter() - t0
    # the whole child process: model, reference, engine / generate caches, optimizer state
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    (Path(args.workdir) / f"{args.child}.json").write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--group", type=int, default=4, help="samples per prompt")
    ap.add_argument("--completion-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps (the first is not timed)")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--micro-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["posttrain", "trl"])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", choices=["posttrain", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_grpo_") as work:
        make_prompts(Path(work) / "prompts.jsonl", args.prompts * args.steps, args.seed)
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
        passthrough = [a for a in sys.argv[1:] if not a.startswith("--only") and a not in ("posttrain", "trl")]
        for name in ([args.only] if args.only else ["posttrain", "trl"]):
            print(f"[bench_grpo] running {name} ...", flush=True)
            subprocess.run([sys.executable, __file__, *passthrough, "--child", name, "--workdir", work],
                           env=env, check=True, stdout=subprocess.DEVNULL)
            results[name] = json.loads((Path(work) / f"{name}.json").read_text())
    setup = (f"model {args.model}, device {args.device}, {args.prompts} prompts x {args.group} samples, "
             f"{args.completion_len} completion tokens, {args.steps} steps ({args.steps - 1} timed), "
             f"{args.threads} threads")
    print(f"\nGRPO throughput: {setup}")
    print(f"{'':<10} {'samples/s':>10} {'s/step':>8} {'gen s/step':>11} {'train s/step':>13} {'wall s':>8} "
          f"{'peak RSS MB':>12} {'reward':>7} {'tokens':>7}")
    for name, r in results.items():
        print(f"{name:<10} {r['samples_per_s']:>10.2f} {r['step_s']:>8.1f} {r['generate_s']:>11.1f} "
              f"{r['train_s']:>13.1f} {r['wall_s']:>8.0f} {r['peak_rss_mb']:>12.0f} {r['reward_mean']:>7.2f} "
              f"{r['completion_len']:>7.1f}")
    if len(results) == 2:
        p, t = results["posttrain"], results["trl"]
        print(f"posttrain / TRL samples/s: {p['samples_per_s'] / t['samples_per_s']:.2f}x; "
              f"peak RSS posttrain / TRL: {p['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"setup": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
