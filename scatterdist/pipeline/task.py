"""The worker task: load + transform the maps of whole shards in device batches, write each shard whole.

A task owns whole shards (:class:`ShardTask`). It keeps one :class:`ShardBuffer` per shard
(coefficients, coverage, sky fractions, status and errors of its maps) until the shard's last map
is transformed, then a writer thread writes the shard whole (data, then status). Transform batches
span shards; loader threads (:class:`scatterdist.feed.BatchFeeder`) prepare batch ``n + 1 ..``
while the device transforms batch ``n``. Per-map problems become status -1 with a message.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from scatterdist import store as zstore
from scatterdist.inputs import BadMapError, MapRef, load_maps
from scatterdist.feed import BatchFeeder, DeviceStager, split_batches
from scatterdist.pipeline.device import device_name, resolved_config, transform_device
from scatterdist.pipeline.identity import loaded_identity, stat_identity

__all__ = ["ShardResult", "ShardTask", "TaskResult", "DataOptions", "ShardBuffer", "run_shards",
           "run_shard", "default_batch_size", "worker_batch_size", "gpu_batch_size", "gpu_prefetch", "TRANSFORM_BATCH", "GPU_BATCH", "PREFETCH"]

#: Maps per transform call on the numpy backend (bounds worker memory).
TRANSFORM_BATCH = 8
#: Most maps per transform call on a CUDA device (the default is sized to the device's free
#: memory by :func:`gpu_batch_size`, and halved automatically on out-of-memory).
GPU_BATCH = 32
#: Device bytes per map pixel of one depth-2 float32 scattering call beyond its fixed plans and
#: tables: the slope of peak memory against batch in ``benchmarks/gpu_model.py`` (68 at nside
#: 2048, 54 at 1024, 36 at 256: the largest, so the default batch is safe at every nside).
GPU_BYTES_PER_PIXEL = 70
#: Share of the device's free memory (at the worker's start) the default batch may fill; the
#: rest holds the Legendre tables (a quarter of the device), plans and cuFFT work areas.
GPU_MEMORY_SHARE = 0.5
#: Batches loaded ahead of the one being transformed.
PREFETCH = 2


#: Bytes of staged input batches (pinned host memory, and their device copies) a GPU worker may
#: hold ahead of the transform: bounds the prefetch depth at survey resolution.
PREFETCH_BYTES = 4 << 30


def gpu_prefetch(prefetch: int, batch_maps: int, n_fields: int, npix: int, itemsize: int = 4) -> int:
    """Prefetch depth of a GPU worker: at most ``prefetch`` batches ahead and at most
    :data:`PREFETCH_BYTES` of them, but at least one (loading overlaps the transform)."""
    per_batch = max(1, batch_maps * n_fields * npix * itemsize)
    return min(int(prefetch), max(1, PREFETCH_BYTES // per_batch)) if prefetch > 0 else 0


def default_batch_size(config: dict[str, Any], device: str | None = None) -> int:
    """Maps per transform call: :func:`gpu_batch_size` on a CUDA device, :data:`TRANSFORM_BATCH` otherwise."""
    if config.get("backend", "numpy") == "torch" and (device or "").startswith("cuda"):
        return gpu_batch_size(config, device)
    return TRANSFORM_BATCH


def worker_batch_size(config: dict[str, Any]) -> int:
    """The default batch of *this* worker (run on a worker by ``client.run``): its device resolved as its
    tasks resolve it (the GPU the placement gave it), then :func:`default_batch_size` (free memory)."""
    from scatterdist.pipeline.device import resolved_config

    config = resolved_config(config)
    return default_batch_size(config, config.get("device"))


def gpu_batch_size(config: dict[str, Any], device: str | None = None, free_bytes: int | None = None) -> int:
    """Maps per call that fit :data:`GPU_MEMORY_SHARE` of the device's free memory at
    :data:`GPU_BYTES_PER_PIXEL` per pixel and map (float64: twice), between 1 and :data:`GPU_BATCH`.
    An H100 (80 GB) gets 32 at nside 512 and 1024, 12 at 2048 (the constant 32 needed ~115 GiB there),
    an A100 (40 GB) 5 at 2048."""
    if free_bytes is None:
        import torch

        free_bytes = torch.cuda.mem_get_info(torch.device(device or "cuda"))[0]
    npix = 12 * int(config.get("nside", 0)) ** 2
    itemsize_factor = 2 if str(config.get("dtype", "float32")).endswith("float64") else 1
    per_map = max(1, GPU_BYTES_PER_PIXEL * npix * itemsize_factor)
    return max(1, min(GPU_BATCH, int(GPU_MEMORY_SHARE * free_bytes) // per_map))


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

    @property
    def todo(self) -> list[int]:
        """Positions (in the shard) of the maps this task computes."""
        return [i for i in range(len(self.refs)) if self.recompute[i]]


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
class DataOptions:
    """What every task loads and how (the data settings of a store).

    ``fields``: field names (``("I",)``, ``("I", "E", "B")``); ``mask``: path of the global mask (read once per
    worker); ``min_fsky``: smallest usable sky fraction of a map; ``shared_coverage``: the
    ``(P, N)`` coverage of a store whose maps all share one mask (computed once by the client),
    None for a per-map coverage store or a full-sky one.
    """

    fields: tuple[str, ...] = ("I",)
    mask: str | None = None
    min_fsky: float = 0.01
    shared_coverage: np.ndarray | None = None


@dataclass
class ShardBuffer:
    """Everything a task holds for one shard until it writes it whole.

    Rows start as failed NaN; :meth:`put` fills a computed map, :meth:`fail` records why one
    failed and whether its input or the machine is to blame, :meth:`keep` copies the maps that
    are already ok from the store. ``identity`` holds each map's input identity as read.
    ``remaining`` counts the maps still to come; ``result`` is set once the shard is written (or
    found written).
    """

    task: ShardTask
    coefficients: np.ndarray          #: (k, F, P, N) float32
    coverage: np.ndarray              #: (k, P, N) float32
    sky_fraction: np.ndarray          #: (k,) float32
    status: np.ndarray                #: (k,) int8
    errors: list[str]
    failure: np.ndarray               #: (k,) int8 FAILURE_* of failed maps
    identity: list[dict[str, Any] | None]
    remaining: int
    result: ShardResult | None = None

    @classmethod
    def empty(cls, task: ShardTask, n_fields: int, n_paths: int, npix_out: int) -> ShardBuffer:
        k = len(task.refs)
        return cls(task,
                   np.full((k, n_fields, n_paths, npix_out), np.nan, dtype=np.float32),
                   np.full((k, n_paths, npix_out), np.nan, dtype=np.float32),
                   np.full(k, np.nan, dtype=np.float32),
                   np.full(k, zstore.STATUS_FAILED, dtype=np.int8),
                   [""] * k, np.full(k, zstore.FAILURE_NONE, dtype=np.int8), [None] * k,
                   len(task.todo))

    def keep(self, old: zstore.ShardData, rows: Sequence[int], per_map_coverage: bool) -> None:
        """Copy rows that stay as they are (already ok) from what the store holds."""
        rows = list(rows)
        self.coefficients[rows] = old.coefficients[rows]
        if old.coverage is not None and per_map_coverage:
            self.coverage[rows] = old.coverage[rows]
        elif old.coverage is None:
            self.coverage[rows] = 1.0
        if old.sky_fraction is not None:
            self.sky_fraction[rows] = old.sky_fraction[rows]
        if old.identity is not None:
            for i in rows:
                self.identity[i] = old.identity[i]
        self.status[rows] = zstore.STATUS_OK

    def put(self, i: int, coefficients: np.ndarray, coverage: np.ndarray) -> None:
        self.coefficients[i] = coefficients
        self.coverage[i] = coverage
        self.status[i] = zstore.STATUS_OK

    def fail(self, i: int, message: str, kind: int = zstore.FAILURE_INPUT) -> None:
        """Map ``i`` failed: on its input (``FAILURE_INPUT``) or on the machine (``FAILURE_MACHINE``)."""
        self.errors[i] = zstore.one_line(message)
        self.failure[i] = kind
        self.status[i] = zstore.STATUS_FAILED

    def finish_one(self) -> bool:
        """Count one map of this shard as done; True when it was the last one."""
        self.remaining -= 1
        return self.remaining == 0

    def write(self, store_path: str, data: DataOptions, per_map_coverage: bool) -> ShardResult:
        """Write the shard whole (data, then status) and say what happened to its maps."""
        t0 = time.perf_counter()
        task = self.task
        cov = self.coverage if per_map_coverage else data.shared_coverage
        zstore.write_shard(store_path, task.shard, self.coefficients, self.status, self.errors,
                           coverage=cov, sky_fraction=self.sky_fraction, failure=self.failure,
                           identity=self.identity)
        todo = task.todo
        failures = [(task.ids[i], self.errors[i]) for i in todo if self.status[i] != zstore.STATUS_OK]
        n_ok = len(todo) - len(failures)
        self.result = ShardResult(task.shard, n_ok, len(failures), len(task.refs) - len(todo),
                                  failures, time.perf_counter() - t0, os.getpid())
        return self.result


# ---------------------------------------------------------------------- the transform, per worker

_SC_CACHE: dict[str, Any] = {}
_SC_LOCK = threading.Lock()
#: Largest batch that fitted the device, per transform (set after an out-of-memory split).
_BATCH_LIMIT: dict[str, int] = {}


def _scattering(config: dict[str, Any]) -> Any:
    """The transform for ``config``, built once per worker process (keyed by its resolved config)."""
    config = resolved_config(config)
    key = zstore.config_hash(config) + repr(sorted((k, repr(v)) for k, v in config.items()))
    with _SC_LOCK:
        sc = _SC_CACHE.get(key)
        if sc is None:
            from scatterdist.transforms import build_transform

            sc = _SC_CACHE[key] = build_transform(config)
            sc._scatterdist_key = key
        return sc


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
    """A loaded batch: per item its BadMapError or None and its input identity, the good items
    (the ``n_full`` full-sky maps first, then the masked ones), their maps staged ``(G * F, npix)``,
    masks ``(G, npix)`` (None: all full sky; rows of full-sky maps are ignored) and sky fractions
    ``(G,)``."""

    results: list[Any]
    identity: list[dict[str, Any]]
    good: list[int]
    staged: Any
    masks: np.ndarray | None
    sky: np.ndarray | None
    n_full: int = 0


#: Marks an error of the transform that is the machine's, not the input's (see :func:`_kind`).
_OOM_PREFIX = "MemoryError: "


def _kind(message: str) -> int:
    """Failure kind of a transform error: running out of memory is the machine's, anything the
    transform refuses (a ValueError such as InvalidMapError) is the input's."""
    return zstore.FAILURE_MACHINE if message.startswith(_OOM_PREFIX) else zstore.FAILURE_INPUT


def _accepts_mask(sc: Any) -> bool:
    import inspect

    try:
        return "mask" in inspect.signature(sc.__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


def _warm_geometry(sc: Any, masks: np.ndarray | None, n_full: int) -> None:
    """Build the mask geometry of a batch's masked maps here, in the loader thread, so that the
    transform (consumer thread, device busy) finds it cached instead of computing it while the
    device idles. Rows are those the transform will see (float64 weights); errors are left for
    the transform to raise on its map."""
    cache = getattr(sc, "_geometry", None)
    if cache is None or masks is None or n_full >= len(masks):
        return
    for row in masks[n_full:]:
        try:
            cache.get(np.asarray(row, dtype=np.float64))
        except Exception:  # noqa: BLE001 - the transform raises it again, on the right map
            continue


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
        refused = oom = None
        try:
            self._call(x, masks, a, b, out, cov)
        except ValueError as exc:
            refused = f"{type(exc).__name__}: {exc}"
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            oom = True
        # Retries run here, after the except blocks: the exception's traceback (and with it every
        # tensor of the failed attempt's frames) is gone, so the device memory can be given back.
        if refused is not None:
            # A map the loader accepted but the transform refuses (InvalidMapError is a
            # ValueError, e.g. a map whose sky is entirely masked): map by map, only it fails.
            if n == 1:
                errors[a] = refused
                out[a] = np.nan
                cov[a] = np.nan
                return
            for i in range(a, b):
                self._run(x, masks, i, i + 1, out, cov, errors)
        elif oom:
            _free_device_memory(self.device)
            if n == 1:
                errors[a] = (f"{_OOM_PREFIX}out of device memory for one map on {self.device}: "
                             "use a larger GPU or --device cpu")
                return
            half = (n + 1) // 2
            _BATCH_LIMIT[self.key] = min(_BATCH_LIMIT.get(self.key, n), half)
            self._run(x, masks, a, a + half, out, cov, errors)
            self._run(x, masks, a + half, b, out, cov, errors)


# ---------------------------------------------------------------------- the task


def _buffers(store_path: str, shards: Sequence[ShardTask], n_fields: int, sc: Any,
             per_map: bool) -> list[ShardBuffer]:
    """One buffer per shard; a shard whose todo maps are already ok in the store (written by an
    earlier attempt of this task whose worker died) is marked done without recomputing."""
    status_now = zstore.read_status(store_path)
    out = []
    for task in shards:
        buf = ShardBuffer.empty(task, n_fields, sc.n_paths, sc.npix_out)
        k, todo = len(task.refs), task.todo
        now = status_now[task.start : task.start + k]
        if todo and all(now[i] == zstore.STATUS_OK for i in todo):
            buf.result = ShardResult(task.shard, len(todo), 0, k - len(todo), [], 0.0, os.getpid())
            buf.remaining = 0
        else:
            keep = [i for i in range(k) if not task.recompute[i]]
            if keep:
                old = zstore.read_shard(store_path, task.shard)
                lost = [i for i in keep if i in old.unreadable]
                if lost:  # damaged on disk since the plan was made: computed again
                    task.recompute = [bool(r) or i in lost for i, r in enumerate(task.recompute)]
                    buf.remaining = len(task.todo)
                    keep = [i for i in keep if i not in lost]
                buf.keep(old, keep, per_map)
        out.append(buf)
    return out


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
    device = transform_device(sc)
    dev_name = device_name(device)
    bsize = int(batch_size) if batch_size else default_batch_size(config, dev_name)
    key = getattr(sc, "_scatterdist_key", "")
    if key in _BATCH_LIMIT:
        bsize = min(bsize, _BATCH_LIMIT[key])
    F = len(data.fields)
    per_map = zstore.layout(store_path).per_map_coverage
    masked_ok = _accepts_mask(sc)
    buffers = _buffers(store_path, shards, F, sc, per_map)
    items = [(s, i) for s, buf in enumerate(buffers) if buf.result is None for i in buf.task.todo]

    stager = DeviceStager(device, getattr(sc.backend, "dtype", None) if device is not None else None)

    def load(batch: Sequence[tuple[int, int]]) -> _Loaded:
        refs = [shards[s].refs[i] for s, i in batch]
        loaded = load_maps(refs, sc.nside, fields=data.fields, mask=data.mask,
                           min_fsky=data.min_fsky, apodize=getattr(sc, "apodize", None))
        if not masked_ok:
            loaded = [BadMapError(f"{refs[j].where}: the {type(sc).__name__} transform takes no "
                                  "mask; this map has masked pixels (UNSEEN/NaN, coverage or --mask)")
                      if not isinstance(m, BadMapError) and m.mask is not None else m
                      for j, m in enumerate(loaded)]
        identity = [stat_identity(ref) if isinstance(m, BadMapError) else loaded_identity(ref, m)
                    for ref, m in zip(refs, loaded)]
        good = [j for j, m in enumerate(loaded) if not isinstance(m, BadMapError)]
        # full-sky maps first, then masked ones (two transform calls)
        full = [j for j in good if loaded[j].mask is None]
        n_full = len(full)
        good = full + [j for j in good if loaded[j].mask is not None]
        staged = masks = frac = None
        if good:
            x, masks, frac = stack_maps([loaded[j] for j in good])
            x = x.reshape(len(good) * F, x.shape[-1])
            staged = stager.stage(x)
            _warm_geometry(sc, masks, n_full)
        return _Loaded([m if isinstance(m, BadMapError) else None for m in loaded], identity, good,
                       staged, masks, frac, n_full)

    if stager.cuda and getattr(sc, "nside", None):  # staged batches: pinned host memory + device copies, bounded
        itemsize = 8 if str(getattr(sc.backend, "dtype", "")).endswith("float64") else 4
        prefetch = gpu_prefetch(prefetch, bsize, F, 12 * sc.nside ** 2, itemsize)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scatterdist-write")
    writes = []
    transform = _Transformer(sc, device, F)
    batches = split_batches(items, bsize)
    timings: list[tuple[int, int, float, float, float, float]] = []
    try:
        with BatchFeeder(batches, load, prefetch=prefetch) as feeder:
            for index, batch, got in feeder:
                for j, err in enumerate(got.results):
                    s, i = batch[j]
                    buffers[s].identity[i] = got.identity[j]
                    if err is not None:
                        buffers[s].fail(i, str(err), zstore.FAILURE_INPUT)
                t0 = time.perf_counter()
                if got.good:
                    out, cov, errs = transform(stager.ready(got.staged), got.masks, got.n_full)
                    for row, j in enumerate(got.good):
                        s, i = batch[j]
                        if got.sky is not None:
                            buffers[s].sky_fraction[i] = got.sky[row]
                        if errs[row]:
                            buffers[s].fail(i, errs[row], _kind(errs[row]))
                        else:
                            buffers[s].put(i, out[row], cov[row])
                feeder.transformed(index, t0, time.perf_counter())
                for s, _ in batch:
                    if buffers[s].finish_one():
                        writes.append(writer.submit(buffers[s].write, store_path, data, per_map))
            timings = [t.as_tuple() for t in feeder.timings]
        for fut in writes:
            fut.result()
    finally:
        writer.shutdown(wait=True)
    done = [buf.result for buf in buffers if buf.result is not None]
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
