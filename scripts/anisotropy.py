"""Orientation matters: anisotropic vs isotropic Gaussian skies with the same power spectrum.

    python scripts/anisotropy.py [--nside 32] [--skies 300] [--anisotropy 0.25] [--seed 0] [--threads 2] [--json FILE]

Anisotropic class: a Gaussian field stretched along the meridians. White noise is filtered by
a steerable kernel of azimuthal band ``--stretch-N`` (``b(l) s_lm``, S2LET's directionality
component with a red profile ``b(l)``) held at orientation ``gamma = 0`` everywhere, i.e. the
directional transform :func:`scatterdist.scattering.directional.directional_components`
steered to one orientation: every patch has the same preferred direction (north-south).
The anisotropic sky is ``sqrt(a) s + sqrt(1 - a) g`` with ``a = --anisotropy``: the stretched
field s plus an independent isotropic Gaussian g of the same C_l (the share ``a`` of the
variance is oriented). Isotropic class: Gaussian skies whose C_l is the stretched field's mean
C_l (measured on ``--calibration`` extra skies), so the two classes share the power spectrum
and are both Gaussian: only orientation tells them apart.

Each statistic is scored by the package's L2 logistic regression (``l2 = 1``, fixed: no choice
made on the test skies) fitted on the first half of the skies of each class and scored on the
second half (new skies, same generator): the rotation invariants (spherical means) of
``Scattering(depth=2)`` at N = 1 and at N = 4, against the moment baselines (binned log C_l,
pixel skewness/kurtosis, wavelet skewness/kurtosis per scale). Rows ``S1`` use only the paths of order <= 1 (a Gaussian
sky's first-order invariants at N = 1 depend on its power spectrum alone). Accuracies carry
binomial standard errors; the N = 4 row also gives its paired difference with each other row (same
test skies) and that difference's standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def _stretched_skies(n: int, nside: int, L: int, stretch_N: int, rng: np.random.Generator, nthreads: int) -> np.ndarray:
    """``(n, npix)`` Gaussian skies stretched along the meridians (see module docstring)."""
    from scatterdist.scattering.directional import directional_components, steer
    from scatterdist.sphere.alm import alm_size
    from scatterdist.wavelets import steerability_coefficients

    ell = np.arange(L)
    profile = np.where(ell >= 2, 1.0 / np.maximum(ell, 1), 0.0)  # C_l ~ l^-2 before stretching
    kernel = profile[:, None] * steerability_coefficients(L, stretch_N)
    white = (rng.standard_normal((n, alm_size(L - 1))) + 1j * rng.standard_normal((n, alm_size(L - 1)))) / math.sqrt(2)
    white[:, :L] = rng.standard_normal((n, L))  # m = 0: real
    comps = directional_components(white, kernel, L - 1, nside=nside, nthreads=nthreads)
    return steer(comps, stretch_N, [0.0])[0]


def _isotropic_skies(n: int, nside: int, cl: np.ndarray, rng: np.random.Generator, nthreads: int) -> np.ndarray:
    from scatterdist.sphere import synthesis
    from scatterdist.sphere.alm import alm_l_index, alm_size

    L = cl.size
    sigma = np.sqrt(cl)[alm_l_index(L - 1)]
    alm = (rng.standard_normal((n, alm_size(L - 1))) + 1j * rng.standard_normal((n, alm_size(L - 1)))) * sigma / math.sqrt(2)
    alm[:, :L] = rng.standard_normal((n, L)) * np.sqrt(cl)
    return synthesis(alm, nside, L - 1, nthreads=nthreads)


def _features(maps: np.ndarray, nside: int, nthreads: int) -> dict[str, np.ndarray]:
    from scatterdist import Scattering
    from scatterdist.sims.baseline import pixel_moment_features, power_spectrum_features, wavelet_moment_features

    J0 = 2
    out = {}
    for N in (1, 4):
        sc = Scattering(nside, depth=2, J0=J0, N=N, nthreads=nthreads)
        inv = np.log(np.abs(sc.invariants(maps)) + 1e-30)
        out[f"scattering N={N}"] = inv
        out[f"scattering N={N} S1"] = inv[:, sc.path_coords()["order"] <= 1]
    out["power spectrum"] = power_spectrum_features(maps, nthreads=nthreads)
    out["pixel moments"] = pixel_moment_features(maps)
    out["wavelet moments"] = wavelet_moment_features(maps, J0=J0, nthreads=nthreads)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nside", type=int, default=32)
    parser.add_argument("--skies", type=int, default=300, help="skies per class (half train, half test)")
    parser.add_argument("--calibration", type=int, default=300, help="extra anisotropic skies for the mean C_l")
    parser.add_argument("--stretch-N", type=int, default=3, help="azimuthal band of the stretching kernel")
    parser.add_argument("--anisotropy", type=float, default=0.25, help="share of the variance that is oriented (0..1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args()

    from scatterdist.sims.baseline import LogisticRegression
    from scatterdist.sims.stats import map_cl

    start = time.perf_counter()
    nside, L = args.nside, 2 * args.nside
    rng = np.random.default_rng(args.seed)
    calib = _stretched_skies(args.calibration, nside, L, args.stretch_N, rng, args.threads)
    cl = map_cl(calib, L - 1, mode="lsq", nthreads=args.threads).mean(axis=0)
    a = args.anisotropy
    aniso = (math.sqrt(a) * _stretched_skies(args.skies, nside, L, args.stretch_N, rng, args.threads)
             + math.sqrt(1 - a) * _isotropic_skies(args.skies, nside, cl, rng, args.threads))
    iso = _isotropic_skies(args.skies, nside, cl, rng, args.threads)
    fa, fi = _features(aniso, nside, args.threads), _features(iso, nside, args.threads)
    feats = {k: np.concatenate([fa[k], fi[k]]) for k in fa}
    y = np.concatenate([np.ones(args.skies), np.zeros(args.skies)])
    half = args.skies // 2
    train = np.concatenate([np.arange(half), args.skies + np.arange(half)])
    test = np.setdiff1d(np.arange(2 * args.skies), train)
    correct = {}
    for name, x in feats.items():
        model = LogisticRegression(l2=1.0).fit(x[train], y[train])
        correct[name] = (model.predict_proba(x[test]) >= 0.5) == (y[test] == 1)
    n_test = test.size
    ref = correct["scattering N=4"]
    rows = []
    print(f"nside {nside}, L {L}, {args.skies} skies per class ({n_test} test skies in all), stretch N={args.stretch_N}, anisotropy {a:g}, "
          f"seed {args.seed}, {time.perf_counter() - start:.0f} s")
    print(f"{'statistic':<21} {'features':>8} {'test accuracy':>14} {'N=4 minus this (paired)':>26}")
    for name, ok in correct.items():
        acc = ok.mean()
        se = math.sqrt(max(acc * (1 - acc), 1.0 / n_test) / n_test)
        diff = ref.astype(float) - ok.astype(float)
        dse = max(diff.std(ddof=1), 1.0 / math.sqrt(n_test)) / math.sqrt(n_test) if name != "scattering N=4" else float("nan")
        rows.append({"statistic": name, "features": int(feats[name].shape[1]), "accuracy": float(acc), "se": se,
                     "n4_minus": float(diff.mean()), "n4_minus_se": dse})
        extra = "" if name == "scattering N=4" else f"{diff.mean():+.3f} +- {dse:.3f}"
        print(f"{name:<21} {feats[name].shape[1]:>8} {acc:>8.3f} +- {se:.3f} {extra:>26}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
