"""Real spherical-harmonic basis at small bandlimits: dense transform matrices and Gaunt tensors.

Conventions
-----------
Real coefficients are ordered ``k = l*l + l + m`` with ``-l <= m <= l`` (``(lmax+1)**2`` of them).
They are an orthogonal re-parametrisation of the complex healpy/ducc0 ``alm`` of a real field:
``r[l, 0] = Re a_l0``, ``r[l, m] = sqrt(2) Re a_lm`` and ``r[l, -m] = sqrt(2) Im a_lm`` for m > 0,
so the real basis functions are ``Y_l0``, ``sqrt(2) Re Y_lm`` and ``-sqrt(2) Im Y_lm``
(orthonormal on the unit sphere, Condon-Shortley phase as in ducc0).

Why dense matrices: the trainable network works at the scattering *output* resolution
(``nside_out`` 8 or 16, ``lmax = 2*nside_out - 1``), where a synthesis matrix has at most
3072 x 1024 entries (12 MiB in float32). Building it ONCE from ducc0 and applying it as a
matmul is exact (to float32 rounding), differentiable, runs on any torch device and is
cheaper than any fast transform at these sizes. Analysis is the least-squares inverse of the
synthesis matrix, exact for maps bandlimited at ``lmax`` (which scattering outputs are).

Gaunt coefficients ``G[K, i, j] = \\int Y_K Y_i Y_j dOmega`` in this real basis are computed
exactly by quadrature: the integrand factorises into ``lambda_{l|m|}(theta)`` (from ducc0,
Gauss-Legendre in cos(theta), exact for degree ``3*lmax``) times a trigonometric product in phi
(uniform grid, exact for frequencies up to ``3*lmax``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from scatterdist.sphere import alm_size, check_nside, rotate_alm, synthesis
from scatterdist.sphere.alm import alm_l_index, alm_m_index


def n_real(lmax: int) -> int:
    """Number of real coefficients ``(lmax+1)**2``."""
    return (int(lmax) + 1) ** 2


@lru_cache(maxsize=32)
def real_degree_index(lmax: int) -> np.ndarray:
    """Degree l of every real coefficient, shape ``((lmax+1)**2,)``."""
    ell = np.repeat(np.arange(lmax + 1), 2 * np.arange(lmax + 1) + 1)
    ell.setflags(write=False)
    return ell


@lru_cache(maxsize=32)
def real_order_index(lmax: int) -> np.ndarray:
    """Order m (``-l..l``) of every real coefficient, shape ``((lmax+1)**2,)``."""
    ell = real_degree_index(lmax)
    m = np.arange(n_real(lmax)) - ell * ell - ell
    m.setflags(write=False)
    return m


@lru_cache(maxsize=32)
def _conversion_index(lmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every complex alm: real index of its cosine part, of its sine part (-1 for m=0), and m."""
    ell = alm_l_index(lmax)
    m = alm_m_index(lmax)
    k_pos = ell * ell + ell + m
    k_neg = np.where(m > 0, ell * ell + ell - m, -1)
    return k_pos, k_neg, m


def complex_to_real(alm: np.ndarray, lmax: int) -> np.ndarray:
    """Real coefficients ``(..., (lmax+1)**2)`` from complex healpy-layout ``alm`` ``(..., nalm)``."""
    alm = np.asarray(alm)
    if alm.shape[-1] != alm_size(lmax):
        raise ValueError(f"alm has {alm.shape[-1]} coefficients, expected {alm_size(lmax)} for lmax={lmax}")
    k_pos, k_neg, m = _conversion_index(lmax)
    out = np.zeros(alm.shape[:-1] + (n_real(lmax),), dtype=alm.real.dtype)
    scale = np.where(m > 0, np.sqrt(2.0), 1.0)
    out[..., k_pos] = alm.real * scale
    pos = m > 0
    out[..., k_neg[pos]] = alm[..., pos].imag * np.sqrt(2.0)
    return out


def real_to_complex(coeffs: np.ndarray, lmax: int) -> np.ndarray:
    """Inverse of :func:`complex_to_real`: complex ``alm`` ``(..., nalm)`` of a real field."""
    coeffs = np.asarray(coeffs)
    if coeffs.shape[-1] != n_real(lmax):
        raise ValueError(f"expected {n_real(lmax)} real coefficients for lmax={lmax}, got {coeffs.shape[-1]}")
    k_pos, k_neg, m = _conversion_index(lmax)
    cdtype = np.complex64 if coeffs.dtype == np.float32 else np.complex128
    alm = coeffs[..., k_pos].astype(cdtype)
    pos = m > 0
    alm[..., pos] = (coeffs[..., k_pos[pos]] + 1j * coeffs[..., k_neg[pos]]) / np.sqrt(2.0)
    return alm


def rotate_real(coeffs: np.ndarray, lmax: int, psi: float, theta: float, phi: float) -> np.ndarray:
    """Rotate real coefficients exactly (ZYZ Euler angles in radians, as ``scatterdist.sphere.rotate_alm``)."""
    coeffs = np.asarray(coeffs, dtype=np.float64)
    rotated = rotate_alm(real_to_complex(coeffs, lmax), lmax, psi, theta, phi)
    return complex_to_real(rotated, lmax)


@lru_cache(maxsize=8)
def synthesis_matrix(nside: int, lmax: int) -> np.ndarray:
    """Dense real synthesis matrix ``(npix, (lmax+1)**2)`` float64: ``map = Y @ coeffs`` (RING order)."""
    nside = check_nside(nside)
    if lmax > 2 * nside - 1:
        raise ValueError(f"lmax={lmax} exceeds 2*nside-1={2 * nside - 1}: the dense analysis would not be exact")
    basis = real_to_complex(np.eye(n_real(lmax)), lmax)
    maps = synthesis(basis, nside, lmax=lmax, nthreads=1)  # (nreal, npix)
    out = np.ascontiguousarray(maps.T)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def analysis_matrix(nside: int, lmax: int) -> np.ndarray:
    """Least-squares analysis matrix ``((lmax+1)**2, npix)`` float64, the left inverse of :func:`synthesis_matrix`.

    Exact (to rounding) on maps bandlimited at ``lmax``; on other maps it is the best L2 fit.
    """
    y = synthesis_matrix(nside, lmax)
    gram = y.T @ y
    cond = np.linalg.cond(gram)
    if not np.isfinite(cond) or cond > 1e8:
        raise ValueError(f"HEALPix nside={nside} cannot resolve lmax={lmax} (Gram condition number {cond:.3g})")
    out = np.linalg.solve(gram, y.T)
    out.setflags(write=False)
    return out


def _legendre_table(lmax: int, ntheta: int) -> tuple[np.ndarray, np.ndarray]:
    """``lambda_{l,m}(theta_k)`` for m >= 0 in healpy alm order ``(nalm, ntheta)``, and GL weights (sum 2)."""
    import ducc0

    x, w = np.polynomial.legendre.leggauss(ntheta)
    theta = np.arccos(x)
    nalm = alm_size(lmax)
    # unit alm a_lm = 1 (m = 0) or 1/2 (m > 0) evaluated at phi = 0 gives lambda_lm(theta)
    unit = np.zeros((nalm, 1, nalm), dtype=np.complex128)
    m = alm_m_index(lmax)
    unit[np.arange(nalm), 0, np.arange(nalm)] = np.where(m > 0, 0.5, 1.0)
    values = ducc0.sht.synthesis(
        alm=unit,
        lmax=lmax,
        spin=0,
        theta=theta,
        nphi=np.ones(ntheta, dtype=np.uint64),
        phi0=np.zeros(ntheta),
        ringstart=np.arange(ntheta, dtype=np.uint64),
        nthreads=1,
    )
    return values[:, 0, :], w


def _phi_table(lmax: int) -> np.ndarray:
    """``P[a, b, c] = int_0^{2 pi} Phi_a Phi_b Phi_c dphi`` for orders ``-lmax..lmax`` (offset by lmax)."""
    nphi = 3 * lmax + 2
    phi = 2 * np.pi * np.arange(nphi) / nphi
    m = np.arange(-lmax, lmax + 1)[:, None]
    am = np.abs(m)
    basis = np.where(m > 0, np.sqrt(2) * np.cos(am * phi), np.where(m < 0, -np.sqrt(2) * np.sin(am * phi), 1.0))
    table = np.einsum("ap,bp,cp->abc", basis, basis, basis) * (2 * np.pi / nphi)
    table[np.abs(table) < 1e-12] = 0.0
    return table


def gaunt_entries(lmax: int, pairs: list[tuple[int, int]], tol: float = 1e-12) -> dict[str, np.ndarray]:
    """Non-zero real Gaunt coefficients coupling degree pairs ``(l1, l2)`` into every ``L <= lmax``.

    Returns flat arrays (one entry per non-zero) ``out`` (real index of (L, M)), ``i`` (real index
    of (l1, m1)), ``j`` (real index of (l2, m2)), ``path`` (index into ``paths``), ``value``, and
    ``paths`` ``(npaths, 3)`` listing ``(l1, l2, L)``. Only ``l1 + l2 + L`` even couples (parity).
    """
    lmax = int(lmax)
    ntheta = (3 * lmax) // 2 + 2
    lam, w = _legendre_table(lmax, ntheta)
    ptab = _phi_table(lmax)
    alm_idx = lambda ell, am: am * (2 * lmax + 1 - am) // 2 + ell  # noqa: E731
    outs, ii, jj, pp, vals, paths = [], [], [], [], [], []
    for l1, l2 in pairs:  # build-time loop over the (few) degree pairs, vectorised inside
        if not (0 <= l1 <= lmax and 0 <= l2 <= lmax):
            raise ValueError(f"degree pair ({l1}, {l2}) outside 0..lmax={lmax}")
        degrees = [L for L in range(abs(l1 - l2), min(l1 + l2, lmax) + 1) if (l1 + l2 + L) % 2 == 0]
        m1 = np.arange(-l1, l1 + 1)[:, None, None]
        m2 = np.arange(-l2, l2 + 1)[None, :, None]
        mm = np.arange(-lmax, lmax + 1)[None, None, :]
        pv = ptab[(mm + lmax), (m1 + lmax), (m2 + lmax)]
        a1, a2, aM = np.nonzero(pv)
        pv = pv[a1, a2, aM]
        m1v, m2v, Mv = a1 - l1, a2 - l2, aM - lmax
        for L in degrees:
            keep = np.abs(Mv) <= L
            if not np.any(keep):
                continue
            t = (
                lam[alm_idx(L, np.abs(Mv[keep]))]
                * lam[alm_idx(l1, np.abs(m1v[keep]))]
                * lam[alm_idx(l2, np.abs(m2v[keep]))]
            ) @ w
            value = t * pv[keep]
            nz = np.abs(value) > tol
            if not np.any(nz):
                continue
            outs.append(L * L + L + Mv[keep][nz])
            ii.append(l1 * l1 + l1 + m1v[keep][nz])
            jj.append(l2 * l2 + l2 + m2v[keep][nz])
            pp.append(np.full(int(nz.sum()), len(paths)))
            vals.append(value[nz])
            paths.append((l1, l2, L))
    if not paths:
        raise ValueError(f"no non-zero Gaunt couplings for pairs {pairs} at lmax={lmax}")
    return {
        "out": np.concatenate(outs),
        "i": np.concatenate(ii),
        "j": np.concatenate(jj),
        "path": np.concatenate(pp),
        "value": np.concatenate(vals),
        "paths": np.asarray(paths, dtype=np.int64),
    }


def mst_pairs(lmax: int) -> list[tuple[int, int]]:
    """Reduced degree-mixing set in the spirit of Cobb et al. (ICLR 2021).

    Self pairs ``(l, l)`` for ``1 <= l <= lmax`` (they carry each degree's power into L = 0 and
    even L) plus the minimum spanning tree of the complete graph on degrees ``1..lmax`` with
    edge cost ``(2 l1 + 1)(2 l2 + 1)`` (the cost of coupling them), which is the star
    ``(1, l)``: O(lmax) pairs instead of O(lmax**2), still connecting every degree to every other.
    """
    pairs = [(ell, ell) for ell in range(1, lmax + 1)]
    pairs += [(1, ell) for ell in range(2, lmax + 1)]
    return pairs

