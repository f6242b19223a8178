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
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed import Client, KilledWorker, as_completed

from scatterdist import store as zstore
from scatterdist.inputs import BadMapError, Catalog, MapRef, load_maps
from scatterdist.feed import BatchFeeder, DeviceStager, split_batches

__all__ = ["ScatterSummary", "ShardResult", "ShardTask", "TaskResult", "DataOptions", "scatter",
           "default_shard_size", "default_batch_size", "run_shard", "run_shards",
           "resolve_device", "worker_devices", "plan_gpus", "spread_gpus", "check_data_options",
           "DEVICES"]

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
    task_seconds: list[float] = field(default_factory=list)

    @property
    def device_busy(self) -> float:
        """Fraction of the tasks' time their device spent transforming (NaN before any task)."""
        total = sum(self.task_seconds)
        busy = sum(t[5] - t[4] for task in self.timings for t in task)
        return busy / total if total > 0 else math.nan

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
        if device.startswith("cuda:"):
            return device
        return f"cuda:{_WORKER_GPU}" if _WORKER_GPU is not None else "cuda"
    if device == "auto":
        return "cpu"
    raise ValueError(f"--device {device}: torch on worker pid {os.getpid()} sees no CUDA device "
                     "(CUDA_VISIBLE_DEVICES={!r}); use --device auto or cpu, or GPU workers"
                     .format(os.environ.get("CUDA_VISIBLE_DEVICES")))


#: The GPU this worker process was given by :func:`spread_gpus` (None: ``cuda`` = its current device).
_WORKER_GPU: int | None = None


def _set_worker_gpu(index: int) -> int:
    global _WORKER_GPU
    _WORKER_GPU = int(index)
    return os.getpid()


def plan_gpus(infos: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Which GPU each worker should use, when several workers of one host see the same GPUs.

    ``infos``: :func:`worker_devices` of every worker, keyed by worker address. Workers that
    see several GPUs through the same ``CUDA_VISIBLE_DEVICES`` (e.g. a plain LocalCluster on a
    4-GPU node) would all use GPU 0: they get GPUs round-robin per host. Workers whose
    ``CUDA_VISIBLE_DEVICES`` differ (dask-cuda rotates it so that each worker's GPU 0 is its
    own) or that see one GPU are left alone. Returns ``{address: gpu index}`` for those to move.
    """
    groups: dict[tuple[str, Any], list[str]] = {}
    for addr, info in infos.items():
        if info.get("cuda", 0) > 1:
            host = addr.rsplit(":", 1)[0]
            groups.setdefault((host, info.get("CUDA_VISIBLE_DEVICES")), []).append(addr)
    plan = {}
    for (_, _), addrs in groups.items():
        if len(addrs) < 2:
            continue
        n = infos[addrs[0]]["cuda"]
        for k, addr in enumerate(sorted(addrs)):
            plan[addr] = k % n
    return plan


def spread_gpus(client: Client) -> dict[str, int]:
    """Give each worker its own GPU where several share a host's GPUs (see :func:`plan_gpus`)."""
    infos = client.run(worker_devices)
    plan = plan_gpus(infos)
    for addr, index in plan.items():
        client.run(_set_worker_gpu, index, workers=[addr])
    return plan


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
class DataOptions:
    """What every task loads and how (the data settings of a store).

    ``fields``: field names (``("I",)``, ``("I", "E", "B")``; None: the legacy single-field
    schema without a ``field`` dimension); ``mask``: path of the global mask (read once per
    worker); ``min_fsky``: smallest usable sky fraction of a map; ``shared_coverage``: the
    ``(P, N)`` coverage of a store whose maps all share one mask (computed once by the client),
    None for a per-map coverage store or a full-sky one.
    """

    fields: tuple[str, ...] | None = ("I",)
    mask: str | None = None
    min_fsky: float = 0.01
    shared_coverage: np.ndarray | None = None


@dataclass
class _Loaded:
    """A loaded batch: per item its BadMapError or None, the good items (the ``n_full`` full-sky
    maps first, then the masked ones), their maps staged ``(G * F, npix)``, masks ``(G, npix)``
    (None: all full sky; rows of full-sky maps are ignored) and sky fractions ``(G,)``."""

    results: list[Any]
    good: list[int]
    staged: Any
    masks: np.ndarray | None
    sky: np.ndarray | None
    n_full: int = 0


def _accepts_mask(sc: Any) -> bool:
    import inspect

    try:
        return "mask" in inspect.signature(sc.__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


class _Transformer:
    """Transforms staged batches of maps with ``F`` fields each (rows ``i*F .. i*F+F-1`` are
    map ``i``): masked maps through ``sc(x, mask=..., return_coverage=True)``, full-sky batches
    through ``sc(x)`` exactly as before masks existed. Splits a batch that runs out of device
    memory, and redoes a batch map by map when the transform refuses one of its maps (only the
    culprit fails)."""

    def __init__(self, sc: Any, device: Any, n_fields: int) -> None:
        self.sc, self.device, self.F = sc, device, n_fields
        self.key = getattr(sc, "_scatterdist_key", "")

    def __call__(self, x: Any, masks: np.ndarray | None,
                 n_full: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``x (G*F, npix)``, ``masks (G, npix) | None`` -> coefficients ``(G, F, P, N)`` float32,
        coverage ``(G, P, N)`` float32 (1 for full-sky maps) and per-map errors. The first
        ``n_full`` maps are full sky: they take the unmasked path (their numbers never depend
        on which maps share their batch)."""
        g = len(x) // self.F
        P, N = self.sc.n_paths, self.sc.npix_out
        out = np.full((g, self.F, P, N), np.nan, dtype=np.float32)
        cov = np.full((g, P, N), np.nan, dtype=np.float32)
        errors = [""] * g
        n_full = g if masks is None else n_full
        if n_full:
            self._run(x, None, 0, n_full, out, cov, errors)
        if n_full < g:
            self._run(x, masks, n_full, g, out, cov, errors)
        return out, cov, errors

    def _call(self, x: Any, masks: np.ndarray | None, a: int, b: int,
              out: np.ndarray, cov: np.ndarray) -> None:
        F = self.F
        rows = x[a * F : b * F]
        if masks is None:
            out[a:b] = _to_numpy(self.sc(rows)).reshape(b - a, F, *out.shape[2:])
            cov[a:b] = 1.0
            return
        m = np.repeat(masks[a:b], F, axis=0) if F > 1 else masks[a:b]
        got, c = self.sc(rows, mask=m, return_coverage=True)
        out[a:b] = _to_numpy(got).reshape(b - a, F, *out.shape[2:])
        cov[a:b] = _to_numpy(c).reshape(b - a, F, *cov.shape[1:])[:, 0]

    def _run(self, x: Any, masks: np.ndarray | None, a: int, b: int, out: np.ndarray,
             cov: np.ndarray, errors: list[str]) -> None:
        n = b - a
        limit = _BATCH_LIMIT.get(self.key)
        if limit is not None and n > limit:
            for s in range(a, b, limit):
                self._run(x, masks, s, min(b, s + limit), out, cov, errors)
            return
        try:
            self._call(x, masks, a, b, out, cov)
        except ValueError as exc:
            # A map the loader accepted but the transform refuses (InvalidMapError is a
            # ValueError, e.g. a map whose sky is entirely masked): map by map, only it fails.
            if n == 1:
                errors[a] = f"{type(exc).__name__}: {exc}"
                out[a] = np.nan
                cov[a] = np.nan
                return
            for i in range(a, b):
                self._run(x, masks, i, i + 1, out, cov, errors)
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            _free_device_memory(self.device)
            if n == 1:
                errors[a] = (f"out of device memory for one map on {self.device}: "
                             "use a larger GPU or --device cpu")
                return
            half = (n + 1) // 2
            _BATCH_LIMIT[self.key] = min(_BATCH_LIMIT.get(self.key, n), half)
            self._run(x, masks, a, a + half, out, cov, errors)
            self._run(x, masks, a + half, b, out, cov, errors)


def run_shards(
    store_path: str,
    shards: Sequence[ShardTask],
    config: dict[str, Any],
    batch_size: int | None = None,
    prefetch: int = PREFETCH,
    data: DataOptions | None = None,
) -> TaskResult:
    """Task body: load + transform the maps of ``shards`` in device batches, write each shard whole.

    Batches of ``batch_size`` maps (default :func:`default_batch_size` of the worker's
    device) span shards; ``prefetch`` batches are loaded ahead in threads while the device
    works; each shard is written (coefficients ``(k, F, P, N)``, coverage, sky fractions, then
    status) by a writer thread as soon as its last map is transformed. ``data``: fields, global
    mask and ``min_fsky`` (:class:`DataOptions`; default field I, no mask); a map's own mask
    (UNSEEN/NaN pixels, HealSparse coverage) is combined with the global one by the loader and
    handed to the transform. A shard whose todo maps are already ok in the store (written by an
    earlier attempt of this task whose worker died) is not recomputed. Per-map problems become
    status -1 with a message.
    """
    from scatterdist.inputs import stack_maps

    t_task = time.perf_counter()
    data = data or DataOptions()
    sc = _scattering(config)
    device = _device(sc)
    dev_name = str(device) if device is not None else "cpu"
    bsize = int(batch_size) if batch_size else default_batch_size(config, dev_name)
    key = getattr(sc, "_scatterdist_key", "")
    if key in _BATCH_LIMIT:
        bsize = min(bsize, _BATCH_LIMIT[key])
    legacy = data.fields is None and data.mask is None
    F = 1 if legacy else len(data.fields)
    P, N = sc.n_paths, sc.npix_out
    lay = zstore.layout(store_path)
    per_map = lay.per_map_coverage
    masked_ok = _accepts_mask(sc)
    status_now = zstore.read_status(store_path)
    results: list[ShardResult | None] = [None] * len(shards)
    coeffs: list[np.ndarray] = []
    coverage: list[np.ndarray] = []
    sky: list[np.ndarray] = []
    status: list[np.ndarray] = []
    errors: list[list[str]] = []
    remaining: list[int] = []
    items: list[tuple[int, int]] = []  # (position of the shard in `shards`, map index in it)
    for s, task in enumerate(shards):
        k = len(task.refs)
        todo = [i for i in range(k) if task.recompute[i]]
        now = status_now[task.start : task.start + k]
        if todo and all(now[i] == zstore.STATUS_OK for i in todo):
            # Written by an earlier attempt of this task (its worker died afterwards).
            results[s] = ShardResult(task.shard, len(todo), 0, k - len(todo), [], 0.0, os.getpid())
            todo = []
        coeffs.append(np.full((k, F, P, N), np.nan, dtype=np.float32))
        coverage.append(np.full((k, P, N), np.nan, dtype=np.float32))
        sky.append(np.full(k, np.nan, dtype=np.float32))
        status.append(np.full(k, zstore.STATUS_FAILED, dtype=np.int8))
        errors.append([""] * k)
        remaining.append(len(todo))
        if results[s] is not None:
            continue
        keep = [i for i in range(k) if not task.recompute[i]]
        if keep:
            old = zstore.read_shard(store_path, task.shard)
            coeffs[s][keep] = old.coefficients[keep]
            if old.coverage is not None and per_map:
                coverage[s][keep] = old.coverage[keep]
            elif old.coverage is None:
                coverage[s][keep] = 1.0
            if old.sky_fraction is not None:
                sky[s][keep] = old.sky_fraction[keep]
            status[s][keep] = zstore.STATUS_OK
        items.extend((s, i) for i in todo)

    stager = DeviceStager(device, getattr(sc.backend, "dtype", None) if device is not None else None)

    def load(batch: Sequence[tuple[int, int]]) -> _Loaded:
        refs = [shards[s].refs[i] for s, i in batch]
        loaded = load_maps(refs, sc.nside, fields=data.fields or ("I",), mask=data.mask,
                           min_fsky=data.min_fsky, apodize=getattr(sc, "apodize", None))
        if legacy:  # a store made before fields and masks: full-sky field I only, as then
            loaded = [m if isinstance(m, BadMapError) else
                      BadMapError(f"{refs[j].where}: a partial-sky map ({100 * (1 - m.sky_fraction):.1f}% "
                                  "of the sky masked) in a store made before masks existed: "
                                  "scatter it into a new store") if m.mask is not None else m.data[0]
                      for j, m in enumerate(loaded)]
        else:
            if not masked_ok:
                loaded = [BadMapError(f"{refs[j].where}: the {type(sc).__name__} transform takes no "
                                      "mask; this map has masked pixels (UNSEEN/NaN, coverage or --mask)")
                          if not isinstance(m, BadMapError) and m.mask is not None else m
                          for j, m in enumerate(loaded)]
        good = [j for j, m in enumerate(loaded) if not isinstance(m, BadMapError)]
        n_full = len(good)
        if not legacy:  # full-sky maps first, then masked ones (two transform calls)
            full = [j for j in good if loaded[j].mask is None]
            n_full = len(full)
            good = full + [j for j in good if loaded[j].mask is not None]
        staged = masks = frac = None
        if good:
            if legacy:
                x = np.stack([loaded[j] for j in good])
            else:
                x, masks, frac = stack_maps([loaded[j] for j in good])
                x = x.reshape(len(good) * F, x.shape[-1])
            staged = stager.stage(x)
        return _Loaded([m if isinstance(m, BadMapError) else None for m in loaded], good, staged,
                       masks, frac, n_full)

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scatterdist-write")
    writes = []

    def write(s: int) -> None:
        task = shards[s]
        t0 = time.perf_counter()
        if legacy:
            zstore.write_shard(store_path, task.shard, coeffs[s][:, 0], status[s], errors[s])
        else:
            cov = coverage[s] if per_map else data.shared_coverage
            zstore.write_shard(store_path, task.shard, coeffs[s], status[s], errors[s],
                               coverage=cov, sky_fraction=sky[s])
        todo = [i for i in range(len(task.refs)) if task.recompute[i]]
        failures = [(task.ids[i], errors[s][i]) for i in todo if status[s][i] != zstore.STATUS_OK]
        n_ok = sum(1 for i in todo if status[s][i] == zstore.STATUS_OK)
        results[s] = ShardResult(task.shard, n_ok, len(failures), len(task.refs) - len(todo),
                                 failures, time.perf_counter() - t0, os.getpid())

    transform = _Transformer(sc, device, F)
    batches = split_batches(items, bsize)
    timings: list[tuple[int, int, float, float, float, float]] = []
    try:
        with BatchFeeder(batches, load, prefetch=prefetch) as feeder:
            for index, batch, got in feeder:
                for j, err in enumerate(got.results):
                    if err is not None:
                        s, i = batch[j]
                        errors[s][i] = str(err)
                t0 = time.perf_counter()
                if got.good:
                    out, cov, errs = transform(stager.ready(got.staged), got.masks, got.n_full)
                    for row, j in enumerate(got.good):
                        s, i = batch[j]
                        if got.sky is not None:
                            sky[s][i] = got.sky[row]
                        if errs[row]:
                            errors[s][i] = errs[row]
                        else:
                            coeffs[s][i] = out[row]
                            coverage[s][i] = cov[row]
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
    data: DataOptions | None = None,
) -> ShardResult:
    """One shard as a task (:func:`run_shards` with a single shard)."""
    return run_shards(store_path, [ShardTask(shard, start, ids, refs, recompute)], config,
                      data=data).shards[0]


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
    fields: Sequence[str] | str | None = ("I",),
    mask: str | os.PathLike | None = None,
    min_fsky: float | None = None,
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
    ``fields``: what is scattered from each input (``("I",)`` default; ``"I,E,B"``: E and B
    from Q, U by the spin-2 transform); coefficients are stored ``(map, field, path, pixel)``.
    ``mask``: a global mask file (FITS 0/1 or weights, any nside; HealSparse) applied to every
    map on top of its own mask (UNSEEN/NaN pixels, HealSparse coverage); ``min_fsky``: maps
    whose usable sky fraction is below it fail (default
    :data:`scatterdist.sphere.mask.DEFAULT_MIN_FSKY`). A global mask that cannot be used
    (unreadable, values outside [0, 1], an nside that cannot be brought over, a sky fraction
    below ``min_fsky``) raises :class:`scatterdist.sphere.mask.MaskError` before anything is
    written. ``fields=None`` with no mask writes the legacy schema without a ``field`` dimension.
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
            return scatter(catalog, store, config, own, shard_size=shard_size, retries=retries,
                           retry_failed=retry_failed, progress=progress, overwrite=overwrite,
                           window=window, resources=resources, batch_size=batch_size,
                           shards_per_task=shards_per_task, prefetch=prefetch, fields=fields,
                           mask=mask, min_fsky=min_fsky)
    _check_device(config)
    sc = build_transform(_client_config(config))
    if catalog.nside is not None and catalog.nside != sc.nside:
        raise ValueError(f"the inputs are at nside {catalog.nside} but the transform is at nside "
                         f"{sc.nside}: pass nside={catalog.nside}")
    data = check_data_options(sc.nside, fields, mask, min_fsky)
    if data.fields is not None and zstore.coverage_layout(catalog) == "shared":
        # Every map shares one mask: its coverage once, before anything is written (a
        # simulation mask that cannot be used refuses the run here, like a bad --mask).
        data.shared_coverage = _shared_coverage(catalog, sc, data)
    with zstore.StoreLock(store):
        if os.path.exists(store) and not overwrite:
            old = zstore.layout(store)
            shard_size = old.shard_size if shard_size is None else shard_size
            if not old.has_field_dim and data.fields == ("I",) and data.mask is None:
                data = DataOptions(None, None, data.min_fsky)  # resume a store made before fields
        if shard_size is None:
            shard_size = default_shard_size(len(catalog))
        if data.fields is None and data.mask is None:
            zstore.create(store, catalog, sc, shard_size, overwrite=overwrite, fields=None)
        else:
            zstore.create(store, catalog, sc, shard_size, overwrite=overwrite, fields=data.fields,
                          mask=data.mask, min_fsky=data.min_fsky)
        lay = zstore.layout(store)
        status = zstore.read_status(store)
        plan = _plan(status, lay, retry_failed)
        n_todo = sum(sum(todo) for _, todo in plan)
        summary = ScatterSummary(skipped=len(catalog) - n_todo, shards_computed=len(plan),
                                 shards_skipped=lay.n_shards - len(plan), store=store)
        if not plan:
            return summary
        ids, refs = catalog.ids, catalog.refs
        if config.get("backend", "numpy") == "torch" and config.get("device", "auto") in ("auto", "cuda"):
            spread_gpus(client)  # one GPU per worker where a host's workers see the same GPUs
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
            fut = client.submit(run_shards, store, tasks_of(items), config, batch_size, prefetch, data,
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
                    summary.task_seconds.append(res.seconds)
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


def check_data_options(nside: int, fields: Sequence[str] | str | None = ("I",),
                       mask: str | os.PathLike | None = None,
                       min_fsky: float | None = None) -> DataOptions:
    """Check the data settings on the client: a bad field name raises
    :class:`scatterdist.inputs.CatalogError`; a global mask that cannot be used at ``nside``
    (unreadable, values outside [0, 1], an nside that cannot be brought over, a sky fraction
    below ``min_fsky``) raises :class:`scatterdist.sphere.mask.MaskError`: it would fail every
    map, so the run is refused."""
    from scatterdist.inputs import check_fields, read_global_mask
    from scatterdist.sphere.mask import DEFAULT_MIN_FSKY, MaskError, sky_fraction

    min_fsky = DEFAULT_MIN_FSKY if min_fsky is None else float(min_fsky)
    if not 0.0 <= min_fsky <= 1.0:
        raise ValueError(f"min_fsky (--min-fsky) must lie in [0, 1], got {min_fsky}")
    if fields is None and mask is None:
        return DataOptions(None, None, min_fsky)
    names = check_fields(("I",) if fields is None else fields)
    path = None
    if mask is not None:
        path = os.path.abspath(os.fspath(mask))
        weights = read_global_mask(path, nside)  # MaskError for a mask that cannot be used
        fsky = float(sky_fraction(weights))
        if fsky < min_fsky:
            raise MaskError(f"mask {path} leaves a sky fraction of {fsky:.4g} at nside {nside}, "
                            f"below --min-fsky {min_fsky:g}: every map would fail; check the mask "
                            "(1 = observed, 0 = masked) or lower --min-fsky")
    return DataOptions(names, path, min_fsky)


def _shared_coverage(catalog: Catalog, sc: Any, data: DataOptions) -> np.ndarray | None:
    """The ``(P, N)`` coverage every map of a shared-layout store has (all its maps carry the
    same mask: the global one times one simulation mask), from the first map's mask; None
    when that map is full sky. NaN when the first map cannot be loaded (then none can) or the
    transform takes no mask."""
    [first] = load_maps([catalog.refs[0]], sc.nside, fields=data.fields, mask=data.mask,
                        min_fsky=data.min_fsky, apodize=getattr(sc, "apodize", None))
    if isinstance(first, BadMapError) or not hasattr(sc, "coverage"):
        return np.full((sc.n_paths, sc.npix_out), np.nan, dtype=np.float32)
    if first.mask is None:
        return None
    return np.asarray(_to_numpy(sc.coverage(first.mask)), dtype=np.float32)


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
