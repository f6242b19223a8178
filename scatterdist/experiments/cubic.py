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

solved by preconditioned conjugate gradients for a batch of maps at once (:func:`wiener_filter`). The
preconditioner inverts the operator's m-blocks for the ring-averaged noise weights exactly (an
iso-latitude cut with uniform noise couples only equal m), the diagonal above ``BLOCK_LMAX``: 3-4
iterations to a 1e-7 residual at nside 128 where the diagonal preconditioner alone needs 80-400.
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

__all__ = ["BLOCK_LMAX", "CGResult", "SurveyModel", "TOL", "cubic_statistic", "linear_term_maps", "masked_cubic_statistic", "wiener_filter"]


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


#: Largest multipole of the dense m-blocks of the preconditioner (above it: the diagonal). At
#: lmax 255 the blocks hold 256 x 256 x 256 float64 = 134 MB.
BLOCK_LMAX = 255


def _ring_weights(weights: np.ndarray, nside: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colatitude, pixel count and mean of ``weights`` ``(npix,)`` of every HEALPix ring (RING order)."""
    import healpy as hp

    rings = np.arange(1, 4 * nside)
    start, npix_ring, cos_theta, _, _ = hp.ringinfo(nside, rings)
    ring_of = np.repeat(np.arange(rings.size), npix_ring)
    mean = np.bincount(ring_of, weights=weights, minlength=rings.size) / npix_ring
    return np.arccos(cos_theta), npix_ring.astype(np.float64), mean


def _block_inverse(cinv_l: np.ndarray, beam_l: np.ndarray, ninv: np.ndarray, nside: int, lblock: int,
                   ring_chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Inverses of the m-blocks ``(lblock+1, lblock+1, lblock+1)`` [m, l, l'] and the live (m, l) modes.

    Block m: ``C_l^-1 delta_ll' + b_l b_l' sum_r w_r N_r lambda_lm(theta_r) lambda_l'm(theta_r)``
    (``lambda_lm(theta) = Y_lm(theta, 0)``, ``N_r`` pixels and ``w_r`` mean inverse noise of ring r);
    padding (l < m, l < 2) is the identity. Legendre functions by ``scipy.special.sph_legendre_p_all``
    over chunks of rings.
    """
    from scipy.special import sph_legendre_p_all

    theta, n_ring, w = _ring_weights(ninv, nside)
    lb = int(lblock)
    ell = np.arange(lb + 1)
    blocks = np.zeros((lb + 1, lb + 1, lb + 1))
    for start in range(0, theta.size, ring_chunk):  # memory: (l, 2 m + 1, rings) per chunk
        th = theta[start:start + ring_chunk]
        lam = sph_legendre_p_all(lb, lb, th)[0][:, : lb + 1, :].transpose(1, 0, 2)  # (m, l, ring), 0 for l < m
        blocks += np.matmul(lam * (w * n_ring)[start:start + ring_chunk], lam.transpose(0, 2, 1))
    blocks *= beam_l[None, : lb + 1, None] * beam_l[None, None, : lb + 1]
    live = (ell[None, :] >= ell[:, None]) & (cinv_l[None, : lb + 1] > 0)  # (m, l): a mode of the system
    blocks = np.where(live[:, :, None] & live[:, None, :], blocks, 0.0)
    blocks[:, ell, ell] += np.where(live, cinv_l[None, : lb + 1], 1.0)
    return np.linalg.inv(blocks), live


_BLOCK_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _block_preconditioner(cinv_l: np.ndarray, beam_l: np.ndarray, ninv: np.ndarray, nside: int, lmax: int,
                          lblock: int):
    """Exact inverse of the Wiener operator's m-blocks for the ring-averaged inverse noise, up to ``lblock``.

    With weights constant on every ring (an iso-latitude cut such as the study's Galactic cut, uniform
    noise), ``Y^T N^-1 Y`` couples only equal m (aliasing on the short polar rings neglected), so these
    blocks are the operator itself below ``lblock``; for any other mask the ring means give an
    approximate, still symmetric positive definite, preconditioner. The blocks are built once per
    process and observation (cached by a digest of spectrum, beam, noise and mask). Returns
    ``(apply(r) -> z`` on alm ``(n, nalm)`` for l <= lblock, zero above; the healpy indices it covers).
    """
    import hashlib

    key = hashlib.sha256(b"".join(np.ascontiguousarray(v, dtype=np.float64).tobytes()
                                  for v in (cinv_l, beam_l, ninv, [nside, lmax, lblock]))).hexdigest()
    if key not in _BLOCK_CACHE:
        _BLOCK_CACHE.clear()  # one observation at a time: the blocks of lmax 255 hold 134 MB
        _BLOCK_CACHE[key] = _block_inverse(cinv_l, beam_l, ninv, nside, lblock)
    inverse, live = _BLOCK_CACHE[key]
    lb = int(lblock)
    m = np.arange(lb + 1)
    index = m[:, None] * (2 * lmax + 1 - m[:, None]) // 2 + m[None, :]  # healpy: m (2 lmax + 1 - m) / 2 + l
    flat = index[live]

    def apply(r: np.ndarray) -> np.ndarray:
        n = r.shape[0]
        padded = np.zeros((lb + 1, lb + 1, 2 * n))  # (m, l, real and imaginary parts of every map)
        padded[live] = np.concatenate([r[:, flat].real, r[:, flat].imag], axis=0).T
        z = np.matmul(inverse, padded)[live]
        out = np.zeros_like(r)
        out[:, flat] = (z[:, :n] + 1j * z[:, n:]).T
        return out

    return apply, flat


def _operator(model: SurveyModel, nthreads: int, preconditioner: str = "block"):
    """``(apply A, rhs of data, preconditioner z = M^-1 r)`` of the Wiener system in harmonic space.

    ``preconditioner``: ``"block"`` (exact m-blocks of the ring-averaged operator for l <= BLOCK_LMAX,
    the diagonal above) or ``"diagonal"`` (``1 / (C_l^-1 + b_l^2 <N^-1>)``).
    """
    if preconditioner not in ("block", "diagonal"):
        raise ValueError(f"preconditioner must be 'block' or 'diagonal', got {preconditioner!r}")
    nside, lmax = model.nside, model.lmax
    npix = 12 * nside**2
    lidx = alm_l_index(lmax)
    cl = np.asarray(model.cl, dtype=np.float64)[: lmax + 1]
    cinv_l = _inverse_cl(cl)
    cinv = cinv_l[lidx]
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
    inv_diag = np.zeros_like(diag)
    np.divide(1.0, diag, out=inv_diag, where=keep & (diag > 0))
    if preconditioner == "diagonal":
        return apply, rhs, lambda r: inv_diag * r
    block, flat = _block_preconditioner(cinv_l, beam, ninv, nside, lmax, min(lmax, BLOCK_LMAX))
    rest = inv_diag.copy()
    rest[flat] = 0.0

    def precondition(r: np.ndarray) -> np.ndarray:
        return block(r) + rest * r

    return apply, rhs, precondition


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Real inner product ``(n,)`` of real fields given by their alm ``(n, nalm)``: in the healpy
    layout the m = 0 entries (the first lmax + 1) count once, m > 0 twice (m and -m)."""
    lmax = int((np.sqrt(1 + 8 * a.shape[-1]) - 3) / 2)
    prod = (a.conj() * b).real
    return 2.0 * prod.sum(axis=-1) - prod[..., : lmax + 1].sum(axis=-1)


def wiener_filter(data: np.ndarray, model: SurveyModel, tol: float = 1e-5, maxiter: int = 1000,
                  nthreads: int = 1, preconditioner: str = "block") -> CGResult:
    """Wiener-filtered sky ``g_hat`` (alm, lmax = 2 nside - 1) of observed maps ``(n, npix)``.

    Preconditioned conjugate gradients on ``(C^-1 + B Y^T N^-1 Y B) x = B Y^T N^-1 d`` for all maps
    at once (one batched synthesis and analysis per iteration); stops when every map's residual is
    below ``tol`` relative to its right-hand side. Pixels outside the mask (any value, UNSEEN
    included) are ignored. Raises RuntimeError if ``maxiter`` is reached first. ``preconditioner``:
    ``"block"`` (exact m-blocks of the ring-averaged operator up to :data:`BLOCK_LMAX`, built once per
    process and observation) or ``"diagonal"``.
    """
    data = np.atleast_2d(np.asarray(data, dtype=np.float64))
    apply, rhs, precond = _operator(model, nthreads, preconditioner)
    b = rhs(data)
    x = np.zeros_like(b)
    r = b.copy()
    z = precond(r)
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
        z = precond(r)
        rz_new = _dot(r, z)
        p = z + (rz_new / rz)[:, None] * p
        rz = rz_new
    raise RuntimeError(f"conjugate gradients did not reach tol={tol} in {maxiter} iterations "
                       f"(worst residual {res.max():.2e}); raise maxiter or the noise level")


#: Relative CG residual of the study's Wiener filter. With the block preconditioner it costs 3-4
#: iterations at nside 128 and moves T by < 1e-4 of its spread across skies against tol 1e-10
#: (``python scripts/cmb_masked_T_speed.py``).
TOL = 1e-7


def _filtered_maps(data: np.ndarray, model: SurveyModel, nthreads: int, tol: float, preconditioner: str,
                   info: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """``(g_hat, C^-1 g_hat)`` as maps ``(n, npix)``; ``info["iterations"]`` set when ``info`` is given."""
    lmax = model.lmax
    res = wiener_filter(data, model, tol=tol, nthreads=nthreads, preconditioner=preconditioner)
    if info is not None:
        info["iterations"] = res.iterations
    cinv = _inverse_cl(np.asarray(model.cl)[: lmax + 1])[alm_l_index(lmax)]
    both = synthesis(np.concatenate([res.alm, res.alm * cinv]), model.nside, lmax, nthreads=nthreads)
    n = data.shape[0] if data.ndim == 2 else 1
    return both[:n], both[n:]


def linear_term_maps(gaussian_data: np.ndarray, model: SurveyModel, nthreads: int = 1, tol: float = TOL,
                     preconditioner: str = "block") -> tuple[np.ndarray, np.ndarray]:
    """``(<g_hat^2>, <g_hat C^-1 g_hat>)`` pixel maps from Gaussian skies observed like the data ``(n_mc, npix)``."""
    g, h = _filtered_maps(gaussian_data, model, nthreads, tol, preconditioner, None)
    return np.mean(g * g, axis=0), np.mean(g * h, axis=0)


def masked_cubic_statistic(data: np.ndarray, model: SurveyModel, linear: tuple[np.ndarray, np.ndarray],
                           nthreads: int = 1, tol: float = TOL, preconditioner: str = "block",
                           info: dict | None = None) -> np.ndarray:
    """KSW cubic statistic with its linear term of observed maps ``(n, npix)`` -> ``(n,)`` (module docstring).

    ``tol``, ``preconditioner``: of the Wiener filter (:func:`wiener_filter`); ``info`` (a dict) receives
    the CG iterations.
    """
    g, h = _filtered_maps(np.atleast_2d(data), model, nthreads, tol, preconditioner, info)
    g2, gh = linear
    return np.mean(g * g * h - g2 * h - 2.0 * g * gh, axis=-1)
