#!/usr/bin/env bash
# The GPU check of issue 19: every accelerated path once, <= 8 minutes on one GPU, one JSON
# ($OUT/gpu_check.json on the device machine, else bench/results/gpu_check.json).
#   bench/gpu_check.sh            on a GPU machine, from the repository root
#   bench/gpu_check.sh --dry      the same steps, tiny, on a CPU (tests/test_gpu_check.py)
# Any bench.gpu_check flag passes through (--output, --medmnist_dir, --images, --step_timeout).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader || echo "gpu_check: no nvidia-smi (no GPU driver here)"
exec "$PYTHON" -m bench.gpu_check "$@"
