"""Scale-discretised axisymmetric wavelets on the sphere, as S2LET defines them.

Leistedt et al. 2013 (arXiv:1211.1680), McEwen et al. 2018 (arXiv:1509.06749).
With the squared Schwartz bump ``s(t)^2 = exp(-2/(1-t^2))`` mapped onto ``[1/lam, 1]``,

    k_lam(t) = int_t^1 s_lam(u)^2 / u du  /  int_{1/lam}^1 s_lam(u)^2 / u du

(1 for t < 1/lam, 0 for t > 1). Harmonic multipliers, for degrees ``l = 0..L-1``:

    kappa_j(l) = sqrt(k_lam(l / lam**(j+1)) - k_lam(l / lam**j))     (wavelet, j = J0..J)
    eta(l)     = sqrt(k_lam(l / lam**J0))                             (scaling function)

with ``J = ceil(log(L) / log(lam))``, so that ``eta**2 + sum_j kappa_j**2 = 1`` for every l
(a Parseval tight frame). Wavelet j lives on ``lam**(j-1) < l < lam**(j+1)``.

S2LET integrates k with a 300-point trapezoid rule; here the integral is evaluated with a
Gauss-Legendre rule that is exact to round-off for this smooth integrand.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_GL_NODES = 256


def j_max(L: int, lam: float = 2.0) -> int:
    """Largest wavelet scale ``J = ceil(log(L) / log(lam))`` for bandlimit ``L``.

    >>> j_max(128, 2.0)
    7
    """
    _check_L_lam(L, lam)
    # Guard against log rounding: the smallest J with lam**J >= L.
    J = math.ceil(math.log(L) / math.log(lam) - 1e-12)
    while lam**J < L:
        J += 1
    return J


def _check_L_lam(L: int, lam: float) -> None:
    if not (isinstance(L, (int, np.integer)) and L >= 2):
        raise ValueError(f"bandlimit L must be an integer >= 2, got {L!r}")
    if not (np.isfinite(lam) and lam > 1):
        raise ValueError(f"lam must be a finite number > 1, got {lam!r}")


def _bump2_over_t(u: np.ndarray, lam: float) -> np.ndarray:
    """Integrand ``s_lam(u)^2 / u`` on ``1/lam < u < 1`` (zero outside)."""
    t = 2.0 * lam / (lam - 1.0) * (u - 1.0 / lam) - 1.0
    out = np.zeros_like(u)
    inside = np.abs(t) < 1.0
    out[inside] = np.exp(-2.0 / (1.0 - t[inside] ** 2)) / u[inside]
    return out


@lru_cache(maxsize=1)
def _gauss_legendre() -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the Gauss-Legendre rule (an eigenvalue problem: computed once)."""
    x, w = np.polynomial.legendre.leggauss(_GL_NODES)
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


def _integral_to_one(a: np.ndarray, lam: float) -> np.ndarray:
    """``int_a^1 s_lam(u)^2 / u du`` for each ``a`` in ``[1/lam, 1]`` (vectorised Gauss-Legendre)."""
    x, w = _gauss_legendre()
    half = (1.0 - a)[:, None] / 2.0
    u = (1.0 + a)[:, None] / 2.0 + half * x[None, :]
    return (half * _bump2_over_t(u, lam) * w[None, :]).sum(axis=1)


def k_lam(t: np.ndarray, lam: float = 2.0) -> np.ndarray:
    """Smoothly decreasing step ``k_lam(t)``: 1 below ``1/lam``, 0 above 1."""
    t = np.asarray(t, dtype=np.float64)
    out = np.where(t < 1.0 / lam, 1.0, 0.0)
    mid = (t >= 1.0 / lam) & (t <= 1.0)
    if np.any(mid):
        norm = _integral_to_one(np.array([1.0 / lam]), lam)[0]
        out[mid] = _integral_to_one(t[mid], lam) / norm
    return out


def axisym_kernels(L: int, lam: float = 2.0, J0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scaling and wavelet harmonic multipliers for bandlimit ``L``.

    Returns
    -------
    phi : float64 ``(L,)``, the scaling kernel ``eta(l)``
    psi : float64 ``(J - J0 + 1, L)``, row ``i`` is the wavelet kernel ``kappa_{J0+i}(l)``

    Examples
    --------
    >>> phi, psi = axisym_kernels(64, lam=2.0, J0=2)
    >>> psi.shape
    (5, 64)
    >>> bool(np.allclose(phi**2 + (psi**2).sum(0), 1.0))
    True
    """
    _check_L_lam(L, lam)
    J = j_max(L, lam)
    if not (isinstance(J0, (int, np.integer)) and 0 <= J0 < J):
        raise ValueError(f"J0 must be an integer in [0, {J}) for L={L}, lam={lam}; got {J0!r}")
    ell = np.arange(L, dtype=np.float64)
    js = np.arange(J0, J + 2)
    # k at l / lam**j for j = J0..J+1, one row per j.
    kk = k_lam((ell[None, :] / (float(lam) ** js[:, None])).ravel(), lam).reshape(len(js), L)
    phi = np.sqrt(kk[0])
    psi = np.sqrt(np.clip(kk[1:] - kk[:-1], 0.0, None))
    return phi, psi


def wavelet_bandlimit(j: int, L: int, lam: float = 2.0) -> int:
    """Bandlimit ``L_j = min(L, ceil(lam**(j+1)))`` of wavelet scale j (kappa_j(l) = 0 for l >= L_j)."""
    return int(min(L, math.ceil(float(lam) ** (j + 1) - 1e-9)))


def scaling_bandlimit(J0: int, lam: float = 2.0) -> int:
    """Bandlimit ``L0 = ceil(lam**J0)`` of the scaling function."""
    return max(1, int(math.ceil(float(lam) ** J0 - 1e-9)))


# --- directional wavelets (steerable, azimuthal band N) ------------------------------------


def _check_N(N: int) -> int:
    if not (isinstance(N, (int, np.integer)) and not isinstance(N, bool) and N >= 1):
        raise ValueError(f"azimuthal band N must be an integer >= 1 (1 = axisymmetric), got {N!r}")
    return int(N)


def steer_orders(N: int) -> np.ndarray:
    """Azimuthal orders ``n >= 0`` that carry the directional wavelets of band N: ``n < N``, ``n = N - 1 (mod 2)``.

    >>> steer_orders(4).tolist(), steer_orders(3).tolist(), steer_orders(1).tolist()
    ([1, 3], [0, 2], [0])
    """
    N = _check_N(N)
    return np.arange((N - 1) % 2, N, 2)


def steerability_coefficients(L: int, N: int) -> np.ndarray:
    """S2LET's directionality component ``s_lm`` of azimuthal band N, complex ``(L, 2N - 1)``.

    Column ``m + N - 1`` holds ``s_lm`` for ``m = -(N-1)..N-1`` (``s_lm = 0`` for ``|m| >= N``).
    Leistedt et al. / McEwen et al. 2018 (arXiv:1509.06749), eq. (11), as S2LET's
    ``s2let_tiling_direction`` evaluates it: for ``l >= 1``, with
    ``gamma = min(N - 1, l - (1 + N + l) % 2)`` (that is ``min(N-1, l)`` when ``N + l`` is odd,
    ``min(N-1, l-1)`` when it is even),

        s_lm = nu * sqrt(binom(gamma, (gamma - m) / 2) / 2**gamma)   if N + m is odd, else 0,

    ``nu = 1`` for odd N and ``i`` for even N (so the wavelets are real), and ``s_00 = 0``.
    ``sum_m |s_lm|**2 = 1`` for every ``l >= 1``; ``N = 1`` gives ``s_l0 = 1`` (axisymmetric).
    """
    N = _check_N(N)
    if not (isinstance(L, (int, np.integer)) and L >= 1):
        raise ValueError(f"bandlimit L must be an integer >= 1, got {L!r}")
    ell = np.arange(L)
    gamma = np.minimum(N - 1, ell - ((N + ell + 1) % 2))
    m = np.arange(-(N - 1), N)
    # binom(g, (g - m)/2) / 2**g for every g < N and |m| < N (0 where (g - m) is odd or |m| > g).
    table = np.zeros((N, 2 * N - 1))
    for g in range(N):
        for i, mm in enumerate(m):
            if abs(mm) <= g and (g - mm) % 2 == 0:
                table[g, i] = math.comb(g, (g - mm) // 2) / 2.0**g
    s = np.sqrt(table[np.maximum(gamma, 0)]) * ((N + m) % 2 == 1)[None, :]
    s[ell == 0] = 0.0
    nu = 1.0 if N % 2 else 1j
    return (nu * s).astype(np.complex128)


def directional_kernels(L: int, lam: float = 2.0, J0: int = 0, N: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Scaling kernel and directional wavelet kernels of azimuthal band N, as S2LET defines them.

    ``Psi_j,lm = kappa_j(l) s_lm`` (:func:`axisym_kernels`, :func:`steerability_coefficients`),
    normalised like the axisymmetric kernels, so that ``eta(l)**2 + sum_j sum_m |Psi_j,lm|**2 = 1``
    for every l. S2LET's ``s2let_tiling_wavelet`` stores ``sqrt((2l+1)/(8 pi**2)) Psi_j,lm`` and
    ``sqrt((2l+1)/(4 pi)) eta(l)`` (its admissibility sum weights them by ``8 pi**2/(2l+1)`` and
    ``4 pi/(2l+1)``: the same identity).

    Returns
    -------
    phi : float64 ``(L,)``, ``eta(l)``
    psi : complex128 ``(J - J0 + 1, L, 2N - 1)``, ``psi[i, l, m + N - 1] = Psi_{J0+i}, lm``
        (only ``|m| < N`` can be nonzero). ``N = 1``: ``psi[..., 0].real`` is exactly
        :func:`axisym_kernels`' wavelet kernel.

    >>> phi, psi = directional_kernels(64, 2.0, 2, N=4)
    >>> psi.shape
    (5, 64, 7)
    >>> bool(np.allclose(phi**2 + (abs(psi)**2).sum((0, 2)), 1.0))
    True
    """
    phi, kappa = axisym_kernels(L, lam, J0)
    s = steerability_coefficients(L, N)
    return phi, kappa[:, :, None] * s[None, :, :]
