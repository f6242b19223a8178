"""The optimal cubic (KSW-type) statistic of the local quadratic model: the study's yardstick.

For ``f = g + alpha (g^2 - sigma^2) / sigma`` with Gaussian ``g`` of spectrum ``C_l``
(:mod:`scatterdist.sims.skies`), the score of the likelihood at ``alpha = 0`` is, up to a
constant and a factor ``1/sigma``,

    T = mean_x  f(x)^2 (C^-1 f)(x)                                  (full sky)

one analysis and one synthesis per map (:func:`cubic_statistic`; ``C^-1`` is zero for l < 2).

Survey conditions (data ``d = M (B f + n)``: mask M, beam B, white noise of variance
``sigma_n^2`` per pixel): the score is an expectation over the posterior of ``g``, whose
mean is the Wiener-filtered sky ``g_hat``, solution of

    (C^-1 + B Y^T M N^-1 M Y B) g_hat = B Y^T M N^-1 d                (harmonic space; Y: synthesis)

solved by preconditioned conjugate gradients for a batch of maps at once (:func:`wiener_filter`).
The statistic is then the KSW form (Creminelli et al. 2006, JCAP 05, 004) with its linear term:

    T = sum_x [ g_hat^2 (C^-1 g_hat) - <g_hat^2> (C^-1 g_hat) - 2 g_hat <g_hat C^-1 g_hat> ]

where ``< >`` are pixel maps averaged over Gaussian simulations passed through the same
observation and filter (:func:`linear_term_maps`). The linear term removes the part of the
cubic term that is correlated with the Gaussian field through the mask (which makes it
much noisier than the full-sky form on a cut sky).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scatterdist.sphere import alm_l_index, analysis, synthesis

__all__ = ["CGResult", "SurveyModel", "cubic_statistic", "linear_term_maps", "masked_cubic_statistic", "wiener_filter"]


def _inverse_cl(cl: np.ndarray) -> np.ndarray:
    """``1 / C_l`` with zero where ``C_l`` is zero (l < 2 for the CMB)."""
    cl = np.asarray(cl, dtype=np.float64)
    out = np.zeros_like(cl)
    np.divide(1.0, cl, out=out, where=cl > 0)
    return out


def cubic_statistic(maps: np.ndarray, cl: np.ndarray, lmax: int | None = None, nthreads: int = 1) -> np.ndarray:
    """Full-sky cubic statistic ``mean_x f^2 (C^-1 f)`` of maps ``(n, npix)`` -> ``(n,)``.

    ``cl``: the Gaussian spectrum ``C_l``, l = 0..lmax (at least), in the maps' units.
    ``lmax`` defaults to ``2 nside - 1``. Units: map units squared over C's units (muK for
    muK maps and muK^2 spectra).
    """
    maps = np.atleast_2d(np.asarray(maps, dtype=np.float64))
    nside = int(round(np.sqrt(maps.shape[-1] / 12)))
    lmax = 2 * nside - 1 if lmax is None else int(lmax)
    if len(cl) < lmax + 1:
        raise ValueError(f"cl has {len(cl)} multipoles, need lmax + 1 = {lmax + 1}")
    cinv = _inverse_cl(np.asarray(cl)[: lmax + 1])[alm_l_index(lmax)]
    alm = analysis(maps, lmax, nthreads=nthreads)
    h = synthesis(alm * cinv, nside, lmax, nthreads=nthreads)
    return np.mean(maps**2 * h, axis=-1)


@dataclass(frozen=True)
class SurveyModel:
    """What the data went through: ``d = M (B f + n)``.

    ``cl`` the sky spectrum (l = 0..lmax); ``mask`` weights ``(npix,)`` (0 = no data; values are
    used as 0/1: a pixel is observed or not); ``beam`` ``b_l`` (None: no beam); ``noise_sigma``
    the white-noise standard deviation per pixel (> 0: a clean sky needs a small regularising
    noise level, which the caller states).
    """

    cl: np.ndarray
    mask: np.ndarray
    noise_sigma: float
    beam: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.noise_sigma > 0:
            raise ValueError(f"noise_sigma must be > 0 (a regularising level for a clean sky), got {self.noise_sigma}")

    @property
    def nside(self) -> int:
        return int(round(np.sqrt(self.mask.size / 12)))

    @property
    def lmax(self) -> int:
        return 2 * self.nside - 1


@dataclass
class CGResult:
    """Wiener-filtered alm ``(n, nalm)``, iterations and final relative residual per map."""

    alm: np.ndarray
    iterations: int
    residual: np.ndarray


def _operator(model: SurveyModel, nthreads: int):
    """``(apply A, rhs of data, preconditioner)`` of the Wiener system in harmonic space."""
    nside, lmax = model.nside, model.lmax
    npix = 12 * nside**2
    lidx = alm_l_index(lmax)
    cl = np.asarray(model.cl, dtype=np.float64)[: lmax + 1]
    cinv = _inverse_cl(cl)[lidx]
    keep = (cl > 0)[lidx]  # the system lives on l with C_l > 0
    beam = np.ones(lmax + 1) if model.beam is None else np.asarray(model.beam, dtype=np.float64)[: lmax + 1]
    b = beam[lidx]
    ninv = (np.asarray(model.mask) > 0).astype(np.float64) / model.noise_sigma**2
    adjoint_scale = npix / (4.0 * np.pi)  # Y^T = quadrature analysis * npix / 4pi

    def adjoint(maps: np.ndarray) -> np.ndarray:
        return analysis(maps, lmax, nthreads=nthreads) * adjoint_scale

    def apply(x: np.ndarray) -> np.ndarray:
        y = adjoint(synthesis(x * b, nside, lmax, nthreads=nthreads) * ninv) * b
        return (cinv * x + y) * keep

    def rhs(data: np.ndarray) -> np.ndarray:
        return adjoint(np.where(ninv > 0, data, 0.0) * ninv) * b * keep

    diag = cinv + b**2 * float(ninv.mean()) * adjoint_scale
    precond = np.zeros_like(diag)
    np.divide(1.0, diag, out=precond, where=keep & (diag > 0))
    return apply, rhs, precond


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Real inner product ``(n,)`` of real fields given by their alm ``(n, nalm)``: in the healpy
    layout the m = 0 entries (the first lmax + 1) count once, m > 0 twice (m and -m)."""
    lmax = int((np.sqrt(1 + 8 * a.shape[-1]) - 3) / 2)
    prod = (a.conj() * b).real
    return 2.0 * prod.sum(axis=-1) - prod[..., : lmax + 1].sum(axis=-1)


def wiener_filter(data: np.ndarray, model: SurveyModel, tol: float = 1e-5, maxiter: int = 1000,
                  nthreads: int = 1) -> CGResult:
    """Wiener-filtered sky ``g_hat`` (alm, lmax = 2 nside - 1) of observed maps ``(n, npix)``.

    Preconditioned conjugate gradients on ``(C^-1 + B Y^T N^-1 Y B) x = B Y^T N^-1 d`` for all maps
    at once (one batched synthesis and analysis per iteration); stops when every map's residual is
    below ``tol`` relative to its right-hand side. Pixels outside the mask (any value, UNSEEN
    included) are ignored. Raises RuntimeError if ``maxiter`` is reached first.
    """
    data = np.atleast_2d(np.asarray(data, dtype=np.float64))
    apply, rhs, precond = _operator(model, nthreads)
    b = rhs(data)
    x = np.zeros_like(b)
    r = b.copy()
    z = precond * r
    p = z.copy()
    rz = _dot(r, z)
    bnorm = np.sqrt(_dot(b, b))
    bnorm = np.where(bnorm > 0, bnorm, 1.0)
    for it in range(1, maxiter + 1):
        ap = apply(p)
        step = rz / _dot(p, ap)
        x += step[:, None] * p
        r -= step[:, None] * ap
        res = np.sqrt(_dot(r, r)) / bnorm
        if np.all(res < tol):
            return CGResult(x, it, res)
        z = precond * r
        rz_new = _dot(r, z)
        p = z + (rz_new / rz)[:, None] * p
        rz = rz_new
    raise RuntimeError(f"conjugate gradients did not reach tol={tol} in {maxiter} iterations "
                       f"(worst residual {res.max():.2e}); raise maxiter or the noise level")


def _filtered_maps(data: np.ndarray, model: SurveyModel, nthreads: int) -> tuple[np.ndarray, np.ndarray]:
    """``(g_hat, C^-1 g_hat)`` as maps ``(n, npix)``."""
    lmax = model.lmax
    res = wiener_filter(data, model, nthreads=nthreads)
    cinv = _inverse_cl(np.asarray(model.cl)[: lmax + 1])[alm_l_index(lmax)]
    both = synthesis(np.concatenate([res.alm, res.alm * cinv]), model.nside, lmax, nthreads=nthreads)
    n = data.shape[0] if data.ndim == 2 else 1
    return both[:n], both[n:]


def linear_term_maps(gaussian_data: np.ndarray, model: SurveyModel, nthreads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(<g_hat^2>, <g_hat C^-1 g_hat>)`` pixel maps from Gaussian skies observed like the data ``(n_mc, npix)``."""
    g, h = _filtered_maps(gaussian_data, model, nthreads)
    return np.mean(g * g, axis=0), np.mean(g * h, axis=0)


def masked_cubic_statistic(data: np.ndarray, model: SurveyModel, linear: tuple[np.ndarray, np.ndarray],
                           nthreads: int = 1) -> np.ndarray:
    """KSW cubic statistic with its linear term of observed maps ``(n, npix)`` -> ``(n,)`` (module docstring)."""
    g, h = _filtered_maps(np.atleast_2d(data), model, nthreads)
    g2, gh = linear
    return np.mean(g * g * h - g2 * h - 2.0 * g * gh, axis=-1)
