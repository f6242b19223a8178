"""``Scattering``: the user-facing spherical scattering transform (numpy or torch backend)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from scatterdist.scattering.backend import get_backend
from scatterdist.scattering.core import ScatteringPlan, path_arrays, scattering_alm
from scatterdist.scattering.filters import FilterBank, default_J0, path_label
from scatterdist.scattering.inputs import check_maps
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
    nthreads : threads for the SHT engine (default ``$OMP_NUM_THREADS``, else all cores)
    backend : ``"numpy"`` (ducc0, float64) or ``"torch"`` (``device=``, ``dtype=`` options)

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
        nthreads: int | None = None,
        backend: str = "numpy",
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
        self.signed = bool(signed)
        self.powers = powers
        self.L = int(L)
        self.lam = float(lam)
        self.J0 = default_J0(self.L, self.lam) if J0 is None else J0
        self.depth = int(depth)
        self.oversample = oversample
        self.analysis = analysis
        self.bank = FilterBank(self.L, self.lam, self.J0, self.depth, oversample)
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
            **({"signed": True} if self.signed else {}),
            **({"powers": list(self.powers)} if self.powers else {}),
        }

    def path_coords(self) -> dict[str, np.ndarray]:
        """Per-path ``label``, ``order``, ``j1``, ``j2`` (j = -1 where absent), ``kind``, ``exponent`` arrays."""
        return {"label": np.array(self.path_labels), **path_arrays(self.paths)}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"Scattering({params}, backend={self.backend_name!r}) -> {self.n_paths} paths at nside {self.nside_out}"

    # --- transforms ----------------------------------------------------------------------
    def check_maps(self, maps: Any) -> None:
        """Raise :class:`~scatterdist.InvalidMapError` if ``maps`` cannot be transformed."""
        check_maps(maps, self.nside)

    def transform_alm(self, maps: Any) -> Any:
        """Harmonic coefficients of the outputs, complex ``(..., n_paths, nalm(L0 - 1))``."""
        alm, was_1d = self._alm(maps)
        out = self.backend.to_output(alm)
        return out[0] if was_1d else out

    def _alm(self, maps: Any) -> tuple[Any, bool]:
        """Validated maps -> the outputs' alm as a backend array ``(B, n_paths, nalm)``, and whether the input was 1-d."""
        x, was_1d = check_maps(maps, self.nside)
        return scattering_alm(self.plan, self.backend.asarray(x), analysis=self.analysis), was_1d

    def __call__(self, maps: Any) -> Any:
        """Scattering coefficient maps ``(..., n_paths, npix_out)`` of maps ``(npix,)`` or ``(B, npix)``.

        float64 numpy arrays for the numpy backend; tensors on the backend's device otherwise.
        """
        alm, was_1d = self._alm(maps)
        B, P = alm.shape[0], alm.shape[1]
        out = self.backend.synthesis(alm.reshape(B * P, alm.shape[-1]), self.nside_out, self.L0 - 1)
        out = self.backend.to_output(out.reshape(B, P, self.npix_out))
        return out[0] if was_1d else out

    def invariants(self, maps: Any) -> Any:
        """Rotation invariants: the spherical mean of each output map, ``(..., n_paths)``.

        Computed exactly from the monopole, ``a_00 / sqrt(4*pi)``.
        """
        alm = self.transform_alm(maps)
        return alm[..., 0].real / math.sqrt(4.0 * math.pi)
