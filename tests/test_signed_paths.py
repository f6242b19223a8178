"""Signed and power first-order paths: an option of ``Scattering`` (issue 13)."""

import pickle

import healpy as hp
import numpy as np
import pytest

from scatterdist import Scattering
from scatterdist.cli import main
from scatterdist.scattering.filters import KindPath


def test_default_transform_is_unchanged(red_maps):
    maps, _ = red_maps
    sc = Scattering(32)
    assert "signed" not in sc.config() and "powers" not in sc.config()  # same config hash as before
    assert list(sc.path_coords()["kind"]) == ["modulus"] * 7
    ext = Scattering(32, signed=True, powers=(3,))
    assert ext.paths[:7] == sc.paths and ext.path_labels[:7] == sc.path_labels
    assert ext.path_labels[7:] == ["S1 j1=4 signed", "S1 j1=5 signed", "S1 j1=6 signed",
                                   "S1 j1=4 q=3", "S1 j1=5 q=3", "S1 j1=6 q=3"]
    coords = ext.path_coords()
    assert list(coords["kind"]) == ["modulus"] * 7 + ["signed"] * 3 + ["power"] * 3
    assert list(coords["exponent"]) == [1.0] * 7 + [2.0] * 3 + [3.0] * 3
    assert list(coords["order"][7:]) == [1] * 6 and list(coords["j1"][7:]) == [4, 5, 6, 4, 5, 6]
    out, base = ext(maps), sc(maps)
    assert out.shape == (4, 13, 768)
    np.testing.assert_allclose(out[:, :7], base, rtol=0, atol=1e-13 * np.abs(base).max())  # modulus paths untouched
    rebuilt = Scattering(**ext.config())
    assert rebuilt.config() == ext.config() and rebuilt.paths == ext.paths


def test_signed_and_power_paths_match_a_healpy_reference(red_maps):
    maps, _ = red_maps
    sc = Scattering(32, signed=True, powers=(2.5,))
    bank = sc.bank
    alm = hp.map2alm(maps[0] - maps[0].mean(), lmax=sc.L - 1, iter=0, use_weights=False)  # wavelets: no monopole
    ell_in = hp.Alm.getlm(sc.L - 1)[0]
    ell0 = hp.Alm.getlm(sc.L0 - 1)[0]
    got = sc.transform_alm(maps[0])
    for j in bank.scales:
        Lj = bank.bandlimit(j)
        w_alm = alm * bank.psi[j - bank.J0][ell_in]
        w_alm = w_alm[hp.Alm.getidx(sc.L - 1, *hp.Alm.getlm(Lj - 1))]
        w = hp.alm2map(w_alm, bank.nside(j), lmax=Lj - 1)
        for kind, pointwise in [("signed", w * np.abs(w)), ("q=2.5", np.abs(w) ** 2.5)]:
            ref = hp.map2alm(pointwise, lmax=sc.L0 - 1, iter=0, use_weights=False) * bank.phi[ell0]
            k = sc.path_labels.index(f"S1 j1={j} {kind}")
            np.testing.assert_allclose(got[k], ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_signed_paths_keep_the_sign_that_the_modulus_loses(red_maps):
    maps, _ = red_maps
    sc = Scattering(32, signed=True, powers=(3,))
    kind = sc.path_coords()["kind"]
    plus, minus = sc.invariants(maps), sc.invariants(-maps)
    even = kind != "signed"
    np.testing.assert_allclose(minus[:, even][:, 1:], plus[:, even][:, 1:], rtol=1e-12)
    np.testing.assert_allclose(minus[:, kind == "signed"], -plus[:, kind == "signed"], rtol=1e-12)
    assert np.all(np.abs(plus[:, kind == "signed"]) > 0)
    # a skewed field (f + f^2) has positive signed invariants at every scale, its negative negative
    skewed = maps + 3.0 * (maps**2 - (maps**2).mean(axis=-1, keepdims=True)) / maps.std()
    s = sc.invariants(skewed)[:, kind == "signed"]
    assert np.all(s > 0) and np.all(sc.invariants(-skewed)[:, kind == "signed"] < 0)


def test_kind_paths_compare_hash_and_pickle():
    p = KindPath((5,), "signed")
    assert p != (5,) and (5,) != p and len(p) == 1 and p[0] == 5
    assert p == KindPath((5,), "signed") and p != KindPath((5,), "power", 2.0)
    assert len({p, (5,), KindPath((5,), "power", 3.0)}) == 3
    q = pickle.loads(pickle.dumps(p))
    assert q == p and q.kind == "signed" and q.exponent == 2.0
    sc = pickle.loads(pickle.dumps(Scattering(16, signed=True)))
    assert sc.path_labels[-1] == "S1 j1=5 signed"


@pytest.mark.parametrize("kwargs, match", [
    ({"powers": (1,)}, "!= 1"),
    ({"powers": (-2,)}, "> 0"),
    ({"powers": (3, 3)}, "distinct"),
    ({"powers": ("x",)}, "sequence of numbers"),
    ({"signed": "yes"}, "True or False"),
    ({"signed": True, "depth": 0}, "depth >= 1"),
])
def test_invalid_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Scattering(16, **kwargs)


def test_torch_backend_agrees(red_maps, torch_one_thread):
    maps, _ = red_maps
    a = Scattering(32, signed=True, powers=(3,))(maps[:2])
    b = Scattering(32, signed=True, powers=(3,), backend="torch", dtype="float64")(maps[:2])
    np.testing.assert_allclose(b.numpy(), a, rtol=0, atol=1e-9 * np.abs(a).max())


def test_equivariance_command_reports_signed_paths(capsys):
    assert main(["equivariance", "--nside", "32", "--trials", "2", "--oversample", "2", "--signed",
                 "--powers", "3"]) == 0
    out = capsys.readouterr().out
    rows = {(int(r[0]), r[1]): float(r[3]) for r in (line.split() for line in out.splitlines())
            if len(r) == 5 and r[0].isdigit()}
    assert set(rows) == {(0, "modulus"), (1, "modulus"), (2, "modulus"), (1, "signed"), (1, "power")}
    # measured at nside 32, oversample 2: modulus ~3e-3, signed ~1e-2, power ~2e-3
    assert rows[(1, "signed")] < 0.05 and rows[(1, "power")] < 0.02 and rows[(1, "modulus")] < 0.02
    assert "signed=True" in out
