"""Spin-2 fields: Q/U -> E/B through ducc0, E/B scattering (round-off B for pure E, equivariance,
real WMAP IQU maps, masked leakage)."""

import healpy as hp
import numpy as np
import pytest

from scatterdist import Scattering, equivariance_error
from scatterdist.sphere import qu_to_eb
from scatterdist.sphere.mask import apodize, read_mask

NSIDE, LMAX = 32, 63


def pure_e_sky(n=2, seed=0, lmax=LMAX, nside=NSIDE):
    """Q, U of skies with only E power (red spectrum), and the true E maps."""
    rng = np.random.default_rng(seed)
    ell = hp.Alm.getlm(lmax)[0]
    cl = np.zeros(lmax + 1)
    cl[2:] = 1.0 / (np.arange(2, lmax + 1) * np.arange(3, lmax + 2))
    qs, us, es = [], [], []
    for _ in range(n):
        alm = (rng.standard_normal(ell.size) + 1j * rng.standard_normal(ell.size)) * np.sqrt(cl[ell] / 2)
        alm[: lmax + 1] = rng.standard_normal(lmax + 1) * np.sqrt(cl)  # m = 0: real
        _, q, u = hp.alm2map([alm * 0, alm, alm * 0], nside, lmax=lmax, pol=True)
        qs.append(q), us.append(u), es.append(hp.alm2map(alm, nside, lmax=lmax))
    return np.array(qs), np.array(us), np.array(es)


def galactic_cut(nside, b_deg):
    theta, _ = hp.pix2ang(nside, np.arange(12 * nside**2))
    return (np.abs(90.0 - np.degrees(theta)) > b_deg).astype(float)


def test_quadrature_matches_healpy_polarised_map2alm():
    q, u, _ = pure_e_sky(1, seed=1)
    rng = np.random.default_rng(2)
    t = rng.standard_normal(q.shape[-1])
    w = apodize(galactic_cut(NSIDE, 15), 5.0)
    e, b = qu_to_eb(q[0], u[0], mask=w)  # a mask -> quadrature (pseudo-E/B)
    _, ae, ab = hp.map2alm([t, q[0] * w, u[0] * w], lmax=LMAX, iter=0, use_weights=False, pol=True)
    np.testing.assert_allclose(e, hp.alm2map(ae, NSIDE, lmax=LMAX), atol=1e-12 * np.abs(e).max())
    np.testing.assert_allclose(b, hp.alm2map(ab, NSIDE, lmax=LMAX), atol=1e-12 * np.abs(e).max())


def test_pure_e_sky_gives_b_at_round_off():
    q, u, e_true = pure_e_sky(2)
    e, b = qu_to_eb(q, u)  # full sky: least squares
    assert e.shape == b.shape == q.shape
    scale = np.abs(e_true).max()
    np.testing.assert_allclose(e, e_true, atol=1e-9 * scale)
    assert np.abs(b).max() < 1e-9 * scale
    sc = Scattering(NSIDE)
    se, sb = sc(e), sc(b)
    order = np.array([len(p) for p in sc.paths])
    ratio = np.abs(sb).max(axis=(0, 2)) / np.abs(se).max(axis=(0, 2))
    assert np.all(ratio < 1e-8), ratio  # every path, orders 0-2
    assert np.all(ratio[order > 0] > 0)  # really computed, not skipped
    # quadrature on the full sky is not round-off: the least-squares default matters
    _, bq = qu_to_eb(q, u, mode="quadrature")
    assert np.abs(bq).max() > 1e3 * np.abs(b).max()


@pytest.mark.parametrize("field", ["E", "B"])
def test_e_and_b_scattering_are_equivariant_like_temperature(field):
    """Same bounds as tests/test_scattering.py::test_equivariance_meets_targets (temperature)."""
    sc = Scattering(64, L=128, oversample=2, analysis="lsq")
    err = equivariance_error(sc, n_trials=2, seed=0, field=field)
    assert err[0]["mean"] < 1e-10
    assert err[1]["mean"] <= 5e-3
    assert err[2]["mean"] <= 1e-2


def test_real_wmap_iqu_maps_scatter_with_fields_i_e_b(data_dir):
    sc = Scattering(32)
    for band in ("W", "V"):
        i, q, u = hp.read_map(str(data_dir / f"wmap_band_iqumap_r9_7yr_{band}_v4_udgraded32.fits"), field=(0, 1, 2), dtype=np.float64)
        e, b = qu_to_eb(q, u)
        out = sc(np.stack([i, e, b]))
        assert out.shape == (3, sc.n_paths, sc.npix_out) and np.isfinite(out).all()
        inv = sc.invariants(np.stack([i, e, b]))
        assert np.all(inv[:, 1:] > 0)
        assert inv[0, 1:].min() > inv[1:, 1:].max()  # temperature anisotropies dominate polarisation
    # the masked W map: UNSEEN in I, Q and U, masked automatically for all three fields
    i, q, u = hp.read_map(str(data_dir / "wmap_band_iqumap_r9_7yr_W_v4_udgraded32_masked.fits"), field=(0, 1, 2), dtype=np.float64)
    weights = read_mask(data_dir / "wmap_temperature_analysis_mask_r9_7yr_v4_udgraded32.fits", 32)
    e, b = qu_to_eb(q, u)  # UNSEEN -> weight 0 -> pseudo-E/B (quadrature)
    e2, b2 = qu_to_eb(np.where(weights > 0, q, 7.0), np.where(weights > 0, u, -3.0), mask=weights)
    np.testing.assert_allclose(e, e2, rtol=0, atol=1e-15 * np.abs(e).max())
    np.testing.assert_allclose(b, b2, rtol=0, atol=1e-15 * np.abs(b).max())
    out, cov = sc(np.stack([i, e, b]), mask=weights, return_coverage=True)
    assert np.isnan(out).any() and np.isfinite(out[cov >= sc.min_coverage]).all()


def test_masked_leakage_is_limited_by_the_transforms_apodisation():
    """E-to-B leakage of a pure-E sky through a |b| > 20 deg cut (figures in docs/cut-sky.md,
    python scripts/masked_bias.py --polarisation): it lives near the mask edge, so the
    transform's apodisation of the E/B maps' mask cuts it down."""
    q, u, _ = pure_e_sky(2, seed=3)
    m = galactic_cut(NSIDE, 20)
    e, b = qu_to_eb(q, u, mask=m)
    leak = {}
    for deg in (2.0, 10.0):
        sc = Scattering(NSIDE, apodize=deg)
        r = np.abs(sc.invariants(b, mask=m) / sc.invariants(e, mask=m))
        leak[deg] = np.nanmean(r, axis=0)[1:]
    assert np.nanmax(leak[2.0]) > 1e-3  # the mask really leaks E into B
    assert np.nanmean(leak[10.0]) < 0.6 * np.nanmean(leak[2.0])


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        qu_to_eb(np.zeros(768), np.zeros(3072))
    with pytest.raises(ValueError, match="mode must be"):
        qu_to_eb(np.zeros(768), np.zeros(768), mode="exact")
    with pytest.raises(ValueError, match="not 12\\*nside"):
        qu_to_eb(np.zeros(100), np.zeros(100))
