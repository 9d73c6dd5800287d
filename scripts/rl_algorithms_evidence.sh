#!/usr/bin/env bash
# GRPO vs Dr. GRPO vs DAPO vs RLOO on one CPU task (the demo's no_commas constraint), the same
# compute budget for each (steps, prompts per step, samples per prompt, tokens, learning rate),
# 3 seeds each; held-out accuracy (greedy) before and after every run, then mean ± std per algorithm.
#   bash scripts/rl_algorithms_evidence.sh [POLICY] [OUT_DIR]
# POLICY: default the embedded SmolLM2-135M-Instruct (or the demo's DPO checkpoint, runs/demo/dpo/final).
# Knobs (environment): STEPS (12), SEEDS ("1 2 3"), ALGORITHMS ("grpo dr_grpo dapo rloo"),
# EVAL_LIMIT (64), PROMPTS (8). A smoke run: STEPS=1 SEEDS=1 EVAL_LIMIT=4 PROMPTS=2.
# DAPO's dynamic sampling generates extra batches to replace groups without reward variance; its
# rows report those refills and the samples generated, so the extra generation is visible
# (rollout.max_refill=1 bounds it to at most twice the others').
set -euo pipefail
POLICY=${1:-smollm2-135m}
OUT=${2:-runs/rl-algorithms-evidence}
STEPS=${STEPS:-12}
SEEDS=${SEEDS:-"1 2 3"}
ALGORITHMS=${ALGORITHMS:-"grpo dr_grpo dapo rloo"}
EVAL_LIMIT=${EVAL_LIMIT:-64}
PROMPTS=${PROMPTS:-8}
common=(model.name_or_path="$POLICY" data.paths=[data/rlvr/no_commas_train.jsonl] rollout.prompts_per_step="$PROMPTS"
        rollout.samples_per_prompt=4 rollout.max_new_tokens=32 kl.beta=0.01 train.max_steps="$STEPS"
        train.micro_batch_tokens=2048 train.eps_low=0.2 train.eps_high=0.28 optim.lr=1e-5 optim.schedule=constant
        optim.warmup_ratio=0 eval.final_paths=[data/rlvr/no_commas_eval.jsonl] eval.limit="$EVAL_LIMIT"
        eval.at_start=true eval.max_new_tokens=32 run.progress=false checkpoint.every_steps=0)
declare -A extra=([grpo]="" [dr_grpo]="" [rloo]="" [dapo]="rollout.max_refill=1")
for algo in $ALGORITHMS; do
  for seed in $SEEDS; do
    dir="$OUT/$algo/seed$seed"
    if [ -f "$dir/summary.json" ]; then echo "[evidence] $dir done; skipping"; continue; fi
    # shellcheck disable=SC2086  # extra[] holds zero or more key=value words
    posttrain rlvr "${common[@]}" algorithm="$algo" run.seed="$seed" run.output_dir="$dir" ${extra[$algo]}
  done
done
python - "$OUT" <<'PY'
import json, statistics, sys

import yaml
from pathlib import Path

def mean_sd(xs):
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"

print(f"{'algorithm':>10} {'seeds':>5}  {'held-out before':>15}  {'held-out after':>15}  {'train reward (last)':>19}  "
      f"{'samples generated':>17}  {'wall s':>7}")
for algo_dir in sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir()):
    before, after, reward, generated, wall = [], [], [], [], []
    for run in sorted(algo_dir.glob("seed*")):
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        key = next(k for k in rows[0] if k.startswith("eval/") and k.endswith("/accuracy"))
        steps = [r for r in rows if "reward/mean" in r]
        before.append(rows[0][key]); after.append(rows[-1][key]); reward.append(steps[-1]["reward/mean"])
        # every step generates prompts_per_step × samples_per_prompt samples, DAPO as many again per refill
        cfg = yaml.safe_load((run / "config.yaml").read_text())["rollout"]
        generated.append(sum((1 + r.get("dynamic/refills", 0)) * cfg["prompts_per_step"] * cfg["samples_per_prompt"]
                             for r in steps))
        wall.append(json.loads((run / "summary.json").read_text())["wall_s"])
    print(f"{algo_dir.name:>10} {len(before):>5}  {mean_sd(before):>15}  {mean_sd(after):>15}  {mean_sd(reward):>19}  "
          f"{statistics.mean(generated):>17.0f}  {statistics.mean(wall):>7.0f}")
PY
