#!/bin/bash
# The first device call (issue 20): GPU tests, the pipeline's GPU mode, the transform benchmark at
# nside 128/512/1024/2048 x batches 1/8/32 with peak memory, the torch-harmonics pair where
# installed; under 9 minutes on one H100. Writes $OUT/gpu_check.json and gpu_check.md
# (OUT defaults to ./gpu_check_out). Without a CUDA device the CUDA steps are skipped, the JSON
# is still written. On an offline node: bash ../shared/tools/gpu/prepare.sh here, then
#   bash .gpu/run.sh 'bash benchmarks/gpu_check.sh'
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py --out "${OUT:-gpu_check_out}" "$@"
