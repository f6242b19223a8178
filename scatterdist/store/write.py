"""Writing a store: one whole shard per task, data first and status last; status repairs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from scatterdist.store.errors import StoreError
from scatterdist.store.keys import shard_file
from scatterdist.store.schema import (
    FAILURE_NONE,
    MAX_ERROR_CHARS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_TODO,
    StoreLayout,
    _layout_any,
)

#: Identity of a map without a file (simulation, in-memory input) or not known.
NO_IDENTITY: dict[str, Any] = {"path": "", "size": -1, "mtime": float("nan"), "sha256": ""}


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


def _open_for_write(path: str | os.PathLike) -> tuple[zarr.Group, StoreLayout]:
    lay = _layout_any(path)  # StoreError with the reason when it is not a store
    return zarr.open_group(os.fspath(path), mode="r+"), lay


def _write_status(group: zarr.Group, lay: StoreLayout, start: int, status: np.ndarray,
                  errors: Sequence[str], failure: np.ndarray | None = None) -> None:
    status = np.asarray(status, dtype=np.int8)
    if len(errors) != len(status):
        raise StoreError(f"{len(errors)} error messages for {len(status)} status values")
    stop = start + len(status)
    group["error"][start:stop] = np.array([str(e)[:MAX_ERROR_CHARS] for e in errors], dtype=object)
    if lay.has_identity:
        kinds = np.full(len(status), FAILURE_NONE, np.int8) if failure is None else np.asarray(failure, np.int8)
        group["failure"][start:stop] = np.where(status == STATUS_FAILED, kinds, FAILURE_NONE).astype(np.int8)
    group["status"][start:stop] = status


def write_status(path: str | os.PathLike, start: int, status: np.ndarray,
                 errors: Sequence[str], failure: np.ndarray | None = None) -> None:
    """Write ``error`` (and ``failure``: per-map kind of failed maps) then ``status`` for maps
    ``[start, start+len(status))`` (one shard)."""
    group, lay = _open_for_write(path)
    _write_status(group, lay, start, status, errors, failure)


def mark_todo(path: str | os.PathLike, maps: Sequence[int]) -> None:
    """Set ``status`` of the given map indices to todo (0), clearing their error and failure kind,
    so that the next run recomputes them. For a writer that holds the lock (or a stopped store)."""
    group, lay = _open_for_write(path)
    index = np.unique(np.asarray(list(maps), dtype=np.int64))
    if index.size == 0:
        return
    for s in np.unique(index // lay.shard_size):  # whole status chunks: one shard at a time
        a, b = s * lay.shard_size, min((s + 1) * lay.shard_size, lay.n_maps)
        rows = index[(index >= a) & (index < b)] - a
        status = _status_or_todo(group, a, b)
        errors = _errors_or_blank(group, a, b)
        failure = np.asarray(group["failure"][a:b], np.int8) if lay.has_identity else None
        status[rows] = STATUS_TODO
        for r in rows:
            errors[r] = ""
        _write_status(group, lay, a, status, errors, failure)


def fail_unfinished(path: str | os.PathLike, start: int, rows: Sequence[int], planned: np.ndarray,
                    reason: str, kind: int) -> list[tuple[int, int, str]]:
    """Record maps of a shard whose task could not finish (its worker died, it raised).

    ``rows``: positions (from ``start``) the task was to compute; ``planned``: their status when
    the task was submitted. A row still as planned becomes failed with ``reason`` and ``kind``;
    a row the task wrote before it died (ok, or failed with its own reason) keeps it. Returns
    ``(map index, status, error)`` of every row. Safe because the task is gone (no other writer
    of the shard).
    """
    group, lay = _open_for_write(path)
    shard = start // lay.shard_size
    a, b = lay.bounds(shard)
    status = _status_or_todo(group, a, b)
    errors = _errors_or_blank(group, a, b)
    failure = (np.asarray(group["failure"][a:b], np.int8).copy() if lay.has_identity
               else np.zeros(b - a, np.int8))
    out = []
    for r in rows:
        i = start - a + int(r)
        if status[i] != STATUS_OK and status[i] == planned[int(r)]:
            status[i], errors[i], failure[i] = STATUS_FAILED, one_line(reason), kind
        out.append((a + i, int(status[i]), errors[i]))
    _write_status(group, lay, a, status, errors, failure)
    return out


def _status_or_todo(group: zarr.Group, a: int, b: int) -> np.ndarray:
    """``status[a:b]``; a chunk that cannot be read (damaged) reads as todo."""
    try:
        return np.asarray(group["status"][a:b], dtype=np.int8).copy()
    except Exception:  # noqa: BLE001 - any decoding error of a damaged chunk: it is rewritten
        return np.full(b - a, STATUS_TODO, np.int8)


def _errors_or_blank(group: zarr.Group, a: int, b: int) -> list[str]:
    try:
        return [str(e) for e in group["error"][a:b]]
    except Exception:  # noqa: BLE001 - a damaged chunk is rewritten
        return [""] * (b - a)


def _write_whole_shard(group: zarr.Group, path: str | os.PathLike, name: str, shard_index: int,
                       start: int, stop: int, value: np.ndarray) -> None:
    """Write rows ``[start, stop)`` (one whole shard) of a sharded array. A damaged shard file
    (truncated, failing its checksum) cannot be merged into: it is removed and written afresh
    (this task holds every row of the shard; if it dies in between, ``verify`` finds the gap)."""
    try:
        group[name][start:stop] = value
    except OSError:
        raise
    except Exception:  # noqa: BLE001 - any decoding error of the old shard file
        damaged = shard_file(os.fspath(path), name, shard_index)
        if damaged is None or not os.path.exists(damaged):
            raise
        os.remove(damaged)
        group[name][start:stop] = value


def _check_coverage(coverage: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    cov = np.asarray(coverage, dtype=np.float32)
    if cov.shape != shape:
        raise StoreError(f"{what} needs coverage of shape {shape}, got {cov.shape}")
    finite = cov[np.isfinite(cov)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise StoreError(f"{what}: coverage values must lie in [0, 1] (NaN: not computed), "
                         f"got [{finite.min()}, {finite.max()}]")
    return cov


def write_coverage(path: str | os.PathLike, coverage: np.ndarray) -> None:
    """Write the shared ``coverage (path, pixel)`` of a store whose masks cannot differ.

    Idempotent (the value depends only on the mask and the transform): any task, or the
    client once, may write it. Per-map stores take coverage through :func:`write_shard`.
    """
    group, lay = _open_for_write(path)
    if not lay.has_field_dim or lay.per_map_coverage:
        raise StoreError(f"{path} has no shared coverage (layout {lay.coverage_layout or 'none'}): "
                         "give per-map coverage to write_shard")
    group["coverage"][...] = _check_coverage(coverage, (lay.n_paths, lay.npix_out), f"store {path}")


def _write_identity(group: zarr.Group, start: int, identity: Sequence[dict[str, Any]]) -> None:
    stop = start + len(identity)
    ids = [{**NO_IDENTITY, **(i or {})} for i in identity]
    group["input_path"][start:stop] = np.array([str(i["path"]) for i in ids], dtype=object)
    group["input_size"][start:stop] = np.array([int(i["size"]) for i in ids], dtype=np.int64)
    group["input_mtime"][start:stop] = np.array([float(i["mtime"]) for i in ids], dtype=np.float64)
    group["input_sha256"][start:stop] = np.array([str(i["sha256"]) for i in ids], dtype=object)


def write_shard(
    path: str | os.PathLike,
    shard_index: int,
    coefficients: np.ndarray,
    status: np.ndarray,
    errors: Sequence[str],
    *,
    coverage: np.ndarray | None = None,
    sky_fraction: np.ndarray | None = None,
    failure: np.ndarray | None = None,
    identity: Sequence[dict[str, Any]] | None = None,
) -> None:
    """Write one whole shard of ``k`` maps, data first and ``error``/``failure``/``status`` last.

    ``coefficients``: ``(k, F, n_paths, npix_out)``, or ``(k, n_paths, npix_out)`` when the
    store has one field. ``status``: ``(k,)`` int8, 1 ok / -1 failed; ``errors``: ``k`` messages;
    ``failure``: ``(k,)`` int8 kind of each failed map (``FAILURE_INPUT`` / ``FAILURE_MACHINE``;
    None: ``FAILURE_NONE``). ``coverage``: ``(k, n_paths, npix_out)`` for a per-map store,
    ``(n_paths, npix_out)`` for a shared one; None means the maps were transformed full sky (ok
    rows get 1, failed rows NaN; refused when the store has a global mask). ``sky_fraction``:
    ``(k,)`` (NaN allowed); None means 1.0 for ok rows, NaN for failed rows. ``identity``: ``k``
    dicts ``{"path", "size", "mtime", "sha256"}`` of the inputs as read (None: unknown).
    Rows of failed maps should be NaN. Only the task that owns a shard may call this.
    """
    group, lay = _open_for_write(path)
    start, stop = lay.bounds(shard_index)
    k = stop - start
    coefficients = np.asarray(coefficients)
    nf = lay.n_fields
    if lay.has_field_dim and coefficients.ndim == 3 and nf == 1:
        coefficients = coefficients[:, None]
    elif not lay.has_field_dim and coefficients.ndim == 4 and coefficients.shape[1:2] == (1,):
        coefficients = coefficients[:, 0]
    expected = (k, nf, lay.n_paths, lay.npix_out) if lay.has_field_dim else (k, lay.n_paths, lay.npix_out)
    if coefficients.shape != expected:
        raise StoreError(f"shard {shard_index} of {path} needs coefficients of shape {expected} "
                         f"(map, {'field, ' if lay.has_field_dim else ''}path, pixel), got {coefficients.shape}")
    status_arr = np.asarray(status)
    if status_arr.shape != (k,):
        raise StoreError(f"shard {shard_index} needs {k} status values, got shape {status_arr.shape}")
    if identity is not None and len(identity) != k:
        raise StoreError(f"shard {shard_index} needs {k} input identities, got {len(identity)}")
    ok = status_arr == STATUS_OK
    cov = frac = None
    if lay.has_field_dim:
        what = f"shard {shard_index} of {path}"
        shape = (k, lay.n_paths, lay.npix_out) if lay.per_map_coverage else (lay.n_paths, lay.npix_out)
        if coverage is None:
            if group.attrs.get("mask") or group.attrs.get("masked_simulations"):
                why = (f"the global mask {group.attrs['mask']}" if group.attrs.get("mask")
                       else "masked simulations (mask or galactic_cut)")
                raise StoreError(f"{what}: the store has {why}; pass the transform's coverage")
            cov = np.ones(shape, np.float32)
            if lay.per_map_coverage:
                cov[~ok] = np.nan
        else:
            cov = _check_coverage(coverage, shape, what)
        if sky_fraction is None:
            frac = np.where(ok, 1.0, np.nan).astype(np.float32)
        else:
            frac = np.asarray(sky_fraction, dtype=np.float32)
            if frac.shape != (k,):
                raise StoreError(f"{what} needs {k} sky fractions, got shape {frac.shape}")
    _write_whole_shard(group, path, "coefficients", shard_index, start, stop,
                       coefficients.astype(np.float32, copy=False))
    if cov is not None:
        if lay.per_map_coverage:
            _write_whole_shard(group, path, "coverage", shard_index, start, stop, cov)
        else:
            group["coverage"][...] = cov
        group["sky_fraction"][start:stop] = frac
    if lay.has_identity:
        _write_identity(group, start, identity if identity is not None else [NO_IDENTITY] * k)
    _write_status(group, lay, start, status_arr, errors, failure)
