import healpy as hp
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from scatterdist import Scattering
from scatterdist.inputs import Catalog
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


def test_lowpass_on_a_cut_sky_is_a_normalised_convolution(red_maps):
    """Masked pixels never matter, a constant is recovered where the coverage is high enough,
    NaN below min_coverage; an all-ones mask is the full-sky transform."""
    from scatterdist.sims.observe import galactic_cut_mask

    maps, _ = red_maps
    lp = LowPass(32, min_coverage=0.7)
    w = galactic_cut_mask(32, 20)
    np.testing.assert_array_equal(lp(maps, mask=np.ones_like(w)), lp(maps))
    out, cov = lp(maps, mask=w, return_coverage=True)
    assert out.shape == cov.shape == (4, 1, 768)
    np.testing.assert_allclose(cov[0], lp.coverage(w), atol=1e-12)
    assert 0.2 < np.isnan(out).mean() < 0.5 and np.isnan(out).sum(-1).min() > 0
    assert np.array_equal(np.isnan(out[0]), cov[0] < 0.7)
    junk = maps.copy()
    junk[:, w == 0] = 1e6
    np.testing.assert_allclose(lp(junk, mask=w), out, rtol=1e-12, atol=1e-9)
    unseen = maps.copy()
    unseen[:, w == 0] = hp.UNSEEN
    np.testing.assert_allclose(lp(unseen), out, rtol=1e-12, atol=1e-9)  # UNSEEN pixels are the mask
    const = lp(np.full(12 * 32**2, 3.0), mask=w)
    assert np.nanmax(np.abs(const - 3.0)) < 1e-10
    with pytest.raises(ValueError, match="min_coverage"):
        LowPass(32, min_coverage=0)


def test_pipeline_runs_the_lowpass_transform_on_masked_skies(tmp_path):
    """The survey-condition study's low-resolution store: a Galactic cut through the pipeline."""
    spec = SimulationSpec(kind="mixed", nside=32, n=4, seed=3, alpha=0.5, galactic_cut=20)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        summary = scatter(Catalog.from_simulation(spec), tmp_path / "low.zarr", LowPass(32).config(),
                          client=client, shard_size=2, progress=False)
    assert summary.ok == 4, summary.failures
    ds = xr.open_zarr(tmp_path / "low.zarr", consolidated=False)
    lp = LowPass(32)
    expected, cov = lp(np.stack([spec.generate(i) for i in range(4)]), return_coverage=True)
    got = ds.coefficients.isel(field=0).values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-5, atol=1e-4)
    assert float(ds.sky_fraction.min()) < 0.9
    np.testing.assert_allclose(np.broadcast_to(ds.coverage.values, cov.shape), cov, atol=1e-6)
