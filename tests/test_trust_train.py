"""Issue 17, row 12: the trainer on a store still being written, a store with skipped maps, two
trainers on one run directory, a resume with another world size (real processes, real stores)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scatterdist.testing import write_synthetic_store
from scatterdist.train.checkpoint import load_checkpoint

PY = sys.executable
TIMEOUT = 120
ROOT = Path(__file__).resolve().parents[1]
#: holds a store's writer lock as `scatterdist scatter` does, until killed (or 120 s)
HOLD_LOCK = (
    "import sys, time\n"
    "from scatterdist.store import StoreLock\n"
    "lock = StoreLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)\n"
)


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    return env


def _run(args: list[str], expect: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == expect, f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def _train(store, out, *extra: str, epochs: int = 1) -> list[str]:
    return [PY, "-m", "scatterdist", "train", str(store), "--out", str(out), "--epochs", str(epochs), "--hidden", "4",
            "--batch-size", "8", "--seed", "3", "--no-progress", *extra]


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("scatterdist train: error: "), proc.stderr
    return lines[0]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trust_train") / "coeffs.zarr"
    write_synthetic_store(path, n_maps=32, shard_size=8, failed=(3,), todo=tuple(range(24, 32)), seed=5, fields=("I",))
    return path


def test_live_writer_is_refused_unless_allow_partial_and_skipped_maps_are_counted(store, tmp_path):
    labels = tmp_path / "labels.csv"  # maps 5 and 6 have no label
    ids = [f"syn{i:05d}" for i in range(32)]
    labels.write_text("id,label\n" + "".join(f"{m},{i % 2}\n" for i, m in enumerate(ids) if i not in (5, 6)))
    holder = subprocess.Popen([PY, "-c", HOLD_LOCK, str(store)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = _run(_train(store, tmp_path / "run", "--labels", str(labels)), expect=2)
        line = _one_error_line(refused)
        assert f"store {store} is still being written (pid {holder.pid} on host" in line and "--allow-partial" in line
        assert not (tmp_path / "run").exists()  # refused before anything was touched

        done = _run(_train(store, tmp_path / "run", "--labels", str(labels), "--allow-partial"), expect=0)
        assert f"still being written (pid {holder.pid}" in done.stderr and "--allow-partial" in done.stderr
        assert "training on 21 of 32 maps: 1 failed, 8 not computed, 2 without a label" in done.stdout
    finally:
        _stop(holder)
    # the writer is gone (its lock file stays behind, stale): the same command resumes without the flag
    assert Path(f"{store}.lock").exists()
    resumed = _run(_train(store, tmp_path / "run", "--labels", str(labels), epochs=2), expect=0)
    assert "still being written" not in resumed.stderr and "resuming" in resumed.stdout
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2


def test_second_trainer_on_one_run_directory_is_refused(store, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(_train(store, out, epochs=500), env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        lock = out / "train.lock"
        deadline = time.monotonic() + TIMEOUT
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None, f"the first trainer ended early: {first.communicate()}"
            assert time.monotonic() < deadline, "the first trainer never locked its run directory"
            time.sleep(0.05)
        assert json.loads(lock.read_text())["pid"] == first.pid
        second = _run(_train(store, out, epochs=500), expect=2)
        line = _one_error_line(second)
        assert f"run directory {out} is in use by another trainer (pid {first.pid} on host {socket.gethostname()}" in line
        assert first.poll() is None  # the first one goes on
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
        _stop(first)
    assert first.returncode == -signal.SIGKILL
    # the killed trainer's lock is stale: a new trainer takes the directory over
    _run(_train(store, out, epochs=1), expect=0)
    assert not (out / "train.lock").exists()


def test_run_directory_that_is_a_file_is_one_line(store, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("a user's file\n")
    line = _one_error_line(_run(_train(store, out, epochs=1), expect=2))
    assert f"the run directory {out} is a file, not a directory" in line
    assert out.read_text() == "a user's file\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_run_resumed_on_one_process_is_refused_unless_asked(store, tmp_path):
    from scatterdist import __version__
    from scatterdist.store import read_store_info
    from scatterdist.train.metrics import read_metrics

    out = tmp_path / "ddp"
    port = _free_port()
    torchrun = [PY, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}"]
    _run(torchrun + _train(store, out)[1:], expect=0)
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and len(ranks["sha256"]) == 2 and ranks["sha256"][0] == ranks["sha256"][1]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["world_size"] == 2 and state["epoch"] == 1 and len(read_metrics(out / "metrics.jsonl")) == 1
    assert state["scatterdist_version"] == __version__ and re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)
    assert state["store"]["config_hash"] == read_store_info(store).config_hash != ""

    refused = _run(_train(store, out, epochs=2), expect=2)
    line = _one_error_line(refused)
    assert "written by a run of 2 process(es), this run has 1" in line and "--allow-world-size-change" in line
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # untouched

    accepted = _run(_train(store, out, "--allow-world-size-change", epochs=2), expect=0)
    assert "resuming" in accepted.stdout and "world size 2 -> 1" in accepted.stdout
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["world_size"] == 1


def test_store_recreated_with_another_configuration_is_refused(tmp_path):
    from scatterdist.train import TrainConfig, train
    from scatterdist.train.loop import RunConfigError

    store = tmp_path / "s.zarr"
    write_synthetic_store(store, n_maps=16, shard_size=8, seed=1, fields=("I",))
    cfg = dict(store=store, out=tmp_path / "run", batch_size=8, hidden=4, progress=False)
    train(TrainConfig(epochs=1, **cfg))
    write_synthetic_store(store, n_maps=16, shard_size=8, seed=1, fields=("I",), n_classes=3)  # other slopes
    with pytest.raises(RunConfigError, match="re-created with another configuration"):
        train(TrainConfig(epochs=2, **cfg))


def test_trainer_reads_the_store_only_through_scatterdist_store():
    files = sorted((ROOT / "scatterdist" / "train").glob("*.py")) + [ROOT / "scatterdist" / "cli" / "train.py"]
    pattern = re.compile(r"\b(import zarr|from zarr|import xarray|from xarray|open_zarr|open_group|open_array)\b")
    offenders = {str(f.relative_to(ROOT)): pattern.findall(f.read_text()) for f in files}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_bad_labels_file_is_one_line_before_anything_is_touched(store, tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("name,class\nsyn00000,1\n")
    line = _one_error_line(_run(_train(store, tmp_path / "run", "--labels", str(bad)), expect=2))
    assert "columns id (or map) and label" in line
    assert not (tmp_path / "run").exists()
