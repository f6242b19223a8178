"""Loading maps on the worker side: references -> :class:`LoadedMap` (fields, weights, sky
fraction, identity) or a :class:`BadMapError` per map; batching loaded maps for a transform call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from scatterdist.inputs.base import DEFAULT_MIN_FSKY, UNSEEN, BadMapError, CatalogError, LoadedMap, MapRef
from scatterdist.inputs.fields import check_fields, make_fields
from scatterdist.inputs.identity import identity
from scatterdist.inputs.masks import _apodized, global_mask_frame, read_global_mask, rotated_mask
from scatterdist.inputs.readers import (
    _check_values,
    _legacy_fits,
    _read_fits,
    _read_healsparse,
    _scalar_only,
    check_file,
    read_zarr_rows,
    resample_maps,
)
from scatterdist.inputs.simulations import _sim_spec
from scatterdist.sphere import npix2nside

__all__ = ["load_maps", "stack_maps"]

_F32 = np.finfo(np.float32)


def _check_float32(raw: np.ndarray, valid: np.ndarray, what: str) -> None:
    """:class:`BadMapError` when a usable pixel does not fit float32 (the store's type): beyond
    its largest value (it would become inf) or nonzero below its smallest normal number (it
    would underflow)."""
    a = np.abs(raw)
    use = np.broadcast_to(valid, a.shape)
    hi = float(a.max(initial=0.0, where=use))
    if hi > _F32.max:
        n = int(((a > _F32.max) & use).sum())
        raise BadMapError(f"{what}: {n} pixel value(s) beyond float32 (|x| up to {hi:.3g} > "
                          f"{float(_F32.max):.3g}) would be stored as inf: rescale the map (e.g. other units)")
    nonzero = use & (a > 0)
    lo = float(a.min(initial=np.inf, where=nonzero))
    if lo < _F32.tiny:
        n = int(((a < _F32.tiny) & nonzero).sum())
        raise BadMapError(f"{what}: {n} nonzero pixel value(s) below float32's smallest normal number "
                          f"(|x| down to {lo:.3g} < {float(_F32.tiny):.3g}) would underflow: rescale the "
                          "map (e.g. other units)")


def _invalid(raw: np.ndarray, what: str) -> np.ndarray:
    """``(npix,)`` bool: pixels that are UNSEEN or NaN in any row; infinite pixels raise."""
    lo, hi = float(raw.min()), float(raw.max())  # NaN propagates: fast path for clean maps
    if np.isfinite(lo) and np.isfinite(hi) and lo > -1e30:
        return np.zeros(raw.shape[-1], dtype=bool)
    inf = np.isinf(raw)
    if inf.any():
        raise BadMapError(f"{what}: {int(inf.sum())} infinite pixels")
    return (np.isnan(raw) | np.isclose(raw, UNSEEN, rtol=1e-5, atol=0.0)).any(axis=0)


def _finish(raw: np.ndarray, stokes: tuple[str, ...], own: np.ndarray | None, fields: tuple[str, ...],
            gmask: np.ndarray | None, min_fsky: float, what: str,
            apodize_deg: float | None = None, ident: dict | None = None,
            resampled_from: int | None = None) -> LoadedMap:
    """Raw Stokes rows ``(S, npix)`` named ``stokes`` (+ the input's own weights) -> :class:`LoadedMap`."""
    raw = np.asarray(raw, dtype=np.float64)
    bad = _invalid(raw, what)
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
    valid = w > 0
    _check_float32(raw, valid, what)
    out = np.where(valid, raw, 0.0)
    mask = w if (has_own or gmask is not None) else None
    weights = mask
    if mask is not None and apodize_deg:  # raw weights unless asked (see load_maps)
        weights = _apodized(mask, apodize_deg)
    rows = make_fields(dict(zip(stokes, out)), fields, weights, valid)
    return LoadedMap(np.ascontiguousarray(np.stack(rows)), mask, fsky if mask is not None else 1.0,
                     fields, has_own, ident or {}, resampled_from)


def _load_fits(ref: MapRef, nside: int, fields: tuple[str, ...], gmask: np.ndarray | None,
               mask_frame: str | None, min_fsky: float, apodize_deg: float | None) -> LoadedMap:
    """A FITS map: columns by name, resampled to ``nside`` when ``ref.resample``, the global
    mask rotated to the map's ``COORDSYS`` when both frames are known and differ."""
    path = ref.where
    raw, stokes, header = _read_fits(path, nside, fields, ref.resample)
    ident = identity(ref, raw)
    own = None
    nside_in = npix2nside(raw.shape[-1])
    if nside_in != nside:
        bad = _invalid(raw, path)
        _check_float32(raw, ~bad, path)
        raw, own = resample_maps(np.where(bad, 0.0, raw), nside, (~bad).astype(np.float64) if bad.any() else None)
    if gmask is not None and mask_frame and header.coordsys and header.coordsys != mask_frame:
        gmask = rotated_mask(gmask, mask_frame, header.coordsys)
    return _finish(raw, stokes, own, fields, gmask, min_fsky, path, apodize_deg, ident,
                   nside_in if nside_in != nside else None)


def _load_one(ref: MapRef, nside: int, fields: tuple[str, ...], gmask: np.ndarray | None,
              min_fsky: float, apodize_deg: float | None = None, mask_frame: str | None = None) -> LoadedMap:
    if ref.kind == "fits":
        return _load_fits(ref, nside, fields, gmask, mask_frame, min_fsky, apodize_deg)
    if ref.kind == "hsp":
        check_file(ref.where)
        _scalar_only(fields, ref.where, "HealSparse")
        values, weights = _read_healsparse(ref.where, nside)
        return _finish(values[None], ("I",), weights, fields, gmask, min_fsky, ref.where,
                       ident=identity(ref, values))
    if ref.kind == "sim":
        what = f"simulation {ref.index}"
        _scalar_only(fields, what, "simulation")
        spec = _sim_spec(ref.where)
        m = np.asarray(spec.generate(ref.index), dtype=np.float64)
        if m.shape != (12 * nside * nside,):
            raise BadMapError(f"{what} has shape {m.shape}, run nside is {nside}")
        own = spec.mask_weights() if hasattr(spec, "mask_weights") else None
        return _finish(m[None], ("I",), own, fields, gmask, min_fsky, what, ident=identity(ref, m))
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
    store are read in one call. FITS maps at another nside fail unless their reference says
    ``resample`` (then they are resampled in harmonic space, ``LoadedMap.resampled_from``); a
    FITS ``mask`` whose ``COORDSYS`` differs from a FITS map's is rotated to the map's frame.
    Each map carries its ``identity`` (:mod:`scatterdist.inputs.identity`).

    Legacy form (for stores made before fields existed): with an explicit ``fields=None`` and
    ``mask=None`` the result is a float64 ``(npix,)`` array or a :class:`BadMapError` per map,
    and NaN or UNSEEN pixels are errors, exactly as before masks existed.
    """
    legacy = fields is None and mask is None
    if not legacy:
        fields = check_fields(("I",) if fields is None else fields)
        min_fsky = float(min_fsky)
    legacy = fields is None and mask is None
    if not legacy:
        fields = check_fields(("I",) if fields is None else fields)
        min_fsky = float(min_fsky)
        if not 0.0 <= min_fsky <= 1.0:
            raise CatalogError(f"min_fsky must lie in [0, 1], got {min_fsky}")
    gmask = None if mask is None else read_global_mask(mask, nside)
    mask_frame = global_mask_frame(mask)
    out: list[Any] = [BadMapError("not loaded")] * len(refs)
    zarr_groups: dict[tuple[str, str], list[int]] = {}
    for k, ref in enumerate(refs):
        if ref.kind == "zarr":
            zarr_groups.setdefault((ref.where, ref.variable), []).append(k)
            continue
        try:
            if not legacy:
                out[k] = _load_one(ref, nside, fields, gmask, min_fsky, apodize, mask_frame)
            elif ref.kind == "fits":
                out[k] = _legacy_fits(ref.where, nside)
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
        try:
            if not legacy:
                _scalar_only(fields, f"{where}::{variable}", "Zarr")
            block = read_zarr_rows(where, variable, np.array([refs[k].index for k in ks]), nside)
        except BadMapError as exc:
            for k in ks:
                out[k] = exc
            continue
        for k, m in zip(ks, block):
            what = f"{where}::{variable}[{refs[k].index}]"
            try:
                if legacy:
                    _check_values(m, what)
                    out[k] = np.ascontiguousarray(m)
                else:
                    out[k] = _finish(m[None], ("I",), None, fields, gmask, min_fsky, what,
                                     ident=identity(refs[k], m))
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
