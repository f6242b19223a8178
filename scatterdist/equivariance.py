"""Measured rotation equivariance of a scattering transform.

For random rotations R (exact, in harmonic space) of random bandlimited maps f with a
CMB-like red spectrum, compare ``S_p(R f)`` with ``R S_p(f)`` for every path p. The outputs
are bandlimited at L0, so rotating them in harmonic space is exact as well: what remains
is the transform's own error (aliasing of the modulus on finite grids, quadrature).

``field="E"`` or ``"B"`` measures the same for polarisation: random E and B coefficients
give Q/U maps (ducc0 spin-2 synthesis); the rotated sky rotates E and B exactly; both go
through :func:`scatterdist.sphere.spin.qu_to_eb` (least squares), and the scalar E or B map
is scattered. E and B are rotation-invariant scalar fields, so the bounds are temperature's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from scatterdist.sphere import alm_l_index, alm_size, rotate_alm, synthesis


def _to_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def random_bandlimited_alm(L: int, rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """``n`` sets of random alm with a red spectrum ``C_l = 1/(l(l+1))`` (l >= 1), ``(n, nalm)``."""
    ell = alm_l_index(L - 1)
    cl = np.zeros(L)
    cl[1:] = 1.0 / (np.arange(1, L) * np.arange(2, L + 1))
    sigma = np.sqrt(cl[ell])
    alm = (rng.standard_normal((n, alm_size(L - 1))) + 1j * rng.standard_normal((n, alm_size(L - 1)))) * sigma / math.sqrt(2)
    m0 = np.arange(L)  # the m = 0 block comes first in the healpy layout: real coefficients
    alm[:, m0] = rng.standard_normal((n, L)) * np.sqrt(cl)
    return alm


def random_rotation(rng: np.random.Generator) -> tuple[float, float, float]:
    """Uniformly distributed ZYZ Euler angles ``(psi, theta, phi)`` in radians."""
    psi, phi = rng.uniform(0, 2 * np.pi, size=2)
    theta = float(np.arccos(rng.uniform(-1, 1)))
    return float(psi), theta, float(phi)


FIELDS = ("I", "E", "B")


def _spin2_maps(e_alm: np.ndarray, b_alm: np.ndarray, nside: int, lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q, U maps of E and B coefficients (ducc0 spin-2 synthesis, healpy's convention)."""
    import ducc0

    from scatterdist.sphere.healpix import ring_geometry

    alm = np.ascontiguousarray(np.stack([e_alm, b_alm])[None])
    qu = ducc0.sht.synthesis(alm=alm, lmax=lmax, spin=2, **ring_geometry(nside))[0]
    return qu[0], qu[1]


def _field_pair(sc: Any, rng: np.random.Generator, field: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """``(f, R f, angles)`` for one trial: the scalar map of ``field``, of the rotated sky, and the rotation."""
    L = sc.L
    if field == "I":
        alm = random_bandlimited_alm(L, rng)[0]
        angles = random_rotation(rng)
        f = synthesis(alm, sc.nside, L - 1)
        rf = synthesis(rotate_alm(alm, L - 1, *angles), sc.nside, L - 1)
        return f, rf, angles
    from scatterdist.sphere.spin import qu_to_eb

    e_alm, b_alm = random_bandlimited_alm(L, rng, n=2)
    angles = random_rotation(rng)
    low = alm_l_index(L - 1) < 2  # spin 2 has no l = 0, 1
    e_alm[low] = 0
    b_alm[low] = 0
    q, u = _spin2_maps(e_alm, b_alm, sc.nside, L - 1)
    rq, ru = _spin2_maps(rotate_alm(e_alm, L - 1, *angles), rotate_alm(b_alm, L - 1, *angles), sc.nside, L - 1)
    e, b = qu_to_eb(np.stack([q, rq]), np.stack([u, ru]), lmax=L - 1, mode="lsq")
    pick = e if field == "E" else b
    return pick[0], pick[1], angles


def equivariance_error(scattering: Any, n_trials: int = 4, seed: int = 0, field: str = "I") -> dict[int, dict[str, float]]:
    """Relative equivariance error of ``scattering`` per order.

    ``field``: ``"I"`` (a scalar map), or ``"E"`` / ``"B"`` (the scalar E or B map of a
    random polarised sky, through Q/U and :func:`scatterdist.sphere.spin.qu_to_eb`).

    Returns ``{order: {"mean": ..., "max": ...}}`` for orders ``0..depth``: the mean and max
    over the paths of that order and over trials of ``||S_p(R f) - R S_p(f)|| / ||R S_p(f)||``.

    Example
    -------
    >>> from scatterdist import Scattering
    >>> err = equivariance_error(Scattering(nside=16, depth=1), n_trials=1)
    >>> sorted(err)
    [0, 1]
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, got {field!r}")
    rng = np.random.default_rng(seed)
    sc = scattering
    L, L0 = sc.L, sc.L0
    orders = np.array([len(p) for p in sc.paths])
    errors = []
    for _ in range(n_trials):
        f, rf, angles = _field_pair(sc, rng, field)
        s_alm = _to_numpy(sc.transform_alm(np.stack([f, rf])))
        s_alm = s_alm.astype(np.complex128)
        rotated = rotate_alm(s_alm[0], L0 - 1, *angles)
        expected = synthesis(rotated, sc.nside_out, L0 - 1)
        actual = synthesis(s_alm[1], sc.nside_out, L0 - 1)
        num = np.linalg.norm(actual - expected, axis=-1)
        den = np.linalg.norm(expected, axis=-1)
        errors.append(num / np.where(den > 0, den, 1.0))
    errors = np.array(errors)  # (n_trials, n_paths)
    return {
        int(o): {"mean": float(errors[:, orders == o].mean()), "max": float(errors[:, orders == o].max())}
        for o in range(sc.depth + 1)
    }


def covariance_equivariance(covariance: Any, n_trials: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Rotation equivariance of a :class:`~scatterdist.ScatteringCovariance`, per statistic kind.

    For random exact rotations ``R`` of random bandlimited maps ``f``: the local-map error
    ``||S_p(R f) - R S_p(f)|| / ||R S_p(f)||`` and the invariant error
    ``|<S_p>(R f) - <S_p>(f)| / rms(S_p(f))`` (the change of the spherical mean in units of the
    local map's amplitude: a relative error that stays meaningful for near-zero means). Returns one row per kind
    (``mean``, ``S1``..``S4``; directional wavelets add ``S1 h=1``..``S4 h=1``): ``{"kind", "paths", "mean", "max", "invariant_mean", "invariant_max"}``.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    rng = np.random.default_rng(seed)
    cov = covariance
    L0 = cov.L0
    kinds = np.array([p.kind + (f" h={p.harmonic}" if getattr(p, "harmonic", 0) else "") for p in cov.paths])
    maps_err, inv_err = [], []
    for _ in range(n_trials):
        f, rf, angles = _field_pair(cov, rng, "I")
        s_alm = _to_numpy(cov.transform_alm(np.stack([f, rf]))).astype(np.complex128)
        expected = synthesis(rotate_alm(s_alm[0], L0 - 1, *angles), cov.nside_out, L0 - 1)
        actual = synthesis(s_alm[1], cov.nside_out, L0 - 1)
        den = np.linalg.norm(expected, axis=-1)
        maps_err.append(np.linalg.norm(actual - expected, axis=-1) / np.where(den > 0, den, 1.0))
        inv = s_alm[:, :, 0].real / math.sqrt(4.0 * math.pi)
        rms = den / math.sqrt(expected.shape[-1])
        inv_err.append(np.abs(inv[1] - inv[0]) / np.where(rms > 0, rms, 1.0))
    maps_err, inv_err = np.array(maps_err), np.array(inv_err)
    rows = []
    for kind in dict.fromkeys(kinds):
        sel = kinds == kind
        rows.append({"kind": str(kind), "paths": int(sel.sum()), "mean": float(maps_err[:, sel].mean()),
                     "max": float(maps_err[:, sel].max()), "invariant_mean": float(inv_err[:, sel].mean()),
                     "invariant_max": float(inv_err[:, sel].max())})
    return rows
