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
