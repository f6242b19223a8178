"""Readers of the file formats: HEALPix FITS, HealSparse and Zarr. Each returns float64 RING
pixels at the run's nside or raises :class:`BadMapError` for that input."""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scatterdist.inputs.base import UNSEEN, BadMapError
from scatterdist.inputs.fields import stokes_columns

__all__ = ["FitsHeader", "check_file", "coordsys_of", "read_fits_header", "read_zarr_rows", "resample_maps",
           "resample_lmax"]


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


def check_file(path: str) -> os.stat_result:
    """``os.stat(path)``, or :class:`BadMapError` saying why the file cannot be read: missing,
    a symlink loop, a symlink to a missing target, a directory."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise BadMapError(f"broken symlink: {path} -> {os.readlink(path)} (the target does not exist)") from None
        raise BadMapError(f"missing file: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadMapError(f"symlink loop: {path} (a chain of symlinks that never reaches a file); "
                              "fix the link") from None
        raise BadMapError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise BadMapError(f"{path} is a directory, not a map file")
    return st


#: ``COORDSYS`` header values -> healpy's coordinate letters (G galactic, C celestial/equatorial, E ecliptic).
_COORDSYS = {"G": "G", "GALACTIC": "G", "C": "C", "Q": "C", "CELESTIAL": "C", "EQUATORIAL": "C",
             "E": "E", "ECLIPTIC": "E"}


def coordsys_of(header: Any) -> str | None:
    """The frame of a FITS header's ``COORDSYS`` as ``"G"``, ``"C"`` or ``"E"``; None when absent
    or not one of those (``CELESTIAL``/``EQUATORIAL``/``Q`` are ``C``)."""
    value = str(header.get("COORDSYS", "") or "").strip().upper()
    if not value:
        return None
    return _COORDSYS.get(value) or _COORDSYS.get(value[:1])


@dataclass(frozen=True)
class FitsHeader:
    """What a HEALPix FITS file says about itself (no pixel read).

    ``hdu``: index of the HEALPix binary table; ``columns``/``formats``: its map columns (the
    PIXEL column of a partial-sky file excluded); ``nside``: the ``NSIDE`` keyword (None when
    absent); ``coordsys``: ``"G"``/``"C"``/``"E"`` or None.
    """

    path: str
    hdu: int
    columns: tuple[str, ...]
    formats: tuple[str, ...]
    nside: int | None
    coordsys: str | None


def _table_hdu(hdul: Any, path: str) -> int:
    """Index of the first table HDU (headers only: no data is read)."""
    images = []
    for k, hdu in enumerate(hdul):
        kind = str(hdu.header.get("XTENSION", "")).strip().upper()
        if kind in ("BINTABLE", "TABLE"):
            return k
        if hdu.header.get("NAXIS", 0):
            images.append(f"HDU {k} ({kind or 'PRIMARY'}, NAXIS {hdu.header.get('NAXIS')})")
    raise BadMapError(f"{path} holds an image ({'; '.join(images) or 'no data'}), not a HEALPix map: "
                      "HEALPix FITS maps are binary tables (write them with healpy.write_map)")


def read_fits_header(path: str) -> FitsHeader:
    """:class:`FitsHeader` of a HEALPix FITS file from its headers alone (``TTYPEn``/``TFORMn``,
    ``NSIDE``, ``COORDSYS``); :class:`BadMapError` when it is missing, unreadable or not a
    HEALPix binary table."""
    from astropy.io import fits as afits

    check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with afits.open(path, lazy_load_hdus=True) as hdul:
                k = _table_hdu(hdul, path)
                header = hdul[k].header.copy()
    except BadMapError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, afits.VerifyError) as exc:
        raise BadMapError(f"unreadable FITS file {path}: {type(exc).__name__}: {exc}") from exc
    n = int(header.get("TFIELDS", 0))
    names = [str(header.get(f"TTYPE{i}", "")).strip() for i in range(1, n + 1)]
    formats = [str(header.get(f"TFORM{i}", "")).strip() for i in range(1, n + 1)]
    obj = str(header.get("OBJECT", "")).strip().upper()
    schm = str(header.get("INDXSCHM", "")).strip().upper()
    if obj == "PARTIAL" or schm == "EXPLICIT":  # healpy's rule: column 0 holds pixel indices
        names, formats = names[1:], formats[1:]
    try:
        nside = int(header["NSIDE"]) if "NSIDE" in header else None
    except (TypeError, ValueError):
        nside = None
    return FitsHeader(path, k, tuple(names), tuple(formats), nside, coordsys_of(header))


def _read_fits(path: str, nside: int, fields: Sequence[str] = ("I",),
               resample: bool = False) -> tuple[np.ndarray, tuple[str, ...], FitsHeader]:
    """The Stokes columns ``fields`` need, found by name (see
    :func:`scatterdist.inputs.fields.stokes_columns`): ``(raw (S, npix_file) float64 RING at the
    file's own nside, stokes names of the rows, header)``. A file at another nside than
    ``nside`` is a :class:`BadMapError` unless ``resample`` (the caller resamples it)."""
    import healpy as hp
    from astropy.io import fits as afits
    from astropy.utils.exceptions import AstropyUserWarning

    header = read_fits_header(path)
    cols = stokes_columns(header.columns, fields, path)
    for s, k in cols.items():
        fmt = header.formats[k]
        if "A" in fmt.upper():
            raise BadMapError(f"{path}: column {header.columns[k]!r} (Stokes {s}) holds text "
                              f"(FITS format {fmt}), not pixel values")
    if header.nside is not None and header.nside != nside and not resample:
        raise _nside_error(path, header.nside, nside)
    stokes = tuple(cols)
    try:
        with warnings.catch_warnings():
            # filterwarnings prepends: the last filter added wins.
            warnings.filterwarnings("ignore", category=AstropyUserWarning)
            warnings.filterwarnings("error", message=".*truncated.*", category=AstropyUserWarning)
            m = hp.read_map(path, field=tuple(cols[s] for s in stokes), hdu=header.hdu,
                            dtype=np.float64, nest=False)
    except AstropyUserWarning as exc:
        raise BadMapError(f"truncated FITS file {path}: {exc}") from exc
    except (OSError, ValueError, TypeError, KeyError, IndexError, afits.VerifyError) as exc:
        raise BadMapError(f"unreadable FITS file {path}: {type(exc).__name__}: {exc}") from exc
    m = np.atleast_2d(np.asarray(m, dtype=np.float64))
    got = hp.npix2nside(m.shape[-1]) if hp.isnpixok(m.shape[-1]) else None
    if got is None:
        raise BadMapError(f"{path}: {m.shape[-1]} pixels is not a HEALPix map size (12 nside^2)")
    if got != nside and not resample:
        raise _nside_error(path, got, nside)
    return m, stokes, header


def _nside_error(path: str, got: int, nside: int) -> BadMapError:
    return BadMapError(f"{path}: nside {got} differs from the run's nside {nside}: pass --nside {nside} "
                       f"to resample it in harmonic space (or scatter the nside-{got} maps in their own run)")


def resample_lmax(nside_in: int, nside_out: int) -> int:
    """Bandlimit of a harmonic resampling: ``2 * min(nside_in, nside_out) - 1``, the default
    bandlimit ``L = 2 nside`` of the lower nside (above it HEALPix analysis aliases)."""
    return 2 * min(int(nside_in), int(nside_out)) - 1


def resample_maps(maps: np.ndarray, nside_out: int, weights: np.ndarray | None = None,
             nthreads: int | None = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """HEALPix RING maps ``(C, npix_in)`` brought to ``nside_out`` in harmonic space: analysis
    (least squares, ducc0) and synthesis at lmax :func:`resample_lmax`.

    ``weights`` ``(npix_in,)`` in [0, 1] (0 at masked pixels): the weighted maps and the weights
    are resampled alike and divided (normalised convolution); the returned weights are the input
    weights brought over by healpy's ``ud_grade`` (mean of sub-pixels, or repeated), 0 where the
    resampled weights are below 1e-3. Returns ``(maps (C, npix_out), weights or None)``.
    """
    from scatterdist.sphere import npix2nside
    from scatterdist.sphere.sht import analysis, synthesis

    maps = np.atleast_2d(np.asarray(maps, dtype=np.float64))
    nside_in = npix2nside(maps.shape[-1])
    lmax = resample_lmax(nside_in, nside_out)
    if weights is None:
        alm = analysis(maps, lmax, mode="lsq", nthreads=nthreads)
        return synthesis(alm, nside_out, lmax, nthreads=nthreads), None
    import healpy as hp

    w = np.asarray(weights, dtype=np.float64)
    alm = analysis(np.vstack([maps * w, w[None]]), lmax, mode="lsq", nthreads=nthreads)
    out = synthesis(alm, nside_out, lmax, nthreads=nthreads)
    w_out = np.clip(hp.ud_grade(w, nside_out, order_in="RING", order_out="RING", power=0), 0.0, 1.0)
    norm = out[-1]
    ok = (w_out > 0) & (norm > 1e-3)
    return np.where(ok, out[:-1] / np.where(ok, norm, 1.0), 0.0), np.where(ok, w_out, 0.0)


def _legacy_fits(path: str, nside: int) -> np.ndarray:
    """Legacy (``fields=None``) read: field I at ``nside``, NaN/UNSEEN pixels fatal."""
    m = _read_fits(path, nside, ("I",))[0][0]
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

    check_file(path)
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
    except (ValueError, RuntimeError, TypeError, IndexError, KeyError, AttributeError) as exc:
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




def read_zarr_rows(where: str, variable: str, rows: np.ndarray, nside: int) -> np.ndarray:
    """Rows ``rows`` of the ``(map, pixel)`` array ``variable`` of the Zarr store ``where``:
    ``(len(rows), npix)`` float64, read in one call. :class:`BadMapError` for the whole group
    when the store cannot be read or has another nside."""
    import zarr

    try:
        arr = zarr.open_array(where, path=variable, mode="r")
        if arr.shape[-1] != 12 * nside * nside:
            raise BadMapError(f"{where}::{variable} has {arr.shape[-1]} pixels, run nside is {nside}")
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return np.asarray(arr[lo:hi], dtype=np.float64)[rows - lo]
    except BadMapError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise BadMapError(f"cannot read {where}::{variable}: {type(exc).__name__}: {exc}") from exc
