"""HEALPix geometry and spherical harmonic transforms.

The CPU engine is ducc0 (``ducc0.sht`` on the RING geometry of
``ducc0.healpix.Healpix_Base``). Harmonic coefficients use the healpy/ducc0 layout:
m-major, index ``m*(2*lmax+1-m)//2 + l`` (``healpy.Alm.getidx``), with ``mmax = lmax``.
"""

from scatterdist.sphere.healpix import (
    check_nside,
    npix2nside,
    nside2npix,
)
from scatterdist.sphere.alm import alm_l_index, alm_size, alm_truncate_index, lmax_from_size
from scatterdist.sphere.sht import analysis, default_nthreads, rotate_alm, synthesis

__all__ = [
    "alm_l_index",
    "alm_size",
    "alm_truncate_index",
    "analysis",
    "check_nside",
    "default_nthreads",
    "lmax_from_size",
    "npix2nside",
    "nside2npix",
    "rotate_alm",
    "synthesis",
]
