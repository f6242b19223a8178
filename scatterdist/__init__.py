"""scatterdist: spherical wavelet scattering transforms of HEALPix maps at survey scale.

>>> import numpy as np, scatterdist
>>> sc = scatterdist.Scattering(nside=32, depth=2)
>>> sc.invariants(np.random.default_rng(0).standard_normal(12 * 32**2)).shape
(7,)
"""

__version__ = "0.1.0"

from scatterdist.equivariance import equivariance_error
from scatterdist.sphere.mask import MaskError, apodize, mask_from_map, read_mask, sky_fraction
from scatterdist.sphere.spin import qu_to_eb
from scatterdist.stability import deformation_stability
from scatterdist.scattering import InvalidMapError, Scattering, ScatteringCovariance
from scatterdist.scattering.directional import directional_wavelet_transform
from scatterdist.wavelet_transform import WaveletMaps, inverse_wavelet_transform, wavelet_transform
from scatterdist.wavelets import axisym_kernels, directional_kernels

__all__ = [
    "InvalidMapError",
    "MaskError",
    "Scattering",
    "ScatteringCovariance",
    "WaveletMaps",
    "__version__",
    "apodize",
    "axisym_kernels",
    "deformation_stability",
    "directional_kernels",
    "directional_wavelet_transform",
    "equivariance_error",
    "inverse_wavelet_transform",
    "mask_from_map",
    "qu_to_eb",
    "read_mask",
    "sky_fraction",
    "wavelet_transform",
]
