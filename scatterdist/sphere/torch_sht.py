"""Spherical harmonic transforms of HEALPix RING maps in torch (CPU or GPU, differentiable).

Same signatures, layouts and conventions as :func:`scatterdist.sphere.analysis` /
:func:`scatterdist.sphere.synthesis` (ducc0), on torch tensors:

- maps ``(..., npix)`` real float32/float64, RING ordering, on any device;
- alm ``(..., nalm)`` complex64/complex128 in the healpy m-major layout with mmax = lmax
  (``index = m*(2*lmax+1-m)//2 + l``), Condon-Shortley phase as in healpy/ducc0.

Engine choice (``LEGENDRE_ENGINE`` / ``$SCATTERDIST_LEGENDRE``, see :func:`legendre_engine`):
by default ("auto") **CPU tensors go through ducc0**: the raw synthesis and adjoint synthesis
are ``ducc0.sht.synthesis`` / ``ducc0.sht.adjoint_synthesis`` on zero-copy numpy views of the
tensors, in their precision, with ``torch.get_num_threads()`` threads (``nthreads`` sets it);
ducc0 computes the Legendre values on the fly, where the tables engine reads ~2.4 GB of them
per nside-512 transform. Measured on 2 shared cores
(``benchmarks/torch_transform.py --threads 2 --nside 512 --cpu-batch 2 --dtypes float32``):
torch float32 takes 0.7-0.8x the numpy backend's time with ducc0, 3.7x with the tables
engine; nside 256, batch 8: 0.69x against 1.9x (docs/gpu.md). The autograd Functions call
these primitives forward and backward, so gradients are the same explicit adjoints.
CUDA tensors (and every tensor with ``LEGENDRE_ENGINE = "torch"``) use the torch engine below.

A torch transform is a handful of large kernels whatever nside and lmax (DESIGN.md, "GPU engine
rules"); everything that is not data (index tensors, phases, chirps, Legendre tables) is
built once per (nside, lmax, dtype, device) and cached. Synthesis (the adjoint runs the
same steps backwards):

1. **Legendre step** ``F_r(m) = sum_l a_lm lambda_lm(cos theta_r)`` on the 2*nside northern
   rings (equator included), with the even and odd ``l - m`` sums kept apart so that the
   southern rings follow by symmetry (``lambda_lm(-x) = (-1)^(l+m) lambda_lm(x)``). Three
   torch engines, chosen per call from the memory budget ("auto" on CUDA, or "torch"):

   - *tables* (the whole table of the key fits TABLE_SHARE of ``memory_budget``): the (m, l) triangle is
     cut into ``G`` (1, 2, 4 or 8) groups of orders, each stored padded to its longest
     column as ``(nm, 2, rows, nnorth)``; one gather of the coefficients and one ``bmm``
     per group;
   - *fused* (tables do not fit, CUDA + triton, or ``TRITON_INTERPRET=1``): the Triton
     kernels of :mod:`scatterdist.sphere.triton_legendre` run the recurrence on the fly and
     accumulate; no table at all;
   - *stream* (tables do not fit and no fused kernel): m chunks of about CHUNK_BYTES of
     values, a prefix of them cached within the budget and the rest recomputed each call
     (a loop over degrees in torch: the slow fallback).

   Legendre values come from the standard recurrence in float64 (m-diagonal start in log2
   space, a 2^300 scale exponent so that nothing underflows near the poles), cast to the
   transform dtype.
2. **North/south**: ``even + odd`` on the northern rings, ``even - odd`` on their southern
   mirrors, by one small matmul.
3. **Ring FFTs in O(1) calls** (batch last, transforms along m): when lmax < 2*nside (no
   aliasing on them) all equatorial rings (length 4*nside) take the phase
   ``exp(i m phi0_r)`` and one ``irfft``; every other ring, whatever its length, goes
   through one chirp-z (Bluestein) transform of one padded length ``P >= M + nmax - 1``:
   pre-chirp (phase and weight included), FFT, product with the cached FFT of each ring's
   chirp, inverse FFT, post-chirp, real part. The DFT is evaluated for every m, so polar
   rings alias high m exactly as ducc0/healpy do. Pixels are put in RING order by one gather.

``analysis(mode="quadrature")`` is the adjoint synthesis times 4*pi/npix, exactly as the
ducc0 path. ``mode="lsq"`` refines it with conjugate-gradient least squares (CGLS) on
``synthesis(alm) = maps`` (tolerance 1e-10, at most 20 iterations, as ducc0's
``pseudo_analysis``). Gradients flow through :class:`torch.autograd.Function` s whose
backward passes are the explicit adjoint transforms.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from scatterdist.sphere import triton_elementwise, triton_legendre
from scatterdist.sphere.alm import alm_size, lmax_from_size
from scatterdist.sphere.healpix import check_nside, npix2nside, ring_geometry
from scatterdist.sphere.sht import ANALYSIS_MODES, LSQ_EPSILON, LSQ_MAXITER, _check_lmax

#: Default Legendre cache budget (bytes) on the CPU: a quarter of the physical memory, at most this.
DEFAULT_MEMORY_BUDGET_CPU = 4 << 30
#: Fraction of the device's total memory used as default cache budget on CUDA.
DEFAULT_MEMORY_BUDGET_CUDA_FRACTION = 0.25
#: Target size (bytes) of one chunk of Legendre values of the *stream* engine.
CHUNK_BYTES = 128 << 20
#: Scale exponent step of the Legendre recurrence: values are ``mantissa * 2**(SCALE_BITS*k)``.
SCALE_BITS = triton_legendre.SCALE_BITS
#: Renormalise the recurrence state every this many steps (growth per step < 2**7).
RENORM_EVERY = 8
#: Numbers of m groups tried, in order, for the *tables* engine (more groups: less padding, more calls).
TABLE_GROUPS = (2, 4, 8)
#: A key uses the *tables* engine only if its whole table fits this fraction of the budget
#: (so that the few keys of one scattering call do not evict each other call after call).
TABLE_SHARE = 0.6
#: Small keys (a whole rectangle of orders x degrees/2 within this fraction of the budget) use
#: one group: twice the values of the triangle, one matmul fewer per transform.
ONE_GROUP_SHARE = 1 / 16
#: Chirp-z (Bluestein) FFT groups per transform: one, for every ring that is not equatorial (mirror pairs share it).
POLAR_GROUPS = 1
#: SHT engine: "auto" (ducc0 for CPU tensors; on CUDA tables within the budget, else fused
#: when usable, else stream), "torch" (the torch engines for every device: tables within the
#: budget, else fused, else stream), or force one of "ducc0" (CPU tensors only), "tables",
#: "fused", "stream". The environment variable ``SCATTERDIST_LEGENDRE`` sets the default.
LEGENDRE_ENGINE = os.environ.get("SCATTERDIST_LEGENDRE", "auto")
_ENGINES = ("auto", "ducc0", "torch", "tables", "fused", "stream")

__all__ = [
    "analysis",
    "synthesis",
    "adjoint_synthesis",
    "clear_legendre_cache",
    "default_memory_budget",
    "legendre_cache_nbytes",
    "legendre_engine",
]


# --------------------------------------------------------------------------- plans


def _smooth_length(n: int) -> int:
    """Smallest ``2^a 3^b 5^c >= n`` (a fast FFT length)."""
    best = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


@dataclass
class _Layout:
    """Legendre tables cut into units of orders ``m0 <= m < m1``, each padded to ``rows``
    (``2*rows`` degrees ``l = m + i``, i even at ``[:, 0]``, odd at ``[:, 1]``)."""

    name: str
    units: list[tuple[int, int, int]]  # (m0, m1, rows)
    offsets: list[int]  # first gathered row of each unit
    gather: torch.Tensor  # (sum nm*2*rows,) int64 alm positions (0 where l > lmax: the table holds 0 there)
    inverse: torch.Tensor  # (nalm,) int64 position of each alm in the gathered rows
    nbytes: int  # bytes of all tables of this layout

    def table_bytes(self, index: int, nnorth: int, itemsize: int) -> int:
        m0, m1, rows = self.units[index]
        return (m1 - m0) * 2 * rows * nnorth * itemsize


@dataclass
class _Geometry:
    """Everything about (nside, ring classes, dtype, device) that no lmax changes, shared by the
    plans of every lmax up to ``mmax - 1`` (so a scattering call holds one per grid, not one per
    bandlimit: DESIGN.md "GPU engine rules", issue 20's plan budget).

    Ring classes: when ``direct`` (lmax < 2*nside), the equatorial rings (length ``neq``) go
    through one real FFT and the polar rings through one chirp-z (Bluestein) transform; else
    every ring goes through the chirp-z transform. Chirp-z rings come in mirror **pairs**
    (northern ring i and its southern mirror have the same length and first longitude), so
    every chirp tensor is stored once per pair, shape ``(., 1, R, 1)``, and broadcast over
    the two halves of ``(., 2, R, B)``; the equator (no mirror) pairs with the spare zero ring.

    Synthesis ``f_j = Re sum_m c_m F_m exp(i m (phi0 + 2 pi j / n))`` (c_0 = 1, c_m = 2):
    pre-chirp ``pre``, FFT of length ``P``, product with ``kernel`` (the FFT of
    ``exp(-i pi d^2/n)``), inverse FFT, post-chirp ``post``, real part. The adjoint uses the
    same three tensors (no adjoint copies): its result is ``c_m conj(spectrum)``, fixed by one
    product with ``(1/c_m, -1/c_m)`` at the end (see :func:`_adjoint_raw`).
    """

    nside: int
    direct: bool
    mmax: int  # plans of this geometry have lmax + 1 <= mmax
    dtype: torch.dtype
    device: torch.device
    nring: int
    nnorth: int  # rings 0 .. 2*nside-1 (equator last)
    npix: int
    cos_theta: torch.Tensor  # (nnorth,) float64
    start: torch.Tensor  # (mmax, nnorth) float64 mantissa of lambda_mm
    scale: torch.Tensor  # (mmax, nnorth) int32 exponent (<= 0) of lambda_mm, in units of SCALE_BITS
    # equatorial rings (direct only): RING rings eq_first .. eq_first + count - 1, pixels [eq_pix0, eq_pix1)
    eq_rings: torch.Tensor | None  # (count,) int64 positions in the [north | south mirror] ring axis
    eq_shifted: int  # first shifted ring (phi0 = pi/neq) among them; they alternate
    eq_shift: torch.Tensor | None  # (mmax, 1, 1) complex exp(i m pi / neq)
    eq_pix: tuple[int, int]
    neq: int  # 4*nside
    # chirp-z pairs
    pair_rings: torch.Tensor  # (2R,) int64 ring-axis positions: [north rings | their mirrors]
    npair: int  # R
    nmax: int  # longest ring of the pairs
    P: int  # FFT length >= mmax + nmax - 1
    pre: torch.Tensor  # (mmax, 1, R, 1) complex: c_m exp(i m phi0) exp(i pi m^2/n)
    kernel: torch.Tensor  # (P, 1, R, 1) complex: FFT of exp(-i pi d^2/n), d = j - m (circular)
    post: torch.Tensor  # (nmax, 1, R, 1) complex: exp(i pi j^2/n)
    # RING pixels of the chirp rings: pixels [a, b) <- slots index (int32) of the flattened (nmax, 2, R) output
    segments: list[tuple[int, int, torch.Tensor]]

    def nbytes(self) -> int:
        tensors = [self.cos_theta, self.start, self.scale, self.eq_rings, self.eq_shift, self.pair_rings,
                   self.pre, self.kernel, self.post] + [s[2] for s in self.segments]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class _Plan:
    """One (nside, lmax, dtype, device): views of its :class:`_Geometry` plus the Legendre layouts."""

    nside: int
    lmax: int
    dtype: torch.dtype  # real dtype of the transform
    device: torch.device
    geo: _Geometry
    nnorth: int
    npix: int
    nalm: int
    cos_theta: torch.Tensor  # (nnorth,) float64
    start: torch.Tensor  # (M, nnorth) float64 mantissa of lambda_mm (a prefix of geo.start)
    scale: torch.Tensor  # (M, nnorth) int32 exponent
    pre: torch.Tensor  # (M, 1, R, 1) complex: geo.pre[:M]
    eq_shift: torch.Tensor | None  # (M, 1, 1) complex: geo.eq_shift[:M]
    eq_adjoint: torch.Tensor | None  # (M, 1, 1, 2) real (c_m, -c_m): conj(x) c_m on view_as_real(x)
    layouts: dict = field(default_factory=dict)  # name -> _Layout


#: Geometries kept (one per grid nside and ring class; a depth-2 call at nside 4096 uses 10).
_GEOMETRIES_MAX = 32
#: Plans kept (thin: views of geometries plus small index layouts; a depth-2 call at nside 4096 uses ~27).
_PLANS_MAX = 128
_GEOMETRIES: "OrderedDict[tuple, _Geometry]" = OrderedDict()
_PLANS: "OrderedDict[tuple, _Plan]" = OrderedDict()
_LOCK = threading.RLock()


def _recurrence_coefficients(rows: int, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a, b`` of ``lambda_{l,m} = a (x lambda_{l-1,m} - b lambda_{l-2,m})``, l = m + i, shape (rows, nm)."""
    i = np.arange(rows, dtype=np.float64)[:, None]
    mm = m.astype(np.float64)[None, :]
    ell = mm + i
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.sqrt((4.0 * ell * ell - 1.0) / (ell * ell - mm * mm))
        lm1 = ell - 1.0
        b = np.sqrt((lm1 * lm1 - mm * mm) / (4.0 * lm1 * lm1 - 1.0))
    a[0] = 0.0  # row 0 is the diagonal start, not a recurrence step
    b[:2] = 0.0  # lambda_{m-1,m} = 0
    return a, b


def _diagonal_start(lmax: int, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mantissa and exponent of ``lambda_mm(cos theta)`` for every m <= lmax, shape ``(M, nr)``.

    ``log2 |lambda_mm| = log2(1/sqrt(4 pi)) + 1/2 sum_{k<=m} log2((2k+1)/(2k)) + m log2 sin theta``,
    sign ``(-1)^m`` (Condon-Shortley); value = mantissa * 2**(SCALE_BITS * scale), scale <= 0.
    """
    m = np.arange(lmax + 1, dtype=np.float64)
    kk = np.arange(1, lmax + 1, dtype=np.float64)
    steps = np.concatenate([[0.0], np.cumsum(0.5 * np.log2((2 * kk + 1) / (2 * kk)))])
    log2_diag = (-0.5 * math.log2(4 * math.pi) + steps)[:, None] + m[:, None] * np.log2(np.sin(theta))[None, :]
    scale = np.minimum(np.floor(log2_diag / SCALE_BITS), 0.0)
    sign = np.where(m % 2 == 1, -1.0, 1.0)[:, None]
    return sign * np.exp2(log2_diag - SCALE_BITS * scale), scale.astype(np.int32)


def _make_layout(name: str, lmax: int, units: list[tuple[int, int, int]], nnorth: int, itemsize: int,
                 device: torch.device) -> _Layout:
    nalm = alm_size(lmax)
    gathers, offsets, pos = [], [], 0
    inverse = np.full(nalm, -1, dtype=np.int64)
    for m0, m1, rows in units:
        m = np.arange(m0, m1)[:, None, None]
        parity = np.arange(2)[None, :, None]
        q = np.arange(rows)[None, None, :]
        ell = m + 2 * q + parity
        idx = m * (2 * lmax + 1 - m) // 2 + ell
        valid = ell <= lmax
        flat_pos = pos + np.arange(idx.size).reshape(idx.shape)
        inverse[idx[valid]] = flat_pos[valid]
        gathers.append(np.where(valid, idx, 0).reshape(-1))  # padding: any row (its table entries are 0)
        offsets.append(pos)
        pos += idx.size
    assert (inverse >= 0).all()
    nbytes = sum((m1 - m0) * 2 * rows * nnorth * itemsize for m0, m1, rows in units)
    return _Layout(name, units, offsets, torch.as_tensor(np.concatenate(gathers), device=device),
                   torch.as_tensor(inverse, device=device), nbytes)


def _group_units(lmax: int, groups: int) -> list[tuple[int, int, int]]:
    """``groups`` units of (nearly) equal width in m, each padded to its longest column."""
    M = lmax + 1
    edges = sorted(set(int(round(M * g / groups)) for g in range(groups + 1)))
    return [(m0, m1, (lmax + 2 - m0) // 2) for m0, m1 in zip(edges[:-1], edges[1:])]


def _stream_units(lmax: int, nnorth: int, itemsize: int) -> list[tuple[int, int, int]]:
    """m chunks of about CHUNK_BYTES of values, narrow enough that padding stays under 1/8."""
    target = max(1, CHUNK_BYTES // (itemsize * nnorth))  # (l, m) entries per chunk
    units, m0 = [], 0
    while m0 <= lmax:
        rows = lmax + 1 - m0
        m1 = m0 + max(1, min(target // rows, rows // 8, lmax + 1 - m0))
        units.append((m0, m1, (rows + 1) // 2))
        m0 = m1
    return units


def _layout(plan: "_Plan", name: str) -> _Layout:
    """The layout ``name`` ("G1", "G2", "G4", "G8" or "stream") of ``plan``, built once."""
    layout = plan.layouts.get(name)
    if layout is None:
        itemsize = torch.finfo(plan.dtype).bits // 8
        if name == "stream":
            units = _stream_units(plan.lmax, plan.nnorth, itemsize)
        else:
            units = _group_units(plan.lmax, int(name[1:]))
        layout = _make_layout(name, plan.lmax, units, plan.nnorth, itemsize, plan.device)
        plan.layouts[name] = layout
    return layout


def _chirp(n: np.ndarray, k: np.ndarray, sign: float) -> np.ndarray:
    """``exp(sign * i pi k^2 / n)``, with k^2 reduced mod 2n (exact) before the float64 angle."""
    return np.exp(sign * 1j * np.pi * ((k.astype(np.int64) ** 2) % (2 * n)) / n)


def _geometry_mmax(nside: int, direct: bool) -> int:
    """Orders covered by one geometry: lmax < 2*nside (direct) or up to 3*nside - 1."""
    return 2 * nside if direct else 3 * nside


def _build_geometry(nside: int, direct: bool, dtype: torch.dtype, device: torch.device) -> _Geometry:
    geo = ring_geometry(nside)
    nphi = geo["nphi"].astype(np.int64)
    ringstart = geo["ringstart"].astype(np.int64)
    phi0 = geo["phi0"]
    nring = nphi.size
    nnorth = 2 * nside
    npix = 12 * nside * nside
    M = _geometry_mmax(nside, direct)
    neq = 4 * nside
    theta = geo["theta"][:nnorth]
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128

    def t(a: np.ndarray, dt: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.array(a, order="C"), device=device).to(dt)  # a writable copy

    m = np.arange(M)
    eq_rings = eq_shift = None
    eq_shifted, eq_pix = 0, (0, 0)
    if direct:  # rings of length 4*nside: nside-1 .. 3*nside-1, shifted and unshifted alternating
        ids = np.flatnonzero(nphi == neq)
        shifted = phi0[ids] > 0
        eq_shifted = int(not shifted[0])
        assert (shifted[eq_shifted::2]).all() and not shifted[1 - eq_shifted :: 2].any()
        eq_rings = t(np.where(ids < nnorth, ids, nnorth + (nring - 1 - ids)), torch.int64)
        eq_shift = t(np.exp(1j * m * np.pi / neq)[:, None, None], cdtype)
        eq_pix = (int(ringstart[ids[0]]), int(ringstart[ids[-1]] + neq))
        north = np.arange(nside - 1)  # polar caps
    else:
        north = np.arange(nnorth)  # every northern ring; the equator pairs with the spare ring
    R = north.size
    n = nphi[north][None, :]
    nmax = int(n.max())
    P = _smooth_length(M + nmax - 1)
    cm = np.where(m == 0, 1.0, 2.0)[:, None]
    j = np.arange(nmax)[:, None]
    d = np.arange(P)[:, None]
    d_syn = np.abs(np.where(d < P - M + 1, d, d - P))  # circular offsets j - m

    def pair(a: np.ndarray) -> torch.Tensor:
        return t(a[:, None, :, None], cdtype)

    # pixels of each chirp ring: slot j * 2R + half * R + i of the flattened (nmax, 2, R) output
    rings = np.concatenate([north, nring - 1 - north[north < nnorth - 1]])
    half = np.concatenate([np.zeros(R, np.int64), np.ones(rings.size - R, np.int64)])
    index = np.concatenate([north, north[north < nnorth - 1]])
    slot_of_ring = np.zeros(nring, dtype=np.int64)
    slot_of_ring[rings] = half * R + index
    if direct:
        ncap = int(ringstart[nside - 1])
        pieces = [(0, ncap), (npix - ncap, npix)]
    else:
        pieces = [(0, npix)]
    segments = []
    for a, b in pieces:
        p = np.arange(a, b)
        ring = np.searchsorted(ringstart, p, side="right") - 1
        segments.append((a, b, t(slot_of_ring[ring] + (p - ringstart[ring]) * 2 * R, torch.int32)))
    diag, scale = _diagonal_start(M - 1, theta)
    return _Geometry(
        nside=nside, direct=direct, mmax=M, dtype=dtype, device=device, nring=nring, nnorth=nnorth, npix=npix,
        cos_theta=t(np.cos(theta), torch.float64), start=t(diag, torch.float64), scale=t(scale, torch.int32),
        eq_rings=eq_rings, eq_shifted=eq_shifted, eq_shift=eq_shift, eq_pix=eq_pix, neq=neq,
        pair_rings=t(np.concatenate([north, nnorth + north]), torch.int64), npair=R, nmax=nmax, P=P,
        pre=pair(cm * np.exp(1j * m[:, None] * phi0[north][None, :]) * _chirp(n, m[:, None], 1.0)),
        kernel=pair(np.fft.fft(_chirp(n, d_syn, -1.0), axis=0)),
        post=pair(_chirp(n, j, 1.0)),
        segments=segments,
    )


def geometry_nbytes(nside: int, direct: bool, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the :class:`_Geometry` of (nside, ring classes, dtype), by formula (nothing built):
    the plan memory of a grid at any nside (tests check it against built geometries)."""
    csize = 8 if dtype == torch.float32 else 16
    nnorth, npix, M = 2 * nside, 12 * nside * nside, _geometry_mmax(nside, direct)
    R = nside - 1 if direct else nnorth
    nmax = 4 * R if direct else 4 * nside
    P = _smooth_length(M + nmax - 1)
    total = 8 * nnorth + 12 * M * nnorth + 8 * 2 * R + csize * R * (M + P + nmax)
    if direct:
        total += 8 * (2 * nside + 1) + csize * M + 4 * 2 * (2 * nside * (nside - 1))
    else:
        total += 4 * npix
    return total


def _cached(cache: OrderedDict, key: tuple, limit: int, build: Callable[[], Any]) -> Any:
    """The least-recently-used entry ``key`` of ``cache`` (at most ``limit`` entries), built
    outside the lock on a miss (a concurrent builder of the same key loses its copy)."""
    with _LOCK:
        value = cache.get(key)
        if value is not None:
            cache.move_to_end(key)
            return value
    value = build()
    with _LOCK:
        value = cache.setdefault(key, value)
        while len(cache) > limit:
            cache.popitem(last=False)
    return value


def _get_geometry(nside: int, direct: bool, dtype: torch.dtype, device: torch.device) -> _Geometry:
    return _cached(_GEOMETRIES, (nside, direct, dtype, str(device)), _GEOMETRIES_MAX,
                   lambda: _build_geometry(nside, direct, dtype, device))


def _build_plan(nside: int, lmax: int, dtype: torch.dtype, device: torch.device) -> _Plan:
    geo = _get_geometry(nside, lmax < 2 * nside, dtype, device)
    M = lmax + 1
    return _Plan(
        nside=nside, lmax=lmax, dtype=dtype, device=device, geo=geo, nnorth=geo.nnorth, npix=geo.npix,
        nalm=alm_size(lmax), cos_theta=geo.cos_theta, start=geo.start[:M], scale=geo.scale[:M], pre=geo.pre[:M],
        eq_shift=None if geo.eq_shift is None else geo.eq_shift[:M],
        eq_adjoint=None if geo.eq_shift is None else torch.as_tensor(
            (np.where(np.arange(M) == 0, 1.0, 2.0)[:, None] * np.array([1.0, -1.0]))[:, None, None, :], device=device).to(dtype),
    )


def _get_plan(nside: int, lmax: int, dtype: torch.dtype, device: torch.device) -> _Plan:
    return _cached(_PLANS, (nside, lmax, dtype, str(device)), _PLANS_MAX,
                   lambda: _build_plan(nside, lmax, dtype, device))


def plan_nbytes(device: torch.device | str | None = None) -> int:
    """Bytes of the cached transform plans (geometries and index layouts) on ``device`` (default: all)."""
    with _LOCK:
        geos = [g for g in _GEOMETRIES.values() if device is None or str(g.device) == str(torch.device(device))]
        plans = [p for p in _PLANS.values() if device is None or str(p.device) == str(torch.device(device))]
        layouts = sum(lay.gather.numel() * 8 + lay.inverse.numel() * 8 for p in plans for lay in p.layouts.values())
        return sum(g.nbytes() for g in geos) + layouts


# ----------------------------------------------------------------- Legendre values


def _scale_factor(scale: torch.Tensor) -> torch.Tensor:
    """``2**(SCALE_BITS*k)`` for exponents k = 0 and -1, exactly 0 below (values < 2**-SCALE_BITS:
    zero in any float format; never a subnormal, which would slow every later operation)."""
    one = torch.ones_like(scale, dtype=torch.float64)
    return torch.where(scale == 0, one, torch.where(scale == -1, one * 2.0**-SCALE_BITS, one * 0.0))


def _legendre_unit(plan: _Plan, m0: int, m1: int, rows: int) -> torch.Tensor:
    """Normalised Legendre values of orders ``m0 <= m < m1`` on the northern rings, in ``plan.dtype``.

    Shape ``(nm, 2, rows, nnorth)``: ``[j, p, q, r] = lambda_{l,m}(cos theta_r)`` with
    ``m = m0 + j``, ``l = m + 2q + p``; entries with ``l > lmax`` are 0 (the gather pairs
    them with arbitrary coefficients). Computed in float64 with a
    2**SCALE_BITS exponent per (m, ring), in sub-chunks of orders so that the recurrence
    state stays small.
    """
    dev, f64 = plan.device, torch.float64
    nr, lmax = plan.nnorth, plan.lmax
    flush = 2.0 ** (-100 if plan.dtype == torch.float32 else -900)  # << eps * smallest normal
    out = torch.empty((m1 - m0, 2, rows, nr), dtype=plan.dtype, device=dev)
    big = 2.0**SCALE_BITS
    x = plan.cos_theta[None, :]
    # orders per sub-chunk: on CPU a state of 2**15 values (cache-sized, and under torch's
    # grain size: no thread synchronisation per step); on a GPU all orders of the unit at once
    sub = m1 - m0 if dev.type == "cuda" else max(1, (1 << 15) // nr)
    for s0 in range(m0, m1, sub):
        s1 = min(m1, s0 + sub)
        a, b = _recurrence_coefficients(2 * rows, np.arange(s0, s1))
        rec_a = torch.as_tensor(a[:, :, None], device=dev)
        rec_b = torch.as_tensor(b[:, :, None], device=dev)
        p1 = plan.start[s0:s1].clone()
        scale = plan.scale[s0:s1].to(f64)
        p2 = torch.zeros_like(p1)
        nxt = torch.empty_like(p1)
        dest = out[s0 - m0 : s1 - m0]
        scaled = bool((scale < 0).any())
        factor = _scale_factor(scale)

        def store(i: int) -> None:
            target = dest[:, i % 2, i // 2]
            if not scaled:
                target.copy_(p1)
            else:  # values far below the format's normal range become 0, never subnormals
                value = torch.mul(p1, factor)
                target.copy_(value.masked_fill_(value.abs() < flush, 0.0))
            if s1 - 1 + i > lmax:  # l > lmax for the largest orders: 0 (padding)
                target[max(0, lmax + 1 - i - s0) :] = 0.0

        store(0)
        for i in range(1, 2 * rows):
            torch.mul(p1, x, out=nxt)
            nxt.addcmul_(rec_b[i], p2, value=-1.0)
            nxt.mul_(rec_a[i])
            p2, p1, nxt = p1, nxt, p2
            if scaled and i % RENORM_EVERY == 0:
                grow = ((p1.abs() > big) & (scale < 0)).to(f64)
                shrink = torch.exp2(-float(SCALE_BITS) * grow)
                p1.mul_(shrink)
                p2.mul_(shrink)
                scale = scale + grow
                factor = _scale_factor(scale)
                scaled = bool((scale < 0).any())
            store(i)
    return out


Tables = list[torch.Tensor]  # one table per unit of a layout


class _LegendreCache:
    """Process-wide LRU cache of Legendre chunks, bounded per device by the caller's ``memory_budget``.

    One entry per key (nside, lmax, dtype, device, layout): the tables of a prefix of its units.
    """

    def __init__(self) -> None:
        self.entries: "OrderedDict[tuple, Tables]" = OrderedDict()
        self.nbytes: dict[str, int] = {}  # per device

    @staticmethod
    def size(chunks: Tables) -> int:
        return sum(t.numel() * t.element_size() for t in chunks)

    def _drop(self, key: tuple, chunks: Tables) -> None:
        self.nbytes[key[3]] -= self.size(chunks)

    def shrink_to(self, budget: int, key: tuple) -> None:
        """Evict least recently used entries of ``key``'s device (then trim ``key``'s own
        tail) until that device holds at most ``budget`` bytes."""
        device = key[3]
        for other in list(self.entries):
            if self.nbytes.get(device, 0) <= budget:
                return
            if other != key and other[3] == device:
                self._drop(other, self.entries.pop(other))
        if key in self.entries:
            chunks = self.entries[key]
            while chunks and self.nbytes[device] > budget:
                self._drop(key, [chunks.pop()])
            if not chunks:
                del self.entries[key]

    def get(self, key: tuple, budget: int) -> Tables:
        """Cached chunks of ``key`` after shrinking its device to ``budget``."""
        if self.nbytes.get(key[3], 0) > budget:
            self.shrink_to(budget, key)
        chunks = self.entries.get(key)
        if chunks is None:
            return []
        self.entries.move_to_end(key)
        return list(chunks)

    def offer(self, key: tuple, index: int, table: torch.Tensor, budget: int, evict: bool = True) -> None:
        """Keep chunk ``index`` of ``key`` if it extends the cached prefix and fits the budget
        (evicting least recently used entries of other keys first when ``evict``)."""
        size = self.size([table])
        if size > budget or len(self.entries.get(key, ())) != index:
            return
        if evict:
            self.shrink_to(budget - size, key)
        chunks = self.entries.setdefault(key, [])
        self.entries.move_to_end(key)
        used = self.nbytes.get(key[3], 0)
        if len(chunks) == index and used + size <= budget:
            chunks.append(table)
            self.nbytes[key[3]] = used + size
        elif not chunks:
            del self.entries[key]

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes.clear()


_CACHE = _LegendreCache()


def legendre_cache_nbytes(device: torch.device | str | None = None) -> int:
    """Bytes of Legendre tables currently cached on ``device`` (default: all devices)."""
    with _LOCK:
        if device is None:
            return sum(_CACHE.nbytes.values())
        return _CACHE.nbytes.get(str(torch.device(device)), 0)


def clear_legendre_cache() -> None:
    """Drop every cached Legendre table and transform plan."""
    with _LOCK:
        _CACHE.clear()
        _FUSED_FAILED.clear()
        _PLANS.clear()
        _GEOMETRIES.clear()


def default_memory_budget(device: torch.device | str | None = None) -> int:
    """Default Legendre cache budget in bytes: a quarter of a CUDA device's memory; on the CPU a
    quarter of the physical memory, at most DEFAULT_MEMORY_BUDGET_CPU (4 GiB: all tables of an
    nside-512 scattering transform in float32)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(total * DEFAULT_MEMORY_BUDGET_CUDA_FRACTION)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return DEFAULT_MEMORY_BUDGET_CPU // 4
    return int(min(DEFAULT_MEMORY_BUDGET_CPU, ram // 4))


def _check_budget(memory_budget: int | None, device: torch.device) -> int:
    if memory_budget is None:
        return default_memory_budget(device)
    budget = int(memory_budget)
    if budget != memory_budget or budget < 0:
        raise ValueError(f"memory_budget must be a number of bytes >= 0 (0 disables caching), got {memory_budget!r}")
    return budget


def _tables_bytes(plan: _Plan, groups: int) -> int:
    itemsize = torch.finfo(plan.dtype).bits // 8
    return sum((m1 - m0) * 2 * rows * plan.nnorth * itemsize for m0, m1, rows in _group_units(plan.lmax, groups))


def _choose(plan: _Plan, budget: int) -> str:
    """Legendre engine of one call: a layout name ("G1", "G2", "G4", "G8", "stream") or "fused"."""
    engine = _engine_setting()
    if engine in ("auto", "ducc0", "torch"):  # ducc0 never reaches here (CPU tensors go to _use_ducc0)
        engine = "auto"
    if engine in ("auto", "tables"):
        if _tables_bytes(plan, 1) <= budget * ONE_GROUP_SHARE:
            return "G1"
        for groups in TABLE_GROUPS:
            if _tables_bytes(plan, groups) <= budget * TABLE_SHARE:
                return f"G{groups}"
        if engine == "tables":
            return f"G{TABLE_GROUPS[-1]}"
    if engine == "fused" or (engine == "auto" and triton_legendre.usable(plan.device)
                             and str(plan.device) not in _FUSED_FAILED):
        if engine == "fused" and not triton_legendre.usable(plan.device):
            raise RuntimeError(
                f"Legendre engine 'fused' requested but the Triton kernels cannot run on {plan.device} here "
                f"(triton importable: {triton_legendre.available()}); set LEGENDRE_ENGINE='auto'"
            )
        return "fused"
    return "stream"


#: Devices on which a Triton launch failed (compiler, driver, toolchain): device -> the error.
#: The "auto" engine uses the stream engine there for the rest of the process.
_FUSED_FAILED: dict[str, str] = {}


class TritonFallbackWarning(RuntimeWarning):
    """The fused Triton kernels failed on a device; the stream engine (pure torch) runs instead."""


def _fused_or_fallback(plan: _Plan, budget: int, run, fallback):
    """``run()`` (a fused launch); on a Triton failure under the "auto" engine: one warning per
    device, the device marked, and ``fallback()`` (the stream engine) returns the same numbers.
    Out-of-memory is not a Triton failure and propagates (the caller retries with fewer maps)."""
    try:
        return run()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # triton raises CompilationError, RuntimeError, OSError, CalledProcessError...
        if _engine_setting() == "fused":
            raise
        key = str(plan.device)
        with _LOCK:
            first = key not in _FUSED_FAILED
            _FUSED_FAILED[key] = f"{type(exc).__name__}: {exc}"
        if first:
            import warnings

            warnings.warn(
                f"the fused Triton Legendre kernels failed on {key} ({type(exc).__name__}: {str(exc)[:300]}); "
                "using the pure-torch stream engine for this process (slower, same numbers). Usual causes: a "
                "driver older than Triton's bundled ptxas needs (set TRITON_PTXAS_PATH to an older ptxas), no "
                "C compiler or Python headers for Triton's first launch",
                TritonFallbackWarning, stacklevel=3,
            )
        return fallback()


#: The ring transforms' elementwise passes (north/south combination, ring gathers, chirps,
#: phases, paddings) as the Triton kernels of :mod:`triton_elementwise`: "auto" on CUDA tensors
#: (the torch ops elsewhere), "on" wherever the kernels run (CPU tensors under
#: ``TRITON_INTERPRET=1``: how the suite tests them), "off" never.
FUSED_ELEMENTWISE = os.environ.get("SCATTERDIST_FUSED_ELEMENTWISE", "auto")
_ELEMENTWISE_FAILED: dict[str, str] = {}


def _fuse_elementwise(device: torch.device) -> bool:
    """Whether the ring passes on ``device`` run as the fused Triton kernels (:data:`FUSED_ELEMENTWISE`)."""
    setting = FUSED_ELEMENTWISE
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"FUSED_ELEMENTWISE / $SCATTERDIST_FUSED_ELEMENTWISE must be auto, on or off, got {setting!r}")
    if setting == "off" or str(device) in _ELEMENTWISE_FAILED or not triton_elementwise.usable(device):
        return False
    return setting == "on" or device.type == "cuda"


def _elementwise_or_fallback(device: torch.device, run, fallback):
    """``run()`` (fused ring kernels); on a Triton failure: one warning per device, and ``fallback()``
    (the torch ops, same numbers) now and for the rest of the process. Out-of-memory propagates."""
    try:
        return run()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # triton raises CompilationError, RuntimeError, OSError, CalledProcessError...
        if FUSED_ELEMENTWISE == "on":
            raise
        key = str(device)
        with _LOCK:
            first = key not in _ELEMENTWISE_FAILED
            _ELEMENTWISE_FAILED[key] = f"{type(exc).__name__}: {exc}"
        if first:
            import warnings

            warnings.warn(
                f"the fused Triton chirp-z kernels failed on {key} ({type(exc).__name__}: {str(exc)[:300]}); "
                "using torch ops for them in this process (slower, same numbers)", TritonFallbackWarning,
                stacklevel=3)
        return fallback()


def _engine_setting() -> str:
    engine = LEGENDRE_ENGINE
    if engine not in _ENGINES:
        raise ValueError(f"LEGENDRE_ENGINE / $SCATTERDIST_LEGENDRE must be one of {_ENGINES}, got {engine!r}")
    return engine


def _use_ducc0(device: torch.device) -> bool:
    """Whether a transform of tensors on ``device`` runs through ducc0 (CPU tensors, engine "auto" or "ducc0")."""
    engine = _engine_setting()
    if engine == "ducc0" and device.type != "cpu":
        raise RuntimeError(
            f"SHT engine 'ducc0' requested for a tensor on {device}: ducc0 only runs on CPU tensors; "
            "set LEGENDRE_ENGINE (or $SCATTERDIST_LEGENDRE) to 'auto' or move the tensor to the CPU"
        )
    return engine in ("auto", "ducc0") and device.type == "cpu"


def legendre_engine(
    nside: int, lmax: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    memory_budget: int | None = None,
) -> str:
    """Which engine a transform of this shape uses here: ``"ducc0"`` (the whole transform by
    ``ducc0.sht`` on CPU tensors, no tables), ``"tables (1 group)"``, ``"tables (G groups)"``,
    ``"fused"`` (Triton, no tables) or ``"stream"`` (torch recurrence, partly cached)."""
    device = torch.device(device)
    nside = check_nside(nside)
    _check_lmax(lmax, nside)
    if _use_ducc0(device):
        return "ducc0"
    plan = _get_plan(check_nside(nside), _check_lmax(lmax, nside), dtype, device)
    name = _choose(plan, _check_budget(memory_budget, device))
    if name.startswith("G"):
        return "tables (1 group)" if name == "G1" else f"tables ({name[1:]} groups)"
    return name


def _unit_tables(plan: _Plan, layout: _Layout, budget: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(index, table)`` for every unit of ``layout``: cached tables reused, others
    computed (and cached while the device's total stays within ``budget`` bytes)."""
    key = (plan.nside, plan.lmax, plan.dtype, str(plan.device), layout.name)
    with _LOCK:
        cached = _CACHE.get(key, budget)
    for index, unit in enumerate(layout.units):
        if index < len(cached):
            table = cached[index]
        else:
            table = _legendre_unit(plan, *unit)
            if budget > 0:  # whole tables may evict other keys; stream chunks only use free room
                with _LOCK:
                    _CACHE.offer(key, index, table, budget, evict=layout.name != "stream")
        yield index, table


def _legendre_synthesis(plan: _Plan, coeffs: torch.Tensor, budget: int) -> torch.Tensor:
    """``EO (M, 2, nnorth, C)``: even / odd ``l - m`` sums of ``coeffs (nalm, C)`` (may be a
    transposed view of a contiguous ``(M, 2, C, nnorth)``)."""
    name = _choose(plan, budget)
    if name == "fused":
        return _fused_or_fallback(
            plan, budget,
            lambda: triton_legendre.synthesis_legendre(coeffs, plan.cos_theta, plan.start, plan.scale, plan.lmax),
            lambda: _legendre_synthesis(plan, coeffs, budget))
    layout = _layout(plan, name)
    nr, ncol = plan.nnorth, coeffs.shape[1]
    gathered = coeffs.index_select(0, layout.gather)
    # (C, rows) @ (rows, nnorth): the table is the right operand in its own layout, the
    # fast form of a product with few columns (2-5x faster than table^T @ coefficients)
    eo_t = torch.empty((plan.lmax + 1, 2, ncol, nr), dtype=coeffs.dtype, device=coeffs.device)
    for index, table in _unit_tables(plan, layout, budget):
        m0, m1, rows = layout.units[index]
        nm2, off = 2 * (m1 - m0), layout.offsets[index]
        lhs = gathered[off : off + nm2 * rows].view(nm2, rows, ncol).transpose(1, 2)
        torch.bmm(lhs, table.view(nm2, rows, nr), out=eo_t[m0:m1].view(nm2, ncol, nr))
    return eo_t.transpose(2, 3)


def _legendre_adjoint(plan: _Plan, td: torch.Tensor, budget: int) -> torch.Tensor:
    """``(nalm, C)``: ``sum_r lambda_lm(r) TD[m, (l - m) % 2, r]`` of ``TD (M, 2, nnorth, C)``."""
    name = _choose(plan, budget)
    if name == "fused":
        return _fused_or_fallback(
            plan, budget,
            lambda: triton_legendre.adjoint_legendre(td, plan.cos_theta, plan.start, plan.scale, plan.lmax,
                                                         plan.nalm),
            lambda: _legendre_adjoint(plan, td, budget))
    layout = _layout(plan, name)
    nr, ncol = plan.nnorth, td.shape[-1]
    td_t = td.transpose(2, 3).contiguous()  # (M, 2, C, nnorth): (C, nnorth) @ table^T is the fast form
    flat = torch.empty((layout.gather.numel(), ncol), dtype=td.dtype, device=td.device)
    for index, table in _unit_tables(plan, layout, budget):
        m0, m1, rows = layout.units[index]
        nm2, off = 2 * (m1 - m0), layout.offsets[index]
        res = torch.bmm(td_t[m0:m1].view(nm2, ncol, nr), table.view(nm2, rows, nr).transpose(1, 2))
        flat[off : off + nm2 * rows].view(nm2, rows, ncol).copy_(res.transpose(1, 2))
    return flat.index_select(0, layout.inverse)


def _combine(eo: torch.Tensor) -> torch.Tensor:
    """``(M, 2, nr, C)`` even / odd sums -> contiguous ``(M, 2, nr, C)`` of (even + odd, even - odd)."""
    nm, _, nr, ncol = eo.shape
    if eo.is_contiguous():
        return torch.bmm(_hadamard(eo, nm), eo.view(nm, 2, nr * ncol)).view(nm, 2, nr, ncol)
    t = eo.transpose(2, 3)  # contiguous (M, 2, C, nr)
    ns = torch.bmm(_hadamard(eo, nm), t.reshape(nm, 2, ncol * nr)).view(nm, 2, ncol, nr)
    return ns.transpose(2, 3).contiguous()


# ------------------------------------------------------------------ ducc0 engine


def _ducc0_synthesis(alm: torch.Tensor, nside: int, lmax: int) -> torch.Tensor:
    """CPU alm ``(B, nalm)`` complex -> maps ``(B, npix)`` by ``ducc0.sht.synthesis`` on zero-copy
    numpy views, in the tensor's precision, with ``torch.get_num_threads()`` threads."""
    import ducc0

    batch = alm.detach().resolve_conj().contiguous().numpy()[:, None, :]  # (B, 1, nalm), no copy
    out = ducc0.sht.synthesis(
        alm=batch, lmax=lmax, spin=0, nthreads=torch.get_num_threads(), **ring_geometry(nside)
    )
    return torch.from_numpy(out[:, 0, :])


def _ducc0_adjoint(maps: torch.Tensor, lmax: int) -> torch.Tensor:
    """CPU maps ``(B, npix)`` real -> ``sum_p f_p conj(Y_lm(p))`` ``(B, nalm)`` by
    ``ducc0.sht.adjoint_synthesis`` on zero-copy numpy views (float32 -> complex64)."""
    import ducc0

    nside = npix2nside(maps.shape[-1])
    batch = maps.detach().contiguous().numpy()[:, None, :]  # (B, 1, npix), no copy
    out = ducc0.sht.adjoint_synthesis(
        map=batch, lmax=lmax, spin=0, nthreads=torch.get_num_threads(), **ring_geometry(nside)
    )
    return torch.from_numpy(out[:, 0, :])


_M_WEIGHTS: dict = {}


def _m_weight(lmax: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(nalm,)`` real weights: 1 for m = 0, 2 for m > 0 (cached; no transform plan needed)."""
    key = (lmax, dtype, str(device))
    w = _M_WEIGHTS.get(key)
    if w is None:
        M = lmax + 1
        values = np.where(np.repeat(np.arange(M), np.arange(M, 0, -1)) > 0, 2.0, 1.0)
        w = _M_WEIGHTS[key] = torch.from_numpy(values).to(dtype=dtype, device=device)
    return w


# ------------------------------------------------------------------ raw transforms


_HADAMARD: dict = {}


def _hadamard(like: torch.Tensor, nm: int) -> torch.Tensor:
    """``(nm, 2, 2)`` copies of ``[[1, 1], [1, -1]]`` in the dtype and on the device of ``like``
    (cached): one ``bmm`` launch, where ``matmul`` broadcasting a (2, 2) adds four view ops."""
    key = (like.dtype, str(like.device), nm)
    h = _HADAMARD.get(key)
    if h is None:
        h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=like.dtype)
        h = _HADAMARD[key] = h2.expand(nm, 2, 2).contiguous().to(like.device)
    return h


def _synthesis_raw(alm: torch.Tensor, nside: int, lmax: int, budget: int) -> torch.Tensor:
    """alm ``(B, nalm)`` complex -> maps ``(B, npix)`` real (a transposed view of ``(npix, B)``). No autograd."""
    if _use_ducc0(alm.device):
        return _ducc0_synthesis(alm, nside, lmax)
    real = alm.real.dtype
    plan = _get_plan(nside, lmax, real, alm.device)
    nb = alm.shape[0]
    nr, nm = plan.nnorth, lmax + 1
    # rows (l, m) x columns (batch, re/im); the imaginary parts of the m = 0 coefficients
    # are ignored: the equatorial irfft ignores Im of the zero frequency, chirp-z takes Re
    coeffs = torch.view_as_real(alm).transpose(0, 1).reshape(plan.nalm, 2 * nb)
    eo = _legendre_synthesis(plan, coeffs, budget)  # (M, 2, nr, C)
    del coeffs
    if _fuse_elementwise(alm.device):  # CUDA: the ring passes as kernels, no spectrum array
        return _elementwise_or_fallback(alm.device, lambda: _rings_synthesis_fused(plan, eo),
                                        lambda: _rings_synthesis(plan, _spectrum(plan, eo)))
    ns = _combine(eo)  # ring axis [north (nr) | south mirrors of the north rings]: even + odd, even - odd
    del eo
    spec = torch.view_as_complex(ns.view(nm, 2 * nr, nb, 2))  # (M, rings, B)
    del ns
    return _rings_synthesis(plan, spec)


def _spectrum(plan: _Plan, eo: torch.Tensor) -> torch.Tensor:
    """Even / odd Legendre sums ``(M, 2, nr, 2B)`` -> ring spectra ``(M, 2*nnorth, B)`` complex."""
    return torch.view_as_complex(_combine(eo).view(plan.lmax + 1, 2 * plan.nnorth, eo.shape[-1] // 2, 2))


def _rings_synthesis(plan: _Plan, spec: torch.Tensor) -> torch.Tensor:
    """Ring spectra ``(M, 2*nnorth, B)`` complex (``[north | south mirrors]``, c_m not applied) ->
    maps ``(B, npix)`` real (a transposed view of ``(npix, B)``): the FFT step of a synthesis."""
    geo, nm, nb = plan.geo, plan.lmax + 1, spec.shape[-1]
    out = torch.empty((geo.npix, nb), dtype=plan.dtype, device=spec.device)  # RING pixels x maps
    if geo.eq_rings is not None:  # one real FFT over m for every equatorial ring (no aliasing)
        x = spec.index_select(1, geo.eq_rings)  # (M, count, B), rings in RING order
        x[:, geo.eq_shifted :: 2].mul_(plan.eq_shift)
        a, b = geo.eq_pix
        torch.fft.irfft(x.transpose(0, 1), n=geo.neq, dim=1, norm="forward",
                        out=out[a:b].view(-1, geo.neq, nb))
    # chirp-z over m for every pair of polar rings at once
    x = spec.index_select(1, geo.pair_rings).view(nm, 2, geo.npair, nb).mul_(plan.pre)
    z = torch.fft.ifft(torch.fft.fft(x, n=geo.P, dim=0).mul_(geo.kernel), dim=0)[: geo.nmax]
    del spec, x
    flat = z.mul_(geo.post).real.reshape(-1, nb)  # (nmax * 2R, B) slots
    for a, b, index in geo.segments:
        torch.index_select(flat, 0, index, out=out[a:b])
    return out.t()


def _rings_synthesis_fused(plan: _Plan, eo: torch.Tensor) -> torch.Tensor:
    """:func:`_rings_synthesis` from the even / odd sums ``eo`` ``(M, 2, nr, 2B)`` by the kernels of
    :mod:`triton_elementwise` (the north/south combination computed where it is read)."""
    geo, nb = plan.geo, eo.shape[-1] // 2
    out = torch.empty((geo.npix, nb), dtype=plan.dtype, device=eo.device)  # RING pixels x maps
    if geo.eq_rings is not None:  # north/south, ring gather, phase, padding: one kernel
        x = triton_elementwise.equator_in(eo, geo.eq_rings, plan.eq_shift, geo.eq_shifted, geo.neq // 2 + 1)
        a, b = geo.eq_pix
        torch.fft.irfft(x, n=geo.neq, dim=1, norm="forward", out=out[a:b].view(-1, geo.neq, nb))
        del x
    x = triton_elementwise.chirp_in(eo, geo.pair_rings, plan.pre, geo.P)
    f = torch.fft.fft(x, dim=0)
    del x  # x is P rows long (padded): free it before the inverse FFT
    z = torch.fft.ifft(f.mul_(geo.kernel), dim=0)
    del f
    triton_elementwise.chirp_out(z, geo.post, geo.segments, out)
    return out.t()


def _adjoint_raw(maps: torch.Tensor, lmax: int, budget: int) -> torch.Tensor:
    """Adjoint synthesis: maps ``(B, npix)`` real -> ``sum_p f_p conj(Y_lm(p))`` ``(B, nalm)``. No autograd.

    The ring spectra are computed conjugated and times c_m (so that the synthesis chirps
    serve: ``conj(ifft(fft(y) conj(K))) = fft(ifft(conj(y)) K)``); one product with
    ``(1/c_m, -1/c_m)`` on (re, im) undoes both at the end.
    """
    if _use_ducc0(maps.device):
        return _ducc0_adjoint(maps, lmax)
    nside = npix2nside(maps.shape[-1])
    plan = _get_plan(nside, lmax, maps.dtype, maps.device)
    nb = maps.shape[0]
    if _fuse_elementwise(maps.device):  # CUDA: the ring passes as kernels, no spectrum array
        td = _elementwise_or_fallback(maps.device, lambda: _rings_adjoint_fused(plan, maps),
                                      lambda: _north_south(plan, _rings_adjoint(plan, maps)))
    else:
        td = _north_south(plan, _rings_adjoint(plan, maps))
    out = _legendre_adjoint(plan, td, budget)  # (nalm, 2B) = c_m conj(alm)
    del td
    alm = torch.empty((nb, plan.nalm, 2), dtype=maps.dtype, device=maps.device)
    torch.mul(out.view(plan.nalm, nb, 2).transpose(0, 1), _unweight(lmax, maps.dtype, maps.device), out=alm)
    return torch.view_as_complex(alm)


def _north_south(plan: _Plan, spec: torch.Tensor) -> torch.Tensor:
    """Ring spectra ``(M, 2*nnorth, B)`` -> ``td`` ``(M, 2, nnorth, 2B)`` real: north + south, north - south."""
    nm, nr, nb = plan.lmax + 1, plan.nnorth, spec.shape[-1]
    ring_m = torch.view_as_real(spec).view(nm, 2, nr * 2 * nb)
    return torch.bmm(_hadamard(ring_m, nm), ring_m).view(nm, 2, nr, 2 * nb)


def _rings_adjoint(plan: _Plan, maps: torch.Tensor) -> torch.Tensor:
    """Maps ``(B, npix)`` real -> ring spectra ``(M, 2*nnorth, B)`` complex, conjugated and times
    c_m (``[north | south mirrors]``): the FFT step of an adjoint synthesis."""
    geo, nm, nr, nb = plan.geo, plan.lmax + 1, plan.nnorth, maps.shape[0]
    cdtype = torch.complex64 if maps.dtype == torch.float32 else torch.complex128
    spec = torch.zeros((nm, 2 * nr, nb), dtype=cdtype, device=maps.device)  # [north | south mirrors | zero ring]
    pixels = maps.t()  # (npix, B) view
    if geo.eq_rings is not None:  # c_m conj(rfft) by one real product, then the shifted rings' phase
        a, b = geo.eq_pix
        x = torch.fft.rfft(pixels[a:b].view(-1, geo.neq, nb), dim=1)  # (count, neq/2 + 1, B)
        x = x.narrow(1, 0, nm).transpose(0, 1)  # (M, count, B) view
        torch.view_as_real(x).mul_(plan.eq_adjoint)
        x[:, geo.eq_shifted :: 2].mul_(plan.eq_shift)
        spec.index_copy_(1, geo.eq_rings, x)
    slots = torch.zeros((geo.nmax * 2 * geo.npair, nb), dtype=maps.dtype, device=maps.device)
    for a, b, index in geo.segments:
        slots.index_put_((index,), pixels[a:b])  # each slot at most once: no accumulation
    y = slots.view(geo.nmax, 2, geo.npair, nb) * geo.post
    del slots
    z = torch.fft.fft(torch.fft.ifft(y, n=geo.P, dim=0).mul_(geo.kernel), dim=0)[:nm]
    del y
    spec.index_copy_(1, geo.pair_rings, z.mul_(plan.pre).view(nm, 2 * geo.npair, nb))
    return spec


def _rings_adjoint_fused(plan: _Plan, maps: torch.Tensor) -> torch.Tensor:
    """``td`` of :func:`_north_south` straight from the maps, by the kernels of :mod:`triton_elementwise`
    (no spectrum array: the north/south combination is computed where the rings are written)."""
    geo, nm, nr, nb = plan.geo, plan.lmax + 1, plan.nnorth, maps.shape[0]
    pixels = maps.t()  # (npix, B) view
    td = torch.empty((nm, 2, nr, 2 * nb), dtype=maps.dtype, device=maps.device)  # every ring written once
    if geo.eq_rings is not None:  # c_m conj, phase, north/south combination: one kernel after the rfft
        a, b = geo.eq_pix
        x = torch.fft.rfft(pixels[a:b].view(-1, geo.neq, nb), dim=1)  # (count, neq/2 + 1, B)
        triton_elementwise.equator_out(x, plan.eq_shift, geo.eq_rings, geo.eq_shifted, td)
        del x
    y = triton_elementwise.chirp_in_adjoint(pixels, geo.post, geo.segments, geo.npair, geo.P)
    f = torch.fft.ifft(y, dim=0)
    del y  # P rows long (padded): free it before the second FFT
    z = torch.fft.fft(f.mul_(geo.kernel), dim=0)
    del f
    triton_elementwise.chirp_out_adjoint(z, plan.pre, geo.pair_rings, td)
    return td


_UNWEIGHT: dict = {}


def _unweight(lmax: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(nalm, 2)`` real ``(1/c_m, -1/c_m)``: undoes the adjoint's c_m and conjugation (cached)."""
    key = (lmax, dtype, str(device))
    w = _UNWEIGHT.get(key)
    if w is None:
        inv = 1.0 / _m_weight(lmax, torch.float64, torch.device("cpu"))
        w = _UNWEIGHT[key] = torch.stack([inv, -inv], dim=1).to(dtype=dtype, device=device)
    return w


# ----------------------------------------------------------------------- autograd


class _SynthesisFn(torch.autograd.Function):
    """maps = synthesis(alm); backward: the real adjoint, ``w_m * adjoint_synthesis(g)``."""

    @staticmethod
    def forward(ctx, alm: torch.Tensor, nside: int, lmax: int, budget: int) -> torch.Tensor:
        ctx.nside, ctx.lmax, ctx.budget = nside, lmax, budget
        return _synthesis_raw(alm, nside, lmax, budget)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = _AdjointFn.apply(grad.contiguous(), ctx.lmax, ctx.budget)
        # d maps / d Re a_lm = 2 Re Y, d / d Im a_lm = -2 Im Y for m > 0; m = 0 uses Re a_l0 only
        g = g * _m_weight(ctx.lmax, grad.dtype, grad.device)
        m0 = slice(0, ctx.lmax + 1)
        g = torch.cat([torch.complex(g[:, m0].real, torch.zeros_like(g[:, m0].real)), g[:, ctx.lmax + 1 :]], dim=1)
        return g, None, None, None


class _AdjointFn(torch.autograd.Function):
    """alm = adjoint_synthesis(maps); backward: ``synthesis(g / w_m)`` (the real adjoint)."""

    @staticmethod
    def forward(ctx, maps: torch.Tensor, lmax: int, budget: int) -> torch.Tensor:
        ctx.nside, ctx.lmax, ctx.budget = npix2nside(maps.shape[-1]), lmax, budget
        return _adjoint_raw(maps, lmax, budget)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad / _m_weight(ctx.lmax, grad.real.dtype, grad.device)
        return _SynthesisFn.apply(g.resolve_conj().contiguous(), ctx.nside, ctx.lmax, ctx.budget), None, None


# ------------------------------------------------------------------- public API


@contextlib.contextmanager
def _threads(nthreads: int | None, device: torch.device) -> Iterator[None]:
    """Run with ``torch.set_num_threads(nthreads)`` on CPU, restoring the previous value."""
    if nthreads is None or device.type != "cpu":
        yield
        return
    if int(nthreads) < 1:
        raise ValueError(f"nthreads must be >= 1, got {nthreads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(nthreads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_maps(maps: torch.Tensor | np.ndarray) -> torch.Tensor:
    maps = torch.as_tensor(maps)
    if maps.is_complex():
        raise ValueError(f"maps must be real, got dtype {maps.dtype}")
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.to(torch.float64)  # integers, bool, half: computed in float64
    if maps.ndim < 1:
        raise ValueError("maps must have at least one axis (npix)")
    return maps


def adjoint_synthesis(
    maps: torch.Tensor,
    lmax: int,
    nthreads: int | None = None,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """``sum_p f_p conj(Y_lm(p))`` of real maps ``(..., npix)`` -> complex ``(..., nalm)`` (no weights).

    The explicit adjoint of :func:`synthesis` up to the factor 2 of the m > 0 terms
    (``<synthesis(a), f> = sum_lm w_m Re(conj(a_lm) adjoint_synthesis(f)_lm)``, w_0 = 1, w_m = 2).
    """
    maps = _as_maps(maps)
    nside = npix2nside(maps.shape[-1])
    lmax = _check_lmax(lmax, nside)
    budget = _check_budget(memory_budget, maps.device)
    lead = maps.shape[:-1]
    with _threads(nthreads, maps.device):
        alm = _AdjointFn.apply(maps.reshape(-1, maps.shape[-1]), lmax, budget)
    return alm.reshape(lead + (alm.shape[-1],))


def synthesis(
    alm: torch.Tensor,
    nside: int,
    lmax: int | None = None,
    nthreads: int | None = None,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """Real HEALPix RING maps ``(..., 12*nside**2)`` from complex coefficients ``(..., nalm)``.

    Parameters
    ----------
    alm : complex64/complex128 tensor ``(..., nalm)``, healpy layout; the imaginary part
        of the m = 0 coefficients is ignored (as ducc0 does for real maps)
    nside : output resolution (power of two)
    lmax : defaults to the one implied by the length of the last axis
    nthreads : CPU threads for this call (``torch.set_num_threads``, restored after; the
        ducc0 engine of CPU tensors uses the same count); None keeps torch's setting
    memory_budget : bytes of Legendre tables the process may keep cached on this device
        (all nside, lmax and dtypes together, least recently used evicted first); default
        :func:`default_memory_budget`; 0 recomputes them on every call

    Returns
    -------
    float32 maps for complex64 alm, float64 for complex128, on the device of ``alm``.
    """
    alm = torch.as_tensor(alm)
    if alm.dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"alm must be complex64 or complex128, got dtype {alm.dtype}")
    nside = check_nside(nside)
    if lmax is None:
        lmax = lmax_from_size(alm.shape[-1])
    lmax = _check_lmax(lmax, nside)
    if alm.shape[-1] != alm_size(lmax):
        raise ValueError(f"alm has {alm.shape[-1]} coefficients, expected {alm_size(lmax)} for lmax={lmax}")
    budget = _check_budget(memory_budget, alm.device)
    lead = alm.shape[:-1]
    with _threads(nthreads, alm.device):
        flat = alm.reshape(-1, alm.shape[-1]).resolve_conj().contiguous()
        maps = _SynthesisFn.apply(flat, nside, lmax, budget)
    return maps.reshape(lead + (maps.shape[-1],)).contiguous()


def _cgls(maps: torch.Tensor, lmax: int, budget: int) -> torch.Tensor:
    """Least-squares alm of ``maps (B, npix)``: CGLS on ``synthesis(a) = maps``, per map.

    Uses the real inner product on alm ``<a, b> = sum_lm w_m Re(conj(a) b)`` in which the
    adjoint of synthesis is ``adjoint_synthesis``; starts from the quadrature estimate and
    stops when ``||S^T r|| <= LSQ_EPSILON * ||S^T f||`` for every map or after LSQ_MAXITER steps.
    """
    nside = npix2nside(maps.shape[-1])
    w = _m_weight(lmax, maps.dtype, maps.device)

    def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (w * (a.conj() * b).real).sum(-1, keepdim=True)

    def fix_m0(a: torch.Tensor) -> torch.Tensor:  # m = 0 coefficients of real maps are real
        return torch.cat([a[:, : lmax + 1].real.to(a.dtype), a[:, lmax + 1 :]], dim=1)

    alm = _AdjointFn.apply(maps, lmax, budget) * (4 * math.pi / maps.shape[-1])
    alm = fix_m0(alm)
    resid = maps - _SynthesisFn.apply(alm, nside, lmax, budget)
    s = fix_m0(_AdjointFn.apply(resid, lmax, budget))
    norm0 = inner(s, s).sqrt()
    ref = fix_m0(_AdjointFn.apply(maps, lmax, budget))
    ref_norm = inner(ref, ref).sqrt().clamp_min(torch.finfo(maps.dtype).tiny)
    p = s
    gamma = inner(s, s)
    tol = max(LSQ_EPSILON, 10 * torch.finfo(maps.dtype).eps)
    if bool((norm0 <= tol * ref_norm).all()):
        return alm
    for _ in range(LSQ_MAXITER):
        q = _SynthesisFn.apply(p, nside, lmax, budget)
        qq = (q * q).sum(-1, keepdim=True)
        alpha = torch.where(qq > 0, gamma / qq.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(qq))
        alm = alm + alpha * p
        resid = resid - alpha * q
        s = fix_m0(_AdjointFn.apply(resid, lmax, budget))
        gamma_new = inner(s, s)
        if bool((gamma_new.sqrt() <= tol * ref_norm).all()):
            break
        beta = gamma_new / gamma.clamp_min(torch.finfo(maps.dtype).tiny)
        p = s + beta * p
        gamma = gamma_new
    return alm


def analysis(
    maps: torch.Tensor,
    lmax: int,
    mode: str = "quadrature",
    nthreads: int | None = None,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """Harmonic coefficients of real HEALPix RING maps, in torch.

    Parameters
    ----------
    maps : real tensor ``(..., npix)`` (float32 or float64; integer input becomes float64;
        numpy arrays are accepted and converted), on any device
    lmax : maximum degree of the output (up to 3*nside - 1; aliasing as in ducc0)
    mode : ``"quadrature"`` (adjoint synthesis times 4*pi/npix, exactly the ducc0 path)
        or ``"lsq"`` (CGLS least squares from that start: ~1e-10 on bandlimited maps,
        a few synthesis + adjoint pairs per iteration; gradients flow through the iterations)
    nthreads : CPU threads for this call (``torch.set_num_threads``, restored after)
    memory_budget : bytes of Legendre tables the process may keep cached, see :func:`synthesis`

    Returns
    -------
    complex tensor ``(..., nalm)``: complex128 for float64 maps, complex64 for float32.
    """
    if mode not in ANALYSIS_MODES:
        raise ValueError(f"analysis mode must be one of {ANALYSIS_MODES}, got {mode!r}")
    maps = _as_maps(maps)
    nside = npix2nside(maps.shape[-1])
    lmax = _check_lmax(lmax, nside)
    budget = _check_budget(memory_budget, maps.device)
    lead = maps.shape[:-1]
    flat = maps.reshape(-1, maps.shape[-1])
    with _threads(nthreads, maps.device):
        if mode == "quadrature":
            alm = _AdjointFn.apply(flat, lmax, budget) * (4 * math.pi / maps.shape[-1])
        else:
            alm = _cgls(flat, lmax, budget)
    return alm.reshape(lead + (alm.shape[-1],))
