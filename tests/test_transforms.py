import healpy as hp
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from scatterdist import Scattering
from scatterdist.catalog import Catalog
from scatterdist.pipeline import scatter
from scatterdist.sims import SimulationSpec
from scatterdist.transforms import LowPass, build_transform


def test_lowpass_matches_healpy(red_maps):
    maps, _ = red_maps
    lp = LowPass(32)
    sc = Scattering(32)
    assert (lp.L0, lp.nside_out, lp.npix_out) == (sc.L0, sc.nside_out, sc.npix_out)
    out = lp(maps)
    assert out.shape == (4, 1, 768)
    alm = hp.map2alm(maps[1], lmax=15, iter=0, use_weights=False)
    np.testing.assert_allclose(out[1, 0], hp.alm2map(alm, 8, lmax=15), atol=1e-12)
    assert lp(maps[1]).shape == (1, 768)


def test_build_transform():
    assert isinstance(build_transform({"nside": 16}), Scattering)
    lp = build_transform(LowPass(16).config())
    assert isinstance(lp, LowPass) and lp.config() == LowPass(16).config()
    with pytest.raises(ValueError, match="unknown transform"):
        build_transform({"transform": "fft", "nside": 16})


def test_pipeline_runs_the_lowpass_transform(tmp_path):
    spec = SimulationSpec(kind="mixed", nside=32, n=6, seed=3, alpha=0.5)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        summary = scatter(Catalog.from_simulation(spec), tmp_path / "low.zarr", LowPass(32).config(),
                          client=client, shard_size=3, progress=False)
    assert summary.ok == 6
    ds = xr.open_zarr(tmp_path / "low.zarr", consolidated=False)
    assert ds.sizes["path"] == 1 and ds.sizes["pixel"] == 768 and list(ds.field.values) == ["I"]
    assert list(ds.label.values) == [0, 1, 0, 1, 0, 1]
    expected = LowPass(32)(np.stack([spec.generate(i) for i in range(6)]))
    np.testing.assert_allclose(ds.coefficients.isel(field=0).values, expected.astype(np.float32), rtol=1e-6, atol=1e-4)
