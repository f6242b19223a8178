"""The HPC paths run for real: batch scripts under stand-in srun/scontrol/sbatch/pbsdsh
(only the batch system is stood in for: dask, torchrun and scatterdist underneath are
real processes on loopback addresses), a scheduler-file cluster, and TLS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
STANDINS = Path(__file__).parent / "batch_standins"
BIN = Path(sys.executable).parent
SIM = "sim:kind=mixed,n=4,nside=32,seed=0,alpha=1.0"


def batch_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{STANDINS}:{BIN}:{env.get('PATH', '')}",
        SCATTERDIST_DEPLOY_DIR=str(ROOT / "deploy"),
        SCATTERDIST_INTERFACE="lo",
        SCATTERDIST_WAIT="60",
        BATCH_STANDIN_LOG=str(tmp_path / "batch.log"),
        STANDIN_CPUS_PER_TASK="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def assert_complete(store: Path, n: int) -> xr.Dataset:
    ds = xr.open_zarr(store, consolidated=False, chunks=None)  # numpy-backed: no dask scheduler involved
    assert ds.sizes["map"] == n
    assert (ds["status"].values == 1).all()
    assert np.isfinite(ds["coefficients"].values).all()
    return ds


def test_slurm_scatter_in_one_allocation(tmp_path):
    store = tmp_path / "store.zarr"
    done = subprocess.run(
        ["sbatch", str(ROOT / "deploy/slurm/scatter.sbatch"), SIM, "--output", str(store),
         "--shard-size", "2", "--no-progress"],
        cwd=tmp_path, env=batch_env(tmp_path), capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert_complete(store, 4)
    log = (tmp_path / "batch.log").read_text()
    assert "srun ntasks=1 dask scheduler" in log and "srun ntasks=2 dask worker" in log
    workers = next((tmp_path / ".scatterdist").glob("*/workers.log")).read_text()
    assert workers.count("Registered to:") == 2  # two real workers joined


def test_slurm_gpu_scatter_one_worker_per_gpu(tmp_path):
    """scatter-gpu.sbatch on a node with two (stand-in) GPUs: deploy/gpu-workers.sh starts one
    worker per GPU, each seeing only its GPU and advertising GPU=1; the torch backend runs with
    --device auto (the CPU here: torch sees no CUDA device behind CUDA_VISIBLE_DEVICES)."""
    store = tmp_path / "store.zarr"
    env = batch_env(tmp_path, STANDIN_NODES="1", SCATTERDIST_GPUS="0,1", SCATTERDIST_GPU_WORKER="dask",
                    SCATTERDIST_PYTHON=sys.executable)
    done = subprocess.run(
        ["sbatch", str(ROOT / "deploy/slurm/scatter-gpu.sbatch"), SIM, "--output", str(store),
         "--shard-size", "1", "--gpu-batch", "2", "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert_complete(store, 4)
    workers = next((tmp_path / ".scatterdist").glob("*/workers.log")).read_text()
    assert workers.count("Registered to:") == 2, workers  # one worker per GPU
    assert "dask worker on GPU 0 (CUDA_VISIBLE_DEVICES=0)" in workers
    assert "dask worker on GPU 1 (CUDA_VISIBLE_DEVICES=1)" in workers
    assert "worker(s) sees a GPU; transforms run on CPU" in done.stderr  # the workers joined so far
    assert "tasks per device {'cpu':" in done.stdout
    log = (tmp_path / "batch.log").read_text()
    assert "srun ntasks=1 bash " in log and "gpu-workers.sh --scheduler-file" in log


def test_pbs_scatter_in_one_job(tmp_path):
    store = tmp_path / "store.zarr"
    (tmp_path / "nodes").write_text("127.0.0.1\n127.0.0.2\n")
    env = batch_env(tmp_path, PBS_NODEFILE=str(tmp_path / "nodes"), PBS_JOBID="7.pbs", NCPUS="1",
                    PBS_O_WORKDIR=str(tmp_path),
                    ARGS=f"{SIM} --output {store} --shard-size 2 --no-progress")
    done = subprocess.run(["bash", str(ROOT / "deploy/pbs/scatter.pbs")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_complete(store, 4)


def test_tls_cluster_refuses_a_client_without_certificate(tmp_path):
    from distributed import Client

    from scatterdist.tls import make_certificates, security

    certs = make_certificates(tmp_path / "tls")
    sched_file = tmp_path / "scheduler.json"
    tls = ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / "cert.pem"),
           "--tls-key", str(certs / "key.pem")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "tls://127.0.0.1", "--port", "0",
                                  "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file), *tls],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        import json

        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        worker = subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                   "--protocol", "tls", *tls], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Refused clients are tried in child processes, one per attempt: a Client whose handshake
        # failed can hang in its finaliser (distributed's loop runner) or leave state that makes
        # the next attempt in the same process fail for another reason.
        attempts = {
            "plain": "{}",
            "ca-only": f"{{'security': Security(tls_ca_file={str(certs / 'ca.pem')!r}, require_encryption=True)}}",
            "other-ca": f"{{'security': security(make_certificates({str(tmp_path / 'other')!r}))}}",
        }
        lines = {}
        for name, kwargs in attempts.items():
            probe = textwrap.dedent(f"""
                import os
                from distributed import Client, Security
                from scatterdist.tls import make_certificates, security
                try:
                    Client({address!r}, timeout=5, set_as_default=False, **{kwargs})
                    print("CONNECTED", flush=True)
                except Exception as exc:
                    print("refused", type(exc).__name__, flush=True)
                os._exit(0)
            """)
            refused = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                     timeout=120, env=env)
            assert refused.stdout.strip(), refused.stderr
            lines[name] = refused.stdout.strip().splitlines()[-1]
        assert all(v.startswith("refused") for v in lines.values()), lines
        # refused by the TLS layer, not by a bug in the probe
        assert all(v.split()[1] in ("OSError", "TimeoutError", "TypeError", "CommClosedError", "FatalCommClosedError", "SSLError") for v in lines.values()), lines
        # the holder of the certificate gets in and runs tasks on the TLS worker
        with Client(address, security=security(certs), timeout=30, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
            assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def test_tls_through_the_batch_script(tmp_path):
    from scatterdist.tls import make_certificates

    certs = make_certificates(tmp_path / "tls")
    store = tmp_path / "store.zarr"
    done = subprocess.run(
        ["sbatch", str(ROOT / "deploy/slurm/scatter.sbatch"), SIM, "--output", str(store), "--shard-size", "4",
         "--no-progress"],
        cwd=tmp_path, env=batch_env(tmp_path, SCATTERDIST_TLS_DIR=str(certs), STANDIN_NODES="1"),
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dask scheduler tls://127.0.0.1:" in done.stderr
    assert_complete(store, 4)


def test_scripts_parse():
    scripts = sorted((ROOT / "deploy").glob("*/*.sbatch")) + sorted((ROOT / "deploy").glob("*/*.pbs"))
    assert len(scripts) >= 8
    for script in scripts + [ROOT / "deploy/lib.sh"]:
        subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-x", "-S", "warning", *map(str, scripts)], check=True, cwd=ROOT)


def test_jobqueue_local_cluster_drives_scatter(tmp_path):
    """dask-jobqueue's LocalCluster runs the job scripts it generates as local processes:
    the login-node workflow (`--cluster slurm|pbs`) end to end, minus the batch system."""
    cfg = tmp_path / "dask-config"
    cfg.mkdir()
    shutil.copy(ROOT / "deploy" / "jobqueue.yaml", cfg)
    env = dict(os.environ, DASK_CONFIG=str(cfg), DASK_JOBQUEUE__LOCAL__INTERFACE="lo", OMP_NUM_THREADS="1")
    store = tmp_path / "store.zarr"
    done = subprocess.run(
        [str(BIN / "scatterdist"), "scatter", SIM, "--output", str(store), "--cluster", "jobqueue-local",
         "--workers", "2", "--shard-size", "2", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert_complete(store, 4)
    # the job script is dask-jobqueue's own, with the example configuration's worker settings
    probe = subprocess.run(
        [sys.executable, "-c",
         "from dask_jobqueue.local import LocalCluster as C; c = C(); print(c.job_script()); c.close()"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert "distributed.cli.dask_worker" in probe.stdout and "--name" in probe.stdout


def test_scheduler_file_with_two_worker_processes(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["--scheduler-file", str(sched_file)]
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", "127.0.0.1:0", *common], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([str(BIN / "dask"), "worker", "--nthreads", "1", "--host", "127.0.0.1",
                                           *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        store = tmp_path / "store.zarr"
        done = subprocess.run([str(BIN / "scatterdist"), "scatter", SIM, "--output", str(store), "--shard-size", "1",
                               "--scheduler-file", str(sched_file), "--no-progress"],
                              env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert_complete(store, 4)
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout=30, set_as_default=False) as client:
            assert len(client.scheduler_info()["workers"]) == 2
        assert all(p.poll() is None for p in procs), "a Dask process died during the run"
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    from scatterdist.testing import write_synthetic_store

    path = tmp_path_factory.mktemp("train") / "syn.zarr"
    write_synthetic_store(path, n_maps=64, nside=4, n_channels=2, shard_size=8)
    return path


def _train_cmd(store: Path, run: Path, epochs: int) -> list[str]:
    return ["sbatch", str(ROOT / "deploy/slurm/train.sbatch"), str(store), "--out", str(run),
            "--epochs", str(epochs), "--batch-size", "8", "--no-progress"]


def test_slurm_train_two_nodes(tmp_path, train_store):
    import json

    run = tmp_path / "run"
    env = batch_env(tmp_path, SCATTERDIST_RDZV_PORT=str(_free_port()))
    done = subprocess.run(_train_cmd(train_store, run, 2), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = json.loads((run / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and len(set(ranks["sha256"])) == 1
    log = (tmp_path / "batch.log").read_text()
    assert "srun ntasks=2 torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d" in log


def test_slurm_train_preempted_then_requeued_resumes(tmp_path, train_store):
    """SIGUSR1 (what `--signal=B:USR1@120` sends) mid-training: the ranks stop, the job asks
    to be requeued, and the requeued job resumes from the last checkpoint and finishes."""
    import json
    import signal

    run = tmp_path / "run"
    env = batch_env(tmp_path, SCATTERDIST_RDZV_PORT=str(_free_port()), STANDIN_NODES="1")
    job = subprocess.Popen(_train_cmd(train_store, run, 40), cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 2:
            assert job.poll() is None, job.stdout.read()
            assert time.monotonic() < deadline, "training never reached epoch 2"
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)
        out, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out
    assert "requeueing job" in out
    log = (tmp_path / "batch.log").read_text()
    assert "requeue" in log.splitlines()[-1]
    stopped_at = len((run / "metrics.jsonl").read_text().splitlines())
    assert 2 <= stopped_at < 40
    # the requeued job: the same command resumes from the checkpoint
    env["SCATTERDIST_RDZV_PORT"] = str(_free_port())
    again = subprocess.run(_train_cmd(train_store, run, stopped_at + 2), cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming {run} after epoch" in again.stdout + again.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, stopped_at + 3))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pbs_train_two_nodes(tmp_path, train_store):
    import json

    (tmp_path / "nodes").write_text("127.0.0.1\n127.0.0.2\n")
    run = tmp_path / "run"
    env = batch_env(tmp_path, PBS_NODEFILE=str(tmp_path / "nodes"), PBS_JOBID="9.pbs", PBS_O_WORKDIR=str(tmp_path),
                    SCATTERDIST_RDZV_PORT=str(_free_port()),
                    ARGS=f"{train_store} --out {run} --epochs 1 --batch-size 8 --no-progress")
    done = subprocess.run(["bash", str(ROOT / "deploy/pbs/train.pbs")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = json.loads((run / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and len(set(ranks["sha256"])) == 1
