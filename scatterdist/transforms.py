"""Transforms the pipeline can apply to every map, selected by ``config["transform"]``.

- ``"scattering"`` (default): :class:`scatterdist.Scattering`.
- ``"lowpass"``: :class:`LowPass`, the raw map reduced to the scattering output resolution
  (the paper's low-resolution baseline input).
- ``"covariance"``: :class:`scatterdist.ScatteringCovariance` (scattering spectra).

Every transform has the interface the store and the pipeline rely on: ``nside``, ``paths``,
``path_labels``, ``n_paths``, ``nside_out``, ``npix_out``, ``config()``, ``check_maps()``
and ``__call__(maps) -> (..., n_paths, npix_out)``; transforms that take cut skies also have
``__call__(maps, mask=, return_coverage=)``, ``coverage(mask)``, ``apodize`` and ``min_coverage``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from scatterdist.scattering.filters import default_J0, next_pow2
from scatterdist.scattering.inputs import check_maps, check_masked_maps
from scatterdist.sphere import analysis, check_nside, nside2npix, synthesis
from scatterdist.sphere.mask import DEFAULT_APODIZE_DEG, DEFAULT_MIN_COVERAGE, apodize, check_mask
from scatterdist.wavelets import scaling_bandlimit

TRANSFORMS = ("scattering", "lowpass", "covariance")


class LowPass:
    """A map low-passed to bandlimit ``L0`` and resampled at ``nside_out``: one "path".

    Defaults match :class:`~scatterdist.Scattering` with the same ``nside``, ``L``, ``lam``:
    the same ``L0`` and ``nside_out``, so both stores have the same pixels. The harmonic
    truncation is sharp (``a_lm`` kept for l < L0), i.e. an ideal low-pass filter.

    Cut skies (``mask=``, or UNSEEN/NaN pixels) as in :class:`~scatterdist.Scattering`: the
    weights are apodised by ``apodize`` degrees, and the output is the normalised convolution
    ``LP(w f) / LP(w)``, NaN where the coverage ``LP(w)`` is below ``min_coverage``.

    >>> lp = LowPass(32)
    >>> lp.L0, lp.nside_out, lp(np.ones(12 * 32**2)).shape
    (16, 8, (1, 768))
    """

    def __init__(self, nside: int, L: int | None = None, lam: float = 2.0, J0: int | None = None,
                 analysis: str = "quadrature", nthreads: int | None = None,
                 apodize: float = DEFAULT_APODIZE_DEG, min_coverage: float = DEFAULT_MIN_COVERAGE,
                 **_ignored: Any) -> None:
        self.nside = check_nside(nside)
        self.npix = nside2npix(self.nside)
        self.L = 2 * self.nside if L is None else int(L)
        self.lam = float(lam)
        self.J0 = default_J0(self.L, self.lam) if J0 is None else int(J0)
        self.L0 = scaling_bandlimit(self.J0, self.lam)
        self.nside_out = next_pow2(math.ceil(self.L0 / 2))
        self.npix_out = nside2npix(self.nside_out)
        self.analysis = analysis
        self.nthreads = nthreads
        if not float(apodize) >= 0:
            raise ValueError(f"apodize must be >= 0 degrees, got {apodize!r}")
        if not 0 < float(min_coverage) <= 1:
            raise ValueError(f"min_coverage must be a fraction in (0, 1], got {min_coverage!r}")
        self.apodize, self.min_coverage = float(apodize), float(min_coverage)
        self.depth = 0
        self.paths: list[tuple[int, ...]] = [()]
        self.path_labels = [f"lowpass L0={self.L0}"]
        self.n_paths = 1
        self._apodized: dict[bytes, np.ndarray] = {}

    def config(self) -> dict[str, Any]:
        return {"transform": "lowpass", "nside": self.nside, "L": self.L, "lam": self.lam,
                "J0": self.J0, "analysis": self.analysis, "apodize": self.apodize, "min_coverage": self.min_coverage}

    def check_maps(self, maps: Any) -> None:
        check_maps(maps, self.nside)

    def path_coords(self) -> dict[str, np.ndarray]:
        return {"label": np.array(self.path_labels), "order": np.zeros(1, np.int16),
                "j1": np.full(1, -1, np.int16), "j2": np.full(1, -1, np.int16)}

    def _lowpass(self, x: np.ndarray) -> np.ndarray:
        alm = analysis(np.asarray(x, dtype=np.float64), self.L0 - 1, mode=self.analysis, nthreads=self.nthreads)
        return synthesis(alm, self.nside_out, self.L0 - 1, nthreads=self.nthreads)

    def _weights(self, w: np.ndarray) -> np.ndarray:
        """Apodised weights, cached per distinct mask (a study applies one mask to every sky)."""
        key = w.tobytes()
        if key not in self._apodized:
            if len(self._apodized) >= 8:
                self._apodized.clear()
            self._apodized[key] = apodize(w, self.apodize) if self.apodize > 0 else w.copy()
        return self._apodized[key]

    def _prepare(self, maps: Any, mask: Any) -> tuple[np.ndarray, bool, np.ndarray | None]:
        x, was_1d, bad = check_masked_maps(maps, self.nside)
        x = np.asarray(x, dtype=np.float64)
        B = x.shape[0]
        w = None
        if mask is not None:
            w = check_mask(mask, self.npix)
            if w.ndim == 1:
                w = w[None]
            if w.ndim != 2 or w.shape[0] not in (1, B):
                raise ValueError(f"mask must have shape (npix,) or (B, npix) with B = {B} maps, got {w.shape}")
            w = np.array(np.broadcast_to(w, (B, self.npix)))
        if bad is not None:
            w = np.ones((B, self.npix)) if w is None else w
            w[bad] = 0.0
        if w is None or bool((w == 1.0).all()):
            return x, was_1d, None
        return x, was_1d, np.stack([self._weights(row) for row in w])

    def _coverage_of(self, w: np.ndarray) -> np.ndarray:
        return np.clip(self._lowpass(w), 0.0, 1.0)

    def coverage(self, mask: Any) -> np.ndarray:
        """Coverage ``(1, npix_out)`` for a mask ``(npix,)`` (``(B, 1, npix_out)`` for ``(B, npix)``):
        the low-passed apodised weights, in [0, 1]; ones for None (full sky)."""
        if mask is None:
            return np.ones((1, self.npix_out))
        w = check_mask(mask, self.npix)
        rows = w.reshape(-1, self.npix)
        cov = np.stack([np.ones(self.npix_out) if bool((r == 1.0).all()) else self._coverage_of(self._weights(r)[None])[0]
                        for r in rows])[:, None, :]
        return cov[0] if w.ndim == 1 else cov

    def __call__(self, maps: Any, mask: Any = None, return_coverage: bool = False) -> Any:
        """Low-passed maps ``(..., 1, npix_out)`` of maps ``(npix,)`` or ``(B, npix)`` (see the class doc for masks)."""
        x, was_1d, w = self._prepare(maps, mask)
        if w is None:
            out = self._lowpass(x)[:, None, :]
            cov = np.ones_like(out)
        else:
            num = self._lowpass(np.where(w > 0, x, 0.0) * w)
            den = self._lowpass(w)
            cov = np.clip(den, 0.0, 1.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.where(cov >= self.min_coverage, num / np.where(den > 0, den, 1.0), np.nan)
            out, cov = out[:, None, :], cov[:, None, :]
        if was_1d:
            out, cov = out[0], cov[0]
        return (out, cov) if return_coverage else out


def build_transform(config: dict[str, Any], **options: Any) -> Any:
    """The transform a store configuration describes (``Scattering`` unless ``transform`` says otherwise)."""
    config = dict(config)
    kind = config.pop("transform", "scattering")
    if kind == "scattering":
        from scatterdist import Scattering

        return Scattering(**config, **options)
    if kind == "lowpass":
        return LowPass(**config, **options)
    if kind == "covariance":
        from scatterdist import ScatteringCovariance

        return ScatteringCovariance(**config, **options)
    raise ValueError(f"unknown transform {kind!r}; choose one of {TRANSFORMS}")
