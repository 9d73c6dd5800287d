#!/usr/bin/env bash
# LoRA RLVR vs full-fine-tuning RLVR on the demo's verifiable task (no_commas), same steps, same
# prompts, same seed; held-out accuracy (64 eval prompts, greedy) before and after each run.
#   bash scripts/lora_rlvr_evidence.sh POLICY_DIR OUT_DIR [LORA_LRS]
# POLICY_DIR: the demo's DPO checkpoint (runs/demo/dpo/final after `posttrain demo`).
set -euo pipefail
POLICY=${1:?give the DPO checkpoint of a demo run, e.g. runs/demo/dpo/final}
OUT=${2:-runs/lora-rlvr-evidence}
LRS=${3:-"1e-4 3e-4"}
common=(model.name_or_path="$POLICY" data.paths=[data/rlvr/no_commas_train.jsonl] rollout.prompts_per_step=8
        rollout.samples_per_prompt=4 rollout.max_new_tokens=32 kl.beta=0.05 train.max_steps=12
        train.micro_batch_tokens=2048 optim.schedule=constant optim.warmup_ratio=0 eval.final_paths=[data/rlvr/no_commas_eval.jsonl]
        eval.limit=64 eval.at_start=true eval.max_new_tokens=32 run.progress=false run.seed=42)
posttrain rlvr "${common[@]}" optim.lr=1e-5 run.output_dir="$OUT/full"
for lr in $LRS; do
  posttrain rlvr "${common[@]}" optim.lr="$lr" model.lora.enabled=true model.lora.r=16 model.lora.alpha=32 \
    run.output_dir="$OUT/lora_lr$lr"
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
for run in sorted(Path(sys.argv[1]).iterdir()):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    key = next(k for k in rows[0] if k.startswith("eval/") and k.endswith("/accuracy"))
    s = json.loads((run / "summary.json").read_text())
    print(f"{run.name:>14}: held-out {key} {rows[0][key]:.3f} -> {rows[-1][key]:.3f}  "
          f"train reward {rows[1]['reward/mean']:.2f} -> {rows[-1]['reward/mean']:.2f}  "
          f"wall {s['wall_s']:.0f}s  peak RSS {s['peak_rss_mb']:.0f} MB  trainable {s.get('trainable_params', 'all')}")
PY
