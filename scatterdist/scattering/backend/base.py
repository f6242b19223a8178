"""The small protocol the scattering algorithm is written against.

A backend moves arrays in and out and supplies the two spherical harmonic transforms
and the modulus. Everything else the algorithm needs (``alm * kernel`` with a real
kernel, ``alm[..., index]`` with an integer index array, basic slicing along axis 0)
is common to numpy arrays and torch tensors, so the algorithm itself is written once in
:mod:`scatterdist.scattering.core`. Filters are built once in numpy and handed to the
backend through :meth:`Backend.from_numpy` at construction time.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

Array = Any  # numpy.ndarray or torch.Tensor


@runtime_checkable
class Backend(Protocol):
    """Operations the scattering core needs from an array library."""

    name: str

    def asarray(self, maps: Any) -> Array:
        """Validated user maps ``(B, npix)`` -> a real backend array in the compute dtype."""

    def from_numpy(self, array: np.ndarray) -> Array:
        """A float64 filter or int64 index array built in numpy -> backend array (called once)."""

    def analysis(self, maps: Array, lmax: int, mode: str = "quadrature") -> Array:
        """Real maps ``(N, npix)`` -> complex alm ``(N, nalm(lmax))``, healpy layout."""

    def synthesis(self, alm: Array, nside: int, lmax: int) -> Array:
        """Complex alm ``(N, nalm(lmax))`` -> real maps ``(N, 12*nside**2)``."""

    # Optional (directional wavelets, N > 1; both backends have it):
    # def spin_synthesis(self, alm: Array, nside: int, lmax: int, spin: int) -> Array:
    #     """Gradient-only spin-n coefficients ``(M, nalm(lmax))`` -> real ``(M, 2, npix)`` (Q, U)."""
    # Optional (default: scatterdist.scattering.directional.oriented_moduli, numpy):
    # def oriented_moduli(self, components: Sequence[Array], N: int, harmonics: int) -> list[Array]:
    #     """N component maps ``(M, npix)`` -> orientation mean and harmonic moduli of ``|W(gamma)|``."""

    def modulus(self, maps: Array) -> Array:
        """Pointwise absolute value; may overwrite ``maps`` (always a temporary synthesis output)."""

    def concatenate(self, arrays: Sequence[Array], axis: int = 0) -> Array:
        """Join arrays along an existing axis."""

    def stack(self, arrays: Sequence[Array], axis: int = 0) -> Array:
        """Join arrays along a new axis."""

    def to_output(self, array: Array) -> Any:
        """Backend array -> what the frontend returns (numpy for numpy, tensor for torch)."""
