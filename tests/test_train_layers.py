"""Equivariance and correctness of the harmonic-space layers and of HybridCNN (issue 6).

Rotations are applied exactly in harmonic space (``scatterdist.sphere.rotate_alm`` through
``harmonics.rotate_real``); inputs are bandlimited at lmax so the rotated map is exact too.
Measured errors are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scatterdist.sphere import analysis, synthesis
from scatterdist.train import harmonics as H
from scatterdist.train.layers import (
    InvariantReadout,
    SphericalConv,
    SphericalPointwise,
    TensorProductNonlinearity,
)
from scatterdist.train.model import HybridCNN

NSIDE, LMAX, CHANNELS = 8, 15, 3
ROTATIONS = [(0.3, 1.1, -0.7), (2.0, 2.5, 0.4), (-1.2, 0.6, 3.0)]


@pytest.fixture(scope="module")
def coeffs() -> np.ndarray:
    rng = np.random.default_rng(42)
    return rng.standard_normal((4, CHANNELS, H.n_real(LMAX)))


def _rel_equivariance_error(layer: torch.nn.Module, x: np.ndarray, lmax: int = LMAX) -> float:
    """max |layer(R x) - R layer(x)| / max |layer(x)| over several rotations, float32 forward."""
    worst = 0.0
    with torch.no_grad():
        y = layer(torch.tensor(x, dtype=torch.float32)).double().numpy()
        for angles in ROTATIONS:
            yr = layer(torch.tensor(H.rotate_real(x, lmax, *angles), dtype=torch.float32)).double().numpy()
            worst = max(worst, np.abs(yr - H.rotate_real(y, lmax, *angles)).max() / np.abs(y).max())
    return worst


def test_real_basis_matches_ducc0_transforms(coeffs):
    alm = H.real_to_complex(coeffs, LMAX)
    np.testing.assert_allclose(H.complex_to_real(alm, LMAX), coeffs, atol=1e-14)
    maps = synthesis(alm, NSIDE)
    y = H.synthesis_matrix(NSIDE, LMAX)
    np.testing.assert_allclose(coeffs @ y.T, maps, atol=1e-12)
    a = H.analysis_matrix(NSIDE, LMAX)
    np.testing.assert_allclose(maps @ a.T, coeffs, atol=1e-10)
    # Parseval: the real basis is orthonormal, so sum r^2 = integral of f^2 (= 4 pi mean f^2 for bandlimited f)
    fine = synthesis(alm[0, 0], 64)
    np.testing.assert_allclose((coeffs[0, 0] ** 2).sum(), 4 * np.pi * (fine**2).mean(), rtol=1e-3)


def test_gaunt_coupling_is_projection_of_pointwise_product(coeffs):
    """Each tensor-product path equals the degree-L part of the product of the l1 and l2 fragments."""
    lmax = 7
    x = coeffs[0, 0, : H.n_real(lmax)]
    ell = H.real_degree_index(lmax)
    for l1, l2 in [(1, 3), (2, 2), (3, 4)]:
        layer = TensorProductNonlinearity(1, lmax, pairs=[(l1, l2)]).double()
        with torch.no_grad():
            layer.weight.fill_(1.0)
            got = layer(torch.tensor(x[None, None])).double().numpy()[0, 0]
        f1 = synthesis(H.real_to_complex(np.where(ell == l1, x, 0.0), lmax), 32)
        f2 = synthesis(H.real_to_complex(np.where(ell == l2, x, 0.0), lmax), 32)
        expected = H.complex_to_real(analysis(f1 * f2, lmax, mode="lsq"), lmax)
        expected[~np.isin(ell, [p[2] for p in layer.paths])] = 0.0
        np.testing.assert_allclose(got, expected, atol=1e-6 * np.abs(expected).max())  # Gaunt values stored in float32
        assert {p[2] for p in layer.paths} == {L for L in range(abs(l1 - l2), min(l1 + l2, lmax) + 1) if (l1 + l2 + L) % 2 == 0}


def test_spherical_conv_is_exactly_equivariant(coeffs):
    torch.manual_seed(0)
    err = _rel_equivariance_error(SphericalConv(CHANNELS, 5, LMAX), coeffs)
    print(f"\nSphericalConv relative equivariance error (float32): {err:.2e}")
    assert err <= 1e-5


def test_tensor_product_is_exactly_equivariant(coeffs):
    torch.manual_seed(0)
    layer = TensorProductNonlinearity(CHANNELS, LMAX)
    assert len(layer.pairs) == 2 * LMAX - 1  # reduced (MST) set: O(lmax) pairs, not O(lmax^2)
    err = _rel_equivariance_error(layer, coeffs)
    print(f"\nTensorProductNonlinearity relative equivariance error (float32): {err:.2e}")
    assert err <= 1e-5


def test_pointwise_nonlinearity_is_approximately_equivariant(coeffs):
    torch.manual_seed(0)
    err1 = _rel_equivariance_error(SphericalPointwise(CHANNELS, NSIDE, LMAX), coeffs)
    err2 = _rel_equivariance_error(SphericalPointwise(CHANNELS, NSIDE, LMAX, oversample=2), coeffs)
    print(f"\nSphericalPointwise (ReLU) relative equivariance error: {err1:.2e} at nside {NSIDE}, {err2:.2e} oversampled x2")
    assert 1e-4 < err1 < 0.1  # genuinely approximate (aliasing), but small
    assert err2 < err1


def test_readout_is_invariant(coeffs):
    readout = InvariantReadout(LMAX)
    x = torch.tensor(coeffs, dtype=torch.float32)
    with torch.no_grad():
        ref = readout(x)
        for angles in ROTATIONS:
            rot = readout(torch.tensor(H.rotate_real(coeffs, LMAX, *angles), dtype=torch.float32))
            assert torch.allclose(rot, ref, atol=1e-5)
    assert ref.shape == (4, readout.n_features(CHANNELS))


@pytest.mark.parametrize("nonlinearity", ["tensor", "pointwise"])
def test_model_is_rotation_invariant(coeffs, nonlinearity):
    torch.manual_seed(0)
    model = HybridCNN(CHANNELS, NSIDE, LMAX, hidden=8, n_classes=3, nonlinearity=nonlinearity).eval()
    y = H.synthesis_matrix(NSIDE, LMAX)
    maps = torch.tensor(coeffs @ y.T, dtype=torch.float32)
    with torch.no_grad():
        ref = model(maps)
        errs = []
        for angles in ROTATIONS:
            rotated = torch.tensor(H.rotate_real(coeffs, LMAX, *angles) @ y.T, dtype=torch.float32)
            errs.append(float((model(rotated) - ref).abs().max() / ref.abs().max()))
    print(f"\nHybridCNN({nonlinearity}) relative invariance error of the logits: {max(errs):.2e}")
    if nonlinearity == "tensor":
        assert max(errs) <= 1e-5
    else:
        assert max(errs) < 0.2


def test_layers_reject_wrong_shapes():
    conv = SphericalConv(2, 3, LMAX)
    with pytest.raises(ValueError, match="expects 2 channels"):
        conv(torch.zeros(1, 3, H.n_real(LMAX)))
    with pytest.raises(ValueError, match="256 coefficients"):
        conv(torch.zeros(1, 2, 100))
    model = HybridCNN(2, NSIDE, LMAX)
    with pytest.raises(ValueError, match="HybridCNN expects maps"):
        model(torch.zeros(1, 3, 768))
    with pytest.raises(ValueError, match="lmax must be"):
        HybridCNN(2, NSIDE, 2 * NSIDE)
