"""HEALPix geometry and spherical harmonic transforms.

The CPU engine is ducc0 (``ducc0.sht`` on the RING geometry of
``ducc0.healpix.Healpix_Base``). Harmonic coefficients use the healpy/ducc0 layout:
m-major, index ``m*(2*lmax+1-m)//2 + l`` (``healpy.Alm.getidx``), with ``mmax = lmax``. Masks (:mod:`.mask`) and spin-2 E/B
(:mod:`.spin`) live here too.
"""

from scatterdist.sphere.healpix import (
    check_nside,
    npix2nside,
    nside2npix,
)
from scatterdist.sphere.alm import alm_l_index, alm_size, alm_truncate_index, lmax_from_size
from scatterdist.sphere.sht import analysis, default_nthreads, rotate_alm, synthesis
from scatterdist.sphere.mask import (
    DEFAULT_APODIZE_DEG,
    DEFAULT_MIN_COVERAGE,
    DEFAULT_MIN_FSKY,
    MaskError,
    apodize,
    mask_from_map,
    read_mask,
    sky_fraction,
)
from scatterdist.sphere.spin import qu_to_eb

__all__ = [
    "DEFAULT_APODIZE_DEG",
    "DEFAULT_MIN_COVERAGE",
    "DEFAULT_MIN_FSKY",
    "MaskError",
    "apodize",
    "mask_from_map",
    "qu_to_eb",
    "read_mask",
    "sky_fraction",
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
