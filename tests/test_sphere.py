import healpy as hp
import numpy as np
import pytest

from scatterdist import sphere


@pytest.mark.parametrize("nside, lmax", [(16, 31), (32, 63), (32, 10), (64, 5)])
def test_synthesis_matches_healpy(nside, lmax, rng):
    alm = hp.synalm(np.ones(lmax + 1), lmax=lmax)
    ours = sphere.synthesis(alm, nside, lmax)
    np.testing.assert_allclose(ours, hp.alm2map(alm, nside, lmax=lmax), atol=1e-12)


def test_quadrature_matches_healpy_iter0(red_maps):
    maps, _ = red_maps
    ours = sphere.analysis(maps, 63)
    ref = np.stack([hp.map2alm(m, lmax=63, iter=0, use_weights=False) for m in maps])
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_lsq_recovers_bandlimited_alm(red_maps):
    maps, alm = red_maps
    rec = sphere.analysis(maps, 63, mode="lsq")
    assert np.abs(rec - alm).max() / np.abs(alm).max() < 1e-9
    quad = sphere.analysis(maps, 63, mode="quadrature")
    assert 1e-5 < np.abs(quad - alm).max() / np.abs(alm).max() < 1e-2


def test_low_lmax_analysis_of_fine_map(red_maps):
    # The cheap low-l analysis gives exactly the low-l part of the full analysis.
    maps, _ = red_maps
    low = sphere.analysis(maps, 7)
    full = sphere.analysis(maps, 63)
    np.testing.assert_allclose(low, full[..., sphere.alm_truncate_index(63, 7)], rtol=0, atol=1e-13)


def test_batching_over_leading_axes(red_maps):
    maps, _ = red_maps
    a = sphere.analysis(maps.reshape(2, 2, -1), 20)
    assert a.shape == (2, 2, sphere.alm_size(20))
    np.testing.assert_allclose(a.reshape(4, -1), sphere.analysis(maps, 20), rtol=1e-13, atol=1e-15)
    assert sphere.synthesis(a, 8).shape == (2, 2, 768)


def test_rotate_alm_matches_healpy():
    alm = hp.synalm(np.ones(17), lmax=16)
    psi, theta, phi = 0.3, 1.1, -0.7
    ours = sphere.rotate_alm(alm[None], 16, psi, theta, phi)[0]
    ref = alm.copy()
    hp.rotate_alm(ref, psi, theta, phi)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_rotate_alm_moves_a_dipole_where_geometry_says():
    # A z-dipole rotated by (psi, theta, phi) points to (theta, phi): checks the convention.
    lmax, nside = 1, 16
    alm = np.zeros(sphere.alm_size(lmax), complex)
    alm[1] = 1.0  # (l=1, m=0)
    theta, phi = 1.0, 2.0
    rotated = sphere.rotate_alm(alm, lmax, 0.4, theta, phi)
    peak = np.argmax(sphere.synthesis(rotated, nside, lmax))
    vec = np.array(hp.pix2vec(nside, peak))
    expected = np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
    assert vec @ expected > np.cos(np.radians(3))


def test_alm_index_helpers():
    ell, m = hp.Alm.getlm(12)
    np.testing.assert_array_equal(sphere.alm_l_index(12), ell)
    idx = sphere.alm_truncate_index(12, 5)
    np.testing.assert_array_equal(idx, hp.Alm.getidx(12, *hp.Alm.getlm(5)))
    assert sphere.lmax_from_size(sphere.alm_size(12)) == 12
    with pytest.raises(ValueError, match="not a valid alm length"):
        sphere.lmax_from_size(10 + 1)


def test_default_nthreads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert sphere.default_nthreads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert sphere.default_nthreads() >= 1
    assert sphere.default_nthreads(5) == 5
    with pytest.raises(ValueError, match="nthreads"):
        sphere.default_nthreads(0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="not a HEALPix map"):
        sphere.analysis(np.zeros(100), 5)
    with pytest.raises(ValueError, match="analysis mode"):
        sphere.analysis(np.zeros(12 * 16), 5, mode="exact")
    with pytest.raises(ValueError, match="power of two"):
        sphere.synthesis(np.zeros(21, complex), 12, 5)
    with pytest.raises(ValueError, match="expected 21"):
        sphere.synthesis(np.zeros(20, complex), 4, 5)
    with pytest.raises(ValueError, match="complex"):
        sphere.synthesis(np.zeros(21), 4, 5)
