import numpy as np
import pytest

from scatterdist import inverse_wavelet_transform, wavelet_transform


def test_round_trip_lsq(red_maps):
    maps, _ = red_maps
    wt = wavelet_transform(maps, analysis="lsq", J0=2)
    assert wt.L == 64 and wt.scales == [2, 3, 4, 5, 6] and wt.nsides == [4, 8, 16, 32, 32]
    assert [w.shape for w in wt.wavelets] == [(4, 12 * n**2) for n in wt.nsides]
    rec = inverse_wavelet_transform(wt)
    assert np.abs(rec - maps).max() / np.abs(maps).max() < 1e-9


def test_round_trip_single_map_quadrature(red_maps):
    maps, _ = red_maps
    wt = wavelet_transform(maps[0])
    assert wt.scaling.ndim == 1
    rec = inverse_wavelet_transform(wt)
    # quadrature analysis is approximate (each scale is analysed at its own Nyquist limit,
    # L_j = 2*nside_j): measured 0.78% RMS at oversample=1, 0.37% at oversample=2
    err = np.linalg.norm(rec - maps[0]) / np.linalg.norm(maps[0])
    assert 1e-4 < err < 1.5e-2
    wt2 = wavelet_transform(maps[0], oversample=2)
    assert np.linalg.norm(inverse_wavelet_transform(wt2) - maps[0]) / np.linalg.norm(maps[0]) < err


def test_parseval_energy(red_maps):
    maps, alm = red_maps
    wt = wavelet_transform(maps, analysis="lsq", J0=1)

    def energy(m):  # integral of m**2 over the sphere (HEALPix equal-area pixels)
        return 4 * np.pi * (m**2).mean(axis=-1)

    total = energy(wt.scaling) + sum(energy(w) for w in wt.wavelets)
    np.testing.assert_allclose(total, energy(maps), rtol=1e-2)  # pixel sums: approximate quadrature
    # exact version of the same identity in harmonic space
    from scatterdist.sphere import alm_l_index
    from scatterdist.wavelets import axisym_kernels

    phi, psi = axisym_kernels(64, 2.0, 1)
    w = np.where(np.arange(alm.shape[-1]) < 64, 1.0, 2.0)  # m = 0 once, m > 0 twice
    ell = alm_l_index(63)
    parts = (w * np.abs(alm) ** 2 * (phi**2 + (psi**2).sum(0))[ell]).sum(-1)
    np.testing.assert_allclose(parts, (w * np.abs(alm) ** 2).sum(-1), rtol=1e-13)


def test_bad_input():
    with pytest.raises(ValueError, match="npix = 12\\*nside\\*\\*2"):
        wavelet_transform(np.zeros(100))
