"""Reading a store: shards, status, rows, the xarray view and the mask summary."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr

from scatterdist.store.schema import layout

@dataclass(frozen=True)
class ShardData:
    """What a shard holds (see :func:`read_shard`)."""

    coefficients: np.ndarray          #: (k, F, P, N) float32 (F = 1 for a store without fields)
    coverage: np.ndarray | None       #: (k, P, N) per map, (P, N) shared, None: no coverage
    sky_fraction: np.ndarray | None   #: (k,) float32, None: not recorded
    status: np.ndarray                #: (k,) int8
    errors: list[str]


def read_shard(path: str | os.PathLike, shard_index: int) -> ShardData:
    """Everything :func:`write_shard` wrote for one shard (to rewrite a shard whole on resume)."""
    lay = layout(path)
    start, stop = lay.bounds(shard_index)
    group = zarr.open_group(os.fspath(path), mode="r")
    coeffs = group["coefficients"][start:stop]
    if coeffs.ndim == 3:
        coeffs = coeffs[:, None]
    cov = frac = None
    if lay.has_field_dim:
        cov = group["coverage"][start:stop] if lay.per_map_coverage else group["coverage"][...]
        frac = group["sky_fraction"][start:stop]
    return ShardData(coeffs, cov, frac, group["status"][start:stop].astype(np.int8),
                     [str(e) for e in group["error"][start:stop]])


def read_status(path: str | os.PathLike) -> np.ndarray:
    """The ``status (map)`` int8 array of a store (0 todo, 1 ok, -1 failed)."""
    return zarr.open_array(os.fspath(path), path="status", mode="r")[:]


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

