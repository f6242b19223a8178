"""Array backends for the scattering algorithm (see :mod:`.base` for the protocol)."""

from __future__ import annotations

from typing import Any

from scatterdist.scattering.backend.base import Backend
from scatterdist.scattering.backend.numpy_backend import NumpyBackend

BACKENDS = ("numpy", "torch")


def get_backend(name: str = "numpy", nthreads: int | None = None, **options: Any) -> Backend:
    """Backend by name: ``"numpy"`` (ducc0, float64) or ``"torch"`` (``device=``, ``dtype=``)."""
    if name == "numpy":
        if options:
            raise ValueError(f"the numpy backend takes no options {sorted(options)}; they apply to backend='torch'")
        return NumpyBackend(nthreads=nthreads)
    if name == "torch":
        from scatterdist.scattering.backend.torch_backend import TorchBackend

        return TorchBackend(nthreads=nthreads, **options)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


__all__ = ["BACKENDS", "Backend", "NumpyBackend", "get_backend"]
