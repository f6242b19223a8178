"""The scattering algorithm, written once against the backend protocol.

``S[()] f = f * Phi``, ``S[(j1)] f = |f * Psi_j1| * Phi``,
``S[(j1, j2)] f = ||f * Psi_j1| * Psi_j2| * Phi`` with j2 < j1, ... up to ``depth``.
Everything happens on harmonic coefficients except the modulus: each wavelet signal is
synthesised at its own resolution, its modulus analysed only up to the bandlimit the next
step needs. Signals that share a resolution are transformed together in one batched call.

Optional extra first-order paths (:class:`~scatterdist.scattering.filters.KindPath`):
``S[(j1), signed] f = ((f * Psi_j1) |f * Psi_j1|) * Phi`` and
``S[(j1), q] f = |f * Psi_j1|**q * Phi``. They are pointwise functions of the same
synthesised wavelet map as the modulus (same grid, before the modulus overwrites it) and
only get smoothed, so they are analysed to ``L0`` like the modulus maps of the last order.
The modulus keeps no sign (``S(f) = S(-f)``); the signed paths do (odd in ``f``).

Cut sky: with ``mask`` (a :class:`~scatterdist.scattering.masked.MaskedCall`), the input
becomes the masked, apodised map filled with its mean, and every modulus map that feeds a
further wavelet is filled the same way before its analysis (two hooks, nothing else
changes); the frontend then normalises each output by the path's coverage. The design is
documented in :mod:`scatterdist.scattering.masked`. Without ``mask`` this is exactly the
full-sky algorithm.

Directional wavelets (``bank.N > 1``): each wavelet signal is synthesised as
its N component maps (one scalar and/or ``floor(N/2)`` spin-n syntheses,
:mod:`scatterdist.scattering.directional`), steered to the 2N orientations ``k pi / (2N)``
(:func:`~scatterdist.scattering.directional.modulus_orientations`); the modulus of each
orientation is reduced over orientation to the mean (the plain path, which also feeds the
next order) and the modulus of the first harmonic ``h = 1``
(:class:`~scatterdist.scattering.filters.OrientedPath`, smoothed only). Extra first-order
paths take their nonlinearity at each of the 2N orientations and average over orientation
(signed paths: odd N only, see :class:`~scatterdist.Scattering`). The mask hooks act on the
orientation mean as on N = 1's modulus. ``N = 1`` runs the code above unchanged.
"""


from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from scatterdist.scattering.backend.base import Array, Backend
from scatterdist.scattering.filters import (
    POWER,
    SIGNED,
    FilterBank,
    KindPath,
    OrientedPath,
    extra_paths,
    oriented_paths,
    path_exponent,
    path_harmonic,
    path_kind,
    scattering_paths,
)


class ScatteringPlan:
    """Filter bank plus backend copies of every kernel and index array the algorithm uses.

    ``signed`` / ``powers`` add the extra first-order paths (after the modulus paths, in
    the order of :func:`~scatterdist.scattering.filters.extra_paths`); they need ``depth >= 1``.
    """

    def __init__(self, bank: FilterBank, backend: Backend, signed: bool = False,
                 powers: tuple[float, ...] = ()) -> None:
        self.bank = bank
        self.backend = backend
        self.extra: list[KindPath] = extra_paths(list(bank.scales), signed, tuple(powers))
        if self.extra and bank.depth < 1:
            raise ValueError("signed/power paths are first-order paths: they need depth >= 1")
        if signed and bank.N > 1 and bank.N % 2 == 0:
            raise ValueError(
                f"signed paths have no rotation-invariant form for even N (N={bank.N}): W(gamma + pi) = -W(gamma), "
                "so W|W| averages to zero over orientation and every shift-invariant reduction of it is even in f "
                "(its sign is lost); use an odd N (1, 3, 5, ...) with signed=True, or powers=... with any N")
        plain = scattering_paths(list(bank.scales), bank.depth)
        self.paths = plain + self.extra + oriented_paths(plain, bank.harmonics)
        self.eta = backend.from_numpy(bank.scaling_alm_kernel())
        self.kappa = {j: backend.from_numpy(bank.wavelet_alm_kernel(j)) for j in bank.scales}
        self.steer = {}
        if bank.N > 1:
            if not hasattr(backend, "spin_synthesis"):
                raise ValueError(f"N={bank.N} (directional wavelets) needs a backend with spin-n synthesis; "
                                 f"the {backend.name!r} backend has none yet: use backend='numpy'")
            self.steer = {bank.bandlimit(j): [(n, backend.from_numpy(k)) for n, k in bank.steer_alm_kernels(bank.bandlimit(j))]
                          for j in bank.scales}
        self._index: dict[tuple[int, int], Any] = {}

    def truncate(self, alm: Array, L_in: int, L_out: int) -> Array:
        """Keep degrees l < L_out of coefficients bandlimited at L_in (no copy when equal)."""
        if L_in == L_out:
            return alm
        key = (L_in, L_out)
        if key not in self._index:
            self._index[key] = self.backend.from_numpy(self.bank.truncation(L_in - 1, L_out - 1))
        return alm[..., self._index[key]]

    def oriented_moduli(self, alm: Array, nside: int, Lj: int) -> tuple[Array, list[Array]]:
        """Wavelet alm ``(M, nalm(Lj - 1))`` (already times ``kappa_j``) -> the orientation mean of
        ``|W(gamma_k)|`` ``(M, npix)`` and the moduli of its harmonics ``h = 1..harmonics``."""
        return self.reduce_orientations(self.components(alm, nside, Lj))

    def reduce_orientations(self, components: list[Array]) -> tuple[Array, list[Array]]:
        """The N component maps ``(M, npix)`` -> the orientation mean of ``|W(gamma_k)|`` ``(M, npix)``
        and the moduli of its harmonics ``h = 1..harmonics``."""
        from scatterdist.scattering import directional

        reduce = getattr(self.backend, "oriented_moduli", directional.oriented_moduli)  # numpy's: blocked for the cache
        reduced = reduce(components, self.bank.N, self.bank.harmonics)
        return reduced[0], reduced[1:]

    def components(self, alm: Array, nside: int, Lj: int) -> Any:
        """Wavelet alm ``(M, nalm(Lj - 1))`` (already times ``kappa_j``) -> the N real component maps
        ``(M, npix)`` of :func:`~scatterdist.scattering.directional.steering_matrix`: on numpy one
        array ``(N, M, npix)`` that ducc0 wrote into
        (:func:`~scatterdist.scattering.directional.component_maps`), else a list of N views of the
        spin syntheses' outputs (no copy)."""
        be = self.backend
        if isinstance(alm, np.ndarray):  # numpy: ducc0 writes every synthesis into one (N, M, npix) buffer
            from scatterdist.scattering.directional import component_maps

            return component_maps(alm, self.steer[Lj], Lj - 1, nside=nside, nthreads=getattr(be, "nthreads", None))
        comps = []
        for n, s in self.steer[Lj]:
            if n == 0:
                comps.append(be.synthesis(alm * s, nside, Lj - 1))
            else:
                qu = be.spin_synthesis(alm * s, nside, Lj - 1, n)
                comps += [qu[:, 0], qu[:, 1]]
        return comps


#: ``a_00`` of the constant map 1 (orthonormal spherical harmonics: Y_00 = 1 / sqrt(4 pi)).
_SQRT_4PI = float(np.sqrt(4.0 * np.pi))


def _pointwise(u: Array, path: KindPath) -> Array:
    """The extra path's nonlinearity on wavelet maps ``u`` (numpy or torch; ``u`` untouched)."""
    if path.kind == SIGNED:
        a = abs(u)
        return u * a if path.exponent == 2.0 else u * a ** (path.exponent - 1.0)
    if path.kind == POWER:
        return abs(u) ** path.exponent
    raise ValueError(f"unknown path kind {path.kind!r}")


def scattering_alm(plan: ScatteringPlan, maps: Array, analysis: str = "quadrature", mask: Any = None) -> Array:
    """Harmonic coefficients of every scattering output, ``(B, n_paths, nalm(L0 - 1))``.

    ``maps`` is a backend array ``(B, npix)``; ``analysis`` is the mode used for the input
    maps (modulus maps are analysed by quadrature, far below their grid's bandlimit).
    ``mask``: None (full sky) or a :class:`~scatterdist.scattering.masked.MaskedCall` whose
    ``fill_input`` / ``fill_modulus`` hooks fill each signal outside its valid region.
    """
    bank, be = plan.bank, plan.backend
    L, L0 = bank.L, bank.L0
    B = maps.shape[0]
    if mask is not None:
        maps = mask.fill_input(maps)
    # The monopole is removed exactly in pixel space and restored in a_00 (it reaches order 0
    # only: every wavelet kernel is 0 at l = 0): quadrature analysis leaks a constant into
    # l >= 1 at ~5e-4 of its value, which an offset would otherwise carry into every path.
    # Full sky: the pixel mean (equal-area pixels); cut sky: the weighted mean of the data.
    mono = maps.mean(-1) if mask is None else mask.input_mean
    alm_in = be.analysis(maps - mono[:, None], L - 1, mode=analysis)
    alm_in = be.concatenate([alm_in[:, :1] + mono[:, None] * _SQRT_4PI, alm_in[:, 1:]], axis=1)
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
            if bank.N > 1:
                comps = plan.components(be.concatenate([a for _, a in items], axis=0), nside_j, Lj)
                if order == 1 and plan.extra:
                    _directional_extra_paths(plan, comps, [p for p, _ in items], B, smoothed)
                u, harmonics = plan.reduce_orientations(comps)
                _oriented_paths(plan, harmonics, [p for p, _ in items], B, smoothed)
            else:
                w = be.synthesis(be.concatenate([a for _, a in items], axis=0), nside_j, Lj - 1)
                if order == 1 and plan.extra:
                    _extra_paths(plan, w, [p for p, _ in items], B, smoothed)
                u = be.modulus(w)
            if mask is not None:
                u = mask.fill_modulus([p for p, _ in items], u, bank.depth)
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


def _extra_paths(plan: ScatteringPlan, w: Array, parents: list[tuple[int, ...]], B: int,
                 smoothed: dict) -> None:
    """Smoothed extra paths of the first-order wavelet maps ``w`` ``(len(parents) * B, npix_j)``.

    All kinds of one grid are analysed to ``L0`` in a single batched call.
    """
    be, L0 = plan.backend, plan.bank.L0
    by_scale = {p[0]: i for i, p in enumerate(parents)}
    wanted = [(p, by_scale[p[0]]) for p in plan.extra if p[0] in by_scale]
    if not wanted:
        return
    maps = be.concatenate([_pointwise(w[i * B : (i + 1) * B], p) for p, i in wanted], axis=0)
    alm = be.analysis(maps, L0 - 1, mode="quadrature")
    for k, (p, _) in enumerate(wanted):
        smoothed[p] = alm[k * B : (k + 1) * B] * plan.eta


def _directional_extra_paths(plan: ScatteringPlan, components: list[Array], parents: list[tuple[int, ...]], B: int,
                             smoothed: dict) -> None:
    """Extra first-order paths for directional wavelets: the pointwise nonlinearity of ``W(gamma)`` at the
    2N orientations ``k pi / (2N)``, averaged over orientation (``|W|**q``: any N; ``W |W|``: odd N,
    where ``W(gamma + pi) = W(gamma)``), then smoothed; all analysed to ``L0`` in one call.
    ``components``: the N component maps ``(len(parents) * B, npix_j)``."""
    from scatterdist.scattering.directional import modulus_orientations, steer_on

    be, L0 = plan.backend, plan.bank.L0
    by_scale = {p[0]: i for i, p in enumerate(parents)}
    wanted = [(p, by_scale[p[0]]) for p in plan.extra if p[0] in by_scale]
    if not wanted:
        return
    w = steer_on(be, components, plan.bank.N, modulus_orientations(plan.bank.N))  # (2N, len(parents) * B, npix_j)
    maps = be.concatenate([_pointwise(w[:, i * B:(i + 1) * B], p).mean(axis=0) for p, i in wanted], axis=0)
    alm = be.analysis(maps, L0 - 1, mode="quadrature")
    for k, (p, _) in enumerate(wanted):
        smoothed[p] = alm[k * B:(k + 1) * B] * plan.eta


def _oriented_paths(plan: ScatteringPlan, harmonics: list[Array], parents: list[tuple[int, ...]], B: int,
                    smoothed: dict) -> None:
    """Smoothed orientation-harmonic paths: ``harmonics[h - 1]`` ``(len(parents) * B, npix_j)``,
    all analysed to ``L0`` in one batched call."""
    if not harmonics:
        return
    be, L0 = plan.backend, plan.bank.L0
    maps = harmonics[0] if len(harmonics) == 1 else be.concatenate(harmonics, axis=0)  # one harmonic: no copy
    alm = be.analysis(maps, L0 - 1, mode="quadrature")
    per_h = len(parents) * B
    for h in range(1, len(harmonics) + 1):
        for k, p in enumerate(parents):
            start = (h - 1) * per_h + k * B
            smoothed[OrientedPath(p, h)] = alm[start : start + B] * plan.eta


def path_arrays(paths: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Per-path coords for stores and tables.

    ``order``, ``j1``, ``j2`` (int16, -1 where absent); ``kind`` (str: ``"modulus"`` for the
    paper's paths including ``S0``, ``"signed"``, ``"power"``) and ``exponent`` (float32: 1
    for the modulus, 2 for signed, q for power).
    """
    order = np.array([len(p) for p in paths], dtype=np.int16)
    j1 = np.array([p[0] if len(p) > 0 else -1 for p in paths], dtype=np.int16)
    j2 = np.array([p[1] if len(p) > 1 else -1 for p in paths], dtype=np.int16)
    kind = np.array([path_kind(p) for p in paths], dtype="<U7")
    exponent = np.array([path_exponent(p) for p in paths], dtype=np.float32)
    return {"order": order, "j1": j1, "j2": j2, "kind": kind, "exponent": exponent}


def orientation_harmonic_array(paths: list[tuple[int, ...]]) -> np.ndarray:
    """Per-path ``orientation_harmonic`` (int16): 0 for the orientation mean (and ``S0``), h >= 1
    for :class:`~scatterdist.scattering.filters.OrientedPath`."""
    return np.array([path_harmonic(p) for p in paths], dtype=np.int16)
