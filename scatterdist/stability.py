"""Measured properties of a scattering configuration beyond :func:`equivariance_error`.

- :func:`path_equivariance_errors` / :func:`equivariance_by_kind`: the rotation-equivariance
  error of every path (extra path kinds, such as signed first-order paths, reported apart);
- :func:`deformation_stability`: the relative change of the scattering coefficients (per order)
  under smooth random displacements of growing amplitude, next to the change of the map and of
  its wavelet coefficients (the fourth property the paper's case rests on).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from scatterdist.equivariance import random_bandlimited_alm, random_rotation
from scatterdist.scattering.core import orientation_harmonic_array, path_arrays
from scatterdist.sphere import rotate_alm, synthesis


def _to_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def path_equivariance_errors(scattering: Any, n_trials: int = 4, seed: int = 0) -> np.ndarray:
    """Relative equivariance error ``||S_p(R f) - R S_p(f)|| / ||R S_p(f)||`` per trial and path.

    Same protocol as :func:`scatterdist.equivariance_error` (random red-spectrum maps
    bandlimited at L, random exact rotations, outputs compared at ``nside_out``); returns the
    raw ``(n_trials, n_paths)`` array instead of a per-order summary.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    rng = np.random.default_rng(seed)
    sc = scattering
    L, L0 = sc.L, sc.L0
    errors = []
    for _ in range(n_trials):
        alm = random_bandlimited_alm(L, rng)[0]
        angles = random_rotation(rng)
        f = synthesis(alm, sc.nside, L - 1)
        rf = synthesis(rotate_alm(alm, L - 1, *angles), sc.nside, L - 1)
        s_alm = _to_numpy(sc.transform_alm(np.stack([f, rf]))).astype(np.complex128)
        expected = synthesis(rotate_alm(s_alm[0], L0 - 1, *angles), sc.nside_out, L0 - 1)
        actual = synthesis(s_alm[1], sc.nside_out, L0 - 1)
        num = np.linalg.norm(actual - expected, axis=-1)
        den = np.linalg.norm(expected, axis=-1)
        errors.append(num / np.where(den > 0, den, 1.0))
    return np.array(errors)


def equivariance_by_kind(scattering: Any, n_trials: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Per (order, path kind) summary of :func:`path_equivariance_errors`.

    Rows ``{"order", "kind", "paths", "mean", "max"}`` in path order of first appearance
    (kinds: ``"modulus"`` for the paper's paths, ``"signed"``, ``"power"``; ``"modulus h=1"``
    for the orientation harmonics of directional transforms).
    """
    err = path_equivariance_errors(scattering, n_trials=n_trials, seed=seed)
    coords = path_arrays(list(scattering.paths))
    harmonic = orientation_harmonic_array(list(scattering.paths))
    coords["kind"] = np.array([k if h == 0 else f"{k} h={h}" for k, h in zip(coords["kind"].tolist(), harmonic.tolist())])
    rows: list[dict[str, Any]] = []
    seen: list[tuple[int, str]] = []
    for o, k in zip(coords["order"].tolist(), coords["kind"].tolist()):
        if (o, k) not in seen:
            seen.append((o, k))
    for o, k in seen:
        sel = (coords["order"] == o) & (coords["kind"] == k)
        rows.append({"order": int(o), "kind": str(k), "paths": int(sel.sum()),
                     "mean": float(err[:, sel].mean()), "max": float(err[:, sel].max())})
    return rows


# --------------------------------------------------------------------------------------------
# Stability to small deformations
# --------------------------------------------------------------------------------------------

def pixel_scale(nside: int) -> float:
    """Typical HEALPix pixel size ``sqrt(4*pi / npix)`` in radians."""
    return math.sqrt(4.0 * math.pi / (12 * nside * nside))


def random_displacement(nside: int, rng: np.random.Generator, lmax: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random tangent vector field on the HEALPix grid, RMS length 1 (radians).

    The gradient of a random scalar potential bandlimited at ``lmax`` (white ``a_lm`` for
    ``1 <= l <= lmax``), evaluated at the pixel centres of ``nside`` (RING): returns its
    ``(theta, phi)`` components ``(npix,)`` each, scaled so that ``mean(|d|^2) = 1``.
    """
    import healpy as hp

    if lmax < 1:
        raise ValueError(f"the displacement potential needs lmax >= 1, got {lmax}")
    alm = random_bandlimited_alm(lmax + 1, rng)[0]
    _, d_theta, d_phi = hp.alm2map_der1(alm, nside, lmax=lmax)
    norm = math.sqrt(float(np.mean(d_theta**2 + d_phi**2)))
    return d_theta / norm, d_phi / norm


def displaced_positions(nside: int, d_theta: np.ndarray, d_phi: np.ndarray) -> np.ndarray:
    """Pixel centres moved along great circles by the tangent vectors ``(d_theta, d_phi)`` (radians).

    ``n' = cos|d| n + sin|d| d/|d|``; returns ``(npix, 2)`` colatitude/longitude (ducc0's ``loc``).
    """
    import healpy as hp

    theta, phi = hp.pix2ang(nside, np.arange(12 * nside * nside))
    st, ct, sp, cp = np.sin(theta), np.cos(theta), np.sin(phi), np.cos(phi)
    n = np.stack([st * cp, st * sp, ct])
    e_theta = np.stack([ct * cp, ct * sp, -st])
    e_phi = np.stack([-sp, cp, np.zeros_like(sp)])
    a = np.hypot(d_theta, d_phi)
    sinc = np.where(a > 0, np.sin(a) / np.where(a > 0, a, 1.0), 1.0)
    moved = np.cos(a) * n + sinc * (d_theta * e_theta + d_phi * e_phi)
    loc = np.empty((theta.size, 2))
    loc[:, 0] = np.arccos(np.clip(moved[2], -1.0, 1.0))
    loc[:, 1] = np.mod(np.arctan2(moved[1], moved[0]), 2 * np.pi)
    return loc


def deform(alm: np.ndarray, lmax: int, nside: int, loc: np.ndarray, nthreads: int = 1, epsilon: float = 1e-11) -> np.ndarray:
    """Exact resampling of the bandlimited map ``alm`` at the positions ``loc`` ``(npix, 2)``.

    ``f_tau(p) = f(n'_p)``: the spherical-harmonic series evaluated at the displaced points
    (``ducc0.sht.synthesis_general``, accuracy ``epsilon``); returns ``(npix,)``.
    """
    import ducc0

    out = ducc0.sht.synthesis_general(alm=np.ascontiguousarray(alm, dtype=np.complex128)[None, :], spin=0,
                                      lmax=lmax, loc=loc, epsilon=epsilon, nthreads=nthreads)
    return out[0]


def _group_norms(x: np.ndarray, groups: list[tuple[str, np.ndarray]]) -> dict[str, float]:
    return {name: float(np.sum(x[..., sel, :] ** 2)) for name, sel in groups}


def deformation_stability(
    scattering: Any,
    amplitudes: Sequence[float],
    n_maps: int = 2,
    lmax_displacement: int = 8,
    seed: int = 0,
    nthreads: int = 1,
) -> list[dict[str, Any]]:
    """Relative change of a map, its wavelet coefficients and its scattering coefficients under deformations.

    For ``n_maps`` random red-spectrum maps ``f`` bandlimited at ``L`` (as in the
    equivariance test) and one smooth random displacement field ``d`` per map (gradient of a
    potential bandlimited at ``lmax_displacement``, RMS length 1), the deformed map
    ``f_tau(n) = f(n + a d(n))`` is resampled exactly (:func:`deform`) for every amplitude ``a``
    in ``amplitudes`` (**in units of the pixel scale** :func:`pixel_scale`; RMS displacement
    ``a`` pixels). Each row reports ``||X(f_tau) - X(f)|| / ||X(f)||`` (L2 norms on the sphere,
    pooled over maps) for X = the map (``"map"``), its wavelet coefficients ``f * Psi_j`` over
    all scales (``"wavelets"``) and the scattering coefficients of each order and path kind
    (``"scattering"``: ``{"0": ..., "1": ..., "2": ..., "1 signed": ...}``), plus the amplitude in
    pixels and arcmin. Stability: the scattering change grows about linearly in ``a`` and stays
    well below the map's.
    """
    from scatterdist.wavelet_transform import wavelet_transform

    amps = [float(a) for a in amplitudes]
    if not amps or any(not (a >= 0) for a in amps):
        raise ValueError(f"amplitudes must be a non-empty list of numbers >= 0 (pixel units), got {list(amplitudes)}")
    if n_maps < 1:
        raise ValueError(f"n_maps must be >= 1, got {n_maps}")
    sc = scattering
    nside, L = sc.nside, sc.L
    rng = np.random.default_rng(seed)
    coords = path_arrays(list(sc.paths))
    groups: list[tuple[str, np.ndarray]] = []
    for o, k in zip(coords["order"].tolist(), coords["kind"].tolist()):
        name = f"{o}" if k == "modulus" else f"{o} {k}"
        if name not in [g for g, _ in groups]:
            groups.append((name, (coords["order"] == o) & (coords["kind"] == k)))
    pix = pixel_scale(nside)

    maps0, deformed = [], [[] for _ in amps]
    for _ in range(n_maps):
        alm = random_bandlimited_alm(L, rng)[0]
        d_theta, d_phi = random_displacement(nside, rng, lmax_displacement)
        maps0.append(synthesis(alm, nside, L - 1))
        for i, a in enumerate(amps):
            loc = displaced_positions(nside, a * pix * d_theta, a * pix * d_phi)
            deformed[i].append(deform(alm, L - 1, nside, loc, nthreads=nthreads))
    f0 = np.stack(maps0)
    s0 = _to_numpy(sc(f0)).astype(np.float64)
    w0 = wavelet_transform(f0, L=L, lam=sc.lam, J0=sc.J0, nthreads=nthreads)

    def wavelet_energy(wt: Any, ref: Any | None = None) -> float:  # L2 on the sphere: pixel area 4 pi / npix
        total = 0.0
        for k, w in enumerate(wt.wavelets):
            diff = w if ref is None else w - ref.wavelets[k]
            total += float(np.sum(diff**2)) * 4 * np.pi / w.shape[-1]
        return total

    s0_norm = _group_norms(s0, groups)
    w0_norm = wavelet_energy(w0)
    rows = []
    for i, a in enumerate(amps):
        f = np.stack(deformed[i])
        s = _to_numpy(sc(f)).astype(np.float64)
        wt = wavelet_transform(f, L=L, lam=sc.lam, J0=sc.J0, nthreads=nthreads)
        ds = _group_norms(s - s0, groups)
        rows.append({
            "amplitude_pixels": a,
            "amplitude_arcmin": a * pix * 180 * 60 / np.pi,
            "map": float(np.linalg.norm(f - f0) / np.linalg.norm(f0)),
            "wavelets": math.sqrt(wavelet_energy(wt, w0) / w0_norm),
            "scattering": {name: math.sqrt(ds[name] / s0_norm[name]) if s0_norm[name] > 0 else float("nan")
                           for name, _ in groups},
        })
    return rows


def plot_stability(path: str, rows: list[dict[str, Any]], title: str = "") -> None:
    """Relative change against displacement amplitude (log-log): map, wavelets, scattering per order."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    x = np.array([r["amplitude_pixels"] for r in rows])
    keep = x > 0
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(x[keep], [r["map"] for r in np.array(rows)[keep]], "k-o", label="map")
    ax.plot(x[keep], [r["wavelets"] for r in np.array(rows)[keep]], "k--s", label="wavelet coefficients")
    for name in rows[0]["scattering"]:
        ax.plot(x[keep], [r["scattering"][name] for r in np.array(rows)[keep]], "-^", label=f"scattering, order {name}")
    if keep.sum() >= 2:
        x0, x1 = x[keep].min(), x[keep].max()
        y0 = rows[int(np.flatnonzero(keep)[0])]["map"]
        ax.plot([x0, x1], [y0, y0 * x1 / x0], ":", color="0.6", label="linear in amplitude")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("RMS displacement (pixels)")
    ax.set_ylabel("relative change ||X(f_tau) - X(f)|| / ||X(f)||")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
