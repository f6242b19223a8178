"""Masked (cut-sky) scattering: what each path's output is normalised by, and why.

The problem
-----------
A partial-sky map is known only where its mask ``w`` (weights in [0, 1]) is non-zero. The
transform works on ``w_a f``, with ``w_a`` the mask apodised by ``apodize`` degrees (a
cosine taper inside the edge, :func:`scatterdist.sphere.mask.apodize`), so the input has
no step at the edge. Three things then go wrong if nothing else is done:

1. every output is too low near the edge, because part of each filter sees zeros;
2. a wavelet convolution of a signal with a non-zero mean ``mu`` picks up ``mu`` times the
   wavelet transform of the mask itself, a deterministic edge signal;
3. the modulus map ``|w_a f * Psi_j1|`` *always* has a non-zero mean (it is positive), so
   it has a step at the mask edge, and a second wavelet ``Psi_j2`` much wider than the
   first picks that step up: with only the simple normalisation (divide by the order-0
   output of the mask), order-2 paths come out 4-25% high at coverage 0.9.

The method
----------
Each path ``p`` carries a *through-mask* ``s_p``: a weight map on the grid where that
path's signal is synthesised, equal to the fraction of the signal's amplitude that comes
from data. For a stationary signal ``g`` filtered by a wavelet ``Psi`` with kernel ``K``,
``Psi * (s g)`` has variance ``(K^2 * s^2) / ||K||^2`` times the full-sky one, so

    s_()      = w_a
    s_(p, j)  = sqrt( (K_j^2 * s_p^2) / ||K_j||^2 )      (clipped to [0, 1])

``K_j^2`` is the wavelet's squared real-space profile (an axisymmetric, positive kernel;
its multipliers come from healpy's ``bl2beam``/``beam2bl``). Directional wavelets (``N > 1``)
use the axisymmetric ``kappa_j``'s profile too: the mean over orientation of ``|Psi_j(gamma)|^2``
has the same radial band (``sum_n |s_ln|^2 = 1``, so the same energy per degree l), and every
N > 1 path is a reduction over orientation of maps filtered by it; the orientation harmonics
``h >= 1`` share the through-mask of their orientation mean. Measured against the full sky in
``tests/test_directional_masked.py``. This is a soft erosion of
the mask by each wavelet's support: the wider the wavelet, the wider the transition.

Before each wavelet, the signal that it filters is **filled** outside its valid region,
so that it has no step at the edge (points 2 and 3):

    x_p  ->  x_p + (1 - s_p) * m_p

where ``x_()`` is ``w_a f`` and ``x_(p, j) = |Psi_j * filled x_p|`` the modulus map on its
grid. For modulus maps ``m_p = mu_p = sum(x_p) / sum(s_p)``, the global mean (per map).
Since ``x_p ~ s_p g_p``, the filled map is ``mu_p + s_p (g_p - mu_p)``: a constant (which
every wavelet annihilates) plus a tapered zero-mean fluctuation, exactly the situation of
order 1, which the through-masks describe. For the input, ``m_()`` is the *local* mean by a
normalised smoothing at the output scale, ``(Phi * x + P mu) / (Phi * w_a + P)`` with
``P = LOCAL_MEAN_PRIOR = 0.3`` (the global mean takes over where little data is near):
small holes are filled with the large-scale field around them instead of a constant, which
the wide wavelets would see as structure. Against the global mean everywhere
(``scripts/masked_bias.py`` with and without ``--global-fill``, figures in
``docs/cut-sky.md``) this lowers the biases, most for masks with holes. A local mean for
the modulus maps as well, and other through-mask powers (``(K^2 * s^q)^(1/q)``, q = 1,
1.5, 3, 4), measured worse on the same skies.

Each output is a **normalised convolution** (point 1): with ``X_p = Phi * (filled x_p)``
the smoothed output map and the path's **coverage** ``c_p = Phi * s_p`` (in [0, 1]: the
fraction of what the path's filters reach that is data),

    S_p = (X_p - Phi * ((1 - s_p) m_p)) / c_p    (= Phi * x_p / Phi * s_p)

and ``S_p`` is NaN wherever ``c_p < min_coverage``. Invariants average covered pixels.

Only the maps (not the masks) go through the backend: mask geometry (apodisation,
through-masks, coverage) is computed once per distinct mask in numpy/ducc0 and cached;
the data path adds an O(npix) fill per signal, two SHTs at the output bandlimit L0 for the
input's local mean, and an O(npix_out) normalisation, and is written once for both backends
(operations common to numpy arrays and torch tensors).

Measured (``python scripts/masked_bias.py``, see ``docs/cut-sky.md``): bias of the
invariants and per-pixel differences against the full-sky transform for a Galactic cut
and the WMAP temperature mask.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from typing import Any

import numpy as np

from scatterdist.scattering.backend.base import Array, Backend
from scatterdist.scattering.filters import FilterBank, KindPath, OrientedPath, path_exponent, scattering_paths
from scatterdist.sphere import alm_l_index, alm_truncate_index, analysis, npix2nside, synthesis
from scatterdist.sphere.mask import apodize as apodize_mask

#: Masks whose geometry a transform keeps cached between calls.
GEOMETRY_CACHE_SIZE = 4
#: Weight of the global mean in the input's local-mean fill, in units of full coverage:
#: ``loc = (Phi * x + PRIOR mu) / (Phi * s + PRIOR)``. None: the global mean (for comparisons,
#: ``scripts/masked_bias.py --global-fill``).
LOCAL_MEAN_PRIOR: float | None = 0.3


def squared_kernel_multipliers(kernel: np.ndarray, lmax: int) -> np.ndarray:
    """Multipliers ``b_l / b_0`` (l <= lmax) of the squared real-space profile of an axisymmetric
    kernel with multipliers ``kernel[l]``: the fraction-of-energy smoothing of a wavelet."""
    import healpy as hp

    L = kernel.shape[0]
    n = max(8 * (lmax + 1), 8 * L, 256)
    theta = np.linspace(0.0, np.pi, n)
    profile = hp.bl2beam(np.asarray(kernel, dtype=np.float64), theta)
    b = hp.beam2bl(profile**2, theta, lmax)
    return b / b[0]


class MaskGeometry:
    """Through-masks and coverage of every path for one apodised mask (numpy, built once).

    Attributes
    ----------
    through : ``{path: (npix_grid,) float64}`` the through-mask ``s_p`` on the grid of the
        path's last scale (the input grid for ``()``)
    coverage : ``(n_paths, npix_out)`` float64 in [0, 1], ``Phi * s_p``
    sky_fraction : mean of the apodised mask
    """

    def __init__(self, bank: FilterBank, apodized: np.ndarray, paths: list[tuple[int, ...]] | None = None,
                 nthreads: int = 1, squared: dict[int, np.ndarray] | None = None) -> None:
        self.sky_fraction = float(apodized.mean())
        base = scattering_paths(list(bank.scales), bank.depth)
        if paths is None:
            paths = base
        through: dict[tuple[int, ...], np.ndarray] = {(): np.asarray(apodized, dtype=np.float64)}
        sq = squared_kernels(bank) if squared is None else squared
        nside_of = lambda p: bank.nside(p[-1]) if p else npix2nside(apodized.size)  # noqa: E731
        for order in range(1, bank.depth + 1):
            parents = [p for p in base if len(p) == order - 1]
            for p in parents:
                children = [j for j in bank.scales if not p or j < p[-1]]
                if not children:
                    continue
                nside_p = nside_of(p)
                # K_j^2 is bandlimited at 2 L_j - 1; the child's grid supports 2 nside_j (= L_j at
                # oversample 1). Truncating there costs nothing measurable (bias figures equal to
                # 1e-3 with lmax up to 4 nside_j) and makes the geometry 1.6x cheaper at nside 256.
                lmax_of = {j: min(2 * bank.bandlimit(j) - 2, 2 * min(nside_p, bank.nside(j))) for j in children}
                lmax_a = max(lmax_of.values())
                alm = analysis(through[p] ** 2, lmax_a, nthreads=nthreads)
                for j in children:
                    lj = lmax_of[j]
                    a = alm[alm_truncate_index(lmax_a, lj)] * sq[j][: lj + 1][alm_l_index(lj)]
                    e = synthesis(a, bank.nside(j), lj, nthreads=nthreads)
                    through[p + (j,)] = np.sqrt(np.clip(e, 0.0, 1.0))
        # Extra first-order paths (signed, power q): pointwise |w|^q of the wavelet map w ~ s g,
        # so what the mask lets through is s^q.
        for p in paths:
            if isinstance(p, KindPath):
                through[p] = through[(p[0],)] ** path_exponent(p)
        # Orientation harmonics (N > 1) are reductions over orientation of the same modulus maps
        # as the orientation mean: the same through-mask.
        for p in paths:
            if isinstance(p, OrientedPath):
                through[p] = through[tuple(p)]
        self.through = through
        # Coverage: Phi * s_p at the output resolution, grouped by grid.
        L0 = bank.L0
        eta = bank.phi[alm_l_index(L0 - 1)]
        cov = np.empty((len(paths), 12 * bank.nside_out**2))
        by_grid: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(paths):
            by_grid[nside_of(p)].append(i)
        for _, idx in by_grid.items():
            a = analysis(np.stack([through[paths[i]] for i in idx]), L0 - 1, nthreads=nthreads) * eta
            cov[idx] = synthesis(a, bank.nside_out, L0 - 1, nthreads=nthreads)
        self.coverage = np.clip(cov, 0.0, 1.0)
        self.paths = paths
        # Phi * w_a on the input grid (clipped at 0), for the input's local-mean fill.
        a = analysis(through[()], L0 - 1, nthreads=nthreads) * eta
        self.input_smooth = np.maximum(synthesis(a, npix2nside(apodized.size), L0 - 1, nthreads=nthreads), 0.0)


def squared_kernels(bank: FilterBank) -> dict[int, np.ndarray]:
    """``{j: b_l / b_0}`` of every wavelet's squared profile, up to ``l = 2 L_j - 2``."""
    return {j: squared_kernel_multipliers(bank.psi[j - bank.J0], 2 * bank.bandlimit(j) - 2) for j in bank.scales}


class _Entry:
    """One cached mask: its raw weights, geometry, and backend copies of what the data path uses
    (``through``/``rest`` = ``s_p`` and ``1 - s_p`` as ``(1, npix)``, ``total`` = ``sum(s_p)``)."""

    def __init__(self, raw: np.ndarray, geo: MaskGeometry, backend: Backend, depth: int) -> None:
        self.raw, self.geo = raw, geo
        fill = {p: t for p, t in geo.through.items()
                if (len(p) == 0 or len(p) < depth) and not isinstance(p, (KindPath, OrientedPath))}
        self.through = {p: backend.from_numpy(t[None]) for p, t in fill.items()}
        self.rest = {p: backend.from_numpy(1.0 - t[None]) for p, t in fill.items()}
        self.total = {p: float(t.sum()) for p, t in fill.items()}
        self.coverage = backend.from_numpy(geo.coverage)
        self.input_pos = backend.from_numpy((geo.input_smooth > 0).astype(np.float64)[None])
        self.input_den = backend.from_numpy(geo.input_smooth[None] + (LOCAL_MEAN_PRIOR or 0.0))


def _quick_key(row: np.ndarray) -> tuple[float, bytes]:
    """Cheap fingerprint of a mask row (confirmed with an exact comparison on a hit)."""
    return float(row.sum()), row[:: max(1, row.size // 4096)].tobytes()


class GeometryCache:
    """Per-transform LRU cache: raw mask row -> its :class:`_Entry` (geometry built once).

    Thread-safe (a Dask worker's threads may share one transform); pickles without its
    entries (they are rebuilt on demand where the transform lands)."""

    def __init__(self, bank: FilterBank, backend: Backend, paths: list[tuple[int, ...]], apodize: float, nthreads: int, size: int = GEOMETRY_CACHE_SIZE) -> None:
        self.bank, self.backend, self.paths = bank, backend, paths
        self.apodize, self.nthreads, self.size = apodize, nthreads, size
        self._items: OrderedDict[tuple[float, bytes], list[_Entry]] = OrderedDict()
        self.eta = backend.from_numpy(bank.scaling_alm_kernel())
        self._squared: dict[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_items"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def get(self, mask_row: np.ndarray) -> _Entry:
        """The entry of a raw mask row ``(npix,)`` float64 (built on a miss)."""
        with self._lock:
            return self._get(mask_row)

    def _get(self, mask_row: np.ndarray) -> _Entry:
        key = _quick_key(mask_row)
        for entry in self._items.get(key, []):
            if np.array_equal(entry.raw, mask_row):
                self._items.move_to_end(key)
                return entry
        if self._squared is None:
            self._squared = squared_kernels(self.bank)
        geo = MaskGeometry(self.bank, apodize_mask(mask_row, self.apodize), self.paths,
                           nthreads=self.nthreads, squared=self._squared)
        entry = _Entry(np.array(mask_row, dtype=np.float64), geo, self.backend, self.bank.depth)
        self._items.setdefault(key, []).append(entry)
        self._items.move_to_end(key)
        while sum(len(v) for v in self._items.values()) > self.size:
            self._items.popitem(last=False)
        return entry


class MaskedCall:
    """The masks of one batch of maps, and the two hooks the scattering core calls.

    ``through[p]`` / ``rest[p]`` are backend arrays ``(1, npix)`` (every map shares one mask)
    or ``(B, npix)``; ``coverage`` is ``(B, n_paths, npix_out)``; ``mu[p]`` collects each
    filled signal's mean ``(B,)`` during the transform.
    """

    def __init__(self, backend: Backend, bank: FilterBank, eta: Array, paths: list[tuple[int, ...]],
                 entries: list[_Entry], rows: np.ndarray, bad_index: np.ndarray | None) -> None:
        be = self.backend = backend
        self.paths = paths
        self.L0, self.nside_out, self.eta = bank.L0, bank.nside_out, eta
        self.B = int(rows.size)
        self.geometries = [e.geo for e in entries]
        sel = be.from_numpy(rows.astype(np.int64))
        if len(entries) == 1:
            e = entries[0]
            self.through, self.rest = e.through, e.rest
            self.total = {p: be.from_numpy(np.full(1, t)) for p, t in e.total.items()}
            self.coverage = e.coverage[None][sel]
            self.input_pos, self.input_den = e.input_pos, e.input_den
        else:
            keys = list(entries[0].through)
            self.through = {p: be.concatenate([e.through[p] for e in entries], axis=0)[sel] for p in keys}
            self.rest = {p: be.concatenate([e.rest[p] for e in entries], axis=0)[sel] for p in keys}
            self.total = {p: be.from_numpy(np.array([e.total[p] for e in entries]))[sel] for p in keys}
            self.coverage = be.stack([e.coverage for e in entries], axis=0)[sel]
            self.input_pos = be.concatenate([e.input_pos for e in entries], axis=0)[sel]
            self.input_den = be.concatenate([e.input_den for e in entries], axis=0)[sel]
        self.bad_index = None if bad_index is None else be.from_numpy(bad_index.astype(np.int64))
        self.mu: dict[tuple[int, ...], Array] = {}
        self.input_s0: Array | None = None

    def _fill(self, path: tuple[int, ...], x: Array) -> None:
        """``x += (1 - s_p) mu_p`` in place (x is a temporary of the transform)."""
        mu = x.sum(-1) / self.total[path]
        self.mu[path] = mu
        x += self.rest[path] * mu[:, None]

    def fill_input(self, maps: Array) -> Array:
        """``w_a f + (1 - w_a) loc`` for maps ``(B, npix)``, ``loc`` the local mean of ``w_a f`` by a
        normalised smoothing at the output scale, blended with the global mean where little data
        is near (``LOCAL_MEAN_PRIOR``). Masked pixels' values never enter."""
        x = maps * self.through[()]  # a new array: safe to write into
        if self.bad_index is not None:  # UNSEEN * 0 is 0, but NaN * 0 is NaN
            x.reshape(-1)[self.bad_index] = 0.0
        self.input_mean = x.sum(-1) / self.total[()]  # the monopole the core removes and restores
        if LOCAL_MEAN_PRIOR is None:
            self._fill((), x)
            return x
        be = self.backend
        mu = x.sum(-1) / self.total[()]
        smooth = be.analysis(x, self.L0 - 1) * self.eta  # Phi * (w_a f): cheap, bandlimit L0
        local = be.synthesis(smooth, npix2nside(x.shape[-1]), self.L0 - 1)
        x += self.rest[()] * ((local * self.input_pos + LOCAL_MEAN_PRIOR * mu[:, None]) / self.input_den)
        # S0 is Phi * (w_a f) / coverage: keep its numerator (the fill only serves the wavelets;
        # quadrature at L0 whatever the input analysis mode: a masked map is not bandlimited)
        self.input_s0 = be.synthesis(smooth, self.nside_out, self.L0 - 1)
        return x

    def fill_modulus(self, children: list[tuple[int, ...]], u: Array, depth: int) -> Array:
        """Fill, in place, the modulus maps ``u`` ``(len(children)*B, npix)`` (children-major) of
        the paths that continue to a further wavelet; the others are left unchanged."""
        B = self.B
        for k, child in enumerate(children):
            if len(child) < depth:
                self._fill(child, u[k * B : (k + 1) * B])
        return u

    def normalise(self, out: Array, min_coverage: float) -> Array:
        """Smoothed outputs ``(B, P, npix_out)`` -> normalised coefficients, NaN where the coverage
        is below ``min_coverage`` (or zero)."""
        cov = self.coverage
        cols = []
        for i, p in enumerate(self.paths):
            x = out[:, i]
            if len(p) == 0 and self.input_s0 is not None:
                x = self.input_s0
            elif p in self.mu:
                x = x - self.mu[p][:, None] * (1.0 - cov[:, i])
            cols.append(x)
        res = self.backend.stack(cols, axis=1)
        low = (cov < min_coverage) | (cov <= 0)
        res = res / (cov + low * 1.0)  # no 0/0 where the result is NaN anyway
        res[low] = float("nan")
        return res


def masked_call(cache: GeometryCache, weights: np.ndarray, bad: np.ndarray | None, B: int) -> MaskedCall:
    """The :class:`MaskedCall` for ``B`` maps with raw weights ``(B, npix)`` (or ``(1, npix)`` shared
    by the batch) and the maps' bad (UNSEEN/NaN) pixels ``(B, npix)`` bool or None. Identical
    rows share one geometry. Raises :class:`~scatterdist.scattering.inputs.InvalidMapError`
    for a map whose apodised mask is entirely zero."""
    from scatterdist.scattering.inputs import InvalidMapError

    if weights.shape[0] == 1:
        entries, rows = [cache.get(weights[0])], np.zeros(B, dtype=np.int64)
    else:
        entries, rows = [], np.empty(B, dtype=np.int64)
        for b in range(B):
            e = cache.get(weights[b])
            for k, known in enumerate(entries):
                if known is e:
                    rows[b] = k
                    break
            else:
                rows[b] = len(entries)
                entries.append(e)
    for b in range(B):
        if entries[rows[b]].geo.sky_fraction <= 0:
            raise InvalidMapError(
                f"map {b} is entirely masked (no pixel with weight > 0 after {cache.apodize:g} deg apodisation); "
                "nothing to transform", index=b)
    bad_index = None if bad is None or not bad.any() else np.flatnonzero(bad.reshape(-1))
    return MaskedCall(cache.backend, cache.bank, cache.eta, cache.paths, entries, rows, bad_index)


def masked_bias(
    scattering: Any,
    maps: np.ndarray,
    mask: np.ndarray,
    min_coverage: float | None = None,
    naive: bool = False,
) -> dict[str, np.ndarray]:
    """Bias of the masked transform against the full-sky one, per path, over an ensemble.

    ``maps`` ``(n, npix)`` full-sky maps, ``mask`` ``(npix,)`` raw weights (the transform
    apodises it). For each path, over the output pixels whose coverage is at least
    ``min_coverage`` (default the transform's):

    - ``ratio``: ensemble mean of the masked invariant over the ensemble mean of the
      full-sky invariant (``nan`` for S0, whose mean vanishes for zero-mean skies);
    - ``median_rel``: median over maps and covered pixels of ``|S_masked - S_full| / |S_full|``;
    - ``covered``: fraction of output pixels that are covered.

    ``naive=True`` adds ``naive_ratio`` / ``naive_median_rel`` for the simplest method: the
    full-sky transform of the apodised masked map divided by the order-0 output of the
    apodised mask, on the same pixels.
    """
    from scatterdist.sphere.mask import apodize as _apodize

    sc = scattering
    thr = sc.min_coverage if min_coverage is None else float(min_coverage)
    maps = np.asarray(maps, dtype=np.float64)
    full = np.asarray(sc(maps))
    cov = np.asarray(sc.coverage(mask))
    masked = np.asarray(sc(maps, mask=np.asarray(mask)))
    if thr < sc.min_coverage:
        raise ValueError(f"min_coverage {thr} is below the transform's {sc.min_coverage}: those pixels are NaN")
    ok = cov >= thr  # (P, N)
    order = np.array([len(p) for p in sc.paths])
    out: dict[str, np.ndarray] = {"covered": ok.mean(axis=-1), "order": order}

    def figures(est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ratio = np.full(len(sc.paths), np.nan)
        med = np.full(len(sc.paths), np.nan)
        for i in range(len(sc.paths)):
            if not ok[i].any():
                continue
            m_inv = est[:, i][:, ok[i]].mean(axis=-1)
            f_inv = full[:, i].mean(axis=-1)
            if order[i] > 0:
                ratio[i] = m_inv.mean() / f_inv.mean()
            ref = full[:, i][:, ok[i]]
            med[i] = np.median(np.abs(est[:, i][:, ok[i]] - ref) / np.abs(ref))
        return ratio, med

    out["ratio"], out["median_rel"] = figures(masked)
    if naive:
        wa = _apodize(mask, sc.apodize)
        num = np.asarray(sc(maps * wa))
        den = np.asarray(sc(wa))[0]
        out["naive_ratio"], out["naive_median_rel"] = figures(num / den)
    return out
