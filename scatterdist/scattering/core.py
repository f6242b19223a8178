"""The scattering algorithm, written once against the backend protocol.

``S[()] f = f * Phi``, ``S[(j1)] f = |f * Psi_j1| * Phi``,
``S[(j1, j2)] f = ||f * Psi_j1| * Psi_j2| * Phi`` with j2 < j1, ... up to ``depth``.
Everything happens on harmonic coefficients except the modulus: each wavelet signal is
synthesised at its own resolution, its modulus analysed only up to the bandlimit the next
step needs. Signals that share a resolution are transformed together in one batched call.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from scatterdist.scattering.backend.base import Array, Backend
from scatterdist.scattering.filters import FilterBank, scattering_paths


class ScatteringPlan:
    """Filter bank plus backend copies of every kernel and index array the algorithm uses."""

    def __init__(self, bank: FilterBank, backend: Backend) -> None:
        self.bank = bank
        self.backend = backend
        self.paths = scattering_paths(list(bank.scales), bank.depth)
        self.eta = backend.from_numpy(bank.scaling_alm_kernel())
        self.kappa = {j: backend.from_numpy(bank.wavelet_alm_kernel(j)) for j in bank.scales}
        self._index: dict[tuple[int, int], Any] = {}

    def truncate(self, alm: Array, L_in: int, L_out: int) -> Array:
        """Keep degrees l < L_out of coefficients bandlimited at L_in (no copy when equal)."""
        if L_in == L_out:
            return alm
        key = (L_in, L_out)
        if key not in self._index:
            self._index[key] = self.backend.from_numpy(self.bank.truncation(L_in - 1, L_out - 1))
        return alm[..., self._index[key]]


def scattering_alm(plan: ScatteringPlan, maps: Array, analysis: str = "quadrature") -> Array:
    """Harmonic coefficients of every scattering output, ``(B, n_paths, nalm(L0 - 1))``.

    ``maps`` is a backend array ``(B, npix)``; ``analysis`` is the mode used for the input
    maps (modulus maps are analysed by quadrature, far below their grid's bandlimit).
    """
    bank, be = plan.bank, plan.backend
    L, L0 = bank.L, bank.L0
    B = maps.shape[0]
    alm_in = be.analysis(maps, L - 1, mode=analysis)
    smoothed = {(): plan.truncate(alm_in, L, L0) * plan.eta}

    # frontier: (path, alm of the signal that the next wavelet filters, its bandlimit)
    frontier: list[tuple[tuple[int, ...], Array, int]] = [((), alm_in, L)]
    for order in range(1, bank.depth + 1):
        # Filter every frontier signal by every lower scale, grouped by synthesis grid.
        by_grid: dict[tuple[int, int], list[tuple[tuple[int, ...], Array]]] = defaultdict(list)
        for path, alm, L_alm in frontier:
            for j in bank.scales:
                if path and j >= path[-1]:
                    continue
                Lj = bank.bandlimit(j)
                by_grid[(bank.nside(j), Lj)].append((path + (j,), plan.truncate(alm, L_alm, Lj) * plan.kappa[j]))
        # Synthesise each group in one call and take the modulus; analyse each block of
        # children that needs the same bandlimit in one call too (a view: no copy of maps).
        frontier = []
        for (nside_j, Lj), items in by_grid.items():
            items.sort(key=lambda item: bank.analysis_bandlimit(item[0][-1], order))
            u = be.modulus(be.synthesis(be.concatenate([a for _, a in items], axis=0), nside_j, Lj - 1))
            start = 0
            while start < len(items):
                La = bank.analysis_bandlimit(items[start][0][-1], order)
                stop = start
                while stop < len(items) and bank.analysis_bandlimit(items[stop][0][-1], order) == La:
                    stop += 1
                alm_u = be.analysis(u[start * B : stop * B], La - 1, mode="quadrature")
                for k, (child, _) in enumerate(items[start:stop]):
                    a = alm_u[k * B : (k + 1) * B]
                    smoothed[child] = plan.truncate(a, La, L0) * plan.eta
                    if order < bank.depth:
                        frontier.append((child, a, La))
                start = stop
    return be.stack([smoothed[p] for p in plan.paths], axis=1)


def path_arrays(paths: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Per-path ``order``, ``j1``, ``j2`` (-1 where absent) as int arrays, for stores and tables."""
    order = np.array([len(p) for p in paths], dtype=np.int16)
    j1 = np.array([p[0] if len(p) > 0 else -1 for p in paths], dtype=np.int16)
    j2 = np.array([p[1] if len(p) > 1 else -1 for p in paths], dtype=np.int16)
    return {"order": order, "j1": j1, "j2": j2}
