"""Spherical harmonic transforms of HEALPix RING maps in torch (CPU or GPU, differentiable).

Same signatures, layouts and conventions as :func:`scatterdist.sphere.analysis` /
:func:`scatterdist.sphere.synthesis` (ducc0), on torch tensors:

- maps ``(..., npix)`` real float32/float64, RING ordering, on any device;
- alm ``(..., nalm)`` complex64/complex128 in the healpy m-major layout with mmax = lmax
  (``index = m*(2*lmax+1-m)//2 + l``), Condon-Shortley phase as in healpy/ducc0.

Algorithm (per batch of maps, for synthesis; the adjoint runs the same steps backwards):

1. Legendre step, per chunk of m: ``F_r(m) = sum_l a_lm lambda_lm(cos theta_r)`` as batched
   matmuls over m, using north/south symmetry (``lambda_lm(-x) = (-1)^(l+m) lambda_lm(x)``):
   only the 2*nside northern rings (equator included) are evaluated, with the even and odd
   ``l - m`` terms in two half-size matmuls. Normalised Legendre values come from the
   standard recurrence (m-diagonal start in log2 space, then the three-term recurrence in
   l, in float64, with a 2^300 scale exponent so that nothing underflows near the poles)
   and are cast to the transform dtype. Tables are cached per (nside, lmax, dtype, device)
   only within ``memory_budget`` bytes per device (all keys together, least recently
   used evicted first); chunks that do not fit are recomputed on each call, in scratch
   of about CHUNK_BYTES. There is never one table for the whole transform unless it
   fits the budget.
2. Phase shift ``exp(i m phi0_r)`` of each ring's first pixel, and folding of m modulo the
   ring length ``nphi_r`` (polar-cap rings alias high m exactly as ducc0/healpy do) into a
   packed half-spectrum, in one ``index_add_``.
3. Ring FFTs batched by ring length: all equatorial rings (length 4*nside) in one ``irfft``
   and each pair of mirrored polar rings in one more.

``analysis(mode="quadrature")`` is the adjoint synthesis times 4*pi/npix, exactly as the
ducc0 path. ``mode="lsq"`` refines it with conjugate-gradient least squares (CGLS) on
``synthesis(alm) = maps`` (tolerance 1e-10, at most 20 iterations, as ducc0's
``pseudo_analysis``). Gradients flow through :class:`torch.autograd.Function` s whose
backward passes are the explicit adjoint transforms.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from scatterdist.sphere.alm import alm_size, lmax_from_size
from scatterdist.sphere.healpix import check_nside, npix2nside, ring_geometry
from scatterdist.sphere.sht import ANALYSIS_MODES, LSQ_EPSILON, LSQ_MAXITER, _check_lmax

#: Default Legendre cache budget (bytes) when the call runs on the CPU.
DEFAULT_MEMORY_BUDGET_CPU = 1 << 30
#: Fraction of the device's total memory used as default cache budget on CUDA.
DEFAULT_MEMORY_BUDGET_CUDA_FRACTION = 0.25
#: Target size (bytes) of one chunk of Legendre values (the scratch of an uncached chunk).
CHUNK_BYTES = 128 << 20
#: Scale exponent step of the Legendre recurrence: values are ``mantissa * 2**(SCALE_BITS*k)``.
SCALE_BITS = 300
#: Renormalise the recurrence state every this many steps (growth per step < 2**7).
RENORM_EVERY = 8

__all__ = [
    "analysis",
    "synthesis",
    "adjoint_synthesis",
    "clear_legendre_cache",
    "default_memory_budget",
    "legendre_cache_nbytes",
]


# --------------------------------------------------------------------------- plans


@dataclass
class _Block:
    """Orders ``m0 <= m < m1`` that share one matmul; tables are ``(nm, n_even|n_odd, nnorth)``."""

    m0: int
    m1: int
    n_even: int  # rows with even l - m: ceil((lmax + 1 - m0) / 2)
    n_odd: int  # rows with odd l - m: floor((lmax + 1 - m0) / 2)
    idx_even: torch.Tensor  # (nm * n_even,) int64 alm positions of l = m + 2q; nalm where l > lmax
    idx_odd: torch.Tensor  # (nm * n_odd,) int64 alm positions of l = m + 2q + 1


@dataclass
class _Chunk:
    """Orders ``m0 <= m < m1`` whose Legendre values are generated together (one recurrence)."""

    m0: int
    m1: int
    rows: int  # lmax + 1 - m0: recurrence steps
    rec_a: torch.Tensor  # (rows, nm, 1) float64 recurrence coefficients a_lm, l = m + i
    rec_b: torch.Tensor  # (rows, nm, 1) float64 recurrence coefficients b_lm
    blocks: list[_Block]


@dataclass
class _Plan:
    """Everything about (nside, lmax, dtype, device) that is not a Legendre value."""

    nside: int
    lmax: int
    dtype: torch.dtype  # real dtype of the transform
    device: torch.device
    nring: int
    nnorth: int  # rings 0 .. 2*nside-1 (equator last)
    npix: int
    nalm: int
    cos_theta: torch.Tensor  # (1, nnorth) float64
    log2_sin: torch.Tensor  # (nnorth,) float64
    fold_index: torch.Tensor  # (M * nring,) int64 into the packed half spectrum
    phi0: torch.Tensor  # (1, nring) float64 longitude of each ring's first pixel
    fold_weight: torch.Tensor  # (M, nring) float64: 2 where m > 0 lands on a DC / Nyquist bin, else 1
    conj_sign: torch.Tensor  # (M, nring, 1) real: -1 where the fold conjugates, else +1
    real_rows: torch.Tensor  # (k,) int64 packed positions of DC / Nyquist bins
    npacked: int
    equator: tuple[int, int, int, int, int]  # (nphi, nrings, pack0, pack1, pix0)
    polar: list[tuple[int, int, int, int, int]]  # per cap ring pair: (nphi, pack0, pack1, pix_north, pix_south)
    chunks: list[_Chunk]
    m_weight: torch.Tensor  # (nalm,) real: 1 for m = 0, 2 for m > 0


_PLANS: "OrderedDict[tuple, _Plan]" = OrderedDict()
_PLANS_MAX = 16
_LOCK = threading.RLock()


def _alm_index_tables(lmax: int, m: np.ndarray, n_rows: int, parity: int) -> np.ndarray:
    """alm positions of ``l = m + 2*q + parity`` for rows q, shape (nm, n_rows); ``nalm`` where l > lmax."""
    q = np.arange(n_rows)
    ell = m[:, None] + 2 * q[None, :] + parity
    idx = m[:, None] * (2 * lmax + 1 - m[:, None]) // 2 + ell
    return np.where(ell <= lmax, idx, alm_size(lmax))


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


def _make_chunks(lmax: int, nnorth: int, itemsize: int, device: torch.device) -> list[_Chunk]:
    """Split 0..lmax into m chunks of about CHUNK_BYTES of Legendre values, each split into
    matmul blocks narrow enough that padding rows (l > lmax for the larger m) stay under 1/8."""
    target = max(1, CHUNK_BYTES // (itemsize * nnorth))  # (l, m) entries per chunk
    chunks = []
    m0 = 0
    while m0 <= lmax:
        rows = lmax + 1 - m0
        m1 = m0 + max(1, min(target // rows, lmax + 1 - m0))
        blocks = []
        b0 = m0
        while b0 < m1:
            b_rows = lmax + 1 - b0
            b1 = min(m1, b0 + max(1, b_rows // 8))
            m = np.arange(b0, b1)
            n_even, n_odd = (b_rows + 1) // 2, b_rows // 2
            blocks.append(
                _Block(
                    m0=b0,
                    m1=b1,
                    n_even=n_even,
                    n_odd=n_odd,
                    idx_even=torch.as_tensor(_alm_index_tables(lmax, m, n_even, 0).reshape(-1), device=device),
                    idx_odd=torch.as_tensor(_alm_index_tables(lmax, m, n_odd, 1).reshape(-1), device=device),
                )
            )
            b0 = b1
        a, b = _recurrence_coefficients(rows, np.arange(m0, m1))
        chunks.append(
            _Chunk(
                m0=m0,
                m1=m1,
                rows=rows,
                rec_a=torch.as_tensor(a[:, :, None], device=device),
                rec_b=torch.as_tensor(b[:, :, None], device=device),
                blocks=blocks,
            )
        )
        m0 = m1
    return chunks


def _build_plan(nside: int, lmax: int, dtype: torch.dtype, device: torch.device) -> _Plan:
    geo = ring_geometry(nside)
    nphi = geo["nphi"].astype(np.int64)
    start = geo["ringstart"].astype(np.int64)
    nring = nphi.size
    nnorth = 2 * nside
    npix = 12 * nside * nside
    nm = lmax + 1
    theta = geo["theta"][:nnorth]
    phi0 = geo["phi0"]

    # packed half spectra: all equatorial rings (length 4*nside) first, then each polar
    # ring pair (ring i-1 of 4*i pixels and its southern mirror nring-i), i = 1..nside-1
    pack_start = np.zeros(nring, dtype=np.int64)
    pos = 0
    eq_rings = np.flatnonzero(nphi == 4 * nside)
    for r in eq_rings:
        pack_start[r] = pos
        pos += 2 * nside + 1
    equator = (4 * nside, eq_rings.size, 0, pos, int(start[eq_rings[0]]))
    polar = []
    for i in range(1, nside):
        north, south = i - 1, nring - i
        p0 = pos
        for r in (north, south):
            pack_start[r] = pos
            pos += 2 * i + 1
        polar.append((4 * i, p0, pos, int(start[north]), int(start[south])))

    # fold of order m into ring r's half spectrum (m-major: row m * nring + r)
    m = np.arange(nm)[:, None]
    n_r = nphi[None, :]
    k = m % n_r
    conj = k > n_r // 2
    fold = pack_start[None, :] + np.where(conj, n_r - k, k)
    weight = np.where((m > 0) & ((k == 0) | (2 * k == n_r)), 2.0, 1.0)
    real_rows = np.concatenate([pack_start, pack_start + nphi // 2])  # DC and Nyquist bins
    m_weight = np.where(np.repeat(np.arange(nm), np.arange(nm, 0, -1)) > 0, 2.0, 1.0)

    def t(a: np.ndarray, dt: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.array(a, order="C"), device=device).to(dt)  # a writable copy

    return _Plan(
        nside=nside,
        lmax=lmax,
        dtype=dtype,
        device=device,
        nring=nring,
        nnorth=nnorth,
        npix=npix,
        nalm=alm_size(lmax),
        cos_theta=t(np.cos(theta)[None, :], torch.float64),
        log2_sin=t(np.log2(np.sin(theta)), torch.float64),
        fold_index=t(fold.reshape(-1), torch.int64),
        phi0=t(phi0[None, :], torch.float64),
        fold_weight=t(weight, torch.float64),
        conj_sign=t(np.where(conj, -1.0, 1.0)[:, :, None], dtype),
        real_rows=t(real_rows, torch.int64),
        npacked=pos,
        equator=equator,
        polar=polar,
        chunks=_make_chunks(lmax, nnorth, torch.finfo(dtype).bits // 8, device),
        m_weight=t(m_weight, dtype),
    )


def _get_plan(nside: int, lmax: int, dtype: torch.dtype, device: torch.device) -> _Plan:
    key = (nside, lmax, dtype, str(device))
    with _LOCK:
        plan = _PLANS.get(key)
        if plan is not None:
            _PLANS.move_to_end(key)
            return plan
    plan = _build_plan(nside, lmax, dtype, device)
    with _LOCK:
        _PLANS[key] = plan
        while len(_PLANS) > _PLANS_MAX:
            _PLANS.popitem(last=False)
    return plan


# ----------------------------------------------------------------- Legendre values


def _legendre_chunk(
    plan: _Plan, chunk: _Chunk, scratch: torch.Tensor | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised Legendre values of one m chunk on the northern rings, in ``plan.dtype``.

    Returns one ``(even, odd)`` pair per matmul block, contiguous, of shapes
    ``(nm, n_even, nnorth)`` and ``(nm, n_odd, nnorth)``: ``even[j, q, r] =
    lambda_{l,m}(cos theta_r)`` with ``m = block.m0 + j``, ``l = m + 2q`` (odd: ``l = m + 2q + 1``);
    rows with ``l > lmax`` hold finite values that the index tables never select.
    Computed in float64 with a 2**SCALE_BITS exponent per (m, ring), so that the tiny
    ``lambda_mm`` near the poles never underflow before the recurrence lifts them.
    ``scratch`` (flat, ``plan.dtype``) is reused for the full chunk table when large enough.
    """
    dev = plan.device
    nm = chunk.m1 - chunk.m0
    nr = plan.nnorth
    f64 = torch.float64
    m = torch.arange(chunk.m0, chunk.m1, device=dev, dtype=f64)
    # log2 |lambda_mm| = log2(1/sqrt(4 pi)) + 1/2 sum_k log2((2k+1)/(2k)) + m log2 sin(theta)
    kk = torch.arange(1, chunk.m1, device=dev, dtype=f64)
    steps = torch.cumsum(0.5 * torch.log2((2 * kk + 1) / (2 * kk)), 0)
    steps = torch.cat([torch.zeros(1, device=dev, dtype=f64), steps])[chunk.m0 : chunk.m1]
    log2_diag = (-0.5 * math.log2(4 * math.pi) + steps)[:, None] + m[:, None] * plan.log2_sin[None, :]
    scale = torch.clamp(torch.floor(log2_diag / SCALE_BITS), max=0.0)
    sign = 1.0 - 2.0 * torch.remainder(m, 2.0)  # Condon-Shortley (-1)^m
    p1 = sign[:, None] * torch.exp2(log2_diag - SCALE_BITS * scale)
    p2 = torch.zeros_like(p1)
    factor = torch.exp2(SCALE_BITS * torch.clamp(scale, min=-3.0))
    x = plan.cos_theta
    big = 2.0**SCALE_BITS
    size = chunk.rows * nm * nr
    if scratch is None or scratch.numel() < size:
        scratch = torch.empty(size, dtype=plan.dtype, device=dev)
    table = scratch[:size].view(chunk.rows, nm, nr)
    nxt = torch.empty_like(p1)
    tmp = None if plan.dtype == f64 else torch.empty_like(p1)
    scaled = bool((scale < 0).any())  # some values still carry a 2**(SCALE_BITS*k) exponent

    def store(i: int) -> None:
        if not scaled:
            table[i].copy_(p1)
        elif tmp is None:
            torch.mul(p1, factor, out=table[i])
        else:
            table[i].copy_(torch.mul(p1, factor, out=tmp))

    store(0)
    for i in range(1, chunk.rows):
        torch.mul(p1, x, out=nxt)
        nxt.addcmul_(chunk.rec_b[i], p2, value=-1.0)
        nxt.mul_(chunk.rec_a[i])
        p2, p1, nxt = p1, nxt, p2
        if scaled and i % RENORM_EVERY == 0:
            grow = ((p1.abs() > big) & (scale < 0)).to(f64)
            shrink = torch.exp2(-float(SCALE_BITS) * grow)
            p1.mul_(shrink)
            p2.mul_(shrink)
            scale = scale + grow
            factor = torch.exp2(SCALE_BITS * torch.clamp(scale, min=-3.0))
            scaled = bool((scale < 0).any())
        store(i)
    out = []
    for block in chunk.blocks:
        j0, j1 = block.m0 - chunk.m0, block.m1 - chunk.m0
        rows = table[:, j0:j1]  # row i holds l = m + i for every m of the block
        even = rows[0 : 2 * block.n_even : 2].transpose(0, 1).contiguous()
        odd = rows[1 : 1 + 2 * block.n_odd : 2].transpose(0, 1).contiguous()
        out.append((even, odd))
    return out


Tables = list[tuple[torch.Tensor, torch.Tensor]]  # one (even, odd) pair per block of a chunk


class _LegendreCache:
    """Process-wide LRU cache of Legendre chunks, bounded per device by the caller's ``memory_budget``.

    One entry per key (nside, lmax, dtype, device): the tables of a prefix of its m chunks.
    """

    def __init__(self) -> None:
        self.entries: "OrderedDict[tuple, list[Tables]]" = OrderedDict()
        self.nbytes: dict[str, int] = {}  # per device

    @staticmethod
    def size(chunks: list[Tables]) -> int:
        return sum(t.numel() * t.element_size() for tables in chunks for pair in tables for t in pair)

    def _drop(self, key: tuple, chunks: list[Tables]) -> None:
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

    def get(self, key: tuple, budget: int) -> list[Tables]:
        """Cached chunks of ``key`` after shrinking its device to ``budget``."""
        if self.nbytes.get(key[3], 0) > budget:
            self.shrink_to(budget, key)
        chunks = self.entries.get(key)
        if chunks is None:
            return []
        self.entries.move_to_end(key)
        return list(chunks)

    def offer(self, key: tuple, index: int, tables: Tables, budget: int) -> None:
        """Keep chunk ``index`` of ``key`` if it extends the cached prefix and fits the budget."""
        size = self.size([tables])
        if size > budget or len(self.entries.get(key, ())) != index:
            return
        self.shrink_to(budget - size, key)
        chunks = self.entries.setdefault(key, [])
        self.entries.move_to_end(key)
        used = self.nbytes.get(key[3], 0)
        if len(chunks) == index and used + size <= budget:
            chunks.append(tables)
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
        _PLANS.clear()


def default_memory_budget(device: torch.device | str | None = None) -> int:
    """Default Legendre cache budget in bytes: 1 GiB on CPU, a quarter of a CUDA device's memory."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(total * DEFAULT_MEMORY_BUDGET_CUDA_FRACTION)
    return DEFAULT_MEMORY_BUDGET_CPU


def _check_budget(memory_budget: int | None, device: torch.device) -> int:
    if memory_budget is None:
        return default_memory_budget(device)
    budget = int(memory_budget)
    if budget != memory_budget or budget < 0:
        raise ValueError(f"memory_budget must be a number of bytes >= 0 (0 disables caching), got {memory_budget!r}")
    return budget


def _legendre_blocks(plan: _Plan, budget: int) -> Iterator[tuple[_Block, torch.Tensor, torch.Tensor]]:
    """Yield ``(block, even, odd)`` for every m block: cached chunks reused, others computed
    (and cached while the device's total stays within ``budget`` bytes)."""
    key = (plan.nside, plan.lmax, plan.dtype, str(plan.device))
    with _LOCK:
        cached = _CACHE.get(key, budget)
    scratch = None  # the full table of one chunk, reused from chunk to chunk
    for index, chunk in enumerate(plan.chunks):
        if index < len(cached):
            tables = cached[index]
        else:
            if scratch is None:
                largest = max(c.rows * (c.m1 - c.m0) for c in plan.chunks[index:]) * plan.nnorth
                scratch = torch.empty(largest, dtype=plan.dtype, device=plan.device)
            tables = _legendre_chunk(plan, chunk, scratch)
            if budget > 0:
                with _LOCK:
                    _CACHE.offer(key, index, tables, budget)
        for block, (even, odd) in zip(chunk.blocks, tables):
            yield block, even, odd


# ------------------------------------------------------------------ raw transforms


def _phase(plan: _Plan, weight: torch.Tensor | None) -> torch.Tensor:
    """``weight * exp(i m phi0_r)``, shape ``(M, nring, 1)``, computed in float64 then cast."""
    m = torch.arange(plan.lmax + 1, device=plan.device, dtype=torch.float64)[:, None]
    magnitude = torch.ones_like(plan.fold_weight) if weight is None else weight
    phase = torch.polar(magnitude, m * plan.phi0)
    return phase.to(torch.complex64 if plan.dtype == torch.float32 else torch.complex128)[:, :, None]


def _synthesis_raw(alm: torch.Tensor, nside: int, lmax: int, budget: int) -> torch.Tensor:
    """alm ``(B, nalm)`` complex -> maps ``(B, npix)`` real. No autograd."""
    real = alm.real.dtype
    plan = _get_plan(nside, lmax, real, alm.device)
    nb = alm.shape[0]
    nr, nring, nm = plan.nnorth, plan.nring, lmax + 1
    # rows (l, m) x columns (batch, re/im), plus one zero row that padding indices select
    coeffs = torch.zeros((plan.nalm + 1, nb, 2), dtype=real, device=alm.device)
    coeffs[: plan.nalm] = torch.view_as_real(alm).transpose(0, 1)
    coeffs = coeffs.view(plan.nalm + 1, 2 * nb)
    ring_m = torch.empty((nm, nring, 2 * nb), dtype=real, device=alm.device)
    for block, even, odd in _legendre_blocks(plan, budget):
        k = block.m1 - block.m0
        east = torch.bmm(even.transpose(1, 2), coeffs.index_select(0, block.idx_even).view(k, block.n_even, 2 * nb))
        if block.n_odd:
            west = torch.bmm(odd.transpose(1, 2), coeffs.index_select(0, block.idx_odd).view(k, block.n_odd, 2 * nb))
        else:
            west = torch.zeros_like(east)
        ms = slice(block.m0, block.m1)
        torch.add(east, west, out=ring_m[ms, :nr])  # north: even + odd
        east.sub_(west)  # south mirror: even - odd, rings in reverse order
        ring_m[ms, nr:] = torch.flip(east[:, : nr - 1], dims=(1,))
    spec = torch.view_as_complex(ring_m.view(nm, nring, nb, 2)) * _phase(plan, plan.fold_weight)
    del ring_m
    torch.view_as_real(spec)[..., 1].mul_(plan.conj_sign)
    packed = torch.zeros((plan.npacked, nb), dtype=alm.dtype, device=alm.device)
    # fold m modulo nphi: aliased orders of the polar rings add up in the same bin
    torch.view_as_real(packed).index_add_(0, plan.fold_index, torch.view_as_real(spec).view(nm * nring, nb, 2))
    del spec
    torch.view_as_real(packed)[plan.real_rows, :, 1] = 0.0  # irfft reads only Re of DC / Nyquist
    packed = packed.transpose(0, 1).contiguous()
    n, count, p0, p1, _ = plan.equator
    half = packed[:, p0:p1].view(nb, count, n // 2 + 1)
    equator = torch.fft.irfft(half, n=n, dim=-1, norm="forward").reshape(nb, count * n)
    north, south = [], []
    for n, p0, p1, _, _ in plan.polar:
        pair = torch.fft.irfft(packed[:, p0:p1].view(nb, 2, n // 2 + 1), n=n, dim=-1, norm="forward")
        north.append(pair[:, 0])
        south.append(pair[:, 1])
    return torch.cat(north + [equator] + south[::-1], dim=1)


def _adjoint_raw(maps: torch.Tensor, lmax: int, budget: int) -> torch.Tensor:
    """Adjoint synthesis: maps ``(B, npix)`` real -> ``sum_p f_p conj(Y_lm(p))`` ``(B, nalm)``. No autograd."""
    nside = npix2nside(maps.shape[-1])
    plan = _get_plan(nside, lmax, maps.dtype, maps.device)
    nb = maps.shape[0]
    nr, nring, nm = plan.nnorth, plan.nring, lmax + 1
    n, count, _, _, pix0 = plan.equator
    parts = [torch.fft.rfft(maps[:, pix0 : pix0 + n * count].view(nb, count, n), dim=-1).view(nb, -1)]
    for n, _, _, pix_n, pix_s in plan.polar:
        pair = torch.stack([maps[:, pix_n : pix_n + n], maps[:, pix_s : pix_s + n]], dim=1)
        parts.append(torch.fft.rfft(pair, dim=-1).view(nb, -1))
    packed = torch.cat(parts, dim=1).transpose(0, 1).contiguous()  # (P, B)
    del parts
    spec = packed.index_select(0, plan.fold_index).view(nm, nring, nb)
    del packed
    torch.view_as_real(spec)[..., 1].mul_(plan.conj_sign)
    spec.mul_(_phase(plan, None).conj_physical())
    ring_m = torch.view_as_real(spec).view(nm, nring, 2 * nb)
    south = torch.flip(ring_m[:, nr:], dims=(1,))
    total = ring_m[:, :nr].clone()
    total[:, : nr - 1] += south
    diff = ring_m[:, :nr].clone()
    diff[:, : nr - 1] -= south
    del south, ring_m, spec
    out = torch.zeros((plan.nalm + 1, 2 * nb), dtype=maps.dtype, device=maps.device)
    for block, even, odd in _legendre_blocks(plan, budget):
        ms = slice(block.m0, block.m1)
        out.index_copy_(0, block.idx_even, torch.bmm(even, total[ms]).view(-1, 2 * nb))
        if block.n_odd:
            out.index_copy_(0, block.idx_odd, torch.bmm(odd, diff[ms]).view(-1, 2 * nb))
    alm = out[: plan.nalm].view(plan.nalm, nb, 2).transpose(0, 1).contiguous()
    return torch.view_as_complex(alm)


# ----------------------------------------------------------------------- autograd


class _SynthesisFn(torch.autograd.Function):
    """maps = synthesis(alm); backward: the real adjoint, ``w_m * adjoint_synthesis(g)``."""

    @staticmethod
    def forward(ctx, alm: torch.Tensor, nside: int, lmax: int, budget: int) -> torch.Tensor:
        ctx.nside, ctx.lmax, ctx.budget = nside, lmax, budget
        return _synthesis_raw(alm, nside, lmax, budget)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        plan = _get_plan(ctx.nside, ctx.lmax, grad.dtype, grad.device)
        g = _AdjointFn.apply(grad.contiguous(), ctx.lmax, ctx.budget)
        # d maps / d Re a_lm = 2 Re Y, d / d Im a_lm = -2 Im Y for m > 0; m = 0 uses Re a_l0 only
        g = g * plan.m_weight
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
        plan = _get_plan(ctx.nside, ctx.lmax, grad.real.dtype, grad.device)
        g = grad / plan.m_weight
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
        alm = _AdjointFn.apply(maps.reshape(-1, maps.shape[-1]).contiguous(), lmax, budget)
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
    nthreads : CPU threads for this call (``torch.set_num_threads``, restored after);
        None keeps torch's setting
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
    return maps.reshape(lead + (maps.shape[-1],))


def _cgls(maps: torch.Tensor, lmax: int, budget: int) -> torch.Tensor:
    """Least-squares alm of ``maps (B, npix)``: CGLS on ``synthesis(a) = maps``, per map.

    Uses the real inner product on alm ``<a, b> = sum_lm w_m Re(conj(a) b)`` in which the
    adjoint of synthesis is ``adjoint_synthesis``; starts from the quadrature estimate and
    stops when ``||S^T r|| <= LSQ_EPSILON * ||S^T f||`` for every map or after LSQ_MAXITER steps.
    """
    nside = npix2nside(maps.shape[-1])
    plan = _get_plan(nside, lmax, maps.dtype, maps.device)
    w = plan.m_weight

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
    flat = maps.reshape(-1, maps.shape[-1]).contiguous()
    with _threads(nthreads, maps.device):
        if mode == "quadrature":
            alm = _AdjointFn.apply(flat, lmax, budget) * (4 * math.pi / maps.shape[-1])
        else:
            alm = _cgls(flat, lmax, budget)
    return alm.reshape(lead + (alm.shape[-1],))
