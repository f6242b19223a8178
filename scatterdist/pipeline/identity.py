"""Input identity of a map: where it was read from and a hash of what was read.

``{"path", "size", "mtime", "sha256"}``: path, size (bytes) and modification time (seconds) from
``os.stat`` of an input *file* (FITS, HealSparse; ``""``, -1, NaN for simulations and rows of a
Zarr input), and the sha256 of the pixel data as read (float64 RING bytes of every field).

Interim home: ``scatterdist.inputs`` is to provide ``LoadedMap.identity`` and
``stat_identity(ref)`` (interfaces item 3); these two functions are the only place to switch.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import numpy as np

from scatterdist.inputs import MapRef

__all__ = ["stat_identity", "loaded_identity", "changed"]

_FILE_KINDS = ("fits", "hsp")


def stat_identity(ref: MapRef) -> dict[str, Any]:
    """Path, size and modification time of the file behind ``ref`` (no pixel read); sha256 ``""``.
    A file that cannot be stat'ed has size -1 (it then counts as changed if it had one)."""
    if ref.kind not in _FILE_KINDS:
        return {"path": "", "size": -1, "mtime": math.nan, "sha256": ""}
    path = os.path.abspath(ref.where)
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path, "size": -1, "mtime": math.nan, "sha256": ""}
    return {"path": path, "size": int(st.st_size), "mtime": float(st.st_mtime), "sha256": ""}


def loaded_identity(ref: MapRef, data: np.ndarray) -> dict[str, Any]:
    """:func:`stat_identity` plus the sha256 of ``data`` (the fields as read, float64)."""
    out = stat_identity(ref)
    out["sha256"] = hashlib.sha256(np.ascontiguousarray(data, dtype=np.float64).tobytes()).hexdigest()
    return out


def changed(stored: dict[str, Any], now: dict[str, Any]) -> str:
    """Why an input differs from what a store recorded (``""``: same, or nothing to compare).

    Compares size and modification time when both were recorded from a file, and sha256 when
    ``now`` carries one (a content check)."""
    if stored.get("path") and int(stored.get("size", -1)) >= 0:
        if int(now.get("size", -1)) != int(stored["size"]):
            return (f"size {stored['size']} -> {now.get('size')} bytes" if int(now.get("size", -1)) >= 0
                    else "the file cannot be read any more")
        if not math.isclose(float(now.get("mtime", math.nan)), float(stored["mtime"]), abs_tol=1e-6):
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
        if status[i] == zstore.STATUS_TODO or not old["path"] or not old["sha256"]:
            continue
        if not os.path.exists(old["path"]):
            out.append((i, f"file {old['path']} is gone"))
            continue
        ref = Catalog.from_inputs([old["path"]]).refs[0]
        [m] = load_maps([ref], int(attrs["nside"]), fields=tuple(attrs["fields"]),
                        mask=attrs.get("mask") or None, min_fsky=float(attrs["min_fsky"]))
        now = stat_identity(ref) if isinstance(m, BadMapError) else loaded_identity(ref, m.data)
        if isinstance(m, BadMapError):
            out.append((i, f"cannot be read any more ({zstore.one_line(str(m), 120)})"))
        elif now["sha256"] != old["sha256"]:
            out.append((i, "content (sha256 of the pixels) changed"))
    return out
