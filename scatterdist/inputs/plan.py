"""The run's nside and the lines that say how the inputs will be read, before anything runs.

The rule (no guessing in silence): ``--nside N`` when given; else the nside of Zarr or
simulation inputs; else the ``NSIDE`` header of the first input that has one. FITS maps at
another nside are resampled in harmonic space with ``--nside`` (their references are marked
``resample``) and fail one by one without it, each with the fix. HealSparse maps are always
brought to the run nside by healsparse. A FITS mask whose ``COORDSYS`` differs from the maps'
is rotated to each map's frame. :func:`plan_inputs` reads headers only (no pixels).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections import Counter
from dataclasses import dataclass

from scatterdist.inputs.base import BadMapError, CatalogError
from scatterdist.inputs.catalog import Catalog, Entry
from scatterdist.inputs.masks import global_mask_frame
from scatterdist.inputs.readers import read_fits_header

__all__ = ["InputPlan", "plan_inputs"]

_FRAME_NAMES = {"G": "Galactic", "C": "celestial (equatorial)", "E": "ecliptic"}


@dataclass(frozen=True)
class InputPlan:
    """``catalog`` (FITS references marked for resampling when ``--nside`` was given), the run's
    ``nside`` and ``lines``: what the user should read before the run (nside and where it came
    from, maps at another nside and what happens to them, mask rotation)."""

    catalog: Catalog
    nside: int
    lines: tuple[str, ...]


def _hsp_nside(path: str) -> int | None:
    from astropy.io import fits as afits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with afits.open(path) as hdul:
                for hdu in hdul[1:] + hdul[:1]:
                    if "NSIDE" in hdu.header:
                        return int(hdu.header["NSIDE"])
    except (OSError, ValueError, TypeError):
        return None
    return None


def _counts(c: Counter) -> str:
    return ", ".join(f"nside {n}: {k}" for n, k in sorted(c.items()))


def plan_inputs(catalog: Catalog, nside: int | None = None,
                mask: str | os.PathLike | None = None) -> InputPlan:
    """Decide the run's nside (see the module docstring) from headers; CatalogError when no
    input says it. ``nside`` is ``--nside``; ``mask`` the ``--mask`` path (for its frame)."""
    fits_nside: list[int | None] = []
    frames: Counter = Counter()
    hsp: Counter = Counter()
    first: tuple[int, str] | None = None
    for e in catalog.entries:
        n = None
        if e.ref.kind == "fits":
            try:
                h = read_fits_header(e.ref.where)
            except BadMapError:
                h = None  # fails as a map, with its reason
            n = h.nside if h is not None else None
            if h is not None and h.coordsys:
                frames[h.coordsys] += 1
        elif e.ref.kind == "hsp":
            n = _hsp_nside(e.ref.where)
        fits_nside.append(n if e.ref.kind == "fits" else None)
        if e.ref.kind == "hsp" and n is not None:
            hsp[n] += 1
        if first is None and n is not None:
            first = (n, e.ref.where)
    if nside is not None:
        run, source = int(nside), "from --nside"
    elif catalog.nside is not None:
        run, source = catalog.nside, "from the Zarr/simulation inputs"
    elif first is not None:
        run, source = first[0], (f"from the header of {first[1]}, the first input; without --nside "
                                 "the run's nside is the first input's")
    else:
        raise CatalogError("cannot infer nside: no input has a readable NSIDE header; pass --nside")
    lines = [f"nside {run} ({source})"]
    other = Counter(n for n in fits_nside if n is not None and n != run)
    if other and nside is None:
        lines.append(f"{sum(other.values())} FITS map(s) at another nside ({_counts(other)}) will fail: "
                     f"pass --nside {run} to resample them to nside {run} in harmonic space")
    elif other:
        lines.append(f"{sum(other.values())} FITS map(s) at another nside ({_counts(other)}) are resampled "
                     f"to nside {run} in harmonic space (bandlimit 2 x the lower nside)")
    hsp_other = Counter({n: k for n, k in hsp.items() if n != run})
    if hsp_other:
        lines.append(f"{sum(hsp_other.values())} HealSparse map(s) at another nside ({_counts(hsp_other)}) "
                     f"are brought to nside {run} by healsparse (mean of valid sub-pixels, or upgraded)")
    mask_frame = global_mask_frame(mask) if mask is not None else None
    rotated = {f: k for f, k in frames.items() if mask_frame and f != mask_frame}
    if rotated:
        lines.append(f"mask {mask} is in {_FRAME_NAMES[mask_frame]} coordinates (COORDSYS {mask_frame}); "
                     + ", ".join(f"{k} map(s) in {_FRAME_NAMES[f]} ({f})" for f, k in sorted(rotated.items()))
                     + ": the mask is rotated to each map's frame with healpy's Rotator")
    if nside is not None:
        catalog = Catalog([Entry(e.id, e.source, dataclasses.replace(e.ref, resample=True), e.label)
                           if e.ref.kind == "fits" else e for e in catalog.entries], catalog.nside)
    return InputPlan(catalog, run, tuple(lines))
