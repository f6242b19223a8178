"""``ScatteringCovariance``: scattering spectra (scattering covariances) of real HEALPix maps.

Statistics (Morel et al. 2022, arXiv:2204.10177; on the sphere Mousset et al. 2024, ``s2scat``),
with ``W_j = f * Psi_j`` the wavelet maps of :class:`~scatterdist.Scattering` (same kernels,
scale j larger = finer) and ``< . >`` the spherical mean:

- ``mean``                 = ``<f>``
- ``S1 j1``                = ``<|W_j1|>``
- ``S2 j1``                = ``<|W_j1|^2>``
- ``S3 j1 j2`` (j1 > j2)   = ``<W_j2 (|W_j1| * Psi_j2)>``: the sign of scale j2 against the energy of
  the finer scale j1 (odd in ``f``; the squeezed bispectrum)
- ``S4 j1 j2 j3`` (j1 >= j2 > j3) = ``<(|W_j1| * Psi_j3)(|W_j2| * Psi_j3)>``

Every wavelet has zero mean (``kappa_j(0) = 0``), so these moments are the covariances of the
references. Normalisation (``normalize=True``, the default; Morel et al. eq. 12, s2scat's
``normalisation``): with ``P_j = S2 j`` of the same map,

    S1 j1 / sqrt(P_j1),   S3 j1 j2 / sqrt(P_j1 P_j2),   S4 j1 j2 j3 / sqrt(P_j1 P_j2)

while ``mean`` and ``S2`` stay raw. ``normalize=False`` returns the raw moments.

Local maps: each statistic's pointwise product (``|W_j|``, ``W_j^2``, ``W_j2 V_j1j2``,
``V_j1j3 V_j2j3`` with ``V_jk = |W_j| * Psi_k``) is smoothed by the scaling function ``Phi``
and sampled at ``nside_out``, exactly like a scattering path; the invariants are their
spherical means (full sky: ``a_00 / sqrt(4 pi)``), normalised by the same per-map constants.

Multiresolution as :mod:`scatterdist.scattering.core`: ``W_j`` is synthesised on its own grid,
``|W_j|`` analysed only to the bandlimit of the coarsest filter that still needs it, ``V_jk``
synthesised on the grid of scale k, where its products are formed and analysed to ``L0``.

Cut sky (``mask=``): the same machinery as :class:`~scatterdist.Scattering` (apodised input
filled by its local mean; ``|W_j|`` filled by its mean before the next wavelet). Each
statistic is a normalised convolution with the product of its factors' through-masks
(:mod:`scatterdist.scattering.masked`): ``s_j`` for S1, ``s_j^2`` for S2, ``s_j2 s_(j1,j2)``
for S3, ``s_(j1,j3) s_(j2,j3)`` for S4; NaN where that coverage is below ``min_coverage``;
invariants (and the normalising ``P_j``) are means over covered pixels.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from scatterdist.scattering.backend.base import Array
from scatterdist.scattering.core import ScatteringPlan
from scatterdist.scattering.frontend import finish_outputs
from scatterdist.sphere import alm_l_index, analysis as np_analysis, synthesis as np_synthesis
from scatterdist.sphere.mask import DEFAULT_APODIZE_DEG, DEFAULT_MIN_COVERAGE

#: Statistic kinds, in output order.
COVARIANCE_KINDS = ("mean", "S1", "S2", "S3", "S4")


class CovPath(tuple):
    """One statistic: its scales as a tuple (``()``, ``(j1,)``, ``(j1, j2)``, ``(j1, j2, j3)``, so
    code that reads scales from path tuples keeps working), its ``kind`` in
    :data:`COVARIANCE_KINDS` and its orientation ``harmonic`` (0: the mean over orientation, or
    N = 1; h >= 1: the modulus of harmonic h, directional wavelets only); equality and hash
    include ``kind`` and ``harmonic`` (``S1 j1=5`` != ``S2 j1=5`` != ``S1 j1=5 h=1``)."""

    kind: str
    harmonic: int

    def __new__(cls, kind: str, *scales: int, harmonic: int = 0) -> "CovPath":
        if kind not in COVARIANCE_KINDS:
            raise ValueError(f"kind must be one of {COVARIANCE_KINDS}, got {kind!r}")
        if int(harmonic) < 0 or (kind == "mean" and harmonic):
            raise ValueError(f"orientation harmonic must be >= 0 (and 0 for the mean), got {harmonic!r} for {kind!r}")
        self = super().__new__(cls, tuple(int(j) for j in scales))
        self.kind = kind
        self.harmonic = int(harmonic)
        return self

    def __getnewargs_ex__(self) -> tuple:  # pickling (Dask ships transforms)
        return (self.kind, *self), {"harmonic": self.harmonic}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CovPath) and other.kind == self.kind and tuple(self) == tuple(other)
                and other.harmonic == self.harmonic)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.kind, tuple(self)) if not self.harmonic else (self.kind, tuple(self), self.harmonic))

    def __repr__(self) -> str:
        h = f", harmonic={self.harmonic}" if self.harmonic else ""
        return f"CovPath({self.kind!r}, {', '.join(map(str, self))}{h})"

    def _scale(self, i: int) -> int:
        return self[i] if len(self) > i else -1

    j1 = property(lambda self: self._scale(0), doc="first scale (-1: absent)")
    j2 = property(lambda self: self._scale(1), doc="second scale (-1: absent)")
    j3 = property(lambda self: self._scale(2), doc="third scale (-1: absent)")

    @property
    def label(self) -> str:
        """``"mean"``, ``"S1 j1=5"``, ``"S3 j1=6 j2=5"``, ``"S4 j1=7 j2=6 j3=5"``."""
        if self.kind == "mean":
            return "mean"
        label = f"{self.kind} " + " ".join(f"j{i + 1}={j}" for i, j in enumerate(self))
        return label + (f" h={self.harmonic}" if self.harmonic else "")

    @property
    def grid_scale(self) -> int:
        """Scale whose grid holds the statistic's product map (-1: the input grid)."""
        return {"mean": -1, "S1": self.j1, "S2": self.j1, "S3": self.j2, "S4": self.j3}[self.kind]


def covariance_paths(scales: list[int], harmonics: int = 0) -> list[CovPath]:
    """Every statistic for the wavelet scales: mean, S1, S2 per scale, S3 (j1 > j2), S4 (j1 >= j2 > j3);
    then (directional wavelets) the same statistics but the mean at each orientation harmonic
    ``h = 1..harmonics``."""
    s = sorted(scales)
    paths = [CovPath("mean")]
    paths += [CovPath("S1", j) for j in s]
    paths += [CovPath("S2", j) for j in s]
    paths += [CovPath("S3", j1, j2) for j2 in s for j1 in s if j1 > j2]
    paths += [CovPath("S4", j1, j2, j3) for j3 in s for j2 in s for j1 in s if j1 >= j2 > j3]
    return paths + [CovPath(p.kind, *p, harmonic=h) for h in range(1, harmonics + 1) for p in paths if p.kind != "mean"]


def _modulus_alm(plan: ScatteringPlan, js: list[int], u: Array, B: int, mask: Any) -> dict[int, tuple[Array, int]]:
    """``{j: (alm of |W_j|, its bandlimit La)}`` for the scales ``js`` of one grid: ``u`` stacks their
    moduli ``(len(js) * B, npix)`` (filled outside the valid region when masked), analysed together."""
    if mask is not None:
        u = mask.fill_modulus([(j,) for j in js], u, 2)
    La = max(plan.bank.analysis_bandlimit(j, 1) for j in js)
    alm_u = plan.backend.analysis(u, La - 1, mode="quadrature")
    return {j: (alm_u[k * B:(k + 1) * B], La) for k, j in enumerate(js)}


def _grids(bank: Any) -> dict[tuple[int, int], list[int]]:
    """Scales grouped by their grid ``(nside_k, L_k)``: the products with ``Psi_k`` are formed there."""
    by_grid: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k in bank.scales:
        by_grid[(bank.nside(k), bank.bandlimit(k))].append(k)
    return by_grid


def _input_alm(plan: ScatteringPlan, maps: Array, analysis: str, mask: Any) -> tuple[Array, dict[CovPath, Array]]:
    """The input's alm to ``L - 1`` (filled outside the mask first, when there is one) and the output
    dict holding its smoothed ``mean`` path."""
    if mask is not None:
        maps = mask.fill_input(maps)
    alm_in = plan.backend.analysis(maps, plan.bank.L - 1, mode=analysis)
    return alm_in, {CovPath("mean"): plan.truncate(alm_in, plan.bank.L, plan.bank.L0) * plan.eta}


def covariance_alm(plan: ScatteringPlan, paths: list[CovPath], maps: Array, analysis: str = "quadrature",
                   mask: Any = None) -> Array:
    """Raw (unnormalised) smoothed product maps of every statistic, ``(B, n_paths, nalm(L0 - 1))``.

    ``plan`` is a depth-2 :class:`~scatterdist.scattering.core.ScatteringPlan` (its kernels,
    truncations and backend); ``mask`` a :class:`~scatterdist.scattering.masked.MaskedCall` or None.
    """
    bank, be = plan.bank, plan.backend
    if bank.N > 1:
        return _directional_covariance_alm(plan, paths, maps, analysis, mask)
    L, L0 = bank.L, bank.L0
    B = maps.shape[0]
    alm_in, out = _input_alm(plan, maps, analysis, mask)
    wavelet: dict[int, Array] = {}  # W_j on grid j
    modulus_alm: dict[int, tuple[Array, int]] = {}  # |W_j| (filled when masked) analysed to La
    grids: dict[tuple[int, int], list[int]] = defaultdict(list)
    for j in bank.scales:
        grids[(bank.nside(j), bank.bandlimit(j))].append(j)
    for (nside_j, Lj), js in grids.items():
        w = be.synthesis(be.concatenate([plan.truncate(alm_in, L, Lj) * plan.kappa[j] for j in js], axis=0),
                         nside_j, Lj - 1)
        u = abs(w)  # a new array: w is kept for S3
        first = be.analysis(be.concatenate([u, w * w], axis=0), L0 - 1, mode="quadrature") * plan.eta
        n = len(js) * B
        for k, j in enumerate(js):
            out[CovPath("S1", j)] = first[k * B:(k + 1) * B]
            out[CovPath("S2", j)] = first[n + k * B:n + (k + 1) * B]
            wavelet[j] = w[k * B:(k + 1) * B]
        modulus_alm.update(_modulus_alm(plan, js, u, B, mask))
    # V_jk = |W_j| * Psi_k (j > k) on grid k, with the products formed there.
    for (nside_k, Lk), ks in _grids(bank).items():
        pairs = [(j, k) for k in ks for j in bank.scales if j > k]
        if not pairs:
            continue
        v_alm = [plan.truncate(modulus_alm[j][0], modulus_alm[j][1], Lk) * plan.kappa[k] for j, k in pairs]
        v_maps = be.synthesis(be.concatenate(v_alm, axis=0), nside_k, Lk - 1)
        V = {pair: v_maps[i * B:(i + 1) * B] for i, pair in enumerate(pairs)}
        wanted = [p for p in paths if p.kind in ("S3", "S4") and p.grid_scale in ks]
        products = [wavelet[p.j2] * V[(p.j1, p.j2)] if p.kind == "S3" else V[(p.j1, p.j3)] * V[(p.j2, p.j3)]
                    for p in wanted]
        if not products:
            continue
        alm_p = be.analysis(be.concatenate(products, axis=0), L0 - 1, mode="quadrature") * plan.eta
        for i, p in enumerate(wanted):
            out[p] = alm_p[i * B:(i + 1) * B]
    return be.stack([out[p] for p in paths], axis=1)


def _directional_covariance_alm(plan: ScatteringPlan, paths: list[CovPath], maps: Array, analysis: str,
                                mask: Any) -> Array:
    """:func:`covariance_alm` for directional wavelets (``plan.bank.N > 1``; numpy arrays, or any backend
    with ``spin_synthesis``: the steering and reductions fall back to weighted sums of its arrays).

    Each wavelet signal ``W_j(gamma)`` and ``V_jk(gamma) = |W_j| * Psi_k(gamma)`` is steered from
    its N component maps to the 2N orientations ``k pi / (2N)``
    (:func:`~scatterdist.scattering.directional.modulus_orientations`); each statistic's pointwise
    product is formed at every orientation (``|W_j|``, ``W_j^2``, ``W_j2 V_j1j2``, ``V_j1j3 V_j2j3``,
    the two factors at the same gamma) and reduced over gamma to the mean (``harmonic`` 0) and
    the modulus of each harmonic ``h >= 1`` (rotation-invariant: a rotation shifts gamma). The
    products of two steered factors are trigonometric polynomials in gamma of degree ``2(N - 1)``
    with period pi, so the 2N samples give their mean and first harmonics exactly; ``|W_j|``
    aliases as in :class:`~scatterdist.Scattering`. ``|W_j|`` feeding ``V_jk`` is its orientation mean.
    """
    from scatterdist.scattering.directional import modulus_orientations
    from scatterdist.scattering.directional import orientation_harmonics_on as orientation_harmonics
    from scatterdist.scattering.directional import steer_on

    bank, be = plan.bank, plan.backend
    N, H = bank.N, bank.harmonics
    gammas = modulus_orientations(N)
    L, L0 = bank.L, bank.L0
    B = maps.shape[0]
    alm_in, out = _input_alm(plan, maps, analysis, mask)

    def smoothed(reduced: list[Array], keys: list[tuple[str, tuple[int, ...]]]) -> None:
        """Analyse every harmonic of every statistic of ``keys`` (reduced: H + 1 arrays, keys-major) to L0."""
        alm = be.analysis(be.concatenate(reduced, axis=0), L0 - 1, mode="quadrature") * plan.eta
        n = len(keys) * B
        for h in range(H + 1):
            for i, (kind, scales) in enumerate(keys):
                out[CovPath(kind, *scales, harmonic=h)] = alm[h * n + i * B:h * n + (i + 1) * B]

    wavelet: dict[int, list[Array]] = {}  # the N component maps of W_j on grid j, each (B, npix_j)
    modulus_alm: dict[int, tuple[Array, int]] = {}
    grids: dict[tuple[int, int], list[int]] = defaultdict(list)
    for j in bank.scales:
        grids[(bank.nside(j), bank.bandlimit(j))].append(j)
    for (nside_j, Lj), js in grids.items():
        comps = plan.components(be.concatenate([plan.truncate(alm_in, L, Lj) * plan.kappa[j] for j in js], axis=0),
                                nside_j, Lj)
        w = steer_on(be, comps, N, gammas)  # (2N, len(js) * B, npix_j)
        s2 = orientation_harmonics(w * w, H)
        s1 = orientation_harmonics(abs(w), H)
        del w
        keys = [("S1", (j,)) for j in js] + [("S2", (j,)) for j in js]
        smoothed([be.concatenate([s1[h], s2[h]], axis=0) for h in range(H + 1)], keys)
        for k, j in enumerate(js):
            wavelet[j] = [c[k * B:(k + 1) * B] for c in comps]
        u = s1[0]  # the orientation mean of |W_j|, already analysed: filled in place (a new array)
        modulus_alm.update(_modulus_alm(plan, js, u, B, mask))
    for (nside_k, Lk), ks in _grids(bank).items():
        pairs = [(j, k) for k in ks for j in bank.scales if j > k]
        wanted = [p for p in paths if p.kind in ("S3", "S4") and p.harmonic == 0 and p.grid_scale in ks]
        if not pairs or not wanted:
            continue
        v_alm = [plan.truncate(modulus_alm[j][0], modulus_alm[j][1], Lk) * plan.kappa[k] for j, k in pairs]
        v = steer_on(be, plan.components(be.concatenate(v_alm, axis=0), nside_k, Lk), N, gammas)  # (2N, pairs * B, npix_k)
        V = {pair: v[:, i * B:(i + 1) * B] for i, pair in enumerate(pairs)}
        W = {j2: steer_on(be, wavelet[j2], N, gammas) for j2 in {p.j2 for p in wanted if p.kind == "S3"}}
        products = be.concatenate([W[p.j2] * V[(p.j1, p.j2)] if p.kind == "S3" else V[(p.j1, p.j3)] * V[(p.j2, p.j3)]
                                   for p in wanted], axis=1)
        del v, V, W
        smoothed(orientation_harmonics(products, H), [(p.kind, tuple(p)) for p in wanted])
    return be.stack([out[p] for p in paths], axis=1)


class ScatteringCovariance:
    """Scattering covariances (scattering spectra) of HEALPix RING maps, full or cut sky.

    Same parameters, filters, multiresolution plan, backends (``"numpy"``, ``"torch"`` with
    ``device=``/``dtype=``, differentiable), masks and coverage machinery as
    :class:`~scatterdist.Scattering` (its ``depth`` is fixed at 2). Statistics, normalisation
    and the cut-sky method: :mod:`scatterdist.scattering.covariance`.

    ``normalize``: divide S1, S3, S4 by the S2 terms of the same map (default True).

    ``N``: azimuthal band of the wavelets (1, the default: axisymmetric, today's numbers). ``N > 1``
    (directional, numpy backend): every product is formed at the 2N orientations and reduced over
    them to the mean and the modulus of the first orientation harmonic (statistics labelled
    ``"... h=1"`` after the ``h = 0`` ones, coordinate ``orientation_harmonic`` in
    :meth:`path_coords`); normalised by the ``h = 0`` S2 (:func:`_directional_covariance_alm`).

    Attributes: ``paths`` (:class:`CovPath` list), ``path_labels``, ``n_paths``, ``L0``,
    ``nside_out``, ``npix_out``; per-path coords from :meth:`path_coords` (``kind``
    mean/S1/S2/S3/S4, ``j1``, ``j2``, ``j3``, ``order``).

    >>> import numpy as np
    >>> cov = ScatteringCovariance(nside=16)
    >>> cov.path_labels
    ['mean', 'S1 j1=4', 'S1 j1=5', 'S2 j1=4', 'S2 j1=5', 'S3 j1=5 j2=4', 'S4 j1=5 j2=5 j3=4']
    >>> cov.invariants(np.random.default_rng(0).standard_normal(12 * 16**2)).shape
    (7,)
    """

    def __init__(self, nside: int, L: int | None = None, lam: float = 2.0, J0: int | None = None,
                 oversample: int = 1, analysis: str = "quadrature", normalize: bool = True,
                 apodize: float = DEFAULT_APODIZE_DEG, min_coverage: float = DEFAULT_MIN_COVERAGE,
                 nthreads: int | None = None, backend: str = "numpy", N: int = 1, **backend_options: Any) -> None:
        from scatterdist.scattering.frontend import Scattering

        if not isinstance(normalize, (bool, np.bool_)):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        # The scattering transform of depth 2 supplies validation, filters, plan, backend and masks.
        self._sc = sc = Scattering(nside, L=L, lam=lam, J0=J0, depth=2, oversample=oversample, analysis=analysis,
                                   apodize=apodize, min_coverage=min_coverage, nthreads=nthreads, backend=backend,
                                   N=N, **backend_options)
        for name in ("nside", "npix", "L", "lam", "J0", "J", "L0", "oversample", "analysis", "apodize",
                     "min_coverage", "nside_out", "npix_out", "backend", "backend_name", "bank", "plan", "N"):
            setattr(self, name, getattr(sc, name))
        self.normalize = bool(normalize)
        self.paths = covariance_paths(list(self.bank.scales), self.bank.harmonics)
        self.path_labels = [p.label for p in self.paths]
        self.n_paths = len(self.paths)
        self.depth = 2
        s2_index = {p.j1: i for i, p in enumerate(self.paths) if p.kind == "S2" and p.harmonic == 0}
        self._s2_index = [s2_index[j] for j in sorted(s2_index)]
        scale_pos = {j: k for k, j in enumerate(sorted(s2_index))}
        # positions (in sorted scales) of the P_j whose product's square root divides each path
        self._norm_pairs: list[tuple[int, ...]] = []
        for p in self.paths:
            if p.kind == "S1":
                self._norm_pairs.append((scale_pos[p.j1],))
            elif p.kind in ("S3", "S4"):
                self._norm_pairs.append((scale_pos[p.j1], scale_pos[p.j2]))
            else:
                self._norm_pairs.append(())
        self._cov_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # --- description ---------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Parameters (JSON); ``build_transform(config)`` rebuilds it (``transform`` = ``"covariance"``)."""
        return {"transform": "covariance", "nside": self.nside, "L": self.L, "lam": self.lam, "J0": int(self.J0),
                "oversample": int(self.oversample), "analysis": self.analysis, "normalize": self.normalize,
                "apodize": self.apodize, "min_coverage": self.min_coverage, **({"N": self.N} if self.N > 1 else {})}

    def path_coords(self) -> dict[str, np.ndarray]:
        """Per-path ``label``, ``kind`` (mean/S1/S2/S3/S4), ``order``, ``j1``, ``j2``, ``j3`` (-1 where absent),
        and when ``N > 1`` ``orientation_harmonic`` (int16: 0 the mean over orientation, h >= 1)."""
        order = {"mean": 0, "S1": 1, "S2": 1, "S3": 2, "S4": 2}
        extra = {"orientation_harmonic": np.array([p.harmonic for p in self.paths], dtype=np.int16)} if self.N > 1 else {}
        return {"label": np.array(self.path_labels), "kind": np.array([p.kind for p in self.paths], dtype="<U4"),
                "order": np.array([order[p.kind] for p in self.paths], dtype=np.int16),
                **{name: np.array([getattr(p, name) for p in self.paths], dtype=np.int16) for name in ("j1", "j2", "j3")}, **extra}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "transform")
        return (f"ScatteringCovariance({params}, backend={self.backend_name!r}) -> {self.n_paths} statistics "
                f"at nside {self.nside_out}")

    def check_maps(self, maps: Any) -> None:
        """Raise :class:`~scatterdist.InvalidMapError` if ``maps`` cannot be transformed."""
        self._sc.check_maps(maps)

    # --- coverage --------------------------------------------------------------------------
    def _coverage_of(self, entry: Any) -> np.ndarray:
        """Coverage ``(n_paths, npix_out)`` of every statistic for one cached mask entry (built once)."""
        key = id(entry)
        hit = self._cov_cache.get(key)
        if hit is not None and hit[0] is entry.raw:
            return hit[1]
        bank, through = self.bank, entry.geo.through
        L0, eta = bank.L0, bank.phi[alm_l_index(bank.L0 - 1)]

        def product(p: CovPath) -> np.ndarray:
            if p.kind == "mean":
                return through[()]
            if p.kind == "S1":
                return through[(p.j1,)]
            if p.kind == "S2":
                return through[(p.j1,)] ** 2
            if p.kind == "S3":
                return through[(p.j2,)] * through[(p.j1, p.j2)]
            return through[(p.j1, p.j3)] * through[(p.j2, p.j3)]

        cov = np.empty((self.n_paths, self.npix_out))
        groups: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(self.paths):
            groups[p.grid_scale].append(i)
        nthreads = getattr(self.backend, "nthreads", None) or 1
        for _, idx in groups.items():
            a = np_analysis(np.stack([product(self.paths[i]) for i in idx]), L0 - 1, nthreads=nthreads) * eta
            cov[idx] = np_synthesis(a, self.nside_out, L0 - 1, nthreads=nthreads)
        cov = np.clip(cov, 0.0, 1.0)
        if len(self._cov_cache) > 8:
            self._cov_cache.clear()
        self._cov_cache[key] = (entry.raw, cov)
        return cov

    def _weights_rows(self, maps: Any, mask: Any) -> np.ndarray | None:
        """Raw weights ``(B, npix)`` the scattering frontend would use (None: full sky)."""
        from scatterdist.scattering.inputs import check_masked_maps
        from scatterdist.sphere.mask import check_mask

        x, _, bad = check_masked_maps(maps, self.nside)
        B = x.shape[0]
        if mask is None and bad is None:
            return None
        w = np.ones((B, self.npix)) if mask is None else np.array(
            np.broadcast_to(check_mask(mask, self.npix).reshape(-1, self.npix), (B, self.npix)))
        if bad is not None:
            w[bad] = 0.0
        return None if bool((w == 1.0).all()) else w

    def coverage(self, mask: Any) -> np.ndarray:
        """Coverage of every statistic for a mask ``(npix,)`` -> ``(n_paths, npix_out)`` (``(B, npix)`` ->
        ``(B, n_paths, npix_out)``; None -> ones): the fraction of what its factors reach that is data."""
        from scatterdist.sphere.mask import check_mask

        if mask is None:
            return np.ones((self.n_paths, self.npix_out))
        w = check_mask(mask, self.npix)
        rows = w.reshape(-1, self.npix)
        ones = np.ones((self.n_paths, self.npix_out))
        cov = np.stack([ones if bool((r == 1.0).all()) else self._coverage_of(self._sc._geometry.get(r)) for r in rows])
        return cov[0] if w.ndim == 1 else cov

    # --- transforms --------------------------------------------------------------------------
    def _raw(self, maps: Any, mask: Any) -> tuple[Any, Any, Any, bool]:
        """Unnormalised local maps ``(B, P, npix_out)`` (coverage-normalised, zero where uncovered on
        a cut sky), their invariants ``(B, P)``, ``(uncovered, coverage)`` (Nones: full sky), whether 1-d."""
        sc, be = self._sc, self.backend
        x, was_1d, mc = sc._masked(maps, mask)
        alm = covariance_alm(self.plan, self.paths, x, analysis=self.analysis, mask=mc)
        B, P = alm.shape[0], alm.shape[1]
        if mc is None:
            out = be.synthesis(alm.reshape(B * P, alm.shape[-1]), self.nside_out, self.L0 - 1)
            return out.reshape(B, P, self.npix_out), alm[..., 0].real / math.sqrt(4.0 * math.pi), (None, None), was_1d
        weights = self._weights_rows(maps, mask)
        cov = be.from_numpy(np.stack([self._coverage_of(sc._geometry.get(w)) for w in weights]))
        out = be.synthesis(alm.reshape(B * P, alm.shape[-1]), self.nside_out, self.L0 - 1).reshape(B, P, self.npix_out)
        if mc.input_s0 is not None:  # the mean's numerator without the fill (as Scattering's S0)
            out = be.concatenate([mc.input_s0[:, None], out[:, 1:]], axis=1)
        low = (cov < self.min_coverage) | (cov <= 0)
        res = out / (cov + low * 1.0)
        res = res * (~low)  # zero where uncovered (NaN is set after the normalisation: finite gradients)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = res.sum(-1) / (~low).sum(-1)
        return res, means, (low, cov), was_1d

    def _scale(self, inv: Any) -> Any:
        """Per-map, per-path divisors ``(B, P)`` from the S2 invariants ``inv`` ``(B, P)`` (ones if not normalising)."""
        ones = inv[:, :1] * 0.0 + 1.0
        if not self.normalize:
            return self.backend.concatenate([ones] * self.n_paths, axis=1)
        s2 = [inv[:, i:i + 1] for i in self._s2_index]
        cols = [ones if not pair else (s2[pair[0]] if len(pair) == 1 else s2[pair[0]] * s2[pair[1]]) ** 0.5
                for pair in self._norm_pairs]
        return self.backend.concatenate(cols, axis=1)

    def _compute(self, maps: Any, mask: Any) -> tuple[Any, Any, Any, bool]:
        """Normalised local maps (NaN where uncovered), invariants, coverage (None: full sky), was_1d."""
        out, inv, (low, cov), was_1d = self._raw(maps, mask)
        scale = self._scale(inv)
        out = out / scale[..., None]
        if low is None:
            return out, inv / scale, None, was_1d
        out[low] = float("nan")
        return out, inv / scale, cov, was_1d

    def __call__(self, maps: Any, mask: Any = None, return_coverage: bool = False) -> Any:
        """Local statistic maps ``(..., n_paths, npix_out)`` of maps ``(npix,)`` or ``(B, npix)``.

        ``mask`` and UNSEEN/NaN pixels as for :class:`~scatterdist.Scattering`; NaN where a
        statistic's coverage is below ``min_coverage``. ``return_coverage=True`` also returns the
        coverage (ones on the full sky). float64 numpy for the numpy backend, tensors for torch.
        """
        out, _, cov, was_1d = self._compute(maps, mask)
        return finish_outputs(self.backend, out, cov, was_1d, return_coverage)

    def transform_alm(self, maps: Any) -> Any:
        """Harmonic coefficients of the (normalised) full-sky local maps, complex ``(..., n_paths, nalm(L0 - 1))``."""
        from scatterdist.scattering.inputs import check_maps

        x, was_1d = check_maps(maps, self.nside)
        alm = covariance_alm(self.plan, self.paths, self.backend.asarray(x), analysis=self.analysis)
        scale = self._scale(alm[..., 0].real / math.sqrt(4.0 * math.pi))
        out = self.backend.to_output(alm / scale[..., None])
        return out[0] if was_1d else out

    def invariants(self, maps: Any, mask: Any = None) -> Any:
        """Rotation invariants ``(..., n_paths)``: the spherical mean of each (normalised) local map;
        with a mask the mean over covered pixels (NaN for a statistic with none)."""
        _, inv, _, was_1d = self._compute(maps, mask)
        inv = self.backend.to_output(inv)
        return inv[0] if was_1d else inv
