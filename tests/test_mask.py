import healpy as hp
import numpy as np
import pytest

from scatterdist.sphere.mask import (
    DEFAULT_APODIZE_DEG,
    DEFAULT_MIN_COVERAGE,
    DEFAULT_MIN_FSKY,
    MaskError,
    apodize,
    mask_from_map,
    read_mask,
    sky_fraction,
)

WMAP_MASK = "wmap_temperature_analysis_mask_r9_7yr_v4_udgraded32.fits"


def test_defaults():
    assert DEFAULT_MIN_FSKY == 0.01
    assert 0 < DEFAULT_MIN_COVERAGE <= 1 and DEFAULT_APODIZE_DEG > 0
    assert issubclass(MaskError, ValueError)


def test_read_mask_brings_any_nside_over(data_dir):
    raw = hp.read_map(str(data_dir / WMAP_MASK))
    m32 = read_mask(data_dir / WMAP_MASK, 32)
    np.testing.assert_array_equal(m32, raw)
    m64 = read_mask(data_dir / WMAP_MASK, 64)
    m8 = read_mask(data_dir / WMAP_MASK, 8)
    assert m64.shape == (12 * 64**2,) and m8.shape == (768,)
    assert set(np.unique(m64)) == {0.0, 1.0}  # upgrading copies parents
    assert ((m8 > 0) & (m8 < 1)).any()  # degrading averages weights
    assert m8.min() >= 0 and m8.max() <= 1
    for m in (m64, m8):
        assert sky_fraction(m) == pytest.approx(sky_fraction(m32), abs=1e-12)


def test_read_mask_nested_and_unseen(tmp_path):
    nside = 16
    rng = np.random.default_rng(0)
    ring = (rng.uniform(size=12 * nside**2) > 0.3).astype(float)
    hp.write_map(str(tmp_path / "nest.fits"), hp.reorder(ring, r2n=True), nest=True, dtype=np.float64)
    np.testing.assert_array_equal(read_mask(tmp_path / "nest.fits", nside), ring)
    with_unseen = ring.copy()
    with_unseen[ring == 0] = hp.UNSEEN
    hp.write_map(str(tmp_path / "unseen.fits"), with_unseen, dtype=np.float64)
    np.testing.assert_array_equal(read_mask(tmp_path / "unseen.fits", nside), ring)


def test_read_mask_errors(tmp_path, data_dir):
    bad = np.full(12 * 16**2, 0.5)
    bad[3] = 2.0
    hp.write_map(str(tmp_path / "big.fits"), bad, dtype=np.float64)
    with pytest.raises(MaskError, match=r"values in \[0\.5, 2\]"):
        read_mask(tmp_path / "big.fits", 16)
    hp.write_map(str(tmp_path / "nside3.fits"), np.ones(12 * 3**2), dtype=np.float64)
    with pytest.raises(MaskError, match="cannot be brought to nside=16"):
        read_mask(tmp_path / "nside3.fits", 16)
    with pytest.raises(MaskError, match="nside must be a power of two"):
        read_mask(data_dir / WMAP_MASK, 48)
    (tmp_path / "text.fits").write_text("not a fits file")
    with pytest.raises(MaskError, match="cannot read mask"):
        read_mask(tmp_path / "text.fits", 16)
    with pytest.raises(MaskError, match="does not exist"):
        read_mask(tmp_path / "missing.fits", 16)


def test_mask_from_map():
    x = np.arange(12 * 4**2, dtype=float).reshape(2, -1)
    x[0, 3] = hp.UNSEEN
    x[1, 5] = np.nan
    x[1, 6] = np.float32(hp.UNSEEN)  # float32 round trip of the marker still counts
    m = mask_from_map(x)
    assert m.shape == x.shape and m.dtype == np.float64
    assert m.sum() == x.size - 3 and m[0, 3] == m[1, 5] == m[1, 6] == 0


def test_apodize_matches_brute_force_distance():
    nside, deg = 32, 6.0
    theta, phi = hp.pix2ang(nside, np.arange(12 * nside**2))
    rng = np.random.default_rng(1)
    w = ((theta > np.radians(50)) & (np.abs(phi - 2) > 0.3)).astype(float) * rng.uniform(0.5, 1.0, theta.size)
    a = apodize(w, deg)
    assert a.shape == w.shape and np.all(a[w == 0] == 0) and np.all(a <= w + 1e-15)
    vec = np.array(hp.pix2vec(nside, np.arange(w.size))).T
    zero = vec[w == 0]
    idx = rng.choice(np.flatnonzero(w > 0), 300, replace=False)
    d = np.degrees(np.arccos(np.clip((vec[idx] @ zero.T).max(axis=1), -1, 1)))
    expected = w[idx] * np.where(d >= deg, 1.0, 0.5 * (1 - np.cos(np.pi * np.minimum(d, deg) / deg)))
    np.testing.assert_allclose(a[idx], expected, rtol=0, atol=1e-9)
    assert (d < deg).sum() > 20 and (d >= deg).sum() > 20  # both regimes really tested
    # batches, no-op cases
    np.testing.assert_array_equal(apodize(np.stack([w, w]), deg)[1], a)
    np.testing.assert_array_equal(apodize(w, 0), w)
    np.testing.assert_array_equal(apodize(np.ones(768), 2.0), np.ones(768))
    np.testing.assert_array_equal(apodize(np.zeros(768), 2.0), np.zeros(768))
    with pytest.raises(ValueError, match="apodisation width"):
        apodize(w, -1.0)


def test_bad_mask_arrays():
    with pytest.raises(MaskError, match="not 12\\*nside\\*\\*2"):
        apodize(np.ones(100), 1.0)
    with pytest.raises(MaskError, match=r"values in \[-0\.5, 1\]"):
        sky_fraction(np.r_[-0.5, np.ones(767)])
    with pytest.raises(MaskError, match="NaN"):
        sky_fraction(np.r_[np.nan, np.ones(767)])
    assert sky_fraction(np.r_[np.zeros(384), np.ones(384)]) == 0.5
    np.testing.assert_array_equal(sky_fraction(np.ones((3, 768))), np.ones(3))
