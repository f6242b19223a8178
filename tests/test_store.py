"""Zarr store: schema, sharding, shard writes, lock, config checks, plain xarray/xdggs opening."""

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
from scatterdist.catalog import Catalog, Entry, MapRef

NSIDE = 32


@pytest.fixture(scope="module")
def sc() -> Scattering:
    return Scattering(nside=NSIDE)


def _catalog(n: int, labels: bool = True) -> Catalog:
    return Catalog([Entry(f"m{i:02d}", f"/data/m{i:02d}.fits", MapRef("fits", f"/data/m{i:02d}.fits"),
                          (i % 3) if labels else None) for i in range(n)], None)


def test_schema_and_sharding(tmp_path: Path, sc: Scattering) -> None:
    path = tmp_path / "c.zarr"
    assert zstore.create(path, _catalog(10), sc, shard_size=4) is True
    ds = xr.open_zarr(path)
    assert dict(ds.sizes) == {"map": 10, "path": sc.n_paths, "pixel": sc.npix_out}
    assert ds.coefficients.dims == ("map", "path", "pixel") and ds.coefficients.dtype == np.float32
    assert ds.status.dtype == np.int8 and (ds.status.values == 0).all()
    assert np.isnan(ds.coefficients.values).all()  # nothing computed yet
    assert ds.label.dtype == np.int8 and ds.label.values.tolist() == [i % 3 for i in range(10)]
    assert ds.source.values[3] == "/data/m03.fits" and ds["map"].values[0] == "m00"
    assert ds.path.values.tolist() == sc.path_labels
    assert ds.order.values.tolist() == [len(p) for p in sc.paths]
    assert ds.j1.values.tolist() == [p[0] if p else -1 for p in sc.paths]
    assert ds.j2.values.tolist() == [p[1] if len(p) > 1 else -1 for p in sc.paths]
    assert ds.pixel.attrs == {"grid_name": "healpix", "level": 3, "indexing_scheme": "ring"}
    for key, value in sc.config().items():
        assert ds.attrs[key] == value
    assert ds.attrs["config_hash"] == zstore.config_hash(sc.config())
    assert json.loads(ds.attrs["scattering_config"]) == sc.config()
    assert ds.attrs["scatterdist_version"] and ds.attrs["created"].endswith("+00:00")
    # Sharding: inner chunk one map, shard K maps; status/error chunked by shard.
    group = zarr.open_group(path, mode="r")
    coeffs = group["coefficients"]
    assert coeffs.chunks == (1, sc.n_paths, sc.npix_out)
    assert coeffs.shards == (4, sc.n_paths, sc.npix_out)
    assert group["status"].chunks == (4,) and group["error"].chunks == (4,)
    # The lazy view: dask chunks are the shards (the last one short).
    view = zstore.open_coefficients(path)
    assert view.coefficients.chunks[0] == (4, 4, 2)
    # No label variable when the catalog has none.
    zstore.create(tmp_path / "nolabel.zarr", _catalog(3, labels=False), sc, shard_size=2)
    assert "label" not in xr.open_zarr(tmp_path / "nolabel.zarr")


def test_write_shard(tmp_path: Path, sc: Scattering) -> None:
    path = tmp_path / "c.zarr"
    zstore.create(path, _catalog(10), sc, shard_size=4)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2, sc.n_paths, sc.npix_out)).astype(np.float32)
    data[1] = np.nan
    zstore.write_shard(path, 2, data, np.array([1, -1], np.int8), ["", "boom: bad map"])
    ds = zstore.open_coefficients(path)
    np.testing.assert_array_equal(ds.coefficients.values[8:], data)
    assert np.isnan(ds.coefficients.values[:8]).all()  # other shards untouched
    assert ds.status.values.tolist() == [0] * 8 + [1, -1]
    assert ds.error.values.tolist()[8:] == ["", "boom: bad map"]
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
    zstore.create(path, _catalog(5), sc, shard_size=2)
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
    assert got["dims"] == {"map": 5, "path": sc.n_paths, "pixel": sc.npix_out}
    assert got["vars"]["coefficients"][0] == ["map", "path", "pixel"]
    assert got["vars"]["coefficients"][1] == "float32" and got["vars"]["status"] == [["map"], "int8"]
    assert {"error", "source", "label"} <= set(got["vars"])
    assert got["coords"] == sorted(["map", "path", "order", "j1", "j2", "pixel", "cell_ids"])
    assert got["pixel_attrs"] == {"grid_name": "healpix", "level": 3, "indexing_scheme": "ring"}
    assert {"config_hash", "scatterdist_version", "created", "nside", "L", "J0", "lam", "depth",
            "oversample", "analysis", "shard_size"} <= set(got["attrs"])
