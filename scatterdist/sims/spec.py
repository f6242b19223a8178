"""``SimulationSpec``: a catalog of simulated CMB skies that the pipeline can use as input.

A spec is a small frozen value (JSON-serialisable through ``to_dict``/``from_dict``); maps are
generated on demand, inside the Dask task that needs them, by ``spec.generate(i)``. Map ``i``
always draws from the random stream ``(seed, i)`` (see :mod:`scatterdist.sims.skies`), so
any worker regenerates bitwise the same map.

Observation (all optional, see :mod:`scatterdist.sims.observe`): ``fwhm_arcmin`` (Gaussian
beam, arcmin FWHM, applied in harmonic space), ``noise_uK_arcmin`` (white noise depth, muK
arcmin, from its own stream ``(seed, (i, 1))``), ``mask`` (a mask FITS or HealSparse file,
weights in [0, 1], brought to ``nside`` by :func:`scatterdist.inputs.read_global_mask`) and ``galactic_cut``
(degrees: keep ``|b| > galactic_cut``). Both masks multiply; the sky is UNSEEN where the
weight is 0, and :meth:`SimulationSpec.mask_weights` gives the weights. Order: sky, beam, noise,
mask. All four also work in ``sim:`` specs, e.g.
``sim:kind=mixed,n=64,nside=64,alpha=0.02,fwhm_arcmin=5,noise_uK_arcmin=45,galactic_cut=20``.

Labels: 0 = Gaussian, 1 = non-Gaussian. ``kind="mixed"`` alternates them (even i Gaussian,
odd i non-Gaussian), which balances the classes exactly in every block of two maps, hence in
every even-sized shard.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from scatterdist.sims.skies import (
    _check_int,
    check_alpha,
    default_lmax,
    gaussian_cmb,
    nongaussian_cmb,
)
from scatterdist.sphere import check_nside, nside2npix

__all__ = ["KINDS", "SimulationSpec"]

KINDS = ("gaussian", "nongaussian", "mixed")


@dataclass(frozen=True)
class SimulationSpec:
    """``n`` simulated CMB maps at ``nside``: Gaussian, non-Gaussian (``alpha``) or mixed.

    ``alpha`` is required (>= 0) for "nongaussian" and "mixed" and must be None (or 0) for
    "gaussian"; ``lmax`` defaults to ``2*nside - 1``. Maps are float64 muK, RING.
    """

    kind: str
    nside: int
    n: int
    seed: int = 0
    alpha: float | None = None
    lmax: int | None = None
    fwhm_arcmin: float | None = None
    noise_uK_arcmin: float | None = None
    mask: str | None = None
    galactic_cut: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        try:
            nside = check_nside(self.nside)
        except ValueError as exc:
            raise ValueError(f"SimulationSpec: {exc}") from None
        n = _check_int("n (number of maps)", self.n, 1)
        seed = _check_int("seed", self.seed, 0)
        lmax = default_lmax(nside, self.lmax) if self.lmax is not None else None
        if self.kind == "gaussian":
            if self.alpha is not None and check_alpha(self.alpha) != 0.0:
                raise ValueError(
                    f"alpha={self.alpha} has no effect on kind='gaussian'; leave it out or use "
                    "kind='nongaussian' or 'mixed'"
                )
            alpha = None
        else:
            if self.alpha is None:
                raise ValueError(f"kind={self.kind!r} needs alpha (non-Gaussianity amplitude >= 0)")
            alpha = check_alpha(self.alpha)
        from scatterdist.sims.observe import check_nonnegative

        fwhm = check_nonnegative("fwhm_arcmin", self.fwhm_arcmin, "arcmin")
        noise = check_nonnegative("noise_uK_arcmin", self.noise_uK_arcmin, "muK arcmin")
        cut = check_nonnegative("galactic_cut", self.galactic_cut, "degrees")
        if cut is not None and cut >= 90:
            raise ValueError(f"galactic_cut={self.galactic_cut} leaves no sky: |b| must be below 90 degrees")
        mask = self.mask
        if mask is not None:
            if not isinstance(mask, (str, os.PathLike)) or not os.fspath(mask):
                raise ValueError(f"mask must be the path of a mask FITS file, got {mask!r}")
            mask = os.path.abspath(os.fspath(mask))
            if not os.path.isfile(mask):
                raise ValueError(f"mask file {mask} does not exist")
        for name, value in (("nside", nside), ("n", n), ("seed", seed), ("alpha", alpha), ("lmax", lmax),
                            ("fwhm_arcmin", fwhm), ("noise_uK_arcmin", noise), ("galactic_cut", cut),
                            ("mask", mask)):
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ catalog
    @property
    def npix(self) -> int:
        """Pixels per map, ``12 * nside**2``."""
        return nside2npix(self.nside)

    @property
    def effective_lmax(self) -> int:
        """The bandlimit actually used: ``lmax`` or its default ``2*nside - 1``."""
        return default_lmax(self.nside, self.lmax)

    def __len__(self) -> int:
        return self.n

    def _check_index(self, i: int) -> int:
        i = _check_int("map index", i, 0)
        if i >= self.n:
            raise IndexError(f"map index {i} out of range for a spec of n={self.n} maps")
        return i

    def map_ids(self) -> list[str]:
        """Unique map ids ``"{kind}-s{seed}-{i:06d}"`` (wider zero padding when n > 10**6)."""
        width = max(6, len(str(self.n - 1)))
        return [f"{self.kind}-s{self.seed}-{i:0{width}d}" for i in range(self.n)]

    def labels(self) -> np.ndarray:
        """``(n,)`` int8: 0 Gaussian, 1 non-Gaussian (alternating for "mixed")."""
        if self.kind == "gaussian":
            return np.zeros(self.n, dtype=np.int8)
        if self.kind == "nongaussian":
            return np.ones(self.n, dtype=np.int8)
        return (np.arange(self.n) % 2).astype(np.int8)

    def label(self, i: int) -> int:
        """Label of map ``i`` (0 Gaussian, 1 non-Gaussian)."""
        i = self._check_index(i)
        return {"gaussian": 0, "nongaussian": 1}.get(self.kind, i % 2)

    def observation(self) -> str:
        """The observation settings that are set, e.g. ``" fwhm_arcmin=5 galactic_cut=20"`` (or "")."""
        parts = []
        if self.fwhm_arcmin is not None:
            parts.append(f"fwhm_arcmin={self.fwhm_arcmin:g}")
        if self.noise_uK_arcmin is not None:
            parts.append(f"noise_uK_arcmin={self.noise_uK_arcmin:g}")
        if self.galactic_cut is not None:
            parts.append(f"galactic_cut={self.galactic_cut:g}")
        if self.mask is not None:
            parts.append(f"mask={self.mask}")
        return "".join(" " + p for p in parts)

    def source(self, i: int) -> str:
        """Provenance string of map ``i``, e.g. ``"sim:nongaussian seed=3 index=17 alpha=0.5 nside=64 lmax=127"``
        (followed by the observation settings that are set, e.g. ``fwhm_arcmin=5 galactic_cut=20``)."""
        i = self._check_index(i)
        lmax = self.effective_lmax
        if self.label(i) == 0:
            return f"sim:gaussian seed={self.seed} index={i} nside={self.nside} lmax={lmax}{self.observation()}"
        return (
            f"sim:nongaussian seed={self.seed} index={i} alpha={self.alpha:g} "
            f"nside={self.nside} lmax={lmax}{self.observation()}"
        )

    @property
    def masked(self) -> bool:
        """Whether the skies have a mask (``mask`` or ``galactic_cut``)."""
        return self.mask is not None or self.galactic_cut is not None

    def mask_weights(self) -> np.ndarray | None:
        """The skies' weight mask ``(12*nside**2,)`` float64 in [0, 1] (read-only, computed once),
        or None without ``mask``/``galactic_cut``. Raises ``MaskError`` for an unusable mask file."""
        if not self.masked:
            return None
        cached = self.__dict__.get("_weights")
        if cached is not None:
            return cached
        from scatterdist.sims.observe import galactic_cut_mask

        w = np.ones(self.npix)
        if self.galactic_cut is not None:
            w *= galactic_cut_mask(self.nside, self.galactic_cut)
        if self.mask is not None:
            from scatterdist.inputs.masks import read_global_mask

            w *= read_global_mask(self.mask, self.nside)
        w.setflags(write=False)
        object.__setattr__(self, "_weights", w)
        return w

    def generate(self, i: int, nthreads: int = 1) -> np.ndarray:
        """Map ``i``: ``(12*nside**2,)`` float64, muK, RING; bitwise reproducible anywhere.

        Sky (beamed when ``fwhm_arcmin``), plus white noise (``noise_uK_arcmin``), then
        ``healpy.UNSEEN`` where the mask weight is 0.
        """
        i = self._check_index(i)
        if self.label(i) == 0:
            sky = gaussian_cmb(self.nside, self.seed, lmax=self.lmax, index=i, nthreads=nthreads,
                               fwhm_arcmin=self.fwhm_arcmin)
        else:
            sky = nongaussian_cmb(self.nside, self.seed, self.alpha, lmax=self.lmax, index=i,
                                  nthreads=nthreads, fwhm_arcmin=self.fwhm_arcmin)
        if self.noise_uK_arcmin is not None:
            from scatterdist.sims.observe import noise_rng, white_noise

            sky += white_noise(self.nside, self.noise_uK_arcmin, noise_rng(self.seed, i))
        if self.masked:
            from scatterdist.sims.observe import apply_mask

            apply_mask(sky, self.mask_weights())
        return sky

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (``SimulationSpec.from_dict(spec.to_dict()) == spec``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SimulationSpec":
        """Rebuild from :meth:`to_dict` output; unknown or missing keys raise ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a dict of SimulationSpec fields, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SimulationSpec field(s) {sorted(unknown)}; expected {sorted(names)}")
        missing = {"kind", "nside", "n"} - set(d)
        if missing:
            raise ValueError(f"SimulationSpec needs field(s) {sorted(missing)}")
        return cls(**d)
