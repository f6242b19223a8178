"""What a map was computed from: the identity of its input, recorded per map in the store.

``{"path", "size", "mtime", "sha256"}``: ``path`` the input as the catalog names it (a FITS or
HealSparse file, a Zarr store), ``size`` bytes and ``mtime`` seconds from ``os.stat`` of the
file (-1 where there is no single file: Zarr rows, simulations, in-memory inputs; ``path`` is
``""`` for simulations), ``sha256`` hex digest of the pixel data as read (the float64 RING
array of every column read, C order, before masking or resampling).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from scatterdist.inputs.base import MapRef

__all__ = ["pixel_sha256", "stat_identity"]


def stat_identity(ref: MapRef) -> dict:
    """``{"path", "size", "mtime"}`` of ``ref`` from ``os.stat`` only (no pixel read): what a
    resume compares with the recorded identity to find inputs that changed. A file that cannot
    be stat'ed gives size and mtime -1 (it will fail as a map)."""
    if ref.kind == "sim":
        return {"path": "", "size": -1, "mtime": -1.0}
    if ref.kind == "zarr":  # many chunk files: only the content hash tells a change
        return {"path": ref.where, "size": -1, "mtime": -1.0}
    try:
        st = os.stat(ref.where)
    except OSError:
        return {"path": ref.where, "size": -1, "mtime": -1.0}
    return {"path": ref.where, "size": int(st.st_size), "mtime": float(st.st_mtime)}


def pixel_sha256(raw: np.ndarray) -> str:
    """Hex SHA-256 of ``raw`` as a C-ordered float64 array (the pixel data as read)."""
    return hashlib.sha256(np.ascontiguousarray(raw, dtype=np.float64).tobytes()).hexdigest()


def identity(ref: MapRef, raw: np.ndarray) -> dict:
    """The full identity of one loaded input: :func:`stat_identity` plus ``sha256`` of ``raw``."""
    return {**stat_identity(ref), "sha256": pixel_sha256(raw)}
