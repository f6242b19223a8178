"""Spin-2 fields (CMB polarisation Q/U, weak-lensing shear): scalar E and B maps through ducc0.

``Q + iU`` is a spin-2 field; its spin-weighted harmonic coefficients split into the
gradient (E) and curl (B) parts, ``E_lm`` and ``B_lm``, in healpy's convention (ducc0's
spin-2 transforms with components ``(Q, U)`` give exactly ``healpy.map2alm(..., pol=True)``'s
E and B; ``tests/test_polarisation.py`` checks it). The scalar maps
``E(n) = sum E_lm Y_lm(n)`` and ``B(n) = sum B_lm Y_lm(n)`` are rotation-invariant fields
like temperature, so the scalar scattering transform applies to them unchanged.

A mask (or UNSEEN/NaN pixels) makes E and B leak into each other: the weighted ``w Q``,
``w U`` are no longer a pure gradient or curl field near the mask edge. A smooth
(apodised) weight keeps the leakage near the edge; ``docs/cut-sky.md`` gives the measured
figures (``python scripts/masked_bias.py --polarisation``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scatterdist.sphere.healpix import npix2nside, ring_geometry
from scatterdist.sphere.mask import UNSEEN, check_mask
from scatterdist.sphere.sht import LSQ_EPSILON, LSQ_MAXITER, _check_lmax, default_nthreads, synthesis

#: Analysis modes of :func:`qu_to_eb`.
SPIN_MODES = ("lsq", "quadrature")


def _as_maps(x: Any, name: str) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) or a.dtype == bool:
        raise ValueError(f"{name} must be a real map array, got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name} must be a HEALPix map (npix,) or a batch (..., npix), got a scalar")
    return np.asarray(a, dtype=np.float64)


def qu_alm_to_eb_alm(maps: np.ndarray, lmax: int, mode: str, nthreads: int) -> np.ndarray:
    """``(N, 2, npix)`` weighted (Q, U) maps -> ``(N, 2, nalm)`` (E, B) coefficients (ducc0 spin 2)."""
    import ducc0

    npix = maps.shape[-1]
    geo = ring_geometry(npix2nside(npix))
    if mode == "quadrature":
        alm = ducc0.sht.adjoint_synthesis(map=maps, lmax=lmax, spin=2, nthreads=nthreads, **geo)
        alm *= 4 * np.pi / npix
        return alm
    return ducc0.sht.pseudo_analysis(
        map=maps, lmax=lmax, spin=2, maxiter=LSQ_MAXITER, epsilon=LSQ_EPSILON, nthreads=nthreads, **geo
    )[0]


def qu_to_eb(
    q: Any,
    u: Any,
    lmax: int | None = None,
    mask: Any = None,
    nthreads: int | None = None,
    mode: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scalar E and B maps from Stokes Q and U (or shear gamma1, gamma2) maps.

    Parameters
    ----------
    q, u : ``(..., npix)`` HEALPix RING maps (healpy's polarisation convention), batched over
        leading axes; UNSEEN/NaN pixels (in either) get weight 0
    lmax : maximum degree of the E/B coefficients; default ``2*nside - 1`` (the transform's L)
    mask : weights in [0, 1], ``(npix,)`` or ``(..., npix)``, multiplied into Q and U before the
        analysis. Pass an apodised mask (:func:`scatterdist.sphere.mask.apodize`) to keep the
        E/B leakage near the edge.
    nthreads : ducc0 threads (default ``$OMP_NUM_THREADS``, else all cores)
    mode : ``"lsq"`` (ducc0 ``pseudo_analysis``: a pure-E bandlimited sky gives B at round-off)
        or ``"quadrature"`` (the pseudo-E/B of the weighted maps, one pass). Default: ``"lsq"``
        on the full sky, ``"quadrature"`` when a mask or UNSEEN/NaN pixels are present (least
        squares has no meaning for a map that is zero over part of the sky).

    Returns
    -------
    ``(e, b)``: float64 arrays of the input's shape, at the input nside.
    """
    qa, ua = _as_maps(q, "q"), _as_maps(u, "u")
    if qa.shape != ua.shape:
        raise ValueError(f"q and u must have the same shape, got {qa.shape} and {ua.shape}")
    npix = qa.shape[-1]
    try:
        nside = npix2nside(npix)
    except ValueError:
        raise ValueError(f"q and u have {npix} pixels, not 12*nside**2") from None
    if mode is not None and mode not in SPIN_MODES:
        raise ValueError(f"mode must be one of {SPIN_MODES} or None, got {mode!r}")
    lmax = _check_lmax(2 * nside - 1 if lmax is None else lmax, nside)
    bad = ~np.isfinite(qa) | ~np.isfinite(ua) | np.isclose(qa, UNSEEN, rtol=1e-5, atol=0.0) | np.isclose(ua, UNSEEN, rtol=1e-5, atol=0.0)
    weights = None if mask is None else check_mask(mask, npix, what="mask")
    if weights is not None:
        try:
            weights = np.broadcast_to(weights, qa.shape)
        except ValueError:
            raise ValueError(f"mask of shape {weights.shape} does not match maps of shape {qa.shape}") from None
    weighted = weights is not None or bad.any()
    if mode is None:
        mode = "quadrature" if weighted else "lsq"
    w = np.ones(qa.shape) if weights is None else np.array(weights, dtype=np.float64)
    w[bad] = 0.0
    lead = qa.shape[:-1]
    maps = np.stack([np.where(bad, 0.0, qa) * w, np.where(bad, 0.0, ua) * w], axis=-2)
    maps = np.ascontiguousarray(maps.reshape(-1, 2, npix))
    alm = qu_alm_to_eb_alm(maps, lmax, mode, default_nthreads(nthreads))
    eb = synthesis(alm.reshape(-1, alm.shape[-1]), nside, lmax, nthreads=nthreads).reshape(-1, 2, npix)
    e = eb[:, 0].reshape(lead + (npix,))
    b = eb[:, 1].reshape(lead + (npix,))
    return e, b
