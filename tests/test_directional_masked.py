"""Directional scattering (N > 1) on the cut sky and with the extra first-order paths: the same coverage
machinery as N = 1 (bias against the full sky within issue 12's bounds), UNSEEN pixels as a mask,
powers for any N, signed paths for odd N and the refusal for even N."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from scatterdist import Scattering
from scatterdist.scattering.directional import directional_wavelet_transform, modulus_orientations
from scatterdist.scattering.masked import masked_bias
from scatterdist.sims import gaussian_cmb
from scatterdist.sphere import analysis


def galactic_cut(nside: int, b_deg: float) -> np.ndarray:
    theta, _ = hp.pix2ang(nside, np.arange(12 * nside**2))
    return (np.abs(90.0 - np.degrees(theta)) > b_deg).astype(float)


def test_galactic_cut_bias_per_order_and_harmonic():
    """|b| > 20 deg, apodised 2 deg, coverage >= 0.9, 8 CMB skies at nside 64: ensemble means of the
    masked invariants within 3% (order 1) and 6% (order 2) of the full-sky ones for the orientation
    mean and for h = 1 (measured 2.2% / 0.9% and 2.1% / 1.9%; N = 1 on the same skies 1.7% / 1.4%)."""
    nside = 64
    sc = Scattering(nside, min_coverage=0.9, N=4)
    maps = np.stack([gaussian_cmb(nside, seed=3, index=i) for i in range(8)])
    fig = masked_bias(sc, maps, galactic_cut(nside, 20), min_coverage=0.9, naive=True)
    h, o = sc.path_coords()["orientation_harmonic"], fig["order"]
    assert np.all(fig["covered"] > 0.5)
    for harmonic in (0, 1):
        for order, bound in ((1, 0.03), (2, 0.06)):
            sel = (h == harmonic) & (o == order)
            dev = np.abs(fig["ratio"][sel] - 1)
            assert sel.any() and dev.max() <= bound, (harmonic, order, dev)
            assert fig["median_rel"][sel].max() <= 0.06
    # the simplest method (divide by the transform of the mask) is further from the full sky per
    # pixel (measured 0.031 against 0.019 on average over the paths)
    assert fig["median_rel"][o > 0].mean() < 0.8 * fig["naive_median_rel"][o > 0].mean()


def test_unseen_pixels_are_the_mask_and_ones_are_the_full_sky(red_maps):
    maps, _ = red_maps
    sc = Scattering(32, N=4, nthreads=1)
    w = galactic_cut(32, 20)
    a, cov = sc(maps[:2], mask=w, return_coverage=True)
    bad = maps[:2].copy()
    bad[:, w == 0] = hp.UNSEEN
    np.testing.assert_array_equal(sc(bad), a)
    np.testing.assert_array_equal(np.isnan(a), cov < sc.min_coverage)
    np.testing.assert_array_equal(sc.coverage(w), cov[0])
    h = sc.path_coords()["orientation_harmonic"]
    base = [tuple(p) for p in sc.paths]
    for i in np.flatnonzero(h == 1):  # a harmonic shares the coverage of its orientation mean
        np.testing.assert_array_equal(cov[0, i], cov[0, base.index(base[i])])
    np.testing.assert_array_equal(sc(maps[:2], mask=np.ones(sc.npix)), sc(maps[:2]))


def _direct_extra(sc: Scattering, f: np.ndarray, fn) -> np.ndarray:
    """Spherical mean of the orientation mean of fn(W_j(gamma_k)) per scale, on each scale's grid."""
    W = directional_wavelet_transform(analysis(f, sc.L - 1), sc.L, sc.lam, sc.J0, sc.N, gammas=modulus_orientations(sc.N))
    return np.array([fn(W[j]).mean() for j in sorted(W)])


def test_power_paths_any_n_and_signed_paths_for_odd_n(red_maps):
    maps, _ = red_maps
    f = maps[0]
    sc = Scattering(32, N=3, signed=True, powers=(2.0,))
    kinds = sc.path_coords()["kind"]
    inv = sc.invariants(f)
    signed, power = inv[kinds == "signed"], inv[kinds == "power"]
    # same grids, so agreement to round-off but for the monopole the core removes before the analysis
    np.testing.assert_allclose(signed, _direct_extra(sc, f, lambda w: w * np.abs(w)), rtol=1e-5,
                               atol=1e-6 * np.abs(signed).max())
    np.testing.assert_allclose(power, _direct_extra(sc, f, lambda w: w**2), rtol=1e-5)
    neg = sc.invariants(-f)
    np.testing.assert_allclose(neg[kinds == "signed"], -signed, rtol=1e-10)  # odd in f
    np.testing.assert_allclose(neg[kinds == "power"], power, rtol=1e-10)
    # N = 4 powers: the mean over orientation of |W|^2 has N = 1's energy (sum_n |s_ln|^2 = 1)
    p4 = Scattering(32, N=4, powers=(2.0,))
    p1 = Scattering(32, powers=(2.0,))
    np.testing.assert_allclose(p4.invariants(f)[p4.path_coords()["kind"] == "power"],
                               p1.invariants(f)[p1.path_coords()["kind"] == "power"], rtol=0.02)
    # masked extra paths go through the same coverage normalisation
    out, cov = sc(maps[:2], mask=galactic_cut(32, 20), return_coverage=True)
    np.testing.assert_array_equal(np.isnan(out), cov < sc.min_coverage)


def test_signed_paths_refused_for_even_n_with_the_reason():
    with pytest.raises(ValueError, match="no rotation-invariant form for even N .N=4.*odd N"):
        Scattering(16, N=4, signed=True)
