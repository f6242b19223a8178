"""Issue 17 row 10: labels of any integer value in `scatter --labels` (an OverflowError
traceback at 128 before), with the id column spelled `id` or `map` as `train --labels` accepts."""

from __future__ import annotations

from pathlib import Path

import healpy as hp
import numpy as np
from distributed import LocalCluster

from scatterdist import store as zstore
from scatterdist.cli import main as cli_main


def test_any_integer_label_through_scatter(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        hp.write_map(str(tmp_path / f"{name}.fits"), rng.standard_normal(12 * 8**2), dtype=np.float64)
    csv = tmp_path / "labels.csv"
    csv.write_text("map,label\na,128\nb,1099511627776\n")  # c: no label (-1)
    inputs = [str(tmp_path / f"{n}.fits") for n in ("a", "b", "c")]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        code = cli_main(["scatter", *inputs, "--labels", str(csv), "--output", str(tmp_path / "s.zarr"),
                         "--cluster", cluster.scheduler_address, "--no-progress"])
        assert code == 0, capsys.readouterr().err
        ds = zstore.open_coefficients(tmp_path / "s.zarr")
        assert ds["label"].dtype == np.int64 and ds["label"].values.tolist() == [128, 2**40, -1]
        # A label that is not an integer is refused in one line, before anything is written.
        csv.write_text("id,label\na,big\n")
        code = cli_main(["scatter", *inputs, "--labels", str(csv), "--output", str(tmp_path / "t.zarr"),
                         "--cluster", cluster.scheduler_address, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{csv}:2: label 'big' is not an integer" in err and "Traceback" not in err
    assert not (tmp_path / "t.zarr").exists()
