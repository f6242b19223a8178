"""Issue 17, inputs side, as a user meets it: FITS fields by column name (row 2), the nside rule
and harmonic resampling (row 6), values beyond float32 (row 9), symlink loops, image HDUs, text
columns and the mask's COORDSYS (row 15), and the identity of what each map was computed from.
Real FITS files written by healpy, `scatterdist scatter` through `scatterdist.cli.main` on a
loopback LocalCluster, real Zarr stores."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
from astropy.io import fits as afits
from distributed import LocalCluster

from scatterdist import Scattering
from scatterdist import store as zstore
from scatterdist.cli import main as cli_main
from scatterdist.inputs import BadMapError, Catalog, LoadedMap, MapRef, load_maps, plan_inputs, stat_identity

NSIDE = 16
NPIX = 12 * NSIDE**2


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as c:
        yield c.scheduler_address


def _scatter(capsys, address: str, *args: str) -> tuple[int, str, str]:
    code = cli_main(["scatter", *args, "--cluster", address, "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _failed_line(stdout: str, map_id: str) -> str:
    return next(ln for ln in stdout.splitlines() if ln.strip().startswith(map_id + " "))


def _bandlimited(nside: int, lmax: int, seed: int, n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` maps at ``nside`` bandlimited at ``lmax`` (and their alm)."""
    rng = np.random.default_rng(seed)
    nalm = hp.Alm.getsize(lmax)
    alm = rng.standard_normal((n, nalm)) + 1j * rng.standard_normal((n, nalm))
    alm[:, : lmax + 1] = alm[:, : lmax + 1].real  # m = 0 real
    return np.array([hp.alm2map(a, nside, lmax=lmax) for a in alm]), alm


# ---------------------------------------------------------------------- row 2: fields by name


@pytest.fixture(scope="module")
def qu_file(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A Q/U-only file as healpy writes one (like healpy's justq_gal2ecl.fits.gz)."""
    d = tmp_path_factory.mktemp("qu")
    qu, _ = _bandlimited(NSIDE, 2 * NSIDE - 1, seed=1, n=2)
    path = d / "qu.fits"
    hp.write_map(str(path), qu, column_names=["Q_POLARISATION", "U_POLARISATION"], dtype=np.float64)
    return path, qu


def test_qu_only_file_fields_by_name(cluster, qu_file, tmp_path, capsys) -> None:
    path, qu = qu_file
    sc = Scattering(nside=NSIDE)
    # --fields Q stores the Q column (it stored U before), exit 0.
    code, out, err = _scatter(capsys, cluster, str(path), "--output", str(tmp_path / "q.zarr"), "--fields", "Q")
    assert code == 0, err
    ds = zstore.open_coefficients(tmp_path / "q.zarr")
    assert ds["field"].values.tolist() == ["Q"]
    want = sc(qu[0]).astype(np.float32)
    np.testing.assert_allclose(ds["coefficients"].values[0, 0], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert not np.allclose(ds["coefficients"].values[0, 0], sc(qu[1]).astype(np.float32))
    # --fields I fails that map, naming the columns the file has (it stored Q as I before).
    code, out, err = _scatter(capsys, cluster, str(path), "--output", str(tmp_path / "i.zarr"), "--fields", "I")
    assert code == 1, err
    line = _failed_line(out, "qu")
    assert "Stokes I" in line and "'Q_POLARISATION', 'U_POLARISATION'" in line and "Q, U, E, B" in line, line
    # --fields E,B works (was refused with "choose --fields I for a temperature-only file").
    code, out, err = _scatter(capsys, cluster, str(path), "--output", str(tmp_path / "eb.zarr"), "--fields", "E,B")
    assert code == 0, err
    ds = zstore.open_coefficients(tmp_path / "eb.zarr")
    assert ds["field"].values.tolist() == ["E", "B"] and np.isfinite(ds["coefficients"].values).all()


def test_column_names_and_positions(tmp_path) -> None:
    rng = np.random.default_rng(2)
    iqu = rng.standard_normal((3, NPIX))
    cases = {  # column names -> which column each Stokes field must come from
        ("U_STOKES", "I_STOKES", "q_stokes"): {"I": 1, "Q": 2, "U": 0},  # any order, any case
        ("TEMPERATURE", "Q_POLARISATION", "U_POLARISATION"): {"I": 0, "Q": 1, "U": 2},  # healpy's default
        ("I", "Q", "U"): {"I": 0, "Q": 1, "U": 2},
        ("COLUMN_1", "COLUMN_2", "COLUMN_3"): {"I": 0, "Q": 1, "U": 2},  # generic: by position
        ("SIGNAL", "COL2", "COLUMN"): {"I": 0, "Q": 1, "U": 2},
    }
    for names, where in cases.items():
        path = tmp_path / ("_".join(names) + ".fits")
        hdu = afits.BinTableHDU.from_columns(
            [afits.Column(name=n, format="D", array=iqu[k]) for k, n in enumerate(names)])
        hdu.header.update({"PIXTYPE": "HEALPIX", "ORDERING": "RING", "NSIDE": NSIDE, "INDXSCHM": "IMPLICIT"})
        hdu.writeto(path)
        [got] = load_maps([MapRef("fits", str(path))], NSIDE, fields="I,Q,U")
        assert isinstance(got, LoadedMap), (names, got)
        for k, s in enumerate("IQU"):
            np.testing.assert_array_equal(got.data[k], iqu[where[s]], err_msg=f"{names} {s}")
    # A one-column file of any name is the scalar field I; two named non-Stokes columns are refused.
    hp.write_map(str(tmp_path / "kappa.fits"), iqu[0], column_names=["KAPPA"], dtype=np.float64)
    [got] = load_maps([MapRef("fits", str(tmp_path / "kappa.fits"))], NSIDE)
    np.testing.assert_array_equal(got.data[0], iqu[0])
    hp.write_map(str(tmp_path / "hits.fits"), iqu[:2], column_names=["HITS", "NOISE"], dtype=np.float64)
    [got] = load_maps([MapRef("fits", str(tmp_path / "hits.fits"))], NSIDE)
    assert isinstance(got, BadMapError) and "'HITS', 'NOISE'" in str(got) and "rename" in str(got)
    # Generic columns by position: a 1-column file has no Q, said with the columns.
    hp.write_map(str(tmp_path / "one.fits"), iqu[0], column_names=["COLUMN_1"], dtype=np.float64)
    [got] = load_maps([MapRef("fits", str(tmp_path / "one.fits"))], NSIDE, fields="E")
    assert isinstance(got, BadMapError) and "'COLUMN_1'" in str(got) and "choose --fields among I" in str(got)


# ---------------------------------------------------------------------- row 15: unusable files


def test_unusable_files_say_why(cluster, qu_file, tmp_path, capsys) -> None:
    good = tmp_path / "good.fits"
    hp.write_map(str(good), np.random.default_rng(3).standard_normal(NPIX), dtype=np.float64)
    image = tmp_path / "image.fits"
    afits.PrimaryHDU(np.zeros(NPIX)).writeto(image)
    text = tmp_path / "text.fits"
    hdu = afits.BinTableHDU.from_columns([afits.Column(name="TEMPERATURE", format="8A",
                                                       array=np.array(["x"] * NPIX))])
    hdu.header.update({"PIXTYPE": "HEALPIX", "ORDERING": "RING", "NSIDE": NSIDE})
    hdu.writeto(text)
    (tmp_path / "loop_a.fits").symlink_to(tmp_path / "loop_b.fits")
    (tmp_path / "loop_b.fits").symlink_to(tmp_path / "loop_a.fits")
    (tmp_path / "dangling.fits").symlink_to(tmp_path / "nowhere.fits")
    inputs = [good, image, text, tmp_path / "loop_a.fits", tmp_path / "dangling.fits", tmp_path / "missing.fits"]
    code, out, err = _scatter(capsys, cluster, *map(str, inputs), "--output", str(tmp_path / "s.zarr"))
    assert code == 1, err
    assert "5 failed map(s)" in out
    reasons = {"image": "holds an image", "text": "holds text (FITS format 8A)", "loop_a": "symlink loop",
               "dangling": "broken symlink", "missing": "missing file"}
    for map_id, words in reasons.items():
        assert words in _failed_line(out, map_id), _failed_line(out, map_id)
    assert "missing file" not in _failed_line(out, "loop_a")


# ---------------------------------------------------------------------- row 6: nside


def test_nside_rule_said_and_other_nsides_fail_with_the_fix(cluster, tmp_path, capsys) -> None:
    m32, _ = _bandlimited(32, 31, seed=4)
    m16, _ = _bandlimited(16, 31, seed=5)
    hp.write_map(str(tmp_path / "a32.fits"), m32[0], dtype=np.float64)
    hp.write_map(str(tmp_path / "b16.fits"), m16[0], dtype=np.float64)
    code, out, err = _scatter(capsys, cluster, str(tmp_path / "a32.fits"), str(tmp_path / "b16.fits"),
                              "--output", str(tmp_path / "s.zarr"))
    assert code == 1, err
    assert f"nside 32 (from the header of {tmp_path / 'a32.fits'}, the first input" in err
    assert "1 FITS map(s) at another nside (nside 16: 1) will fail: pass --nside 32" in err
    line = _failed_line(out, "b16")
    assert "nside 16 differs from the run's nside 32: pass --nside 32" in line, line


def test_nside_resamples_fits_in_harmonic_space(cluster, tmp_path, capsys) -> None:
    lmax = 2 * NSIDE - 1
    lo, alm_lo = _bandlimited(NSIDE // 2, NSIDE - 1, seed=6)  # nside 8 -> 16: lmax 15
    hi, alm_hi = _bandlimited(NSIDE * 2, lmax, seed=7)  # nside 32 -> 16: lmax 31
    same, _ = _bandlimited(NSIDE, lmax, seed=8)
    for name, m in (("lo", lo), ("hi", hi), ("same", same)):
        hp.write_map(str(tmp_path / f"{name}.fits"), m[0], dtype=np.float64)
    inputs = [str(tmp_path / f"{n}.fits") for n in ("same", "lo", "hi")]
    code, out, err = _scatter(capsys, cluster, *inputs, "--nside", str(NSIDE), "--output", str(tmp_path / "r.zarr"))
    assert code == 0, out + err
    assert f"nside {NSIDE} (from --nside)" in err
    assert f"2 FITS map(s) at another nside (nside 8: 1, nside 32: 1) are resampled to nside {NSIDE} in harmonic space" in err
    # What was stored is the transform of the resampled maps: the same sky at nside 16.
    want = np.stack([same[0], hp.alm2map(alm_lo[0], NSIDE, lmax=NSIDE - 1), hp.alm2map(alm_hi[0], NSIDE, lmax=lmax)])
    [*loaded] = load_maps(plan_inputs(Catalog.from_inputs(inputs), NSIDE).catalog.refs, NSIDE)
    assert [m.resampled_from for m in loaded] == [None, 8, 32]
    np.testing.assert_allclose(np.stack([m.data[0] for m in loaded]), want, rtol=0, atol=1e-8 * np.abs(want).max())
    ds = zstore.open_coefficients(tmp_path / "r.zarr")
    direct = Scattering(nside=NSIDE)(want).astype(np.float32)
    np.testing.assert_allclose(ds["coefficients"].values[:, 0], direct, rtol=1e-4, atol=1e-5 * np.abs(direct).max())
    # Without --nside the same references fail (the rule is per run, not per file).
    [_, bad, _] = load_maps(Catalog.from_inputs(inputs).refs, NSIDE)
    assert isinstance(bad, BadMapError) and "pass --nside 16" in str(bad)


def test_resampling_a_masked_map_keeps_its_mask(tmp_path) -> None:
    m, _ = _bandlimited(32, 31, seed=9)
    m = m[0].copy()
    theta, _ = hp.pix2ang(32, np.arange(12 * 32**2))
    m[theta < 0.5] = hp.UNSEEN  # a polar cap unobserved
    hp.write_map(str(tmp_path / "cut.fits"), m, dtype=np.float64)
    [got] = load_maps([MapRef("fits", str(tmp_path / "cut.fits"), resample=True)], NSIDE)
    assert isinstance(got, LoadedMap) and got.resampled_from == 32 and got.own_mask
    want_w = hp.ud_grade((m != hp.UNSEEN).astype(float), NSIDE, power=0)
    theta16, _ = hp.pix2ang(NSIDE, np.arange(NPIX))
    assert (got.mask[theta16 < 0.4] == 0).all() and (got.mask[theta16 > 0.6] == 1).all()
    assert ((got.mask == 0) | (got.mask == want_w)).all()
    assert (got.data[0][got.mask == 0] == 0).all() and np.isfinite(got.data).all()


# ---------------------------------------------------------------------- row 9: float32


def test_values_beyond_float32_fail_the_map(cluster, tmp_path, capsys) -> None:
    rng = np.random.default_rng(10)
    good, big, tiny, masked_big = (rng.standard_normal(NPIX) for _ in range(4))
    big[7] = 1e300
    tiny[:] = 1e-300 * np.sign(tiny)
    masked_big[3] = hp.UNSEEN  # UNSEEN is data, not a value out of range
    for name, m in (("good", good), ("big", big), ("tiny", tiny), ("masked", masked_big)):
        hp.write_map(str(tmp_path / f"{name}.fits"), m, dtype=np.float64)
    code, out, err = _scatter(capsys, cluster, *(str(tmp_path / f"{n}.fits") for n in ("good", "big", "tiny", "masked")),
                              "--output", str(tmp_path / "s.zarr"))
    assert code == 1, err
    assert "2 failed map(s)" in out
    assert "1 pixel value(s) beyond float32 (|x| up to 1e+300" in _failed_line(out, "big")
    assert f"{NPIX} nonzero pixel value(s) below float32's smallest normal number" in _failed_line(out, "tiny")
    assert "would underflow" in _failed_line(out, "tiny")
    ds = zstore.open_coefficients(tmp_path / "s.zarr")
    assert ds["status"].values.tolist() == [1, -1, -1, 1]


# ---------------------------------------------------------------------- row 15: COORDSYS


def test_galactic_mask_on_a_celestial_map_is_rotated(cluster, tmp_path, capsys) -> None:
    nside = 32
    npix = 12 * nside**2
    theta, _ = hp.pix2ang(nside, np.arange(npix))
    cut = (np.abs(90 - np.degrees(theta)) > 20).astype(np.float64)  # |b| > 20 deg, in Galactic
    hp.write_map(str(tmp_path / "gmask.fits"), cut, coord="G", dtype=np.float64)
    sky = np.random.default_rng(11).standard_normal(npix)
    hp.write_map(str(tmp_path / "cmap.fits"), sky, coord="C", dtype=np.float64)
    [got] = load_maps([MapRef("fits", str(tmp_path / "cmap.fits"))], nside, mask=str(tmp_path / "gmask.fits"))
    want = np.clip(hp.Rotator(coord=["G", "C"]).rotate_map_pixel(cut), 0, 1)
    np.testing.assert_allclose(got.mask, want, rtol=0, atol=1e-12)
    # The Galactic centre (RA 266.4, Dec -28.9) is masked in the map's frame; the Galactic pole is not.
    gc = hp.ang2pix(nside, 266.40, -28.94, lonlat=True)
    gp = hp.ang2pix(nside, 192.86, 27.13, lonlat=True)
    assert got.mask[gc] == 0 and got.mask[gp] == 1 and cut[gc] == 1  # unrotated it would be kept
    code, out, err = _scatter(capsys, cluster, str(tmp_path / "cmap.fits"), "--mask", str(tmp_path / "gmask.fits"),
                              "--output", str(tmp_path / "m.zarr"))
    assert code == 0, out + err
    assert (f"mask {tmp_path / 'gmask.fits'} is in Galactic coordinates (COORDSYS G); 1 map(s) in celestial "
            "(equatorial) (C): the mask is rotated to each map's frame with healpy's Rotator") in err
    ds = zstore.open_coefficients(tmp_path / "m.zarr")
    assert float(ds["sky_fraction"].values[0]) == pytest.approx(float(want.mean()), rel=1e-6)


# ---------------------------------------------------------------------- identity


def test_identity_of_loaded_maps_and_stat_identity(tmp_path) -> None:
    m = np.random.default_rng(12).standard_normal((3, NPIX))
    path = tmp_path / "iqu.fits"
    hp.write_map(str(path), m, dtype=np.float64)
    ref = MapRef("fits", str(path))
    [got] = load_maps([ref], NSIDE, fields="I,E")
    st = os.stat(path)
    read = hp.read_map(str(path), field=(0, 1, 2), dtype=np.float64)
    assert got.identity == {"path": str(path), "size": st.st_size, "mtime": st.st_mtime,
                            "sha256": hashlib.sha256(np.ascontiguousarray(read).tobytes()).hexdigest()}
    assert stat_identity(ref) == {"path": str(path), "size": st.st_size, "mtime": st.st_mtime}
    # New contents under the same name: both change.
    m[0, 0] += 1.0
    hp.write_map(str(path), m, dtype=np.float64, overwrite=True)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    [again] = load_maps([ref], NSIDE, fields="I,E")
    assert again.identity["sha256"] != got.identity["sha256"]
    assert stat_identity(ref)["mtime"] != got.identity["mtime"]
    # Simulations have no file; a missing file has no size.
    [sim] = load_maps(Catalog.from_inputs(["sim:kind=gaussian,n=1,nside=16,seed=0"]).refs, NSIDE)
    assert sim.identity["path"] == "" and sim.identity["size"] == -1 and len(sim.identity["sha256"]) == 64
    assert stat_identity(MapRef("fits", str(tmp_path / "gone.fits")))["size"] == -1


def test_zarr_input_through_a_symlink_loop_is_named(tmp_path) -> None:
    from scatterdist.inputs import CatalogError

    (tmp_path / "a.zarr").symlink_to(tmp_path / "b.zarr")
    (tmp_path / "b.zarr").symlink_to(tmp_path / "a.zarr")
    with pytest.raises(CatalogError, match="symlink loop"):
        Catalog.from_inputs([str(tmp_path / "a.zarr")])
    with pytest.raises(CatalogError, match="missing file"):
        Catalog.from_inputs([str(tmp_path / "none.zarr")])
