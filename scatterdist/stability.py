"""Measured properties of a scattering configuration beyond :func:`equivariance_error`.

``path_equivariance_errors``: the rotation-equivariance error of every path (so extra path
kinds, such as signed first-order paths, can be reported apart from the modulus paths).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scatterdist.equivariance import random_bandlimited_alm, random_rotation
from scatterdist.scattering.core import path_arrays
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
    (kinds: ``"modulus"`` for the paper's paths, ``"signed"``, ``"power"``).
    """
    err = path_equivariance_errors(scattering, n_trials=n_trials, seed=seed)
    coords = path_arrays(list(scattering.paths))
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
