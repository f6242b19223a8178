"""The power-spectrum-only baseline: logistic regression on binned log C_l (numpy only).

Gaussian and non-Gaussian skies of :mod:`scatterdist.sims` share the same expected C_l, so this
classifier should sit near chance: the proof that the benchmark needs higher-order statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scatterdist.sims.stats import binned_cl, map_cl
from scatterdist.sphere import npix2nside

__all__ = ["LogisticRegression", "power_spectrum_features"]


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
