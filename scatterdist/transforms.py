"""Transforms the pipeline can apply to every map, selected by ``config["transform"]``.

- ``"scattering"`` (default): :class:`scatterdist.Scattering`.
- ``"lowpass"``: :class:`LowPass`, the raw map reduced to the scattering output resolution
  (the paper's low-resolution baseline input).

Every transform has the interface the store and the pipeline rely on: ``nside``, ``paths``,
``path_labels``, ``n_paths``, ``nside_out``, ``npix_out``, ``config()``, ``check_maps()``
and ``__call__(maps) -> (..., n_paths, npix_out)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from scatterdist.scattering.filters import default_J0, next_pow2
from scatterdist.scattering.inputs import check_maps
from scatterdist.sphere import analysis, check_nside, nside2npix, synthesis
from scatterdist.wavelets import scaling_bandlimit

TRANSFORMS = ("scattering", "lowpass")


class LowPass:
    """A map low-passed to bandlimit ``L0`` and resampled at ``nside_out``: one "path".

    Defaults match :class:`~scatterdist.Scattering` with the same ``nside``, ``L``, ``lam``:
    the same ``L0`` and ``nside_out``, so both stores have the same pixels. The harmonic
    truncation is sharp (``a_lm`` kept for l < L0), i.e. an ideal low-pass filter.

    >>> lp = LowPass(32)
    >>> lp.L0, lp.nside_out, lp(np.ones(12 * 32**2)).shape
    (16, 8, (1, 768))
    """

    def __init__(self, nside: int, L: int | None = None, lam: float = 2.0, J0: int | None = None,
                 analysis: str = "quadrature", nthreads: int | None = None, **_ignored: Any) -> None:
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
        self.depth = 0
        self.paths: list[tuple[int, ...]] = [()]
        self.path_labels = [f"lowpass L0={self.L0}"]
        self.n_paths = 1

    def config(self) -> dict[str, Any]:
        return {"transform": "lowpass", "nside": self.nside, "L": self.L, "lam": self.lam,
                "J0": self.J0, "analysis": self.analysis}

    def check_maps(self, maps: Any) -> None:
        check_maps(maps, self.nside)

    def path_coords(self) -> dict[str, np.ndarray]:
        return {"label": np.array(self.path_labels), "order": np.zeros(1, np.int16),
                "j1": np.full(1, -1, np.int16), "j2": np.full(1, -1, np.int16)}

    def __call__(self, maps: Any) -> np.ndarray:
        x, was_1d = check_maps(maps, self.nside)
        alm = analysis(np.asarray(x, dtype=np.float64), self.L0 - 1, mode=self.analysis, nthreads=self.nthreads)
        out = synthesis(alm, self.nside_out, self.L0 - 1, nthreads=self.nthreads)[:, None, :]
        return out[0] if was_1d else out


def build_transform(config: dict[str, Any], **options: Any) -> Any:
    """The transform a store configuration describes (``Scattering`` unless ``transform`` says otherwise)."""
    config = dict(config)
    kind = config.pop("transform", "scattering")
    if kind == "scattering":
        from scatterdist import Scattering

        return Scattering(**config, **options)
    if kind == "lowpass":
        return LowPass(**config, **options)
    raise ValueError(f"unknown transform {kind!r}; choose one of {TRANSFORMS}")
