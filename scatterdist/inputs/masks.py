"""Masks: the global weight mask (FITS, HealSparse or an array), HealSparse masks, and the
per-process cache of apodised masks."""

from __future__ import annotations

import os
import threading

import numpy as np

from scatterdist.inputs.base import BadMapError, _is_healsparse
from scatterdist.inputs.readers import _read_healsparse

__all__ = ["read_global_mask"]

_MASK_CACHE: dict[tuple[str, int, int, int], np.ndarray] = {}
_MASK_LOCK = threading.Lock()


def read_global_mask(mask: str | os.PathLike | np.ndarray, nside: int) -> np.ndarray:
    """The global weight mask ``(12*nside**2,)`` float64 in [0, 1], RING.

    ``mask``: a FITS path (read by :func:`scatterdist.sphere.mask.read_mask`, which brings it
    to ``nside``), a HealSparse ``.hsp``/``.hs`` file (weights = its values on valid pixels, 0
    elsewhere; averaged over sub-pixels when degraded), or an array already at ``nside``. Files
    are cached per process by path, size and modification time. Raises ``scatterdist.sphere.mask.MaskError`` for a mask that cannot be used.
    """
    from scatterdist.sphere.mask import MaskError, read_mask

    npix = 12 * int(nside) ** 2
    if isinstance(mask, np.ndarray):
        w = np.asarray(mask, dtype=np.float64)
        if w.shape != (npix,):
            raise MaskError(f"mask array has shape {w.shape}, need ({npix},) for nside {nside}")
        if not np.all(np.isfinite(w)) or w.min() < 0 or w.max() > 1:
            raise MaskError("mask array has values outside [0, 1] (or NaN): weights must lie in [0, 1]")
        return w
    path = os.path.abspath(os.fspath(mask))
    try:
        st = os.stat(path)
    except OSError as exc:
        raise MaskError(f"cannot read mask {path}: {exc}") from exc
    key = (path, int(nside), st.st_size, st.st_mtime_ns)
    with _MASK_LOCK:
        w = _MASK_CACHE.get(key)
    if w is None:
        w = _read_healsparse_mask(path, int(nside)) if _is_healsparse(path) else \
            np.asarray(read_mask(path, int(nside)), dtype=np.float64)
        if w.shape != (npix,):
            raise MaskError(f"mask {path} was read with shape {w.shape}, need ({npix},)")
        w.setflags(write=False)
        with _MASK_LOCK:
            _MASK_CACHE.clear()  # one global mask per run: keep the latest only
            _MASK_CACHE[key] = w
    return w


_APO_CACHE: dict[tuple[bytes, float], np.ndarray] = {}
_APO_CACHE_SIZE = 4


def _apodized(mask: np.ndarray, deg: float) -> np.ndarray:
    """``scatterdist.sphere.mask.apodize(mask, deg)``, cached by the mask's bytes: maps sharing
    a mask (a global ``--mask``, the same UNSEEN pattern) apodise it once per process."""
    import hashlib

    from scatterdist.sphere.mask import apodize

    deg = float(deg)
    key = (hashlib.sha1(np.ascontiguousarray(mask).view(np.uint8)).digest(), deg)
    with _MASK_LOCK:
        hit = _APO_CACHE.get(key)
    if hit is not None:
        return hit
    out = np.asarray(apodize(mask, deg), dtype=np.float64)
    out.setflags(write=False)
    with _MASK_LOCK:
        while len(_APO_CACHE) >= _APO_CACHE_SIZE:
            _APO_CACHE.pop(next(iter(_APO_CACHE)))
        _APO_CACHE[key] = out
    return out


def _read_healsparse_mask(path: str, nside: int) -> np.ndarray:
    """A HealSparse weight mask at ``nside``: its values on valid pixels, 0 elsewhere."""
    from scatterdist.sphere.mask import MaskError

    try:
        values, frac = _read_healsparse(path, nside)
    except BadMapError as exc:
        raise MaskError(f"cannot use the mask {path}: {exc}") from exc
    valid = frac > 0
    w = np.where(valid, values, 0.0) * frac  # degraded: mean over all sub-pixels, invalid = 0
    if not np.all(np.isfinite(w)) or w.min() < 0 or w.max() > 1:
        raise MaskError(f"mask {path} has values outside [0, 1] (range [{np.nanmin(w):g}, {np.nanmax(w):g}]): "
                        "weights must lie in [0, 1]")
    return w


