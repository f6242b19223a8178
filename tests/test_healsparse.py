"""HealSparse inputs: partial-sky maps written with healsparse load (and scatter) exactly like the
same data given as a FITS map plus a mask; brought to other nsides with healsparse/healpy; bad
inputs fail one by one with their reason."""

from __future__ import annotations

from pathlib import Path

import healpy as hp
import numpy as np
import pytest

from scatterdist.inputs import BadMapError, Catalog, LoadedMap, MapRef, load_maps

healsparse = pytest.importorskip("healsparse")

NSIDE = 128
NSIDE_COV = 32
NPIX = 12 * NSIDE**2


def _footprint() -> np.ndarray:
    """A survey-like footprint (RING bool): a polar cap plus a band, with a few holes."""
    theta, phi = hp.pix2ang(NSIDE, np.arange(NPIX))
    keep = (theta < np.radians(50)) | ((np.abs(theta - np.radians(100)) < np.radians(8)) & (phi < 4))
    holes = hp.query_disc(NSIDE, hp.ang2vec(np.radians(20), 1.0), np.radians(3))
    keep[holes] = False
    return keep


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> dict:
    """The same partial-sky data as a HealSparse file and as a FITS map + a FITS mask."""
    d = tmp_path_factory.mktemp("hsp")
    rng = np.random.default_rng(11)
    values = hp.synfast(1.0 / (1 + np.arange(3 * NSIDE)) ** 2, NSIDE, lmax=3 * NSIDE - 1) + 0.1 * rng.standard_normal(NPIX)
    keep = _footprint()
    ring_valid = np.flatnonzero(keep)
    hsp = healsparse.HealSparseMap.make_empty(NSIDE_COV, NSIDE, np.float64)
    hsp.update_values_pix(hp.ring2nest(NSIDE, ring_valid), values[ring_valid])
    hsp.write(str(d / "survey.hsp"))
    # FITS: the values everywhere (garbage outside the footprint) plus a 0/1 mask file.
    filled = np.where(keep, values, rng.normal(size=NPIX) * 1e6)
    hp.write_map(str(d / "survey_full.fits"), filled, dtype=np.float64)
    hp.write_map(str(d / "footprint.fits"), keep.astype(np.float64), dtype=np.float64)
    return {"dir": d, "values": values, "keep": keep, "hsp": d / "survey.hsp",
            "fits": d / "survey_full.fits", "mask": d / "footprint.fits"}


def test_healsparse_equals_fits_plus_mask(survey) -> None:
    cat = Catalog.from_inputs([str(survey["hsp"])])
    assert cat.refs[0].kind == "hsp" and cat.ids == ["survey"] and cat.infer_nside() == NSIDE
    [h] = load_maps(cat.refs, NSIDE, fields=("I",))
    [f] = load_maps(Catalog.from_inputs([str(survey["fits"])]).refs, NSIDE, fields=("I",),
                    mask=str(survey["mask"]))
    assert isinstance(h, LoadedMap) and isinstance(f, LoadedMap) and h.own_mask
    keep = survey["keep"]
    np.testing.assert_array_equal(h.mask, keep.astype(float))
    np.testing.assert_array_equal(h.mask, f.mask)
    np.testing.assert_array_equal(h.data, f.data)
    np.testing.assert_array_equal(h.data[0][keep], survey["values"][keep])
    assert h.sky_fraction == f.sky_fraction == pytest.approx(keep.mean())
    # ... and they scatter to the same coefficients (the masked transform sees identical inputs).
    from scatterdist import Scattering

    sc = Scattering(NSIDE, depth=1)
    ch = sc(h.data[0], mask=h.mask)
    cf = sc(f.data[0], mask=f.mask)
    np.testing.assert_array_equal(ch, cf)
    assert np.isfinite(ch).any() and np.isnan(ch).any()  # cut sky: NaN where coverage is low


def test_healsparse_brought_to_other_nsides(survey) -> None:
    keep_nest = hp.reorder(survey["keep"], r2n=True)
    vals_nest = hp.reorder(survey["values"], r2n=True)
    for nside in (64, 16):  # above and below the coverage nside (32)
        [lm] = load_maps([MapRef("hsp", str(survey["hsp"]))], nside, fields="I")
        f = (NSIDE // nside) ** 2
        k = keep_nest.reshape(-1, f)
        frac = k.mean(axis=1)
        mean = np.where(frac > 0, (vals_nest.reshape(-1, f) * k).sum(axis=1) / np.maximum(k.sum(axis=1), 1), 0)
        np.testing.assert_allclose(lm.mask, hp.reorder(frac, n2r=True), rtol=0, atol=1e-12)
        np.testing.assert_allclose(lm.data[0], hp.reorder(mean, n2r=True), rtol=1e-12, atol=1e-12)
        assert ((lm.mask > 0) & (lm.mask < 1)).any()  # fractional weights at the footprint edge
        assert lm.sky_fraction == pytest.approx(survey["keep"].mean())
    [up] = load_maps([MapRef("hsp", str(survey["hsp"]))], 2 * NSIDE, fields="I")
    np.testing.assert_array_equal(up.mask, hp.ud_grade(survey["keep"].astype(float), 2 * NSIDE))
    np.testing.assert_array_equal(up.data[0], np.where(up.mask > 0, hp.ud_grade(survey["values"], 2 * NSIDE), 0))


def test_bad_inputs_fail_one_by_one(survey, tmp_path: Path) -> None:
    from scatterdist.sphere.mask import MaskError

    data = survey["hsp"].read_bytes()
    truncated = tmp_path / "truncated.hsp"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.hs"
    garbage.write_text("not a healsparse map\n")
    empty = tmp_path / "empty.hsp"
    healsparse.HealSparseMap.make_empty(NSIDE_COV, NSIDE, np.float64).write(str(empty))
    temperature = tmp_path / "temperature.fits"
    hp.write_map(str(temperature), survey["values"], dtype=np.float64)
    inputs = [survey["hsp"], truncated, garbage, empty, tmp_path / "missing.hsp", survey["fits"]]
    cat = Catalog.from_inputs([str(p) for p in inputs])
    assert [r.kind for r in cat.refs] == ["hsp"] * 5 + ["fits"]
    out = load_maps(cat.refs, NSIDE, fields=("I",))
    assert isinstance(out[0], LoadedMap) and isinstance(out[-1], LoadedMap)
    for got, words in zip(out[1:-1], ["corrupt or unreadable HealSparse file", "corrupt or unreadable HealSparse file",
                                      "entirely masked", "missing file"]):
        assert isinstance(got, BadMapError), got
        assert words in str(got) and str(inputs[out.index(got)]) in str(got)
    # Fields a file lacks: E from a temperature-only FITS file or from a HealSparse map.
    lacks = load_maps(Catalog.from_inputs([str(survey["hsp"]), str(temperature)]).refs, NSIDE, fields=("I", "E"))
    assert "one scalar field (I)" in str(lacks[0])
    assert "has 1 field(s); field(s) E need(s) Stokes Q and U" in str(lacks[1])
    # Global masks that cannot be used: refused for the whole call, with the file named.
    odd = tmp_path / "mask_odd.fits"
    from astropy.io import fits as afits

    afits.BinTableHDU.from_columns([afits.Column("T", "E", array=np.ones(3000))]).writeto(odd)
    nside48 = tmp_path / "mask_nside48.fits"  # a HEALPix map, but 48 cannot be brought to 128
    hp.write_map(str(nside48), np.ones(12 * 48**2), dtype=np.float64)
    weights = tmp_path / "mask_weights.fits"
    hp.write_map(str(weights), np.full(12 * 64**2, 1.5), dtype=np.float64)
    for bad, words in ((odd, "not 12.nside..2"), (nside48, "power-of-two nside"), (weights, r"\[0, 1\]")):
        with pytest.raises(MaskError, match=words):
            load_maps(cat.refs[:1], NSIDE, fields=("I",), mask=str(bad))


def test_healsparse_mask_file(survey, tmp_path: Path) -> None:
    from scatterdist.inputs import read_global_mask
    from scatterdist.sphere.mask import MaskError, read_mask

    keep = survey["keep"]
    theta, _ = hp.pix2ang(NSIDE, np.arange(NPIX))
    weights = np.where(keep, 0.5 + 0.5 * np.cos(theta) ** 2, 0.0)  # weights in (0, 1] on the footprint
    valid = np.flatnonzero(keep)
    hmask = healsparse.HealSparseMap.make_empty(NSIDE_COV, NSIDE, np.float64)
    hmask.update_values_pix(hp.ring2nest(NSIDE, valid), weights[valid])
    hmask.write(str(tmp_path / "weights.hsp"))
    hp.write_map(str(tmp_path / "weights.fits"), weights, dtype=np.float64)
    for nside in (NSIDE, 64):  # same weights as the FITS mask, also degraded
        np.testing.assert_allclose(read_global_mask(str(tmp_path / "weights.hsp"), nside),
                                   read_mask(tmp_path / "weights.fits", nside), rtol=0, atol=1e-12)
    [lm] = load_maps([MapRef("fits", str(survey["fits"]))], NSIDE, fields="I", mask=str(tmp_path / "weights.hsp"))
    np.testing.assert_allclose(lm.mask, weights, rtol=0, atol=1e-15)
    too_big = healsparse.HealSparseMap.make_empty(NSIDE_COV, NSIDE, np.float64)
    too_big.update_values_pix(np.arange(10), np.full(10, 2.0))
    too_big.write(str(tmp_path / "too_big.hsp"))
    with pytest.raises(MaskError, match=r"outside \[0, 1\]"):
        read_global_mask(str(tmp_path / "too_big.hsp"), NSIDE)
    (tmp_path / "broken.hsp").write_bytes(b"SIMPLE  =")
    with pytest.raises(MaskError, match="corrupt or unreadable HealSparse"):
        read_global_mask(str(tmp_path / "broken.hsp"), NSIDE)
