#!/usr/bin/env bash
# GPU checks in one go (< 8 minutes on one H100/H200): generation throughput of the engine for a
# 135M model (batch 64 x 256 new tokens) against HF generate, then SFT tokens/s and MFU of a
# 1.2B Llama-shaped model at 4 x 4096 tokens in bf16 (eager; eager with torch's varlen flash
# kernel; compiled decoder layers).
# Logs go to $OUT (the device tool's output folder) or ./gpu_check_logs.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="${OUT:-gpu_check_logs}"; mkdir -p "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$LOG/gpu.txt"
timeout 220 python3 scripts/gpu_generate_check.py --budget-s 170 2>&1 | tee "$LOG/generate.log"
timeout 75 python3 scripts/gpu_sft_check.py 2>&1 | tee "$LOG/sft_eager.log"
timeout 75 python3 scripts/gpu_sft_check.py --attn varlen_flash 2>&1 | tee "$LOG/sft_flash.log"
timeout 110 python3 scripts/gpu_sft_check.py --compile 2>&1 | tee "$LOG/sft_compile.log"
grep -h "SFT_CHECK" "$LOG"/sft_*.log
