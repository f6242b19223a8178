"""Dask orchestration: catalog -> tasks of whole shards (load, transform, write) -> Zarr store.

Design (measured in ``benchmarks/pipeline.py``): **a task owns whole shards**. It loads its
maps from their references, transforms them with a per-worker cached transform and writes
each shard whole (data, then status). The alternative, per-map transform tasks plus one
writer task per shard, moves every coefficient array between processes and adds a task per
shard for no gain.

Inside a task the maps are cut into **transform batches** (``batch_size``, ``--gpu-batch``),
which may span several of the task's shards, and fed by a :class:`scatterdist.feed.BatchFeeder`:
while the device transforms batch ``n``, loader threads decode/simulate/read batches
``n + 1 .. n + prefetch`` and stage them (pinned host memory and a ``non_blocking`` copy on
a side stream on CUDA). Finished shards are written by a writer thread, so neither loading
nor writing waits for the device, nor the device for them. On the numpy backend a task is
one shard (CPU workers are one process per core); on the torch backend a task holds enough
shards for several device batches (``shards_per_task``). A batch that runs out of device
memory is split in halves (and the worker keeps the smaller size).

The device follows the worker: ``config["device"] = "auto"`` (the default of the torch
backend) means the worker's GPU when torch sees one, else its CPU, on any kind of cluster.

The client keeps a bounded window of tasks in flight (``distributed.as_completed``, refilled
as tasks finish), so a catalog of a million maps never becomes a million futures. A bad map
becomes ``status=-1`` plus a message; a raised error or a dead worker is retried by Dask
(``retries=`` and the scheduler's ``allowed-failures``), and a retried task skips the shards
its dead predecessor already wrote; a shard that still fails is marked failed with the reason.
Re-running resumes: shards whose maps are all done are skipped, failed maps are recomputed
only with ``retry_failed=True``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed import Client, KilledWorker, as_completed

from scatterdist import store as zstore
from scatterdist.catalog import BadMapError, Catalog, MapRef, load_maps
from scatterdist.feed import BatchFeeder, DeviceStager, split_batches

__all__ = ["ScatterSummary", "ShardResult", "ShardTask", "TaskResult", "scatter",
           "default_shard_size", "default_batch_size", "run_shard", "run_shards",
           "resolve_device", "worker_devices", "DEVICES"]

#: Maps per transform call on the numpy backend (bounds worker memory).
TRANSFORM_BATCH = 8
#: Default maps per transform call on a CUDA device (halved automatically on out-of-memory).
GPU_BATCH = 32
#: Device batches a torch task holds at least (so the loads of one overlap the transforms).
BATCHES_PER_TASK = 4
#: Batches loaded ahead of the one being transformed.
PREFETCH = 2
DEVICES = ("auto", "cuda", "cpu")


@dataclass
class ShardResult:
    """What happened to one shard: maps ok/failed (``failures`` = (id, message)) and its seconds."""

    shard: int
    ok: int
    failed: int
    reused: int
    failures: list[tuple[str, str]]
    seconds: float
    worker_pid: int


@dataclass
class ShardTask:
    """One shard handed to a task: maps ``start .. start+len(ids)``, their references, and
    ``recompute[i]`` False for maps already ok in the store (kept as they are)."""

    shard: int
    start: int
    ids: Sequence[str]
    refs: Sequence[MapRef]
    recompute: Sequence[bool]


@dataclass
class TaskResult:
    """What one task did: its shards, the device it ran on, the transform batch size it ended
    with, and per batch ``(index, size, load_start, load_end, transform_start, transform_end)``
    (``time.perf_counter`` seconds on the worker)."""

    shards: list[ShardResult]
    device: str
    batch_size: int
    timings: list[tuple[int, int, float, float, float, float]]
    seconds: float
    worker_pid: int


@dataclass
class ScatterSummary:
    """Outcome of :func:`scatter`.

    ``ok``/``failed``: maps computed in this run; ``skipped``: maps left as they were (done
    earlier, or failed earlier without ``retry_failed``); ``maps_per_s`` = (ok + failed) /
    ``seconds`` (wall time of the compute phase); ``failures``: (map id, message) of this run.
    ``shards_computed``/``shards_skipped``: shards submitted / left alone. ``devices``: tasks
    per device (``{"cuda:0": 3, "cpu": 1}``); ``timings``: every task's batch timings
    (:class:`TaskResult`), for overlap and device-idle figures (:func:`scatterdist.feed.overlap_summary`).
    """

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    maps_per_s: float = 0.0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    shards_computed: int = 0
    shards_skipped: int = 0
    store: str = ""
    devices: dict[str, int] = field(default_factory=dict)
    timings: list[list[tuple[int, int, float, float, float, float]]] = field(default_factory=list)

    @property
    def all_ok(self) -> bool:
        """True when this run left no failed map (see the store's status for earlier ones)."""
        return self.failed == 0


def default_shard_size(n_maps: int) -> int:
    """K = ceil(n/16) clipped to [1, 32]: >= 16 shards for parallelism, few-MB shards at scale."""
    return int(min(32, max(1, math.ceil(n_maps / 16))))


def default_batch_size(config: dict[str, Any], device: str | None = None) -> int:
    """Maps per transform call: :data:`GPU_BATCH` on a CUDA device, :data:`TRANSFORM_BATCH` otherwise."""
    if config.get("backend", "numpy") == "torch" and (device or "").startswith("cuda"):
        return GPU_BATCH
    return TRANSFORM_BATCH


# ---------------------------------------------------------------------- worker side

_SC_CACHE: dict[str, Any] = {}
_SC_LOCK = threading.Lock()
#: Largest batch that fitted the device, per transform (set after an out-of-memory split).
_BATCH_LIMIT: dict[str, int] = {}


def resolve_device(device: str | None) -> str:
    """``"auto"``/None -> ``"cuda"`` when torch sees a GPU in this process, else ``"cpu"``.

    ``"cuda"`` without a visible GPU raises ValueError. On a dask-cuda worker (or any worker
    started with ``CUDA_VISIBLE_DEVICES`` set to one GPU) ``"cuda"`` is that worker's GPU.
    """
    device = "auto" if device is None else str(device)
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device must be one of {DEVICES} (or cuda:N), got {device!r}")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return device if device.startswith("cuda") else "cuda"
    if device == "auto":
        return "cpu"
    raise ValueError(f"--device {device}: torch on worker pid {os.getpid()} sees no CUDA device "
                     "(CUDA_VISIBLE_DEVICES={!r}); use --device auto or cpu, or GPU workers"
                     .format(os.environ.get("CUDA_VISIBLE_DEVICES")))


def worker_devices() -> dict[str, Any]:
    """What this worker process offers: ``{"cuda": n visible GPUs, "names": [...], "pid": ...}``."""
    info: dict[str, Any] = {"pid": os.getpid(), "cuda": 0, "names": [],
                            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return info
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.device_count()
        info["names"] = [torch.cuda.get_device_name(i) for i in range(info["cuda"])]
    return info


def _check_device(config: dict[str, Any]) -> None:
    """Refuse a device the config cannot use (checked on the client; resolved on each worker)."""
    device = config.get("device")
    if config.get("backend", "numpy") == "torch":
        if device is not None and device not in DEVICES and not str(device).startswith("cuda:"):
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    elif device not in (None, "auto", "cpu"):
        raise ValueError(f"device {device!r} needs the torch backend (--backend torch); "
                         "the numpy backend runs on CPU")


def _resolved_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the torch backend's device resolved on this worker."""
    _check_device(config)
    config = dict(config)
    if config.get("backend", "numpy") == "torch":
        config["device"] = resolve_device(config.get("device"))
    else:
        config.pop("device", None)
    return config


def _scattering(config: dict[str, Any]) -> Any:
    """The transform for ``config``, built once per worker process (keyed by its resolved config)."""
    config = _resolved_config(config)
    key = zstore.config_hash(config) + repr(sorted((k, repr(v)) for k, v in config.items()))
    with _SC_LOCK:
        sc = _SC_CACHE.get(key)
        if sc is None:
            from scatterdist.transforms import build_transform

            sc = _SC_CACHE[key] = build_transform(config)
            sc._scatterdist_key = key
        return sc


def _device(sc: Any) -> Any:
    """The torch device of a transform, or None for numpy transforms."""
    backend = getattr(sc, "backend", None)
    return getattr(backend, "device", None) if getattr(backend, "name", "") == "torch" else None


def _to_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _free_device_memory(device: Any) -> None:
    if device is not None and getattr(device, "type", "") == "cuda":
        import torch

        torch.cuda.empty_cache()


@dataclass
class _Loaded:
    """A loaded batch: per item the map or its BadMapError, and the good maps staged."""

    results: list[Any]
    good: list[int]
    staged: Any


class _Transformer:
    """Transforms staged batches; splits a batch that runs out of device memory, and redoes a
    batch map by map when the transform refuses one of its maps (only the culprit fails)."""

    def __init__(self, sc: Any, device: Any) -> None:
        self.sc, self.device = sc, device

    def __call__(self, x: Any) -> tuple[np.ndarray | None, list[str]]:
        """``x (B, npix)`` -> (coefficients ``(B, P, N)`` float32 or None where all failed, per-row errors)."""
        n = len(x)
        out = np.full((n, self.sc.n_paths, self.sc.npix_out), np.nan, dtype=np.float32)
        errors = [""] * n
        self._run(x, 0, out, errors)
        return out, errors

    def _run(self, x: Any, offset: int, out: np.ndarray, errors: list[str]) -> None:
        n = len(x)
        key = getattr(self.sc, "_scatterdist_key", "")
        limit = _BATCH_LIMIT.get(key)
        if limit is not None and n > limit:
            for a in range(0, n, limit):
                self._run(x[a : a + limit], offset + a, out, errors)
            return
        try:
            out[offset : offset + n] = _to_numpy(self.sc(x))
        except ValueError:
            # A map the loader accepted but the transform refuses (InvalidMapError is a
            # ValueError): redo map by map so only the culprit fails.
            if n == 1:
                try:
                    out[offset] = _to_numpy(self.sc(x))
                except ValueError as exc:
                    errors[offset] = f"{type(exc).__name__}: {exc}"
                return
            for i in range(n):
                self._run(x[i : i + 1], offset + i, out, errors)
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            _free_device_memory(self.device)
            if n == 1:
                errors[offset] = (f"out of device memory for one map on {self.device}: "
                                  "use a larger GPU or --device cpu")
                return
            half = (n + 1) // 2
            _BATCH_LIMIT[key] = min(_BATCH_LIMIT.get(key, n), half)
            self._run(x[:half], offset, out, errors)
            self._run(x[half:], offset + half, out, errors)


def run_shards(
    store_path: str,
    shards: Sequence[ShardTask],
    config: dict[str, Any],
    batch_size: int | None = None,
    prefetch: int = PREFETCH,
) -> TaskResult:
    """Task body: load + transform the maps of ``shards`` in device batches, write each shard whole.

    Batches of ``batch_size`` maps (default :func:`default_batch_size` of the worker's
    device) span shards; ``prefetch`` batches are loaded ahead in threads while the device
    works; each shard is written (data, then status) by a writer thread as soon as its last
    map is transformed. A shard whose todo maps are already ok in the store (written by an
    earlier attempt of this task whose worker died) is not recomputed. Per-map problems
    become status -1 with a message.
    """
    t_task = time.perf_counter()
    sc = _scattering(config)
    device = _device(sc)
    dev_name = str(device) if device is not None else "cpu"
    bsize = int(batch_size) if batch_size else default_batch_size(config, dev_name)
    key = getattr(sc, "_scatterdist_key", "")
    if key in _BATCH_LIMIT:
        bsize = min(bsize, _BATCH_LIMIT[key])
    P, N = sc.n_paths, sc.npix_out
    status_now = zstore.read_status(store_path)
    results: list[ShardResult | None] = [None] * len(shards)
    coeffs: list[np.ndarray] = []
    status: list[np.ndarray] = []
    errors: list[list[str]] = []
    remaining: list[int] = []
    t_shard = [t_task] * len(shards)
    items: list[tuple[int, int]] = []  # (position of the shard in `shards`, map index in it)
    for s, task in enumerate(shards):
        k = len(task.refs)
        todo = [i for i in range(k) if task.recompute[i]]
        now = status_now[task.start : task.start + k]
        if todo and all(now[i] == zstore.STATUS_OK for i in todo):
            # Written by an earlier attempt of this task (its worker died afterwards).
            results[s] = ShardResult(task.shard, len(todo), 0, k - len(todo), [], 0.0, os.getpid())
            todo = []
        coeffs.append(np.full((k, P, N), np.nan, dtype=np.float32))
        status.append(np.full(k, zstore.STATUS_FAILED, dtype=np.int8))
        errors.append([""] * k)
        remaining.append(len(todo))
        if results[s] is not None:
            continue
        keep = [i for i in range(k) if not task.recompute[i]]
        if keep:
            old = zstore.read_rows(store_path, task.start, task.start + k)
            coeffs[s][keep] = old[keep]
            status[s][keep] = zstore.STATUS_OK
        items.extend((s, i) for i in todo)

    stager = DeviceStager(device, getattr(sc.backend, "dtype", None) if device is not None else None)

    def load(batch: Sequence[tuple[int, int]]) -> _Loaded:
        loaded = load_maps([shards[s].refs[i] for s, i in batch], sc.nside)
        good = [j for j, m in enumerate(loaded) if not isinstance(m, BadMapError)]
        staged = stager.stage(np.stack([loaded[j] for j in good])) if good else None
        return _Loaded([m if isinstance(m, BadMapError) else None for m in loaded], good, staged)

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scatterdist-write")
    writes = []

    def write(s: int) -> None:
        task = shards[s]
        zstore.write_shard(store_path, task.shard, coeffs[s], status[s], errors[s])
        todo = [i for i in range(len(task.refs)) if task.recompute[i]]
        failures = [(task.ids[i], errors[s][i]) for i in todo if status[s][i] != zstore.STATUS_OK]
        n_ok = sum(1 for i in todo if status[s][i] == zstore.STATUS_OK)
        results[s] = ShardResult(task.shard, n_ok, len(failures), len(task.refs) - len(todo),
                                 failures, time.perf_counter() - t_shard[s], os.getpid())

    transform = _Transformer(sc, device)
    batches = split_batches(items, bsize)
    try:
        with BatchFeeder(batches, load, prefetch=prefetch) as feeder:
            for index, batch, got in feeder:
                for j, err in enumerate(got.results):
                    if err is not None:
                        s, i = batch[j]
                        errors[s][i] = str(err)
                t0 = time.perf_counter()
                if got.good:
                    out, errs = transform(stager.ready(got.staged))
                    for row, j in enumerate(got.good):
                        s, i = batch[j]
                        if errs[row]:
                            errors[s][i] = errs[row]
                        else:
                            coeffs[s][i] = out[row]
                            status[s][i] = zstore.STATUS_OK
                feeder.transformed(index, t0, time.perf_counter())
                for s, _ in batch:
                    remaining[s] -= 1
                    if remaining[s] == 0:
                        writes.append(writer.submit(write, s))
            timings = [t.as_tuple() for t in feeder.timings]
        for fut in writes:
            fut.result()
    finally:
        writer.shutdown(wait=True)
    done = [r for r in results if r is not None]
    assert len(done) == len(shards), "every shard is written or skipped"
    return TaskResult(done, dev_name, min(bsize, _BATCH_LIMIT.get(key, bsize)), timings,
                      time.perf_counter() - t_task, os.getpid())


def run_shard(
    store_path: str,
    shard: int,
    start: int,
    ids: Sequence[str],
    refs: Sequence[MapRef],
    config: dict[str, Any],
    recompute: Sequence[bool],
) -> ShardResult:
    """One shard as a task (:func:`run_shards` with a single shard)."""
    return run_shards(store_path, [ShardTask(shard, start, ids, refs, recompute)], config).shards[0]


# ---------------------------------------------------------------------- client side


def _plan(status: np.ndarray, lay: zstore.StoreLayout, retry_failed: bool) -> list[tuple[int, list[bool]]]:
    """Shards to run, each with its per-map recompute mask."""
    plan = []
    redo = (status == zstore.STATUS_TODO) | ((status == zstore.STATUS_FAILED) & retry_failed)
    for s in range(lay.n_shards):
        a, b = lay.bounds(s)
        mask = redo[a:b]
        if mask.any():
            plan.append((s, [bool(v) for v in mask]))
    return plan


def _shards_per_task(config: dict[str, Any], batch_size: int | None, shard_size: int,
                     n_shards: int, n_workers: int) -> int:
    """numpy backend: 1 (one task per shard). torch: enough shards for :data:`BATCHES_PER_TASK`
    device batches, but never fewer tasks than workers."""
    if config.get("backend", "numpy") != "torch":
        return 1
    batch = batch_size or GPU_BATCH
    want = max(1, math.ceil(BATCHES_PER_TASK * batch / shard_size))
    fair = max(1, math.ceil(n_shards / max(1, n_workers)))
    return max(1, min(want, fair))


def _progress_bar(total: int, progress: bool | None, skipped: int):
    """A map counter on stderr, drawn only on a terminal unless ``progress`` is True
    (:func:`scatterdist._progress.show_progress`)."""
    from scatterdist._progress import progress_bar, show_progress

    if not show_progress(progress):
        return None
    bar = progress_bar(total=total, progress=progress, unit="map", desc="scatter",
                       dynamic_ncols=True, smoothing=0.1)
    bar.set_postfix(failed=0, skipped=skipped)
    return bar


def _client_config(config: dict[str, Any]) -> dict[str, Any]:
    """The transform the client builds for the store's metadata: never on a device."""
    return {k: v for k, v in config.items() if k not in ("backend", "device", "dtype", "memory_budget")}


def scatter(
    catalog: Catalog,
    store: str | os.PathLike,
    config: dict[str, Any],
    client: Client | None = None,
    shard_size: int | None = None,
    retries: int = 3,
    retry_failed: bool = False,
    progress: bool | None = None,
    overwrite: bool = False,
    window: int | None = None,
    resources: dict[str, float] | None = None,
    batch_size: int | None = None,
    shards_per_task: int | None = None,
    prefetch: int = PREFETCH,
) -> ScatterSummary:
    """Scatter every map of ``catalog`` into the Zarr store ``store`` with Dask.

    ``config``: ``Scattering`` parameters (``Scattering(**config)`` rebuilds the transform on
    each worker, once), or another transform's with a ``"transform"`` key
    (:func:`scatterdist.transforms.build_transform`, e.g. ``"lowpass"``); with
    ``backend="torch"``, ``device`` ``"auto"`` (default: each worker's GPU if it has one, else
    its CPU), ``"cuda"`` or ``"cpu"``. ``client``: a ``distributed.Client`` (default: a local
    cluster for this call). ``shard_size``: maps per shard (default :func:`default_shard_size`,
    or the existing store's). ``retries``: Dask retries of a task that raised or whose worker
    died. ``retry_failed``: also recompute maps whose status is -1. ``window``: tasks in
    flight (default 2 x total worker threads). ``resources``: Dask task resources, e.g.
    ``{"GPU": 1}`` on a dask-cuda cluster. ``batch_size``: maps per transform call
    (default :func:`default_batch_size`); ``shards_per_task``: shards one task owns (default
    1 on numpy, enough for 4 device batches on torch); ``prefetch``: batches loaded ahead.
    ``progress``: None draws a bar only on a terminal, True always, False never.
    Resuming with another config is refused (:class:`scatterdist.store.StoreConfigError`);
    a store locked by a live writer too.
    """
    from scatterdist.transforms import build_transform

    store = os.fspath(store)
    if len(catalog) == 0:
        raise ValueError("the catalog is empty: nothing to scatter")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size (--gpu-batch) must be >= 1, got {batch_size}")
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    if shards_per_task is not None and shards_per_task < 1:
        raise ValueError(f"shards_per_task must be >= 1, got {shards_per_task}")
    if client is None:
        from scatterdist.cluster import connect

        with connect("local") as own:
            return scatter(catalog, store, config, own, shard_size, retries, retry_failed,
                           progress, overwrite, window, resources, batch_size, shards_per_task,
                           prefetch)
    _check_device(config)
    sc = build_transform(_client_config(config))
    if catalog.nside is not None and catalog.nside != sc.nside:
        raise ValueError(f"the inputs are at nside {catalog.nside} but the transform is at nside "
                         f"{sc.nside}: pass nside={catalog.nside}")
    with zstore.StoreLock(store):
        if shard_size is None and os.path.exists(store) and not overwrite:
            shard_size = zstore.layout(store).shard_size
        if shard_size is None:
            shard_size = default_shard_size(len(catalog))
        zstore.create(store, catalog, sc, shard_size, overwrite=overwrite)
        lay = zstore.layout(store)
        status = zstore.read_status(store)
        plan = _plan(status, lay, retry_failed)
        n_todo = sum(sum(mask) for _, mask in plan)
        summary = ScatterSummary(skipped=len(catalog) - n_todo, shards_computed=len(plan),
                                 shards_skipped=lay.n_shards - len(plan), store=store)
        if not plan:
            return summary
        ids, refs = catalog.ids, catalog.refs
        nthreads = client.nthreads()
        group = shards_per_task or _shards_per_task(config, batch_size, lay.shard_size,
                                                    len(plan), len(nthreads))
        groups = [plan[i : i + group] for i in range(0, len(plan), group)]
        window = window or max(2, 2 * (sum(nthreads.values()) or 1))
        bar = _progress_bar(n_todo, progress, summary.skipped)
        t0 = time.perf_counter()
        pending = iter(groups)
        futures: dict[Any, list[tuple[int, list[bool]]]] = {}

        def tasks_of(items: list[tuple[int, list[bool]]]) -> list[ShardTask]:
            out = []
            for s, mask in items:
                a, b = lay.bounds(s)
                out.append(ShardTask(s, a, ids[a:b], refs[a:b], mask))
            return out

        def submit_next(ac: as_completed | None) -> bool:
            items = next(pending, None)
            if items is None:
                return False
            fut = client.submit(run_shards, store, tasks_of(items), config, batch_size, prefetch,
                                key=f"scatter-shards-{lay.config_hash}-{items[0][0]}-{os.getpid()}-{time.time_ns()}",
                                retries=retries, pure=False, resources=resources)
            futures[fut] = items
            if ac is not None:
                ac.add(fut)
            return True

        for _ in range(window):
            if not submit_next(None):
                break
        ac = as_completed(list(futures))
        try:
            for fut in ac:
                items = futures.pop(fut)
                try:
                    res: TaskResult = fut.result()
                    shard_results = res.shards
                    summary.devices[res.device] = summary.devices.get(res.device, 0) + 1
                    summary.timings.append(res.timings)
                except KilledWorker as exc:
                    shard_results = _mark_shards_failed(
                        store, lay, items, ids, status,
                        f"worker died {exc.__class__.__name__}: the task killed its worker "
                        "repeatedly (out of memory?)")
                except (OSError, ValueError, RuntimeError, zstore.StoreError) as exc:
                    shard_results = _mark_shards_failed(
                        store, lay, items, ids, status,
                        f"shard task failed after {retries} retries: {type(exc).__name__}: {exc}")
                for r in shard_results:
                    summary.ok += r.ok
                    summary.failed += r.failed
                    summary.failures.extend(r.failures)
                    if bar is not None:
                        bar.update(r.ok + r.failed)
                if bar is not None:
                    bar.set_postfix(failed=summary.failed, skipped=summary.skipped)
                submit_next(ac)
        finally:
            for fut in list(futures):
                fut.cancel()
            if bar is not None:
                bar.close()
        summary.seconds = time.perf_counter() - t0
        done = summary.ok + summary.failed
        summary.maps_per_s = done / summary.seconds if summary.seconds > 0 else 0.0
        return summary


def _mark_shards_failed(store: str, lay: zstore.StoreLayout, items: list[tuple[int, list[bool]]],
                        ids: Sequence[str], planned: np.ndarray, reason: str) -> list[ShardResult]:
    """Record the shards of a task that could not finish: each todo map that is still as the
    plan found it (``planned``, the status array read before submitting) gets status -1 and
    ``reason``; maps the task wrote before it died (ok, or failed with their own reason) keep
    what it wrote.

    Safe because the task is gone (no concurrent writer); maps already ok keep 1.
    """
    import zarr

    out = []
    now = zstore.read_status(store)
    old_err = zarr.open_array(store, path="error", mode="r")
    for shard, mask in items:
        a, b = lay.bounds(shard)
        status = now[a:b].copy()
        errors = [str(e) for e in old_err[a:b]]
        todo = [i for i in range(b - a) if mask[i]]
        ok = 0
        failed: list[tuple[str, str]] = []
        for i in todo:
            if status[i] == zstore.STATUS_OK:
                ok += 1
            elif status[i] != planned[a + i]:  # written by the task before it died
                failed.append((ids[a + i], errors[i]))
            else:
                status[i] = zstore.STATUS_FAILED
                errors[i] = reason
                failed.append((ids[a + i], reason))
        zstore.write_status(store, a, status, errors)
        out.append(ShardResult(shard, ok, len(failed), b - a - len(todo), failed, 0.0, -1))
    return out
