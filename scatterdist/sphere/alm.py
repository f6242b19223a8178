"""Index arithmetic for harmonic coefficients in the healpy/ducc0 m-major layout (mmax = lmax)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def alm_size(lmax: int) -> int:
    """Number of coefficients ``(lmax+1)(lmax+2)/2`` for ``mmax = lmax``."""
    return (lmax + 1) * (lmax + 2) // 2


def lmax_from_size(size: int) -> int:
    """Inverse of :func:`alm_size`; ValueError if ``size`` is not triangular."""
    lmax = int(round((np.sqrt(8 * size + 1) - 3) / 2))
    if alm_size(lmax) != size:
        raise ValueError(f"{size} is not a valid alm length (expected (lmax+1)(lmax+2)/2)")
    return lmax


@lru_cache(maxsize=256)
def _lm(lmax: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.repeat(np.arange(lmax + 1), np.arange(lmax + 1, 0, -1))
    start = m * (2 * lmax + 1 - m) // 2
    ell = np.arange(alm_size(lmax)) - start
    ell.setflags(write=False)
    m.setflags(write=False)
    return ell, m


def alm_l_index(lmax: int) -> np.ndarray:
    """Degree l of every coefficient, shape ``(alm_size(lmax),)``: expands a kernel k(l) as ``k[alm_l_index(lmax)]``."""
    return _lm(lmax)[0]


def alm_m_index(lmax: int) -> np.ndarray:
    """Order m of every coefficient, shape ``(alm_size(lmax),)``."""
    return _lm(lmax)[1]


@lru_cache(maxsize=256)
def alm_truncate_index(lmax_in: int, lmax_out: int) -> np.ndarray:
    """Positions in an ``lmax_in`` array of the coefficients of an ``lmax_out`` array.

    ``alm[..., alm_truncate_index(lmax_in, lmax_out)]`` keeps l <= lmax_out; requires lmax_out <= lmax_in.
    """
    if lmax_out > lmax_in:
        raise ValueError(f"cannot truncate alm from lmax={lmax_in} up to lmax={lmax_out}")
    ell, m = _lm(lmax_out)
    idx = m * (2 * lmax_in + 1 - m) // 2 + ell
    idx.setflags(write=False)
    return idx
