"""Directional wavelet transform on HEALPix (spin-n syntheses) against pys2let's SO(3) coefficients."""

import numpy as np
import pys2let
import pytest

from scatterdist.scattering import directional as dr
from scatterdist.sphere import synthesis
from scatterdist.sphere.alm import alm_l_index, alm_truncate_index
from scatterdist.wavelets import axisym_kernels, directional_kernels, wavelet_bandlimit
from tests.test_wavelets import _s2let_directional


def _random_alm(L, seed=0):
    rng = np.random.default_rng(seed)
    n = L * (L + 1) // 2
    alm = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    alm[:L] = alm[:L].real  # m = 0 real: a real map
    return alm


def _mw_geometry(L):
    """McEwen-Wiaux sampling as ducc0 ring arrays: theta_t = pi (2t + 1)/(2L - 1), phi_p = 2 pi p/(2L - 1)."""
    t = np.arange(L)
    return {"theta": np.pi * (2 * t + 1) / (2 * L - 1), "nphi": np.full(L, 2 * L - 1, dtype=np.uintp),
            "phi0": np.zeros(L), "ringstart": (t * (2 * L - 1)).astype(np.uintp)}


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5])
def test_matches_pys2let_on_its_so3_samples(N):
    # S2LET samples W on MW grids at gamma_k = 2 pi k/(2N - 1); run our spin-n pipeline on the
    # same ring geometry and orientations and compare the values themselves.
    L, lam, J0 = 32, 2.0, 2
    alm = _random_alm(L)
    wav, _ = pys2let.analysis_lm2wav(alm, lam, L, J0, N, 0, 1)  # upsample: every scale at L
    _, psi = directional_kernels(L, lam, J0, N)
    _, psi_s2let = _s2let_directional(L, lam, J0, N)
    gammas = 2 * np.pi * np.arange(2 * N - 1) / (2 * N - 1)
    npix = L * (2 * L - 1)
    geo = _mw_geometry(L)
    for i in range(psi.shape[0]):
        ref = wav[i * (2 * N - 1) * npix:(i + 1) * (2 * N - 1) * npix].reshape(2 * N - 1, npix)
        assert np.abs(ref.imag).max() < 1e-12 * np.abs(ref).max()
        scale = np.abs(ref.real).max()
        for kernels, tol in ((psi_s2let, 1e-12), (psi, 1e-4)):
            ours = dr.steer(dr.directional_components(alm[None], kernels[i], L - 1, geometry=geo), N, gammas)[:, 0]
            ours = ours / np.sqrt(2 * np.pi)  # S2LET's directional normalisation
            err = np.abs(ours - ref.real).max() / scale
            # With S2LET's own kernels: round-off. With ours: the kernels' difference, S2LET's
            # 300-point trapezoid rule for k_lam (<= 5e-5 absolute on kappa, test_wavelets.py).
            assert err < tol, (N, J0 + i, err, tol)


@pytest.mark.parametrize("N", [2, 3, 4])
def test_orientations_determine_every_gamma(N):
    # W(gamma + pi) = (-1)^(N-1) W(gamma), and N samples k pi / N steer to any other gamma.
    L = 32
    alm = _random_alm(L, seed=1)
    _, psi = directional_kernels(L, 2.0, 2, N)
    comps = dr.directional_components(alm[None], psi[2], L - 1, nside=16)
    g = np.array([0.3, 0.3 + np.pi])
    w = dr.steer(comps, N, g)
    np.testing.assert_allclose(w[1], (-1) ** (N - 1) * w[0], atol=1e-12 * np.abs(w).max())
    S = dr.steering_matrix(N)
    assert S.shape == (N, N) and np.linalg.matrix_rank(S) == N
    w_k = dr.steer(comps, N)
    back = np.linalg.solve(S, w_k.reshape(N, -1)).reshape(comps.shape)
    np.testing.assert_allclose(back, comps, atol=1e-12 * np.abs(comps).max())


def test_n1_is_the_axisymmetric_transform():
    L, lam, J0, nside = 32, 2.0, 2, 16
    alm = _random_alm(L, seed=2)
    out = dr.directional_wavelet_transform(alm, L, lam, J0, N=1, nside=nside)
    _, kappa = axisym_kernels(L, lam, J0)
    for i, (j, w) in enumerate(out.items()):
        assert w.shape == (1, 12 * nside**2)
        Lj = wavelet_bandlimit(j, L, lam)
        ref = synthesis(alm[alm_truncate_index(L - 1, Lj - 1)] * kappa[i][alm_l_index(Lj - 1)], nside, Lj - 1)
        # ducc0's threaded sums are not bitwise reproducible from call to call: round-off.
        np.testing.assert_allclose(w[0], ref, rtol=0, atol=1e-14 * np.abs(ref).max())


def test_pole_value_is_the_rotated_wavelet():
    # Independent of any spin-harmonic convention: at the north pole R_(0, 0, gamma) is the
    # rotation about z, so sqrt(2 pi) <f, R Psi> = sum_lm f_lm conj(Psi_lm e^{-i m gamma}) sqrt((2l+1)/(4 pi))
    # (S2LET's kernel is sqrt((2l+1)/(8 pi^2)) Psi_lm; orthonormal Y_lm).
    from scatterdist.sphere.alm import alm_m_index

    L, lam, J0, N, j = 32, 2.0, 2, 4, 3
    alm = _random_alm(L, seed=3)
    _, psi = directional_kernels(L, lam, J0, N)
    pole = {"theta": np.array([0.0]), "nphi": np.array([1], dtype=np.uintp), "phi0": np.zeros(1),
            "ringstart": np.array([0], dtype=np.uintp)}
    gammas = np.array([0.0, 0.7, 2.0])
    ours = dr.steer(dr.directional_components(alm[None], psi[j - J0], L - 1, geometry=pole), N, gammas)[:, 0, 0]
    li, mi = alm_l_index(L - 1), alm_m_index(L - 1)
    full = np.zeros((L, 2 * L - 1), complex)  # f_lm for m = -l..l
    full[li, mi + L - 1] = alm
    full[li, -mi + L - 1] = (-1.0) ** mi * np.conj(alm)
    m = np.arange(-(N - 1), N)
    ell = np.arange(L)
    expect = [np.sum(full[:, m + L - 1] * np.conj(psi[j - J0] * np.exp(-1j * m * g))
                     * np.sqrt((2 * ell + 1) / (4 * np.pi))[:, None]).real for g in gammas]
    np.testing.assert_allclose(ours, expect, rtol=1e-12, atol=1e-12)


def test_healpix_transform_shapes_and_multiresolution():
    L, lam, J0, N = 64, 2.0, 3, 4
    alm = np.stack([_random_alm(L, seed=s) for s in range(2)])
    out = dr.directional_wavelet_transform(alm, L, lam, J0, N)
    assert sorted(out) == [3, 4, 5, 6]
    for j, w in out.items():
        Lj = wavelet_bandlimit(j, L, lam)
        assert w.shape == (2, N, 12 * max(1, -(-Lj // 2)) ** 2)
    # Each scale on its own grid, as with an explicit nside.
    np.testing.assert_allclose(dr.directional_wavelet_transform(alm, L, lam, J0, N, nside=16)[4], out[4],
                               rtol=0, atol=1e-14 * np.abs(out[4]).max())
    with pytest.raises(ValueError, match="expected 2080 for L=64"):
        dr.directional_wavelet_transform(alm[:, :-1], L, lam, J0, N)


@pytest.mark.parametrize("N", [3, 4])
@pytest.mark.parametrize("block", [dr._BLOCK, 1000])  # whole rows per block; pixel ranges of one row
def test_component_buffer_and_fused_reduction_equal_the_plain_products(N, block, monkeypatch):
    """:func:`component_maps` (ducc0 writing into one (N, M, npix) buffer) equals the separate
    syntheses, and the blocked :func:`oriented_moduli` (strided views of that buffer, or copies of
    a list of views) equals the whole-array steering, modulus and reduction."""
    monkeypatch.setattr(dr, "_BLOCK", block)
    L, nside, M = 32, 16, 3
    alm = np.stack([_random_alm(L, seed) for seed in range(M)])
    kernels = dr.component_kernels(directional_kernels(L, 2.0, 2, N)[1][-1], L - 1)
    comps = dr.component_maps(alm, kernels, L - 1, nside=nside)
    plain = []
    for n, kernel in kernels:
        maps = dr.spin_synthesis(alm * kernel, L - 1, n, nside=nside)
        plain += [maps[:, c] for c in range(maps.shape[1])]
    assert comps.shape == (N, M, 12 * nside**2)
    # equal up to rounding: ducc0 may take another SIMD path for another output buffer's alignment
    np.testing.assert_allclose(comps, np.stack(plain), rtol=0, atol=1e-14 * np.abs(np.stack(plain)).max())

    S = dr.steering_matrix(N, dr.modulus_orientations(N))
    r = np.tensordot(dr._harmonic_matrix(2 * N, 1), np.abs(np.tensordot(S, comps, axes=1)), axes=1)
    expected = [r[0], np.sqrt(r[1] ** 2 + r[2] ** 2)]
    for given in (comps, plain):  # the strided-view path and the copying path
        got = dr.oriented_moduli(given, N, 1)
        for g, e in zip(got, expected):
            assert g.shape == (M, 12 * nside**2)
            np.testing.assert_allclose(g, e, rtol=1e-13, atol=1e-13 * np.abs(e).max())
