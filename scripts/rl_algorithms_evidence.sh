#!/usr/bin/env bash
# GRPO vs Dr. GRPO vs DAPO vs RLOO on one CPU task (the demo's no_commas constraint), the same
# compute budget for each (steps, prompts per step, samples per prompt, tokens, learning rate),
# 3 seeds each; held-out accuracy (greedy) every EVAL_EVERY steps, then a table (mean ± std per
# algorithm) and curves with bands (held-out accuracy, sampled and held-out response length) from
# posttrain.rl.plots (OUT_DIR/curves.png).
#   bash scripts/rl_algorithms_evidence.sh [POLICY] [OUT_DIR]
# POLICY: default the embedded SmolLM2-135M-Instruct (or the demo's DPO checkpoint, runs/demo/dpo/final).
# Knobs (environment): STEPS (12), SEEDS ("1 2 3"), ALGORITHMS ("grpo dr_grpo dapo rloo"),
# EVAL_LIMIT (64), EVAL_EVERY (3), PROMPTS (8). A smoke run: STEPS=1 SEEDS=1 EVAL_LIMIT=4 PROMPTS=2.
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
EVAL_EVERY=${EVAL_EVERY:-3}
common=(model.name_or_path="$POLICY" data.paths=[data/rlvr/no_commas_train.jsonl] rollout.prompts_per_step="$PROMPTS"
        rollout.samples_per_prompt=4 rollout.max_new_tokens=32 kl.beta=0.01 train.max_steps="$STEPS"
        train.micro_batch_tokens=2048 train.eps_low=0.2 train.eps_high=0.28 optim.lr=1e-5 optim.schedule=constant
        optim.warmup_ratio=0 eval.paths=[data/rlvr/no_commas_eval.jsonl] eval.every_steps="$EVAL_EVERY" eval.limit="$EVAL_LIMIT"
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
groups=(); for algo in $ALGORITHMS; do groups+=(--group "$algo=$OUT/$algo"); done
python -m posttrain.rl.plots "${groups[@]}" --out "$OUT/curves.png" \
  --title "no_commas, $STEPS steps × $PROMPTS prompts × 4 samples, per algorithm"
