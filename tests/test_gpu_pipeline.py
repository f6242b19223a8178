"""The GPU feeding of the pipeline, tested on CPU (issue 11): the torch backend's ``device="auto"``
falls back to the CPU, the prefetching feeder really loads batch n+1 while batch n is transformed
(timestamps recorded by the feeder, not timing thresholds), and a worker killed mid-batch loses
nothing. Real LocalClusters on loopback, real Zarr stores, SIGKILLed worker processes. The
``gpu``-marked test runs the same pipeline on a CUDA device when one is present."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from scatterdist import Scattering
from scatterdist import store as zstore
from scatterdist.inputs import Catalog
from scatterdist.feed import BatchFeeder, DeviceStager, overlap_summary, split_batches
from scatterdist.pipeline import resolve_device, scatter

REPO = Path(__file__).resolve().parents[1]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cluster(**config):
    with dask.config.set(config):
        return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address="127.0.0.1:0")


@pytest.fixture(scope="module")
def client():
    with _cluster() as cluster, Client(cluster) as c:
        yield c


def _maps_store(path: Path, n: int, nside: int, seed: int) -> np.ndarray:
    maps = np.random.default_rng(seed).standard_normal((n, 12 * nside**2))
    xr.Dataset({"maps": (("map", "pixel"), maps)},
               coords={"map": np.array([f"sky{i:03d}" for i in range(n)], dtype=object)}
               ).to_zarr(path, zarr_format=3, consolidated=False)
    return maps


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("gsmall")
    maps = _maps_store(d / "maps.zarr", 24, 32, seed=3)
    return d / "maps.zarr", maps, Scattering(nside=32)(maps)[:, None]  # (map, field I, path, pixel)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("gbig")
    maps = _maps_store(d / "maps.zarr", 48, 64, seed=4)
    return d / "maps.zarr", maps, Scattering(nside=64)(maps)[:, None]


def _torch_config(nside: int, device: str = "auto") -> dict:
    return {**Scattering(nside=nside).config(), "backend": "torch", "device": device}


def _close(got: np.ndarray, expected: np.ndarray) -> None:
    """torch float32 against the float64 numpy transform (a misplaced row is off by O(1))."""
    assert np.isfinite(got).all() and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()  # float32 scattering contract


# ---------------------------------------------------------------------- the feeder itself


def test_feeder_loads_ahead_in_order_and_bounded():
    started: list[tuple[int, int]] = []  # (batch loaded, batch the consumer was at)
    at = [-1]

    def load(batch):
        started.append((batch[0], at[0]))
        time.sleep(0.01)
        return [v * 10 for v in batch]

    batches = split_batches(list(range(12)), 2)
    assert [list(b) for b in batches[:2]] == [[0, 1], [2, 3]] and len(batches) == 6
    with BatchFeeder(batches, load, prefetch=2) as feed:
        seen = []
        for index, batch, out in feed:
            at[0] = index
            t0 = time.perf_counter()
            time.sleep(0.02)  # the "transform"
            feed.transformed(index, t0, time.perf_counter())
            seen.append((index, list(batch), out))
        timings = list(feed.timings)
    assert seen == [(i, list(b), [v * 10 for v in b]) for i, b in enumerate(batches)]
    # Never more than `prefetch` batches ahead of the consumer (bounded memory) ...
    assert all(b <= max(c, 0) + 2 for b, c in [(s // 2, c) for s, c in started]), started
    # ... and every next batch's load starts before this batch's transform ends.
    for a, b in zip(timings[:-1], timings[1:]):
        assert b.load_start < a.transform_end
    assert overlap_summary(timings)["overlapped"] == 1.0

    # prefetch=0 is the baseline: each load starts after the previous transform ended.
    with BatchFeeder(batches, load, prefetch=0) as feed:
        for index, _, _ in feed:
            t0 = time.perf_counter()
            time.sleep(0.005)
            feed.transformed(index, t0, time.perf_counter())
        assert overlap_summary(feed.timings)["overlapped"] == 0.0


def test_feeder_raises_at_the_failing_batch_and_stops_cleanly():
    calls = []

    def load(batch):
        calls.append(batch[0])
        if batch[0] == 4:
            raise OSError("disk gone")
        return batch

    feed = BatchFeeder(split_batches(list(range(40)), 2), load, prefetch=3)
    got = []
    with pytest.raises(OSError, match="disk gone"):
        with feed:
            for index, batch, _ in feed:
                got.append(index)
    assert got == [0, 1]
    assert max(calls) <= 2 * (2 + 3)  # nothing loaded far beyond the failure: loads were cancelled
    with pytest.raises(ValueError, match="prefetch"):
        BatchFeeder([], load, prefetch=-1)


def test_stager_cpu_paths_and_device_auto():
    import torch

    x = np.random.default_rng(0).standard_normal((3, 48))
    staged = DeviceStager().stage(x)
    assert isinstance(staged.data, np.ndarray) and staged.data.dtype == np.float64
    cpu = DeviceStager(torch.device("cpu"), torch.float32)
    t = cpu.ready(cpu.stage(x))
    assert t.dtype == torch.float32 and t.device.type == "cpu"
    np.testing.assert_allclose(t.numpy(), x, rtol=1e-6)
    assert resolve_device("auto") == ("cuda" if _cuda() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not _cuda():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")


def test_workers_sharing_a_hosts_gpus_get_one_each():
    from scatterdist.pipeline import plan_gpus

    def info(n, cvd=None):
        return {"cuda": n, "CUDA_VISIBLE_DEVICES": cvd, "names": ["GPU"] * n, "pid": 1}

    # A plain LocalCluster of 6 workers on a 4-GPU host (all see the same 4 GPUs): round-robin.
    local = {f"tcp://10.0.0.1:{4000 + k}": info(4) for k in range(6)}
    assert sorted(plan_gpus(local).values()) == [0, 0, 1, 1, 2, 3]
    # dask-cuda rotates CUDA_VISIBLE_DEVICES (each worker's GPU 0 is its own): left alone, as are
    # single-GPU workers, CPU-only workers and workers alone on their host.
    cuda = {f"tcp://10.0.0.2:{4000 + k}": info(2, ",".join(map(str, [k, 1 - k]))) for k in range(2)}
    single = {f"tcp://10.0.0.3:{4000 + k}": info(1, str(k)) for k in range(2)}
    alone = {"tcp://10.0.0.4:4000": info(8), "tcp://10.0.0.5:4000": info(0)}
    assert plan_gpus({**cuda, **single, **alone}) == {}
    # Two hosts are planned separately.
    two = {**{f"tcp://10.0.0.6:{k}": info(2) for k in (1, 2)}, **{f"tcp://10.0.0.7:{k}": info(2) for k in (1, 2)}}
    assert plan_gpus(two) == {"tcp://10.0.0.6:1": 0, "tcp://10.0.0.6:2": 1, "tcp://10.0.0.7:1": 0, "tcp://10.0.0.7:2": 1}


# ---------------------------------------------------------------------- through Dask


def test_device_auto_falls_back_to_cpu_and_prefetch_overlaps(client: Client, small, tmp_path: Path):
    maps_path, _, expected = small
    cat = Catalog.from_inputs([str(maps_path)])
    summary = scatter(cat, tmp_path / "a.zarr", _torch_config(32), client=client, shard_size=2,
                      batch_size=2, shards_per_task=3, progress=False)
    assert (summary.ok, summary.failed) == (24, 0)
    assert summary.devices == ({"cuda": 4} if _cuda() else {"cpu": 4})  # 12 shards, 3 per task
    _close(zstore.open_coefficients(tmp_path / "a.zarr").coefficients.values, expected)
    # Batches span shards (2 maps per batch, 3 shards of 2 per task: 3 batches per task), and in
    # every task the load of batch n+1 started before the transform of batch n ended.
    assert len(summary.timings) == 4 and all(len(t) == 3 for t in summary.timings)
    assert 0 < summary.device_busy <= 1
    for task in summary.timings:
        rows = sorted(task)
        assert all(b[2] < a[5] for a, b in zip(rows[:-1], rows[1:])), rows
        assert overlap_summary(task)["overlapped"] == 1.0
    # Control: without prefetch the same measurement shows no overlap at all.
    plain = scatter(cat, tmp_path / "b.zarr", _torch_config(32), client=client, shard_size=2,
                    batch_size=2, shards_per_task=3, prefetch=0, progress=False)
    assert plain.ok == 24
    assert all(overlap_summary(t)["overlapped"] == 0.0 for t in plain.timings)
    _close(zstore.read_rows(tmp_path / "b.zarr", 0, 24), expected)


def test_cli_device_flags(client: Client, small, tmp_path: Path, capsys):
    from scatterdist.cli import main as cli_main

    maps_path, _, expected = small
    out = tmp_path / "c.zarr"
    base = [sys.executable, "-m", "scatterdist", "scatter", str(maps_path), "--output", str(out),
            "--cluster", client.scheduler.address, "--no-progress"]
    # Refusals through the real command, in this process (no interpreter start-up to pay).
    assert cli_main([*base[3:], "--device", "cuda"]) == 2
    assert "--device cuda needs --backend torch" in capsys.readouterr().err
    if not _cuda():
        assert cli_main([*base[3:], "--backend", "torch", "--device", "cuda"]) == 2
        refusal = [ln for ln in capsys.readouterr().err.splitlines() if "refused" in ln]
        assert len(refusal) == 1 and "2 of 2 worker(s) see no CUDA device" in refusal[0]
        assert not out.exists()  # refused before anything was written
    # No --no-progress: stderr is a pipe here, so no bar is drawn (no "scatter:   0%|" fragments).
    auto = subprocess.run([*base[:-1], "--backend", "torch", "--gpu-batch", "3"], capture_output=True,
                          text=True, timeout=240)
    assert auto.returncode == 0, auto.stderr
    seen = "2 of 2 worker(s) see a GPU" if _cuda() else "none of 2 worker(s) sees a GPU; transforms run on CPU"
    assert seen in auto.stderr
    assert "tasks per device {'cpu'" in auto.stdout or _cuda()
    _close(zstore.open_coefficients(out).coefficients.values, expected)
    assert "scatter:" not in auto.stderr  # no progress bar fragments in a pipe


def _warm(client: Client, config: dict) -> None:
    """Build the transform on every worker (torch import, filters) before a run is timed or killed."""
    from scatterdist.pipeline import _scattering

    client.run(lambda cfg: _scattering(cfg) and None, config)


def _kill_busy_worker(client: Client, out: Path, runner: threading.Thread, pids: dict) -> int:
    """Wait until the run has written a shard, then SIGKILL a worker that is running a task."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        if (out / "zarr.json").exists():
            try:
                status = zstore.read_status(out)
            except (FileNotFoundError, KeyError):
                status = None
            if status is not None and (status != 0).any():
                break
        assert runner.is_alive(), "the run ended before any shard was seen"
        time.sleep(0.005)
    assert (status == 0).any(), "the run finished before the kill"
    busy = [w for w, tasks in client.processing().items() if tasks]
    assert busy, "no task in flight to kill"
    os.kill(pids[busy[0]], signal.SIGKILL)
    return pids[busy[0]]


def test_worker_killed_mid_batch_is_retried(client: Client, big, tmp_path: Path):
    maps_path, _, expected = big
    cat = Catalog.from_inputs([str(maps_path)])
    out = tmp_path / "k.zarr"
    client.wait_for_workers(2, timeout=60)
    _warm(client, _torch_config(64))
    pids = client.run(os.getpid)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(s=scatter(
        cat, out, _torch_config(64), client=client, shard_size=2, batch_size=2, shards_per_task=4,
        progress=False)))
    runner.start()
    killed = _kill_busy_worker(client, out, runner, pids)
    runner.join(timeout=240)
    assert not runner.is_alive()
    summary = result["s"]
    assert (summary.ok, summary.failed) == (48, 0), summary.failures
    ds = zstore.open_coefficients(out)
    assert (ds.status.values == 1).all() and (ds.error.values == "").all()
    _close(ds.coefficients.values, expected)
    client.wait_for_workers(2, timeout=60)
    assert killed not in client.run(os.getpid).values()


def test_worker_killed_without_retries_marks_maps_failed_with_reason(client: Client, big, tmp_path: Path):
    """allowed-failures 0: the dead worker's task is not retried. Every map still ends ok or failed
    with the reason (none left todo), shards the dead task had written keep their results, and
    --retry-failed then completes the store."""
    maps_path, _, expected = big
    cat = Catalog.from_inputs([str(maps_path)])
    out = tmp_path / "f.zarr"
    scheduler = client.cluster.scheduler  # LocalCluster: the scheduler lives in this process
    allowed = scheduler.allowed_failures
    client.wait_for_workers(2, timeout=60)
    _warm(client, _torch_config(64))
    pids = client.run(os.getpid)
    scheduler.allowed_failures = 0
    try:
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(s=scatter(
            cat, out, _torch_config(64), client=client, shard_size=2, batch_size=2, shards_per_task=4,
            retries=0, progress=False)))
        runner.start()
        _kill_busy_worker(client, out, runner, pids)
        runner.join(timeout=240)
        assert not runner.is_alive()
    finally:
        scheduler.allowed_failures = allowed
    summary = result["s"]
    status = zstore.read_status(out)
    errors = zstore.open_coefficients(out).error.values
    assert (status != 0).all(), "a map was left todo"
    assert 0 < summary.failed < 48 and summary.ok + summary.failed == 48
    assert int((status == -1).sum()) == summary.failed
    assert all("worker died" in errors[i] for i in np.flatnonzero(status == -1))
    assert {m for m, _ in summary.failures} == set(np.array(cat.ids)[status == -1])
    again = scatter(cat, out, _torch_config(64), client=client, retry_failed=True, progress=False)
    assert (again.ok, again.failed) == (summary.failed, 0)
    ds = zstore.open_coefficients(out)
    assert (ds.status.values == 1).all()
    _close(ds.coefficients.values, expected)


@pytest.mark.gpu
def test_gpu_worker_pipeline_matches_the_bare_transform(small, tmp_path: Path):
    """On a CUDA machine: pinned memory + non_blocking copies on a side stream give the same
    coefficients as the bare torch transform on the GPU."""
    import torch

    maps_path, maps, _ = small
    cat = Catalog.from_inputs([str(maps_path)])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        summary = scatter(cat, tmp_path / "g.zarr", _torch_config(32, "cuda"), client=c,
                          shard_size=2, batch_size=4, progress=False)
    assert summary.ok == 24 and set(summary.devices) == {"cuda"}
    bare = Scattering(nside=32, backend="torch", device="cuda")(torch.as_tensor(maps, dtype=torch.float32))
    np.testing.assert_allclose(zstore.read_rows(tmp_path / "g.zarr", 0, 24)[:, 0], bare.cpu().numpy(),
                               rtol=1e-5, atol=1e-6 * float(bare.abs().max()))


def test_oom_retry_runs_after_the_failed_attempt_is_freed():
    """The half batches run once the failed attempt's tensors are unreachable (outside the
    ``except`` block, whose traceback would keep them alive), and the limit sticks."""
    import gc
    import weakref

    from scatterdist.pipeline import task as ptask

    class Workspace:  # stands for the device tensors of an attempt
        pass

    attempts: list[tuple[int, bool]] = []
    last: list = []

    class FakeScattering:
        n_paths, npix_out = 2, 12
        _scatterdist_key = "oom-retry-test"

        def __call__(self, rows):
            gc.collect()
            attempts.append((len(rows), bool(last) and last[-1]() is None))
            work = Workspace()
            last.append(weakref.ref(work))
            if len(rows) > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return np.ones((len(rows), self.n_paths, self.npix_out), dtype=np.float32)

    ptask._BATCH_LIMIT.pop("oom-retry-test", None)
    try:
        tr = ptask._Transformer(FakeScattering(), None, 1)
        out, cov, errors = tr(np.zeros((8, 48), dtype=np.float32), None)
        assert errors == [""] * 8 and np.all(out == 1.0)
        assert attempts[0] == (8, False)
        # every retry started with the previous attempt's workspace already collected
        assert all(freed for _, freed in attempts[1:]), attempts
        assert [n for n, _ in attempts] == [8, 4, 2, 2, 4, 2, 2] or max(n for n, _ in attempts[1:]) <= 4
        assert ptask._BATCH_LIMIT["oom-retry-test"] == 2
    finally:
        ptask._BATCH_LIMIT.pop("oom-retry-test", None)


def test_default_gpu_batch_is_sized_to_free_memory():
    from scatterdist.pipeline import task as ptask

    h100 = 79 * 2**30
    assert ptask.gpu_batch_size({"nside": 512}, "cuda:0", free_bytes=h100) == ptask.GPU_BATCH
    at2048 = ptask.gpu_batch_size({"nside": 2048}, "cuda:0", free_bytes=h100)
    assert 4 <= at2048 <= 14  # the model: 24 GiB at batch 4, +3.2 GiB per map: fits 80 GB with the tables
    assert ptask.gpu_batch_size({"nside": 2048}, "cuda:0", free_bytes=39 * 2**30) == 5  # A100 40 GB: ~28 GiB
    assert ptask.gpu_batch_size({"nside": 2048, "dtype": "float64"}, "cuda:0", free_bytes=h100) == at2048 // 2
    assert ptask.gpu_batch_size({"nside": 4096}, "cuda:0", free_bytes=10 * 2**30) == 1
    assert ptask.default_batch_size({"backend": "numpy", "nside": 2048}, "cuda:0") == ptask.TRANSFORM_BATCH


def test_gpu_prefetch_depth_is_bounded_by_bytes():
    """Staged batches (pinned host + device copies) stay within PREFETCH_BYTES, one ahead at least."""
    from scatterdist.pipeline import task as ptask

    npix512, npix2048 = 12 * 512**2, 12 * 2048**2
    assert ptask.gpu_prefetch(2, 32, 1, npix512) == 2  # 0.4 GB a batch
    assert ptask.gpu_prefetch(2, 12, 1, npix2048) == 1  # 2.4 GB a batch: one ahead
    assert ptask.gpu_prefetch(2, 32, 3, npix2048) == 1  # 19 GB a batch: still one, never zero
    assert ptask.gpu_prefetch(0, 32, 1, npix512) == 0  # the caller's "no prefetch" stands
    ahead = ptask.gpu_prefetch(8, 4, 1, npix2048)
    assert ahead * 4 * npix2048 * 4 <= ptask.PREFETCH_BYTES


def test_mask_geometry_is_built_in_the_loader_threads(tmp_path: Path, monkeypatch):
    """Masked maps: their geometry is built while loading (feed threads), not on the consumer
    thread that drives the device; the stored numbers are those of the direct call."""
    from scatterdist.scattering import masked
    from scatterdist.sphere.mask import read_mask

    built: list[str] = []
    original = masked.MaskGeometry

    def recording(*args, **kwargs):
        built.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(masked, "MaskGeometry", recording)
    wmap = Path(__file__).parent / "data" / "wmap_temperature_analysis_mask_r9_7yr_v4_udgraded32.fits"
    text = "sim:kind=mixed,n=4,nside=32,seed=2,alpha=1.0"
    sc = Scattering(nside=32)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,  # in-process: the patch applies
                      dashboard_address=None) as cluster, Client(cluster) as client:
        summary = scatter(Catalog.from_inputs([text]), tmp_path / "m.zarr", sc.config(), client=client,
                          shard_size=2, progress=False, mask=wmap)
    assert (summary.ok, summary.failed) == (4, 0)
    # the worker's task thread (the device's consumer) builds none; the client (MainThread)
    # builds the run's shared coverage once, before any task
    assert any(name.startswith("scatterdist-feed") for name in built), built
    assert all(name.startswith("scatterdist-feed") or name == "MainThread" for name in built), built
    ds = zstore.open_coefficients(tmp_path / "m.zarr")
    mask = read_mask(str(wmap), 32)
    np.testing.assert_allclose(ds.coverage.values, sc.coverage(mask), rtol=1e-6, atol=1e-7)


def test_shards_per_task_follow_the_workers_free_memory_batch(monkeypatch):
    """The client groups shards for BATCHES_PER_TASK batches of the size the workers derive from
    their device's free memory (asked on the workers themselves), not for a constant batch."""
    from scatterdist.pipeline import client as pclient
    from scatterdist.pipeline import device as pdevice
    from scatterdist.pipeline import task as ptask

    config = {"backend": "torch", "nside": 2048, "device": "auto"}
    # the pure rule: 4 batches of the worker batch per task, never fewer tasks than workers
    assert pclient._shards_per_task(config, None, 4, 100, 2, worker_batch=12) == 12
    assert pclient._shards_per_task(config, None, 4, 100, 2, worker_batch=5) == 5
    assert pclient._shards_per_task(config, 8, 4, 100, 2, worker_batch=5) == 8  # an explicit batch wins
    assert pclient._shards_per_task(config, None, 4, 6, 2, worker_batch=32) == 3  # 2 workers: 2 tasks
    assert pclient._shards_per_task({"backend": "numpy"}, None, 4, 100, 2, worker_batch=32) == 1
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,  # in-process: the patches apply
                      dashboard_address=None) as cluster, Client(cluster) as client:
        # a CPU worker: the CPU batch
        assert pclient.workers_batch_size(client, config) == ptask.TRANSFORM_BATCH
        # a worker whose device is a CUDA GPU with 39 GiB free: the free-memory batch at nside 2048
        seen = []
        monkeypatch.setattr(pdevice, "resolve_device", lambda device: "cuda:1")

        def free_39_gib(cfg, device=None, free_bytes=None):
            seen.append(device)
            return real_gpu_batch_size(cfg, device, free_bytes=39 * 2**30)

        real_gpu_batch_size = ptask.gpu_batch_size
        monkeypatch.setattr(ptask, "gpu_batch_size", free_39_gib)
        assert pclient.workers_batch_size(client, config) == 5
        assert seen == ["cuda:1"]
