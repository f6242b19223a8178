import subprocess
import sys

import numpy as np
import xarray as xr


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "scatterdist.demo", "--out", str(out), "--n", "16", "--epochs", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    for expected in ["1. the scattering transform", "S2 j1=7 j2=6", "all 16 maps ok", "all 3 maps ok",
                     "W map with the Galactic plane", "sky fraction of each map", "cut W map, per path",
                     "status     ok 16", "accuracy", "true \\ predicted", "demo finished"]:
        assert expected in text, expected
    # no progress-bar fragments in a log: bars are drawn on terminals only
    assert "\r" not in text + done.stderr and "0%|" not in text + done.stderr
    ds = xr.open_zarr(out / "sims.zarr", consolidated=False)
    assert (ds.status.values == 1).all() and ds.sizes["map"] == 16
    wmap = xr.open_zarr(out / "wmap.zarr", consolidated=False)
    assert (wmap.status.values == 1).all()  # the cut map is scattered, not refused
    cut = [i for i, s in enumerate(wmap.source.values) if "masked" in str(s)]
    fsky = wmap.sky_fraction.values
    assert len(cut) == 1 and 0.55 < fsky[cut[0]] < 0.7 and np.all(np.delete(fsky, cut) == 1.0)
    coeffs = wmap.coefficients.isel(map=cut[0]).values
    assert np.isnan(coeffs).any() and np.isfinite(coeffs).mean() > 0.5
    assert (out / "run" / "checkpoint.pt").exists()
