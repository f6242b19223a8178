"""scatterdist: spherical wavelet scattering transforms of HEALPix maps at survey scale.

>>> import numpy as np, scatterdist
>>> sc = scatterdist.Scattering(nside=32, depth=2)
>>> sc.invariants(np.random.default_rng(0).standard_normal(12 * 32**2)).shape
(7,)
"""

__version__ = "0.1.0"

from scatterdist.equivariance import equivariance_error
from scatterdist.scattering import InvalidMapError, Scattering
from scatterdist.wavelet_transform import WaveletMaps, inverse_wavelet_transform, wavelet_transform
from scatterdist.wavelets import axisym_kernels

__all__ = [
    "InvalidMapError",
    "Scattering",
    "WaveletMaps",
    "__version__",
    "axisym_kernels",
    "equivariance_error",
    "inverse_wavelet_transform",
    "wavelet_transform",
]
