#!/usr/bin/env bash
# RLVR with code-execution rewards on the embedded model: GRPO on data/rlvr/code_train.jsonl (60
# MBPP-style functions, reward = fraction of the row's tests passed in the HumanEval sandbox), 3
# seeds; held-out pass rate on data/rlvr/code_eval.jsonl (40 other functions, all tests must pass)
# every EVAL_EVERY steps, then `posttrain eval` of the base and of every final policy on the same 40
# with paired bootstrap intervals of the change (`posttrain eval compare`), and seed-band curves.
#   bash scripts/code_rlvr_evidence.sh [POLICY] [OUT_DIR]
# Knobs (environment): STEPS (16), SEEDS ("1 2 3"), PROMPTS (8), LR (1e-5), EVAL_EVERY (4).
# A smoke run: STEPS=1 SEEDS=1 PROMPTS=2.
set -euo pipefail
POLICY=${1:-smollm2-135m}
OUT=${2:-runs/code-rlvr-evidence}
STEPS=${STEPS:-16}
SEEDS=${SEEDS:-"1 2 3"}
PROMPTS=${PROMPTS:-8}
LR=${LR:-1e-5}
EVAL_EVERY=${EVAL_EVERY:-4}
TOKENS=128  # the reference solutions are 2–6 lines; the base model's answers average ~70 tokens
for seed in $SEEDS; do
  dir="$OUT/rlvr/seed$seed"
  if [ -f "$dir/summary.json" ]; then echo "[evidence] $dir done; skipping"; continue; fi
  posttrain rlvr model.name_or_path="$POLICY" data.paths=[data/rlvr/code_train.jsonl] reward.code_mode=fraction \
    rollout.prompts_per_step="$PROMPTS" rollout.samples_per_prompt=4 rollout.max_new_tokens=$TOKENS \
    kl.beta=0.01 train.max_steps="$STEPS" train.micro_batch_tokens=4096 optim.lr="$LR" optim.schedule=constant \
    optim.warmup_ratio=0 eval.paths=[data/rlvr/code_eval.jsonl] eval.every_steps="$EVAL_EVERY" eval.at_start=true \
    eval.max_new_tokens=$TOKENS run.progress=false checkpoint.every_steps=0 run.seed="$seed" run.output_dir="$dir"
done
evaluate() {  # model out_dir
  [ -f "$2/summary.json" ] || posttrain eval --model "$1" --tasks verifiable:code --data code=data/rlvr/code_eval.jsonl \
    --max-new-tokens $TOKENS --output-dir "$2"
}
evaluate "$POLICY" "$OUT/eval/base"
for seed in $SEEDS; do
  evaluate "$OUT/rlvr/seed$seed/final" "$OUT/eval/seed$seed"
  posttrain eval compare "$OUT/eval/base" "$OUT/eval/seed$seed" --output "$OUT/compare/seed$seed"
done
python -m posttrain.rl.plots --group "grpo, code=$OUT/rlvr" --out "$OUT/curves.png" \
  --title "code_train → code_eval (pass = all tests), $STEPS steps × $PROMPTS prompts × 4 samples"
