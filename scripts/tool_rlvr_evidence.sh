#!/usr/bin/env bash
# Multi-turn RLVR with a calculator tool on the embedded model (data: scripts/make_calc_tool_data.py).
#   1. warm start: SFT on 64 tool-use conversations (5 of the 8 problem templates), so that the 135M
#      model writes calls in the Hermes format at all (it never does by itself);
#   2. GRPO with rollout.tools=[calculator] on calc_train (256 problems, all 8 templates), 3 seeds,
#      and, as a control, the same RL from the base model without the warm start;
#   3. held-out calc_eval (64 problems) every EVAL_EVERY steps, greedy and multi-turn in the same
#      environment: accuracy and how the tool was used (calls per problem, share of valid calls);
#      plus the base and warm-start models single-turn without tools (`posttrain eval`).
#   bash scripts/tool_rlvr_evidence.sh [OUT_DIR]
# Knobs (environment): STEPS (16), SEEDS ("1 2 3"), CONTROL_SEEDS ("1"), PROMPTS (8), LR (1e-5),
# EVAL_EVERY (4). A smoke run: STEPS=1 SEEDS=1 CONTROL_SEEDS="" PROMPTS=2 SFT_EPOCHS=1.
set -euo pipefail
OUT=${1:-runs/tool-rlvr-evidence}
STEPS=${STEPS:-16}
SEEDS=${SEEDS:-"1 2 3"}
CONTROL_SEEDS=${CONTROL_SEEDS-"1"}
PROMPTS=${PROMPTS:-8}
LR=${LR:-1e-5}
EVAL_EVERY=${EVAL_EVERY:-4}
SFT_EPOCHS=${SFT_EPOCHS:-2}
[ -f data/rlvr/calc_train.jsonl ] || python scripts/make_calc_tool_data.py
warm="$OUT/sft"
[ -f "$warm/summary.json" ] || posttrain sft configs/sft/smollm2-cpu.yaml data.paths=[data/sft/calc_tool_sft.jsonl] \
  data.limit=null data.max_length=512 train.epochs="$SFT_EPOCHS" run.output_dir="$warm" checkpoint.every_steps=0
rl() {  # policy out_dir seed
  [ -f "$2/summary.json" ] || posttrain rlvr model.name_or_path="$1" data.paths=[data/rlvr/calc_train.jsonl] \
    rollout.tools=[calculator] rollout.max_turns=3 rollout.max_tokens_per_turn=64 rollout.max_new_tokens=128 \
    rollout.prompts_per_step="$PROMPTS" rollout.samples_per_prompt=4 kl.beta=0.01 train.max_steps="$STEPS" \
    train.micro_batch_tokens=4096 optim.lr="$LR" optim.schedule=constant optim.warmup_ratio=0 \
    eval.paths=[data/rlvr/calc_eval.jsonl] eval.every_steps="$EVAL_EVERY" eval.at_start=true \
    run.progress=false checkpoint.every_steps=0 run.seed="$3" run.output_dir="$2"
}
for seed in $SEEDS; do rl "$warm/final" "$OUT/rl_warm/seed$seed" "$seed"; done
for seed in $CONTROL_SEEDS; do rl smollm2-135m "$OUT/rl_base/seed$seed" "$seed"; done
for m in base:smollm2-135m warm:"$warm/final"; do
  [ -f "$OUT/eval_no_tools/${m%%:*}/summary.json" ] || posttrain eval --model "${m#*:}" --tasks verifiable:calc \
    --data calc=data/rlvr/calc_eval.jsonl --max-new-tokens 128 --output-dir "$OUT/eval_no_tools/${m%%:*}"
done
groups=(--group "warm start + GRPO=$OUT/rl_warm")
[ -z "$CONTROL_SEEDS" ] || groups+=(--group "base + GRPO (control)=$OUT/rl_base")
python -m posttrain.rl.plots "${groups[@]}" --out "$OUT/curves.png" \
  --title "calc_train → calc_eval with the calculator tool, $STEPS steps × $PROMPTS prompts × 4 samples"
python - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
from posttrain.train.metrics import read_metrics
out = Path(sys.argv[1])
keys = ["accuracy", "tool/used", "tool/calls", "tool/valid", "turns/mean", "response_len"]
print("| run | seeds | when | " + " | ".join(keys) + " |\n|---|---:|---|" + "---:|" * len(keys))
for group in ("rl_warm", "rl_base"):
    runs = sorted(p for p in (out / group).glob("seed*") if (p / "summary.json").is_file())
    if not runs:
        continue
    evals = [[r for r in read_metrics(p) if "eval/calc_eval/accuracy" in r] for p in runs]
    for when, i in (("before RL", 0), ("after RL", -1)):
        cells = []
        for k in keys:
            xs = [e[i][f"eval/calc_eval/{k}"] for e in evals]
            cells.append(f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.3f}")
        print(f"| {group} | {len(runs)} | {when} | " + " | ".join(cells) + " |")
for m in ("base", "warm"):
    s = out / "eval_no_tools" / m / "summary.json"
    if s.is_file():
        t = json.loads(s.read_text())["calc"]
        ci = t["intervals"]["accuracy"]
        print(f"{m} model without tools (single turn, posttrain eval): accuracy {t['metrics']['accuracy']:.3f} "
              f"[{ci['low']:.3f}, {ci['high']:.3f}] (Wilson 95%, n={t['n']})")
PY
