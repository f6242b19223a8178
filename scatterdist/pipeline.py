"""Dask orchestration: catalog -> one task per shard (load, transform, write) -> Zarr store.

Design (measured in ``benchmarks/pipeline.py``): **one task per shard** loads its maps from
their references, transforms them with a per-worker cached ``Scattering`` and writes the whole
shard (data, then status). The alternative, per-map transform tasks plus one writer task per
shard, moves every coefficient array between processes and adds a task per shard for no gain.

The client keeps a bounded window of shards in flight (``distributed.as_completed``, refilled
as shards finish), so a catalog of a million maps never becomes a million futures. A bad map
becomes ``status=-1`` plus a message; a raised error or a dead worker is retried by Dask
(``retries=`` and the scheduler's ``allowed-failures``); a shard that still fails is marked
failed with the reason. Re-running resumes: shards whose maps are all done are skipped,
failed maps are recomputed only with ``retry_failed=True``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed import Client, KilledWorker, as_completed

from scatterdist import store as zstore
from scatterdist.catalog import BadMapError, Catalog, MapRef, load_maps

__all__ = ["ScatterSummary", "ShardResult", "scatter", "default_shard_size", "run_shard"]

#: Maps transformed per ``Scattering`` call inside a task (bounds worker memory).
TRANSFORM_BATCH = 8


@dataclass
class ShardResult:
    """What one shard task did: maps ok/failed (``failures`` = (id, message)) and its seconds."""

    shard: int
    ok: int
    failed: int
    reused: int
    failures: list[tuple[str, str]]
    seconds: float
    worker_pid: int


@dataclass
class ScatterSummary:
    """Outcome of :func:`scatter`.

    ``ok``/``failed``: maps computed in this run; ``skipped``: maps left as they were (done
    earlier, or failed earlier without ``retry_failed``); ``maps_per_s`` = (ok + failed) /
    ``seconds`` (wall time of the compute phase); ``failures``: (map id, message) of this run.
    ``shards_computed``/``shards_skipped``: shards submitted / left alone.
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

    @property
    def all_ok(self) -> bool:
        """True when this run left no failed map (see the store's status for earlier ones)."""
        return self.failed == 0


def default_shard_size(n_maps: int) -> int:
    """K = ceil(n/16) clipped to [1, 32]: >= 16 shards for parallelism, few-MB shards at scale."""
    return int(min(32, max(1, math.ceil(n_maps / 16))))


# ---------------------------------------------------------------------- worker side

_SC_CACHE: dict[str, Any] = {}
_SC_LOCK = threading.Lock()


def _scattering(config: dict[str, Any]) -> Any:
    """The ``Scattering`` for ``config``, built once per worker process (keyed by its hash)."""
    key = zstore.config_hash(config) + repr(sorted((k, repr(v)) for k, v in config.items()))
    with _SC_LOCK:
        sc = _SC_CACHE.get(key)
        if sc is None:
            from scatterdist.transforms import build_transform

            sc = _SC_CACHE[key] = build_transform(config)
        return sc


def _to_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def run_shard(
    store_path: str,
    shard: int,
    start: int,
    ids: Sequence[str],
    refs: Sequence[MapRef],
    config: dict[str, Any],
    recompute: Sequence[bool],
) -> ShardResult:
    """Task body: load + transform the maps of one shard and write the whole shard.

    ``recompute[i]`` False means map ``start+i`` is already ok in the store: its row is read
    back so the shard is rewritten whole. Per-map problems become status -1 with a message.
    """
    t0 = time.perf_counter()
    sc = _scattering(config)
    k = len(refs)
    coeffs = np.full((k, sc.n_paths, sc.npix_out), np.nan, dtype=np.float32)
    status = np.full(k, zstore.STATUS_FAILED, dtype=np.int8)
    errors = [""] * k
    keep = [i for i in range(k) if not recompute[i]]
    if keep:
        old = zstore.read_rows(store_path, start, start + k)
        coeffs[keep] = old[keep]
        status[keep] = zstore.STATUS_OK
    todo = [i for i in range(k) if recompute[i]]
    loaded = load_maps([refs[i] for i in todo], sc.nside)
    good: list[int] = []
    for i, m in zip(todo, loaded):
        if isinstance(m, BadMapError):
            errors[i] = str(m)
        else:
            good.append(i)
    maps = {i: m for i, m in zip(todo, loaded) if not isinstance(m, BadMapError)}
    for b in range(0, len(good), TRANSFORM_BATCH):
        batch = good[b : b + TRANSFORM_BATCH]
        x = np.stack([maps[i] for i in batch])
        try:
            out = _to_numpy(sc(x))
        except ValueError:
            # A map the loader accepted but the transform refuses (InvalidMapError is a
            # ValueError): redo this batch map by map so only the culprit fails.
            for i in batch:
                try:
                    coeffs[i] = _to_numpy(sc(maps[i]))
                    status[i] = zstore.STATUS_OK
                except ValueError as exc:
                    errors[i] = f"{type(exc).__name__}: {exc}"
            continue
        coeffs[batch] = out.astype(np.float32)
        status[batch] = zstore.STATUS_OK
    zstore.write_shard(store_path, shard, coeffs, status, errors)
    failures = [(ids[i], errors[i]) for i in todo if status[i] != zstore.STATUS_OK]
    n_ok = sum(1 for i in todo if status[i] == zstore.STATUS_OK)
    return ShardResult(shard, n_ok, len(failures), len(keep), failures,
                       time.perf_counter() - t0, os.getpid())


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


def _progress_bar(total: int, enabled: bool, skipped: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="map", desc="scatter", file=sys.stderr, dynamic_ncols=True,
               smoothing=0.1)
    bar.set_postfix(failed=0, skipped=skipped)
    return bar


def scatter(
    catalog: Catalog,
    store: str | os.PathLike,
    config: dict[str, Any],
    client: Client | None = None,
    shard_size: int | None = None,
    retries: int = 3,
    retry_failed: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    window: int | None = None,
    resources: dict[str, float] | None = None,
) -> ScatterSummary:
    """Scatter every map of ``catalog`` into the Zarr store ``store`` with Dask.

    ``config``: ``Scattering`` parameters (``Scattering(**config)`` rebuilds the transform on
    each worker, once), or another transform's with a ``"transform"`` key
    (:func:`scatterdist.transforms.build_transform`, e.g. ``"lowpass"``). ``client``: a ``distributed.Client`` (default: a local cluster for
    this call). ``shard_size``: maps per shard (default :func:`default_shard_size`, or the
    existing store's). ``retries``: Dask retries of a shard task that raised or whose worker
    died. ``retry_failed``: also recompute maps whose status is -1. ``window``: shards in
    flight (default 2 x total worker threads). ``resources``: Dask task resources, e.g.
    ``{"GPU": 1}`` on a dask-cuda cluster. Resuming with another config is refused
    (:class:`scatterdist.store.StoreConfigError`); a store locked by a live writer too.
    """
    from scatterdist.transforms import build_transform

    store = os.fspath(store)
    if len(catalog) == 0:
        raise ValueError("the catalog is empty: nothing to scatter")
    if client is None:
        from scatterdist.cluster import connect

        with connect("local") as own:
            return scatter(catalog, store, config, own, shard_size, retries, retry_failed,
                           progress, overwrite, window, resources)
    sc = build_transform(config)
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
        nthreads = sum(client.nthreads().values()) or 1
        window = window or max(2, 2 * nthreads)
        bar = _progress_bar(n_todo, progress, summary.skipped)
        t0 = time.perf_counter()
        pending = iter(plan)
        futures: dict[Any, tuple[int, list[bool]]] = {}

        def submit_next(ac: as_completed | None) -> bool:
            item = next(pending, None)
            if item is None:
                return False
            s, mask = item
            a, b = lay.bounds(s)
            fut = client.submit(run_shard, store, s, a, ids[a:b], refs[a:b], config, mask,
                                key=f"scatter-shard-{lay.config_hash}-{s}-{os.getpid()}-{time.time_ns()}",
                                retries=retries, pure=False, resources=resources)
            futures[fut] = item
            if ac is not None:
                ac.add(fut)
            return True

        for _ in range(window):
            if not submit_next(None):
                break
        initial = list(futures)
        ac = as_completed(initial)
        try:
            for fut in ac:
                s, mask = futures.pop(fut)
                try:
                    res: ShardResult = fut.result()
                except KilledWorker as exc:
                    res = _mark_shard_failed(store, lay, s, mask, ids,
                                             f"worker died {exc.__class__.__name__}: the shard killed "
                                             "its worker repeatedly (out of memory?)")
                except (OSError, ValueError, RuntimeError, zstore.StoreError) as exc:
                    res = _mark_shard_failed(store, lay, s, mask, ids,
                                             f"shard task failed after {retries} retries: "
                                             f"{type(exc).__name__}: {exc}")
                summary.ok += res.ok
                summary.failed += res.failed
                summary.failures.extend(res.failures)
                if bar is not None:
                    bar.update(res.ok + res.failed)
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


def _mark_shard_failed(store: str, lay: zstore.StoreLayout, shard: int, mask: list[bool],
                       ids: Sequence[str], reason: str) -> ShardResult:
    """Record a shard whose task could not finish: its todo maps get status -1 and ``reason``.

    Safe because the shard's own task is gone (no concurrent writer); maps already ok keep 1.
    """
    a, b = lay.bounds(shard)
    status = zstore.read_status(store)[a:b].copy()
    errors = [""] * (b - a)
    import zarr

    old_err = zarr.open_array(store, path="error", mode="r")[a:b]
    failures = []
    for i in range(b - a):
        if mask[i]:
            status[i] = zstore.STATUS_FAILED
            errors[i] = reason
            failures.append((ids[a + i], reason))
        else:
            errors[i] = str(old_err[i])
    zstore.write_status(store, a, status, errors)
    return ShardResult(shard, 0, len(failures), 0, failures, 0.0, -1)
