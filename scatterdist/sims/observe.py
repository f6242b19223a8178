"""Observing a simulated sky: Gaussian beam, white noise and masks (Galactic cut or a file).

Conventions (every function is vectorised; maps are HEALPix RING, temperatures in muK):

- **Beam**: a circular Gaussian beam of full width at half maximum ``fwhm_arcmin`` arcminutes,
  applied in harmonic space as ``a_lm -> b_l a_lm`` with the window ``b_l`` of
  :func:`healpy.gauss_beam` (``b_l = exp(-l (l+1) sigma^2 / 2)``, ``sigma = fwhm / sqrt(8 ln 2)``).
  The pixel window is not applied.
- **White noise**: independent Gaussian noise per pixel with the map-level depth
  ``noise_uK_arcmin`` (muK arcmin): per-pixel standard deviation
  ``noise_uK_arcmin / resol_arcmin`` with ``resol_arcmin = sqrt(4 pi / npix)`` in arcminutes
  (:func:`healpy.nside2resol`). Map ``index`` of seed ``seed`` draws its noise from the stream
  ``SeedSequence(seed, spawn_key=(index, 1))``, independent of its sky stream
  ``(seed, spawn_key=(index,))`` (:func:`scatterdist.sims.map_rng`), so adding noise never
  changes the sky and every worker regenerates bitwise the same noise.
- **Masks**: weights in [0, 1]; :func:`galactic_cut_mask` keeps ``|b| > b_deg`` (the map is in
  Galactic coordinates, as CMB maps usually are; sky fraction ``1 - sin(b_deg)``, 0.658 for 20
  degrees). A simulated sky is set to ``healpy.UNSEEN`` where its mask weight is 0.
"""

from __future__ import annotations

import math

import numpy as np

from scatterdist.sims.checks import _check_int, check_nonnegative
from scatterdist.sphere import check_nside, nside2npix

__all__ = [
    "UNSEEN",
    "apply_mask",
    "beam_window",
    "check_nonnegative",
    "galactic_cut_mask",
    "noise_rng",
    "noise_sigma_pixel",
    "white_noise",
]

#: healpy's marker for pixels with no data (``healpy.UNSEEN``).
UNSEEN = -1.6375e30


def beam_window(fwhm_arcmin: float, lmax: int) -> np.ndarray:
    """Gaussian beam window ``b_l`` for l = 0..lmax (``(lmax+1,)`` float64, b_0 = 1).

    >>> b = beam_window(60.0, 200)
    >>> float(b[0]), bool(0.5 < b[100] < 0.6)
    (1.0, True)
    """
    import healpy as hp

    fwhm = check_nonnegative("fwhm_arcmin", fwhm_arcmin, "arcmin")
    lmax = _check_int("lmax", lmax, 0)
    return np.asarray(hp.gauss_beam(math.radians(fwhm / 60.0), lmax=lmax), dtype=np.float64)


def noise_rng(seed: int, index: int = 0) -> np.random.Generator:
    """Noise stream of map ``index``: ``default_rng(SeedSequence(seed, spawn_key=(index, 1)))``."""
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))


def noise_sigma_pixel(nside: int, noise_uK_arcmin: float) -> float:
    """Per-pixel standard deviation (muK) of white noise of depth ``noise_uK_arcmin`` at ``nside``."""
    import healpy as hp

    depth = check_nonnegative("noise_uK_arcmin", noise_uK_arcmin, "muK arcmin")
    return float(depth / hp.nside2resol(check_nside(nside), arcmin=True))


def white_noise(nside: int, noise_uK_arcmin: float, rng: np.random.Generator) -> np.ndarray:
    """White noise map ``(12*nside**2,)`` float64 muK of depth ``noise_uK_arcmin`` (muK arcmin)."""
    sigma = noise_sigma_pixel(nside, noise_uK_arcmin)
    return sigma * rng.standard_normal(nside2npix(check_nside(nside)))


def galactic_cut_mask(nside: int, b_deg: float) -> np.ndarray:
    """Galactic cut: 1.0 where the pixel centre has ``|b| > b_deg`` degrees, else 0.0.

    ``(12*nside**2,)`` float64, RING, Galactic coordinates (latitude of the HEALPix pixel
    centres). ``b_deg = 0`` keeps the whole sky but the pixels centred on the equator.
    """
    import healpy as hp

    b = check_nonnegative("galactic cut |b|", b_deg, "degrees")
    if b >= 90:
        raise ValueError(f"a Galactic cut of |b| > {b_deg} degrees leaves no sky; use a value below 90")
    nside = check_nside(nside)
    _, lat = hp.pix2ang(nside, np.arange(nside2npix(nside)), lonlat=True)
    return (np.abs(lat) > b).astype(np.float64)


def apply_mask(sky: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """``sky`` (modified in place and returned) with ``UNSEEN`` where ``weights == 0``."""
    if weights is not None:
        sky[np.asarray(weights) == 0] = UNSEEN
    return sky
