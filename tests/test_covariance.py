"""ScatteringCovariance: against direct healpy convolutions, equivariance, masks, torch, gradients."""

from __future__ import annotations

import math
import subprocess
import sys

import healpy as hp
import numpy as np
import pytest

from scatterdist import ScatteringCovariance
from scatterdist.equivariance import covariance_equivariance
from scatterdist.wavelets import axisym_kernels

NSIDE = 32


def _red_map(nside: int, seed: int, n: int = 1) -> np.ndarray:
    """Bandlimited (L = 2 nside) maps with a red spectrum C_l ~ (l + 10)^-2, plus a squeezed
    quadratic term so that S3 is not zero."""
    rng = np.random.default_rng(seed)
    lmax = 2 * nside - 1
    cl = 1.0 / (np.arange(lmax + 1) + 10.0) ** 2
    maps = []
    for _ in range(n):
        alm = (rng.standard_normal(hp.Alm.getsize(lmax)) + 1j * rng.standard_normal(hp.Alm.getsize(lmax))) / np.sqrt(2)
        alm[: lmax + 1] = alm[: lmax + 1].real * np.sqrt(2)  # m = 0 coefficients are real
        g = hp.alm2map(hp.almxfl(alm, np.sqrt(cl)), nside, lmax=lmax)
        maps.append(g + 0.5 * (g**2 - np.mean(g**2)) / g.std())
    return np.array(maps)


def _direct(f: np.ndarray, cov: ScatteringCovariance) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every statistic of one map with healpy on one fine grid (4 nside: no multiresolution, no module
    code, products sampled well above their bandlimit): raw spherical means and smoothed local maps."""
    L, L0 = cov.L, cov.L0
    nside = 4 * cov.nside
    lmax = L - 1
    phi, psi = axisym_kernels(L, cov.lam, cov.J0)
    scales = list(range(cov.J0, cov.J0 + psi.shape[0]))
    kappa = {j: psi[j - cov.J0] for j in scales}
    a = hp.map2alm(f, lmax=lmax, iter=3)  # f is bandlimited at L: exact up to the iteration
    W = {j: hp.alm2map(hp.almxfl(a, kappa[j]), nside, lmax=lmax) for j in scales}
    U = {j: np.abs(W[j]) for j in scales}
    u_alm = {j: hp.map2alm(U[j], lmax=lmax, iter=3) for j in scales}
    V = {(j, k): hp.alm2map(hp.almxfl(u_alm[j], kappa[k]), nside, lmax=lmax) for j in scales for k in scales if j > k}
    products = {"mean": f}
    for j in scales:
        products[f"S1 j1={j}"] = U[j]
        products[f"S2 j1={j}"] = W[j] ** 2
    for k in scales:
        for j in scales:
            if j > k:
                products[f"S3 j1={j} j2={k}"] = W[k] * V[(j, k)]
    for k in scales:
        for j2 in scales:
            for j1 in scales:
                if j1 >= j2 > k:
                    products[f"S4 j1={j1} j2={j2} j3={k}"] = V[(j1, k)] * V[(j2, k)]
    means = {name: float(np.mean(m)) for name, m in products.items()}
    smooth = {name: hp.alm2map(hp.almxfl(hp.map2alm(m, lmax=L0 - 1, iter=3), phi[:L0]), cov.nside_out, lmax=L0 - 1)
              for name, m in products.items()}
    return means, smooth


def _normalise(raw: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, v in raw.items():
        parts = dict(p.split("=") for p in name.split()[1:])
        if name.startswith("S1"):
            v = v / math.sqrt(raw[f"S2 j1={parts['j1']}"])
        elif name.startswith(("S3", "S4")):
            v = v / math.sqrt(raw[f"S2 j1={parts['j1']}"] * raw[f"S2 j1={parts['j2']}"])
        out[name] = v
    return out


@pytest.fixture(scope="module")
def cov() -> ScatteringCovariance:
    return ScatteringCovariance(NSIDE, oversample=2)


def test_paths_and_coords(cov):
    labels = cov.path_labels
    assert labels[0] == "mean" and labels.count("mean") == 1
    c = cov.path_coords()
    assert set(c) >= {"label", "kind", "order", "j1", "j2", "j3"}
    n = len(cov.bank.scales)
    kinds = list(c["kind"])
    assert kinds.count("S1") == kinds.count("S2") == n
    assert kinds.count("S3") == n * (n - 1) // 2
    assert kinds.count("S4") == sum(m * (m + 1) // 2 for m in range(n))
    s3 = c["kind"] == "S3"
    assert np.all(c["j1"][s3] > c["j2"][s3]) and np.all(c["j3"][s3] == -1)
    s4 = c["kind"] == "S4"
    assert np.all((c["j1"][s4] >= c["j2"][s4]) & (c["j2"][s4] > c["j3"][s4]))
    assert cov.config()["transform"] == "covariance"


def test_against_direct_healpy(cov):
    f = _red_map(NSIDE, 1)[0]
    raw, smooth = _direct(f, cov)
    expected = _normalise(raw)
    inv = cov.invariants(f)
    local = cov(f)
    for i, name in enumerate(cov.path_labels):
        ref = expected[name]
        if name == "mean":
            assert inv[i] == pytest.approx(ref, abs=1e-3 * np.std(f))
            continue
        scale = abs(ref) if not name.startswith("S3") else max(abs(ref), 0.05)
        assert abs(inv[i] - ref) < 0.03 * scale, (name, inv[i], ref)
    # local maps: the module's normalised maps times the normaliser are the direct smoothed products
    norm = {name: raw[name] / expected[name] if expected[name] != 0 else 1.0 for name in raw}
    for i, name in enumerate(cov.path_labels):
        ref = smooth[name] / norm[name]
        err = np.linalg.norm(local[i] - ref) / np.linalg.norm(ref)
        assert err < 0.1, (name, err)


def test_s3_detects_the_sign():
    """S3 is odd in f: it flips with the sign of the map, while S1, S2, S4 do not change."""
    cov = ScatteringCovariance(NSIDE)
    f = _red_map(NSIDE, 2)[0]
    a, b = cov.invariants(f), cov.invariants(-f)
    kinds = cov.path_coords()["kind"]
    odd = np.isin(kinds, ["mean", "S3"])
    np.testing.assert_allclose(a[~odd], b[~odd], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a[odd], -b[odd], rtol=1e-10, atol=1e-12)
    assert np.all(np.abs(a[kinds == "S3"]) > 1e-3)


def test_equivariance_per_statistic(cov):
    rows = {r["kind"]: r for r in covariance_equivariance(cov, n_trials=2)}
    assert set(rows) == {"mean", "S1", "S2", "S3", "S4"}
    for kind, r in rows.items():
        assert r["max"] < 0.08, (kind, r)
        assert r["invariant_max"] < 0.01, (kind, r)
    # a broken transform (a pixel-space, non-rotating nonlinearity) is caught
    class Broken:
        def __init__(self, c):
            self.c = c
            for k in ("L", "L0", "nside", "nside_out", "paths"):
                setattr(self, k, getattr(c, k))

        def transform_alm(self, maps):
            theta, _ = hp.pix2ang(self.nside, np.arange(12 * self.nside**2))
            return self.c.transform_alm(maps * (1.0 + np.cos(theta)))

    bad = {r["kind"]: r for r in covariance_equivariance(Broken(cov), n_trials=1)}
    assert bad["S2"]["max"] > 0.1


def test_cli_equivariance_covariance():
    out = subprocess.run([sys.executable, "-m", "scatterdist", "equivariance", "--statistic", "covariance",
                          "--nside", "16", "--trials", "1"], capture_output=True, text=True, check=True).stdout
    assert "ScatteringCovariance" in out
    for kind in ("mean", "S1", "S2", "S3", "S4"):
        assert any(line.split()[:1] == [kind] for line in out.splitlines()), out


def test_mask_of_ones_is_full_sky_and_unseen_is_a_mask(cov):
    maps = _red_map(NSIDE, 3, n=2)
    full = cov(maps)
    np.testing.assert_allclose(cov(maps, mask=np.ones(maps.shape[1])), full, rtol=1e-12, atol=1e-12)
    mask = np.ones(maps.shape[1])
    theta, _ = hp.pix2ang(NSIDE, np.arange(maps.shape[1]))
    mask[np.abs(np.pi / 2 - theta) < np.radians(20)] = 0.0
    a, ca = cov(maps, mask=mask, return_coverage=True)
    bad = maps.copy()
    bad[:, mask == 0] = hp.UNSEEN
    b = cov(bad)
    np.testing.assert_allclose(np.nan_to_num(a, nan=7.0), np.nan_to_num(b, nan=7.0), rtol=1e-10, atol=1e-12)
    assert ca.shape == a.shape and np.all((ca >= 0) & (ca <= 1))
    assert np.array_equal(np.isnan(a), np.broadcast_to(ca < cov.min_coverage, a.shape))
    np.testing.assert_allclose(cov.coverage(mask), ca[0])


def test_masked_invariants_are_close_to_full_sky():
    """Over an ensemble, the cut-sky invariants (20 deg Galactic cut) are within a few percent of
    the full-sky ones for S1, S2, S4, and S3 keeps its sign and size."""
    cov = ScatteringCovariance(NSIDE, oversample=2)
    maps = _red_map(NSIDE, 4, n=6)
    theta, _ = hp.pix2ang(NSIDE, np.arange(maps.shape[1]))
    mask = (np.abs(np.pi / 2 - theta) > np.radians(20)).astype(float)
    full = cov.invariants(maps).mean(0)
    cut = cov.invariants(maps, mask=mask).mean(0)
    kinds = cov.path_coords()["kind"]
    for kind, tol in (("S1", 0.03), ("S2", 0.1), ("S3", 0.3), ("S4", 0.3)):
        sel = kinds == kind
        rel = np.abs(cut[sel] - full[sel]) / np.abs(full[sel])
        assert np.all(rel < tol), (kind, rel)
    # without the coverage normalisation (zero-filled map on the full sky) S2 is far off
    naive = cov.invariants(maps * mask).mean(0)
    assert np.all(np.abs(naive[kinds == "S2"] / full[kinds == "S2"] - 1) > 0.15)


def test_torch_agrees_with_numpy_and_has_gradients():
    torch = pytest.importorskip("torch")
    maps = _red_map(16, 5, n=2)
    ref = ScatteringCovariance(16, oversample=2)
    tc = ScatteringCovariance(16, oversample=2, backend="torch", device="cpu", dtype="float64")
    np.testing.assert_allclose(tc(torch.as_tensor(maps)).numpy(), ref(maps), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(tc.invariants(torch.as_tensor(maps)).numpy(), ref.invariants(maps), rtol=1e-8, atol=1e-10)
    mask = np.ones(maps.shape[1])
    mask[: maps.shape[1] // 5] = 0
    np.testing.assert_allclose(np.nan_to_num(tc(torch.as_tensor(maps), mask=mask).numpy(), nan=3.0),
                               np.nan_to_num(ref(maps, mask=mask), nan=3.0), rtol=1e-8, atol=1e-10)
    # gradients: torch gradcheck at nside 8 on the invariants, full and cut sky
    small = ScatteringCovariance(8, backend="torch", device="cpu", dtype="float64")
    x = torch.as_tensor(_red_map(8, 6)[0:1], dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: small.invariants(m), (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    m8 = np.ones(12 * 64)
    m8[:150] = 0
    assert torch.autograd.gradcheck(lambda m: small(m, mask=m8).nan_to_num(0.0), (x,), eps=1e-6, atol=1e-5,
                                    fast_mode=True)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="normalize"):
        ScatteringCovariance(16, normalize="yes")
    with pytest.raises(ValueError, match="oversample"):
        ScatteringCovariance(16, oversample=3)
