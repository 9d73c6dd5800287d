#!/usr/bin/env bash
# LoRA RLVR vs full-fine-tuning RLVR on the demo's verifiable task (no_commas), same steps, same
# prompts, same seeds; held-out accuracy (64 eval prompts, greedy) before and after each run.
#   bash scripts/lora_rlvr_evidence.sh POLICY OUT_DIR [LORA_LRS] [SEEDS]
# POLICY: an HF dir or the embedded name (docs/LORA.md used smollm2-135m; the demo's DPO checkpoint,
# runs/demo/dpo/final after `posttrain demo`, also works). Runs are OUT_DIR/<config>_s<seed>; existing
# finished runs are kept, so a second call with more seeds only adds the new ones.
set -euo pipefail
POLICY=${1:?give a policy: smollm2-135m or an HF directory}
OUT=${2:-runs/lora-rlvr-evidence}
LRS=${3:-"1e-4 3e-4"}
SEEDS=${4:-"42"}
common=(model.name_or_path="$POLICY" data.paths=[data/rlvr/no_commas_train.jsonl] rollout.prompts_per_step=8
        rollout.samples_per_prompt=4 rollout.max_new_tokens=32 kl.beta=0.05 train.max_steps=12
        train.micro_batch_tokens=2048 optim.schedule=constant optim.warmup_ratio=0 eval.final_paths=[data/rlvr/no_commas_eval.jsonl]
        eval.limit=64 eval.at_start=true eval.max_new_tokens=32 run.progress=false)
run() {  # name seed overrides...
  local dir="$OUT/$1_s$2"; shift 2
  [ -f "$dir/summary.json" ] || posttrain rlvr "${common[@]}" run.seed="$seed" run.output_dir="$dir" "$@"
}
for seed in $SEEDS; do
  run full "$seed" optim.lr=1e-5
  for lr in $LRS; do
    run "lora_lr$lr" "$seed" optim.lr="$lr" model.lora.enabled=true model.lora.r=16 model.lora.alpha=32
  done
done
python - "$OUT" <<'PY'
import json, statistics, sys
from collections import defaultdict
from pathlib import Path
by = defaultdict(list)
for run in sorted(Path(sys.argv[1]).iterdir()):
    if not (run / "summary.json").is_file():
        continue
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    key = next(k for k in rows[0] if k.startswith("eval/") and k.endswith("/accuracy"))
    s = json.loads((run / "summary.json").read_text())
    by[run.name.rsplit("_s", 1)[0]].append((rows[0][key], rows[-1][key]))
    print(f"{run.name:>18}: held-out {key} {rows[0][key]:.3f} -> {rows[-1][key]:.3f}  "
          f"train reward {rows[1]['reward/mean']:.2f} -> {rows[-1]['reward/mean']:.2f}  "
          f"wall {s['wall_s']:.0f}s  peak RSS {s['peak_rss_mb']:.0f} MB  trainable {s.get('trainable_params', 'all')}")
for name, accs in by.items():
    after = [a for _, a in accs]
    sd = statistics.stdev(after) if len(after) > 1 else float("nan")
    print(f"{name:>14}: {len(after)} seeds, held-out accuracy {statistics.mean(a for a, _ in accs):.3f} -> "
          f"{statistics.mean(after):.3f} (sd {sd:.3f}; per seed {', '.join(f'{a:.3f}' for a in after)})")
PY
