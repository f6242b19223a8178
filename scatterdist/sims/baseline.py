"""Baseline features and the logistic regression that scores them (numpy only).

- power spectrum: binned log C_l. Gaussian and non-Gaussian skies of :mod:`scatterdist.sims`
  share the same expected C_l, so this classifier should sit near chance: the proof that the
  benchmark needs higher-order statistics.
- pixel moments: skewness and excess kurtosis of the map (the statistic a cosmologist tries
  first for non-Gaussianity).
- wavelet moments: skewness and excess kurtosis of every wavelet scale ``f * Psi_j`` (the
  classical needlet/wavelet non-Gaussianity statistic), with the scattering transform's
  wavelets.

Masks: ``weights`` ``(npix,)`` or ``(B, npix)`` in [0, 1] (0 = unobserved); moments are
weighted pixel averages, so masked pixels (whatever value they hold, UNSEEN included) do
not count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scatterdist.sims.stats import binned_cl, map_cl
from scatterdist.sphere import npix2nside

__all__ = ["LogisticRegression", "pixel_moment_features", "power_spectrum_features", "wavelet_moment_features",
           "weighted_moments"]


def power_spectrum_features(
    maps: np.ndarray,
    lmax: int | None = None,
    bin_width: int = 8,
    lmin: int = 2,
    mode: str = "quadrature",
    nthreads: int | None = None,
) -> np.ndarray:
    """Features ``log C_b`` of maps ``(B, npix)``: C_l binned in bins of ``bin_width`` from lmin.

    Returns ``(B, nbins)``; ``lmax`` defaults to ``2*nside - 1``; ``mode`` and ``nthreads``
    as in :func:`scatterdist.sphere.analysis`.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 2:
        raise ValueError(f"maps must be (B, npix), got shape {maps.shape}")
    nside = npix2nside(maps.shape[-1])
    lmax = 2 * nside - 1 if lmax is None else int(lmax)
    if bin_width < 1 or lmin < 0 or lmin > lmax:
        raise ValueError(f"need bin_width >= 1 and 0 <= lmin <= lmax, got {bin_width}, {lmin}, {lmax}")
    edges = np.arange(lmin, lmax + 2, bin_width)
    if edges[-1] != lmax + 1:
        edges = np.append(edges, lmax + 1)
    cb = binned_cl(map_cl(maps, lmax, mode=mode, nthreads=nthreads), edges)
    if np.any(cb <= 0):
        raise ValueError("a binned C_l is not positive: the maps carry no power in some bin")
    return np.log(cb)


def weighted_moments(maps: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Skewness ``<d^3>/<d^2>^1.5`` and excess kurtosis ``<d^4>/<d^2>^2 - 3`` over pixels.

    ``maps`` ``(..., npix)``; ``weights`` None (all pixels equal: HEALPix pixels have equal
    area) or broadcastable to ``maps``, >= 0 (0 = masked). Returns ``(..., 2)`` float64.
    Pixels of zero weight are ignored whatever they hold (UNSEEN, NaN).
    """
    maps = np.asarray(maps, dtype=np.float64)
    if weights is None:  # equal-area pixels: plain means (fast path)
        d = maps - maps.mean(axis=-1, keepdims=True)
        d2 = d * d
        m2 = d2.mean(axis=-1)
        m3 = np.einsum("...i,...i->...", d2, d) / d.shape[-1]
        m4 = np.einsum("...i,...i->...", d2, d2) / d.shape[-1]
    else:
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), maps.shape)
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite and >= 0 (0 marks a masked pixel)")
        maps = np.where(w > 0, maps, 0.0)
        wsum = np.sum(w, axis=-1)
        if np.any(wsum <= 0):
            raise ValueError("a map has no pixel of positive weight: its moments are undefined")
        mean = np.sum(w * maps, axis=-1, keepdims=True) / wsum[..., None]
        d = maps - mean
        d2 = d * d
        m2 = np.sum(w * d2, axis=-1) / wsum
        m3 = np.sum(w * d2 * d, axis=-1) / wsum
        m4 = np.sum(w * d2 * d2, axis=-1) / wsum
    if np.any(m2 <= 0):
        raise ValueError("a map is constant over its unmasked pixels: skewness and kurtosis are undefined")
    return np.stack([m3 / m2**1.5, m4 / m2**2 - 3.0], axis=-1)


def pixel_moment_features(maps: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Pixel moments: ``(B, 2)`` = (skewness, excess kurtosis) of each map ``(B, npix)``."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 2:
        raise ValueError(f"maps must be (B, npix), got shape {maps.shape}")
    return weighted_moments(maps, weights)


def wavelet_moment_features(
    maps: np.ndarray,
    weights: np.ndarray | None = None,
    L: int | None = None,
    lam: float = 2.0,
    J0: int | None = None,
    nthreads: int | None = None,
) -> np.ndarray:
    """Wavelet moments: skewness and excess kurtosis of every wavelet scale ``f * Psi_j``.

    Scales ``j = J0..J`` of :func:`scatterdist.wavelet_transform` (the scattering transform's
    wavelets; defaults as in :class:`~scatterdist.Scattering`), each moment computed on the
    scale's own HEALPix grid (equal-area pixels at >= its Nyquist resolution). Returns
    ``(B, 2 * n_scales)``: ``[skew_J0, kurt_J0, skew_J0+1, ...]``.

    With ``weights`` (``(npix,)`` shared mask), masked pixels are zeroed before the transform
    and each scale's moments use only pixels whose mask, brought to that scale's grid, is 1
    everywhere (so pixels next to the cut, where the filter mixes in zeros, carry less weight).
    """
    from scatterdist.wavelet_transform import wavelet_transform

    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 2:
        raise ValueError(f"maps must be (B, npix), got shape {maps.shape}")
    mask = None
    if weights is not None:
        mask = np.asarray(weights, dtype=np.float64)
        if mask.shape != maps.shape[-1:]:
            raise ValueError(f"wavelet moments take one shared mask (npix,), got shape {mask.shape}")
        maps = np.where(mask > 0, maps * mask, 0.0)
    wt = wavelet_transform(maps, L=L, lam=lam, J0=J0, nthreads=nthreads)
    feats = []
    for w, nside_j in zip(wt.wavelets, wt.nsides):
        wj = None
        if mask is not None:
            wj = _mask_on_grid(mask, nside_j)
        feats.append(weighted_moments(w, wj))
    return np.concatenate(feats, axis=-1)


def _mask_on_grid(mask: np.ndarray, nside_out: int) -> np.ndarray:
    """A 0/1 mask at ``nside_out``: 1 where the whole of the coarse pixel (or the fine pixel) has weight 1."""
    import healpy as hp

    from scatterdist.sphere import npix2nside

    nside_in = npix2nside(mask.size)
    full = (mask >= 1.0).astype(np.float64)
    if nside_out < nside_in:  # a coarse pixel counts when all its children do (mean == 1)
        low = hp.ud_grade(full, nside_out, order_in="RING", order_out="RING")
        return (low >= 1.0 - 1e-12).astype(np.float64)
    return hp.ud_grade(full, nside_out, order_in="RING", order_out="RING")


@dataclass
class LogisticRegression:
    """L2-regularised logistic regression fitted by Newton's method on standardised features.

    ``l2`` is the penalty on the weights (not the intercept), in units of the number of samples.
    """

    l2: float = 1.0
    max_iter: int = 100
    tol: float = 1e-10

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LogisticRegression":
        """Fit on features ``(N, D)`` and labels ``(N,)`` in {0, 1}."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"need x (N, D) and y (N,), got {x.shape} and {y.shape}")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0 or 1")
        self.mean_ = x.mean(axis=0)
        self.scale_ = x.std(axis=0) + 1e-12
        z = np.column_stack([np.ones(x.shape[0]), (x - self.mean_) / self.scale_])
        w = np.zeros(z.shape[1])
        reg = np.full(z.shape[1], self.l2)
        reg[0] = 0.0
        for _ in range(self.max_iter):
            p = 1.0 / (1.0 + np.exp(-(z @ w)))
            grad = z.T @ (p - y) + reg * w
            hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg) + 1e-9 * np.eye(z.shape[1])
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.max(np.abs(step)) < self.tol:
                break
        self.coef_ = w
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability of label 1, ``(N,)``."""
        z = (np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_
        return 1.0 / (1.0 + np.exp(-(self.coef_[0] + z @ self.coef_[1:])))

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy of the 0.5-threshold prediction."""
        return float(np.mean((self.predict_proba(x) >= 0.5) == (np.asarray(y) == 1)))
