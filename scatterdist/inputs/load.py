"""Loading maps on the worker side: references -> :class:`LoadedMap` (fields, weights, sky
fraction) or a :class:`BadMapError` per map; batching loaded maps for a transform call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from scatterdist.inputs.base import DEFAULT_MIN_FSKY, UNSEEN, BadMapError, CatalogError, LoadedMap, MapRef
from scatterdist.inputs.fields import _STOKES_COLUMN, _stokes_columns, check_fields
from scatterdist.inputs.masks import _apodized, read_global_mask
from scatterdist.inputs.readers import _check_values, _load_fits, _read_fits, _read_healsparse, _scalar_only
from scatterdist.inputs.simulations import _sim_spec

__all__ = ["load_maps", "stack_maps"]


def _finish(raw: np.ndarray, cols: tuple[int, ...], own: np.ndarray | None, fields: tuple[str, ...],
            gmask: np.ndarray | None, min_fsky: float, what: str,
            apodize_deg: float | None = None) -> LoadedMap:
    """Raw columns ``(C, npix)`` (+ the input's own weights) -> :class:`LoadedMap`."""
    raw = np.asarray(raw, dtype=np.float64)
    lo, hi = float(raw.min()), float(raw.max())  # NaN propagates: fast path for clean maps
    if np.isfinite(lo) and np.isfinite(hi) and lo > -1e30:
        bad = np.zeros(raw.shape[-1], dtype=bool)
    else:
        inf = np.isinf(raw)
        if inf.any():
            raise BadMapError(f"{what}: {int(inf.sum())} infinite pixels")
        bad = (np.isnan(raw) | np.isclose(raw, UNSEEN, rtol=1e-5, atol=0.0)).any(axis=0)
    has_own = own is not None or bool(bad.any())
    w = np.ones(raw.shape[-1]) if own is None else np.asarray(own, dtype=np.float64).copy()
    w[bad] = 0.0
    if gmask is not None:
        w *= gmask
    fsky = float(w.mean())
    npix = raw.shape[-1]
    if fsky <= 0.0:
        raise BadMapError(f"{what}: the map is entirely masked (no pixel of {npix} has weight > 0: "
                          f"{int(bad.sum())} UNSEEN/NaN{', the rest outside the mask' if gmask is not None else ''})")
    if fsky < min_fsky:
        raise BadMapError(f"{what}: usable sky fraction {fsky:.4g} is below min_fsky {min_fsky:g} "
                          "(lower --min-fsky to keep it)")
    out = np.where(w > 0, raw, 0.0)
    mask = w if (has_own or gmask is not None) else None
    col = {c: out[k] for k, c in enumerate(cols)}
    eb: tuple[np.ndarray, np.ndarray] | None = None
    rows = []
    for f in fields:
        if f in _STOKES_COLUMN:
            rows.append(col[_STOKES_COLUMN[f]])
            continue
        if eb is None:
            from scatterdist.sphere.spin import qu_to_eb

            weights = mask
            if mask is not None and apodize_deg:  # raw weights unless asked (see load_maps)
                weights = _apodized(mask, apodize_deg)
            e, b = qu_to_eb(col[1], col[2], mask=weights)
            eb = (np.where(w > 0, np.asarray(e, dtype=np.float64), 0.0),
                  np.where(w > 0, np.asarray(b, dtype=np.float64), 0.0))
        rows.append(eb[0] if f == "E" else eb[1])
    return LoadedMap(np.ascontiguousarray(np.stack(rows)), mask, fsky if mask is not None else 1.0,
                     fields, has_own)




def _load_one(ref: MapRef, nside: int, fields: tuple[str, ...], gmask: np.ndarray | None,
              min_fsky: float, apodize_deg: float | None = None) -> LoadedMap:
    if ref.kind == "fits":
        cols = _stokes_columns(fields)
        return _finish(_read_fits(ref.where, nside, cols, fields), cols, None, fields, gmask,
                       min_fsky, ref.where, apodize_deg)
    if ref.kind == "hsp":
        if not os.path.exists(ref.where):
            raise BadMapError(f"missing file: {ref.where}")
        _scalar_only(fields, ref.where, "HealSparse")
        values, weights = _read_healsparse(ref.where, nside)
        return _finish(values[None], (0,), weights, fields, gmask, min_fsky, ref.where)
    if ref.kind == "sim":
        what = f"simulation {ref.index}"
        _scalar_only(fields, what, "simulation")
        spec = _sim_spec(ref.where)
        m = np.asarray(spec.generate(ref.index), dtype=np.float64)
        if m.shape != (12 * nside * nside,):
            raise BadMapError(f"{what} has shape {m.shape}, run nside is {nside}")
        own = spec.mask_weights() if hasattr(spec, "mask_weights") else None
        return _finish(m[None], (0,), own, fields, gmask, min_fsky, what)
    raise BadMapError(f"unknown input kind {ref.kind!r}")


def load_maps(
    refs: Sequence[MapRef],
    nside: int,
    fields: Sequence[str] | str | None = ("I",),
    mask: str | os.PathLike | np.ndarray | None = None,
    *,
    min_fsky: float = DEFAULT_MIN_FSKY,
    apodize: float | None = None,
) -> list[Any]:
    """Load the maps of ``refs`` at ``nside``: one :class:`LoadedMap` or :class:`BadMapError` each.

    ``fields``: names from :data:`FIELDS` (e.g. ``("I",)``, ``("I", "E", "B")``); ``mask``: the
    global mask (path or ``(npix,)`` weights, see :func:`read_global_mask`; a bad one raises
    ``MaskError`` for the whole call); ``min_fsky``: smallest usable sky fraction of a map;
    ``apodize``: degrees of cosine apodisation of the weights applied to Q, U before E/B are
    made; None or 0 (default, recommended) uses the raw weights: the transform's own
    apodisation is what limits the E/B leakage, and apodising Q/U's weights as well only spreads
    it over the taper (measured in docs/cut-sky.md, ``scripts/masked_bias.py --polarisation``).
    The returned ``mask`` is never apodised (the transform apodises it).
    Errors are per map: one bad input never prevents the others from loading. Zarr rows of one
    store are read in one call.

    Legacy form (for stores made before fields existed): with an explicit ``fields=None`` and
    ``mask=None`` the result is a float64 ``(npix,)`` array or a :class:`BadMapError` per map,
    and NaN or UNSEEN pixels are errors, exactly as before masks existed.
    """
    legacy = fields is None and mask is None
    if not legacy:
        fields = check_fields(("I",) if fields is None else fields)
        min_fsky = float(min_fsky)
        if not 0.0 <= min_fsky <= 1.0:
            raise CatalogError(f"min_fsky must lie in [0, 1], got {min_fsky}")
    gmask = None if mask is None else read_global_mask(mask, nside)
    out: list[Any] = [BadMapError("not loaded")] * len(refs)
    zarr_groups: dict[tuple[str, str], list[int]] = {}
    for k, ref in enumerate(refs):
        if ref.kind == "zarr":
            zarr_groups.setdefault((ref.where, ref.variable), []).append(k)
            continue
        try:
            if not legacy:
                out[k] = _load_one(ref, nside, fields, gmask, min_fsky, apodize)
            elif ref.kind == "fits":
                out[k] = _load_fits(ref.where, nside)
            elif ref.kind == "sim":
                m = np.asarray(_sim_spec(ref.where).generate(ref.index), dtype=np.float64)
                if m.shape != (12 * nside * nside,):
                    raise BadMapError(f"simulation {ref.index} has shape {m.shape}, run nside is {nside}")
                _check_values(m, f"simulation {ref.index}")
                out[k] = m
            else:
                raise BadMapError(f"input kind {ref.kind!r} ({ref.where}) needs load_maps(..., fields=...)"
                                  if ref.kind == "hsp" else f"unknown input kind {ref.kind!r}")
        except BadMapError as exc:
            out[k] = exc
    for (where, variable), ks in zarr_groups.items():
        import zarr

        rows = np.array([refs[k].index for k in ks])
        try:
            if not legacy:
                _scalar_only(fields, f"{where}::{variable}", "Zarr")
            arr = zarr.open_array(where, path=variable, mode="r")
            if arr.shape[-1] != 12 * nside * nside:
                raise BadMapError(f"{where}::{variable} has {arr.shape[-1]} pixels, run nside is {nside}")
            lo, hi = int(rows.min()), int(rows.max()) + 1
            block = np.asarray(arr[lo:hi], dtype=np.float64)[rows - lo]
        except BadMapError as exc:
            for k in ks:
                out[k] = exc
            continue
        except (OSError, ValueError, KeyError) as exc:
            err = BadMapError(f"cannot read {where}::{variable}: {type(exc).__name__}: {exc}")
            for k in ks:
                out[k] = err
            continue
        for k, m in zip(ks, block):
            what = f"{where}::{variable}[{refs[k].index}]"
            try:
                if legacy:
                    _check_values(m, what)
                    out[k] = np.ascontiguousarray(m)
                else:
                    out[k] = _finish(m[None], (0,), None, fields, gmask, min_fsky, what)
            except BadMapError as exc:
                out[k] = exc
    return out


def stack_maps(loaded: Sequence[LoadedMap]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Batch :class:`LoadedMap` objects for one transform call.

    Returns ``data (B, F, npix)`` float64, ``masks (B, npix)`` float64 (ones for full-sky maps)
    or None when no map has a mask, and ``sky_fraction (B,)`` float64. All maps must have the
    same fields and size.
    """
    if not loaded:
        raise ValueError("stack_maps needs at least one loaded map")
    fields = loaded[0].fields
    if any(m.fields != fields for m in loaded):
        raise ValueError(f"cannot stack maps with different fields: {sorted({m.fields for m in loaded})}")
    data = np.stack([m.data for m in loaded])
    masks = None if all(m.mask is None for m in loaded) else np.stack([m.weights for m in loaded])
    return data, masks, np.array([m.sky_fraction for m in loaded], dtype=np.float64)
