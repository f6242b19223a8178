"""Catalog: inputs (FITS paths, globs, lists, Zarr, xarray, simulation specs), labels, loading."""

from __future__ import annotations

import os
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
import xarray as xr

from scatterdist.inputs import (
    BadMapError,
    Catalog,
    CatalogError,
    LoadedMap,
    MapRef,
    check_fields,
    load_maps,
    parse_sim_spec,
    stack_maps,
)

DATA = Path(__file__).parent / "data"
WMAP = DATA / "wmap_band_iqumap_r9_7yr_W_v4_udgraded32.fits"
WMAP_MASKED = DATA / "wmap_band_iqumap_r9_7yr_W_v4_udgraded32_masked.fits"
NSIDE = 32
NPIX = 12 * NSIDE**2


def _write(path: Path, m: np.ndarray, nest: bool = False) -> Path:
    hp.write_map(str(path), m, nest=nest, overwrite=True, dtype=np.float64)
    return path


@pytest.fixture(scope="module")
def fits_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fits")
    rng = np.random.default_rng(1)
    for i in range(3):
        _write(d / f"sky{i}.fits", rng.standard_normal(NPIX))
    return d


def test_paths_globs_and_list_files(fits_dir: Path, tmp_path: Path) -> None:
    by_glob = Catalog.from_inputs([str(fits_dir / "sky*.fits")])
    assert by_glob.ids == ["sky0", "sky1", "sky2"]
    assert by_glob.sources == [str(fits_dir / f"sky{i}.fits") for i in range(3)]
    assert by_glob.labels is None and by_glob.infer_nside() == NSIDE

    # A list file with a comment, a blank line, a relative and an absolute path.
    lst = fits_dir / "list.txt"
    lst.write_text(f"# skies\nsky2.fits\n\n{fits_dir / 'sky0.fits'}\n")
    by_list = Catalog.from_inputs([str(lst), str(WMAP)])
    assert by_list.ids == ["sky2", "sky0", WMAP.name[:-5]]

    # A missing file stays in the catalog (it fails as a map, not as a run).
    missing = Catalog.from_inputs([str(tmp_path / "gone.fits")])
    assert missing.ids == ["gone"]
    with pytest.raises(CatalogError, match="matches no file"):
        Catalog.from_inputs([str(tmp_path / "nothing*.fits")])
    with pytest.raises(CatalogError, match="no inputs"):
        Catalog.from_inputs([])
    # Same file name in two folders: ids are made unique, in order.
    dup = Catalog.from_fits([str(fits_dir / "sky0.fits"), str(fits_dir / "sky0.fits")])
    assert dup.ids == ["sky0", "sky0#2"]


def test_nested_fits_is_converted_to_ring(tmp_path: Path) -> None:
    ring = np.random.default_rng(2).standard_normal(NPIX)
    path = _write(tmp_path / "nested.fits", hp.reorder(ring, r2n=True), nest=True)
    [loaded] = load_maps(Catalog.from_fits(str(path)).refs, NSIDE)
    np.testing.assert_array_equal(loaded.data[0], ring)


def test_real_wmap_maps_load(tmp_path: Path) -> None:
    cat = Catalog.from_fits([str(WMAP), str(WMAP_MASKED)])
    good, masked = load_maps(cat.refs, NSIDE)  # default: field I, masks from UNSEEN pixels
    np.testing.assert_array_equal(good.data, hp.read_map(str(WMAP), dtype=np.float64)[None])
    assert good.fields == ("I",) and good.mask is None and good.sky_fraction == 1.0
    assert isinstance(masked, LoadedMap) and masked.sky_fraction == pytest.approx(1 - 4686 / NPIX)
    # The legacy form (explicit fields=None): plain arrays, a partial-sky map is an error.
    good, masked = load_maps(cat.refs, NSIDE, fields=None)
    np.testing.assert_array_equal(good, hp.read_map(str(WMAP), dtype=np.float64))
    assert good.dtype == np.float64 and good.shape == (NPIX,)
    assert isinstance(masked, BadMapError)
    assert "partial-sky" in str(masked) and "4686 of 12288" in str(masked)


def test_bad_inputs_are_per_map_errors(fits_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    truncated = tmp_path / "cut.fits"
    truncated.write_bytes(WMAP.read_bytes()[: WMAP.stat().st_size // 2])
    text = tmp_path / "text.fits"
    text.write_text("this is not a FITS file\n")
    wrong = _write(tmp_path / "wrong_nside.fits", rng.standard_normal(12 * 16**2))
    nan_map = rng.standard_normal(NPIX)
    nan_map[[5, 77]] = np.nan
    nan = _write(tmp_path / "nan.fits", nan_map)
    unseen = _write(tmp_path / "unseen.fits", np.full(NPIX, hp.UNSEEN))
    paths = [fits_dir / "sky0.fits", truncated, text, tmp_path / "missing.fits", wrong, unseen, nan]
    out = load_maps(Catalog.from_fits([str(p) for p in paths]).refs, NSIDE)
    assert isinstance(out[0], LoadedMap)
    assert isinstance(out[-1], LoadedMap) and out[-1].mask.sum() == NPIX - 2  # NaN pixels are masked
    expected = ["truncated FITS file", "unreadable FITS", "missing file", "nside 16", "entirely masked"]
    for got, words in zip(out[1:-1], expected):
        assert isinstance(got, BadMapError), got
        assert words in str(got)
    # The legacy form refuses NaN and UNSEEN pixels.
    legacy = load_maps(Catalog.from_fits([str(nan), str(unseen)]).refs, NSIDE, fields=None)
    assert "2 NaN or infinite" in str(legacy[0]) and "all-UNSEEN" in str(legacy[1])


def _maps_store(path: Path, n: int, labels: bool = True) -> np.ndarray:
    maps = np.random.default_rng(4).standard_normal((n, NPIX))
    ds = xr.Dataset({"maps": (("map", "pixel"), maps)},
                    coords={"map": np.array([f"m{i:02d}" for i in range(n)], dtype=object)})
    if labels:
        ds["label"] = ("map", (np.arange(n) % 2).astype(np.int8))
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return maps


def test_zarr_and_xarray_inputs(tmp_path: Path) -> None:
    store = tmp_path / "maps.zarr"
    maps = _maps_store(store, 5)
    cat = Catalog.from_inputs([str(store)])
    assert cat.ids == [f"m{i:02d}" for i in range(5)] and cat.nside == NSIDE
    assert cat.labels.tolist() == [0, 1, 0, 1, 0]
    assert cat.sources[3] == f"{store}::maps[3]"
    # The rows are read by reference, in any order, in one call per store.
    loaded = load_maps([cat.refs[i] for i in (4, 1, 2)], NSIDE)
    np.testing.assert_array_equal(np.stack([m.data[0] for m in loaded]), maps[[4, 1, 2]])

    # An xarray object opened from the store is the same catalog; DataArray too.
    ds = xr.open_zarr(store, consolidated=False)
    assert Catalog.from_zarr(ds).ids == cat.ids
    assert Catalog.from_zarr(ds["maps"]).refs == cat.refs
    # In-memory arrays would have to ship maps to tasks: refused with the fix in the message.
    with pytest.raises(CatalogError, match="to_zarr"):
        Catalog.from_zarr(ds.load().drop_encoding())
    with pytest.raises(CatalogError, match="wrong"):
        Catalog.from_zarr(ds, variable="wrong")


def test_zarr_rows_with_bad_values(tmp_path: Path) -> None:
    store = tmp_path / "bad.zarr"
    maps = np.random.default_rng(5).standard_normal((3, NPIX))
    maps[1, 10] = np.inf
    maps[2, :100] = hp.UNSEEN
    xr.Dataset({"maps": (("map", "pixel"), maps)}).to_zarr(store, zarr_format=3, consolidated=False)
    cat = Catalog.from_zarr(str(store))
    assert cat.ids == ["map000000", "map000001", "map000002"]
    good, inf, partial = load_maps(cat.refs, NSIDE)
    np.testing.assert_array_equal(good.data[0], maps[0])
    assert "1 infinite pixels" in str(inf) and partial.sky_fraction == pytest.approx(1 - 100 / NPIX)
    good, inf, partial = load_maps(cat.refs, NSIDE, fields=None)  # legacy form
    np.testing.assert_array_equal(good, maps[0])
    assert "1 NaN or infinite" in str(inf) and "partial-sky" in str(partial)


def test_labels_csv(fits_dir: Path, tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("id,label\nsky0,1\nsky2,0\n")
    cat = Catalog.from_inputs([str(fits_dir / "sky*.fits")], labels_csv=str(csv))
    assert cat.labels.tolist() == [1, -1, 0]
    # The CSV overrides a Zarr label variable.
    store = tmp_path / "maps.zarr"
    _maps_store(store, 3)
    csv.write_text("id,label\nm00,7\n")
    assert Catalog.from_inputs([str(store)], labels_csv=str(csv)).labels.tolist() == [7, 1, 0]
    csv.write_text("id,label\nnobody,1\n")
    with pytest.raises(CatalogError, match="not in the inputs"):
        Catalog.from_inputs([str(store)], labels_csv=str(csv))
    csv.write_text("name,class\nm00,1\n")
    with pytest.raises(CatalogError, match="id,label"):
        Catalog.from_inputs([str(store)], labels_csv=str(csv))
    csv.write_text("id,label\nm00,cat\n")
    with pytest.raises(CatalogError, match="not an integer"):
        Catalog.from_inputs([str(store)], labels_csv=str(csv))


def test_mixed_inputs_keep_order_and_refuse_other_nside(fits_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "maps.zarr"
    _maps_store(store, 2, labels=False)
    cat = Catalog.from_inputs([str(fits_dir / "sky1.fits"), str(store), str(fits_dir / "sky0.fits")])
    assert cat.ids == ["sky1", "m00", "m01", "sky0"]
    assert [r.kind for r in cat.refs] == ["fits", "zarr", "zarr", "fits"]
    other = tmp_path / "other.zarr"
    xr.Dataset({"maps": (("map", "pixel"), np.zeros((1, 12 * 16**2)))}).to_zarr(
        other, zarr_format=3, consolidated=False)
    with pytest.raises(CatalogError, match="nside 32 and 16"):
        Catalog.from_inputs([str(store), str(other)])


def test_simulation_spec_inputs() -> None:
    sims = pytest.importorskip("scatterdist.sims")
    if not hasattr(sims, "SimulationSpec"):
        pytest.skip("scatterdist.sims.SimulationSpec is not there yet")
    spec = parse_sim_spec("sim:kind=mixed,n=4,nside=32,seed=0,alpha=1.0")
    cat = Catalog.from_inputs(["sim:kind=mixed,n=4,nside=32,seed=0,alpha=1.0"])
    assert cat.ids == list(spec.map_ids()) and cat.nside == 32
    assert cat.labels.tolist() == np.asarray(spec.labels()).tolist()
    loaded = load_maps(cat.refs[2:4], 32)
    for i, m in zip((2, 3), loaded):
        np.testing.assert_array_equal(m.data[0], spec.generate(i))
    with pytest.raises(CatalogError, match="KEY=VALUE"):
        parse_sim_spec("sim:kind=mixed,oops")


def test_sources_are_absolute() -> None:
    # The catalog keeps absolute sources so tasks on other machines/cwds find the files.
    cat = Catalog.from_fits(os.path.relpath(WMAP))
    assert os.path.isabs(cat.sources[0]) and os.path.isabs(cat.refs[0].where)


# ---------------------------------------------------------------------- fields and masks

WMAP_V = DATA / "wmap_band_iqumap_r9_7yr_V_v4_udgraded32.fits"
WMAP_MASK = DATA / "wmap_temperature_analysis_mask_r9_7yr_v4_udgraded32.fits"


def test_masked_wmap_map_loads_with_its_mask(tmp_path: Path) -> None:
    lm, = load_maps(Catalog.from_fits(str(WMAP_MASKED)).refs, NSIDE, fields=("I",))
    assert isinstance(lm, LoadedMap) and lm.fields == ("I",) and lm.own_mask
    raw = hp.read_map(str(WMAP_MASKED), dtype=np.float64)
    unseen = raw == hp.UNSEEN
    assert unseen.sum() == 4686
    assert lm.data.shape == (1, NPIX) and lm.data.dtype == np.float64
    np.testing.assert_array_equal(lm.mask, (~unseen).astype(float))
    assert lm.sky_fraction == pytest.approx(1 - 4686 / NPIX)
    np.testing.assert_array_equal(lm.data[0], np.where(unseen, 0.0, raw))  # finite everywhere
    # The same map with its masked pixels set to random values plus a mask file: same data.
    filled = np.where(unseen, np.random.default_rng(7).normal(size=NPIX) * 1e3, raw)
    with_mask = load_maps([MapRef("fits", str(_write(tmp_path / "filled.fits", filled)))], NSIDE,
                          fields=("I",), mask=(~unseen).astype(float))[0]
    np.testing.assert_array_equal(with_mask.data, lm.data)
    np.testing.assert_array_equal(with_mask.mask, lm.mask)
    # ... hence the same coefficients through the masked transform (to round-off: two equal
    # inputs in different buffers are not always bitwise equal after the transform's sums).
    from scatterdist import Scattering

    sc = Scattering(NSIDE)
    a, b = sc(with_mask.data, mask=with_mask.mask), sc(lm.data, mask=lm.mask)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    # A full-sky map has no mask at all.
    full, = load_maps(Catalog.from_fits(str(WMAP)).refs, NSIDE, fields="I")
    assert full.mask is None and full.sky_fraction == 1.0 and not full.own_mask


def test_global_mask_combines_with_the_maps_own_mask(tmp_path: Path) -> None:
    from scatterdist.sphere.mask import read_mask

    gmask = read_mask(WMAP_MASK, NSIDE)
    assert 0 < gmask.mean() < 1
    full, masked = load_maps(Catalog.from_fits([str(WMAP), str(WMAP_MASKED)]).refs, NSIDE,
                             fields=("I",), mask=str(WMAP_MASK))
    np.testing.assert_array_equal(full.mask, gmask)
    assert full.sky_fraction == pytest.approx(gmask.mean()) and not full.own_mask
    own = (hp.read_map(str(WMAP_MASKED)) != hp.UNSEEN).astype(float)
    np.testing.assert_array_equal(masked.mask, own * gmask)
    assert masked.sky_fraction == pytest.approx((own * gmask).mean())
    assert (full.data[0][gmask == 0] == 0).all()
    # A mask at another nside is brought over (read_mask); a mask that cannot be is a MaskError.
    low = _write(tmp_path / "mask16.fits", hp.ud_grade(gmask, 16))
    [lm] = load_maps(Catalog.from_fits(str(WMAP)).refs, NSIDE, fields=("I",), mask=str(low))
    np.testing.assert_allclose(lm.mask, read_mask(low, NSIDE))
    from scatterdist.sphere.mask import MaskError

    odd = tmp_path / "odd.fits"
    from astropy.io import fits as afits

    afits.BinTableHDU.from_columns([afits.Column("T", "E", array=np.ones(1000))]).writeto(odd)
    with pytest.raises(MaskError, match="odd.fits"):
        load_maps(Catalog.from_fits(str(WMAP)).refs, NSIDE, fields=("I",), mask=str(odd))
    outside = _write(tmp_path / "outside.fits", np.full(NPIX, 2.0))
    with pytest.raises(MaskError, match=r"\[0, 1\]"):
        load_maps(Catalog.from_fits(str(WMAP)).refs, NSIDE, fields=("I",), mask=str(outside))
    with pytest.raises(MaskError, match="shape"):
        load_maps(Catalog.from_fits(str(WMAP)).refs, NSIDE, fields=("I",), mask=np.ones(10))


def test_fields_iqu_and_eb_from_the_real_wmap_maps() -> None:
    from scatterdist.sphere.spin import qu_to_eb

    cat = Catalog.from_fits([str(WMAP), str(WMAP_V)])
    for path, lm in zip((WMAP, WMAP_V), load_maps(cat.refs, NSIDE, fields=("I", "Q", "U"))):
        np.testing.assert_array_equal(lm.data, np.stack(hp.read_map(str(path), field=(0, 1, 2), dtype=np.float64)))
    for path, lm in zip((WMAP, WMAP_V), load_maps(cat.refs, NSIDE, fields=("I", "E", "B"))):
        assert lm.fields == ("I", "E", "B") and lm.data.shape == (3, NPIX) and lm.mask is None
        i, q, u = hp.read_map(str(path), field=(0, 1, 2), dtype=np.float64)
        e, b = qu_to_eb(q, u)
        np.testing.assert_array_equal(lm.data[0], i)
        np.testing.assert_allclose(lm.data[1:], np.stack([e, b]), rtol=0, atol=1e-12)
        assert np.isfinite(lm.data).all() and lm.data[1].std() > 0 and lm.data[2].std() > 0
        # Independent reference: healpy's polarised analysis (iterated to convergence) at the same lmax.
        alm = hp.map2alm([i, q, u], lmax=2 * NSIDE - 1, pol=True, iter=10)
        for k, x in ((1, e), (2, b)):
            ref = hp.alm2map(alm[k], NSIDE, lmax=2 * NSIDE - 1)
            assert np.abs(ref - x).max() < 1e-9 * np.abs(ref).max()
    # The masked W map with fields I, E, B: its UNSEEN pixels mask every field.
    [lm] = load_maps(Catalog.from_fits(str(WMAP_MASKED)).refs, NSIDE, fields=("I", "E", "B"))
    assert lm.sky_fraction == pytest.approx(1 - 4686 / NPIX)
    assert (lm.data[:, lm.mask == 0] == 0).all() and np.isfinite(lm.data).all()
    # E/B of the cut sky: the spin-2 transform of the masked Q, U with the raw weights (default)
    # or, when asked, with weights apodised by `apodize` degrees.
    from scatterdist.sphere.mask import apodize

    _, q, u = np.where(lm.mask > 0, hp.read_map(str(WMAP_MASKED), field=(0, 1, 2), dtype=np.float64), 0.0)
    for deg, weights in ((None, lm.mask), (3.0, apodize(lm.mask, 3.0))):
        [got] = load_maps(Catalog.from_fits(str(WMAP_MASKED)).refs, NSIDE, fields=("E", "B"), apodize=deg)
        e, b = qu_to_eb(q, u, mask=weights)
        np.testing.assert_allclose(got.data, np.where(lm.mask > 0, np.stack([e, b]), 0.0), rtol=0, atol=1e-15)
        np.testing.assert_array_equal(got.mask, lm.mask)  # the mask handed on stays raw


def test_bad_fields_and_masks_are_per_map_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    temp_only = _write(tmp_path / "temperature.fits", rng.standard_normal(NPIX))
    tiny = np.full((3, NPIX), hp.UNSEEN)  # I, Q, U files
    tiny[:, :50] = 1.0  # 50 / 12288 = 0.4% of the sky
    tiny = _write(tmp_path / "tiny.fits", tiny)
    allmasked = _write(tmp_path / "allmasked.fits", np.full((3, NPIX), np.nan))
    inf = rng.standard_normal((3, NPIX))
    inf[2, 3] = np.inf  # in U: E needs it
    inf = _write(tmp_path / "inf.fits", inf)
    paths = [WMAP, temp_only, tiny, allmasked, inf, WMAP_V]
    out = load_maps(Catalog.from_fits([str(p) for p in paths]).refs, NSIDE, fields=("I", "E"))
    assert isinstance(out[0], LoadedMap) and isinstance(out[-1], LoadedMap)
    for got, words in zip(out[1:-1], ["has 1 field(s); field(s) E need(s) Stokes Q and U",
                                      "usable sky fraction 0.004069 is below min_fsky 0.01",
                                      "entirely masked", "1 infinite pixels"]):
        assert isinstance(got, BadMapError), got
        assert words in str(got)
    # The temperature-only file loads with field I; the tiny sky with a lower min_fsky.
    ok = load_maps(Catalog.from_fits([str(temp_only), str(tiny)]).refs, NSIDE, fields="I", min_fsky=0.001)
    assert all(isinstance(m, LoadedMap) for m in ok)
    assert ok[1].sky_fraction == pytest.approx(50 / NPIX)
    # A global mask that removes what the map has left: entirely masked.
    half = np.zeros(NPIX)
    half[50:] = 1
    [gone] = load_maps(Catalog.from_fits(str(tiny)).refs, NSIDE, fields="I", mask=half, min_fsky=0)
    assert isinstance(gone, BadMapError) and "entirely masked" in str(gone)
    with pytest.raises(CatalogError, match="unknown field"):
        load_maps(Catalog.from_fits(str(WMAP)).refs, NSIDE, fields=("T",))
    with pytest.raises(CatalogError, match="repeated"):
        check_fields("I,I")
    assert check_fields("i, e,B") == ("I", "E", "B")


def test_zarr_and_sim_inputs_with_fields(tmp_path: Path) -> None:
    store = tmp_path / "m.zarr"
    maps = np.random.default_rng(9).standard_normal((2, NPIX))
    maps[1, :1000] = hp.UNSEEN
    xr.Dataset({"maps": (("map", "pixel"), maps)}).to_zarr(store, zarr_format=3, consolidated=False)
    cat = Catalog.from_zarr(str(store))
    a, b = load_maps(cat.refs, NSIDE, fields=("I",))
    assert a.mask is None and np.array_equal(a.data[0], maps[0])
    assert b.sky_fraction == pytest.approx(1 - 1000 / NPIX) and (b.data[0, :1000] == 0).all()
    e = load_maps(cat.refs, NSIDE, fields=("E",))
    assert all(isinstance(x, BadMapError) and "one scalar field (I)" in str(x) for x in e)
    sim = Catalog.from_inputs(["sim:kind=gaussian,n=2,nside=32,seed=3"])
    assert not sim.masks_may_differ and cat.masks_may_differ
    s0, _ = load_maps(sim.refs, 32, fields=("I",))
    assert s0.mask is None
    np.testing.assert_array_equal(s0.data[0], load_maps(sim.refs[:1], 32, fields=None)[0])  # legacy form: same map


def test_stack_maps_for_one_transform_call() -> None:
    full, masked = load_maps(Catalog.from_fits([str(WMAP), str(WMAP_MASKED)]).refs, NSIDE, fields=("I", "Q"))
    data, masks, fsky = stack_maps([full, masked])
    assert data.shape == (2, 2, NPIX) and masks.shape == (2, NPIX)
    np.testing.assert_array_equal(masks[0], np.ones(NPIX))  # full sky: weight 1 everywhere
    np.testing.assert_array_equal(masks[1], masked.mask)
    np.testing.assert_allclose(fsky, [1.0, 1 - 4686 / NPIX])
    only_full = stack_maps([full, full])
    assert only_full[1] is None and only_full[0].shape == (2, 2, NPIX)
    [i_only] = load_maps(Catalog.from_fits(str(WMAP)).refs, NSIDE, fields=("I",))
    with pytest.raises(ValueError, match="different fields"):
        stack_maps([full, i_only])
