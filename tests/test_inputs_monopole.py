"""Issue 17 row 14 / Build 4: the monopole is removed exactly in pixel space before the wavelet
analysis and restored in order 0, so the default quadrature analysis and lsq agree on offsets.
Before: a constant map gave order-1 invariants at 0.1-0.3% of its value, and a 10-sigma offset
added to the WMAP W map moved its S1 invariants by up to 0.8% and S2 by 2.3%."""

from __future__ import annotations

from pathlib import Path

import healpy as hp
import numpy as np
import pytest
from distributed import LocalCluster

from scatterdist import Scattering
from scatterdist import store as zstore
from scatterdist.cli import main as cli_main

DATA = Path(__file__).parent / "data"
WMAP = DATA / "wmap_band_iqumap_r9_7yr_W_v4_udgraded32.fits"
WMAP_MASK = DATA / "wmap_temperature_analysis_mask_r9_7yr_v4_udgraded32.fits"
NSIDE = 32


@pytest.fixture(scope="module")
def wmap() -> np.ndarray:
    return hp.read_map(str(WMAP), dtype=np.float64)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("analysis", ["quadrature", "lsq"])
def test_constant_map_has_no_wavelet_signal(analysis: str, backend: str) -> None:
    pytest.importorskip(backend)
    sc = Scattering(nside=NSIDE, analysis=analysis, backend=backend)
    c = 5.0
    const = np.full(12 * NSIDE**2, c)
    out = np.asarray(sc(const))
    order = np.array([len(p) for p in sc.paths])
    tol = (1e-12 if out.dtype == np.float64 else 1e-6) * c  # round-off of the backend's dtype
    assert np.abs(out[order == 0] - c).max() < tol
    assert np.abs(out[order >= 1]).max() < tol  # was 1e-3 of c (order 1) with quadrature
    # Cut sky: the weighted mean over the usable pixels is the monopole removed.
    mask = hp.read_map(str(WMAP_MASK), dtype=np.float64)
    inv = np.asarray(sc.invariants(const, mask=mask))
    assert np.abs(inv[order >= 1]).max() < tol


@pytest.mark.parametrize("masked", [False, True])
def test_offset_leaves_the_wavelet_invariants_alone(wmap: np.ndarray, masked: bool) -> None:
    mask = hp.read_map(str(WMAP_MASK), dtype=np.float64) if masked else None
    offset = 10 * wmap.std()
    order = None
    for analysis in ("quadrature", "lsq"):
        sc = Scattering(nside=NSIDE, analysis=analysis)
        order = np.array([len(p) for p in sc.paths])
        a, b = sc.invariants(wmap, mask=mask), sc.invariants(wmap + offset, mask=mask)
        rel = np.abs(b - a) / np.abs(a)
        assert rel[order >= 1].max() < 1e-6, (analysis, rel)  # quadrature: 2.3% before
        if not masked:  # the offset is all in S0 (cut sky: S0 has its own normalisation)
            assert b[0] == pytest.approx(a[0] + offset, rel=1e-12)


def test_offset_through_the_cli(wmap: np.ndarray, tmp_path: Path, capsys) -> None:
    hp.write_map(str(tmp_path / "w.fits"), wmap, dtype=np.float64)
    hp.write_map(str(tmp_path / "w_offset.fits"), wmap + 10 * wmap.std(), dtype=np.float64)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        code = cli_main(["scatter", str(tmp_path / "w.fits"), str(tmp_path / "w_offset.fits"),
                         "--output", str(tmp_path / "s.zarr"), "--cluster", cluster.scheduler_address,
                         "--no-progress"])
    assert code == 0, capsys.readouterr()
    ds = zstore.open_coefficients(tmp_path / "s.zarr")
    inv = ds["coefficients"].values[:, 0].astype(np.float64).mean(axis=-1)  # (map, path)
    s1 = ds["order"].values == 1
    rel = np.abs(inv[1, s1] - inv[0, s1]) / np.abs(inv[0, s1])
    assert rel.max() < 1e-6, rel
