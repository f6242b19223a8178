"""The optimal cubic statistic T (the study's yardstick): detection on small skies, the Wiener filter's system."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from scatterdist.experiments.cubic import (
    SurveyModel,
    cubic_statistic,
    linear_term_maps,
    masked_cubic_statistic,
    wiener_filter,
)
from scatterdist.sims.observe import galactic_cut_mask
from scatterdist.sims.skies import gaussian_cmb, nongaussian_cmb
from scatterdist.sims.spectrum import cmb_cl

NSIDE = 32
LMAX = 2 * NSIDE - 1


def _skies(alpha: float, seed: int, n: int) -> np.ndarray:
    if alpha == 0:
        return np.array([gaussian_cmb(NSIDE, seed, index=i) for i in range(n)])
    return np.array([nongaussian_cmb(NSIDE, seed, alpha, index=i) for i in range(n)])


def _separation(a: np.ndarray, b: np.ndarray) -> float:
    return float((b.mean() - a.mean()) / np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))


def test_full_sky_T_detects_alpha():
    cl = cmb_cl(LMAX)
    gauss, ng = cubic_statistic(_skies(0.0, 1, 24), cl), cubic_statistic(_skies(0.05, 2, 24), cl)
    assert abs(gauss.mean()) < 4 * gauss.std(ddof=1) / np.sqrt(gauss.size)  # zero mean without signal
    assert _separation(gauss, ng) > 10  # positive and far away at alpha = 0.05
    # the sign follows alpha: f -> -f flips T
    np.testing.assert_allclose(cubic_statistic(-_skies(0.05, 2, 2), cl), -ng[:2], rtol=1e-12)


def _healpy_operator(x: np.ndarray, cl: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """``(C^-1 + Y^T N^-1 Y) x`` for one alm ``x`` with healpy (Y^T = map2alm(iter=0) * npix / 4pi)."""
    npix = mask.size
    cinv = np.where(cl > 0, 1.0 / np.where(cl > 0, cl, 1.0), 0.0)
    m = hp.alm2map(x, NSIDE, lmax=LMAX) * (mask > 0) / sigma**2
    y = hp.map2alm(m, lmax=LMAX, iter=0) * npix / (4 * np.pi)
    keep = (cl > 0)[hp.Alm.getlm(LMAX)[0]]
    return (hp.almxfl(x, cinv) + y) * keep


def test_wiener_filter_solves_its_system():
    cl = cmb_cl(LMAX)
    sigma = 20.0
    # full sky, white noise: the Wiener filter is diagonal, C_l / (C_l + sigma^2 4pi / npix)
    full = SurveyModel(cl=cl, mask=np.ones(12 * NSIDE**2), noise_sigma=sigma)
    d = _skies(0.0, 3, 2)
    res = wiener_filter(d, full, tol=1e-8)
    n_l = sigma**2 * 4 * np.pi / (12 * NSIDE**2)
    filt = np.where(cl > 0, cl / (cl + n_l), 0.0)
    expected = hp.almxfl(hp.map2alm(d[0], lmax=LMAX, iter=0), filt)  # Y^T Y = npix / 4pi up to quadrature error
    assert np.linalg.norm(res.alm[0] - expected) / np.linalg.norm(expected) < 1e-2
    # cut sky: the solution satisfies the system written independently with healpy
    mask = galactic_cut_mask(NSIDE, 20)
    cut = SurveyModel(cl=cl, mask=mask, noise_sigma=sigma)
    res = wiener_filter(np.where(mask > 0, d, hp.UNSEEN), cut, tol=1e-7, maxiter=1000)
    assert res.residual.max() < 1e-7
    npix = mask.size
    rhs = hp.map2alm(np.where(mask > 0, d[1], 0.0) / sigma**2, lmax=LMAX, iter=0) * npix / (4 * np.pi)
    rhs *= (cl > 0)[hp.Alm.getlm(LMAX)[0]]
    lhs = _healpy_operator(res.alm[1], cl, mask, sigma)
    assert np.linalg.norm(lhs - rhs) / np.linalg.norm(rhs) < 1e-5
    with pytest.raises(RuntimeError, match="did not reach"):
        wiener_filter(d, cut, tol=1e-12, maxiter=3)
    with pytest.raises(ValueError, match="noise_sigma"):
        SurveyModel(cl=cl, mask=mask, noise_sigma=0.0)


def test_masked_T_detects_alpha_on_a_cut_sky():
    cl = cmb_cl(LMAX)
    mask = galactic_cut_mask(NSIDE, 20)
    model = SurveyModel(cl=cl, mask=mask, noise_sigma=20.0)
    noise = np.random.default_rng(0)

    def observe(maps: np.ndarray) -> np.ndarray:
        return np.where(mask > 0, maps + noise.normal(0.0, 20.0, maps.shape), hp.UNSEEN)

    linear = linear_term_maps(observe(_skies(0.0, 10, 16)), model)
    gauss = masked_cubic_statistic(observe(_skies(0.0, 4, 16)), model, linear)
    ng = masked_cubic_statistic(observe(_skies(0.1, 5, 16)), model, linear)
    assert _separation(gauss, ng) > 5
    # the linear term lowers the scatter of the Gaussian skies
    without = masked_cubic_statistic(observe(_skies(0.0, 4, 16)), model, (linear[0] * 0, linear[1] * 0))
    assert gauss.std() < without.std()
