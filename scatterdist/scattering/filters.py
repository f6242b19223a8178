"""The scattering filter bank: kernels, bandlimits, resolutions and index maps, built once in numpy.

Multiresolution (DESIGN.md): wavelet scale j needs only bandlimit
``L_j = min(L, ceil(lam**(j+1)))`` and is synthesised at ``nside_j``, the smallest power of
two with ``2*nside_j >= L_j``, times ``oversample``. A modulus map of scale j is analysed
only up to what the next step uses: the next (lower) wavelet's bandlimit, or ``L0`` for
the final smoothing.

Besides the modulus paths of the paper, first-order paths with another pointwise
nonlinearity can be added (``Scattering(signed=True, powers=(q, ...))``): they are
:class:`KindPath` tuples, which behave as ``(j1,)`` for ``len``/indexing (order 1, scale j1)
but carry a ``kind`` (``"signed"``: ``(f * Psi_j) |f * Psi_j|``; ``"power"``:
``|f * Psi_j|**q``) and compare unequal to the modulus path of the same scale.

Directional wavelets (``N > 1``, :mod:`scatterdist.scattering.directional`): each modulus is
taken at the N orientations and reduced over them; the orientation mean keeps the plain path
tuple, the modulus of orientation harmonic ``h >= 1`` is an :class:`OrientedPath`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from scatterdist.sphere import alm_l_index, alm_truncate_index
from scatterdist.sphere.healpix import next_pow2
from scatterdist.wavelets import (
    _check_N,
    axisym_kernels,
    j_max,
    scaling_bandlimit,
    steerability_coefficients,
    wavelet_bandlimit,
)


def default_J0(L: int, lam: float) -> int:
    """J0 whose ``lam**J0`` is closest to 16, capped below ``J = j_max(L, lam)``."""
    J = j_max(L, lam)
    candidates = np.arange(J)
    return int(candidates[np.argmin(np.abs(float(lam) ** candidates - 16.0))])


def scattering_paths(scales: list[int], depth: int) -> list[tuple[int, ...]]:
    """Frequency-decreasing paths up to ``depth``: ``()``, ``(j1,)``, ``(j1, j2)`` with j2 < j1, ..."""
    paths: list[tuple[int, ...]] = [()]
    for order in range(1, depth + 1):
        for combo in combinations(sorted(scales), order):
            paths.append(tuple(reversed(combo)))
    order_key = {p: (len(p), tuple(reversed(p))) for p in paths}
    return sorted(paths, key=lambda p: order_key[p])


MODULUS = "modulus"
SIGNED = "signed"
POWER = "power"
PATH_KINDS = (MODULUS, SIGNED, POWER)


class KindPath(tuple):
    """A first-order path ``(j1,)`` whose nonlinearity is not the modulus.

    ``kind`` is ``"signed"`` (``u |u|`` of the wavelet signal ``u = f * Psi_j1``, exponent 2)
    or ``"power"`` (``|u|**exponent``). ``len(p) == 1`` and ``p[0] == j1`` as for a plain
    path, so code that reads order and scales from tuples keeps working; equality and hash
    include ``kind`` and ``exponent``, so ``KindPath((5,), "signed") != (5,)``.
    """

    kind: str
    exponent: float

    def __new__(cls, scales: tuple[int, ...], kind: str, exponent: float = 2.0) -> "KindPath":
        if kind not in (SIGNED, POWER):
            raise ValueError(f"KindPath kind must be {SIGNED!r} or {POWER!r}, got {kind!r}")
        if len(scales) != 1:
            raise ValueError(f"only first-order paths (j1,) take another nonlinearity, got {tuple(scales)!r}")
        self = super().__new__(cls, (int(scales[0]),))
        self.kind = kind
        self.exponent = float(exponent)
        return self

    def __getnewargs__(self) -> tuple:  # pickling (Dask ships Scattering objects)
        return (tuple(self), self.kind, self.exponent)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, KindPath) and tuple(self) == tuple(other)
                and (self.kind, self.exponent) == (other.kind, other.exponent))

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((tuple(self), self.kind, self.exponent))

    def __repr__(self) -> str:
        return f"KindPath({tuple(self)!r}, {self.kind!r}, {self.exponent:g})"


class OrientedPath(tuple):
    """A modulus path ``(j1, ...)`` reduced over orientation by harmonic ``h >= 1`` (``N > 1``).

    Its last modulus is ``|(1/N) sum_k |W(gamma_k)| e^{-2 i h gamma_k}|`` instead of the
    orientation mean (``h = 0``, the plain tuple). Behaves as the plain tuple for ``len`` and
    indexing; equality and hash include ``harmonic``.
    """

    harmonic: int

    def __new__(cls, scales: tuple[int, ...], harmonic: int) -> "OrientedPath":
        if not scales:
            raise ValueError("S0 has no orientation: an OrientedPath needs order >= 1")
        if int(harmonic) < 1:
            raise ValueError(f"orientation harmonic must be >= 1 (h = 0 is the plain path), got {harmonic!r}")
        self = super().__new__(cls, tuple(int(j) for j in scales))
        self.harmonic = int(harmonic)
        return self

    def __getnewargs__(self) -> tuple:
        return (tuple(self), self.harmonic)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OrientedPath) and tuple(self) == tuple(other) and self.harmonic == other.harmonic

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((tuple(self), "h", self.harmonic))

    def __repr__(self) -> str:
        return f"OrientedPath({tuple(self)!r}, h={self.harmonic})"


def path_harmonic(path: tuple[int, ...]) -> int:
    """Orientation harmonic of the path's last modulus: 0 (mean over orientation, or N = 1) or h."""
    return path.harmonic if isinstance(path, OrientedPath) else 0


def oriented_paths(paths: list[tuple[int, ...]], harmonics: int) -> list[OrientedPath]:
    """The paths of orientation harmonics ``h = 1..harmonics`` of every modulus path of order >= 1."""
    return [OrientedPath(p, h) for h in range(1, harmonics + 1) for p in paths if p]


def path_kind(path: tuple[int, ...]) -> str:
    """``"modulus"`` for the paper's paths (``S0`` included), else the :class:`KindPath` kind."""
    return path.kind if isinstance(path, KindPath) else MODULUS


def path_exponent(path: tuple[int, ...]) -> float:
    """Exponent of the path's first nonlinearity: 1 for the modulus (and ``S0``), 2 for signed, q for power."""
    return path.exponent if isinstance(path, KindPath) else 1.0


def extra_paths(scales: list[int], signed: bool, powers: tuple[float, ...]) -> list[KindPath]:
    """The extra first-order paths: signed ones for every scale, then each power for every scale."""
    out = [KindPath((j,), SIGNED) for j in sorted(scales)] if signed else []
    for q in powers:
        out += [KindPath((j,), POWER, q) for j in sorted(scales)]
    return out


def path_label(path: tuple[int, ...]) -> str:
    """Readable label: ``S0``, ``S1 j1=7``, ``S2 j1=7 j2=5``; ``S1 j1=7 signed``, ``S1 j1=7 q=3``."""
    if not path:
        return "S0"
    label = f"S{len(path)} " + " ".join(f"j{i + 1}={j}" for i, j in enumerate(path))
    kind = path_kind(path)
    if kind == SIGNED:
        return label + " signed"
    if kind == POWER:
        return label + f" q={path_exponent(path):g}"
    if isinstance(path, OrientedPath):
        return label + f" h={path.harmonic}"
    return label


@dataclass(frozen=True)
class FilterBank:
    """Everything about the filters that does not depend on the data; numpy, built once."""

    L: int
    lam: float
    J0: int
    depth: int
    oversample: int
    N: int = 1
    J: int = field(init=False)
    L0: int = field(init=False)
    scales: tuple[int, ...] = field(init=False)
    phi: np.ndarray = field(init=False, repr=False)
    psi: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if int(self.oversample) != self.oversample or self.oversample < 1 or next_pow2(self.oversample) != self.oversample:
            raise ValueError(f"oversample must be a power of two >= 1 (1, 2, 4, ...), got {self.oversample}")
        _check_N(self.N)
        phi, psi = axisym_kernels(self.L, self.lam, self.J0)
        J = j_max(self.L, self.lam)
        object.__setattr__(self, "J", J)
        object.__setattr__(self, "L0", scaling_bandlimit(self.J0, self.lam))
        object.__setattr__(self, "scales", tuple(range(self.J0, J + 1)))
        object.__setattr__(self, "phi", phi)
        object.__setattr__(self, "psi", psi)

    # --- resolutions -------------------------------------------------------------------
    @property
    def nside_out(self) -> int:
        """Output resolution: smallest power of two with ``2*nside_out >= L0``."""
        return next_pow2(math.ceil(self.L0 / 2))

    def bandlimit(self, j: int) -> int:
        """``L_j``: kappa_j(l) vanishes for l >= L_j."""
        return wavelet_bandlimit(j, self.L, self.lam)

    def nside(self, j: int) -> int:
        """Resolution at which the wavelet signal of scale j is synthesised."""
        return next_pow2(math.ceil(self.bandlimit(j) / 2)) * int(self.oversample)

    def analysis_bandlimit(self, j: int, order: int) -> int:
        """Bandlimit to analyse ``|f * Psi_j|`` (a path of this order ending in j) to."""
        needed = self.L0
        if order < self.depth and j > self.J0:
            needed = max(needed, self.bandlimit(j - 1))
        return needed

    # --- kernels on the alm layout -------------------------------------------------------
    def wavelet_alm_kernel(self, j: int) -> np.ndarray:
        """kappa_j expanded on the alm layout of lmax ``L_j - 1``."""
        Lj = self.bandlimit(j)
        return np.ascontiguousarray(self.psi[j - self.J0][alm_l_index(Lj - 1)])

    def scaling_alm_kernel(self) -> np.ndarray:
        """eta expanded on the alm layout of lmax ``L0 - 1``."""
        return np.ascontiguousarray(self.phi[alm_l_index(self.L0 - 1)])

    @property
    def harmonics(self) -> int:
        """Highest orientation harmonic kept: 1 for N > 1, 0 for N = 1."""
        from scatterdist.scattering.directional import max_harmonic

        return max_harmonic(self.N)

    def steer_alm_kernels(self, Lj: int) -> list[tuple[int, np.ndarray]]:
        """``[(n, |s_ln| on the alm layout of lmax Lj - 1)]``: times ``kappa_j`` gives each
        directional component kernel ``|Psi_j,ln|`` (:func:`~scatterdist.scattering.directional.component_kernels`)."""
        from scatterdist.scattering.directional import component_kernels

        return component_kernels(steerability_coefficients(Lj, self.N), Lj - 1)

    @staticmethod
    def truncation(lmax_in: int, lmax_out: int) -> np.ndarray:
        """Gather index keeping l <= lmax_out of an lmax_in alm array (int64)."""
        return alm_truncate_index(lmax_in, lmax_out).astype(np.int64)
