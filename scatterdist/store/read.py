"""Reading a store: shards, status, rows, the xarray view and the mask summary."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
import zarr

from scatterdist.store.errors import StoreError
from scatterdist.store.schema import (
    FAILURE_NONE,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_TODO,
    _open_group,
    layout,
)


class DamagedStoreError(StoreError):
    """Part of a store cannot be read (a chunk is missing, truncated or fails its checksum)."""

@dataclass(frozen=True)
class ShardData:
    """What a shard holds (see :func:`read_shard`)."""

    coefficients: np.ndarray          #: (k, F, P, N) float32 (F = 1 for a store without fields)
    coverage: np.ndarray | None       #: (k, P, N) per map, (P, N) shared, None: no coverage
    sky_fraction: np.ndarray | None   #: (k,) float32, None: not recorded
    status: np.ndarray                #: (k,) int8
    errors: list[str]
    failure: np.ndarray | None = None           #: (k,) int8 kinds of failed maps, None: not recorded
    identity: list[dict[str, Any]] | None = None  #: k input identities, None: not recorded
    unreadable: list[int] = field(default_factory=list)  #: positions whose chunks cannot be read


def _rows(arr: zarr.Array, start: int, stop: int, bad: set[int]) -> np.ndarray:
    """``arr[start:stop]``; when the block cannot be read, row by row, NaN for the rows that
    cannot be read (their positions, from ``start``, are added to ``bad``)."""
    try:
        return arr[start:stop]
    except OSError:
        raise
    except Exception:  # noqa: BLE001 - any decoding/checksum error of a damaged shard
        out = np.full((stop - start, *arr.shape[1:]), np.nan, dtype=arr.dtype)
        for i in range(start, stop):
            try:
                out[i - start] = arr[i]
            except OSError:
                raise
            except Exception:  # noqa: BLE001
                bad.add(i - start)
        return out


def read_shard(path: str | os.PathLike, shard_index: int) -> ShardData:
    """Everything :func:`write_shard` wrote for one shard (to rewrite a shard whole on resume).

    Maps whose chunks cannot be read (a damaged shard) come back NaN and are listed in
    ``ShardData.unreadable`` (positions in the shard): the caller recomputes them."""
    lay = layout(path)
    start, stop = lay.bounds(shard_index)
    group = zarr.open_group(os.fspath(path), mode="r")
    bad: set[int] = set()
    coeffs = _rows(group["coefficients"], start, stop, bad)
    if coeffs.ndim == 3:
        coeffs = coeffs[:, None]
    cov = frac = None
    if lay.has_field_dim:
        cov = _rows(group["coverage"], start, stop, bad) if lay.per_map_coverage else group["coverage"][...]
        frac = group["sky_fraction"][start:stop]
    failure = identity = None
    if lay.has_identity:
        failure = np.asarray(group["failure"][start:stop], np.int8)
        identity = _identity(group, start, stop)
    return ShardData(coeffs, cov, frac, group["status"][start:stop].astype(np.int8),
                     [str(e) for e in group["error"][start:stop]], failure, identity, sorted(bad))


def _identity(group: zarr.Group, start: int, stop: int) -> list[dict[str, Any]]:
    paths = group["input_path"][start:stop]
    sizes = group["input_size"][start:stop]
    mtimes = group["input_mtime"][start:stop]
    shas = group["input_sha256"][start:stop]
    return [{"path": str(p), "size": int(z), "mtime": float(t), "sha256": str(h)}
            for p, z, t, h in zip(paths, sizes, mtimes, shas)]


def read_identity(path: str | os.PathLike) -> list[dict[str, Any]] | None:
    """The recorded input identity of every map (``{"path", "size", "mtime", "sha256"}``), None
    for a store made before identities were recorded."""
    lay = layout(path)
    if not lay.has_identity:
        return None
    return _identity(zarr.open_group(os.fspath(path), mode="r"), 0, lay.n_maps)


def read_status(path: str | os.PathLike) -> np.ndarray:
    """The ``status (map)`` int8 array of a store (0 todo, 1 ok, -1 failed).

    A status chunk that cannot be read raises :class:`DamagedStoreError` naming its maps and
    the fix (``scatterdist verify``, which marks them todo)."""
    return _read_status(_open_group(path), os.fspath(path))


def _read_status(group: zarr.Group, path: str) -> np.ndarray:
    arr = group["status"]
    try:
        return np.asarray(arr[:], dtype=np.int8)
    except Exception as exc:  # noqa: BLE001 - any decoding error of a damaged chunk
        bad = unreadable_chunks(arr)
        where = ", ".join(f"maps {a}-{b - 1}" for a, b in bad[:5]) or "some maps"
        raise DamagedStoreError(
            f"store {path}: the status of {where} cannot be read ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}); run `scatterdist verify {path}` to mark them todo, "
            "then run scatter again") from exc


def unreadable_chunks(arr: zarr.Array) -> list[tuple[int, int]]:
    """``[start, stop)`` along the first axis of every chunk (shard, for a sharded array) of
    ``arr`` that raises when read."""
    try:
        arr[:]  # one read when nothing is wrong (the common case)
        return []
    except Exception:  # noqa: BLE001 - any decoding error: find which chunks
        pass
    step = arr.shards[0] if arr.shards is not None else arr.chunks[0]
    bad = []
    for a in range(0, arr.shape[0], step):
        b = min(a + step, arr.shape[0])
        try:
            arr[a:b]
        except Exception:  # noqa: BLE001 - any decoding error of a damaged chunk
            bad.append((a, b))
    return bad


def read_map_ids(path: str | os.PathLike) -> np.ndarray:
    """The map ids (``map`` coordinate) as an object array of str."""
    group = _open_group(path)
    return np.array([str(m) for m in group["map"][:]], dtype=object)


@dataclass(frozen=True)
class StatusTable:
    """Per map: ``ids``, ``status`` (int8), ``errors``, ``failure`` kinds (int8; 0 where not
    failed or not recorded) and ``labels`` (int64, -1: none; None when the store has none)."""

    ids: np.ndarray
    status: np.ndarray
    errors: np.ndarray
    failure: np.ndarray
    labels: np.ndarray | None

    def counts(self) -> dict[str, int]:
        return {"ok": int((self.status == STATUS_OK).sum()),
                "failed": int((self.status == STATUS_FAILED).sum()),
                "todo": int((self.status == STATUS_TODO).sum())}


def read_status_table(path: str | os.PathLike) -> StatusTable:
    """ids, status, errors, failure kinds and labels of every map (for ``info`` and ``scatter``)."""
    lay = layout(path)
    group = zarr.open_group(os.fspath(path), mode="r")
    status = _read_status(group, os.fspath(path))
    ids = np.array([str(m) for m in group["map"][:]], dtype=object)
    errors = np.array([str(e) for e in group["error"][:]], dtype=object)
    failure = (np.asarray(group["failure"][:], np.int8) if lay.has_identity
               else np.full(lay.n_maps, FAILURE_NONE, np.int8))
    labels = np.asarray(group["label"][:]).astype(np.int64) if "label" in group else None
    return StatusTable(ids, status, errors, failure, labels)


def pixel_means(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str], list[str] | None]:
    """Pixel means of every map's coefficients (NaN pixels left out), for a complete store.

    Returns ``(means (map, field, path) float64, labels (map,) int64 or None, map ids, path
    labels, path kinds or None when the store has no ``kind`` coordinate)``. Raises
    :class:`StoreError` when some map is not ok.
    """
    table = read_status_table(path)
    if not np.all(table.status == STATUS_OK):
        raise StoreError(f"store {os.fspath(path)} has {int(np.sum(table.status != STATUS_OK))} maps "
                         "without coefficients; run scatter again to resume it")
    ds = open_coefficients(path)
    means = ds["coefficients"].mean("pixel").values.astype(np.float64)
    kinds = [str(k) for k in ds["kind"].values] if "kind" in ds.coords else None
    return means, table.labels, [str(m) for m in table.ids], [str(p) for p in ds["path"].values], kinds


def read_rows(path: str | os.PathLike, start: int, stop: int) -> np.ndarray:
    """``coefficients[start:stop]`` as float32 numpy, as stored: ``(k, F, P, N)``, or
    ``(k, P, N)`` for a store without a ``field`` dimension."""
    return zarr.open_array(os.fspath(path), path="coefficients", mode="r")[start:stop]


def open_coefficients(path: str | os.PathLike) -> xr.Dataset:
    """Open a store lazily as an ``xarray.Dataset`` whose dask chunks are the shards."""
    lay = layout(path)
    return xr.open_zarr(os.fspath(path), chunks={"map": lay.shard_size}, consolidated=True)


def mask_summary(path: str | os.PathLike, min_coverage: float | None = None) -> dict[str, Any]:
    """Fields, masks, sky fractions and coverage of a store, for ``scatterdist info``.

    Returns ``{"fields", "mask", "coverage_layout", "sky_fraction", "coverage"}``:
    ``sky_fraction`` = ``{"n", "min", "median", "max"}`` over maps whose fraction is known (None
    if none is); ``coverage`` = ``{"min_coverage", "mean", "covered", "per_path"}`` where
    ``covered`` is the fraction of computed (map,) path, pixel values with coverage >=
    ``min_coverage`` (default: the store's ``min_coverage`` attribute, else 0.9) and
    ``per_path`` maps each path label to that fraction (None before any coverage is written).
    Stores without fields report field ``I``, full sky.
    """
    lay = layout(path)
    ds = open_coefficients(path)
    attrs = ds.attrs
    if not lay.has_field_dim:
        return {"fields": ["I"], "mask": "", "coverage_layout": "", "sky_fraction": None, "coverage": None}
    thr = float(attrs.get("min_coverage", 0.9) if min_coverage is None else min_coverage)
    frac = ds["sky_fraction"].values.astype(np.float64)
    known = frac[np.isfinite(frac)]
    sky = None if known.size == 0 else {"n": int(known.size), "min": float(known.min()),
                                        "median": float(np.median(known)), "max": float(known.max())}
    cov = ds["coverage"]
    other = [d for d in cov.dims if d != "path"]
    valid = cov.notnull()
    n_valid = valid.sum(other).values
    coverage = None
    if n_valid.sum() > 0:
        n_cov = (cov >= thr).sum(other).values
        per_path = {str(lbl): (float(c / n) if n else float("nan"))
                    for lbl, c, n in zip(ds["path"].values, n_cov, n_valid)}
        coverage = {"min_coverage": thr, "mean": float(cov.mean().values),
                    "covered": float(n_cov.sum() / n_valid.sum()), "per_path": per_path}
    return {"fields": list(lay.fields), "mask": str(attrs.get("mask", "")),
            "coverage_layout": lay.coverage_layout, "sky_fraction": sky, "coverage": coverage}

