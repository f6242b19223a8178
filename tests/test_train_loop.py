"""The trainer for real: CLI processes, 2-node torchrun rendezvous on loopback, kill and resume,
learning a synthetic problem, checkpoint safety (issue 6). The 2-rank torchrun run is in test_trust_train.py."""

from __future__ import annotations

import io
import math
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scatterdist.train.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from scatterdist.train.data import store_split_counts
from scatterdist.train.metrics import read_metrics
from scatterdist.testing import write_synthetic_store

PY = sys.executable
TORCHRUN = [PY, "-m", "torch.distributed.run"]
EPOCHS = 6
TIMEOUT = 120


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == expect, f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def _train_cmd(store: str, out: Path, epochs: int = EPOCHS) -> list[str]:
    return [PY, "-m", "scatterdist", "train", store, "--out", str(out), "--epochs", str(epochs), "--seed", "5", "--no-progress"]


def _curves(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics(path / "metrics.jsonl")]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("train_loop") / "coeffs.zarr"
    write_synthetic_store(path, n_maps=96, shard_size=8, failed=(4,), seed=11, fields=("I",))
    return str(path)


@pytest.fixture(scope="module")
def reference_run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "reference"
    _run(_train_cmd(store, out))
    return out


def test_learns_synthetic_problem_and_evaluates(reference_run, store, tmp_path):
    rows = _curves(reference_run)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert (reference_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result_path = tmp_path / "eval.json"
    # no --no-progress: in a pipe no bar is drawn by default (no "evaluate:   0%|" fragments)
    proc = _run([PY, "-m", "scatterdist", "evaluate", str(reference_run), store, "--json", str(result_path)])
    assert "evaluate" not in proc.stderr and "\r" not in proc.stderr, proc.stderr
    result = json.loads(result_path.read_text())
    assert result["split"] == "test" and result["n_maps"] >= 10
    assert result["accuracy"] > 0.9, proc.stdout
    assert sum(map(sum, result["confusion"])) == result["n_maps"]
    assert "accuracy" in proc.stdout and "true \\ predicted" in proc.stdout
    # balanced per class (48 maps per class, map 4 failed): the counts the trainer recorded
    counts = store_split_counts(store)
    assert result["class_counts"] == counts["test"] and set(counts["test"].values()) <= {6, 7}
    assert load_checkpoint(reference_run / "checkpoint.pt")["split_counts"] == counts
    # progress bars: drawn when forced
    forced = subprocess.run([PY, "-m", "scatterdist", "evaluate", str(reference_run), store],
                            env={**_env(), "SCATTERDIST_PROGRESS": "1"}, capture_output=True, text=True, timeout=TIMEOUT)
    assert forced.returncode == 0 and "evaluate:" in forced.stderr
    # another store: every map with status 1 is evaluated
    other = tmp_path / "other.zarr"
    write_synthetic_store(other, n_maps=24, shard_size=8, failed=(1,), seed=99, fields=("I",))
    proc = _run([PY, "-m", "scatterdist", "evaluate", str(reference_run), str(other), "--json", str(result_path), "--no-progress"])
    result = json.loads(result_path.read_text())
    assert result["split"] == "all" and result["n_maps"] == 23 and result["accuracy"] > 0.9
    assert result["skipped"] == {"failed": 1, "todo": 0, "unlabelled": 0} and "23 maps (skipped: 1 failed)" in proc.stdout


def test_killed_run_resumes_to_the_same_metrics(reference_run, store, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(store, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        metrics = out / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint within the timeout"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = len(read_metrics(out / "metrics.jsonl"))
    assert 2 <= done < EPOCHS, "the kill did not land mid-training"
    resumed = _run(_train_cmd(store, out))
    assert f"resuming {out} after epoch {done} of {EPOCHS}" in resumed.stdout
    assert _curves(out) == _curves(reference_run)
    ref_state, state = load_checkpoint(reference_run / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for name, tensor in ref_state["model"].items():
        assert torch.equal(tensor, state["model"][name]), name


@pytest.mark.slow  # the default suite launches two c10d agents through deploy/slurm and deploy/pbs (test_deploy.py)
def test_two_node_launch_with_c10d_rendezvous(store, tmp_path):
    out = tmp_path / "two_nodes"
    port = _free_port()
    agent = TORCHRUN + [
        "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
        "--rdzv-id", "scatterdist-test", "--max-restarts", "0",
    ] + _train_cmd(store, out, epochs=1)[1:]
    procs = [subprocess.Popen(agent, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=30)
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(logs)
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["sha256"][0] == ranks["sha256"][1]


def test_checkpoint_integrity_and_weights_only(reference_run, store, tmp_path):
    # round trip
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.arange(4.0), "meta": {"epoch": 3, "names": ["a", "b"]}})
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(4.0)) and state["meta"]["names"] == ["a", "b"]
    with pytest.raises(TypeError, match="only tensors"):
        save_checkpoint(tmp_path / "bad.pt", {"x": Path("/")})

    # tampered: flip one byte inside the payload of a real run's checkpoint
    run = tmp_path / "tampered_run"
    run.mkdir()
    raw = bytearray((reference_run / "checkpoint.pt").read_bytes())
    outer = torch.load(io.BytesIO(bytes(raw)), weights_only=True)
    payload = outer["payload"].numpy().tobytes()
    pos = bytes(raw).find(payload[1000:1064]) + 10
    raw[pos] ^= 0xFF
    (run / "checkpoint.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="integrity check"):
        load_checkpoint(run / "checkpoint.pt")
    proc = _run([PY, "-m", "scatterdist", "evaluate", str(run), store, "--no-progress"], expect=2)
    assert "integrity check" in proc.stderr and "Traceback" not in proc.stderr

    # a payload that would run code when unpickled, with a *valid* hash: weights_only refuses it
    marker = tmp_path / "pwned"
    evil = io.BytesIO()
    torch.save({"model": _Evil(str(marker))}, evil)
    import hashlib

    data = evil.getvalue()
    torch.save({"format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
                "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_with_other_settings_is_refused(reference_run, store):
    cmd = _train_cmd(store, reference_run) + ["--lr", "0.1"]
    proc = _run(cmd, expect=2)
    assert "other settings" in proc.stderr and "'lr'" in proc.stderr


@pytest.mark.parametrize(
    ("fields", "mask", "n_inputs"),
    [(("I", "E", "B"), None, 9), (("I",), "per_map", 6), (("I", "E", "B"), "shared", 12)],
)
def test_masked_and_multi_field_stores_train_without_nan_and_learn(tmp_path, fields, mask, n_inputs):
    from scatterdist.train import TrainConfig, evaluate, train
    from scatterdist.train.loop import load_run

    store = tmp_path / "s.zarr"
    write_synthetic_store(store, n_maps=48, shard_size=8, n_channels=3, fields=fields, mask=mask, seed=2)
    torch.set_num_threads(1)
    history = train(TrainConfig(store=store, out=tmp_path / "run", epochs=4, batch_size=8, hidden=8, seed=1, progress=False))
    losses = [row[k] for row in history for k in ("train_loss", "val_loss")]
    assert all(map(math.isfinite, losses)), history
    model, state = load_run(tmp_path / "run")
    assert state["model_config"]["in_channels"] == n_inputs  # 3 paths x fields (+ 3 coverage channels if masked)
    assert state["store"]["fields"] == list(fields) and state["store"]["coverage_channels"] == (mask is not None)
    assert len(state["store"]["channel_labels"]) == n_inputs
    result = evaluate(tmp_path / "run", store, progress=False)
    assert result["split"] == "test" and math.isfinite(result["loss"]) and result["n_maps"] >= 6
    assert result["accuracy"] >= 0.8  # the class signal survives the cut and the NaN fill


def test_trains_on_a_cut_sky_store_written_by_the_pipeline(tmp_path):
    """The real chain: simulated skies with a Galactic cut -> pipeline (masked transform) -> trainer."""
    from scatterdist import Scattering
    from scatterdist.inputs import Catalog
    from distributed import Client, LocalCluster

    from scatterdist.pipeline import scatter
    from scatterdist.sims import SimulationSpec
    from scatterdist.train import TrainConfig, evaluate, train
    from scatterdist.train.loop import load_run

    store = tmp_path / "cut.zarr"
    spec = SimulationSpec(kind="mixed", nside=32, n=16, seed=0, alpha=0.5, galactic_cut=20)
    # a real Dask cluster on loopback, its worker in this process (no interpreter start-up)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        summary = scatter(Catalog.from_simulation(spec), str(store), Scattering(32).config(), client=client,
                          shard_size=4, progress=False)
    assert summary.failed == 0
    torch.set_num_threads(1)
    history = train(TrainConfig(store=store, out=tmp_path / "run", epochs=2, batch_size=4, hidden=8, progress=False))
    assert all(math.isfinite(row[k]) for row in history for k in ("train_loss", "val_loss"))
    _, state = load_run(tmp_path / "run")
    assert state["store"]["coverage_channels"] and state["model_config"]["in_channels"] == 2 * 7
    result = evaluate(tmp_path / "run", store, progress=False)
    assert math.isfinite(result["loss"]) and sum(result["class_counts"].values()) == result["n_maps"]
