"""A store you can trust (issue 17, store side): each test reproduces a row of the issue's table as
a user would meet it (the ``scatterdist`` command, real FITS files, real stores, a real Dask
cluster) and checks that it no longer loses data or stores wrong numbers.

The cluster runs its workers as threads of this process (``processes=False``) so that a failure
of the machine can be injected for real (a writer raising ``ENOSPC``); the CLI connects to it by
address, exactly as ``--cluster tcp://...`` would.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
import xarray as xr
from distributed import LocalCluster

from scatterdist import store as zstore
from scatterdist.cli import main as cli_main

NSIDE = 16


@pytest.fixture(scope="module")
def address():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster:
        yield cluster.scheduler_address


def _maps(directory: Path, n: int, seed: int = 0, prefix: str = "m") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = directory / f"{prefix}{i}.fits"
        hp.write_map(str(p), rng.standard_normal(12 * NSIDE**2), dtype=np.float64, overwrite=True)
        paths.append(p)
    return paths


def _scatter(address: str, inputs: list[Path], out: Path | str, *extra: str) -> int:
    return cli_main(["scatter", *map(str, inputs), "--output", str(out), "--cluster", address,
                     "--no-progress", *extra])


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with the bytes of its files (None for directories)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            full = os.path.join(dirpath, f)
            out[os.path.relpath(full, root)] = Path(full).read_bytes()
    return out


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


# ---------------------------------------------------------------------- row 1: --output


def test_output_that_is_not_a_store_path_is_refused_before_anything_is_touched(
        address, tmp_path: Path, monkeypatch, capsys) -> None:
    home = tmp_path / "home"
    mydir = home / "mydir"
    [fits] = _maps(mydir, 1)
    (mydir / "thesis.tex").write_text("years of work")
    (mydir / "data").mkdir()
    (mydir / "data" / "run.csv").write_text("1,2,3")
    (home / "notes.txt").write_text("keep me")
    before = _tree(tmp_path)
    monkeypatch.chdir(mydir)
    variants = ["", " ", ".", "./", str(mydir), "..", str(home), "/", "data", "thesis.tex"]
    for output in variants:
        for extra in ([], ["--overwrite"]):
            code = _scatter(address, [fits], output, *extra)
            lines = _err_lines(capsys)
            assert code == 2, (output, extra)
            assert len(lines) == 1 and lines[0].startswith("scatterdist scatter: refused:"), (output, lines)
            assert _tree(tmp_path) == before, (output, extra)  # not a byte changed, no lock file
    # A real store path next to the files works, and --overwrite replaces only that store.
    assert _scatter(address, [fits], "maps.zarr") == 0
    assert zstore.store_kind(mydir / "maps.zarr") == "store"
    assert _scatter(address, [fits], "maps.zarr", "--overwrite") == 0
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if "maps.zarr" not in k} == before


def test_half_made_store_is_recognised_and_overwrite_remakes_it(address, tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    """Row 7: the disk fills while the store is created: one line, nothing half-made left; a
    half-made store of an older run is recognised and --overwrite is the hint."""
    inputs = _maps(tmp_path / "in", 2)
    out = tmp_path / "s.zarr"
    real_to_zarr = xr.Dataset.to_zarr

    def full_disk(self, store, *args, **kwargs):
        real_to_zarr(self, store, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(xr.Dataset, "to_zarr", full_disk)
    assert _scatter(address, inputs, out) == 2
    lines = _err_lines(capsys)
    assert any("No space left on device" in ln and ln.startswith("scatterdist: error:") for ln in lines), lines
    assert not any("Traceback" in ln for ln in lines)
    assert not out.exists() and not list(tmp_path.glob("s.zarr.creating-*"))  # nothing half-made
    monkeypatch.setattr(xr.Dataset, "to_zarr", real_to_zarr)
    # A store whose creation was cut short (arrays missing) by an older version or a kill.
    assert _scatter(address, inputs, out) == 0
    shutil.rmtree(out / "coefficients")
    assert zstore.store_kind(out) == "incomplete"
    capsys.readouterr()
    assert _scatter(address, inputs, out) == 2
    [line] = _err_lines(capsys)
    assert "incomplete" in line and "--overwrite" in line
    assert _scatter(address, inputs, out, "--overwrite") == 0
    assert (zstore.read_status(out) == 1).all()


# ---------------------------------------------------------------------- row 3: changed inputs


def test_resume_recomputes_maps_whose_input_changed(address, tmp_path: Path, capsys) -> None:
    inputs = _maps(tmp_path / "in", 4)
    out = tmp_path / "s.zarr"
    assert _scatter(address, inputs, out, "--shard-size", "2") == 0
    capsys.readouterr()
    ident = zstore.read_identity(out)
    assert ident[0]["path"] == str(inputs[0]) and ident[0]["size"] == inputs[0].stat().st_size
    assert len(ident[0]["sha256"]) == 64 and len({i["sha256"] for i in ident}) == 4
    # New contents under the same name (same size: only the modification time says so).
    _maps(tmp_path / "in", 2, seed=99)  # rewrites m0, m1
    for p in inputs[:2]:
        os.utime(p, (time.time() + 5, time.time() + 5))
    assert _scatter(address, inputs, out, "--keep-changed-inputs") == 0
    err = capsys.readouterr().err
    assert "2 map(s) whose input changed since they were computed, KEPT" in err and "m0 (" in err
    assert _scatter(address, inputs, out) == 0
    err = capsys.readouterr().err
    assert "2 map(s) whose input changed since they were computed, recomputed: m0" in err
    # The store now equals a fresh store of the new files (bitwise), sources and hashes included.
    fresh = tmp_path / "fresh.zarr"
    assert _scatter(address, inputs, fresh, "--shard-size", "2") == 0
    np.testing.assert_array_equal(zstore.read_rows(out, 0, 4), zstore.read_rows(fresh, 0, 4))
    assert [i["sha256"] for i in zstore.read_identity(out)] == [i["sha256"] for i in zstore.read_identity(fresh)]
    # Contents changed but size and time put back: only `verify --inputs` can tell, and does.
    stat = inputs[3].stat()
    _maps(tmp_path / "other", 4, seed=5)
    shutil.copyfile(tmp_path / "other" / "m3.fits", inputs[3])
    os.utime(inputs[3], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _scatter(address, inputs, out) == 0 and "changed" not in capsys.readouterr().err
    assert cli_main(["verify", str(out), "--inputs"]) == 1
    stdout = capsys.readouterr().out
    assert "m3: input content (sha256 of the pixels) changed" in stdout and "marked todo" in stdout
    assert zstore.read_status(out).tolist() == [1, 1, 1, 0]
    assert _scatter(address, inputs, out) == 0
    np.testing.assert_array_equal(zstore.read_rows(out, 3, 4), zstore.read_rows(_fresh(address, inputs, tmp_path), 3, 4))


def _fresh(address: str, inputs: list[Path], tmp_path: Path) -> Path:
    out = tmp_path / f"fresh{time.time_ns()}.zarr"
    assert _scatter(address, inputs, out, "--shard-size", "2") == 0
    return out


# ---------------------------------------------------------------------- row 4: damaged chunks


def _shard_file(store: Path, shard: int) -> Path:
    return store / "coefficients" / "c" / str(shard) / "0" / "0" / "0"


def test_verify_and_resume_find_truncated_missing_and_corrupt_chunks(address, tmp_path: Path, capsys) -> None:
    inputs = _maps(tmp_path / "in", 10)
    out = tmp_path / "s.zarr"
    assert _scatter(address, inputs, out, "--shard-size", "2") == 0
    good = zstore.read_rows(out, 0, 10).copy()
    capsys.readouterr()
    shutil.copytree(out, tmp_path / "copy.zarr")
    for store in (out, tmp_path / "copy.zarr"):
        f1 = _shard_file(store, 1)
        f1.write_bytes(f1.read_bytes()[: f1.stat().st_size // 2])   # truncated (a partial copy)
        _shard_file(store, 2).unlink()                             # a lost shard file
        f3 = _shard_file(store, 3)                                 # a flipped byte inside a chunk
        raw = bytearray(f3.read_bytes())
        raw[40] ^= 0xFF
        f3.write_bytes(bytes(raw))
    # The user-facing view: info reports the damaged shards (quick check of the shard indexes).
    assert cli_main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "damaged    4 map(s) in shard(s) 1, 2" in info and "scatterdist verify" in info
    # verify reads every chunk: the flipped byte fails its checksum too; damaged maps become todo.
    assert cli_main(["verify", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    damaged = {ln.split(":")[0] for ln in lines if ln.startswith("m")}
    assert damaged == {"m2", "m3", "m4", "m5", "m6"}, lines
    assert "5 map(s) damaged or changed, marked todo" in lines[-1]
    assert zstore.read_status(out).tolist() == [1, 1, 0, 0, 0, 0, 0, 1, 1, 1]
    assert cli_main(["verify", str(out)]) == 1  # still damaged on disk until recomputed, but todo
    capsys.readouterr()
    assert _scatter(address, inputs, out) == 0
    np.testing.assert_array_equal(zstore.read_rows(out, 0, 10), good)
    assert cli_main(["verify", str(out)]) == 0
    # A plain resume of the other copy finds the truncated and missing shards by itself (quick
    # check) and recomputes them; the flipped byte needs the full read (verify).
    copy = tmp_path / "copy.zarr"
    assert _scatter(address, inputs, copy) == 0
    err = capsys.readouterr().err
    assert "4 map(s) were damaged on disk and are recomputed: m2, m3, m4, m5" in err
    assert cli_main(["verify", str(copy)]) == 1 and "m6: coefficients" in capsys.readouterr().out
    assert _scatter(address, inputs, copy) == 0
    np.testing.assert_array_equal(zstore.read_rows(copy, 0, 10), good)


def test_a_deleted_chunk_with_status_ok_is_found(address, tmp_path: Path, capsys) -> None:
    """A chunk removed from its shard reads as NaN: with status ok it is damage, not data."""
    import zarr

    inputs = _maps(tmp_path / "in", 4)
    out = tmp_path / "s.zarr"
    assert _scatter(address, inputs, out, "--shard-size", "4") == 0
    good = zstore.read_rows(out, 0, 4).copy()
    zarr.open_array(str(out), path="coefficients", mode="r+")[1] = np.nan  # drops map 1's chunk
    assert zstore.read_status(out)[1] == 1
    report = zstore.verify(out, depth="quick")
    assert list(report.damaged) == [1] and "missing from its shard" in report.damaged[1]
    assert list(zstore.verify(out).damaged) == [1]
    capsys.readouterr()
    assert _scatter(address, inputs, out) == 0
    assert "1 map(s) were damaged on disk and are recomputed: m1" in capsys.readouterr().err
    np.testing.assert_array_equal(zstore.read_rows(out, 0, 4), good)


# ---------------------------------------------------------------------- rows 5 and 7: failures


def test_machine_failures_are_retried_input_failures_wait_for_retry_failed(
        address, tmp_path: Path, capsys, monkeypatch) -> None:
    inputs = _maps(tmp_path / "in", 4)
    broken = tmp_path / "in" / "broken.fits"
    broken.write_bytes(b"SIMPLE  = T" + b"\0" * 100)  # unreadable: the input's fault
    inputs.append(broken)
    out = tmp_path / "s.zarr"
    real_write = zstore.write_shard
    calls: list[int] = []

    def disk_full(path, shard_index, *args, **kwargs):
        if shard_index in (0, 1):  # the disk is full for these shards
            calls.append(shard_index)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, shard_index, *args, **kwargs)

    monkeypatch.setattr(zstore, "write_shard", disk_full)
    code = _scatter(address, inputs, out, "--shard-size", "2", "--retries", "1")
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.out + captured.err
    assert len(calls) == 4  # two shards, each tried twice (--retries 1)
    rows = {ln.split()[0]: ln for ln in captured.out.splitlines()
            if ln.startswith("  ") and ln.split()[0] in ("m0", "m1", "m2", "m3", "broken")}
    assert set(rows) == {"m0", "m1", "m2", "m3", "broken"}
    for m in ("m0", "m1", "m2", "m3"):
        assert " machine " in rows[m] and "No space left on device" in rows[m] and "next run retries" in rows[m]
    assert " input " in rows["broken"]
    assert "4 map(s) failed on the machine" in captured.out and "run the same command again" in captured.out
    assert "1 map(s) failed on their input" in captured.out and "--retry-failed" in captured.out
    assert cli_main(["info", str(out)]) == 0
    assert "failed 5 (input 1, machine 4)" in capsys.readouterr().out
    # The disk has room again: the plain command retries the machine's failures only.
    monkeypatch.setattr(zstore, "write_shard", real_write)
    assert _scatter(address, inputs, out) == 1
    captured = capsys.readouterr()
    assert "retrying 4 map(s) that failed on the machine earlier" in captured.err
    assert "maps ok 4, failed 0" in captured.out and "1 failed map(s)" in captured.out
    status = zstore.read_status(out)
    assert status.tolist() == [1, 1, 1, 1, -1]
    # An input failure stays until --retry-failed (and fails again while the file is broken).
    assert _scatter(address, inputs, out) == 1 and "computed 0 shard(s)" in capsys.readouterr().out
    _maps(tmp_path / "fix", 1)
    shutil.copyfile(tmp_path / "fix" / "m0.fits", broken)
    assert _scatter(address, inputs, out, "--retry-failed") == 0


def test_retries_below_zero_are_refused(address, tmp_path: Path, capsys) -> None:
    inputs = _maps(tmp_path / "in", 1)
    assert _scatter(address, inputs, tmp_path / "s.zarr", "--retries", "-1") == 2
    [line] = _err_lines(capsys)
    assert "--retries must be >= 0" in line
    assert not (tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------------- row 8: corrupt status


def test_corrupt_status_chunk_is_one_line_and_verify_repairs_it(address, tmp_path: Path, capsys) -> None:
    inputs = _maps(tmp_path / "in", 4)
    out = tmp_path / "s.zarr"
    assert _scatter(address, inputs, out, "--shard-size", "2") == 0
    good = zstore.read_rows(out, 0, 4).copy()
    capsys.readouterr()
    (out / "status" / "c" / "1").write_bytes(b"\x13garbage bytes, not zstd")
    for argv in (["info", str(out)], ["scatter", *map(str, inputs), "--output", str(out),
                                       "--cluster", address, "--no-progress"]):
        assert cli_main(argv) == 2
        lines = _err_lines(capsys)
        errors = [ln for ln in lines if ln.startswith("scatterdist: error:")]
        assert len(errors) == 1 and "status of maps 2-3 cannot be read" in errors[0], lines
        assert "scatterdist verify" in errors[0] and not any("Traceback" in ln for ln in lines)
    assert cli_main(["verify", str(out)]) == 1
    assert "status of maps m2..m3 cannot be read: rewritten as todo" in capsys.readouterr().out
    assert zstore.read_status(out).tolist() == [1, 1, 0, 0]
    assert _scatter(address, inputs, out) == 0
    np.testing.assert_array_equal(zstore.read_rows(out, 0, 4), good)


# ---------------------------------------------------------------------- row 10: labels


def test_labels_of_any_integer_value(address, tmp_path: Path) -> None:
    inputs = _maps(tmp_path / "in", 3)
    labels = tmp_path / "labels.csv"
    values = [128, 70000, 2**40]
    labels.write_text("id,label\n" + "".join(f"m{i},{v}\n" for i, v in enumerate(values)))
    out = tmp_path / "s.zarr"
    assert _scatter(address, inputs, out, "--labels", str(labels)) == 0
    ds = xr.open_zarr(out)
    assert ds.label.dtype == np.int64 and ds.label.values.tolist() == values
    assert zstore.read_status_table(out).labels.tolist() == values


# ---------------------------------------------------------------------- rows 11 and 15: lock, info


def test_lock_is_taken_on_the_resolved_path_and_info_shows_the_writer(address, tmp_path: Path, capsys) -> None:
    inputs = _maps(tmp_path / "in", 2)
    real = tmp_path / "real.zarr"
    assert _scatter(address, inputs, real) == 0
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    # A first writer (another process) holds the store through its real name...
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from scatterdist.store import StoreLock
        lock = StoreLock({str(real)!r}); lock.acquire(); print("held", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # ...a second one through the symlink is refused, and info (through either name) says who.
        capsys.readouterr()
        assert _scatter(address, inputs, link, "--overwrite") == 2
        [line] = _err_lines(capsys)
        assert f"being written by pid {holder.pid}" in line
        assert zstore.live_writer(link)["pid"] == holder.pid
        assert cli_main(["info", str(link)]) == 0
        assert f"writer     running: pid {holder.pid} on host" in capsys.readouterr().out
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert zstore.live_writer(link) is None  # its lock file stays behind, but the pid is gone
    assert _scatter(address, inputs, link) == 0
    assert cli_main(["info", str(real)]) == 0 and "writer     none" in capsys.readouterr().out


def test_info_on_a_missing_path_says_so(tmp_path: Path, capsys) -> None:
    assert cli_main(["info", str(tmp_path / "nope.zarr")]) == 2
    [line] = _err_lines(capsys)
    assert line == f"scatterdist: error: no store at {tmp_path / 'nope.zarr'}: the path does not exist"


def test_map_ids_have_an_attribute_spelling(address, tmp_path: Path) -> None:
    inputs = _maps(tmp_path / "in", 2)
    out = tmp_path / "s.zarr"
    assert _scatter(address, inputs, out) == 0
    ds = xr.open_zarr(out)
    assert callable(ds.map)  # xarray's Dataset.map: the reason for map_id
    assert ds.map_id.values.tolist() == ["m0", "m1"] == ds["map"].values.tolist()
    assert ds.sel(map="m1").map_id.values.item() == "m1"


# ---------------------------------------------------------------------- one owner of the schema


#: The store's variables (``label`` and ``source`` are left out: input stores and CSV rows have
#: columns of those names too).
_SCHEMA_NAMES = ("coefficients", "status", "error", "coverage", "sky_fraction", "failure",
                 "input_path", "input_size", "input_mtime", "input_sha256", "map_id")
#: Modules that open Zarr stores that are not scatter stores (input maps), or show users the plain
#: xarray view of a store; each for the reason given.
_OPENS_INPUT_STORES = {
    "inputs/": "reads Zarr input maps (the only code that knows input formats)",
    "sims/io.py": "writes and reads simulated map stores (inputs)",
    "demo.py": "shows users that a store opens with plain xarray.open_zarr",
}


def test_no_module_outside_store_opens_the_stores_arrays_by_name() -> None:
    """Only ``scatterdist/store/`` knows the schema: nowhere else are the store's variables
    indexed by name (``group["status"]``, ``ds["coefficients"]``, ``path="status"``), and Zarr
    stores are opened only where inputs are read."""
    import re

    pkg = Path(zstore.__file__).resolve().parents[1]
    names = "|".join(_SCHEMA_NAMES)
    by_name = re.compile(rf"""\[\s*["'](?:{names})["']\s*\]|path\s*=\s*["'](?:{names})["']""")
    opens = re.compile(r"zarr\.open(?:_group|_array|_consolidated)?\s*\(|open_zarr\s*\(")
    offenders = []
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(pkg).as_posix()
        if rel.startswith("store/"):
            continue
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if by_name.search(code):
                offenders.append(f"{rel}:{lineno}: {line.strip()}")
            if opens.search(code) and not any(rel.startswith(k) for k in _OPENS_INPUT_STORES):
                offenders.append(f"{rel}:{lineno}: {line.strip()}")
    assert offenders == [], "store arrays opened by name outside scatterdist/store/:\n" + "\n".join(offenders)


def test_no_user_facing_message_cites_design_md() -> None:
    """Users do not have DESIGN.md: no raised or printed message may send them there."""
    import ast

    pkg = Path(zstore.__file__).resolve().parents[1]
    offenders = []
    for f in sorted(pkg.rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            call = node.exc if isinstance(node, ast.Raise) else node if isinstance(node, ast.Call) else None
            if call is None:
                continue
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") not in ("print", "warn"):
                continue
            text = " ".join(c.value for c in ast.walk(call) if isinstance(c, ast.Constant) and isinstance(c.value, str))
            if "DESIGN" in text:
                offenders.append(f"{f.relative_to(pkg)}:{node.lineno}")
    assert offenders == [], offenders


def test_verify_cost_is_small_per_map(tmp_path: Path) -> None:
    """The resume's quick check reads only shard indexes: 400 maps in well under a second."""
    from scatterdist.testing import write_synthetic_store

    path = tmp_path / "s.zarr"
    write_synthetic_store(path, n_maps=400, nside=4, n_channels=4, shard_size=16, fields=("I",))
    t0 = time.perf_counter()
    report = zstore.verify(path, depth="quick")
    assert report.ok and time.perf_counter() - t0 < 2.0
    assert json.dumps(report.damaged) == "{}"


def test_out_of_memory_in_a_task_is_a_machine_failure(address, tmp_path: Path, capsys, monkeypatch) -> None:
    """MemoryError while loading (not the input's fault) is recorded as the machine's and retried."""
    import scatterdist.pipeline.task as task

    inputs = _maps(tmp_path / "in", 2)
    out = tmp_path / "s.zarr"
    real_load = task.load_maps

    def no_memory(*args, **kwargs):
        raise MemoryError("cannot allocate 8 GiB")

    monkeypatch.setattr(task, "load_maps", no_memory)
    assert _scatter(address, inputs, out, "--retries", "0") == 1
    stdout = capsys.readouterr().out
    assert "MemoryError: cannot allocate 8 GiB" in stdout and "2 map(s) failed on the machine" in stdout
    assert zstore.read_status_table(out).failure.tolist() == [zstore.FAILURE_MACHINE] * 2
    monkeypatch.setattr(task, "load_maps", real_load)
    assert _scatter(address, inputs, out) == 0  # retried without --retry-failed
