"""Catalog: inputs (FITS paths, globs, lists, Zarr, xarray, simulation specs), labels, loading."""

from __future__ import annotations

import os
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
import xarray as xr

from scatterdist.catalog import BadMapError, Catalog, CatalogError, load_maps, parse_sim_spec

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
    np.testing.assert_array_equal(loaded, ring)


def test_real_wmap_maps_load(tmp_path: Path) -> None:
    cat = Catalog.from_fits([str(WMAP), str(WMAP_MASKED)])
    good, masked = load_maps(cat.refs, NSIDE)
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
    paths = [fits_dir / "sky0.fits", truncated, text, tmp_path / "missing.fits", wrong, nan, unseen]
    out = load_maps(Catalog.from_fits([str(p) for p in paths]).refs, NSIDE)
    assert isinstance(out[0], np.ndarray)
    expected = ["truncated FITS file", "unreadable FITS", "missing file", "nside 16", "2 NaN or infinite",
                "all-UNSEEN"]
    for got, words in zip(out[1:], expected):
        assert isinstance(got, BadMapError), got
        assert words in str(got)


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
    np.testing.assert_array_equal(np.stack(loaded), maps[[4, 1, 2]])

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
        np.testing.assert_array_equal(m, spec.generate(i))
    with pytest.raises(CatalogError, match="KEY=VALUE"):
        parse_sim_spec("sim:kind=mixed,oops")


def test_sources_are_absolute() -> None:
    # The catalog keeps absolute sources so tasks on other machines/cwds find the files.
    cat = Catalog.from_fits(os.path.relpath(WMAP))
    assert os.path.isabs(cat.sources[0]) and os.path.isabs(cat.refs[0].where)
