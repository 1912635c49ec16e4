#!/usr/bin/env bash
# The GPU path of mtl-train checked in one command (issue 18, item 2), on a machine with a CUDA GPU:
#   1. the CUDA tests (pytest -m cuda: a CUDA run equals the CPU run within tolerance, a CUDA run resumed
#      with its CUDA RNG equals a longer run, device-resident and copy-ahead loaders give the CPU's batches);
#   2. the GEMM roofline of the bench model's shapes on the GPU (fp32, TF32, bf16; scripts/gpu_check.py roofline);
#   3. a kill (SIGKILL) and resume on CUDA: metrics.json identical to an uninterrupted run;
#   4. the bench workload in fp32, TF32 and bf16 at batch 2048 and in bf16 at 8192 and 32768: samples/s,
#      ratios to fp32 and to the roofline, val AUCs, peak GPU memory.
# Needs the repository and ../shared only; idempotent (the workload and prepare cache are kept in
# $GPU_CHECK_DIR, default /tmp/mtl-gpu-check, and every run writes a new directory); under 8 minutes.
# Without CUDA it says so and runs the same steps as a dry run on the CPU at tiny sizes.
#
# Usage: bash scripts/gpu_check.sh [PYTHON]      (default: .venv/bin/python if present, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DIR=${GPU_CHECK_DIR:-/tmp/mtl-gpu-check}
export CUBLAS_WORKSPACE_CONFIG=:4096:8   # deterministic cuBLAS: a resumed run must repeat the same bits
export PYTHONUNBUFFERED=1
# the repository's own mtl_train, installed or not (runs start in their own folders, not here)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

# limits that keep the GPU run under 8 minutes; a dry run has none (a loaded CPU machine is slow, not stuck)
T_TESTS=150; T_REST=300
if [ "$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')" = 1 ]; then
    DRY=""
    "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true
else
    DRY="--dry"; T_TESTS=0; T_REST=0   # timeout 0: no limit
    echo "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False, torch $("$PY" -c 'import torch; print(torch.__version__)')):"
    echo "gpu_check: DRY RUN on the CPU at tiny sizes; the CUDA tests are collected and skipped"
fi

echo "== 1. CUDA tests (pytest -m cuda)"
(timeout $T_TESTS "$PY" -m pytest -q -o addopts="" -p no:cacheprovider -m cuda -rs tests 2>&1 || echo "gpu_check: CUDA TESTS FAILED") | tail -15

echo "== 2-4. roofline, kill and resume, bench workload"
timeout $T_REST "$PY" scripts/gpu_check.py all $DRY --workdir "$DIR"

echo "gpu_check: done in $(( $(date +%s) - start )) s"
