"""The covariance statistic in the service: scatter CLI on a LocalCluster, store coords, resume, trainer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from scatterdist import ScatteringCovariance
from scatterdist.inputs import parse_sim_spec

SIM = "sim:kind=mixed,n=12,nside=16,seed=3,alpha=1.0"
REPO = Path(__file__).resolve().parents[1]


def _scatter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scatterdist", "scatter", SIM, *args, "--workers", "2",
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cov") / "c.zarr"
    proc = _scatter("--output", str(out), "--statistic", "covariance", "--oversample", "2", "--shard-size", "4")
    assert proc.returncode == 0, proc.stderr
    return out


def test_store_names_each_coefficient_and_holds_the_transform(store: Path) -> None:
    ds = xr.open_zarr(store, consolidated=False)
    cov = ScatteringCovariance(16, oversample=2)
    assert ds.attrs["transform"] == "covariance"
    assert [str(p) for p in ds["path"].values] == cov.path_labels
    coords = cov.path_coords()
    for name in ("kind", "j1", "j2", "j3"):
        assert [str(v) if name == "kind" else int(v) for v in ds[name].values] == list(
            coords[name] if name != "kind" else map(str, coords[name])), name
    assert (ds.status.values == 1).all()
    spec = parse_sim_spec(SIM)
    maps = np.stack([spec.generate(i) for i in range(spec.n)])
    np.testing.assert_allclose(ds.coefficients.values[:, 0], cov(maps).astype(np.float32), rtol=1e-5, atol=1e-6)


def test_resume_skips_and_another_statistic_is_refused(store: Path) -> None:
    before = xr.open_zarr(store, consolidated=False).coefficients.values
    again = _scatter("--output", str(store), "--statistic", "covariance", "--oversample", "2", "--shard-size", "4")
    assert again.returncode == 0, again.stderr
    assert "computed 0 shard(s)" in again.stdout + again.stderr
    other = _scatter("--output", str(store), "--oversample", "2", "--shard-size", "4")
    assert other.returncode != 0 and "configuration" in other.stderr
    np.testing.assert_array_equal(xr.open_zarr(store, consolidated=False).coefficients.values, before)
    depth = _scatter("--output", str(store) + "-x", "--statistic", "covariance", "--depth", "1")
    assert depth.returncode != 0 and "--depth" in depth.stderr


def test_trainer_and_study_read_the_store(store: Path, tmp_path: Path) -> None:
    from scatterdist.experiments.cmb import store_invariants
    from scatterdist.train import TrainConfig, evaluate, train

    history = train(TrainConfig(store=str(store), out=str(tmp_path / "run"), epochs=1, batch_size=4, hidden=4,
                                device="cpu", progress=False, val_fraction=0.25, test_fraction=0.25))
    assert len(history) == 1
    result = evaluate(str(tmp_path / "run"), str(store), progress=False)
    assert result["n_maps"] > 0
    feats, labels, ids, kinds = store_invariants(str(store))
    assert feats.shape == (12, ScatteringCovariance(16).n_paths)
    assert set(kinds) == {"mean", "S1", "S2", "S3", "S4"}
