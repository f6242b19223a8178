"""What every part of :mod:`scatterdist.inputs` shares: errors, constants, map references,
loaded maps. Imports nothing else of the package (and nothing of ``scatterdist.sims``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BadMapError", "CatalogError", "DEFAULT_MIN_FSKY", "LoadedMap", "MapRef", "UNSEEN"]

_FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fits.fz")
_HSP_SUFFIXES = (".hsp", ".hs")
#: Smallest usable sky fraction of a map (same value as ``scatterdist.sphere.mask.DEFAULT_MIN_FSKY``).
DEFAULT_MIN_FSKY = 0.01
#: healpy's marker for pixels with no data.
UNSEEN = -1.6375e30


class CatalogError(ValueError):
    """The inputs cannot make a catalog (no files match, unreadable list, bad spec, bad CSV)."""


class BadMapError(ValueError):
    """One input map is unusable (missing/corrupt file, wrong nside, NaN or UNSEEN pixels)."""


@dataclass(frozen=True)
class MapRef:
    """How a task finds one map. ``kind`` is ``"fits"``, ``"hsp"``, ``"zarr"`` or ``"sim"``.

    fits, hsp (HealSparse): ``where`` = path. zarr: ``where`` = store path, ``variable``, ``index`` = row.
    sim: ``where`` = JSON of ``spec.to_dict()``, ``index`` = simulation index.
    """

    kind: str
    where: str
    index: int = -1
    variable: str = ""


@dataclass(frozen=True, eq=False)
class LoadedMap:
    """One loaded map: its fields, its weight mask and its sky fraction.

    ``data``: ``(F, npix)`` float64, HEALPix RING, fields in the order asked for, in the
    input's units; pixels whose weight is 0 hold 0.0 (finite). ``mask``: ``(npix,)`` float64
    weights in [0, 1] (the map's own mask times the global mask, not apodised), or None for a
    full-sky map with no global mask. ``sky_fraction``: mean of the weights (1.0 when ``mask``
    is None). ``own_mask``: the input itself carried a mask (UNSEEN/NaN pixels, HealSparse
    coverage, a simulation's mask).
    """

    data: np.ndarray
    mask: np.ndarray | None
    sky_fraction: float
    fields: tuple[str, ...]
    own_mask: bool = False

    @property
    def weights(self) -> np.ndarray:
        """The mask as an array: ``mask``, or ones for a full-sky map."""
        return np.ones(self.data.shape[-1]) if self.mask is None else self.mask



def _is_healsparse(path: str) -> bool:
    return path.lower().endswith(_HSP_SUFFIXES)
