"""Input identity of a map, as the pipeline records and compares it.

``{"path", "size", "mtime", "sha256"}`` comes from :mod:`scatterdist.inputs` (``LoadedMap.identity``
for a loaded map; :func:`scatterdist.inputs.stat_identity` for a cheap look at the file without
reading pixels). This module decides what counts as a change (:func:`changed`) and re-reads the
inputs of a store for ``scatterdist verify --inputs`` (:func:`content_changes`).
"""

from __future__ import annotations

import math
import os
from typing import Any

from scatterdist.inputs import LoadedMap, MapRef
from scatterdist.inputs import stat_identity as _stat

__all__ = ["stat_identity", "loaded_identity", "changed", "content_changes"]


def stat_identity(ref: MapRef) -> dict[str, Any]:
    """Path, size and modification time of the input behind ``ref`` (no pixel read); sha256 ``""``."""
    return {**_stat(ref), "sha256": ""}


def loaded_identity(ref: MapRef, loaded: LoadedMap) -> dict[str, Any]:
    """The identity the loader recorded (falls back to :func:`stat_identity` when it has none)."""
    return dict(loaded.identity) if loaded.identity else stat_identity(ref)


def changed(stored: dict[str, Any], now: dict[str, Any]) -> str:
    """Why an input differs from what a store recorded (``""``: same, or nothing to compare).

    Compares size and modification time when both were recorded from a file, and sha256 when
    ``now`` carries one (a content check)."""
    if stored.get("path") and int(stored.get("size", -1)) >= 0:
        if int(now.get("size", -1)) != int(stored["size"]):
            return (f"size {stored['size']} -> {now.get('size')} bytes" if int(now.get("size", -1)) >= 0
                    else "the file cannot be read any more")
        if not math.isclose(float(now.get("mtime", -1.0)), float(stored["mtime"]), abs_tol=1e-6):
            return "modification time changed"
    if now.get("sha256") and stored.get("sha256") and now["sha256"] != stored["sha256"]:
        return "content (sha256 of the pixels) changed"
    return ""


def content_changes(store: str) -> list[tuple[int, str]]:
    """Maps of ``store`` whose input file now holds other pixels than when they were computed:
    every computed map with a recorded file and sha256 is loaded again (with the store's nside,
    fields, mask and min_fsky) and its sha256 compared. Returns ``(map index, what changed)``."""
    from scatterdist import store as zstore
    from scatterdist.inputs import BadMapError, Catalog, load_maps

    recorded = zstore.read_identity(store)
    if recorded is None:
        return []
    attrs = zstore.open_coefficients(store).attrs
    status = zstore.read_status(store)
    out = []
    for i, old in enumerate(recorded):
        if status[i] == zstore.STATUS_TODO or not old["path"] or not old["sha256"] or old["size"] < 0:
            # not computed, a simulation, or a row of a Zarr input (only files are re-read)
            continue
        if not os.path.exists(old["path"]):
            out.append((i, f"file {old['path']} is gone"))
            continue
        ref = Catalog.from_inputs([old["path"]]).refs[0]
        [m] = load_maps([ref], int(attrs["nside"]), fields=tuple(attrs["fields"]),
                        mask=attrs.get("mask") or None, min_fsky=float(attrs["min_fsky"]))
        now = stat_identity(ref) if isinstance(m, BadMapError) else loaded_identity(ref, m)
        if isinstance(m, BadMapError):
            out.append((i, f"cannot be read any more ({zstore.one_line(str(m), 120)})"))
        elif now["sha256"] != old["sha256"]:
            out.append((i, "content (sha256 of the pixels) changed"))
    return out
