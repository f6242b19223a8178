"""Sky masks: reading, building from UNSEEN/NaN pixels, cosine apodisation, sky fraction.

A mask is a weight map in [0, 1] on the HEALPix RING grid (1 = use the pixel, 0 = no data;
values in between are weights). Masks are data, not errors: the scattering transform takes
one (``Scattering(...)(maps, mask=...)``), apodises it with :func:`apodize` and normalises
every path's output by what the mask lets through (:mod:`scatterdist.scattering.masked`).

Conventions
-----------
- Apodisation is by angular distance from the mask edge: each pixel's weight is multiplied
  by ``taper(d / deg)``, where ``d`` is the angle between its centre and the centre of the
  nearest zero-weight pixel and ``taper(x) = (1 - cos(pi x)) / 2`` for ``x < 1``, 1 beyond
  (the "C2" cosine taper). Zero pixels stay zero: the usable region only shrinks.
- ``DEFAULT_APODIZE_DEG = 2.0``: resolved at nside >= 64 (pixel 0.9 deg). Temperature
  biases barely depend on it (``scripts/masked_bias.py --apodize 0``: the same within 0.2%);
  the transform's apodisation is what limits the E-to-B leakage of a mask (10 deg: 2-10x
  less than 2 deg), at the price of sky: 2 deg costs 0.013 of the sky for the |b| > 20 deg
  cut, 0.11 for the WMAP temperature mask with its point-source holes (``docs/cut-sky.md``).
- ``DEFAULT_MIN_COVERAGE = 0.7``: a scattering path's output is kept where at least 70% of
  what its filters reach is data. For a Galactic cut the bias figures of ``docs/cut-sky.md``
  are about as good at 0.7 as at 0.9 (order-1 invariants within 2%, order 2 within 2.5%),
  while a mask with many point-source holes (the WMAP temperature mask) keeps half of its
  output pixels at 0.7 and almost none at 0.9: every smoothing disc there contains a hole.
- ``DEFAULT_MIN_FSKY = 0.01``: maps whose usable sky fraction is below it are refused by
  the pipeline (one percent of the sky is about 400 square degrees).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from scatterdist.sphere.healpix import npix2nside

#: Default cosine apodisation width, degrees.
DEFAULT_APODIZE_DEG = 2.0
#: Default threshold on a path's coverage below which its output pixels are NaN.
DEFAULT_MIN_COVERAGE = 0.7
#: Default smallest usable sky fraction of a map (the pipeline's ``--min-fsky``).
DEFAULT_MIN_FSKY = 0.01

#: healpy's marker for pixels with no data.
UNSEEN = -1.6375e30
#: Tolerance on mask values: weights within this of [0, 1] (float32 round-off) are clipped.
_VALUE_TOL = 1e-6


class MaskError(ValueError):
    """A mask cannot be used: unreadable, wrong size, values outside [0, 1], or an nside that
    cannot be brought to the maps' nside."""


def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def check_mask(mask: Any, npix: int | None = None, what: str = "mask") -> np.ndarray:
    """Validate a weight map ``(..., npix)``; returns it as float64 (values clipped to [0, 1]
    within 1e-6). Raises :class:`MaskError` for non-HEALPix sizes, a size other than
    ``npix`` (when given), and NaN or values outside [0, 1]."""
    if type(mask).__module__.startswith("torch"):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.dtype == bool:
        m = m.astype(np.float64)
    if not (np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer)):
        raise MaskError(f"{what} must be a real array of weights in [0, 1], got dtype {m.dtype}")
    if m.ndim == 0:
        raise MaskError(f"{what} must be a HEALPix map (npix,) or a batch (..., npix), got a scalar")
    m = np.asarray(m, dtype=np.float64)
    try:
        npix2nside(m.shape[-1])
    except ValueError:
        raise MaskError(f"{what} has {m.shape[-1]} pixels, which is not 12*nside**2 for a power-of-two nside") from None
    if npix is not None and m.shape[-1] != npix:
        raise MaskError(
            f"{what} has {m.shape[-1]} pixels (nside {npix2nside(m.shape[-1])}) but the maps have {npix} "
            f"(nside {npix2nside(npix)}); bring it over with read_mask(path, nside) or healpy.ud_grade"
        )
    if not np.isfinite(m).all():
        raise MaskError(f"{what} has {int((~np.isfinite(m)).sum())} NaN or infinite values; weights must be in [0, 1]")
    lo, hi = float(m.min()), float(m.max())
    if lo < -_VALUE_TOL or hi > 1 + _VALUE_TOL:
        raise MaskError(f"{what} has values in [{lo:g}, {hi:g}]; a mask holds weights in [0, 1] (1 = use the pixel)")
    if lo < 0 or hi > 1:
        m = np.clip(m, 0.0, 1.0)
    return m


def read_mask(path: str | Path, nside: int) -> np.ndarray:
    """Read a mask FITS file (0/1 or weights in [0, 1], field 0) and bring it to ``nside``.

    Any nside that is a power of two is brought over with ``healpy.ud_grade`` (degrading
    averages the weights, so a 0/1 mask becomes fractional weights at the edge). NESTED
    files are reordered to RING; UNSEEN/NaN pixels in the file count as 0.

    Returns ``(12*nside**2,)`` float64 weights, RING ordering.
    Raises :class:`MaskError` (with the file named) when the file cannot be read, is not a
    HEALPix map, holds values outside [0, 1], or has an nside that cannot be brought over.
    """
    import healpy as hp

    if not _is_pow2(int(nside)):
        raise MaskError(f"cannot bring mask {path} to nside={nside}: nside must be a power of two")
    p = Path(path)
    if not p.exists():
        raise MaskError(f"mask file {p} does not exist")
    try:
        m = hp.read_map(str(p), field=0, dtype=np.float64)
    except Exception as exc:  # astropy/healpy raise many types for bad files
        raise MaskError(f"cannot read mask {p} as a HEALPix FITS map: {type(exc).__name__}: {exc}") from None
    m = np.asarray(m, dtype=np.float64)
    bad = ~np.isfinite(m) | np.isclose(m, UNSEEN, rtol=1e-5, atol=0.0)
    m[bad] = 0.0
    try:
        nside_in = npix2nside(m.size)
    except ValueError:
        nside_in = None
    if nside_in is None or not _is_pow2(nside_in):
        raise MaskError(
            f"mask {p} has {m.size} pixels: not a HEALPix map with a power-of-two nside, so it cannot be "
            f"brought to nside={nside}"
        )
    m = check_mask(m, what=f"mask {p}")
    if nside_in != nside:
        m = np.asarray(hp.ud_grade(m, int(nside), order_in="RING", order_out="RING"), dtype=np.float64)
        m = np.clip(m, 0.0, 1.0)
    return m


def mask_from_map(maps: Any) -> np.ndarray:
    """Weight mask of maps ``(..., npix)``: 0 at UNSEEN, NaN and infinite pixels, 1 elsewhere (float64)."""
    if type(maps).__module__.startswith("torch"):
        maps = maps.detach().cpu().numpy()
    x = np.asarray(maps)
    good = np.isfinite(x) & ~np.isclose(x, UNSEEN, rtol=1e-5, atol=0.0)
    return good.astype(np.float64)


def _taper(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 1.0, 1.0, 0.5 * (1.0 - np.cos(np.pi * np.clip(x, 0.0, 1.0))))


def _apodize_one(w: np.ndarray, deg: float) -> np.ndarray:
    import healpy as hp
    from scipy.spatial import cKDTree

    nside = npix2nside(w.size)
    zero = w <= 0.0
    if not zero.any():
        return w.copy()
    if zero.all():
        return np.zeros_like(w)
    # Only zero pixels that touch a non-zero one can be nearest to a non-zero pixel.
    zidx = np.flatnonzero(zero)
    nb = hp.get_all_neighbours(nside, zidx)  # (8, n), -1 where a neighbour is missing
    touches = ((nb >= 0) & ~zero[np.where(nb >= 0, nb, 0)]).any(axis=0)
    edge = zidx[touches]
    inside = np.flatnonzero(~zero)
    tree = cKDTree(np.column_stack(hp.pix2vec(nside, edge)))
    chord_max = 2.0 * math.sin(math.radians(deg) / 2.0)
    chord, _ = tree.query(np.column_stack(hp.pix2vec(nside, inside)), k=1, distance_upper_bound=chord_max * (1 + 1e-12))
    ang = 2.0 * np.arcsin(np.clip(np.where(np.isfinite(chord), chord, 2.0) / 2.0, 0.0, 1.0))
    out = np.zeros_like(w)
    out[inside] = w[inside] * _taper(np.degrees(ang) / deg)
    return out


def apodize(mask: Any, deg: float) -> np.ndarray:
    """Cosine-apodise a weight mask ``(..., npix)`` by ``deg`` degrees inside its edge.

    Each pixel's weight is multiplied by ``(1 - cos(pi d/deg))/2`` where ``d`` (< deg) is
    the angle to the centre of the nearest zero-weight pixel (1 further away); zeros stay
    zero. Distances come from healpy pixel centres and a KD-tree (scipy) over the unit
    vectors of the zero pixels on the edge. ``deg = 0`` returns a float64 copy.
    """
    if not (isinstance(deg, (int, float, np.floating, np.integer)) and math.isfinite(deg) and deg >= 0):
        raise ValueError(f"apodisation width must be a finite number of degrees >= 0, got {deg!r}")
    m = check_mask(mask)
    if deg == 0:
        return m.copy()
    flat = m.reshape(-1, m.shape[-1])
    out = np.stack([_apodize_one(row, float(deg)) for row in flat])
    return out.reshape(m.shape)


def sky_fraction(mask: Any) -> float | np.ndarray:
    """Sky fraction of a weight mask: the mean weight over the last axis (a float for ``(npix,)``)."""
    m = check_mask(mask)
    f = m.mean(axis=-1)
    return float(f) if m.ndim == 1 else f
