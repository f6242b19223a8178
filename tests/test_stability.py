"""Stability of the scattering transform to small deformations (issue 13), and per-kind equivariance."""

import json

import healpy as hp
import numpy as np
import pytest

from scatterdist import Scattering
from scatterdist.cli import main
from scatterdist.equivariance import random_bandlimited_alm
from scatterdist.stability import (
    deform,
    deformation_stability,
    displaced_positions,
    equivariance_by_kind,
    pixel_scale,
    random_displacement,
)


def test_deform_is_exact_resampling_at_displaced_points():
    rng = np.random.default_rng(3)
    nside, L = 16, 32
    alm = random_bandlimited_alm(L, rng)[0]
    d_theta, d_phi = random_displacement(nside, rng, lmax=4)
    assert np.mean(d_theta**2 + d_phi**2) == pytest.approx(1.0)
    a = 0.5 * pixel_scale(nside)
    loc = displaced_positions(nside, a * d_theta, a * d_phi)
    # the displaced point lies at angular distance |d| from its pixel centre
    v0 = np.stack(hp.pix2vec(nside, np.arange(12 * nside**2)))
    v1 = hp.ang2vec(loc[:, 0], loc[:, 1]).T
    dist = np.arccos(np.clip(np.sum(v0 * v1, axis=0), -1, 1))
    np.testing.assert_allclose(dist, a * np.hypot(d_theta, d_phi), rtol=1e-6, atol=1e-12)
    # and the resampled value is the harmonic series there (healpy's point interpolation is not
    # exact: compare a subset with a direct sum of spherical harmonics instead)
    out = deform(alm, L - 1, nside, loc)
    sub = rng.choice(out.size, 20, replace=False)
    ell, m = hp.Alm.getlm(L - 1)
    from scipy.special import sph_harm_y

    ylm = sph_harm_y(ell[None, :], m[None, :], loc[sub, 0][:, None], loc[sub, 1][:, None])
    direct = (ylm @ alm).real + ((ylm[:, m > 0] @ alm[m > 0]).real)  # m < 0 terms: conjugates
    np.testing.assert_allclose(out[sub], direct, rtol=0, atol=1e-9 * np.abs(direct).max())


def test_order_one_is_five_times_more_stable_than_the_map():
    amps = [0, 0.25, 0.5, 1.0]
    rows = deformation_stability(Scattering(64), amps, n_maps=2, seed=1)
    assert [r["amplitude_pixels"] for r in rows] == amps
    assert rows[0]["map"] < 1e-9 and rows[0]["scattering"]["1"] < 1e-9  # no displacement, no change
    for r in rows[1:]:
        assert r["map"] >= 5 * r["scattering"]["1"], r
        assert r["map"] >= 3 * r["scattering"]["0"] and r["map"] >= 2 * r["scattering"]["2"], r
    # about linear in the amplitude (small deformations)
    s1 = np.array([r["scattering"]["1"] for r in rows[1:]])
    assert 1.6 < s1[1] / s1[0] < 2.4 and 1.6 < s1[2] / s1[1] < 2.4


def test_stability_command_prints_table_plot_and_json(tmp_path, capsys):
    png, js, md = tmp_path / "stab.png", tmp_path / "stab.json", tmp_path / "stab.md"
    assert main(["stability", "--nside", "32", "--amplitudes", "0.5", "1", "--maps", "1", "--signed",
                 "--plot", str(png), "--json", str(js), "--markdown", str(md), "--threads", "1"]) == 0
    page = md.read_text()
    assert "| 0.5 |" in page and "| 1 |" in page and "scattering order 1 signed" in page and "stab.png" in page
    out = capsys.readouterr().out
    assert "S order 1 signed" in out and "map change / order-1 change: at least" in out
    assert png.stat().st_size > 10_000
    data = json.loads(js.read_text())
    assert [r["amplitude_pixels"] for r in data["rows"]] == [0.5, 1.0]
    assert set(data["rows"][0]["scattering"]) == {"0", "1", "2", "1 signed"}
    assert data["config"]["signed"] is True


def test_stability_refuses_bad_amplitudes():
    with pytest.raises(ValueError, match="amplitudes"):
        deformation_stability(Scattering(16, depth=1), [-1.0])
    assert main(["stability", "--nside", "16", "--amplitudes", "-1"]) == 2


def test_equivariance_by_kind_separates_signed_paths():
    rows = equivariance_by_kind(Scattering(16, depth=1, signed=True, oversample=2), n_trials=1)
    assert [(r["order"], r["kind"], r["paths"]) for r in rows] == [(0, "modulus", 1), (1, "modulus", 2), (1, "signed", 2)]
    assert all(0 <= r["mean"] <= r["max"] < 0.1 for r in rows)
