import subprocess
import sys

import xarray as xr


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "scatterdist.demo", "--out", str(out), "--n", "16", "--epochs", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    for expected in ["1. the scattering transform", "S2 j1=7 j2=6", "all 16 maps ok",
                     "partial-sky map", "status     ok 16", "accuracy", "true \\ predicted", "demo finished"]:
        assert expected in text, expected
    ds = xr.open_zarr(out / "sims.zarr", consolidated=False)
    assert (ds.status.values == 1).all() and ds.sizes["map"] == 16
    wmap = xr.open_zarr(out / "wmap.zarr", consolidated=False)
    assert sorted(wmap.status.values.tolist()) == [-1, 1, 1]
    assert (out / "run" / "checkpoint.pt").exists()
