"""Spin-n (gradient-only) synthesis on HEALPix rings in torch, and its adjoint (differentiable).

The torch counterpart of ``ducc0.sht.synthesis(..., spin=s, mode="GRAD_ONLY")`` used by the
directional wavelets (:mod:`scatterdist.scattering.directional`): complex coefficients
``E_lm`` ``(..., nalm)`` (healpy layout, the B part zero) -> real ``(Q, U)`` maps
``(..., 2, npix)``, ducc0's sign convention (``Q + iU = -sum_lm E_lm sY_lm``, healpy's).

Engines as in :mod:`scatterdist.sphere.torch_sht`, chosen by the same ``LEGENDRE_ENGINE`` /
``$SCATTERDIST_LEGENDRE`` and memory budget: CPU tensors go through ducc0 by default (zero-copy
views, inside autograd Functions whose backward is the explicit adjoint); the torch engines
(CUDA tensors, or ``LEGENDRE_ENGINE="torch"``) run the scalar engine's ring FFTs with
spin-weighted Legendre values in place of ``lambda_lm``:

    Q = sum_m c_m Re(e^{i m phi} sum_l E_lm lambda+_lm(theta)),
    U = sum_m c_m Re(e^{i m phi} sum_l i E_lm lambda-_lm(theta)),
    lambda+ = -((-1)^s lambda(-s) + lambda(s)) / 2,   lambda- = ((-1)^s lambda(-s) - lambda(s)) / 2,

with ``lambda(n)_lm = sqrt((2l+1)/(4 pi)) d^l_{m,n}(theta)`` (Wigner d, the sign convention of
Wikipedia's sum formula; ``c_0 = 1``, ``c_m = 2``; the signs were fitted against ducc0 and
are pinned by the tests). ``lambda(n)`` comes from the three-term l-recurrence of ``d^l_{m,n}``
started at ``l0 = max(m, |n|)`` (closed form there, in log2 with the scalar engine's
``2**SCALE_BITS`` exponent so that nothing underflows near the poles), in float64 and
vectorised over orders and rings. Southern rings follow by symmetry:
``lambda+(pi - theta) = (-1)^(l+m+s) lambda+(theta)``, ``lambda-(pi - theta) = -(-1)^(l+m+s) lambda-(theta)``.
Tables hold ``(lambda+, lambda-)`` in the scalar engine's layouts (same groups, same budget
rules at twice the bytes); the *stream* engine recomputes the chunks that do not fit; the
*fused* engine (where the scalar engine would use its Triton kernels) runs the recurrences
on the fly in the kernels of :mod:`scatterdist.sphere.triton_spin`, with the scalar engine's
fallback to *stream* on a Triton failure.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterator

import numpy as np
import torch

from scatterdist.sphere import torch_sht, triton_spin
from scatterdist.sphere.alm import alm_size, lmax_from_size
from scatterdist.sphere.healpix import check_nside, npix2nside, ring_geometry
from scatterdist.sphere.sht import _check_lmax

__all__ = ["spin_synthesis", "spin_adjoint_synthesis", "spin_legendre_engine"]

_FUSED: "OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
_SMALL: dict = {}


def _check_spin(spin: int, lmax: int) -> int:
    s = int(spin)
    if s != spin or not 1 <= s <= lmax:
        raise ValueError(f"spin must be an integer in [1, lmax={lmax}] (spin 0 is torch_sht.synthesis), got {spin!r}")
    return s


# ----------------------------------------------------------- spin-weighted Legendre values


def _spin_start(theta: np.ndarray, m0: int, m1: int, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``lambda(n)_{l0, m}`` at ``l0 = max(m, s)`` for ``n = (s, -s)`` and ``m0 <= m < m1``: mantissa
    ``(2, nm, nr)``, exponent ``(2, nm, nr)`` (int32, <= 0, units of SCALE_BITS) and ``l0 - m`` ``(nm,)``.

    ``m >= s``: ``d^m_{m,n} = (-1)^(m-n) sqrt((2m)! / ((m+n)! (m-n)!)) cos(theta/2)^(m+n) sin(theta/2)^(m-n)``,
    in log2 (the factorial ratio as ``4^m prod (2k-1)/(2k)`` times ``s`` exact factors);
    ``m < s``: ``d^s_{m,s} = sqrt(C(2s, s+m)) cos^(s+m) sin^(s-m)``,
    ``d^s_{m,-s} = (-1)^(s+m) sqrt(C(2s, s-m)) cos^(s-m) sin^(s+m)`` (small, direct).
    Computed per chunk of orders when a table is built: nothing of it is cached.
    """
    bits = torch_sht.SCALE_BITS
    m = np.arange(m0, m1, dtype=np.float64)
    log_c, log_s = np.log2(np.cos(theta / 2)), np.log2(np.sin(theta / 2))
    k = np.arange(1, m1, dtype=np.float64)
    central = 2.0 * m + np.concatenate([[0.0], np.cumsum(np.log2((2 * k - 1) / (2 * k)))])[m0:m1]  # (2m)!/(m!)^2
    ratio = np.zeros(m.size)  # log2 m!^2 / ((m+s)! (m-s)!), for m >= s
    for j in range(1, s + 1):
        with np.errstate(divide="ignore"):
            ratio += np.log2(np.maximum(m - s + j, 0.0) / (m + j))
    norm = 0.5 * (central + ratio + np.log2((2 * m + 1) / (4 * math.pi)))
    mant = np.empty((2, m.size, theta.size))
    scale = np.zeros((2, m.size, theta.size), dtype=np.int32)
    high = m >= s
    for i, n in enumerate((s, -s)):
        log2_val = norm[high, None] + (m[high, None] + n) * log_c[None, :] + (m[high, None] - n) * log_s[None, :]
        sc = np.minimum(np.floor(log2_val / bits), 0.0)
        sign = np.where((m[high] - n) % 2 == 1, -1.0, 1.0)[:, None]
        mant[i, high] = sign * np.exp2(log2_val - bits * sc)
        scale[i, high] = sc.astype(np.int32)
    cos_h, sin_h = np.cos(theta / 2), np.sin(theta / 2)
    for mi in range(m0, min(s, m1)):  # m < s: a handful of closed forms
        amp = math.sqrt(math.comb(2 * s, s + mi) * (2 * s + 1) / (4 * math.pi))
        mant[0, mi - m0] = amp * cos_h ** (s + mi) * sin_h ** (s - mi)
        mant[1, mi - m0] = (-1) ** (s + mi) * amp * cos_h ** (s - mi) * sin_h ** (s + mi)
    return mant, scale, np.maximum(s - m.astype(np.int64), 0)


def _fused_inputs(plan: "torch_sht._Plan", s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the fused kernels need besides the scalar plan's ``lambda_mm`` start: ``cot(theta/2)``
    ``(nnorth,)`` and the starts of the orders ``m < s`` ``(2, s, nnorth)`` (float64, cached: a few
    rings' worth). For ``m >= s`` the kernels use
    ``lambda(+-s)_mm = (-1)^s sqrt(m!^2 / ((m+s)! (m-s)!)) cot(theta/2)^(+-s) lambda_mm``."""
    geo = plan.geo

    def build():
        theta = ring_geometry(geo.nside)["theta"][: geo.nnorth]
        low, _, _ = _spin_start(theta, 0, s, s)
        return (torch.as_tensor(1.0 / np.tan(theta / 2), device=geo.device),
                torch.as_tensor(np.ascontiguousarray(low), device=geo.device))

    return torch_sht._cached(_FUSED, (geo.nside, s, str(geo.device)), torch_sht._GEOMETRIES_MAX, build)


def _spin_coefficients(rows: int, m: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``A, B`` ``(rows, nm)`` and ``C`` ``(rows, 2, nm)`` of
    ``lambda(n)_l = A (x - C) lambda(n)_{l-1} - B lambda(n)_{l-2}``, ``l = m + i``, for ``n = (s, -s)``:
    ``A = l sqrt((4l^2 - 1) / ((l^2-m^2)(l^2-s^2)))``, ``C = m n / (l (l-1))``,
    ``B = l/(l-1) sqrt(((l-1)^2-m^2)((l-1)^2-s^2) / ((l^2-m^2)(l^2-s^2))) sqrt((2l+1)/(2l-3))``;
    all 0 for ``l <= max(m, s)`` (those rows are the start or zero)."""
    ell = np.arange(rows, dtype=np.float64)[:, None] + m.astype(np.float64)[None, :]
    mm = m.astype(np.float64)[None, :]
    step = ell > np.maximum(mm, s)
    ell_ok = np.where(step, ell, s + 2.0 + mm)  # any l with nonzero denominators
    den = (ell_ok**2 - mm**2) * (ell_ok**2 - s * s)
    a = ell_ok * np.sqrt((4 * ell_ok**2 - 1) / den)
    prev = ell_ok - 1.0
    b = ell_ok / prev * np.sqrt(np.maximum((prev**2 - mm**2) * (prev**2 - s * s), 0.0) / den) \
        * np.sqrt((2 * ell_ok + 1) / (2 * ell_ok - 3))
    c = (mm * s / (ell_ok * prev))[:, None, :] * np.array([1.0, -1.0])[None, :, None]
    return np.where(step, a, 0.0), np.where(step, b, 0.0), np.where(step[:, None, :], c, 0.0)


def _spin_legendre_unit(plan: "torch_sht._Plan", s: int, m0: int, m1: int, rows: int) -> torch.Tensor:
    """``(lambda+, lambda-)`` of orders ``m0 <= m < m1`` on the northern rings, in ``plan.dtype``.

    Shape ``(2, nm, 2, rows, nnorth)``: ``[c, j, p, q, r]`` at ``m = m0 + j``, ``l = m + 2q + p``
    (the scalar engine's unit layout); 0 for ``l < max(m, s)`` and ``l > lmax``. The recurrence
    runs in float64 for ``n = s`` and ``n = -s`` together, with the scalar engine's exponent
    bookkeeping, in sub-chunks of orders so that its state stays cache-sized on the CPU.
    """
    dev, f64, bits = plan.device, torch.float64, torch_sht.SCALE_BITS
    nr, lmax = plan.nnorth, plan.lmax
    flush = 2.0 ** (-100 if plan.dtype == torch.float32 else -900)
    sign_s = -1.0 if s % 2 else 1.0
    out = torch.empty((2, m1 - m0, 2, rows, nr), dtype=plan.dtype, device=dev)
    big = 2.0**bits
    x = plan.cos_theta[None, None, :]
    theta = ring_geometry(plan.nside)["theta"][:nr]
    sub = m1 - m0 if dev.type == "cuda" else max(1, (1 << 14) // nr)
    for s0 in range(m0, m1, sub):
        s1 = min(m1, s0 + sub)
        a, b, c = _spin_coefficients(2 * rows, np.arange(s0, s1), s)
        rec_a = torch.as_tensor(a[:, None, :, None], device=dev)
        rec_b = torch.as_tensor(b[:, None, :, None], device=dev)
        rec_c = torch.as_tensor(c[:, :, :, None], device=dev)
        mant, scale, offset = _spin_start(theta, s0, s1, s)
        start = torch.as_tensor(mant, device=dev)
        # inject[i]: 1 for the orders whose recurrence starts at row i (l0 = max(m, s))
        inject = torch.as_tensor((np.arange(2 * rows)[:, None] == offset[None, :]).astype(np.float64)[:, None, :, None],
                                 device=dev)
        scale = torch.as_tensor(scale, device=dev).to(f64)
        p1 = start * inject[0]
        p2 = torch.zeros_like(p1)
        nxt = torch.empty_like(p1)
        tmp = torch.empty_like(p1)
        dest = out[:, s0 - m0 : s1 - m0]
        scaled = bool((scale < 0).any())
        factor = torch_sht._scale_factor(scale)

        def store(i: int) -> None:
            value = p1
            if scaled:  # values far below the format's normal range become 0, never subnormals
                value = torch.mul(p1, factor)
                value.masked_fill_(value.abs() < flush, 0.0)
            plus = value[0] + sign_s * value[1]  # lambda(s) + (-1)^s lambda(-s)
            minus = sign_s * value[1] - value[0]
            target = dest[:, :, i % 2, i // 2]
            target[0].copy_(plus.mul_(-0.5))
            target[1].copy_(minus.mul_(0.5))
            if s1 - 1 + i > lmax:  # l > lmax for the largest orders: 0 (padding)
                target[:, max(0, lmax + 1 - i - s0) :] = 0.0

        store(0)
        for i in range(1, 2 * rows):
            torch.mul(p1, x, out=nxt)
            torch.mul(p1, rec_c[i], out=tmp)
            nxt.sub_(tmp).mul_(rec_a[i])
            nxt.addcmul_(rec_b[i], p2, value=-1.0)
            if i <= int(offset.max(initial=0)):
                nxt.addcmul_(inject[i], start)
            p2, p1, nxt = p1, nxt, p2
            if scaled and i % torch_sht.RENORM_EVERY == 0:
                grow = ((p1.abs() > big) & (scale < 0)).to(f64)
                shrink = torch.exp2(-float(bits) * grow)
                p1.mul_(shrink)
                p2.mul_(shrink)
                scale = scale + grow
                factor = torch_sht._scale_factor(scale)
                scaled = bool((scale < 0).any())
            store(i)
    return out


def _spin_tables(plan: "torch_sht._Plan", s: int, layout: "torch_sht._Layout",
                 budget: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(index, table)`` for every unit of ``layout``, through the scalar engine's Legendre cache
    (key tagged with the spin; the same per-device budget)."""
    key = (plan.nside, plan.lmax, plan.dtype, str(plan.device), f"{layout.name}/spin{s}")
    with torch_sht._LOCK:
        cached = torch_sht._CACHE.get(key, budget)
    for index, unit in enumerate(layout.units):
        if index < len(cached):
            table = cached[index]
        else:
            table = _spin_legendre_unit(plan, s, *unit)
            if budget > 0:
                with torch_sht._LOCK:
                    torch_sht._CACHE.offer(key, index, table, budget, evict=layout.name != "stream")
        yield index, table


def _choose(plan: "torch_sht._Plan", budget: int) -> str:
    """Engine of one spin transform: the scalar rule at twice the bytes per key (two tables):
    a layout name ("G1" ... "G8", "stream") or "fused" (:mod:`scatterdist.sphere.triton_spin`)."""
    return torch_sht._choose(plan, budget // 2)


def _legendre_synthesis(plan: "torch_sht._Plan", s: int, coeffs: torch.Tensor, budget: int,
                        name: str) -> torch.Tensor:
    """``EO (2, M, 2, nnorth, C)`` (a transposed view of ``(2, M, 2, C, nnorth)`` from the tables):
    even / odd ``l - m`` sums of ``lambda+`` times ``coeffs[0]`` and ``lambda-`` times ``coeffs[1]``
    (``coeffs`` ``(2, nalm, C)``)."""
    if name == "fused":
        cot, low = _fused_inputs(plan, s)
        return torch_sht._fused_or_fallback(
            plan, budget,
            lambda: triton_spin.spin_synthesis_legendre(coeffs, plan.cos_theta, plan.start, plan.scale, cot, low,
                                                        plan.lmax, s),
            lambda: _legendre_synthesis(plan, s, coeffs, budget, "stream"))
    layout = torch_sht._layout(plan, name)
    nr, nm, ncol = plan.nnorth, plan.lmax + 1, coeffs.shape[-1]
    gathered = [coeffs[c].index_select(0, layout.gather) for c in range(2)]
    eo = torch.empty((2, nm, 2, ncol, nr), dtype=plan.dtype, device=coeffs.device)
    for index, table in _spin_tables(plan, s, layout, budget):
        m0, m1, rows = layout.units[index]
        nm2, off = 2 * (m1 - m0), layout.offsets[index]
        for c in range(2):
            lhs = gathered[c][off : off + nm2 * rows].view(nm2, rows, ncol).transpose(1, 2)
            torch.bmm(lhs, table[c].view(nm2, rows, nr), out=eo[c, m0:m1].view(nm2, ncol, nr))
    return eo.transpose(3, 4)


def _legendre_adjoint(plan: "torch_sht._Plan", s: int, td: torch.Tensor, budget: int, name: str) -> torch.Tensor:
    """``(2, nalm, C)``: ``sum_r lambda+-_lm(r) TD[c, m, (l - m) % 2, r]`` of ``TD (2, M, 2, nnorth, C)``
    (best a transposed view of a contiguous ``(2, M, 2, C, nnorth)`` for the tables)."""
    if name == "fused":
        cot, low = _fused_inputs(plan, s)
        return torch_sht._fused_or_fallback(
            plan, budget,
            lambda: triton_spin.spin_adjoint_legendre(td, plan.cos_theta, plan.start, plan.scale, cot, low,
                                                      plan.lmax, s),
            lambda: _legendre_adjoint(plan, s, td, budget, "stream"))
    layout = torch_sht._layout(plan, name)
    nr, ncol = plan.nnorth, td.shape[-1]
    td_t = td.transpose(3, 4).contiguous()  # (2, M, 2, C, nnorth): no copy when td is the view
    flat = torch.empty((2, layout.gather.numel(), ncol), dtype=td.dtype, device=td.device)
    for index, table in _spin_tables(plan, s, layout, budget):
        m0, m1, rows = layout.units[index]
        nm2, off = 2 * (m1 - m0), layout.offsets[index]
        for c in range(2):
            res = torch.bmm(td_t[c, m0:m1].view(nm2, ncol, nr), table[c].view(nm2, rows, nr).transpose(1, 2))
            flat[c, off : off + nm2 * rows].view(nm2, rows, ncol).copy_(res.transpose(1, 2))
    return flat.index_select(1, layout.inverse)


def spin_legendre_engine(nside: int, lmax: int, spin: int, dtype: torch.dtype = torch.float32,
                         device: torch.device | str = "cpu", memory_budget: int | None = None) -> str:
    """Which engine a spin transform of this shape uses here: ``"ducc0"``, ``"tables (G groups)"``
    (``"tables (1 group)"``), ``"fused"`` or ``"stream"``."""
    device = torch.device(device)
    nside = check_nside(nside)
    lmax = _check_lmax(lmax, nside)
    _check_spin(spin, lmax)
    if torch_sht._use_ducc0(device):
        return "ducc0"
    plan = torch_sht._get_plan(nside, lmax, dtype, device)
    name = _choose(plan, torch_sht._check_budget(memory_budget, device))
    if name.startswith("G"):
        return "tables (1 group)" if name == "G1" else f"tables ({name[1:]} groups)"
    return name


# --------------------------------------------------------------------- raw transforms


def _small(s: int, dtype: torch.dtype, device: torch.device, nm: int) -> dict:
    """Cached constant tensors of a spin transform: the signed Hadamard matrices (synthesis and
    adjoint, ``(2 nm, 2, 2)``) and the real-linear maps E -> (E, iE) and (A+, A-) -> A+ - i A-."""
    key = (s, dtype, str(device), nm)
    small = _SMALL.get(key)
    if small is None:
        sig = np.array([1.0, -1.0]) * (-1.0 if s % 2 else 1.0)  # south sign of lambda+, lambda-
        syn = np.stack([np.array([[1.0, 1.0], [g, -g]]) for g in sig])  # (e, o) -> (north, south)
        adj = np.stack([np.array([[1.0, g], [1.0, -g]]) for g in sig])  # (north, south) -> (e, o)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=dtype, device=device)

        small = _SMALL[key] = {
            "syn": t(np.repeat(syn, nm, axis=0)),
            "adj": t(np.repeat(adj, nm, axis=0)),
            # (re, im) -> (re E, im E, re iE, im iE)
            "to_qu": t(np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, -1.0, 0.0]])),
            # (re, im) parts of c_m conj(A+), c_m conj(A-) -> c_m (re, im) of A+ - i A-
            "from_qu": t(np.array([[1.0, 0.0], [0.0, -1.0], [0.0, -1.0], [-1.0, 0.0]])),
        }
    return small


def _ducc0_spin_synthesis(alm: torch.Tensor, nside: int, lmax: int, s: int) -> torch.Tensor:
    import ducc0

    batch = alm.detach().resolve_conj().contiguous().numpy()[:, None, :]
    out = ducc0.sht.synthesis(alm=batch, lmax=lmax, spin=s, mode="GRAD_ONLY",
                              nthreads=torch.get_num_threads(), **ring_geometry(nside))
    return torch.from_numpy(out)


def _ducc0_spin_adjoint(maps: torch.Tensor, lmax: int, s: int) -> torch.Tensor:
    import ducc0

    nside = npix2nside(maps.shape[-1])
    out = ducc0.sht.adjoint_synthesis(map=maps.detach().contiguous().numpy(), lmax=lmax, spin=s, mode="GRAD_ONLY",
                                      nthreads=torch.get_num_threads(), **ring_geometry(nside))
    return torch.from_numpy(out[:, 0, :])


def _spin_synthesis_raw(alm: torch.Tensor, nside: int, lmax: int, s: int, budget: int) -> torch.Tensor:
    """alm ``(B, nalm)`` complex -> ``(B, 2, npix)`` real (Q, U). No autograd."""
    if torch_sht._use_ducc0(alm.device):
        return _ducc0_spin_synthesis(alm, nside, lmax, s)
    plan = torch_sht._get_plan(nside, lmax, alm.real.dtype, alm.device)
    nb, nr, nm, nalm = alm.shape[0], plan.nnorth, lmax + 1, plan.nalm
    small = _small(s, plan.dtype, alm.device, nm)
    # [lambda+ | lambda-] x rows (l, m) x columns (batch, re/im): E for Q, iE for U
    coeffs = torch.matmul(torch.view_as_real(alm), small["to_qu"]).view(nb, nalm, 2, 2).permute(2, 1, 0, 3)
    eo = _legendre_synthesis(plan, s, coeffs.reshape(2, nalm, 2 * nb), budget, _choose(plan, budget))
    del coeffs
    # (even, odd) -> (north, signed south mirror); then the ring axis next to m, columns (Q|U, batch)
    if eo.is_contiguous():  # fused: (2, M, 2, nr, C)
        ns = torch.bmm(small["syn"], eo.view(2 * nm, 2, nr * 2 * nb)).view(2, nm, 2, nr, nb, 2)
        ns = ns.permute(1, 2, 3, 0, 4, 5)
    else:  # tables: a view of (2, M, 2, C, nr)
        ns = torch.bmm(small["syn"], eo.transpose(3, 4).reshape(2 * nm, 2, 2 * nb * nr)).view(2, nm, 2, nb, 2, nr)
        ns = ns.permute(1, 2, 5, 0, 3, 4)
    del eo
    spec = torch.view_as_complex(ns.contiguous().view(nm, 2 * nr, 2 * nb, 2))
    del ns
    maps = torch_sht._rings_synthesis(plan, spec)  # (2B, npix), rows (Q|U, batch)
    return maps.reshape(2, nb, plan.npix).transpose(0, 1)


def _spin_adjoint_raw(maps: torch.Tensor, lmax: int, s: int, budget: int) -> torch.Tensor:
    """Adjoint of :func:`_spin_synthesis_raw`: ``(B, 2, npix)`` real -> ``(B, nalm)`` complex,
    ``A+(Q) - i A-(U)`` with ``A+-`` the adjoint syntheses of ``lambda+-``. No autograd."""
    if torch_sht._use_ducc0(maps.device):
        return _ducc0_spin_adjoint(maps, lmax, s)
    nside = npix2nside(maps.shape[-1])
    plan = torch_sht._get_plan(nside, lmax, maps.dtype, maps.device)
    nb, nr, nm, nalm = maps.shape[0], plan.nnorth, lmax + 1, plan.nalm
    small = _small(s, plan.dtype, maps.device, nm)
    spec = torch_sht._rings_adjoint(plan, maps.transpose(0, 1).reshape(2 * nb, plan.npix))  # (M, 2nr, 2B)
    name = _choose(plan, budget)
    ring = torch.view_as_real(spec).view(nm, 2, nr, 2, nb, 2)
    del spec
    if name == "fused":  # TD (2, M, 2, nr, C)
        ring = ring.permute(3, 0, 1, 2, 4, 5).contiguous()
        td = torch.bmm(small["adj"], ring.view(2 * nm, 2, nr * 2 * nb)).view(2, nm, 2, nr, 2 * nb)
    else:  # the tables' fast form: a view of (2, M, 2, C, nr)
        ring = ring.permute(3, 0, 1, 4, 5, 2).contiguous()
        td = torch.bmm(small["adj"], ring.view(2 * nm, 2, 2 * nb * nr)).view(2, nm, 2, 2 * nb, nr).transpose(3, 4)
    del ring
    flat = _legendre_adjoint(plan, s, td, budget, name)  # (2, nalm, 2B)
    del td
    out = flat.view(2, nalm, nb, 2).permute(2, 1, 0, 3).reshape(nb, nalm, 4)
    alm = torch.matmul(out, small["from_qu"]).div_(torch_sht._m_weight(lmax, maps.dtype, maps.device)[:, None])
    return torch.view_as_complex(alm)


# ----------------------------------------------------------------------- autograd


def _drop_m0_imag(g: torch.Tensor, lmax: int) -> torch.Tensor:
    m0 = slice(0, lmax + 1)
    return torch.cat([torch.complex(g[:, m0].real, torch.zeros_like(g[:, m0].real)), g[:, lmax + 1 :]], dim=1)


class _SpinSynthesisFn(torch.autograd.Function):
    """(Q, U) = spin_synthesis(E); backward: ``w_m * spin_adjoint(g)`` (m = 0: real part only)."""

    @staticmethod
    def forward(ctx, alm: torch.Tensor, nside: int, lmax: int, s: int, budget: int) -> torch.Tensor:
        ctx.nside, ctx.lmax, ctx.s, ctx.budget = nside, lmax, s, budget
        return _spin_synthesis_raw(alm, nside, lmax, s, budget)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = _SpinAdjointFn.apply(grad.contiguous(), ctx.lmax, ctx.s, ctx.budget)
        g = _drop_m0_imag(g * torch_sht._m_weight(ctx.lmax, grad.dtype, grad.device), ctx.lmax)
        return g, None, None, None, None


class _SpinAdjointFn(torch.autograd.Function):
    """E = spin_adjoint(Q, U); backward: ``spin_synthesis(g / w_m)``."""

    @staticmethod
    def forward(ctx, maps: torch.Tensor, lmax: int, s: int, budget: int) -> torch.Tensor:
        ctx.nside, ctx.lmax, ctx.s, ctx.budget = npix2nside(maps.shape[-1]), lmax, s, budget
        return _spin_adjoint_raw(maps, lmax, s, budget)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad / torch_sht._m_weight(ctx.lmax, grad.real.dtype, grad.device)
        return _SpinSynthesisFn.apply(g.resolve_conj().contiguous(), ctx.nside, ctx.lmax, ctx.s, ctx.budget), \
            None, None, None


# ------------------------------------------------------------------- public API


def spin_synthesis(alm: torch.Tensor, nside: int, spin: int, lmax: int | None = None,
                   nthreads: int | None = None, memory_budget: int | None = None) -> torch.Tensor:
    """Gradient-only spin-``spin`` synthesis: ``E_lm`` ``(..., nalm)`` -> real ``(Q, U)`` ``(..., 2, 12*nside**2)``.

    As ``ducc0.sht.synthesis(alm[:, None], lmax, spin=spin, mode="GRAD_ONLY")`` on HEALPix RING
    rings (``Q + iU = -sum E_lm sY_lm``); the imaginary part of the m = 0 coefficients is
    ignored. complex64 -> float32, complex128 -> float64, on the device of ``alm``;
    differentiable. ``nthreads``, ``memory_budget``: as :func:`scatterdist.sphere.torch_sht.synthesis`.
    """
    alm = torch.as_tensor(alm)
    if alm.dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"alm must be complex64 or complex128, got dtype {alm.dtype}")
    nside = check_nside(nside)
    lmax = lmax_from_size(alm.shape[-1]) if lmax is None else lmax
    lmax = _check_lmax(lmax, nside)
    if alm.shape[-1] != alm_size(lmax):
        raise ValueError(f"alm has {alm.shape[-1]} coefficients, expected {alm_size(lmax)} for lmax={lmax}")
    s = _check_spin(spin, lmax)
    budget = torch_sht._check_budget(memory_budget, alm.device)
    lead = alm.shape[:-1]
    with torch_sht._threads(nthreads, alm.device):
        flat = alm.reshape(-1, alm.shape[-1]).resolve_conj().contiguous()
        maps = _SpinSynthesisFn.apply(flat, nside, lmax, s, budget)
    return maps.reshape(lead + maps.shape[1:]).contiguous()


def spin_adjoint_synthesis(maps: torch.Tensor, lmax: int, spin: int, nthreads: int | None = None,
                           memory_budget: int | None = None) -> torch.Tensor:
    """Adjoint of :func:`spin_synthesis`: real ``(Q, U)`` ``(..., 2, npix)`` -> complex ``(..., nalm)``.

    As ``ducc0.sht.adjoint_synthesis(maps, lmax, spin=spin, mode="GRAD_ONLY")`` (no quadrature
    weights): ``<spin_synthesis(a), f> = sum_lm w_m Re(conj(a_lm) spin_adjoint_synthesis(f)_lm)``
    with ``w_0 = 1``, ``w_m = 2``.
    """
    maps = torch_sht._as_maps(maps)
    if maps.ndim < 2 or maps.shape[-2] != 2:
        raise ValueError(f"maps must be (..., 2, npix) (Q, U), got shape {tuple(maps.shape)}")
    nside = npix2nside(maps.shape[-1])
    lmax = _check_lmax(lmax, nside)
    s = _check_spin(spin, lmax)
    budget = torch_sht._check_budget(memory_budget, maps.device)
    lead = maps.shape[:-2]
    with torch_sht._threads(nthreads, maps.device):
        alm = _SpinAdjointFn.apply(maps.reshape((-1,) + maps.shape[-2:]), lmax, s, budget)
    return alm.reshape(lead + (alm.shape[-1],))
