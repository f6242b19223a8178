"""Readers of the file formats: HEALPix FITS, HealSparse and Zarr. Each returns float64 RING
pixels at the run's nside or raises :class:`BadMapError` for that input."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from scatterdist.inputs.base import UNSEEN, BadMapError

__all__: list[str] = []


def _check_values(m: np.ndarray, what: str) -> None:
    """Legacy (``fields=None``) check: NaN, infinite and UNSEEN pixels are all fatal."""
    bad = ~np.isfinite(m)
    if bad.any():
        raise BadMapError(f"{what}: {int(bad.sum())} NaN or infinite pixels")
    unseen = np.isclose(m, UNSEEN, rtol=1e-5, atol=0.0)
    if unseen.any():
        frac = unseen.mean()
        kind = "an all-UNSEEN map" if frac == 1 else "a partial-sky map"
        raise BadMapError(f"{what}: {kind} ({int(unseen.sum())} of {m.size} pixels UNSEEN); "
                          "fill or inpaint masked pixels first")


def _fits_columns(hdul: Any) -> int:
    """Number of map columns of the first table HDU (a partial-sky file's PIXEL column excluded)."""
    for hdu in hdul[1:]:
        cols = getattr(hdu, "columns", None)
        if cols is not None:
            names = [c.upper() for c in cols.names]
            explicit = str(hdu.header.get("INDXSCHM", "")).upper() == "EXPLICIT" or (
                names and names[0] == "PIXEL")
            return len(names) - (1 if explicit else 0)
    return 0


def _read_fits(path: str, nside: int, cols: tuple[int, ...], fields: Sequence[str] = ()) -> np.ndarray:
    """Columns ``cols`` of a HEALPix FITS file, ``(len(cols), npix)`` float64 RING."""
    import healpy as hp
    from astropy.io import fits as afits
    from astropy.utils.exceptions import AstropyUserWarning

    if not os.path.exists(path):
        raise BadMapError(f"missing file: {path}")
    try:
        with warnings.catch_warnings():
            # filterwarnings prepends: the last filter added wins.
            warnings.filterwarnings("ignore", category=AstropyUserWarning)
            warnings.filterwarnings("error", message=".*truncated.*", category=AstropyUserWarning)
            if max(cols) > 0:
                with afits.open(path) as hdul:
                    have = _fits_columns(hdul)
                if max(cols) >= have:
                    want = ", ".join(f for f in fields if f != "I") or "Q, U"
                    raise BadMapError(
                        f"{path} has {have} field(s); field(s) {want} need(s) Stokes Q and U "
                        f"(FITS fields 1 and 2): choose --fields I for a temperature-only file")
            m = hp.read_map(path, field=cols, dtype=np.float64, nest=False)
    except AstropyUserWarning as exc:
        raise BadMapError(f"truncated FITS file {path}: {exc}") from exc
    except (OSError, ValueError, TypeError, KeyError, IndexError, afits.VerifyError) as exc:
        if isinstance(exc, BadMapError):
            raise
        raise BadMapError(f"unreadable FITS file {path}: {type(exc).__name__}: {exc}") from exc
    m = np.atleast_2d(np.asarray(m, dtype=np.float64))
    got = hp.npix2nside(m.shape[-1]) if hp.isnpixok(m.shape[-1]) else None
    if got != nside:
        raise BadMapError(f"{path}: nside {got} (npix {m.shape[-1]}) differs from the run's nside {nside}")
    return m


def _load_fits(path: str, nside: int) -> np.ndarray:
    m = _read_fits(path, nside, (0,))[0]
    _check_values(m, path)
    return m


def _read_healsparse(path: str, nside: int) -> tuple[np.ndarray, np.ndarray]:
    """A scalar HealSparse map at ``nside``: ``(values, weights)``, both ``(npix,)`` RING.

    Valid pixels are the mask. Degraded maps (``nside < nside_sparse``) hold the mean of the
    valid sub-pixels (``generate_healpix_map(nside, reduction="mean")``) and weigh each pixel by
    its covered fraction (``fracdet_map``; below the coverage nside, the coverage map averaged
    with ``healpy.ud_grade``); upgraded maps repeat each value (``HealSparseMap.upgrade``).
    """
    import healpy as hp

    if not os.path.exists(path):
        raise BadMapError(f"missing file: {path}")
    try:
        import healsparse
    except ImportError as exc:
        raise BadMapError(f"{path} is a HealSparse map: install healsparse "
                          "(pip install 'scatterdist[healsparse]')") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy truncation chatter, optional backends
            hsp = healsparse.HealSparseMap.read(path)
    except Exception as exc:  # noqa: BLE001 - healsparse/astropy raise many types for bad files
        raise BadMapError(f"corrupt or unreadable HealSparse file {path}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if hsp.is_rec_array or hsp.is_wide_mask_map:
        raise BadMapError(f"{path}: HealSparse {'record-array' if hsp.is_rec_array else 'wide-mask'} "
                          "maps are not supported; give a scalar (float or integer) map")
    ns = int(hsp.nside_sparse)
    try:
        if nside == ns:
            values = hsp.generate_healpix_map(nest=False)
            weights = None
        elif nside > ns:
            values = hsp.upgrade(nside).generate_healpix_map(nest=False)
            weights = None
        else:
            values = hsp.generate_healpix_map(nside=nside, reduction="mean", nest=False)
            if nside >= hsp.nside_coverage:
                weights = hsp.fracdet_map(nside).generate_healpix_map(nest=False)
            else:
                cov = np.asarray(hsp.coverage_map, dtype=np.float64)  # covered fraction, NEST
                weights = hp.ud_grade(cov, nside, order_in="NEST", order_out="RING", power=0)
    except (ValueError, RuntimeError, MemoryError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise BadMapError(f"{path}: cannot bring the HealSparse map at nside {ns} to nside "
                          f"{nside}: {exc}") from exc
    values = np.asarray(values, dtype=np.float64)
    invalid = np.isclose(values, UNSEEN, rtol=1e-5, atol=0.0) | np.isnan(values)
    if weights is None:
        weights = (~invalid).astype(np.float64)
    else:
        weights = np.where(invalid, 0.0, np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0))
    return values, weights


def _scalar_only(fields: tuple[str, ...], what: str, kind: str) -> None:
    if fields != ("I",):
        extra = [f for f in fields if f != "I"]
        raise BadMapError(f"{what}: {kind} inputs hold one scalar field (I); field(s) {extra} "
                          "need a FITS file with Stokes I, Q, U: choose --fields I")


