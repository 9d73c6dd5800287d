"""RLVR on Ray vs in one process: samples/s on the same workload, and what the actor boundary and
the weight sync cost per step.

The same GRPO run (same model, prompts, seed, group size, exactly `--completion-len` tokens per
sample, one optimizer step per batch, KL β 0.01 with the reference loaded) four ways, each in its
own subprocess, one after the other:

    local-sync   one process: generate step t with the policy after t updates, then train on it
    ray-sync     distributed.engine=ray, 2 generator actors + 1 learner actor, staleness 0 (the
                 same weights make the same batches: the curves agree, so this is like for like)
    local-async  one process with the generator thread one step behind (rollout.mode=async)
    ray-async    Ray with the generators one step behind, overlapping the learner

samples/s = samples per step / mean `time/step_s` over the steps after the first (warm-up). For the
Ray runs, `ray_timing.jsonl` gives per step: `get_s` (the learner waiting for its batch),
`boundary_s` (from the moment the batch existed and was asked for to its arrival on the learner:
generators -> pool -> learner, merging included), `push_s` (rank 0 packing the weights, putting
them into the object store and handing the pool the reference) and `weight_load_s` (a generator
reading them from the store and loading them). `wall_s` includes starting the Ray cluster and the
actors.

The default model is a random Llama (4 layers, hidden 256, the embedded tokenizer's 49,152-token
vocabulary; 16 M parameters, 64 MB of fp32 weights synced per step), sized so that 2 generators,
the learner (policy, reference, Adam) and the object store fit a 2-core, 24 GB machine with room;
`--model smollm2-135m` runs the embedded model instead.

    python benchmarks/bench_ray_rlvr.py                         # as recorded in BENCHMARKS.md
    python benchmarks/bench_ray_rlvr.py --only local-sync,ray-sync --steps 3
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

REPO = Path(__file__).resolve().parents[1]
RUNS = ("local-sync", "ray-sync", "local-async", "ray-async")


def make_inputs(work: Path, args) -> str:
    from posttrain.data.rlvr import arithmetic_problems, arithmetic_row, split_held_out

    problems, _ = split_held_out(arithmetic_problems(1, 20, ["+"]), 0, args.seed)
    rows = [arithmetic_row(*p).to_record() for p in problems[:args.prompts * args.steps]]
    (work / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.model:
        return args.model
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from posttrain.models import load_tokenizer

    torch.manual_seed(args.seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    path = work / "model"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    load_tokenizer("smollm2-135m").save_pretrained(path)
    return str(path)


def run_one(name: str, args, work: Path, model: str) -> dict:
    from posttrain.config import load_config
    from posttrain.recipes import rlvr
    from posttrain.train.metrics import read_metrics

    out = work / name
    mode = "async" if name.endswith("async") else "sync"
    extra = ["distributed.engine=ray", "distributed.num_generators=2", "distributed.num_learners=1",
             "distributed.generator_num_cpus=1", f"distributed.learner_num_cpus={args.threads}",
             f"distributed.num_cpus={2 + args.threads}"] if name.startswith("ray") else []
    cfg = load_config(rlvr.RLVRConfig, None, [
        f"model.name_or_path={model}", f"data.paths=[{work / 'prompts.jsonl'}]",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.samples_per_prompt={args.group}",
        f"rollout.max_new_tokens={args.completion_len}", "rollout.ignore_eos=true", f"rollout.mode={mode}",
        "rollout.max_staleness=1", "kl.beta=0.01", "train.filter_constant_groups=false",
        f"train.max_steps={args.steps}", "optim.lr=1e-6", "optim.schedule=constant", "optim.warmup_ratio=0",
        "eval.at_start=false", "run.device=cpu", f"run.output_dir={out}", "run.progress=false",
        f"run.seed={args.seed}", *extra])
    t0 = time.perf_counter()
    rlvr.main(cfg)
    wall = time.perf_counter() - t0
    rows = read_metrics(out)[1:]  # the first step is warm-up
    step_s = sum(r["time/step_s"] for r in rows) / len(rows)
    res = {"samples_per_s": args.prompts * args.group / step_s, "step_s": step_s, "wall_s": wall,
           "wait_s": mean(r["time/wait_s"] for r in rows), "train_s": mean(r["time/train_s"] for r in rows),
           "generate_s": mean(r["time/generate_s"] for r in rows),
           "reward_mean": mean(r["reward/mean"] for r in read_metrics(out)),
           "loss": [r.get("loss/policy") for r in read_metrics(out)]}
    timing_file = out / "ray_timing.jsonl"
    if timing_file.is_file():
        t = [json.loads(x) for x in timing_file.read_text().splitlines()][1:]
        res |= {k: mean(r[k] for r in t if k in r) for k in ("get_s", "boundary_s", "push_s", "weight_load_s")}
    return res


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    res = run_one(args.child, args, work, (work / "model_path").read_text())
    (work / f"{args.child}.json").write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="HF dir or embedded name (default: a random 16 M-parameter Llama)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--group", type=int, default=4, help="samples per prompt")
    ap.add_argument("--completion-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps (the first is not timed)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in one process / in the Ray learner")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(RUNS)}")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    names = args.only.split(",") if args.only else list(RUNS)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_ray_rlvr_") as work:
        work = Path(work)
        (work / "model_path").write_text(make_inputs(work, args))
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   TOKENIZERS_PARALLELISM="false")
        env.pop("OMP_NUM_THREADS", None)  # Ray gives each actor as many threads as CPUs it reserved
        same = [f"--prompts={args.prompts}", f"--group={args.group}", f"--completion-len={args.completion_len}",
                f"--steps={args.steps}", f"--threads={args.threads}", f"--seed={args.seed}"]
        for name in names:
            print(f"[bench_ray_rlvr] running {name} ...", flush=True)
            subprocess.run([sys.executable, __file__, *same, "--child", name, "--workdir", str(work)],
                           env=dict(env, OMP_NUM_THREADS=str(args.threads)) if name.startswith("local") else env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results[name] = json.loads((work / f"{name}.json").read_text())
    print(f"\nRLVR (GRPO) on Ray vs one process: model {args.model or 'random Llama 16M'}, {args.prompts} prompts x "
          f"{args.group} samples x {args.completion_len} tokens, {args.steps} steps ({args.steps - 1} timed), "
          f"{args.threads} threads in one process / in the learner, 1 per generator actor")
    print(f"{'':<12} {'samples/s':>9} {'s/step':>7} {'wait s':>7} {'train s':>8} {'gen s':>6} {'get s':>6} "
          f"{'boundary s':>10} {'push s':>7} {'w.load s':>8} {'wall s':>7}")
    for name, r in results.items():
        ray_t = [r.get(k, float("nan")) for k in ("get_s", "boundary_s", "push_s", "weight_load_s")]
        print(f"{name:<12} {r['samples_per_s']:>9.2f} {r['step_s']:>7.2f} {r['wait_s']:>7.2f} {r['train_s']:>8.2f} "
              f"{r['generate_s']:>6.2f} {ray_t[0]:>6.3f} {ray_t[1]:>10.3f} {ray_t[2]:>7.3f} {ray_t[3]:>8.3f} "
              f"{r['wall_s']:>7.1f}")
    for a, b in (("ray-sync", "local-sync"), ("ray-async", "local-async")):
        if a in results and b in results:
            print(f"{a} / {b} samples/s: {results[a]['samples_per_s'] / results[b]['samples_per_s']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"setup": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
