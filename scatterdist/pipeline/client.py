"""Client orchestration: plan the shards, keep a bounded window of tasks in flight, record the outcome.

The client keeps a bounded window of tasks in flight (``distributed.as_completed``, refilled
as tasks finish), so a catalog of a million maps never becomes a million futures. A bad map
becomes ``status=-1`` plus a message; a raised error or a dead worker is retried by Dask
(``retries=`` and the scheduler's ``allowed-failures``), and a retried task skips the shards
its dead predecessor already wrote; a shard that still fails is marked failed with the reason.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed import Client, KilledWorker, as_completed

from scatterdist import store as zstore
from scatterdist.inputs import BadMapError, Catalog, load_maps
from scatterdist.pipeline.device import check_device
from scatterdist.pipeline.placement import spread_gpus
from scatterdist.pipeline.task import (
    GPU_BATCH,
    PREFETCH,
    DataOptions,
    ShardResult,
    ShardTask,
    TaskResult,
    _to_numpy,
    run_shards,
)

__all__ = ["ScatterSummary", "scatter", "default_shard_size", "check_data_options", "BATCHES_PER_TASK"]

#: Device batches a torch task holds at least (so the loads of one overlap the transforms).
BATCHES_PER_TASK = 4


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
    check_device(config)
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
