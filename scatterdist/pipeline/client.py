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
    PREFETCH,
    DataOptions,
    ShardResult,
    ShardTask,
    TaskResult,
    _to_numpy,
    run_shards,
    worker_batch_size,
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
    #: Maps found damaged on disk at the start (id, reason): marked todo and recomputed.
    damaged: list[tuple[str, str]] = field(default_factory=list)
    #: Maps whose input changed since they were computed (id, what changed).
    changed: list[tuple[str, str]] = field(default_factory=list)
    #: Whether ``changed`` maps were recomputed (False: kept, ``keep_changed``).
    recomputed_changed: bool = True
    #: Maps that failed on the machine earlier and are retried by this run.
    retried_machine: int = 0
    #: Remote tracebacks of tasks that raised (for ``--debug``).
    tracebacks: list[str] = field(default_factory=list)

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


def _plan(status: np.ndarray, failure: np.ndarray, lay: zstore.StoreLayout,
          retry_failed: bool) -> list[tuple[int, list[bool]]]:
    """Shards to run, each with its per-map recompute mask: todo maps, maps that failed on the
    machine, and (``retry_failed``) maps that failed on their input."""
    plan = []
    failed = status == zstore.STATUS_FAILED
    redo = (status == zstore.STATUS_TODO) | (failed & (failure == zstore.FAILURE_MACHINE))
    if retry_failed:
        redo |= failed
    for s in range(lay.n_shards):
        a, b = lay.bounds(s)
        mask = redo[a:b]
        if mask.any():
            plan.append((s, [bool(v) for v in mask]))
    return plan


def _changed_inputs(store: str, catalog: Catalog, status: np.ndarray) -> list[tuple[int, str]]:
    """Maps (index, what changed) whose input file differs (size, modification time) from what
    the store recorded when they were computed (ok or failed maps with a recorded file)."""
    from scatterdist.pipeline.identity import changed, stat_identity

    recorded = zstore.read_identity(store)
    if recorded is None:
        return []
    out = []
    for i, (ref, old) in enumerate(zip(catalog.refs, recorded)):
        if status[i] != zstore.STATUS_TODO and old["path"]:
            why = changed(old, stat_identity(ref))
            if why:
                out.append((i, why))
    return out


def _shards_per_task(config: dict[str, Any], batch_size: int | None, shard_size: int,
                     n_shards: int, n_workers: int, worker_batch: int = 1) -> int:
    """numpy backend: 1 (one task per shard). torch: enough shards for :data:`BATCHES_PER_TASK`
    device batches of ``batch_size`` maps (default: ``worker_batch``, the batch the workers size
    from their device's free memory, :func:`workers_batch_size`), but never fewer tasks than workers."""
    if config.get("backend", "numpy") != "torch":
        return 1
    batch = batch_size or max(1, int(worker_batch))
    want = max(1, math.ceil(BATCHES_PER_TASK * batch / shard_size))
    fair = max(1, math.ceil(n_shards / max(1, n_workers)))
    return max(1, min(want, fair))


def workers_batch_size(client: Client, config: dict[str, Any]) -> int:
    """The smallest default batch among the workers (each sizes it from its own device's free
    memory, :func:`scatterdist.pipeline.task.worker_batch_size`), so that a task holds at least
    :data:`BATCHES_PER_TASK` batches on every worker."""
    sizes = client.run(worker_batch_size, config)
    if not sizes:
        raise RuntimeError("the Dask cluster has no workers: start workers, then run scatter again")
    return min(int(v) for v in sizes.values())


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
    keep_changed: bool = False,
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
    written. Resuming with another config is refused (:class:`scatterdist.store.StoreConfigError`);
    a store locked by a live writer too (the lock is taken on the resolved path).

    Trust (see the README's "Reliability"): ``store`` must be a store path
    (:func:`scatterdist.store.check_output`, checked before anything is touched). A resume first
    runs the quick :func:`scatterdist.store.verify` and marks damaged maps todo
    (``summary.damaged``), then compares each computed map's recorded input file (size,
    modification time) with the file now and recomputes the maps whose input changed
    (``summary.changed``; ``keep_changed=True`` keeps their old results and only reports them).
    Maps that failed on the machine (worker lost, out of memory, no space) are retried by every
    run; maps that failed on their input only with ``retry_failed``.
    """
    from scatterdist.transforms import build_transform

    store = os.fspath(store)
    zstore.check_output(store, overwrite)  # before anything is touched (the lock file included)
    if retries is None or int(retries) < 0:
        raise ValueError(f"retries (--retries) must be >= 0, got {retries}")
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
                           mask=mask, min_fsky=min_fsky, keep_changed=keep_changed)
    check_device(config)
    sc = build_transform(_client_config(config))
    if catalog.nside is not None and catalog.nside != sc.nside:
        raise ValueError(f"the inputs are at nside {catalog.nside} but the transform is at nside "
                         f"{sc.nside}: pass nside={catalog.nside}")
    data = check_data_options(sc.nside, fields, mask, min_fsky)
    if zstore.coverage_layout(catalog) == "shared":
        # Every map shares one mask: its coverage once, before anything is written (a
        # simulation mask that cannot be used refuses the run here, like a bad --mask).
        data.shared_coverage = _shared_coverage(catalog, sc, data)
    with zstore.StoreLock(store):
        resuming = zstore.store_kind(store) == "store" and not overwrite
        if resuming and shard_size is None:
            shard_size = zstore.layout(store).shard_size
        if shard_size is None:
            shard_size = default_shard_size(len(catalog))
        zstore.create(store, catalog, sc, shard_size, overwrite=overwrite, fields=data.fields,
                      mask=data.mask, min_fsky=data.min_fsky)
        lay = zstore.layout(store)
        ids, refs = catalog.ids, catalog.refs
        summary = ScatterSummary(store=store)
        if resuming:
            _check_resume(store, catalog, summary, keep_changed)
        table = zstore.read_status_table(store)
        status = table.status
        plan = _plan(status, table.failure, lay, retry_failed)
        n_todo = sum(sum(todo) for _, todo in plan)
        summary.skipped = len(catalog) - n_todo
        summary.shards_computed, summary.shards_skipped = len(plan), lay.n_shards - len(plan)
        summary.retried_machine = int(np.sum((status == zstore.STATUS_FAILED)
                                             & (table.failure == zstore.FAILURE_MACHINE)))
        if not plan:
            return summary
        if config.get("backend", "numpy") == "torch" and config.get("device", "auto") in ("auto", "cuda"):
            spread_gpus(client)  # one GPU per worker where a host's workers see the same GPUs
        nthreads = client.nthreads()
        if shards_per_task:
            group = shards_per_task
        else:
            worker_batch = 1 if batch_size or config.get("backend", "numpy") != "torch" else workers_batch_size(client, config)
            group = _shards_per_task(config, batch_size, lay.shard_size, len(plan), len(nthreads), worker_batch)
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
                except Exception as exc:  # noqa: BLE001 - KilledWorker, OSError (ENOSPC), MemoryError, ...
                    # The task raised (after its Dask retries) or killed its worker repeatedly:
                    # the machine's failure, not the inputs' (theirs are caught inside the task).
                    summary.tracebacks.append(_traceback_text(fut, exc))
                    shard_results = _mark_shards_failed(store, lay, items, ids, status,
                                                        _machine_reason(exc, retries))
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


def _check_resume(store: str, catalog: Catalog, summary: ScatterSummary, keep_changed: bool) -> None:
    """What a resume checks first: damaged chunks (quick verify) and changed inputs; the maps
    found are marked todo (changed ones unless ``keep_changed``) and listed in ``summary``."""
    ids = catalog.ids
    report = zstore.verify(store, depth="quick")
    if report.status_damaged:
        where = ", ".join(f"maps {a}-{b - 1}" for a, b in report.status_damaged[:5])
        raise zstore.DamagedStoreError(
            f"store {store}: the status of {where} cannot be read; run `scatterdist verify {store}` "
            "to mark them todo, then run scatter again")
    if report.damaged:
        zstore.repair(report)
        summary.damaged = [(ids[i], why) for i, why in sorted(report.damaged.items())]
    status = zstore.read_status(store)
    moved = _changed_inputs(store, catalog, status)
    summary.changed = [(ids[i], why) for i, why in moved]
    summary.recomputed_changed = not keep_changed
    if moved and not keep_changed:
        zstore.mark_todo(store, [i for i, _ in moved])


def _machine_reason(exc: BaseException, retries: int) -> str:
    """One line: what the machine did to a task, and that the next run retries it."""
    if isinstance(exc, KilledWorker):
        what = "worker died while running it (killed, or out of memory)"
    else:
        what = f"{type(exc).__name__}: {zstore.one_line(str(exc), 160)}"
        if retries:
            what += f" (after {retries} retries)"
    return f"machine failure: {what}; the next run retries it"


def _traceback_text(fut: Any, exc: BaseException) -> str:
    import traceback

    try:
        tb = fut.traceback()
    except Exception:  # noqa: BLE001 - the traceback is a debugging aid only
        tb = None
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _mark_shards_failed(store: str, lay: zstore.StoreLayout, items: list[tuple[int, list[bool]]],
                        ids: Sequence[str], planned: np.ndarray, reason: str) -> list[ShardResult]:
    """Record the shards of a task that could not finish: each todo map still as the plan found
    it (``planned``, the status read before submitting) fails with ``reason`` as a machine
    failure; maps the task wrote before it died keep what it wrote."""
    out = []
    for shard, mask in items:
        a, b = lay.bounds(shard)
        todo = [i for i in range(b - a) if mask[i]]
        rows = zstore.fail_unfinished(store, a, todo, planned[a:b][todo], reason, zstore.FAILURE_MACHINE)
        ok = sum(1 for _, st, _ in rows if st == zstore.STATUS_OK)
        failed = [(ids[m], err) for m, st, err in rows if st != zstore.STATUS_OK]
        out.append(ShardResult(shard, ok, len(failed), b - a - len(todo), failed, 0.0, -1))
    return out
