"""Zarr store: schema (fields, coverage, sky fraction), sharding, shard writes, lock, config
checks, plain xarray/xdggs opening, the legacy schema without fields."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from scatterdist import Scattering
from scatterdist import store as zstore
from scatterdist.inputs import Catalog, Entry, MapRef

NSIDE = 32


@pytest.fixture(scope="module")
def sc() -> Scattering:
    return Scattering(nside=NSIDE)


def _catalog(n: int, labels: bool = True) -> Catalog:
    return Catalog([Entry(f"m{i:02d}", f"/data/m{i:02d}.fits", MapRef("fits", f"/data/m{i:02d}.fits"),
                          (i % 3) if labels else None) for i in range(n)], None)


def _sim_catalog(n: int, masks: list[dict] | None = None) -> Catalog:
    """Simulation entries; ``masks[i]`` holds entry i's mask settings (mask, galactic_cut)."""
    entries = []
    for i in range(n):
        spec = {"kind": "gaussian", "nside": NSIDE, "n": n, **((masks or [{}] * n)[i])}
        entries.append(Entry(f"s{i}", f"sim {i}", MapRef("sim", json.dumps(spec, sort_keys=True), i), 0))
    return Catalog(entries, NSIDE)


def test_schema_and_sharding(tmp_path: Path, sc: Scattering) -> None:
    path = tmp_path / "c.zarr"
    assert zstore.create(path, _catalog(10), sc, shard_size=4, fields=("I", "E", "B")) is True
    ds = xr.open_zarr(path)
    assert dict(ds.sizes) == {"map": 10, "field": 3, "path": sc.n_paths, "pixel": sc.npix_out}
    assert ds.coefficients.dims == ("map", "field", "path", "pixel") and ds.coefficients.dtype == np.float32
    assert ds.field.values.tolist() == ["I", "E", "B"]
    assert ds.sky_fraction.dims == ("map",) and ds.sky_fraction.dtype == np.float32
    assert np.isnan(ds.sky_fraction.values).all()
    # FITS inputs can carry their own masks: coverage per map, NaN until computed.
    assert ds.coverage.dims == ("map", "path", "pixel") and ds.attrs["coverage_layout"] == "per_map"
    assert np.isnan(ds.coverage.values).all()
    assert ds.attrs["fields"] == ["I", "E", "B"] and ds.attrs["mask"] == "" and ds.attrs["min_fsky"] == 0.01
    assert ds.status.dtype == np.int8 and (ds.status.values == 0).all()
    assert np.isnan(ds.coefficients.values).all()  # nothing computed yet
    assert ds.label.dtype == np.int8 and ds.label.values.tolist() == [i % 3 for i in range(10)]
    assert ds.source.values[3] == "/data/m03.fits" and ds["map"].values[0] == "m00"
    assert ds.path.values.tolist() == sc.path_labels
    assert ds.order.values.tolist() == [len(p) for p in sc.paths]
    assert ds.j1.values.tolist() == [p[0] if p else -1 for p in sc.paths]
    assert ds.j2.values.tolist() == [p[1] if len(p) > 1 else -1 for p in sc.paths]
    assert ds.pixel.attrs == {"grid_name": "healpix", "level": 3, "indexing_scheme": "ring"}
    assert ds.kind.dims == ("path",) and set(ds.kind.values) == {"modulus"}  # the transform's extra coords
    for key, value in sc.config().items():
        assert ds.attrs[key] == value
    assert ds.attrs["config_hash"] != zstore.config_hash(sc.config())  # covers the data settings too
    assert json.loads(ds.attrs["scattering_config"]) == sc.config()
    assert json.loads(ds.attrs["data_config"])["fields"] == ["I", "E", "B"]
    assert ds.attrs["scatterdist_version"] and ds.attrs["created"].endswith("+00:00")
    # Sharding: inner chunk one map, shard K maps; status/error/sky_fraction chunked by shard.
    group = zarr.open_group(path, mode="r")
    coeffs = group["coefficients"]
    assert coeffs.chunks == (1, 3, sc.n_paths, sc.npix_out)
    assert coeffs.shards == (4, 3, sc.n_paths, sc.npix_out)
    assert group["coverage"].chunks == (1, sc.n_paths, sc.npix_out)
    assert group["coverage"].shards == (4, sc.n_paths, sc.npix_out)
    assert group["status"].chunks == (4,) and group["error"].chunks == (4,)
    assert group["sky_fraction"].chunks == (4,)
    lay = zstore.layout(path)
    assert lay.fields == ("I", "E", "B") and lay.n_fields == 3 and lay.per_map_coverage
    # The lazy view: dask chunks are the shards (the last one short).
    view = zstore.open_coefficients(path)
    assert view.coefficients.chunks[0] == (4, 4, 2)
    # No label variable when the catalog has none.
    zstore.create(tmp_path / "nolabel.zarr", _catalog(3, labels=False), sc, shard_size=2, fields="I")
    assert "label" not in xr.open_zarr(tmp_path / "nolabel.zarr")
    with pytest.raises(ValueError, match="unknown field"):
        zstore.create(tmp_path / "bad.zarr", _catalog(3), sc, shard_size=2, fields=("I", "T"))


def test_legacy_schema_without_fields(tmp_path: Path, sc: Scattering) -> None:
    # fields=None and mask=None: the schema before fields existed (what old stores hold).
    path = tmp_path / "old.zarr"
    zstore.create(path, _catalog(5), sc, shard_size=2, fields=None)
    ds = xr.open_zarr(path)
    assert ds.coefficients.dims == ("map", "path", "pixel")
    assert "field" not in ds.dims and "coverage" not in ds and "sky_fraction" not in ds
    assert ds.attrs["config_hash"] == zstore.config_hash(sc.config())
    lay = zstore.layout(path)
    assert lay.fields == () and lay.n_fields == 1 and lay.coverage_layout == ""
    data = np.random.default_rng(1).standard_normal((2, sc.n_paths, sc.npix_out)).astype(np.float32)
    zstore.write_shard(path, 0, data, np.ones(2, np.int8), ["", ""])
    zstore.write_shard(path, 1, data[:, None], np.ones(2, np.int8), ["", ""])  # (k, 1, P, N) too
    np.testing.assert_array_equal(zstore.read_rows(path, 0, 4), np.concatenate([data, data]))
    shard = zstore.read_shard(path, 1)
    np.testing.assert_array_equal(shard.coefficients, data[:, None])
    assert shard.coverage is None and shard.sky_fraction is None
    # A request with fields cannot resume it: refused with the reason.
    with pytest.raises(zstore.StoreConfigError, match="field dimension"):
        zstore.create(path, _catalog(5), sc, shard_size=2, fields=("I",))


def test_coverage_layout_rule(tmp_path: Path, sc: Scattering) -> None:
    # Simulations sharing one mask setting (none, or the same cut): one coverage for all.
    for masks in (None, [{"galactic_cut": 20.0}] * 3):
        cat = _sim_catalog(3, masks)
        assert not cat.masks_may_differ and zstore.coverage_layout(cat) == "shared"
    # Different sim masks, or any input that can carry its own mask: per map.
    assert _sim_catalog(2, [{"galactic_cut": 20.0}, {}]).masks_may_differ
    assert zstore.coverage_layout(_catalog(2)) == "per_map"
    assert zstore.coverage_layout(_sim_catalog(2) + _catalog(1)) == "per_map"
    assert zstore.coverage_layout(_catalog(2), per_map_coverage=False) == "shared"
    path = tmp_path / "shared.zarr"
    zstore.create(path, _sim_catalog(5), sc, shard_size=2, fields=("I",))
    ds = xr.open_zarr(path)
    assert ds.coverage.dims == ("path", "pixel") and ds.attrs["coverage_layout"] == "shared"
    cov = np.random.default_rng(2).uniform(size=(sc.n_paths, sc.npix_out)).astype(np.float32)
    zstore.write_coverage(path, cov)
    np.testing.assert_array_equal(xr.open_zarr(path).coverage.values, cov)
    with pytest.raises(zstore.StoreError, match=r"\[0, 1\]"):
        zstore.write_coverage(path, cov + 1)
    coeffs = np.zeros((2, 1, sc.n_paths, sc.npix_out), np.float32)
    zstore.write_shard(path, 0, coeffs, np.ones(2, np.int8), ["", ""], coverage=cov,
                       sky_fraction=np.array([0.66, 0.66]))
    shard = zstore.read_shard(path, 0)
    np.testing.assert_array_equal(shard.coverage, cov)
    np.testing.assert_allclose(shard.sky_fraction, 0.66)
    with pytest.raises(zstore.StoreError, match="coverage of shape"):
        zstore.write_shard(path, 1, coeffs, np.ones(2, np.int8), ["", ""], coverage=cov[None].repeat(2, 0))
    # Masked simulations need the transform's coverage: None (full sky) is refused.
    cut = tmp_path / "cut.zarr"
    zstore.create(cut, _sim_catalog(2, [{"galactic_cut": 20.0}] * 2), sc, shard_size=2, fields=("I",))
    assert xr.open_zarr(cut).attrs["masked_simulations"] is True and not xr.open_zarr(path).attrs["masked_simulations"]
    with pytest.raises(zstore.StoreError, match="masked simulations"):
        zstore.write_shard(cut, 0, coeffs, np.ones(2, np.int8), ["", ""])
    per_map = tmp_path / "per_map.zarr"
    zstore.create(per_map, _catalog(3), sc, shard_size=3, fields=("I",))
    with pytest.raises(zstore.StoreError, match="no shared coverage"):
        zstore.write_coverage(per_map, cov)


def test_write_shard(tmp_path: Path, sc: Scattering) -> None:
    path = tmp_path / "c.zarr"
    zstore.create(path, _catalog(10), sc, shard_size=4, fields=("I", "E"))
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2, 2, sc.n_paths, sc.npix_out)).astype(np.float32)
    data[1] = np.nan
    cov = rng.uniform(size=(2, sc.n_paths, sc.npix_out)).astype(np.float32)
    cov[1] = np.nan
    zstore.write_shard(path, 2, data, np.array([1, -1], np.int8), ["", "boom: bad map"],
                       coverage=cov, sky_fraction=np.array([0.7, np.nan]))
    ds = zstore.open_coefficients(path)
    np.testing.assert_array_equal(ds.coefficients.values[8:], data)
    np.testing.assert_array_equal(ds.coverage.values[8:], cov)
    np.testing.assert_allclose(ds.sky_fraction.values[8:], [0.7, np.nan])
    assert np.isnan(ds.coefficients.values[:8]).all() and np.isnan(ds.coverage.values[:8]).all()
    assert ds.status.values.tolist() == [0] * 8 + [1, -1]
    assert ds.error.values.tolist()[8:] == ["", "boom: bad map"]
    shard = zstore.read_shard(path, 2)
    np.testing.assert_array_equal(shard.coefficients, data)
    np.testing.assert_array_equal(shard.coverage, cov)
    assert shard.status.tolist() == [1, -1] and shard.errors == ["", "boom: bad map"]
    # coverage=None: the maps were transformed full sky (ok rows 1, failed rows NaN).
    zstore.write_shard(path, 0, np.zeros((4, 2, sc.n_paths, sc.npix_out)), np.array([1, 1, -1, 1], np.int8),
                       ["", "", "bad", ""])
    ds = zstore.open_coefficients(path)
    assert (ds.coverage.values[[0, 1, 3]] == 1).all() and np.isnan(ds.coverage.values[2]).all()
    np.testing.assert_array_equal(ds.sky_fraction.values[:4], [1, 1, np.nan, 1])
    with pytest.raises(zstore.StoreError, match=r"shape \(2, 2, 7, 768\)"):
        zstore.write_shard(path, 2, data[:, 0], np.array([1, 1], np.int8), ["", ""])  # F=2 needs 4-d
    with pytest.raises(zstore.StoreError, match="sky fractions"):
        zstore.write_shard(path, 2, data, np.array([1, 1], np.int8), ["", ""], coverage=cov,
                           sky_fraction=np.ones(3))
    # A single-field store takes (k, P, N) coefficients as well (F = 1).
    one = tmp_path / "one.zarr"
    zstore.create(one, _catalog(2), sc, shard_size=2, fields=("I",))
    zstore.write_shard(one, 0, data[:, 0], np.ones(2, np.int8), ["", ""])
    np.testing.assert_array_equal(zstore.read_rows(one, 0, 2), data[:, :1])
    with pytest.raises(zstore.StoreError, match="shape"):
        zstore.write_shard(path, 0, data, np.array([1, 1], np.int8), ["", ""])
    with pytest.raises(zstore.StoreError, match="out of range"):
        zstore.write_shard(path, 3, data, np.array([1, 1], np.int8), ["", ""])
    with pytest.raises(zstore.StoreError, match="not a scatterdist store"):
        zstore.layout(tmp_path / "nothing.zarr")


def test_resume_checks(tmp_path: Path, sc: Scattering) -> None:
    path = tmp_path / "c.zarr"
    zstore.create(path, _catalog(6), sc, shard_size=2)
    zstore.write_shard(path, 0, np.ones((2, sc.n_paths, sc.npix_out), np.float32),
                       np.ones(2, np.int8), ["", ""])
    assert zstore.layout(path).fields == ("I",)  # the default: one field, I
    # Same configuration: the existing store is kept for resuming.
    assert zstore.create(path, _catalog(6), sc, shard_size=2) is False
    assert zstore.read_status(path).tolist() == [1, 1, 0, 0, 0, 0]
    other = Scattering(nside=NSIDE, J0=3)
    with pytest.raises(zstore.StoreConfigError, match=r"J0.*\(4, 3\)"):
        zstore.create(path, _catalog(6), other, shard_size=2)
    with pytest.raises(zstore.StoreConfigError, match="another catalog"):
        zstore.create(path, _catalog(7), sc, shard_size=2)
    with pytest.raises(zstore.StoreConfigError, match="shard size 2"):
        zstore.create(path, _catalog(6), sc, shard_size=3)
    # Nothing was damaged by the refusals.
    assert zstore.read_status(path).tolist() == [1, 1, 0, 0, 0, 0]
    assert (zstore.read_rows(path, 0, 2) == 1).all()
    # Execution details are not part of the configuration.
    assert zstore.config_hash({**sc.config(), "nthreads": 7, "backend": "torch"}) == \
        zstore.config_hash(sc.config())
    # overwrite starts again; it refuses to delete what is not a Zarr store.
    assert zstore.create(path, _catalog(6), other, shard_size=3, overwrite=True) is True
    assert zstore.read_status(path).tolist() == [0] * 6
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(zstore.StoreError, match="not a Zarr store"):
        zstore.create(tmp_path / "precious", _catalog(6), sc, shard_size=2, overwrite=True)
    assert (tmp_path / "precious" / "thesis.tex").exists()


def test_resume_refuses_other_fields_mask_or_min_fsky(tmp_path: Path, sc: Scattering) -> None:
    mask = tmp_path / "mask.fits"
    mask.write_bytes(b"mask one")
    path = tmp_path / "c.zarr"
    settings = {"fields": ("I", "E", "B"), "mask": mask, "min_fsky": 0.05}
    zstore.create(path, _catalog(4), sc, shard_size=2, **settings)
    ds = xr.open_zarr(path)
    assert ds.attrs["mask"] == str(mask) and len(ds.attrs["mask_sha256"]) == 64
    assert ds.coverage.dims == ("map", "path", "pixel")
    assert zstore.create(path, _catalog(4), sc, shard_size=2, **settings) is False
    # The same mask bytes elsewhere are the same mask.
    moved = tmp_path / "moved.fits"
    moved.write_bytes(mask.read_bytes())
    assert zstore.create(path, _catalog(4), sc, shard_size=2, **{**settings, "mask": moved}) is False
    for change, words in [({"fields": ("I",)}, r"fields.*\['I', 'E', 'B'\], \['I'\]"),
                          ({"min_fsky": 0.01}, r"min_fsky.*\(0.05, 0.01\)"),
                          ({"mask": None}, "mask_sha256")]:
        with pytest.raises(zstore.StoreConfigError, match=words):
            zstore.create(path, _catalog(4), sc, shard_size=2, **{**settings, **change})
    mask.write_bytes(b"mask two")  # edited in place: another mask
    with pytest.raises(zstore.StoreConfigError, match="mask_sha256"):
        zstore.create(path, _catalog(4), sc, shard_size=2, **settings)
    # A store with a global mask needs the transform's coverage.
    with pytest.raises(zstore.StoreError, match="pass the transform's coverage"):
        zstore.write_shard(path, 0, np.zeros((2, 3, sc.n_paths, sc.npix_out)), np.ones(2, np.int8), ["", ""])


def test_lock(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    with zstore.StoreLock(path) as lock:
        owner = json.loads(Path(lock.path).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(zstore.StoreLockedError, match=f"pid {os.getpid()}"):
            zstore.StoreLock(path).acquire()
    assert not Path(lock.path).exists()
    # A lock left by a dead process on this host is stale: taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Path(lock.path).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": "x"}))
    with zstore.StoreLock(path):
        assert json.loads(Path(lock.path).read_text())["pid"] == os.getpid()
    # A lock from another host cannot be checked: refused.
    Path(lock.path).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "time": "x"}))
    with pytest.raises(zstore.StoreLockedError, match="elsewhere.example"):
        zstore.StoreLock(path).acquire()
    assert json.loads(Path(lock.path).read_text())["host"] == "elsewhere.example"


def test_xdggs_decodes_the_pixel_coordinate(tmp_path: Path, sc: Scattering) -> None:
    xdggs = pytest.importorskip("xdggs")
    path = tmp_path / "c.zarr"
    zstore.create(path, _catalog(2), sc, shard_size=2)
    ds = zstore.open_coefficients(path)
    for decoded in (xdggs.decode(ds), xdggs.decode(ds, name="pixel")):
        info = decoded.dggs.grid_info
        assert info.level == 3 and info.nside == sc.nside_out and info.indexing_scheme == "ring"
    centers = xdggs.decode(ds).dggs.cell_centers()
    import healpy as hp

    lon, lat = hp.pix2ang(sc.nside_out, np.arange(sc.npix_out), lonlat=True)
    np.testing.assert_allclose(centers["longitude"].values % 360, lon, atol=1e-9)
    np.testing.assert_allclose(centers["latitude"].values, lat, atol=1e-9)


def test_plain_xarray_in_a_fresh_process(tmp_path: Path, sc: Scattering) -> None:
    path = tmp_path / "c.zarr"
    zstore.create(path, _catalog(5), sc, shard_size=2, fields=("I", "E", "B"))
    code = textwrap.dedent(f"""
        import json, sys, warnings
        warnings.simplefilter("error")
        import xarray as xr
        ds = xr.open_zarr({str(path)!r})
        assert "scatterdist" not in sys.modules, "scatterdist was imported"
        print(json.dumps({{
            "dims": {{k: int(v) for k, v in ds.sizes.items()}},
            "vars": {{k: [list(v.dims), str(v.dtype)] for k, v in ds.data_vars.items()}},
            "coords": sorted(ds.coords),
            "pixel_attrs": ds.pixel.attrs,
            "attrs": sorted(ds.attrs),
        }}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["dims"] == {"map": 5, "field": 3, "path": sc.n_paths, "pixel": sc.npix_out}
    assert got["vars"]["coefficients"][0] == ["map", "field", "path", "pixel"]
    assert got["vars"]["coefficients"][1] == "float32" and got["vars"]["status"] == [["map"], "int8"]
    assert got["vars"]["sky_fraction"] == [["map"], "float32"]
    assert got["vars"]["coverage"] == [["map", "path", "pixel"], "float32"]
    assert {"error", "source", "label"} <= set(got["vars"])
    assert got["coords"] == sorted(["map", "field", "path", "order", "j1", "j2", "kind", "exponent",
                                    "pixel", "cell_ids"])
    assert got["pixel_attrs"] == {"grid_name": "healpix", "level": 3, "indexing_scheme": "ring"}
    assert {"config_hash", "scatterdist_version", "created", "nside", "L", "J0", "lam", "depth",
            "oversample", "analysis", "shard_size", "fields", "mask", "min_fsky",
            "coverage_layout"} <= set(got["attrs"])


def test_mask_summary(tmp_path: Path, sc: Scattering) -> None:
    path = tmp_path / "c.zarr"
    zstore.create(path, _catalog(4), sc, shard_size=2, fields=("I", "E", "B"))
    empty = zstore.mask_summary(path)
    assert empty["fields"] == ["I", "E", "B"] and empty["coverage_layout"] == "per_map"
    assert empty["sky_fraction"] is None and empty["coverage"] is None
    cov = np.ones((2, sc.n_paths, sc.npix_out), np.float32)
    cov[1, 0, : sc.npix_out // 4] = 0.5  # a quarter of path S0's pixels of map 1 below the threshold
    zstore.write_shard(path, 0, np.zeros((2, 3, sc.n_paths, sc.npix_out)), np.ones(2, np.int8), ["", ""],
                       coverage=cov, sky_fraction=np.array([1.0, 0.6]))
    got = zstore.mask_summary(path)
    assert got["sky_fraction"] == {"n": 2, "min": pytest.approx(0.6), "median": pytest.approx(0.8), "max": 1.0}
    c = got["coverage"]
    assert c["min_coverage"] == sc.config().get("min_coverage", 0.9) > 0.5  # the store's threshold
    assert c["per_path"]["S0"] == pytest.approx(1 - 0.25 / 2)
    assert c["per_path"][sc.path_labels[1]] == 1.0
    assert c["covered"] == pytest.approx(1 - 0.25 / 2 / sc.n_paths)
    assert c["mean"] == pytest.approx(1 - 0.5 * 0.25 / 2 / sc.n_paths)
    assert zstore.mask_summary(path, min_coverage=0.4)["coverage"]["covered"] == 1.0
    zstore.create(tmp_path / "old.zarr", _catalog(2), sc, shard_size=2, fields=None)
    assert zstore.mask_summary(tmp_path / "old.zarr")["fields"] == ["I"]


def test_extra_path_coords_of_the_transform(tmp_path: Path) -> None:
    signed = Scattering(nside=NSIDE, signed=True)
    zstore.create(tmp_path / "s.zarr", _catalog(2), signed, shard_size=2)
    ds = xr.open_zarr(tmp_path / "s.zarr")
    coords = signed.path_coords()
    assert ds.path.values.tolist() == list(coords["label"])
    assert ds.kind.values.tolist() == list(coords["kind"]) and "signed" in ds.kind.values
    np.testing.assert_array_equal(ds.exponent.values, coords["exponent"])
    np.testing.assert_array_equal(ds.order.values, coords["order"])
    # A transform without kind/exponent (LowPass) still gets them: plain modulus-like paths.
    from scatterdist.transforms import LowPass

    zstore.create(tmp_path / "low.zarr", _catalog(2), LowPass(NSIDE), shard_size=2)
    low = xr.open_zarr(tmp_path / "low.zarr")
    assert low.kind.values.tolist() == ["modulus"] and low.exponent.values.tolist() == [1.0]
