"""CMB simulations (issue 5): spectrum, Gaussian / non-Gaussian skies, spec, writers, CLI.

Statistical tests use fixed seeds (deterministic) and criteria that a wrong model fails:
binned C_l compared with a chi-square at 99.9% and |z| < 4 per bin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import healpy as hp
import numpy as np
import pytest
import xarray as xr
from scipy import stats
from scipy.special import eval_legendre

from scatterdist.cli import main as cli_main
from scatterdist.sims import (
    RECOMMENDED_ALPHA,
    SimulationSpec,
    cmb_cl,
    gaussian_cmb,
    nongaussian_cl,
    nongaussian_cmb,
    nongaussian_transfer,
)
from scatterdist.sims.baseline import LogisticRegression, power_spectrum_features
from scatterdist.sims.io import write_simulations
from scatterdist.sims.skies import _xi_squared_cl
from scatterdist.sims.stats import binned_cl, map_cl, pixel_skewness
from scatterdist.sphere import alm_l_index, analysis
from scatterdist.sphere.alm import alm_m_index

N_SKIES = 50
NSIDE_CL = 32
LMAX_CL = 2 * NSIDE_CL - 1
EDGES = np.append(np.arange(2, LMAX_CL + 1, 6), LMAX_CL + 1)
NU = np.diff(np.cumsum(np.r_[0, 2 * np.arange(2, LMAX_CL + 1) + 1.0])[EDGES - 2])  # modes per bin


def _chi2_ok(z: np.ndarray) -> tuple[bool, float]:
    """Binned residuals ``z`` (in standard errors) pass: chi2 below its 99.9% point, all |z| < 4."""
    chi2 = float(np.sum(z**2))
    return chi2 < stats.chi2.ppf(0.999, z.size) and bool(np.all(np.abs(z) < 4.0)), chi2


# ---------------------------------------------------------------- spectrum


def test_cmb_cl_is_planck_lcdm():
    cl = cmb_cl(6144)
    assert cl.shape == (6145,) and cl.dtype == np.float64
    assert cl[0] == 0.0 and cl[1] == 0.0 and np.all(cl[2:] > 0)
    ell = np.arange(cl.size)
    dl = ell * (ell + 1) * cl / (2 * np.pi)
    peak = 100 + int(np.argmax(dl[100:400]))
    assert 210 <= peak <= 230  # first acoustic peak
    assert 5000 < dl[peak] < 6500  # muK^2
    assert 700 < dl[10] < 1400  # Sachs-Wolfe plateau
    np.testing.assert_array_equal(cmb_cl(100), cl[:101])
    with pytest.raises(ValueError, match="exceeds the shipped spectrum"):
        cmb_cl(100000)
    with pytest.raises(ValueError, match="lmax must be >= 0"):
        cmb_cl(-1)


def test_xi_squared_spectrum_matches_legendre_quadrature():
    lmax = 24
    cl = cmb_cl(lmax)
    mu, w = np.polynomial.legendre.leggauss(64)
    ell = np.arange(lmax + 1)
    p = eval_legendre(ell[:, None], mu[None, :])
    xi = ((2 * ell + 1) / (4 * np.pi) * cl) @ p
    k = 2 * np.pi * (p * xi**2) @ w
    np.testing.assert_allclose(_xi_squared_cl(lmax), k, rtol=1e-10, atol=1e-12 * k.max())
    t = nongaussian_transfer(lmax, 0.3)
    assert t[0] == 0 and t[1] == 0 and np.all((t[2:] > 0) & (t[2:] < 1))
    np.testing.assert_allclose(nongaussian_transfer(lmax, 0.0)[2:], 1.0)
    np.testing.assert_allclose(t[2:] ** 2 * nongaussian_cl(lmax, 0.3)[2:], cl[2:])


# ---------------------------------------------------------------- C_l agreement


@pytest.fixture(scope="module")
def gaussian_cls() -> np.ndarray:
    maps = np.array([gaussian_cmb(NSIDE_CL, 1, index=i) for i in range(N_SKIES)])
    return binned_cl(map_cl(maps, LMAX_CL, mode="lsq"), EDGES)


def test_gaussian_mean_cl_within_cosmic_variance(gaussian_cls):
    ref = binned_cl(cmb_cl(LMAX_CL), EDGES)
    sigma = ref * np.sqrt(2.0 / (NU * N_SKIES))  # cosmic variance of the mean of N skies
    ok, chi2 = _chi2_ok((gaussian_cls.mean(0) - ref) / sigma)
    assert ok, f"chi2={chi2:.1f} over {ref.size} bins"
    # the test has power: a 5% amplitude error is rejected
    assert not _chi2_ok((gaussian_cls.mean(0) - 1.05 * ref) / sigma)[0]


@pytest.mark.parametrize("alpha", [RECOMMENDED_ALPHA, 0.3])
def test_nongaussian_mean_cl_equals_gaussian(gaussian_cls, alpha):
    maps = np.array([nongaussian_cmb(NSIDE_CL, 2, alpha, index=i) for i in range(N_SKIES)])
    ng = binned_cl(map_cl(maps, LMAX_CL, mode="lsq"), EDGES)
    ref = binned_cl(cmb_cl(LMAX_CL), EDGES)
    # error bar of each mean from the skies themselves (non-Gaussian C_l scatter more)
    sigma = np.sqrt(ng.var(0, ddof=1) / N_SKIES)
    ok, chi2 = _chi2_ok((ng.mean(0) - ref) / sigma)
    assert ok, f"alpha={alpha}: chi2={chi2:.1f} over {ref.size} bins"
    # and the Gaussian and non-Gaussian means agree with each other
    both = np.sqrt(sigma**2 + gaussian_cls.var(0, ddof=1) / N_SKIES)
    assert _chi2_ok((ng.mean(0) - gaussian_cls.mean(0)) / both)[0]
    if alpha >= 0.3:  # without the per-l rescaling the spectrum would be detectably off
        raw = binned_cl(nongaussian_cl(LMAX_CL, alpha), EDGES)
        assert not _chi2_ok((ng.mean(0) - raw) / sigma)[0]


# ---------------------------------------------------------------- skewness


def _threshold_accuracy(train0, train1, test0, test1) -> float:
    """Balanced held-out accuracy of the best single cut (class 1 above) fitted on train."""
    cuts = np.sort(np.concatenate([train0, train1]))
    acc = (np.mean(train0[None, :] < cuts[:, None], axis=1)
           + np.mean(train1[None, :] >= cuts[:, None], axis=1)) / 2
    cut = cuts[int(np.argmax(acc))]
    return float((np.mean(test0 < cut) + np.mean(test1 >= cut)) / 2)


@pytest.mark.parametrize("alpha, separates", [(RECOMMENDED_ALPHA, True), (0.1, True), (0.0, False)])
def test_pixel_skewness_separates_only_when_alpha_positive(alpha, separates):
    spec = SimulationSpec("mixed", nside=64, n=160, seed=5, alpha=alpha)
    skew = pixel_skewness(np.array([spec.generate(i) for i in range(spec.n)]))
    y = spec.labels()
    s0, s1 = skew[y == 0], skew[y == 1]
    acc = _threshold_accuracy(s0[:40], s1[:40], s0[40:], s1[40:])
    t = stats.ttest_ind(s1, s0, equal_var=False)
    if separates:
        assert acc > 0.8 and t.statistic > 8, (acc, t.statistic)
    else:
        assert acc < 0.65 and abs(t.statistic) < 3, (acc, t.statistic)


# ---------------------------------------------------------------- reproducibility


def test_same_seed_same_sky_any_thread_count():
    """Bitwise on one thread; to round-off across thread counts (ducc0's threaded sums may
    be ordered differently from run to run, so only the last bits can move)."""
    def same(x, y):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-12 * np.abs(y).max())

    a = gaussian_cmb(32, 11, index=4, nthreads=1)
    np.testing.assert_array_equal(a, gaussian_cmb(32, 11, index=4, nthreads=1))
    same(a, gaussian_cmb(32, 11, index=4, nthreads=2))
    b = nongaussian_cmb(32, 11, 0.3, index=4, nthreads=1)
    same(b, nongaussian_cmb(32, 11, 0.3, index=4, nthreads=2))
    spec = SimulationSpec("mixed", nside=32, n=6, seed=11, alpha=0.3)
    same(spec.generate(4), a)  # even index: Gaussian stream (11, 4)
    same(spec.generate(5), nongaussian_cmb(32, 11, 0.3, index=5, nthreads=1))


def test_same_seed_bitwise_identical_across_processes(tmp_path):
    code = (
        "import numpy as np, sys\n"
        "from scatterdist.sims import gaussian_cmb, nongaussian_cmb\n"
        "np.save(sys.argv[1], np.stack([gaussian_cmb(32, 9, index=2, nthreads=1),"
        " nongaussian_cmb(32, 9, 0.2, index=3, nthreads=1)]))\n"
    )
    out = tmp_path / "maps.npy"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=60)
    theirs = np.load(out)
    np.testing.assert_array_equal(theirs[0], gaussian_cmb(32, 9, index=2, nthreads=1))
    np.testing.assert_array_equal(theirs[1], nongaussian_cmb(32, 9, 0.2, index=3, nthreads=1))


def test_different_index_or_seed_gives_independent_skies():
    lmax = 63
    keep = alm_l_index(lmax) >= 2
    scale = np.sqrt(cmb_cl(lmax)[alm_l_index(lmax)][keep])

    def whitened(m: np.ndarray) -> np.ndarray:
        """Real degrees of freedom of a_lm / sqrt(C_l), l >= 2 (unit variance if Gaussian)."""
        w = analysis(m, lmax, mode="lsq")[keep] / scale
        return np.concatenate([w.real, w.imag[alm_m_index(lmax)[keep] > 0]])

    maps = [gaussian_cmb(32, 1, index=0), gaussian_cmb(32, 1, index=1),
            gaussian_cmb(32, 2, index=0), nongaussian_cmb(32, 1, 0.2, index=1)]
    white = np.array([whitened(m) for m in maps])
    r = np.corrcoef(white)
    bound = 5 / np.sqrt(white.shape[1])  # 5 sigma for independent unit-variance samples
    off = r[np.triu_indices(3, 1)]  # the three Gaussian maps
    assert np.all(np.abs(off) < bound), off
    # the non-Gaussian map of (seed 1, index 1) is built on the Gaussian g of that stream
    assert r[1, 3] > 0.9
    assert abs(r[0, 3]) < bound


# ---------------------------------------------------------------- classifier


def test_power_spectrum_classifier_near_chance():
    """Logistic regression on binned log C_l: <= 60% on 200 held-out skies at nside 64."""
    train = SimulationSpec("mixed", nside=64, n=400, seed=21, alpha=RECOMMENDED_ALPHA)
    test = SimulationSpec("mixed", nside=64, n=200, seed=22, alpha=RECOMMENDED_ALPHA)
    ftr = power_spectrum_features(np.array([train.generate(i) for i in range(train.n)]))
    fte = power_spectrum_features(np.array([test.generate(i) for i in range(test.n)]))
    ytr, yte = train.labels(), test.labels()
    acc = LogisticRegression(l2=1.0).fit(ftr, ytr).score(fte, yte)
    assert acc <= 0.60, acc
    # positive control: the same classifier sees a 3% change of the power spectrum
    # (scaling a map by sqrt(1.03) adds exactly log(1.03) to every log C_b)
    ctr, cte = ftr + np.log(1.03) * ytr[:, None], fte + np.log(1.03) * yte[:, None]
    assert LogisticRegression(l2=1.0).fit(ctr, ytr).score(cte, yte) > 0.8


# ---------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="lognormal", nside=32, n=4, alpha=0.1), "kind must be one of"),
        (dict(kind="gaussian", nside=32, n=0), "n \\(number of maps\\) must be"),
        (dict(kind="nongaussian", nside=32, n=4, alpha=-0.1), "alpha must be a finite number >= 0"),
        (dict(kind="nongaussian", nside=32, n=4), "needs alpha"),
        (dict(kind="mixed", nside=32, n=4), "needs alpha"),
        (dict(kind="gaussian", nside=48, n=4), "power of two"),
        (dict(kind="gaussian", nside=32, n=4, seed=-1), "seed must be"),
        (dict(kind="gaussian", nside=32, n=4, alpha=0.5), "no effect on kind='gaussian'"),
        (dict(kind="gaussian", nside=32, n=4, lmax=200), "above what an nside=32 map"),
        (dict(kind="nongaussian", nside=32, n=4, alpha=float("nan")), "finite"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimulationSpec(**kwargs)


def test_spec_catalog_and_roundtrip():
    spec = SimulationSpec("mixed", nside=16, n=7, seed=3, alpha=0.5)
    ids = spec.map_ids()
    assert len(ids) == 7 and len(set(ids)) == 7 and ids[0] == "mixed-s3-000000"
    labels = spec.labels()
    assert labels.dtype == np.int8 and labels.tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert SimulationSpec("mixed", nside=16, n=10, seed=3, alpha=0.5).labels().sum() == 5
    assert spec.source(3) == "sim:nongaussian seed=3 index=3 alpha=0.5 nside=16 lmax=31"
    assert spec.source(2).startswith("sim:gaussian seed=3 index=2")
    assert SimulationSpec("gaussian", 16, 3).labels().tolist() == [0, 0, 0]
    assert SimulationSpec("nongaussian", 16, 3, alpha=0.1).labels().tolist() == [1, 1, 1]
    m = spec.generate(6)
    assert m.shape == (12 * 16**2,) and m.dtype == np.float64 and np.all(np.isfinite(m))
    with pytest.raises(IndexError, match="out of range"):
        spec.generate(7)
    d = json.loads(json.dumps(spec.to_dict()))
    assert SimulationSpec.from_dict(d) == spec
    with pytest.raises(ValueError, match="unknown SimulationSpec field"):
        SimulationSpec.from_dict({**d, "beam": 5})
    with pytest.raises(ValueError, match="needs field"):
        SimulationSpec.from_dict({"kind": "gaussian", "nside": 16})


# ---------------------------------------------------------------- writers + CLI


@pytest.fixture(scope="module")
def cluster_address():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        yield cluster.scheduler_address


def test_cli_simulate_zarr(tmp_path, cluster_address, capsys):
    out = tmp_path / "maps.zarr"
    argv = ["simulate", "--kind", "mixed", "--n", "7", "--nside", "16", "--seed", "4",
            "--alpha", "0.2", "--output", str(out), "--cluster", cluster_address,
            "--maps-per-task", "2"]
    assert cli_main(argv) == 0
    ds = xr.open_zarr(out)
    spec = SimulationSpec("mixed", nside=16, n=7, seed=4, alpha=0.2)
    assert ds["maps"].dims == ("map", "pixel") and ds["maps"].dtype == np.float64
    assert ds["maps"].shape == (7, 12 * 16**2)
    assert ds["maps"].encoding["chunks"] == (1, 12 * 16**2)
    assert ds["map"].values.tolist() == spec.map_ids()
    assert ds["label"].dtype == np.int8 and ds["label"].values.tolist() == spec.labels().tolist()
    assert ds.attrs["ordering"] == "RING" and ds.attrs["units"] == "muK"
    assert SimulationSpec.from_dict(json.loads(ds.attrs["simulation_spec"])) == spec
    maps = ds["maps"].values
    for i in range(spec.n):  # made on two worker processes, equal to a local run to round-off
        local = spec.generate(i)  # (the workers' thread count may order ducc0's sums differently)
        np.testing.assert_allclose(maps[i], local, rtol=0, atol=1e-12 * np.abs(local).max())
    assert str(ds["source"].values[1]) == spec.source(1)
    # an existing output is refused without --overwrite
    capsys.readouterr()
    assert cli_main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(argv + ["--overwrite"]) == 0


def test_cli_simulate_fits(tmp_path, cluster_address):
    out = tmp_path / "fits"
    assert cli_main(["simulate", "--kind", "nongaussian", "--n", "3", "--nside", "16",
                     "--seed", "8", "--alpha", "0.1", "--output", f"{out}/",
                     "--cluster", cluster_address, "--no-progress"]) == 0
    spec = SimulationSpec("nongaussian", nside=16, n=3, seed=8, alpha=0.1)
    catalog = json.loads((out / "catalog.json").read_text())
    assert [e["id"] for e in catalog["maps"]] == spec.map_ids()
    for i, entry in enumerate(catalog["maps"]):
        m, header = hp.read_map(out / entry["file"], h=True, dtype=np.float64)
        header = dict(header)
        assert header["ORDERING"] == "RING" and header["NSIDE"] == 16
        assert header["LABEL"] == 1 and header["SIMINDEX"] == i and header["SIMALPHA"] == 0.1
        assert header["FWHM"] == 0.0 and header["NOISE"] == 0.0 and header["GALCUT"] == -1.0  # none
        np.testing.assert_array_equal(m, spec.generate(i))


def test_cli_rejects_bad_spec(tmp_path, capsys):
    assert cli_main(["simulate", "--kind", "nongaussian", "--n", "3", "--nside", "16",
                     "--output", str(tmp_path / "x.zarr")]) == 2
    assert "needs alpha" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


def test_write_simulations_in_process_and_with_client(tmp_path, cluster_address):
    from distributed import Client

    spec = SimulationSpec("gaussian", nside=8, n=5, seed=1)
    local = write_simulations(spec, tmp_path / "a.zarr", progress=False)
    with Client(cluster_address) as client:
        remote = write_simulations(spec, tmp_path / "b.zarr", client=client, maps_per_task=1,
                                   max_in_flight=1, progress=False)
    a = xr.open_zarr(local)["maps"].values
    np.testing.assert_array_equal(a, xr.open_zarr(remote)["maps"].values)
    assert not np.isnan(a).any()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_simulations(spec, local, progress=False)


# ---------------------------------------------------------------- observation: beam, noise, masks

WMAP_MASK = Path(__file__).parent / "data" / "wmap_temperature_analysis_mask_r9_7yr_v4_udgraded32.fits"


def test_galactic_cut_mask():
    from scatterdist.sims import galactic_cut_mask

    m = galactic_cut_mask(64, 20)
    assert m.shape == (12 * 64**2,) and m.dtype == np.float64 and set(np.unique(m)) == {0.0, 1.0}
    z = hp.pix2vec(64, np.arange(m.size))[2]  # z = sin(b) in Galactic coordinates
    np.testing.assert_array_equal(m, (np.abs(z) > np.sin(np.radians(20))).astype(float))
    assert abs(m.mean() - (1 - np.sin(np.radians(20)))) < 0.01  # 0.658
    assert galactic_cut_mask(32, 0).mean() > 0.95
    with pytest.raises(ValueError, match="no sky"):
        galactic_cut_mask(32, 90)
    with pytest.raises(ValueError, match="degrees"):
        galactic_cut_mask(32, -1)


@pytest.mark.parametrize("kind,alpha", [("gaussian", None), ("nongaussian", 0.5)])
def test_beam_is_the_gaussian_window_in_harmonic_space(kind, alpha):
    nside, fwhm = 32, 240.0
    lmax = 2 * nside - 1
    plain = SimulationSpec(kind, nside, 2, seed=5, alpha=alpha).generate(1)
    beamed = SimulationSpec(kind, nside, 2, seed=5, alpha=alpha, fwhm_arcmin=fwhm).generate(1)
    ell = alm_l_index(lmax)
    a = analysis(plain, lmax, mode="lsq")
    b = analysis(beamed, lmax, mode="lsq")
    sigma = np.radians(fwhm / 60) / np.sqrt(8 * np.log(2))
    window = np.exp(-ell * (ell + 1) * sigma**2 / 2)  # written out, not healpy's
    np.testing.assert_allclose(b, a * window, rtol=0, atol=1e-8 * np.abs(a).max())
    assert window.min() < 0.2  # the beam really suppresses small scales here (l = 63)


def test_white_noise_level_stream_and_reproducibility():
    nside, depth = 64, 45.0
    spec = SimulationSpec("gaussian", nside, 3, seed=2, noise_uK_arcmin=depth)
    clean = SimulationSpec("gaussian", nside, 3, seed=2)
    noise = spec.generate(1) - clean.generate(1)  # the sky stream is untouched by the noise
    resol_arcmin = np.degrees(np.sqrt(4 * np.pi / (12 * nside**2))) * 60
    sigma = depth / resol_arcmin
    assert abs(noise.std() / sigma - 1) < 0.02 and abs(noise.mean()) < 4 * sigma / np.sqrt(noise.size)
    assert abs(np.corrcoef(noise, clean.generate(1))[0, 1]) < 0.03  # independent of the sky
    np.testing.assert_array_equal(spec.generate(1), spec.generate(1))
    other = spec.generate(2) - clean.generate(2)
    assert abs(np.corrcoef(noise, other)[0, 1]) < 0.03  # each map has its own noise
    # White: the noise power spectrum is flat at sigma^2 * 4 pi / npix.
    cl = map_cl(noise, lmax=2 * nside - 1)[2:]
    expected = sigma**2 * 4 * np.pi / noise.size
    assert abs(cl.mean() / expected - 1) < 0.05


def test_masked_simulations_are_unseen_outside_and_load_with_their_mask(tmp_path):
    from scatterdist.inputs import Catalog, LoadedMap, load_maps
    from scatterdist.sims import galactic_cut_mask
    from scatterdist.sphere.mask import read_mask

    nside = 64
    spec = SimulationSpec("mixed", nside, 4, seed=1, alpha=0.2, galactic_cut=20, mask=str(WMAP_MASK))
    w = spec.mask_weights()
    np.testing.assert_array_equal(w, galactic_cut_mask(nside, 20) * read_mask(WMAP_MASK, nside))
    clean = SimulationSpec("mixed", nside, 4, seed=1, alpha=0.2)
    for i in (0, 1):
        m, ref = spec.generate(i), clean.generate(i)
        assert (m[w == 0] == hp.UNSEEN).all()
        np.testing.assert_array_equal(m[w > 0], ref[w > 0])
    text = (f"sim:kind=gaussian,n=3,nside={nside},seed=4,fwhm_arcmin=30,noise_uK_arcmin=45,"
            "galactic_cut=20")
    cat = Catalog.from_inputs([text])
    assert "fwhm_arcmin=30 noise_uK_arcmin=45 galactic_cut=20" in cat.sources[0]
    loaded = load_maps(cat.refs, nside, fields=("I",))
    cut = galactic_cut_mask(nside, 20)
    for lm in loaded:
        assert isinstance(lm, LoadedMap) and lm.own_mask
        np.testing.assert_array_equal(lm.mask, cut)
        assert abs(lm.sky_fraction - 0.658) < 0.01 and (lm.data[0][cut == 0] == 0).all()
    assert not cat.masks_may_differ  # one spec, one mask: the store keeps one coverage


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fwhm_arcmin=-1.0), "fwhm_arcmin must be a finite number >= 0"),
        (dict(noise_uK_arcmin=float("inf")), "noise_uK_arcmin"),
        (dict(galactic_cut=95.0), "leaves no sky"),
        (dict(mask="/nonexistent/mask.fits"), "does not exist"),
    ],
)
def test_observation_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimulationSpec("gaussian", 16, 2, **kwargs)


def test_cli_simulate_observed_skies(tmp_path, cluster_address, capsys):
    out = tmp_path / "obs.zarr"
    argv = ["simulate", "--kind", "gaussian", "--n", "3", "--nside", "32", "--seed", "6",
            "--fwhm-arcmin", "60", "--noise-uK-arcmin", "30", "--galactic-cut", "20",
            "--mask", str(WMAP_MASK), "--output", str(out), "--cluster", cluster_address, "--no-progress"]
    assert cli_main(argv) == 0
    assert "fwhm_arcmin=60, noise_uK_arcmin=30, galactic_cut=20" in capsys.readouterr().out
    spec = SimulationSpec("gaussian", 32, 3, seed=6, fwhm_arcmin=60, noise_uK_arcmin=30,
                          galactic_cut=20, mask=str(WMAP_MASK))
    ds = xr.open_zarr(out)
    assert SimulationSpec.from_dict(json.loads(ds.attrs["simulation_spec"])) == spec
    assert ds.attrs["galactic_cut"] == 20 and ds.attrs["mask"] == str(WMAP_MASK)
    maps = ds["maps"].values
    for i in range(3):
        np.testing.assert_array_equal(maps[i], spec.generate(i))
    assert ((maps == hp.UNSEEN).mean(axis=1) == (spec.mask_weights() == 0).mean()).all()
    # A mask that cannot be used is refused before anything is written.
    bad = tmp_path / "bad.fits"
    hp.write_map(str(bad), np.full(12 * 16**2, 3.0))
    assert cli_main(["simulate", "--kind", "gaussian", "--n", "2", "--nside", "16", "--mask", str(bad),
                     "--output", str(tmp_path / "no.zarr")]) == 2
    assert "[0, 1]" in capsys.readouterr().err and not (tmp_path / "no.zarr").exists()
