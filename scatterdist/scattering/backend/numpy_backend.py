"""CPU backend: numpy arrays in float64, transforms through ducc0 (:mod:`scatterdist.sphere`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scatterdist import sphere


class NumpyBackend:
    """ducc0 transforms on numpy float64 / complex128 arrays.

    Parameters
    ----------
    nthreads : threads for ducc0 (default: ``$OMP_NUM_THREADS``, else all cores)
    """

    name = "numpy"

    def __init__(self, nthreads: int | None = None) -> None:
        self.nthreads = sphere.default_nthreads(nthreads)

    def asarray(self, maps: Any) -> np.ndarray:
        return np.ascontiguousarray(maps, dtype=np.float64)

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)

    def analysis(self, maps: np.ndarray, lmax: int, mode: str = "quadrature") -> np.ndarray:
        return sphere.analysis(maps, lmax, mode=mode, nthreads=self.nthreads)

    def synthesis(self, alm: np.ndarray, nside: int, lmax: int) -> np.ndarray:
        return sphere.synthesis(alm, nside, lmax, nthreads=self.nthreads)

    def spin_synthesis(self, alm: np.ndarray, nside: int, lmax: int, spin: int) -> np.ndarray:
        """Gradient-only spin-``spin`` synthesis ``(M, nalm)`` -> ``(M, 2, npix)`` (ducc0, HEALPix rings)."""
        from scatterdist.scattering.directional import spin_synthesis

        return spin_synthesis(alm, lmax, spin, nside=nside, nthreads=self.nthreads)

    def modulus(self, maps: np.ndarray) -> np.ndarray:
        return np.abs(maps, out=maps)  # the synthesis output is a temporary: reuse it

    def concatenate(self, arrays: Sequence[np.ndarray], axis: int = 0) -> np.ndarray:
        return np.concatenate(arrays, axis=axis)

    def stack(self, arrays: Sequence[np.ndarray], axis: int = 0) -> np.ndarray:
        return np.stack(arrays, axis=axis)

    def to_output(self, array: np.ndarray) -> np.ndarray:
        return array
