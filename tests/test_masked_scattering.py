"""Masked (cut-sky) scattering: masked pixels have no influence, bias against the full sky,
coverage and NaN semantics, per-map masks, full-sky equivalence, both backends."""

import healpy as hp
import numpy as np
import pytest

from scatterdist import InvalidMapError, Scattering
from scatterdist.scattering.masked import masked_bias, squared_kernel_multipliers
from scatterdist.sims import gaussian_cmb
from scatterdist.sphere.mask import MaskError, apodize, read_mask

WMAP_W_MASKED = "wmap_band_iqumap_r9_7yr_W_v4_udgraded32_masked.fits"
WMAP_MASK = "wmap_temperature_analysis_mask_r9_7yr_v4_udgraded32.fits"


def galactic_cut(nside, b_deg):
    theta, _ = hp.pix2ang(nside, np.arange(12 * nside**2))
    return (np.abs(90.0 - np.degrees(theta)) > b_deg).astype(float)


def test_masked_pixels_have_no_influence(data_dir):
    """The real masked WMAP W map with UNSEEN pixels, and the same map with those pixels set to
    random values plus the mask file, give identical coefficients (and NaN positions)."""
    t = hp.read_map(str(data_dir / WMAP_W_MASKED), field=0, dtype=np.float64)
    mask = read_mask(data_dir / WMAP_MASK, 32)
    unseen = np.isclose(t, hp.UNSEEN)
    assert unseen.sum() > 1000 and np.array_equal(unseen, mask == 0)
    filled = t.copy()
    filled[unseen] = np.random.default_rng(0).normal(0, 1e3, unseen.sum())
    sc = Scattering(32, nthreads=1)  # one thread: ducc0's threaded sums are not bitwise reproducible
    a, cov_a = sc(t, return_coverage=True)
    b, cov_b = sc(filled, mask=mask, return_coverage=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cov_a, cov_b)
    assert np.isnan(a).any() and np.isfinite(a).sum() > 0.3 * a.size
    # NaN marks the same pixels, and other values in the masked pixels change nothing either
    other = filled.copy()
    other[unseen] = np.nan
    np.testing.assert_array_equal(sc(other), a)
    np.testing.assert_array_equal(sc.invariants(t), sc.invariants(filled, mask=mask))


def test_full_sky_is_exactly_the_old_path(red_maps):
    maps, _ = red_maps
    sc = Scattering(32, nthreads=1)  # bitwise comparisons: one thread (see above)
    full = sc(maps)
    np.testing.assert_array_equal(sc(maps, mask=np.ones(sc.npix)), full)
    out, cov = sc(maps, return_coverage=True)
    np.testing.assert_array_equal(out, full)
    assert cov.shape == full.shape and np.all(cov == 1)
    assert np.all(sc.coverage(np.ones(sc.npix)) == 1) and np.all(sc.coverage(None) == 1)
    assert sc.coverage(None).shape == (sc.n_paths, sc.npix_out)
    np.testing.assert_array_equal(sc.invariants(maps, mask=np.ones((4, sc.npix))), sc.invariants(maps))


def test_coverage_and_nan_semantics(red_maps):
    maps, _ = red_maps
    sc = Scattering(32, min_coverage=0.8)
    w = galactic_cut(32, 25)
    out, cov = sc(maps, mask=w, return_coverage=True)
    assert out.shape == cov.shape == (4, sc.n_paths, sc.npix_out)
    np.testing.assert_array_equal(cov[0], sc.coverage(w))
    np.testing.assert_array_equal(cov[1], cov[0])
    assert cov.min() >= 0 and cov.max() <= 1
    np.testing.assert_array_equal(np.isnan(out), cov < 0.8)
    theta, _ = hp.pix2ang(sc.nside_out, np.arange(sc.npix_out))
    b = 90 - np.degrees(theta)
    assert np.all(cov[0][:, np.abs(b) < 5] < 0.2)  # deep in the cut: nothing gets through
    assert np.all(cov[0][:, np.abs(b) > 60] > 0.95)  # far from it: everything
    inv = sc.invariants(maps, mask=w)
    ok = cov[0] >= 0.8
    expected = np.array([[out[k, i][ok[i]].mean() for i in range(sc.n_paths)] for k in range(4)])
    np.testing.assert_allclose(inv, expected, rtol=1e-12)


def test_per_map_masks_match_one_by_one(red_maps):
    maps, _ = red_maps
    sc = Scattering(32, nthreads=1)
    masks = np.stack([galactic_cut(32, b) for b in (10, 20, 10, 30)])
    batch, cov = sc(maps, mask=masks, return_coverage=True)
    for k in range(4):
        one, c = sc(maps[k], mask=masks[k], return_coverage=True)
        np.testing.assert_allclose(batch[k], one, rtol=1e-12, atol=1e-12 * np.nanmax(np.abs(one)))
        np.testing.assert_array_equal(cov[k], c)
    np.testing.assert_array_equal(cov[0], cov[2])  # identical rows: one geometry
    assert not np.array_equal(cov[0], cov[1])
    # a mask combined with each map's own UNSEEN pixels
    holey = maps.copy()
    holey[1, :500] = hp.UNSEEN
    both = sc(holey, mask=masks[0])
    m1 = masks[0].copy()
    m1[:500] = 0
    np.testing.assert_array_equal(both[1], sc(maps[1], mask=m1))
    np.testing.assert_array_equal(both[0], sc(maps[0], mask=masks[0]))


def test_bad_masks_and_entirely_masked_maps(red_maps):
    maps, _ = red_maps
    sc = Scattering(32)
    with pytest.raises(MaskError, match="nside 16.*the maps have 12288"):
        sc(maps, mask=np.ones(12 * 16**2))
    with pytest.raises(MaskError, match="values in"):
        sc(maps, mask=np.full(sc.npix, 1.5))
    with pytest.raises(ValueError, match="mask must have shape"):
        sc(maps, mask=np.ones((3, sc.npix)))
    gone = maps.copy()
    gone[2] = np.nan
    with pytest.raises(InvalidMapError, match="map 2 is entirely masked") as info:
        sc(gone)
    assert info.value.index == 2


def test_squared_kernel_is_an_energy_fraction():
    sc = Scattering(32)
    for j in sc.bank.scales:
        b = squared_kernel_multipliers(sc.bank.psi[j - sc.J0], 2 * sc.bank.bandlimit(j) - 2)
        assert b[0] == 1.0 and np.all(np.abs(b) <= 1 + 1e-9)
        assert abs(b[-1]) < 0.05  # the squared profile is bandlimited at twice the wavelet's band


def test_galactic_cut_bias_bounds():
    """Issue 12 bounds (|b| > 20 deg, apodised 2 deg, nside 128, coverage >= 0.9): ensemble mean of
    the masked invariants within 3% (order 1) and 6% (order 2) of the full-sky ones, per-pixel
    median relative difference <= 5% at order 1. 12 skies here (scripts/masked_bias.py runs 32:
    max deviations 0.9% and 2.0%, medians <= 3.3%); the simplest method (divide by the order-0
    output of the mask) fails the order-2 bound on the same skies."""
    nside = 128
    sc = Scattering(nside, apodize=2.0, min_coverage=0.9)
    maps = np.stack([gaussian_cmb(nside, seed=3, index=i) for i in range(12)])
    fig = masked_bias(sc, maps, galactic_cut(nside, 20), min_coverage=0.9, naive=True)
    o = fig["order"]
    assert np.all(fig["covered"] > 0.5)
    dev1 = np.abs(fig["ratio"][o == 1] - 1)
    dev2 = np.abs(fig["ratio"][o == 2] - 1)
    assert dev1.max() <= 0.03, dev1
    assert dev2.max() <= 0.06, dev2
    assert fig["median_rel"][o == 1].max() <= 0.05
    assert np.abs(fig["naive_ratio"][o == 2] - 1).max() > 0.1  # the edge step really is handled


def test_torch_backend_matches_numpy(red_maps, torch_one_thread):
    torch = pytest.importorskip("torch")
    maps, _ = red_maps
    w = galactic_cut(32, 20)
    holey = maps[:2].copy()
    holey[1, :300] = np.nan
    ref, cov = Scattering(32)(holey, mask=w, return_coverage=True)
    sc = Scattering(32, backend="torch", device="cpu", dtype=torch.float64)
    out, tcov = sc(torch.as_tensor(holey), mask=w, return_coverage=True)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(np.isnan(out.numpy()), np.isnan(ref))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-8, atol=1e-8 * np.nanmax(np.abs(ref)))
    np.testing.assert_allclose(tcov.numpy(), cov, atol=1e-12)
    inv = sc.invariants(torch.as_tensor(holey), mask=w).numpy()
    np.testing.assert_allclose(inv, Scattering(32).invariants(holey, mask=w), rtol=1e-8)
    # differentiable: gradients flow to the data and are exactly zero on masked pixels
    x = torch.as_tensor(maps[:1]).clone().requires_grad_(True)
    torch.nan_to_num(sc(x, mask=w)).pow(2).sum().backward()
    g = x.grad.numpy()[0]
    assert np.isfinite(g).all() and np.abs(g[w > 0]).max() > 0 and np.all(g[w == 0] == 0)


def test_signed_and_power_paths_are_normalised_too(red_maps):
    maps, _ = red_maps
    w = galactic_cut(32, 20)
    sc = Scattering(32, signed=True, powers=(2,), nthreads=1)
    out, cov = sc(maps, mask=w, return_coverage=True)
    base = Scattering(32, nthreads=1)(maps, mask=w)
    # same numbers up to rounding: ducc0 may take another SIMD path for another buffer layout
    np.testing.assert_allclose(out[:, : base.shape[1]], base, rtol=1e-13, atol=1e-15)
    full = sc(maps)
    extra = slice(base.shape[1], None)
    ok = cov[0, extra] >= 0.9
    # power 2 of the modulus, normalised by Phi * s^2: close to the full-sky map where covered
    ratio = np.nanmean(np.where(ok, out[:, extra], np.nan), axis=-1) / np.nanmean(np.where(ok, full[:, extra], np.nan), axis=-1)
    power = [i for i, p in enumerate(sc.paths[base.shape[1]:]) if getattr(p, "kind", "") == "power"]
    assert np.all(np.abs(ratio[:, power] - 1) < 0.15)
    assert apodize(w, 2.0).sum() > 0


@pytest.mark.parametrize("kw", [dict(depth=0), dict(depth=3), dict(oversample=2), dict(lam=3.0, J0=2)])
def test_other_configurations_with_a_mask(red_maps, kw):
    maps, _ = red_maps
    sc = Scattering(32, **kw)
    w = galactic_cut(32, 20)
    out, cov = sc(maps[:2], mask=w, return_coverage=True)
    full = sc(maps[:2])
    assert out.shape == full.shape == cov.shape
    np.testing.assert_array_equal(np.isnan(out), cov < sc.min_coverage)
    ok = cov >= 0.9
    assert ok.any(axis=(0, 2)).all()  # every path keeps some pixels
    assert np.median(np.abs(out - full)[ok] / np.abs(full)[ok]) < 0.1


def test_pickles_and_threads_share_one_transform(red_maps):
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    maps, _ = red_maps
    sc = Scattering(32, nthreads=1)
    masks = [galactic_cut(32, b) for b in (10, 20, 30)]
    ref = [sc(maps[:1], mask=m) for m in masks]
    clone = pickle.loads(pickle.dumps(sc))
    np.testing.assert_array_equal(clone(maps[:1], mask=masks[1]), ref[1])
    fresh = Scattering(32, nthreads=1)
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda k: fresh(maps[:1], mask=masks[k % 3]), range(6)))
    for k, out in enumerate(outs):  # concurrent calls agree to round-off (not bitwise: summation order)
        np.testing.assert_allclose(out, ref[k % 3], rtol=1e-12, atol=1e-12 * np.nanmax(np.abs(ref[k % 3])))
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref[k % 3]))
