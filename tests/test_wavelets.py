import numpy as np
import pys2let
import pytest

from scatterdist import axisym_kernels
from scatterdist.wavelets import j_max, k_lam, scaling_bandlimit, wavelet_bandlimit

CASES = [(64, 2.0, 0), (64, 2.0, 3), (128, 2.0, 4), (100, 3.0, 1), (81, 3.0, 2), (37, 1.5, 2), (256, 2.0, 4)]


@pytest.mark.parametrize("L, lam, J0", CASES)
def test_kernels_match_s2let(L, lam, J0):
    phi, psi = axisym_kernels(L, lam, J0)
    scal, wav = pys2let.axisym_wav_l(lam, L, J0)
    wav = np.asarray(wav).T  # pys2let gives (L, J - J0 + 1)
    assert phi.shape == (L,) and phi.dtype == np.float64
    assert psi.shape == (j_max(L, lam) - J0 + 1, L) == wav.shape
    # S2LET integrates k with a 300-point trapezoid rule; measured difference <= 5e-5.
    assert np.abs(phi - scal).max() < 1e-4
    assert np.abs(psi - wav).max() < 1e-4


@pytest.mark.parametrize("L, lam, J0", CASES)
def test_partition_of_unity(L, lam, J0):
    phi, psi = axisym_kernels(L, lam, J0)
    np.testing.assert_allclose(phi**2 + (psi**2).sum(axis=0), 1.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize("L, lam, J0", CASES)
def test_supports(L, lam, J0):
    phi, psi = axisym_kernels(L, lam, J0)
    ell = np.arange(L)
    assert np.all(phi[ell >= lam**J0] == 0) and phi[0] == 1.0
    for i, j in enumerate(range(J0, j_max(L, lam) + 1)):
        outside = (ell <= lam ** (j - 1)) | (ell >= lam ** (j + 1))
        assert np.all(psi[i][outside] == 0), j
        assert np.all(psi[i][ell >= wavelet_bandlimit(j, L, lam)] == 0)
        assert psi[i].max() > 0
    assert scaling_bandlimit(J0, lam) >= 1


def test_k_lam_exact_integral():
    # Independent check of the Gauss-Legendre integral with a fine adaptive-free Simpson rule.
    lam = 2.0
    u = np.linspace(1 / lam, 1, 200001)
    t = 2 * lam / (lam - 1) * (u - 1 / lam) - 1
    with np.errstate(divide="ignore", over="ignore"):
        f = np.where(np.abs(t) < 1, np.exp(-2 / (1 - t**2)) / u, 0.0)
    cum = np.concatenate([[0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(u))])
    ref = (cum[-1] - cum) / cum[-1]
    pick = np.arange(0, u.size, 5000)
    np.testing.assert_allclose(k_lam(u[pick], lam), ref[pick], atol=1e-9)
    assert k_lam(np.array([0.1]), lam)[0] == 1.0 and k_lam(np.array([1.5]), lam)[0] == 0.0


def test_j_max():
    assert j_max(64, 2.0) == 6 and j_max(65, 2.0) == 7 and j_max(81, 3.0) == 4 and j_max(2, 2.0) == 1


@pytest.mark.parametrize(
    "args, match",
    [((64, 1.0, 0), "lam must be"), ((64, 0.5, 0), "lam must be"), ((64, 2.0, -1), r"J0 must be .* \[0, 6\)"),
     ((64, 2.0, 6), r"\[0, 6\)"), ((1, 2.0, 0), "L must be"), ((64, float("nan"), 0), "lam must be"),
     ((64.5, 2.0, 0), "L must be")],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        axisym_kernels(*args)


# --- directional kernels (azimuthal band N) ------------------------------------------------

from scatterdist import directional_kernels  # noqa: E402
from scatterdist.wavelets import steer_orders, steerability_coefficients  # noqa: E402

DIR_CASES = [(16, 2.0, 2, 1), (16, 2.0, 2, 2), (32, 2.0, 2, 3), (32, 2.0, 2, 4), (37, 1.5, 2, 5), (64, 3.0, 1, 6)]


def _s2let_directional(L, lam, J0, N):
    """pys2let's directional kernels on our layout ``(J - J0 + 1, L, 2N - 1)``, S2LET's normalisation removed."""
    scal, wav = pys2let.wavelet_tiling(lam, L, N, J0, 0)  # wav[(l*l + l + m), j - J0]
    ell = np.arange(L)
    out = np.zeros((wav.shape[1], L, 2 * N - 1), complex)
    for m in range(-(N - 1), N):
        ok = ell >= abs(m)
        out[:, ok, m + N - 1] = wav[(ell * ell + ell + m)[ok]].T
    return scal.real / np.sqrt((2 * ell + 1) / (4 * np.pi)), out / np.sqrt((2 * ell + 1) / (8 * np.pi**2))[None, :, None]


@pytest.mark.parametrize("L, lam, J0, N", DIR_CASES)
def test_directional_kernels_match_s2let(L, lam, J0, N):
    phi, psi = directional_kernels(L, lam, J0, N)
    scal, wav = _s2let_directional(L, lam, J0, N)
    assert psi.shape == wav.shape == (j_max(L, lam) - J0 + 1, L, 2 * N - 1) and psi.dtype == np.complex128
    # Same 300-point trapezoid difference in kappa as the axisymmetric kernels (<= 5e-5) ...
    assert np.abs(phi - scal).max() < 1e-4 and np.abs(psi - wav).max() < 1e-4
    # ... and the steerability part s_lm is S2LET's to round-off: with S2LET's own kappa
    # (axisym_wav_l) our s_lm gives its directional kernels to 1e-14.
    _, kappa = pys2let.axisym_wav_l(lam, L, J0)
    ours_with_s2let_kappa = kappa.T[:, :, None] * steerability_coefficients(L, N)[None]
    np.testing.assert_allclose(ours_with_s2let_kappa, wav, rtol=0, atol=1e-14)


@pytest.mark.parametrize("L, lam, J0, N", DIR_CASES)
def test_directional_tight_frame(L, lam, J0, N):
    phi, psi = directional_kernels(L, lam, J0, N)
    np.testing.assert_allclose(phi**2 + (np.abs(psi) ** 2).sum(axis=(0, 2)), 1.0, rtol=0, atol=1e-14)
    s = steerability_coefficients(L, N)
    np.testing.assert_allclose((np.abs(s[1:]) ** 2).sum(axis=1), 1.0, rtol=0, atol=1e-14)
    m = np.arange(-(N - 1), N)
    live = np.abs(s).sum(axis=0) > 0
    assert set(np.abs(m[live])) == set(steer_orders(N).tolist())
    # Real wavelets: Psi_{l,-m} = (-1)^m conj(Psi_lm).
    np.testing.assert_array_equal(psi[..., ::-1], ((-1.0) ** m) * np.conj(psi))


def test_directional_n1_is_axisymmetric():
    for L, lam, J0 in CASES:
        phi_ax, psi_ax = axisym_kernels(L, lam, J0)
        phi, psi = directional_kernels(L, lam, J0, 1)
        assert psi.shape == psi_ax.shape + (1,)
        np.testing.assert_array_equal(phi, phi_ax)
        np.testing.assert_array_equal(psi[..., 0].real, psi_ax)
        assert not psi.imag.any()


@pytest.mark.parametrize("N", [0, -1, 2.0, True, "4"])
def test_directional_bad_N(N):
    with pytest.raises(ValueError, match="azimuthal band N must be an integer >= 1"):
        directional_kernels(32, 2.0, 2, N)
