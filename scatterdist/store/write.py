"""Writing a store: one whole shard per task, data first and status last."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import zarr

from scatterdist.store.errors import StoreError
from scatterdist.store.schema import MAX_ERROR_CHARS, STATUS_OK, StoreLayout, layout

def _write_status(group: zarr.Group, start: int, status: np.ndarray, errors: Sequence[str]) -> None:
    status = np.asarray(status, dtype=np.int8)
    if len(errors) != len(status):
        raise StoreError(f"{len(errors)} error messages for {len(status)} status values")
    stop = start + len(status)
    group["error"][start:stop] = np.array([str(e)[:MAX_ERROR_CHARS] for e in errors], dtype=object)
    group["status"][start:stop] = status


def write_status(path: str | os.PathLike, start: int, status: np.ndarray,
                 errors: Sequence[str]) -> None:
    """Write ``error`` then ``status`` for maps ``[start, start+len(status))`` (one shard)."""
    _write_status(zarr.open_group(os.fspath(path), mode="r+"), start, status, errors)


def _open_for_write(path: str | os.PathLike) -> tuple[zarr.Group, StoreLayout]:
    try:
        group = zarr.open_group(os.fspath(path), mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{path} is not a scatterdist store (no Zarr group there)") from exc
    if "shard_size" not in group.attrs or "coefficients" not in group:
        raise StoreError(f"{path} is not a scatterdist store")
    return group, layout(path)


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


def write_shard(
    path: str | os.PathLike,
    shard_index: int,
    coefficients: np.ndarray,
    status: np.ndarray,
    errors: Sequence[str],
    *,
    coverage: np.ndarray | None = None,
    sky_fraction: np.ndarray | None = None,
) -> None:
    """Write one whole shard of ``k`` maps, data first and ``error``/``status`` last.

    ``coefficients``: ``(k, F, n_paths, npix_out)``, or ``(k, n_paths, npix_out)`` when the
    store has one field (or no ``field`` dimension). ``status``: ``(k,)`` int8, 1 ok / -1
    failed; ``errors``: ``k`` messages. ``coverage``: ``(k, n_paths, npix_out)`` for a per-map
    store, ``(n_paths, npix_out)`` for a shared one; None means the maps were transformed full
    sky (ok rows get 1, failed rows NaN; refused when the store has a global mask).
    ``sky_fraction``: ``(k,)`` (NaN allowed); None means 1.0 for ok rows, NaN for failed rows.
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
    ok = status_arr == STATUS_OK
    cov = frac = None
    if lay.has_field_dim:
        what = f"shard {shard_index} of {path}"
        if coverage is None:
            if group.attrs.get("mask") or group.attrs.get("masked_simulations"):
                why = (f"the global mask {group.attrs['mask']}" if group.attrs.get("mask")
                       else "masked simulations (mask or galactic_cut)")
                raise StoreError(f"{what}: the store has {why}; pass the transform's coverage")
            shape = (k, lay.n_paths, lay.npix_out) if lay.per_map_coverage else (lay.n_paths, lay.npix_out)
            cov = np.ones(shape, np.float32)
            if lay.per_map_coverage:
                cov[~ok] = np.nan
        else:
            shape = (k, lay.n_paths, lay.npix_out) if lay.per_map_coverage else (lay.n_paths, lay.npix_out)
            cov = _check_coverage(coverage, shape, what)
        if sky_fraction is None:
            frac = np.where(ok, 1.0, np.nan).astype(np.float32)
        else:
            frac = np.asarray(sky_fraction, dtype=np.float32)
            if frac.shape != (k,):
                raise StoreError(f"{what} needs {k} sky fractions, got shape {frac.shape}")
    group["coefficients"][start:stop] = coefficients.astype(np.float32, copy=False)
    if cov is not None:
        if lay.per_map_coverage:
            group["coverage"][start:stop] = cov
        else:
            group["coverage"][...] = cov
        group["sky_fraction"][start:stop] = frac
    _write_status(group, start, status_arr, errors)

