"""Gaussian and non-Gaussian CMB temperature skies with the same angular power spectrum.

Random streams
--------------
Map ``index`` of a run with seed ``seed`` draws from
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(index,)))``: the streams are
statistically independent across indices (this is exactly what ``SeedSequence(seed).spawn``
hands out), and the same ``(seed, index)`` gives bitwise the same map in any process or worker.
The ducc0 transforms used here are deterministic for any thread count (tested); the
functions default to ``nthreads=1`` because parallelism comes from Dask tasks.

Gaussian model
--------------
``a_lm`` drawn from the LCDM C_l (:func:`scatterdist.sims.cmb_cl`) in the healpy layout
(``a_l0`` real with variance C_l; ``Re``, ``Im`` of ``a_lm``, m > 0, each with variance C_l/2),
l <= lmax, then synthesised on the HEALPix RING grid. Units muK. ``lmax`` defaults to
``2*nside - 1`` (bandlimit L = 2*nside, the package's default bandlimit); at most ``3*nside - 1``.

Non-Gaussian model
------------------
Local quadratic non-Gaussianity of the *temperature field* (a toy model: this is not the
primordial f_NL, which acts on the Bardeen potential before the radiation transfer):
draw the Gaussian g above, then

    f = g + alpha * (g**2 - sigma_g**2) / sigma_g,   sigma_g**2 = <g**2> = sum_l (2l+1) C_l / 4pi

with ensemble (not per-map) moments; alpha is dimensionless (pixel skewness of f is about
``6 alpha / (1 + 2 alpha**2)**1.5`` before the rescaling below). The product is formed on a
Gauss-Legendre grid fine enough (``3*lmax/2 + 2`` rings, ``3*lmax + 2`` pixels per ring) that
the projection of f onto l <= lmax is exact, then ``f_lm`` is multiplied by the transfer

    T_l = sqrt(C_l / C^f_l),   C^f_l = C_l + 2 (alpha / sigma_g)**2 K_l,   K_l = 2 pi int xi(mu)**2 P_l(mu) dmu

where ``xi(mu) = sum_l (2l+1)/(4 pi) C_l P_l(mu)`` is the correlation function of g (Wick:
``<h(x) h(y)> = 2 xi**2`` for ``h = g**2 - sigma**2``, and ``<g h> = 0``). The transfer is
therefore **analytic** (exact expectation, no Monte Carlo noise), depends on (lmax, alpha)
only, and is cached in-process (``functools.lru_cache``). The expected C_l of the output then
equals the Gaussian C_l for every l, so only higher-order statistics separate the classes.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from scatterdist.sims.checks import _check_int, check_nonnegative
from scatterdist.sims.spectrum import cmb_cl
from scatterdist.sphere import check_nside, synthesis
from scatterdist.sphere.alm import alm_l_index, alm_m_index

__all__ = [
    "default_lmax",
    "gaussian_alm",
    "gaussian_cmb",
    "map_rng",
    "nongaussian_cl",
    "nongaussian_cmb",
    "nongaussian_transfer",
]


def check_alpha(alpha: object) -> float:
    """Return ``alpha`` as a finite float >= 0, or raise ValueError."""
    if alpha is None:
        raise ValueError("alpha must be a finite number >= 0, got None")
    return check_nonnegative("alpha", alpha)


def default_lmax(nside: int, lmax: int | None = None) -> int:
    """``lmax`` checked against ``nside`` (0 <= lmax <= 3*nside - 1); default ``2*nside - 1``."""
    nside = check_nside(nside)
    if lmax is None:
        return 2 * nside - 1
    lmax = _check_int("lmax", lmax, 0)
    if lmax > 3 * nside - 1:
        raise ValueError(
            f"lmax={lmax} is above what an nside={nside} map can carry (3*nside-1={3 * nside - 1}); "
            f"lower lmax or raise nside"
        )
    return lmax


def map_rng(seed: int, index: int = 0) -> np.random.Generator:
    """Independent generator of map ``index``: ``default_rng(SeedSequence(seed, spawn_key=(index,)))``."""
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def gaussian_alm(cl: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian ``a_lm`` (healpy layout, lmax = len(cl) - 1) with ``<|a_lm|^2> = C_l``; complex128."""
    cl = np.asarray(cl, dtype=np.float64)
    if cl.ndim != 1 or cl.size < 1 or np.any(cl < 0) or not np.all(np.isfinite(cl)):
        raise ValueError("cl must be a 1-d array of finite, non-negative values")
    lmax = cl.size - 1
    ell = alm_l_index(lmax)
    m = alm_m_index(lmax)
    z = rng.standard_normal((2, ell.size))
    amp = np.sqrt(cl[ell] * np.where(m == 0, 1.0, 0.5))
    return amp * (z[0] + 1j * np.where(m == 0, 0.0, z[1]))


def _beam(lmax: int, fwhm_arcmin: float | None) -> np.ndarray | None:
    """``b_l`` on the alm layout of ``lmax`` (None: no beam)."""
    if fwhm_arcmin is None:
        return None
    from scatterdist.sims.observe import beam_window

    return beam_window(fwhm_arcmin, lmax)[alm_l_index(lmax)]


def gaussian_cmb(
    nside: int,
    seed: int,
    lmax: int | None = None,
    index: int = 0,
    nthreads: int = 1,
    fwhm_arcmin: float | None = None,
) -> np.ndarray:
    """Gaussian LCDM temperature map ``(12*nside**2,)`` float64, muK, RING ordering.

    ``lmax`` defaults to ``2*nside - 1``; ``(seed, index)`` selects an independent stream.
    ``fwhm_arcmin``: Gaussian beam applied to the ``a_lm`` (see :mod:`scatterdist.sims.observe`).
    """
    nside = check_nside(nside)
    lmax = default_lmax(nside, lmax)
    alm = gaussian_alm(cmb_cl(lmax), map_rng(seed, index))
    beam = _beam(lmax, fwhm_arcmin)
    if beam is not None:
        alm *= beam
    return synthesis(alm, nside, lmax=lmax, nthreads=nthreads)


def _gl_shape(lmax: int) -> tuple[int, int]:
    """Gauss-Legendre grid on which products of two lmax-bandlimited fields project exactly."""
    return (3 * lmax) // 2 + 2, 3 * lmax + 2


@lru_cache(maxsize=16)
def _xi_squared_cl(lmax: int) -> np.ndarray:
    """``K_l = 2 pi int xi(mu)^2 P_l(mu) dmu`` for l <= lmax, with xi from cmb_cl(lmax)."""
    import ducc0

    cl = cmb_cl(lmax)
    ell = np.arange(lmax + 1)
    norm = np.sqrt((2 * ell + 1) / (4 * np.pi))
    # xi(theta) = sum_l a_l0 Y_l0(theta) with a_l0 = sqrt((2l+1)/4pi) C_l (axisymmetric, mmax = 0).
    a0 = (norm * cl).astype(np.complex128)[None, :]
    ntheta, _ = _gl_shape(lmax)
    xi = ducc0.sht.synthesis_2d(
        alm=a0, spin=0, lmax=lmax, mmax=0, geometry="GL", ntheta=ntheta, nphi=1, nthreads=1
    )
    b = ducc0.sht.analysis_2d(map=xi**2, spin=0, lmax=lmax, mmax=0, geometry="GL", nthreads=1)
    out = b[0].real / norm
    out.setflags(write=False)
    return out


def _sigma2(lmax: int) -> float:
    cl = cmb_cl(lmax)
    return float(np.sum((2 * np.arange(lmax + 1) + 1) * cl) / (4 * np.pi))


def nongaussian_cl(lmax: int, alpha: float) -> np.ndarray:
    """Expected C_l (muK^2, ``(lmax+1,)``) of ``f = g + alpha (g^2 - sigma^2)/sigma`` before rescaling."""
    lmax = _check_int("lmax", lmax, 0)
    alpha = check_alpha(alpha)
    return cmb_cl(lmax) + 2.0 * alpha**2 / _sigma2(lmax) * _xi_squared_cl(lmax)


@lru_cache(maxsize=64)
def _transfer(lmax: int, alpha: float) -> np.ndarray:
    cl = cmb_cl(lmax)
    clf = nongaussian_cl(lmax, alpha)
    t = np.zeros(lmax + 1)
    good = cl > 0
    t[good] = np.sqrt(cl[good] / clf[good])
    t.setflags(write=False)
    return t


def nongaussian_transfer(lmax: int, alpha: float) -> np.ndarray:
    """Per-l factor ``T_l = sqrt(C_l / C^f_l)`` (``(lmax+1,)``, read-only, cached; 0 where C_l = 0)."""
    return _transfer(_check_int("lmax", lmax, 0), check_alpha(alpha))


def nongaussian_cmb(
    nside: int,
    seed: int,
    alpha: float,
    lmax: int | None = None,
    index: int = 0,
    nthreads: int = 1,
    fwhm_arcmin: float | None = None,
) -> np.ndarray:
    """Non-Gaussian map ``(12*nside**2,)`` float64, muK, RING, with the Gaussian expected C_l.

    The Gaussian field g is the one :func:`gaussian_cmb` draws for the same
    ``(seed, index)``; see the module docstring for the model and the transfer.
    ``fwhm_arcmin``: Gaussian beam applied to the final ``f_lm`` (after the transfer).
    """
    import ducc0

    nside = check_nside(nside)
    lmax = default_lmax(nside, lmax)
    alpha = check_alpha(alpha)
    transfer = nongaussian_transfer(lmax, alpha)
    g_lm = gaussian_alm(cmb_cl(lmax), map_rng(seed, index))
    ntheta, nphi = _gl_shape(lmax)
    g = ducc0.sht.synthesis_2d(
        alm=g_lm[None, :], spin=0, lmax=lmax, geometry="GL", ntheta=ntheta, nphi=nphi,
        nthreads=nthreads,
    )
    sigma2 = _sigma2(lmax)
    # f = g + alpha (g^2 - sigma^2) / sigma, in place (two grid-sized arrays at most)
    f = g * g
    f -= sigma2
    f *= alpha / math.sqrt(sigma2)
    f += g
    del g
    f_lm = ducc0.sht.analysis_2d(map=f, spin=0, lmax=lmax, geometry="GL", nthreads=nthreads)[0]
    f_lm *= transfer[alm_l_index(lmax)]
    beam = _beam(lmax, fwhm_arcmin)
    if beam is not None:
        f_lm *= beam
    return synthesis(f_lm, nside, lmax=lmax, nthreads=nthreads)
