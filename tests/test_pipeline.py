"""The distributed pipeline for real: LocalCluster (2 worker processes under Nannies), Zarr stores,
SIGKILLed workers and CLI processes, bad inputs, lock and configuration refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from scatterdist import Scattering
from scatterdist import store as zstore
from scatterdist.inputs import Catalog, parse_sim_spec
from scatterdist.cli import main as cli_main
from scatterdist.pipeline import scatter

DATA = Path(__file__).parent / "data"
WMAP = DATA / "wmap_band_iqumap_r9_7yr_W_v4_udgraded32.fits"
WMAP_MASKED = DATA / "wmap_band_iqumap_r9_7yr_W_v4_udgraded32_masked.fits"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        yield c


def _maps_store(path: Path, n: int, nside: int, seed: int) -> np.ndarray:
    maps = np.random.default_rng(seed).standard_normal((n, 12 * nside**2))
    ds = xr.Dataset({"maps": (("map", "pixel"), maps), "label": ("map", (np.arange(n) % 2).astype(np.int8))},
                    coords={"map": np.array([f"sky{i:03d}" for i in range(n)], dtype=object)})
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return maps


def _maps_and_direct(tmp_path_factory, name: str, n: int, nside: int, seed: int):
    d = tmp_path_factory.mktemp(name)
    maps = _maps_store(d / "maps.zarr", n, nside, seed=seed)
    sc = Scattering(nside=nside)
    return d / "maps.zarr", maps, sc, sc(maps).astype(np.float32)[:, None]  # (map, field I, path, pixel)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """24 maps at nside 32 in a Zarr store, their direct transform (float32)."""
    return _maps_and_direct(tmp_path_factory, "small", 24, 32, seed=0)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """48 maps at nside 64 (slow enough to kill things mid-run), their direct transform."""
    return _maps_and_direct(tmp_path_factory, "big", 48, 64, seed=1)


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scatterdist", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_status(path: Path, proc_or_thread, timeout: float = 120.0) -> np.ndarray:
    """Poll the store until at least one map is done (and return the status then)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (path / "zarr.json").exists():
            try:
                status = zstore.read_status(path)
            except (FileNotFoundError, KeyError):
                status = None
            if status is not None and (status != 0).any():
                return status
        alive = proc_or_thread.poll() is None if hasattr(proc_or_thread, "poll") else proc_or_thread.is_alive()
        assert alive, "the run ended before any shard was seen"
        time.sleep(0.01)
    raise TimeoutError("no shard finished in time")


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while any(os.path.exists(f"/proc/{p}") for p in pids):
        assert time.monotonic() - t0 < timeout, f"processes {pids} outlived their parent"
        time.sleep(0.05)


def test_end_to_end_bitwise_resume_and_refusals(client: Client, small, tmp_path: Path) -> None:
    maps_path, maps, sc, expected = small
    cat = Catalog.from_inputs([str(maps_path), str(WMAP)])
    out = tmp_path / "c.zarr"
    summary = scatter(cat, out, sc.config(), client=client, shard_size=4, progress=False)
    assert (summary.ok, summary.failed, summary.skipped) == (25, 0, 0)
    assert summary.shards_computed == 7 and summary.maps_per_s > 0 and summary.failures == []
    ds = zstore.open_coefficients(out)
    assert ds.coefficients.chunks[0] == (4,) * 6 + (1,)
    wmap = hp.read_map(str(WMAP), dtype=np.float64)
    direct = np.concatenate([expected, sc(wmap)[None, None].astype(np.float32)])
    np.testing.assert_array_equal(ds.coefficients.values, direct)  # bitwise
    assert (ds.status.values == 1).all() and (ds.error.values == "").all()
    assert ds.label.values.tolist() == [i % 2 for i in range(24)] + [-1]
    assert ds["map"].values[-1] == WMAP.name[:-5]
    # The same call again: everything is done, nothing is recomputed.
    again = scatter(cat, out, sc.config(), client=client, progress=False)
    assert (again.ok, again.skipped, again.shards_computed, again.shards_skipped) == (0, 25, 0, 7)
    # Another configuration is refused, a store being written is refused; nothing damaged.
    before = zstore.read_rows(out, 0, 25)
    with pytest.raises(zstore.StoreConfigError, match="another configuration"):
        scatter(cat, out, Scattering(nside=32, depth=1).config(), client=client, progress=False)
    with zstore.StoreLock(out):
        with pytest.raises(zstore.StoreLockedError, match="being written"):
            scatter(cat, out, sc.config(), client=client, progress=False, overwrite=True)
    np.testing.assert_array_equal(zstore.read_rows(out, 0, 25), before)
    assert (zstore.read_status(out) == 1).all()


def test_worker_killed_mid_run(client: Client, big, tmp_path: Path) -> None:
    maps_path, _, sc, expected = big
    cat = Catalog.from_inputs([str(maps_path)])
    out = tmp_path / "c.zarr"
    pids = client.run(os.getpid)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        s=scatter(cat, out, sc.config(), client=client, shard_size=2, progress=False)))
    runner.start()
    status = _wait_status(out, runner)
    assert (status == 0).any(), "the run finished before the kill"
    busy = [w for w, tasks in client.processing().items() if tasks] or list(pids)
    os.kill(pids[busy[0]], signal.SIGKILL)
    runner.join(timeout=180)
    assert not runner.is_alive()
    summary = result["s"]
    assert (summary.ok, summary.failed) == (48, 0)
    ds = zstore.open_coefficients(out)
    np.testing.assert_array_equal(ds.coefficients.values, expected)  # bitwise equal to a clean run
    assert (ds.status.values == 1).all()
    client.wait_for_workers(2, timeout=60)
    assert pids[busy[0]] not in client.run(os.getpid).values()


def test_cli_killed_mid_run_then_resumed(big, tmp_path: Path) -> None:
    maps_path, _, sc, expected = big
    out = tmp_path / "c.zarr"
    cmd = ["scatter", str(maps_path), "--output", str(out), "--workers", "2",
           "--threads-per-worker", "1", "--shard-size", "2", "--no-progress"]
    proc = _cli(*cmd)
    try:
        _wait_status(out, proc)
        children = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    _wait_gone(children)  # its worker processes die with it
    assert Path(str(out) + ".lock").exists()  # left behind by the dead writer: stale
    status = zstore.read_status(out)
    unfinished = sum(int((status[s:s + 2] != 1).any()) for s in range(0, 48, 2))
    assert 0 < unfinished < 24, status
    again = _cli(*cmd)
    stdout, stderr = again.communicate(timeout=240)
    assert again.returncode == 0, stderr
    assert f"computed {unfinished} shard(s), skipped {24 - unfinished}" in stdout
    ds = zstore.open_coefficients(out)
    np.testing.assert_array_equal(ds.coefficients.values, expected)
    assert (ds.status.values == 1).all()
    assert not Path(str(out) + ".lock").exists()


@pytest.fixture()
def bad_inputs(tmp_path: Path):
    rng = np.random.default_rng(7)
    goods = []
    for i in range(3):
        p = tmp_path / f"good{i}.fits"
        hp.write_map(str(p), rng.standard_normal(12 * 32**2), dtype=np.float64)
        goods.append(p)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(WMAP.read_bytes()[:50000])
    text = tmp_path / "notes.fits"
    text.write_text("a text file named .fits\n")
    wrong = tmp_path / "nside16.fits"
    hp.write_map(str(wrong), rng.standard_normal(12 * 16**2), dtype=np.float64)
    nan = tmp_path / "nan.fits"
    m = rng.standard_normal(12 * 32**2)
    m[100] = np.nan
    hp.write_map(str(nan), m, dtype=np.float64)
    unseen = tmp_path / "unseen.fits"
    hp.write_map(str(unseen), np.full(12 * 32**2, hp.UNSEEN), dtype=np.float64)
    inputs = [goods[0], truncated, goods[1], text, tmp_path / "missing.fits", WMAP, wrong, nan,
              goods[2], unseen, WMAP_MASKED]
    # NaN and UNSEEN pixels are masked, not fatal: "nan" and the masked WMAP map scatter.
    reasons = {"truncated": "truncated FITS file", "notes": "unreadable FITS", "missing": "missing file",
               "nside16": "nside 16", "unseen": "entirely masked"}
    return inputs, reasons


def test_bad_inputs_fail_alone_and_retry_failed(client: Client, bad_inputs, tmp_path: Path) -> None:
    inputs, reasons = bad_inputs
    out = tmp_path / "c.zarr"
    proc = _cli("scatter", *map(str, inputs), "--output", str(out), "--shard-size", "3",
                "--cluster", client.scheduler.address, "--no-progress")
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 1, stderr
    assert "5 failed map(s)" in stdout
    for map_id, words in reasons.items():
        line = next(ln for ln in stdout.splitlines() if ln.strip().startswith(map_id + " "))
        assert words in line, line
    ds = zstore.open_coefficients(out)
    ids = ds["map"].values.tolist()
    sc = Scattering(nside=32)
    for i, map_id in enumerate(ids):
        if map_id in reasons:
            assert ds.status.values[i] == -1 and reasons[map_id] in ds.error.values[i]
            assert np.isnan(ds.coefficients.values[i]).all()
            assert np.isnan(ds.sky_fraction.values[i])
        else:
            assert ds.status.values[i] == 1 and ds.error.values[i] == ""
            m = hp.read_map(str(inputs[i]), dtype=np.float64)
            if map_id in ("nan", WMAP_MASKED.name[:-5]):  # masked by the transform itself
                bad = ~np.isfinite(m) | (m == hp.UNSEEN)
                assert ds.sky_fraction.values[i] == np.float32(1 - bad.mean()) < 1
                np.testing.assert_allclose(ds.coefficients.values[i], sc(m)[None].astype(np.float32),
                                           rtol=1e-5, atol=1e-6 * np.nanmax(np.abs(sc(m))))
                assert np.isnan(ds.coefficients.values[i]).any() == (map_id != "nan")
            else:
                assert ds.sky_fraction.values[i] == 1
                np.testing.assert_array_equal(ds.coefficients.values[i], sc(m).astype(np.float32)[None])
    # `scatterdist info` reports the counts.
    assert cli_main(["info", str(out)]) == 0

    # Without retry_failed nothing is recomputed; with it only failed maps are, the ok ones kept.
    before = zstore.read_rows(out, 0, len(ids))
    cat = Catalog.from_inputs([str(p) for p in inputs])
    assert scatter(cat, out, sc.config(), client=client, progress=False).shards_computed == 0
    fixed = np.random.default_rng(8).standard_normal(12 * 32**2)
    hp.write_map(str(inputs[4]), fixed, dtype=np.float64)  # the missing file appears
    summary = scatter(cat, out, sc.config(), client=client, progress=False, retry_failed=True)
    assert (summary.ok, summary.failed, summary.shards_computed) == (1, 4, 4)  # shards 0-3
    assert {f[0] for f in summary.failures} == set(reasons) - {"missing"}
    after = zstore.read_rows(out, 0, len(ids))
    np.testing.assert_array_equal(after[4], sc(fixed).astype(np.float32)[None])
    ok_before = zstore.read_status(out) == 1
    np.testing.assert_array_equal(after[ok_before & (np.arange(len(ids)) != 4)],
                                  before[ok_before & (np.arange(len(ids)) != 4)])


def test_cli_refuses_locked_store_and_other_config(client: Client, small, tmp_path: Path) -> None:
    maps_path, _, sc, expected = small
    out = tmp_path / "c.zarr"
    base = ["scatter", str(maps_path), "--output", str(out), "--cluster", client.scheduler.address,
            "--no-progress"]
    first = _cli(*base)
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    before = zstore.read_rows(out, 0, 24)
    with zstore.StoreLock(out):  # a live writer (this process) holds the store
        locked = _cli(*base, "--overwrite")
        _, err = locked.communicate(timeout=240)
    assert locked.returncode == 2 and f"being written by pid {os.getpid()}" in err
    other = _cli(*base, "--J0", "3")
    _, err = other.communicate(timeout=240)
    assert other.returncode == 2 and "another configuration" in err and "J0" in err
    np.testing.assert_array_equal(zstore.read_rows(out, 0, 24), before)
    np.testing.assert_array_equal(before, expected)
    assert (zstore.read_status(out) == 1).all()


def test_simulation_spec_run(client: Client, tmp_path: Path) -> None:
    sims = pytest.importorskip("scatterdist.sims")
    if not hasattr(sims, "SimulationSpec"):
        pytest.skip("scatterdist.sims.SimulationSpec is not there yet")
    text = "sim:kind=mixed,n=6,nside=32,seed=3,alpha=1.0"
    cat = Catalog.from_inputs([text])
    sc = Scattering(nside=32)
    summary = scatter(cat, tmp_path / "s.zarr", sc.config(), client=client, shard_size=2, progress=False)
    assert (summary.ok, summary.failed) == (6, 0)
    ds = zstore.open_coefficients(tmp_path / "s.zarr")
    spec = parse_sim_spec(text)
    maps = np.stack([spec.generate(i) for i in range(6)])
    np.testing.assert_array_equal(ds.coefficients.values, sc(maps).astype(np.float32)[:, None])
    assert ds.label.values.tolist() == np.asarray(spec.labels()).tolist()


def test_cluster_specs_are_checked() -> None:
    from scatterdist.cluster import ClusterError, connect

    with pytest.raises(ClusterError, match="unknown cluster 'bogus'"):
        with connect("bogus"):
            pass
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(ClusterError, match="dask-cuda"):
            with connect("cuda"):
                pass


# ---------------------------------------------------------------------- cut sky and fields (issue 12)

WMAP_V = DATA / "wmap_band_iqumap_r9_7yr_V_v4_udgraded32.fits"
WMAP_MASK = DATA / "wmap_temperature_analysis_mask_r9_7yr_v4_udgraded32.fits"


@pytest.fixture()
def survey_inputs(tmp_path: Path):
    """Real WMAP IQU maps (full sky and masked) and bad polarisation/cut-sky inputs."""
    rng = np.random.default_rng(11)
    npix = 12 * 32**2
    tonly = tmp_path / "tonly.fits"
    hp.write_map(str(tonly), rng.standard_normal(npix), dtype=np.float64)
    unseen = tmp_path / "allmasked.fits"
    hp.write_map(str(unseen), [np.full(npix, hp.UNSEEN)] * 3, dtype=np.float64)
    tiny = tmp_path / "tiny.fits"
    m = rng.standard_normal(npix)
    m[40:] = hp.UNSEEN  # 40 of 12288 pixels: sky fraction 0.003 < 0.01
    hp.write_map(str(tiny), [m, m, m], dtype=np.float64)
    return [WMAP, WMAP_MASKED, tonly, WMAP_V, unseen, tiny]


def test_fields_and_masks_through_the_cli(client: Client, survey_inputs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eb.zarr"
    proc = _cli("scatter", *map(str, survey_inputs), "--output", str(out), "--fields", "I,E,B",
                "--shard-size", "2", "--cluster", client.scheduler.address, "--no-progress")
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 1, stderr  # some maps failed, the others finished
    reasons = {"tonly": "field(s) E, B need(s) Stokes Q and U", "allmasked": "entirely masked",
               "tiny": "below min_fsky 0.01"}
    assert "3 failed map(s)" in stdout
    for map_id, words in reasons.items():
        line = next(ln for ln in stdout.splitlines() if ln.strip().startswith(map_id + " "))
        assert words in line, line
    ds = zstore.open_coefficients(out)
    assert ds.coefficients.dims == ("map", "field", "path", "pixel")
    assert ds["field"].values.tolist() == ["I", "E", "B"]
    ids = ds["map"].values.tolist()
    status = dict(zip(ids, ds.status.values))
    assert [i for i in ids if status[i] == 1] == [WMAP.name[:-5], WMAP_MASKED.name[:-5], WMAP_V.name[:-5]]
    sc = Scattering(nside=32)
    row = {i: k for k, i in enumerate(ids)}
    full, cut = row[WMAP.name[:-5]], row[WMAP_MASKED.name[:-5]]
    coeffs, cov, fsky = ds.coefficients.values, ds.coverage.values, ds.sky_fraction.values
    assert ds.coverage.dims == ("map", "path", "pixel")  # FITS inputs: masks may differ per map
    assert fsky[full] == 1 and np.isfinite(coeffs[full]).all() and (cov[full] == 1).all()
    raw = hp.read_map(str(WMAP_MASKED), dtype=np.float64)
    assert fsky[cut] == np.float32((raw != hp.UNSEEN).mean()) and 0.5 < fsky[cut] < 0.9
    low = cov[cut] < sc.min_coverage  # NaN exactly where a path's coverage is too low, in every field
    assert low.any() and (~low).any()
    assert np.isnan(coeffs[cut][:, low]).all() and np.isfinite(coeffs[cut][:, ~low]).all()
    for name in reasons:
        assert np.isnan(coeffs[row[name]]).all() and np.isnan(fsky[row[name]])
    # The same masked map with random values in its masked pixels plus the mask file: identical.
    filled = hp.read_map(str(WMAP_MASKED), field=None, dtype=np.float64)
    hole = filled[0] == hp.UNSEEN
    filled[:, hole] = np.random.default_rng(5).standard_normal((3, int(hole.sum())))
    hp.write_map(str(tmp_path / "filled.fits"), filled, dtype=np.float64)
    hp.write_map(str(tmp_path / "holes.fits"), (~hole).astype(np.float64), dtype=np.float64)
    summary = scatter(Catalog.from_inputs([str(tmp_path / "filled.fits")]), tmp_path / "filled.zarr",
                      sc.config(), client=client, progress=False, fields="I,E,B",
                      mask=tmp_path / "holes.fits")
    assert (summary.ok, summary.failed) == (1, 0)
    again = zstore.read_rows(tmp_path / "filled.zarr", 0, 1)[0]
    np.testing.assert_array_equal(np.isnan(again), np.isnan(coeffs[cut]))
    # identical up to float32 rounding of alignment-dependent float64 sums (~1e-17)
    np.testing.assert_allclose(again, coeffs[cut], rtol=1e-6, atol=0, equal_nan=True)
    # info: fields, sky fraction and coverage summary
    capsys.readouterr()
    assert cli_main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "fields     I, E, B" in info
    assert f"sky        fraction min {fsky[cut]:.3f}, median" in info and "over 3 map(s)" in info
    assert "of output pixels have coverage >= 0.7" in info


def test_corrupt_healsparse_fails_alone(client: Client, tmp_path: Path) -> None:
    corrupt = tmp_path / "survey.hsp"
    corrupt.write_bytes(b"SIMPLE  =  not a HealSparse file" * 40)
    out = tmp_path / "h.zarr"
    proc = _cli("scatter", str(WMAP), str(corrupt), "--output", str(out),
                "--cluster", client.scheduler.address, "--no-progress")
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 1, stderr
    line = next(ln for ln in stdout.splitlines() if ln.strip().startswith("survey "))
    assert "corrupt or unreadable HealSparse file" in line
    ds = zstore.open_coefficients(out)
    assert ds.status.values.tolist() == [1, -1]


def test_bad_global_mask_refuses_the_run(tmp_path: Path, capsys) -> None:
    npix = 12 * 32**2
    bad = {"outside": np.linspace(-0.5, 1.5, npix),              # weights outside [0, 1]
           "nside48": np.ones(12 * 48**2),                       # not a power-of-two nside
           "empty": np.zeros(npix)}                              # every map would fail min_fsky
    words = {"outside": "has values in [-0.5, 1.5]", "nside48": "48", "empty": "below --min-fsky"}
    for name, values in bad.items():
        path = tmp_path / f"{name}.fits"
        hp.write_map(str(path), values, dtype=np.float64) if name != "nside48" else \
            _write_raw_map(path, values)
        out = tmp_path / f"{name}.zarr"
        # The real command in this process: the refusal comes before any cluster starts.
        code = cli_main(["scatter", str(WMAP), "--output", str(out), "--mask", str(path), "--no-progress"])
        stderr = capsys.readouterr().err
        assert code == 2, (name, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("scatterdist scatter: refused:"), (name, lines)
        assert words[name] in lines[0] and str(path) in lines[0], (name, lines[0])
        assert not out.exists()


def _write_raw_map(path: Path, values: np.ndarray) -> None:
    """A FITS binary table with a map column of a size healpy writes only for valid nsides."""
    from astropy.io import fits

    fits.BinTableHDU.from_columns([fits.Column(name="MASK", format="D", array=values)]).writeto(path)


def test_global_mask_on_simulations_shares_one_coverage(client: Client, tmp_path: Path) -> None:
    from scatterdist.sphere.mask import read_mask

    out = tmp_path / "m.zarr"
    text = "sim:kind=mixed,n=4,nside=32,seed=2,alpha=1.0"
    sc = Scattering(nside=32)
    summary = scatter(Catalog.from_inputs([text]), out, sc.config(), client=client, shard_size=2,
                      progress=False, mask=WMAP_MASK)
    assert (summary.ok, summary.failed) == (4, 0)
    ds = zstore.open_coefficients(out)
    assert ds.coverage.dims == ("path", "pixel") and ds.attrs["mask"] == str(WMAP_MASK)
    mask = read_mask(str(WMAP_MASK), 32)
    np.testing.assert_allclose(ds.coverage.values, sc.coverage(mask), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ds.sky_fraction.values, mask.mean(), rtol=1e-6)
    maps = np.stack([parse_sim_spec(text).generate(i) for i in range(4)])
    np.testing.assert_allclose(ds.coefficients.values[:, 0], sc(maps, mask=mask).astype(np.float32),
                               rtol=1e-5, atol=1e-6 * np.nanmax(np.abs(ds.coefficients.values)))
    # A simulation mask that cannot be used fails every map alike: refused before anything is written.
    from scatterdist.sphere.mask import MaskError

    bad = tmp_path / "bad.fits"
    hp.write_map(str(bad), np.full(12 * 32**2, 2.0), dtype=np.float64)
    with pytest.raises(MaskError, match="values in"):
        scatter(Catalog.from_inputs([f"{text},mask={bad}"]), tmp_path / "bad.zarr", sc.config(),
                client=client, progress=False)
    assert not (tmp_path / "bad.zarr").exists()


def test_store_made_before_fields_resumes_as_it_was(client: Client, small, tmp_path: Path) -> None:
    maps_path, maps, sc, expected = small
    cat = Catalog.from_inputs([str(maps_path)])
    out = tmp_path / "old.zarr"
    first = scatter(cat, out, sc.config(), client=client, shard_size=4, progress=False, fields=None)
    assert first.ok == 24 and zstore.read_rows(out, 0, 24).shape == (24, sc.n_paths, sc.npix_out)
    zstore.write_status(out, 8, np.zeros(4, np.int8), [""] * 4)  # shard 2 unfinished
    again = scatter(cat, out, sc.config(), client=client, progress=False)  # default fields: resumes
    assert (again.ok, again.shards_computed, again.skipped) == (4, 1, 20)
    assert "field" not in zstore.open_coefficients(out).coefficients.dims
    np.testing.assert_array_equal(zstore.read_rows(out, 0, 24), expected[:, 0])


def test_gpu_placement_survives_a_worker_restart(client: Client) -> None:
    """The GPU a worker is given is applied by a WorkerPlugin in every process that worker starts:
    a worker restarted by its nanny (new process, same name) still has its assignment."""
    from scatterdist.pipeline.device import assign_gpu, assigned_gpu
    from scatterdist.pipeline.placement import PLUGIN_NAME, GpuPlacement

    workers = client.scheduler_info()["workers"]
    names = {addr: str(w["name"]) for addr, w in workers.items()}
    plan = {name: k + 1 for k, name in enumerate(sorted(names.values()))}
    client.register_plugin(GpuPlacement(plan), name=PLUGIN_NAME)
    try:
        before = client.run(assigned_gpu)
        assert {names[a]: g for a, g in before.items()} == plan
        victim = sorted(names)[0]
        old_pid = client.run(os.getpid, workers=[victim])[victim]
        client.restart_workers([victim])
        client.wait_for_workers(2, timeout=60)
        after = client.run(assigned_gpu)
        new_names = {a: str(w["name"]) for a, w in client.scheduler_info()["workers"].items()}
        assert {new_names[a]: g for a, g in after.items()} == plan
        pids = client.run(os.getpid)
        assert old_pid not in pids.values()  # really a new process
    finally:
        client.unregister_worker_plugin(PLUGIN_NAME)
        client.run(assign_gpu, None)
