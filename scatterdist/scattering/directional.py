"""Directional (steerable) wavelet transform on HEALPix rings, through spin-n syntheses.

Convention (S2LET's, McEwen et al. 2018, arXiv:1509.06749): the wavelet coefficient of a
real map f at position ``(theta, phi)`` and orientation ``gamma`` is the inner product with
the wavelet rotated by the ZYZ Euler angles ``rho = (phi, theta, gamma)``,

    W_j(rho) = sqrt(2 pi) <f, R_rho Psi_j>  =  sum_n e^{i n gamma} W_j,n(theta, phi),
    W_j,n    = (-1)^n sum_lm f_lm conj(Psi_j,ln) _{-n}Y_lm(theta, phi)

with S2LET's spin-weighted harmonics ``_sY_lm`` and ``Psi_j,ln = kappa_j(l) s_ln``
(:func:`scatterdist.directional_kernels`): ``W_j,n`` is a spin-(-n) field. The factor ``sqrt(2 pi)`` makes
``N = 1`` the axisymmetric transform ``sum_lm kappa_j(l) f_lm Y_lm`` exactly (S2LET's
directional coefficients are ours divided by ``sqrt(2 pi)``: its kernels carry
``sqrt((2l+1)/(8 pi**2))`` where the axisymmetric ones carry ``sqrt((2l+1)/(4 pi))``).

Only orders ``n`` with ``s_ln != 0`` contribute: ``|n| < N`` with ``n = N - 1 (mod 2)``
(:func:`scatterdist.wavelets.steer_orders`), and f real gives ``W_j,-n = conj(W_j,n)``. So
the transform at any set of orientations is a real linear combination (:func:`steering_matrix`)
of exactly N real maps: ``W_j,0`` (odd N) and the two components of ``W_j,n`` for each
``n > 0``, each pair one ducc0 spin-n synthesis on the HEALPix rings (``mode="GRAD_ONLY"``:
``s_ln`` is real for odd N and imaginary for even N, so one of ducc0's E/B inputs is zero).
No SO(3) grid is built. ``W(gamma + pi) = (-1)^(N-1) W(gamma)``, so the N orientations
``gamma_k = k pi / N`` (:func:`orientations`) determine the coefficient at every gamma.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scatterdist.sphere.alm import alm_l_index, alm_size, alm_truncate_index
from scatterdist.sphere.healpix import check_nside, next_pow2, ring_geometry
from scatterdist.sphere.sht import default_nthreads
from scatterdist.wavelets import _check_N, directional_kernels, steer_orders, wavelet_bandlimit


def orientations(N: int) -> np.ndarray:
    """The N sampled orientations ``gamma_k = k pi / N``, radians, float64 ``(N,)``."""
    N = _check_N(N)
    return np.arange(N) * (np.pi / N)


def _phase(N: int) -> complex:
    """``s_ln / |s_ln|``: 1 for odd N, i for even N (the same for every l and n)."""
    return 1.0 if N % 2 else 1j


def steering_matrix(N: int, gammas: Any = None) -> np.ndarray:
    """Real weights ``(len(gammas), N)`` taking the N component maps to the orientations ``gammas``.

    Components, in the order of :func:`component_kernels`: for each ``n`` of
    ``steer_orders(N)``, ``n = 0`` gives one map (the scalar synthesis of ``f_lm |Psi_ln|``),
    ``n > 0`` two (ducc0's spin-n ``GRAD_ONLY`` synthesis ``(Q, U)`` of ``f_lm |Psi_ln|``). With
    ``z = e^{-i n gamma} s_ln/|s_ln|``, ``W(gamma) = W_0 + sum_{n>0} (-2 Re z) Q_n + (2 Im z) U_n``:
    ducc0's spin-n field is ``Q + iU = -sum (E_lm) sY_lm`` in healpy's sign convention, which
    differs from S2LET's ``_sY_lm`` by ``(-1)^n``; the test against ``pys2let`` pins all signs.
    ``gammas`` default: :func:`orientations`.
    """
    N = _check_N(N)
    g = orientations(N) if gammas is None else np.asarray(gammas, dtype=np.float64).reshape(-1)
    cols = []
    for n in steer_orders(N):
        if n == 0:
            cols.append(np.ones_like(g))
            continue
        z = np.exp(-1j * n * g) * _phase(N)
        cols += [-2.0 * z.real, 2.0 * z.imag]
    return np.stack(cols, axis=1)


def component_kernels(psi_j: np.ndarray, lmax: int) -> list[tuple[int, np.ndarray]]:
    """``[(n, |Psi_j,ln| on the alm layout of lmax)]`` for every ``n`` of ``steer_orders(N)``.

    ``psi_j``: one scale of :func:`scatterdist.directional_kernels`, complex ``(L, 2N - 1)``
    (only ``l <= lmax`` is used). Real float64 arrays ``(alm_size(lmax),)``.
    """
    N = (psi_j.shape[1] + 1) // 2
    ell = alm_l_index(lmax)
    return [(int(n), np.ascontiguousarray(np.abs(psi_j[: lmax + 1, n + N - 1])[ell])) for n in steer_orders(N)]


def _geometry(nside: int | None, geometry: dict | None) -> dict:
    if (nside is None) == (geometry is None):
        raise ValueError("give exactly one of nside (HEALPix rings) or geometry (ducc0 ring arrays)")
    return ring_geometry(check_nside(nside)) if geometry is None else geometry


def spin_synthesis(alm: np.ndarray, lmax: int, spin: int, nside: int | None = None,
                   geometry: dict | None = None, nthreads: int | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """ducc0 synthesis of gradient-only coefficients ``(M, nalm)`` -> ``(M, 2, npix)`` real ``(Q, U)``.

    ``spin = 0`` returns ``(M, 1, npix)`` (the scalar synthesis). On HEALPix RING pixels of
    ``nside``, or on any ducc0 ring ``geometry`` (``theta, nphi, phi0, ringstart``). ``out``: a
    float64 array of that shape (any strides, e.g. a view of a larger buffer) that ducc0 writes the
    maps into and that is returned.
    """
    import ducc0

    geo = _geometry(nside, geometry)
    alm = np.ascontiguousarray(alm, dtype=np.complex128)
    if alm.ndim != 2 or alm.shape[-1] != alm_size(lmax):
        raise ValueError(f"alm must be (M, {alm_size(lmax)}) for lmax={lmax}, got {alm.shape}")
    mode = "STANDARD" if spin == 0 else "GRAD_ONLY"
    return ducc0.sht.synthesis(alm=alm[:, None, :], lmax=lmax, spin=int(spin), mode=mode,
                               nthreads=default_nthreads(nthreads), map=out, **geo)


def component_maps(alm: np.ndarray, kernels: list[tuple[int, np.ndarray]], lmax: int, nside: int | None = None,
                   geometry: dict | None = None, nthreads: int | None = None) -> np.ndarray:
    """The N real component maps ``(N, M, npix)`` of the alm ``(M, nalm(lmax))`` for the component
    kernels ``[(n, |Psi_ln| on the alm layout)]`` (:func:`component_kernels`), in component order.

    ducc0 writes every synthesis straight into its planes of one float64 buffer (no copy): each
    plane's rows are contiguous, so :func:`oriented_moduli` and :func:`steer` read cache-sized
    blocks of all N planes as one strided view.
    """
    geo = _geometry(nside, geometry)
    npix = int(np.max(np.asarray(geo["ringstart"]) + np.asarray(geo["nphi"])))
    planes = [1 if n == 0 else 2 for n, _ in kernels]
    out = np.empty((sum(planes), alm.shape[0], npix))
    c = 0
    for (n, kernel), k in zip(kernels, planes):
        spin_synthesis(alm * kernel, lmax, n, geometry=geo, nthreads=nthreads, out=out[c:c + k].transpose(1, 0, 2))
        c += k
    return out


def directional_components(alm: np.ndarray, psi_j: np.ndarray, lmax: int, nside: int | None = None,
                           geometry: dict | None = None, nthreads: int | None = None) -> np.ndarray:
    """The N real component maps ``(N, M, npix)`` of one scale (see :func:`steering_matrix`).

    ``alm``: ``(M, nalm(lmax))`` coefficients of real maps; ``psi_j``: ``(L, 2N - 1)``, L > lmax.
    Costs one scalar synthesis (odd N) plus ``floor(N/2)`` spin-n syntheses.
    """
    return component_maps(alm, component_kernels(psi_j, lmax), lmax, nside=nside, geometry=geometry,
                          nthreads=nthreads)


#: Pixels per block of the small matrix products over orientation: the block's component, oriented
#: and reduced values stay in cache (measured at nside 256, 2 maps: 0.07 s in blocks of 16384
#: against 0.8 s in one product).
_BLOCK = 16384


def _planes(components: Any) -> tuple[Any, list[np.ndarray], tuple[int, ...]]:
    """``components`` (an array ``(C, ...)`` or a list of C arrays of one shape) -> the array viewed
    as ``(C, rows, npix)`` where that needs no copy (else None), the C planes ``(rows, npix)``
    (views) and the common shape ``(...)``."""
    stacked = None
    if isinstance(components, np.ndarray) and components.ndim >= 2 and components.dtype == np.float64:
        stacked = components.reshape(components.shape[0], -1, components.shape[-1])
        if not np.may_share_memory(stacked, components):  # the reshape had to copy
            stacked = None
    comps = [np.asarray(c) for c in components]
    shape = comps[0].shape
    return stacked, [c.reshape(-1, shape[-1]) if c.ndim > 1 else c.reshape(1, -1) for c in comps], shape


def _blocks(nrow: int, npix: int) -> Any:
    """``(r0, r1, p0, p1)`` cache-sized blocks of a ``(nrow, npix)`` plane: whole rows (small grids)
    or pixel ranges of one row (large grids)."""
    per = max(1, _BLOCK // npix)
    step = _BLOCK if per == 1 else npix
    for r0 in range(0, nrow, per):
        r1 = min(nrow, r0 + per)
        for p0 in range(0, npix, step):
            yield r0, r1, p0, min(npix, p0 + step)


def _gather(stacked: Any, planes: list[np.ndarray], r0: int, r1: int, p0: int, p1: int,
            into: np.ndarray) -> np.ndarray:
    """The block ``[r0:r1, p0:p1]`` of every plane as ``(C, size)``: a strided view of ``stacked``
    where one exists (one row, or whole contiguous rows), else copied into the rows of ``into``."""
    size = (r1 - r0) * (p1 - p0)
    if stacked is not None and stacked.strides[-1] == stacked.itemsize:
        if r1 - r0 == 1:
            return stacked[:, r0, p0:p1]
        if p1 - p0 == stacked.shape[-1] and stacked.strides[1] == stacked.strides[-1] * stacked.shape[-1]:
            return stacked[:, r0:r1].reshape(len(planes), size)
    for i, q in enumerate(planes):
        np.copyto(into[i, :size].reshape(r1 - r0, p1 - p0), q[r0:r1, p0:p1])
    return into[:, :size]


def _blocked(matrix: np.ndarray, components: Any, then: Any = None) -> np.ndarray:
    """``matrix @ components`` over the component axis, in cache-sized pixel blocks.

    ``components``: an array ``(C, ...)`` or a list of C arrays of one shape (views, e.g. the
    Q and U planes of a spin synthesis: no copy of the whole maps is made). ``then(block)``
    (e.g. the orientation reductions) is applied to each ``(rows, n)`` block before it is
    stored. Returns ``(rows,) + shape``.
    """
    stacked, planes, shape = _planes(components)
    nrow, npix = planes[0].shape
    rows = matrix.shape[0] if then is None else then(np.zeros((matrix.shape[0], 1))).shape[0]
    out = np.empty((rows, nrow, npix))
    x = np.empty((len(planes), _BLOCK))
    y = np.empty((matrix.shape[0], _BLOCK))
    for r0, r1, p0, p1 in _blocks(nrow, npix):
        block = np.matmul(matrix, _gather(stacked, planes, r0, r1, p0, p1, x), out=y[:, : (r1 - r0) * (p1 - p0)])
        out[:, r0:r1, p0:p1] = (block if then is None else then(block)).reshape(rows, r1 - r0, p1 - p0)
    return out.reshape((rows,) + shape)


def steer(components: np.ndarray, N: int, gammas: Any = None) -> np.ndarray:
    """Component maps ``(N, ...)`` -> the coefficient at each orientation ``(len(gammas), ...)``."""
    return _blocked(steering_matrix(N, gammas), components)


def steer_on(backend: Any, components: Any, N: int, gammas: Any = None) -> Any:
    """:func:`steer` for any backend: numpy arrays go through the cache-blocked product, other arrays
    (torch tensors) through a weighted sum of the N component maps per orientation (differentiable).
    ``components``: a list of N arrays of one shape. Returns ``(len(gammas), ...)``."""
    comps = list(components)
    if isinstance(comps[0], np.ndarray):
        return steer(comps, N, gammas)
    S = steering_matrix(N, gammas)
    return backend.stack([sum(float(S[k, c]) * comps[c] for c in range(S.shape[1])) for k in range(S.shape[0])], axis=0)


def orientation_harmonics_on(values: Any, harmonics: int) -> list[Any]:
    """:func:`orientation_harmonics` for any array type (numpy: blocked; torch: weighted sums over axis 0)."""
    if isinstance(values, np.ndarray):
        return orientation_harmonics(values, harmonics)
    R = _harmonic_matrix(values.shape[0], harmonics)
    rows = [sum(float(R[r, k]) * values[k] for k in range(R.shape[1])) for r in range(R.shape[0])]
    return [rows[0]] + [(rows[2 * h - 1] ** 2 + rows[2 * h] ** 2) ** 0.5 for h in range(1, harmonics + 1)]


def modulus_orientations(N: int) -> np.ndarray:
    """Orientations at which the scattering takes the modulus: ``gamma_k = k pi / (2N)``, ``k < 2N``.

    ``W`` itself is fixed by N samples, but ``|W(gamma)|`` is not bandlimited in gamma: its
    mean over N samples aliases, and a rotation of the sphere (which turns the local frame,
    shifting gamma) changes the aliased part. Twice as many samples (steered from the same N
    component maps: no extra SHT) bring the measured equivariance error back to N = 1's
    (``scatterdist equivariance --N 4 --oversample 2``, README).
    """
    N = _check_N(N)
    return np.arange(2 * N) * (np.pi / (2 * N))


def max_harmonic(N: int) -> int:
    """Highest orientation harmonic the scattering keeps: 1 for N > 1 (0 for N = 1).

    Harmonic 1 (``e^{2 i gamma}``: one preferred orientation in gamma over [0, pi)) was
    measured within 2x of the orientation mean's equivariance error; harmonic 2 was 4x worse
    and added a third of the analyses (``scatterdist equivariance --N 4``).
    """
    return 0 if _check_N(N) == 1 else 1


def orientation_harmonics(moduli: np.ndarray, harmonics: int) -> list[np.ndarray]:
    """Rotation-invariant reductions of ``|W(gamma_k)|`` ``(K, ...)``, ``gamma_k = k pi / K``, over axis 0.

    Returns ``harmonics + 1`` real arrays ``(...)``: ``h = 0`` the mean over gamma, ``h >= 1``
    the modulus of the Fourier coefficient ``(1/K) sum_k |W(gamma_k)| e^{-2 i h gamma_k}``
    (``|W|`` has period pi in gamma; a rotation of the sphere turns the local frame, which
    shifts gamma and only changes the phase of each harmonic).
    """
    flat = _blocked(_harmonic_matrix(moduli.shape[0], harmonics), moduli)
    return [flat[0]] + [np.hypot(flat[2 * h - 1], flat[2 * h]) for h in range(1, harmonics + 1)]


def _harmonic_matrix(K: int, harmonics: int) -> np.ndarray:
    """Rows ``1/K``, then ``cos(2 h gamma_k)/K``, ``sin(2 h gamma_k)/K`` for h = 1..harmonics ``(2H + 1, K)``."""
    if not 0 <= harmonics < K / 2:
        raise ValueError(f"orientation harmonics must be in [0, {K / 2}) for {K} orientations (below Nyquist)")
    phase = 2.0 * np.pi * np.arange(K) / K  # 2 h gamma_k for h = 1
    rows = [np.ones(K)]
    for h in range(1, harmonics + 1):
        rows += [np.cos(h * phase), np.sin(h * phase)]
    return np.stack(rows) / K


def oriented_moduli(components: Any, N: int, harmonics: int) -> list[np.ndarray]:
    """Component maps ``(N, ...)`` -> :func:`orientation_harmonics` of ``|W|`` at :func:`modulus_orientations`,
    fused block by block: per cache-sized block of pixels, one steering product ``(2N, N)``, the
    modulus in place, one reduction product ``(2H + 1, 2N)`` and the harmonics' moduli, all in
    buffers reused from block to block (the ``2N`` oriented maps never exist whole).
    ``components``: an array ``(N, ...)`` or a list of N arrays of one shape (e.g. views of the
    spin syntheses' Q and U planes). Returns ``harmonics + 1`` float64 arrays ``(...)``, views of
    one contiguous ``(harmonics + 1, ...)`` array."""
    S = steering_matrix(N, modulus_orientations(N))
    R = _harmonic_matrix(S.shape[0], harmonics)
    stacked, planes, shape = _planes(components)
    nrow, npix = planes[0].shape
    out = np.empty((harmonics + 1, nrow, npix))
    x = np.empty((len(planes), _BLOCK))
    w = np.empty((S.shape[0], _BLOCK))
    r = np.empty((R.shape[0], _BLOCK))
    for r0, r1, p0, p1 in _blocks(nrow, npix):
        size = (r1 - r0) * (p1 - p0)
        wb, rb = w[:, :size], r[:, :size]
        np.matmul(S, _gather(stacked, planes, r0, r1, p0, p1, x), out=wb)
        np.abs(wb, out=wb)
        np.matmul(R, wb, out=rb)
        # (H + 1, size) views of the output: one row's pixel range, or whole rows (contiguous)
        dest = (out[:, r0, p0:p1] if r1 - r0 == 1 else out[:, r0:r1].reshape(harmonics + 1, size))
        dest[0] = rb[0]
        for h in range(1, harmonics + 1):
            cos, sin = rb[2 * h - 1], rb[2 * h]
            np.multiply(cos, cos, out=cos)
            np.multiply(sin, sin, out=sin)
            np.add(cos, sin, out=dest[h])
            np.sqrt(dest[h], out=dest[h])
    out = out.reshape((harmonics + 1,) + shape)
    return [out[h] for h in range(harmonics + 1)]


def directional_wavelet_transform(alm: Any, L: int, lam: float = 2.0, J0: int = 0, N: int = 1,
                                  nside: int | None = None, gammas: Any = None, oversample: int = 1,
                                  nthreads: int | None = None) -> dict[int, np.ndarray]:
    """Directional wavelet coefficients of real maps given by their alm, on HEALPix, per scale.

    Parameters
    ----------
    alm : complex ``(nalm(L - 1),)`` or ``(B, nalm(L - 1))``, healpy layout
    L, lam, J0, N : the filter bank (:func:`scatterdist.directional_kernels`)
    nside : output resolution for every scale; default: multiresolution, scale j at the
        smallest power of two with ``2 nside >= L_j`` times ``oversample``
    gammas : orientations, radians (default ``k pi / N``, ``k = 0..N-1``)

    Returns
    -------
    ``{j: (..., len(gammas), npix_j)}`` float64, the coefficient ``sqrt(2 pi) <f, R_(phi, theta, gamma) Psi_j>``
    at every pixel centre (``pys2let.analysis_lm2wav`` times ``sqrt(2 pi)``).
    """
    a = np.asarray(alm, dtype=np.complex128)
    was_1d = a.ndim == 1
    a = a.reshape(-1, a.shape[-1])
    if a.shape[-1] != alm_size(L - 1):
        raise ValueError(f"alm has {a.shape[-1]} coefficients, expected {alm_size(L - 1)} for L={L}")
    _, psi = directional_kernels(L, lam, J0, N)
    out = {}
    for i, psi_j in enumerate(psi):
        j = J0 + i
        Lj = wavelet_bandlimit(j, L, lam)
        nside_j = nside if nside is not None else next_pow2(-(-Lj // 2)) * int(oversample)
        comps = directional_components(a[:, alm_truncate_index(L - 1, Lj - 1)], psi_j, Lj - 1, nside=nside_j, nthreads=nthreads)
        w = np.moveaxis(steer(comps, N, gammas), 0, 1)
        out[j] = w[0] if was_1d else w
    return out
