# Shared shell logic of the batch scripts: a Dask scheduler and workers inside one allocation.
# Sourced by slurm/*.sbatch and pbs/*.pbs; needs bash. Every knob is an environment variable:
#   SCATTERDIST        the scatterdist command (default: scatterdist)
#   DASK               the dask command (default: dask)
#   SCATTERDIST_WORKDIR  shared directory for the scheduler file and logs
#   SCATTERDIST_INTERFACE network interface for scheduler and workers (e.g. ib0; lo in tests)
#   SCATTERDIST_TLS_DIR  directory with ca.pem, cert.pem, key.pem: TLS for every connection
#   SCATTERDIST_WAIT   seconds to wait for the scheduler file (default 120)

: "${SCATTERDIST:=scatterdist}"
: "${DASK:=dask}"
: "${SCATTERDIST_WAIT:=120}"
: "${SCATTERDIST_SCHEDULER_PORT:=0}"   # 0: any free port (clients read the scheduler file)
# Dask's nannies export MALLOC_TRIM_THRESHOLD_=65536 unless the environment defines it: the
# transform then runs at 0.78x (every large temporary is mmapped and page-faulted afresh).
# A large trim threshold plus a 32 MiB mmap threshold keep freed memory for reuse: 1.14x of
# glibc's default (python benchmarks/malloc_trim.py; docs/hpc.md).
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-1073741824}
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-33554432}

sd_log() { echo "[scatterdist $(date +%H:%M:%S)] $*" >&2; }

# The GPUs of this node, comma-separated: SCATTERDIST_GPUS, else CUDA_VISIBLE_DEVICES (set by
# SLURM --gpus-per-node and PBS ngpus), else every GPU nvidia-smi lists; empty when none.
sd_node_gpus() {
    if [[ -n "${SCATTERDIST_GPUS:-}" ]]; then
        echo "$SCATTERDIST_GPUS"
    elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        echo "$CUDA_VISIBLE_DEVICES"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -
    fi
}

# TLS files for `dask scheduler` and `dask worker`.
sd_tls_opts() {
    if [[ -n "${SCATTERDIST_TLS_DIR:-}" ]]; then
        echo "--tls-ca-file $SCATTERDIST_TLS_DIR/ca.pem --tls-cert $SCATTERDIST_TLS_DIR/cert.pem --tls-key $SCATTERDIST_TLS_DIR/key.pem"
    fi
}

# Where the scheduler listens: the head node's address (tls://HEAD with TLS, because dask
# refuses --interface together with TLS files), else the chosen interface.
sd_scheduler_net_opts() {
    local head=$1
    if [[ -n "${SCATTERDIST_TLS_DIR:-}" ]]; then
        echo "--host tls://$head $(sd_tls_opts)"
    elif [[ -n "${SCATTERDIST_INTERFACE:-}" ]]; then
        echo "--interface $SCATTERDIST_INTERFACE"
    fi
}

# How workers listen: on the chosen interface, over TLS when configured.
sd_worker_net_opts() {
    local opts=""
    if [[ -n "${SCATTERDIST_INTERFACE:-}" ]]; then opts="--interface $SCATTERDIST_INTERFACE"; fi
    if [[ -n "${SCATTERDIST_TLS_DIR:-}" ]]; then opts="$opts --protocol tls $(sd_tls_opts)"; fi
    echo "$opts"
}

# The client side of TLS goes through dask's configuration (read by every Client); the
# default scheme makes the scheduler listen on tls:// on the chosen interface.
sd_export_client_tls() {
    if [[ -n "${SCATTERDIST_TLS_DIR:-}" ]]; then
        export DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME=tls
        export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True
        export DASK_DISTRIBUTED__COMM__TLS__CA_FILE="$SCATTERDIST_TLS_DIR/ca.pem"
        export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT="$SCATTERDIST_TLS_DIR/cert.pem"
        export DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY="$SCATTERDIST_TLS_DIR/key.pem"
    fi
}

# Wait until the scheduler (background job PID) has written its file (on shared storage).
sd_wait_for_file() {
    local file=$1 pid=$2 waited=0
    until [[ -s "$file" ]]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            sd_log "the scheduler exited before writing $file; see the scheduler log"
            return 1
        fi
        if (( waited >= SCATTERDIST_WAIT )); then
            sd_log "no scheduler file $file after ${SCATTERDIST_WAIT}s; see the scheduler log"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# Kill the background launchers (and through them the Dask processes) on exit.
sd_cleanup() {
    local pids
    pids=$(jobs -p)
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill $pids 2>/dev/null || true
        wait $pids 2>/dev/null || true
    fi
}
