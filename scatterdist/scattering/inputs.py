"""Validation of user maps, shared by every frontend: fail early, name the map and the problem."""

from __future__ import annotations

from typing import Any

import numpy as np

from scatterdist.sphere import nside2npix

#: healpy's marker for pixels with no data (``healpy.UNSEEN``).
UNSEEN = -1.6375e30


class InvalidMapError(ValueError):
    """A map cannot be transformed. ``index`` is its position in the batch (None: the batch)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _all_clean(x: Any) -> bool:
    """Fast path: min and max are finite (NaN propagates) and above the UNSEEN marker.

    Tensors: one fused reduction (``aminmax``) and one host sync for the whole check (on a
    GPU the old ``float(min), float(max)`` waited twice for the device)."""
    if _is_tensor(x):
        import torch

        lo, hi = torch.aminmax(x.detach())
        return bool((lo > -1e30) & (hi < 1e30))
    lo, hi = x.min(), x.max()
    return bool(abs(float(lo)) < 1e30 and abs(float(hi)) < 1e30)


def _validate(maps: Any, nside: int) -> tuple[Any, bool, Any, Any, Any]:
    """Shape and dtype checks shared by :func:`check_maps` and :func:`check_masked_maps`.

    Returns ``(maps2d, was_1d, finite, unseen, to_np)`` with the backend's predicates."""
    npix = nside2npix(nside)
    if _is_tensor(maps):
        import torch

        x = maps
        if x.is_complex() or x.dtype == torch.bool:
            raise InvalidMapError(f"maps must be real floating point, got dtype {x.dtype}")
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        finite = lambda t: torch.isfinite(t)  # noqa: E731
        unseen = lambda t: torch.isclose(t, torch.tensor(UNSEEN, dtype=t.dtype, device=t.device), rtol=1e-5, atol=0.0)  # noqa: E731
        to_np = lambda t: t.detach().cpu().numpy()  # noqa: E731 - only masks leave the device
    else:
        if isinstance(maps, (list, tuple)):
            maps = np.asarray(maps)
        if not isinstance(maps, np.ndarray):
            raise InvalidMapError(f"maps must be a numpy array or torch tensor, got {type(maps).__name__}")
        x = maps
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) or x.dtype == bool:
            raise InvalidMapError(f"maps must be real floating point, got dtype {x.dtype}")
        finite = np.isfinite
        unseen = lambda t: np.isclose(t, UNSEEN, rtol=1e-5, atol=0.0)  # noqa: E731
        to_np = np.asarray
    if x.ndim not in (1, 2):
        raise InvalidMapError(
            f"maps must have shape (npix,) or (batch, npix), got {x.ndim} dimensions {tuple(x.shape)}"
        )
    was_1d = x.ndim == 1
    if was_1d:
        x = x[None]
    if x.shape[-1] != npix:
        raise InvalidMapError(
            f"maps have {x.shape[-1]} pixels, but nside={nside} needs 12*nside**2 = {npix}; "
            "pass maps at the transform's nside (healpy.ud_grade can change resolution)"
        )
    if x.shape[0] == 0:
        raise InvalidMapError("the batch of maps is empty")
    return x, was_1d, finite, unseen, to_np


def check_maps(maps: Any, nside: int) -> tuple[Any, bool]:
    """Validate full-sky ``maps`` of shape ``(npix,)`` or ``(B, npix)`` for a transform at ``nside``.

    Returns ``(maps2d, was_1d)``; raises :class:`InvalidMapError` for the wrong shape or
    dtype, NaN or infinite pixels, and healpy UNSEEN pixels (full-sky transforms only:
    ``Scattering(...)(maps)`` masks UNSEEN/NaN pixels itself, see :func:`check_masked_maps`).
    """
    x, was_1d, finite, unseen, to_np = _validate(maps, nside)
    if _all_clean(x):
        return x, was_1d
    bad = to_np(~finite(x))
    if bad.any():
        i = int(np.argmax(bad.any(axis=1)))
        raise InvalidMapError(
            f"map {i} has {int(bad[i].sum())} NaN or infinite pixels (first at pixel {int(np.argmax(bad[i]))})",
            index=i,
        )
    masked = to_np(unseen(x))
    if masked.any():
        i = int(np.argmax(masked.any(axis=1)))
        raise InvalidMapError(
            f"map {i} has {int(masked[i].sum())} UNSEEN pixels (partial-sky map, first at pixel "
            f"{int(np.argmax(masked[i]))}); this full-sky transform needs every pixel: "
            "Scattering(...)(maps, mask=...) masks them, or fill/inpaint them first",
            index=i,
        )
    return x, was_1d


def check_masked_maps(maps: Any, nside: int) -> tuple[Any, bool, np.ndarray | None]:
    """Validate ``maps`` ``(npix,)`` or ``(B, npix)`` whose UNSEEN/NaN pixels are to be masked.

    Returns ``(maps2d, was_1d, bad)`` with ``bad`` a numpy bool array ``(B, npix)`` of the
    UNSEEN/NaN pixels, or None when there are none (the full-sky fast path). Infinite
    pixels are not a mask marker: :class:`InvalidMapError` names the map.
    """
    x, was_1d, finite, unseen, to_np = _validate(maps, nside)
    if _all_clean(x):
        return x, was_1d, None
    xs = to_np(x)
    inf = np.isinf(xs)
    if inf.any():
        i = int(np.argmax(inf.any(axis=1)))
        raise InvalidMapError(
            f"map {i} has {int(inf[i].sum())} infinite pixels (first at pixel {int(np.argmax(inf[i]))}); "
            "mark missing pixels with UNSEEN or NaN, which are masked",
            index=i,
        )
    bad = np.isnan(xs) | np.isclose(xs, UNSEEN, rtol=1e-5, atol=0.0)
    return x, was_1d, (bad if bad.any() else None)
