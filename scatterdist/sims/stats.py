"""Simple statistics of HEALPix maps: angular power spectra and pixel moments (vectorised)."""

from __future__ import annotations

import numpy as np

from scatterdist.sphere import analysis, npix2nside
from scatterdist.sphere.alm import alm_l_index, alm_m_index

__all__ = ["binned_cl", "map_cl", "pixel_kurtosis", "pixel_skewness"]


def map_cl(
    maps: np.ndarray, lmax: int | None = None, mode: str = "lsq", nthreads: int | None = 1
) -> np.ndarray:
    """Angular power spectrum ``C_l = sum_m |a_lm|^2 / (2l+1)`` of each map.

    maps ``(..., npix)`` RING; returns ``(..., lmax+1)`` float64 in the maps' units squared.
    ``lmax`` defaults to ``2*nside - 1``; ``mode`` as in :func:`scatterdist.sphere.analysis`.
    """
    maps = np.asarray(maps, dtype=np.float64)
    nside = npix2nside(maps.shape[-1])
    lmax = 2 * nside - 1 if lmax is None else int(lmax)
    alm = analysis(maps, lmax, mode=mode, nthreads=nthreads)
    lead = alm.shape[:-1]
    alm = alm.reshape(-1, alm.shape[-1])
    ell = alm_l_index(lmax)
    weight = np.where(alm_m_index(lmax) == 0, 1.0, 2.0)
    power = weight * (alm.real**2 + alm.imag**2)
    nb = lmax + 1
    idx = (np.arange(alm.shape[0])[:, None] * nb + ell[None, :]).ravel()
    sums = np.bincount(idx, weights=power.ravel(), minlength=alm.shape[0] * nb)
    cl = sums.reshape(alm.shape[0], nb) / (2 * np.arange(nb) + 1)
    return cl.reshape(lead + (nb,))


def binned_cl(cl: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Average C_l over bins ``[edges[k], edges[k+1])`` weighted by 2l+1 (mode count).

    cl ``(..., lmax+1)``; edges increasing ints; returns ``(..., len(edges) - 1)``.
    """
    cl = np.asarray(cl, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.int64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be a strictly increasing 1-d array of at least 2 multipoles")
    if edges[0] < 0 or edges[-1] > cl.shape[-1]:
        raise ValueError(f"edges must lie in [0, {cl.shape[-1]}], got {edges[0]}..{edges[-1]}")
    ell = np.arange(edges[0], edges[-1])
    w = 2.0 * ell + 1
    wc = np.cumsum(np.concatenate([[0.0], w]))
    xc = np.concatenate(
        [np.zeros(cl.shape[:-1] + (1,)), np.cumsum(cl[..., edges[0] : edges[-1]] * w, axis=-1)],
        axis=-1,
    )
    k = edges - edges[0]
    return np.diff(xc[..., k], axis=-1) / np.diff(wc[k])


def _standardised(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    d = maps - maps.mean(axis=-1, keepdims=True)
    return d / np.sqrt((d * d).mean(axis=-1, keepdims=True))


def pixel_skewness(maps: np.ndarray) -> np.ndarray:
    """Sample skewness ``<d^3>/<d^2>^1.5`` over pixels (d = map - mean); ``(...,)`` for ``(..., npix)``."""
    z = _standardised(maps)
    return (z**3).mean(axis=-1)


def pixel_kurtosis(maps: np.ndarray) -> np.ndarray:
    """Sample excess kurtosis ``<d^4>/<d^2>^2 - 3`` over pixels; ``(...,)`` for ``(..., npix)``."""
    z = _standardised(maps)
    return (z**4).mean(axis=-1) - 3.0
