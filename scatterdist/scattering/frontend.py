"""``Scattering``: the user-facing spherical scattering transform (numpy or torch backend)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from scatterdist.scattering.backend import get_backend
from scatterdist.scattering.core import ScatteringPlan, orientation_harmonic_array, path_arrays, scattering_alm
from scatterdist.scattering.filters import FilterBank, default_J0, path_label
from scatterdist.scattering.inputs import check_masked_maps, check_maps
from scatterdist.scattering.masked import GeometryCache, masked_call
from scatterdist.sphere.mask import DEFAULT_APODIZE_DEG, DEFAULT_MIN_COVERAGE, check_mask
from scatterdist.sphere import check_nside, nside2npix
from scatterdist.sphere.sht import ANALYSIS_MODES


def _check_powers(powers: Any) -> tuple[float, ...]:
    """Validated exponents of the power paths as a tuple of floats (duplicates refused)."""
    if powers is None:
        return ()
    if isinstance(powers, (int, float, np.number)):
        powers = (powers,)
    try:
        out = tuple(float(q) for q in powers)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"powers must be a sequence of numbers, got {powers!r}") from exc
    for q in out:
        if not (math.isfinite(q) and q > 0 and q != 1):
            raise ValueError(f"power exponents must be finite, > 0 and != 1 (q = 1 is the modulus path), got {q!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"power exponents must be distinct, got {list(out)}")
    return out



def finish_outputs(backend: Any, out: Any, cov: Any, was_1d: bool, return_coverage: bool) -> Any:
    """A transform's outputs as returned to the user: ``out`` (and its coverage, ones on the full
    sky when ``cov`` is None, if ``return_coverage``) converted by the backend, without the batch
    axis when the input was one map."""
    out = backend.to_output(out)
    if not return_coverage:
        return out[0] if was_1d else out
    cov = backend.to_output(out * 0.0 + 1.0 if cov is None else cov)
    return (out[0], cov[0]) if was_1d else (out, cov)

class Scattering:
    """Spherical wavelet scattering transform of HEALPix RING maps.

    Parameters
    ----------
    nside : input resolution (power of two)
    L : bandlimit, ``lmax = L - 1``; default ``2*nside``. Warns above ``2*nside`` (HEALPix
        analysis is inaccurate there), refuses above ``3*nside``.
    lam : dilation factor of the scale-discretised wavelets (> 1)
    J0 : lowest wavelet scale; default: ``lam**J0`` closest to 16, below ``J``
    depth : maximum scattering order (0, 1, 2, ...)
    oversample : power of two; each scale is synthesised at ``oversample`` times its minimal
        nside, trading speed for rotation equivariance of the modulus
    analysis : ``"quadrature"`` or ``"lsq"``, the harmonic analysis of the input maps
    signed : add a signed first-order path ``((f * Psi_j) |f * Psi_j|) * Phi`` for every scale j
        (label ``"S1 j1=j signed"``, kind ``"signed"``): odd in f, so it keeps the sign the
        modulus loses (the skewness of each wavelet scale). Default False (the paper's transform).
    powers : exponents q (> 0, != 1): add ``|f * Psi_j|**q * Phi`` for every scale j and q
        (label ``"S1 j1=j q=3"``, kind ``"power"``). Default none.
        Extra paths come after the modulus paths; they need ``depth >= 1``. ``config()`` lists
        ``signed`` / ``powers`` only when set, so the default transform keeps its config hash.
    apodize : cosine apodisation width, degrees, applied to a mask inside its edge (default
        ``DEFAULT_APODIZE_DEG`` = 2.0; 0 disables it)
    min_coverage : output pixels of a path whose coverage (the fraction of what the path's
        filters reach that is data) is below this are NaN (default ``DEFAULT_MIN_COVERAGE`` = 0.7)
    nthreads : threads for the SHT engine (default ``$OMP_NUM_THREADS``, else all cores)
    backend : ``"numpy"`` (ducc0, float64) or ``"torch"`` (``device=``, ``dtype=`` options)
    N : azimuthal band of the wavelets (:func:`scatterdist.directional_kernels`); 1 (default)
        is the axisymmetric transform. ``N > 1``: each wavelet modulus is taken at the 2N
        orientations ``k pi / (2N)`` (steered from N component maps: about N spin transforms
        per wavelet) and reduced over them to rotation-invariant scalar maps: the mean over
        orientation (the plain path, which the next order filters) and the modulus of the
        first orientation harmonic ``h = 1`` (paths labelled ``"... h=1"``, coordinate
        ``orientation_harmonic`` in :meth:`path_coords`). Masks work as for N = 1 (the
        orientation harmonics share their mean's coverage). ``powers``: ``|W(gamma)|**q``
        averaged over orientation, any N. ``signed``: ``W(gamma) |W(gamma)|`` averaged over
        orientation, odd N only: for even N, ``W(gamma + pi) = -W(gamma)``, so that average is
        zero and every rotation-invariant (shift-in-gamma invariant) reduction of it is even in
        f, losing the sign the signed path exists to keep; refused with that reason. Both backends (torch: spin-n syntheses of
        :mod:`scatterdist.sphere.torch_spin`).

    Attributes
    ----------
    paths : list of tuples ``()``, ``(j1,)``, ``(j1, j2)`` (j2 < j1), ...
    path_labels : readable labels ``"S0"``, ``"S1 j1=5"``, ``"S2 j1=5 j2=4"`` (extra paths:
        ``"S1 j1=5 signed"``, ``"S1 j1=5 q=3"``)
    L0 : bandlimit of the outputs, ``ceil(lam**J0)``
    nside_out, npix_out : resolution of the output maps

    Examples
    --------
    >>> import numpy as np
    >>> sc = Scattering(nside=32)
    >>> sc.L, sc.J0, sc.L0, sc.nside_out, sc.n_paths
    (64, 4, 16, 8, 7)
    >>> sc(np.random.default_rng(0).standard_normal((2, 12 * 32**2))).shape
    (2, 7, 768)
    """

    def __init__(
        self,
        nside: int,
        L: int | None = None,
        lam: float = 2.0,
        J0: int | None = None,
        depth: int = 2,
        oversample: int = 1,
        analysis: str = "quadrature",
        signed: bool = False,
        powers: Sequence[float] = (),
        apodize: float = DEFAULT_APODIZE_DEG,
        min_coverage: float = DEFAULT_MIN_COVERAGE,
        nthreads: int | None = None,
        backend: str = "numpy",
        N: int = 1,
        **backend_options: Any,
    ) -> None:
        self.nside = check_nside(nside)
        self.npix = nside2npix(self.nside)
        if L is None:
            L = 2 * self.nside
        if not isinstance(L, (int, np.integer)) or L < 2:
            raise ValueError(f"bandlimit L must be an integer >= 2, got {L!r}")
        if L > 3 * self.nside:
            raise ValueError(
                f"L={L} exceeds 3*nside={3 * self.nside}: HEALPix cannot represent it; use L <= 2*nside={2 * self.nside}"
            )
        if L > 2 * self.nside:
            warnings.warn(
                f"L={L} > 2*nside={2 * self.nside}: HEALPix analysis is inaccurate above 2*nside "
                "(8-15% error at 3*nside-1)",
                stacklevel=2,
            )
        if not (isinstance(lam, (int, float, np.floating)) and math.isfinite(lam) and lam > 1):
            raise ValueError(f"lam must be a finite number > 1, got {lam!r}")
        if analysis not in ANALYSIS_MODES:
            raise ValueError(f"analysis must be one of {ANALYSIS_MODES}, got {analysis!r}")
        if not isinstance(depth, (int, np.integer)) or depth < 0:
            raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
        if not isinstance(signed, (bool, np.bool_)):
            raise ValueError(f"signed must be True or False, got {signed!r}")
        powers = _check_powers(powers)
        if (signed or powers) and depth < 1:
            raise ValueError("signed/power paths are first-order paths: use depth >= 1 with signed=True or powers=...")
        if not (isinstance(apodize, (int, float, np.integer, np.floating)) and math.isfinite(apodize) and 0 <= apodize <= 90):
            raise ValueError(f"apodize must be a width in degrees in [0, 90], got {apodize!r}")
        if not (isinstance(min_coverage, (int, float, np.integer, np.floating)) and 0 < min_coverage <= 1):
            raise ValueError(f"min_coverage must be a fraction in (0, 1], got {min_coverage!r}")
        self.apodize = float(apodize)
        self.min_coverage = float(min_coverage)
        self.signed = bool(signed)
        self.powers = powers
        self.L = int(L)
        self.lam = float(lam)
        self.J0 = default_J0(self.L, self.lam) if J0 is None else J0
        self.depth = int(depth)
        self.oversample = oversample
        self.analysis = analysis
        if not (isinstance(N, (int, np.integer)) and not isinstance(N, (bool, np.bool_)) and N >= 1):
            raise ValueError(f"N (azimuthal band of the wavelets) must be an integer >= 1, got {N!r}")
        self.N = int(N)
        self.bank = FilterBank(self.L, self.lam, self.J0, self.depth, oversample, self.N)
        self.J = self.bank.J
        self.L0 = self.bank.L0
        self.nside_out = self.bank.nside_out
        self.npix_out = nside2npix(self.nside_out)
        self.backend_name = backend
        self.backend = get_backend(backend, nthreads=nthreads, **backend_options)
        self.plan = ScatteringPlan(self.bank, self.backend, signed=self.signed, powers=self.powers)
        self.paths = list(self.plan.paths)
        self.path_labels = [path_label(p) for p in self.paths]
        self.n_paths = len(self.paths)
        self._geometry = GeometryCache(self.bank, self.backend, self.paths, self.apodize,
                                       getattr(self.backend, "nthreads", None) or 1)

    # --- description ---------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Transform parameters (JSON-serialisable); ``Scattering(**config)`` rebuilds it."""
        return {
            "nside": self.nside,
            "L": self.L,
            "lam": self.lam,
            "J0": int(self.J0),
            "depth": self.depth,
            "oversample": int(self.oversample),
            "analysis": self.analysis,
            "apodize": self.apodize,
            "min_coverage": self.min_coverage,
            **({"signed": True} if self.signed else {}),
            **({"powers": list(self.powers)} if self.powers else {}),
            **({"N": self.N} if self.N > 1 else {}),
        }

    def path_coords(self) -> dict[str, np.ndarray]:
        """Per-path ``label``, ``order``, ``j1``, ``j2`` (-1 where absent), ``kind``, ``exponent`` (+ ``orientation_harmonic`` if N > 1).

        ``orientation_harmonic`` (int16): 0 for the mean over orientation, h for the modulus of
        orientation harmonic h; present only when ``N > 1`` (N = 1 stores keep their schema)."""
        coords = {"label": np.array(self.path_labels), **path_arrays(self.paths)}
        if self.N > 1:
            coords["orientation_harmonic"] = orientation_harmonic_array(self.paths)
        return coords

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"Scattering({params}, backend={self.backend_name!r}) -> {self.n_paths} paths at nside {self.nside_out}"

    # --- transforms ----------------------------------------------------------------------
    def check_maps(self, maps: Any) -> None:
        """Raise :class:`~scatterdist.InvalidMapError` if ``maps`` cannot be transformed
        (UNSEEN/NaN pixels can: they are masked)."""
        check_masked_maps(maps, self.nside)

    def transform_alm(self, maps: Any) -> Any:
        """Harmonic coefficients of the outputs, complex ``(..., n_paths, nalm(L0 - 1))``."""
        alm, was_1d = self._alm(maps)
        out = self.backend.to_output(alm)
        return out[0] if was_1d else out

    def _alm(self, maps: Any) -> tuple[Any, bool]:
        """Validated maps -> the outputs' alm as a backend array ``(B, n_paths, nalm)``, and whether the input was 1-d."""
        x, was_1d = check_maps(maps, self.nside)
        return scattering_alm(self.plan, self.backend.asarray(x), analysis=self.analysis), was_1d

    def _masked(self, maps: Any, mask: Any) -> tuple[Any, bool, Any]:
        """Validated maps ``(B, npix)`` as a backend array, whether 1-d, and the
        :class:`~scatterdist.scattering.masked.MaskedCall` (None: full sky, the old path)."""
        x, was_1d, bad = check_masked_maps(maps, self.nside)
        B = x.shape[0]
        weights = None
        if mask is not None:
            weights = check_mask(mask, self.npix)
            if weights.ndim == 1:
                weights = weights[None]
            elif weights.ndim != 2 or weights.shape[0] not in (1, B):
                raise ValueError(
                    f"mask must have shape (npix,) or (B, npix) with B = {B} maps, got {weights.shape}"
                )
        if bad is not None:
            w = np.ones((B, self.npix)) if weights is None else np.array(np.broadcast_to(weights, (B, self.npix)))
            w[bad] = 0.0
            weights = w
        if weights is None or bool((weights == 1.0).all()):
            return self.backend.asarray(x), was_1d, None
        return self.backend.asarray(x), was_1d, masked_call(self._geometry, weights, bad, B)

    def _outputs(self, maps: Any, mask: Any, prepared: tuple[Any, bool, Any] | None = None) -> tuple[Any, Any, bool]:
        """Normalised coefficient maps and the coverage (None on the full-sky path), backend arrays ``(B, P, N)``."""
        x, was_1d, mc = self._masked(maps, mask) if prepared is None else prepared
        alm = scattering_alm(self.plan, x, analysis=self.analysis, mask=mc)
        B, P = alm.shape[0], alm.shape[1]
        out = self.backend.synthesis(alm.reshape(B * P, alm.shape[-1]), self.nside_out, self.L0 - 1)
        out = out.reshape(B, P, self.npix_out)
        if mc is None:
            return out, None, was_1d
        return mc.normalise(out, self.min_coverage), mc.coverage, was_1d

    def __call__(self, maps: Any, mask: Any = None, return_coverage: bool = False) -> Any:
        """Scattering coefficient maps ``(..., n_paths, npix_out)`` of maps ``(npix,)`` or ``(B, npix)``.

        ``mask``: None, a weight map ``(npix,)`` shared by the batch or ``(B, npix)`` per map,
        values in [0, 1], not apodised (the transform apodises it by ``apodize`` degrees).
        UNSEEN/NaN pixels of ``maps`` are masked automatically; their values never matter.
        Output pixels of a path whose coverage is below ``min_coverage`` are NaN. With
        ``return_coverage=True`` returns ``(coefficients, coverage)``, the coverage in [0, 1]
        with the same shape (ones on the full sky). Without a mask and UNSEEN/NaN pixels this
        is exactly the full-sky transform.

        float64 numpy arrays for the numpy backend; tensors on the backend's device otherwise.
        """
        out, cov, was_1d = self._outputs(maps, mask)
        return finish_outputs(self.backend, out, cov, was_1d, return_coverage)

    def coverage(self, mask: Any) -> Any:
        """Coverage of every path for a mask ``(npix,)`` (or None: full sky) -> ``(n_paths, npix_out)``, or ``(B, npix)``
        -> ``(B, n_paths, npix_out)``: the fraction of what each path's filters reach that is data
        (after apodisation by ``apodize`` degrees), in [0, 1]."""
        if mask is None:  # full sky
            return np.ones((self.n_paths, self.npix_out))
        w = check_mask(mask, self.npix)
        rows = w.reshape(-1, self.npix)
        ones = np.ones((self.n_paths, self.npix_out))  # full sky: exactly 1, as sc(maps) reports it
        cov = np.stack([ones if bool((r == 1.0).all()) else self._geometry.get(r).geo.coverage for r in rows])
        return cov[0] if w.ndim == 1 else cov

    def invariants(self, maps: Any, mask: Any = None) -> Any:
        """Rotation invariants: the spherical mean of each output map, ``(..., n_paths)``.

        Full sky: computed exactly from the monopole, ``a_00 / sqrt(4*pi)``. With a mask or
        UNSEEN/NaN pixels: the mean over the pixels whose coverage is at least
        ``min_coverage`` (NaN for a path with no such pixel).
        """
        prepared = self._masked(maps, mask)
        if prepared[2] is None:
            x, was_1d, _ = prepared
            alm = self.backend.to_output(scattering_alm(self.plan, x, analysis=self.analysis))
            inv = alm[..., 0].real / math.sqrt(4.0 * math.pi)
            return inv[0] if was_1d else inv
        out, cov, was_1d = self._outputs(maps, mask, prepared)
        ok = cov >= self.min_coverage
        safe = out * 1.0
        safe[~ok] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            inv = safe.sum(-1) / ok.sum(-1)
        inv = self.backend.to_output(inv)
        return inv[0] if was_1d else inv
