"""HEALPix pixelisation facts: nside <-> npix, RING geometry for the SHT engines."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def next_pow2(x: int) -> int:
    """Smallest power of two >= x (x >= 1): the smallest nside whose grid holds bandlimit 2x."""
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def check_nside(nside: int) -> int:
    """Return ``nside`` as int, or raise ValueError unless it is a power of two >= 1."""
    try:
        n = int(nside)
    except (TypeError, ValueError):
        raise ValueError(f"nside must be a power of two >= 1, got {nside!r}") from None
    if n != nside or n < 1 or (n & (n - 1)) != 0:
        raise ValueError(f"nside must be a power of two >= 1, got {nside!r}")
    return n


def nside2npix(nside: int) -> int:
    """Number of pixels ``12 * nside**2`` of a HEALPix map."""
    return 12 * check_nside(nside) ** 2


def npix2nside(npix: int) -> int:
    """Inverse of :func:`nside2npix`; ValueError if ``npix`` is not ``12 * nside**2``."""
    npix = int(npix)
    nside = int(round(np.sqrt(npix / 12.0)))
    if nside < 1 or 12 * nside * nside != npix or (nside & (nside - 1)) != 0:
        raise ValueError(
            f"{npix} pixels is not a HEALPix map (expected 12 * nside**2 with nside a power of two)"
        )
    return nside


@lru_cache(maxsize=64)
def ring_geometry(nside: int) -> dict:
    """RING geometry as ducc0 wants it: ``theta, phi0, nphi, ringstart`` (cached per nside)."""
    import ducc0

    geo = ducc0.healpix.Healpix_Base(check_nside(nside), "RING").sht_info()
    for value in geo.values():
        value.setflags(write=False)
    return geo
