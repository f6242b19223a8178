#!/bin/bash
# Start one Dask worker per GPU of THIS node, each advertising resources GPU=1 and seeing only
# its own GPU (CUDA_VISIBLE_DEVICES), so that `scatterdist scatter --backend torch` puts one
# task at a time on every GPU and each worker's loader threads feed its own GPU.
#
#   bash deploy/gpu-workers.sh --scheduler-file FILE --nthreads T [other dask worker options]
#
# Run once per node (srun --ntasks-per-node=1, pbsdsh -u). Uses `dask cuda worker` (dask-cuda:
# one worker per GPU, CUDA-aware memory limits) when dask-cuda is installed, else starts the
# workers itself. Knobs (environment):
#   SCATTERDIST_GPUS        GPUs of the node, e.g. 0,1,2,3 (default: CUDA_VISIBLE_DEVICES as the
#                           batch system sets it, else every GPU nvidia-smi lists)
#   SCATTERDIST_GPU_WORKER  auto (default), dask-cuda, or dask (plain `dask worker` per GPU)
#   SCATTERDIST_PYTHON      the Python that runs dask (default python3), to look for dask-cuda
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
: "${SCATTERDIST_GPU_WORKER:=auto}"
: "${SCATTERDIST_PYTHON:=python3}"

gpus=$(sd_node_gpus)
if [[ -z "$gpus" ]]; then
    sd_log "$(hostname): no GPU found (no CUDA_VISIBLE_DEVICES, no nvidia-smi): set SCATTERDIST_GPUS"
    exit 1
fi
kind=$SCATTERDIST_GPU_WORKER
if [[ "$kind" == auto ]]; then
    if "$SCATTERDIST_PYTHON" -c "import dask_cuda" 2>/dev/null; then kind=dask-cuda; else kind=dask; fi
fi
case "$kind" in
    dask-cuda)
        sd_log "$(hostname): dask cuda worker on GPUs $gpus (one worker each)"
        # shellcheck disable=SC2086
        CUDA_VISIBLE_DEVICES=$gpus exec $DASK cuda worker --resources GPU=1 "$@" ;;
    dask)
        pids=()
        trap 'kill "${pids[@]}" 2>/dev/null || true' TERM INT EXIT
        IFS=, read -ra list <<<"$gpus"
        for g in "${list[@]}"; do
            sd_log "$(hostname): dask worker on GPU $g (CUDA_VISIBLE_DEVICES=$g)"
            # shellcheck disable=SC2086
            CUDA_VISIBLE_DEVICES=$g $DASK worker --nworkers 1 --resources GPU=1 "$@" &
            pids+=($!)
        done
        wait ;;
    *)
        sd_log "SCATTERDIST_GPU_WORKER must be auto, dask-cuda or dask, got $kind"
        exit 2 ;;
esac
