"""Directional wavelets (N = 4) in the service: scatter CLI on a real LocalCluster writes N = 4 stores
(scattering; covariance on a cut sky) with the orientation_harmonic coordinate, and the trainer trains
on one. (Cut-sky scattering with N = 4 through the same store code: tests/test_directional_masked.py for
the transform, tests/test_pipeline.py for --mask.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from scatterdist import Scattering, ScatteringCovariance
from scatterdist.inputs import parse_sim_spec

SIM = "sim:kind=mixed,n=8,nside=16,seed=5,alpha=1.0"
REPO = Path(__file__).resolve().parents[1]


def _scatter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scatterdist", "scatter", SIM, *args, "--workers", "2",
                           "--no-progress", "--N", "4", "--shard-size", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def _maps() -> np.ndarray:
    spec = parse_sim_spec(SIM)
    return np.stack([spec.generate(i) for i in range(spec.n)])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dir") / "s.zarr"
    proc = _scatter("--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_scattering_store_holds_the_directional_transform(store: Path) -> None:
    ds = xr.open_zarr(store, consolidated=False)
    sc = Scattering(16, N=4)
    assert [str(p) for p in ds["path"].values] == sc.path_labels
    np.testing.assert_array_equal(ds["orientation_harmonic"].values, sc.path_coords()["orientation_harmonic"])
    assert set(ds["orientation_harmonic"].values) == {0, 1}
    assert (ds.status.values == 1).all()
    np.testing.assert_allclose(ds.coefficients.values[:, 0], sc(_maps()).astype(np.float32), rtol=1e-5, atol=1e-6)


def test_trainer_trains_and_evaluates_on_an_n4_store(store: Path, tmp_path: Path) -> None:
    from scatterdist.train import TrainConfig, evaluate, train

    history = train(TrainConfig(store=str(store), out=str(tmp_path / "run"), epochs=1, batch_size=4, hidden=4,
                                device="cpu", progress=False, val_fraction=0.25, test_fraction=0.25))
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    result = evaluate(str(tmp_path / "run"), str(store), progress=False)
    assert result["n_maps"] > 0


def test_masked_covariance_store_with_n4(tmp_path: Path) -> None:
    """--statistic covariance --mask --N 4: the store names every statistic with its orientation harmonic,
    and its coverage and values are the cut-sky transform's."""
    import healpy as hp

    theta, _ = hp.pix2ang(16, np.arange(12 * 16**2))
    mask = (np.abs(90.0 - np.degrees(theta)) > 20).astype(float)
    mask_path = tmp_path / "cut.fits"
    hp.write_map(str(mask_path), mask, dtype=np.float64)
    out = tmp_path / "c.zarr"
    proc = _scatter("--output", str(out), "--statistic", "covariance", "--mask", str(mask_path))
    assert proc.returncode == 0, proc.stderr
    ds = xr.open_zarr(out, consolidated=False)
    cov = ScatteringCovariance(16, N=4)
    assert ds.attrs["transform"] == "covariance"
    assert [str(p) for p in ds["path"].values] == cov.path_labels
    np.testing.assert_array_equal(ds["orientation_harmonic"].values, cov.path_coords()["orientation_harmonic"])
    np.testing.assert_allclose(ds.coverage.values, cov.coverage(mask), rtol=1e-6, atol=1e-7)
    expected = cov(_maps(), mask=mask)
    got = ds.coefficients.values[:, 0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-5, atol=1e-6 * np.nanmax(np.abs(expected)))
