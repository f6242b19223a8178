"""Fused spin-weighted Legendre kernels (Triton): the spin counterpart of :mod:`triton_legendre`.

Used by :mod:`scatterdist.sphere.torch_spin` where the scalar engine would use its fused
kernels (tables beyond the memory budget, CUDA, or ``TRITON_INTERPRET=1`` on CPU tensors: how
the suite tests them). Each program runs the two Wigner-d recurrences ``n = s`` and ``n = -s``
of one order m on a block of rings (float64, the scalar kernels' ``2**SCALE_BITS`` exponent
bookkeeping), forms 16 degrees of ``lambda+`` (c = 0) or ``lambda-`` (c = 1) at a time in a
``(rings, 16)`` register tile and multiplies it with the coefficient tile by ``tl.dot``, as the
scalar kernels do (see :mod:`scatterdist.sphere.torch_spin` for the definitions):

- ``x`` ``(nr,)`` float64 ``cos(theta)``; the scalar plan's ``start`` ``(M, nr)`` float64 mantissa of
  ``lambda_mm`` and ``scale`` ``(M, nr)`` int32 exponents, from which each program derives its start
  ``lambda(+-s)_mm = (-1)^s sqrt(m!^2 / ((m+s)! (m-s)!)) cot(theta/2)^(+-s) lambda_mm`` (same
  exponent) for ``m >= s``, with ``cot`` ``(nr,)`` float64 ``cot(theta/2)``; ``low`` ``(2, s, nr)``
  float64 the starts ``lambda(+-s)_{s,m}`` of the orders ``m < s`` (no per-spin start table);
- recurrence workspace ``(nalm, 3)`` float64 ``(A, A C, B)`` per (l, m) (one launch per call):
  ``lambda(+-s)_l = (A x -+ A C) lambda_{l-1} - B lambda_{l-2}``, zero for ``l <= l0``;
- synthesis: coefficients ``(2, nalm, C)`` (E for c = 0, iE for c = 1) -> ``EO (2, M, 2, nr, C)``;
- adjoint: ``TD (2, M, 2, nr, C)`` -> ``(2, nalm, C)``.

Degrees ``l < l0`` (orders ``m < s``) are skipped: their values are 0.
"""

from __future__ import annotations

import torch

from scatterdist.sphere import triton_legendre
from scatterdist.sphere.triton_legendre import (
    DOT_BLOCK_COLS,
    DOT_PRECISION,
    available,
    device_guard,
    triton_cdiv,
    usable,
)

__all__ = ["available", "usable", "spin_synthesis_legendre", "spin_adjoint_legendre", "launch_configs"]

triton = triton_legendre.triton
if triton is not None:
    import triton.language as tl

    BIG = tl.constexpr(2.0**triton_legendre.SCALE_BITS)
    TINY = tl.constexpr(2.0**-triton_legendre.SCALE_BITS)

    @triton.jit
    def _factor(k):
        return tl.where(k == 0, 1.0, tl.where(k == -1, TINY, 0.0))

    @triton.jit
    def _advance(p1, p2, k, cx, c0, cb):
        # one degree up: lambda_l = (cx - c0) lambda_{l-1} - cb lambda_{l-2}, renormalised
        p = (cx - c0) * p1 - cb * p2
        grow = (tl.abs(p) > BIG) & (k < 0)
        p = tl.where(grow, p * TINY, p)
        p1 = tl.where(grow, p1 * TINY, p1)
        k = tl.where(grow, k + 1, k)
        return p, p1, k

    @triton.jit
    def _tile(pp1, pp2, kp, pm1, pm2, km, x, abc_ptr, row, last, wp, wm, OUT: tl.constexpr, BR: tl.constexpr):
        # wp lambda(s) + wm lambda(-s) of degrees row .. row + 15 -> (BR, 16), and both states at row + 16
        cols = tl.arange(0, 16)
        tile = tl.zeros((BR, 16), dtype=OUT)
        for s in tl.static_range(16):
            v = (wp * (pp1 * _factor(kp)) + wm * (pm1 * _factor(km))).to(OUT)
            tile = tl.where(cols[None, :] == s, v, tile)
            nxt = row + s + 1
            valid = nxt <= last
            ca = tl.load(abc_ptr + 3 * nxt, mask=valid, other=0.0)
            cc = tl.load(abc_ptr + 3 * nxt + 1, mask=valid, other=0.0)
            cb = tl.load(abc_ptr + 3 * nxt + 2, mask=valid, other=0.0)
            cx = ca * x
            p, pp2, kp = _advance(pp1, pp2, kp, cx, cc, cb)
            pp1 = p
            p, pm2, km = _advance(pm1, pm2, km, cx, -cc, cb)
            pm1 = p
        return tile, pp1, pp2, kp, pm1, pm2, km

    @triton.jit
    def _start(start_ptr, scale_ptr, cot_ptr, low_ptr, m, r, rmask, spin, nr):
        # (mantissa, exponent) of lambda(s) and lambda(-s) at l0 = max(m, s), as (BR, 1) columns
        high = m >= spin
        mant = tl.load(start_ptr + m * nr + r, mask=rmask, other=0.0)
        k = tl.where(high, tl.load(scale_ptr + m * nr + r, mask=rmask, other=0), 0)
        cot = tl.load(cot_ptr + r, mask=rmask, other=1.0)
        ratio = (m * 0 + 1).to(tl.float64)  # float64 from the start: loop-carried types must not change
        cpow = tl.full(cot.shape, 1.0, tl.float64)
        for j in range(1, spin + 1):
            ratio = ratio * tl.maximum(m - spin + j, 0).to(tl.float64) / (m + j).to(tl.float64)
            cpow = cpow * cot
        amp = tl.sqrt(ratio) * (1.0 - 2.0 * (spin % 2))
        mlow = tl.minimum(m, spin - 1)  # a valid row whatever m (used only where m < spin)
        low_p = tl.load(low_ptr + mlow * nr + r, mask=rmask, other=0.0)
        low_m = tl.load(low_ptr + (spin + mlow) * nr + r, mask=rmask, other=0.0)
        pp = tl.where(high, mant * amp * cpow, low_p)
        pm = tl.where(high, mant * amp / cpow, low_m)
        return pp[:, None], pm[:, None], k[:, None]

    @triton.jit
    def _program(pid, lmax, spin):
        # (c, m) of a program, the weights of lambda(s) and lambda(-s) in lambda+ (c = 0) or lambda- (c = 1),
        # and the rows of (l0, m) and (lmax, m) in the healpy layout
        M = lmax + 1
        c = pid // M
        m = pid % M
        sign = 1.0 - 2.0 * (spin % 2)  # (-1)^s (arithmetic: spin = 1 arrives as a constexpr)
        wm = tl.where(c == 0, -0.5, 0.5) * sign
        i0 = tl.maximum(spin - m, 0)
        base = m * (2 * lmax + 1 - m) // 2 + m
        return c, m, wm, i0, base, base + lmax - m

    @triton.jit
    def spin_synth_kernel(
        coef_ptr, abc_ptr, x_ptr, start_ptr, scale_ptr, cot_ptr, low_ptr, out_ptr, lmax, spin, nr, ncol,
        BR: tl.constexpr, BC: tl.constexpr, PRECISION: tl.constexpr,
    ):
        c, m, wm, i0, base, last = _program(tl.program_id(0).to(tl.int64), lmax, spin)
        r = tl.program_id(1) * BR + tl.arange(0, BR)
        cc = tl.program_id(2) * BC + tl.arange(0, BC)
        rmask = r < nr
        cmask = cc < ncol
        OUT: tl.constexpr = coef_ptr.dtype.element_ty
        M = lmax + 1
        nalm = M * (M + 1) // 2
        x = tl.load(x_ptr + r, mask=rmask, other=0.0)[:, None]
        pp1, pm1, kp = _start(start_ptr, scale_ptr, cot_ptr, low_ptr, m, r, rmask, spin, nr)
        km = kp
        pp2 = tl.zeros_like(pp1)
        pm2 = tl.zeros_like(pm1)
        cols = tl.arange(0, 16)
        even = ((i0 + cols) % 2) == 0  # l - m of the tile's columns
        coef = coef_ptr + c * nalm * ncol
        acc_e = tl.zeros((BR, BC), dtype=OUT)
        acc_o = tl.zeros((BR, BC), dtype=OUT)
        for i in range(i0, lmax - m + 1, 16):
            row = base + i
            tile, pp1, pp2, kp, pm1, pm2, km = _tile(pp1, pp2, kp, pm1, pm2, km, x, abc_ptr, row, last, -0.5, wm,
                                                     OUT, BR)
            rows = row + cols
            ptrs = coef + rows[:, None] * ncol + cc[None, :]
            valid = (rows <= last)[:, None] & cmask[None, :]
            ce = tl.load(ptrs, mask=valid & even[:, None], other=0.0)
            co = tl.load(ptrs, mask=valid & ~even[:, None], other=0.0)
            acc_e = tl.dot(tile, ce, acc_e, input_precision=PRECISION)
            acc_o = tl.dot(tile, co, acc_o, input_precision=PRECISION)
        offs = r[:, None] * ncol + cc[None, :]
        mask = rmask[:, None] & cmask[None, :]
        unit = (c * M + m) * 2
        tl.store(out_ptr + unit * nr * ncol + offs, acc_e, mask=mask)
        tl.store(out_ptr + (unit + 1) * nr * ncol + offs, acc_o, mask=mask)

    @triton.jit
    def spin_adjoint_kernel(
        td_ptr, abc_ptr, x_ptr, start_ptr, scale_ptr, cot_ptr, low_ptr, out_ptr, lmax, spin, nr, ncol,
        BR: tl.constexpr, BC: tl.constexpr, PRECISION: tl.constexpr,
    ):
        c, m, wm, i0, base, last = _program(tl.program_id(0).to(tl.int64), lmax, spin)
        cc = tl.program_id(1) * BC + tl.arange(0, BC)
        cmask = cc < ncol
        OUT: tl.constexpr = td_ptr.dtype.element_ty
        M = lmax + 1
        nalm = M * (M + 1) // 2
        cols = tl.arange(0, 16)
        even = ((i0 + cols) % 2) == 0
        unit = (c * M + m) * 2
        out = out_ptr + c * nalm * ncol
        for r0 in range(0, nr, BR):
            r = r0 + tl.arange(0, BR)
            rmask = r < nr
            mask = rmask[:, None] & cmask[None, :]
            offs = r[:, None] * ncol + cc[None, :]
            td_e = tl.load(td_ptr + unit * nr * ncol + offs, mask=mask, other=0.0)
            td_o = tl.load(td_ptr + (unit + 1) * nr * ncol + offs, mask=mask, other=0.0)
            x = tl.load(x_ptr + r, mask=rmask, other=0.0)[:, None]
            pp1, pm1, kp = _start(start_ptr, scale_ptr, cot_ptr, low_ptr, m, r, rmask, spin, nr)
            km = kp
            pp2 = tl.zeros_like(pp1)
            pm2 = tl.zeros_like(pm1)
            for i in range(i0, lmax - m + 1, 16):
                row = base + i
                tile, pp1, pp2, kp, pm1, pm2, km = _tile(pp1, pp2, kp, pm1, pm2, km, x, abc_ptr, row, last, -0.5,
                                                         wm, OUT, BR)
                tt = tl.trans(tile)  # (16, BR)
                ve = tl.dot(tt, td_e, input_precision=PRECISION)
                vo = tl.dot(tt, td_o, input_precision=PRECISION)
                rows = row + cols
                ptrs = out + rows[:, None] * ncol + cc[None, :]
                valid = (rows <= last)[:, None] & cmask[None, :]
                val = tl.where(even[:, None], ve, vo)
                tl.store(ptrs, tl.load(ptrs, mask=valid, other=0.0) + val, mask=valid)

    @triton.jit
    def spin_coefficients_kernel(abc_ptr, lmax, spin, BL: tl.constexpr):
        # (A, A C, B) for n = +s of every (l, m) row, one program per m (torch_spin._spin_coefficients)
        m = tl.program_id(0).to(tl.int64)
        base = m * (2 * lmax + 1 - m) // 2
        mf = m.to(tl.float64)
        sf = spin * 1.0
        l0 = tl.maximum(m, spin)
        for ls in range(0, lmax + 1, BL):
            ell = ls + tl.arange(0, BL)
            valid = (ell >= m) & (ell <= lmax)
            lf = ell.to(tl.float64)
            step = ell > l0
            den = tl.where(step, (lf * lf - mf * mf) * (lf * lf - sf * sf), 1.0)
            prev = lf - 1.0
            a = lf * tl.sqrt((4.0 * lf * lf - 1.0) / den)
            b = lf / tl.where(step, prev, 1.0) * tl.sqrt(tl.maximum((prev * prev - mf * mf) * (prev * prev - sf * sf), 0.0) / den) \
                * tl.sqrt((2.0 * lf + 1.0) / tl.where(step, 2.0 * lf - 3.0, 1.0))
            ac = a * mf * sf / tl.where(step, lf * prev, 1.0)
            tl.store(abc_ptr + 3 * (base + ell), tl.where(step, a, 0.0), mask=valid)
            tl.store(abc_ptr + 3 * (base + ell) + 1, tl.where(step, ac, 0.0), mask=valid)
            tl.store(abc_ptr + 3 * (base + ell) + 2, tl.where(step, b, 0.0), mask=valid)


#: Rings per program, by (kernel, dtype): the scalar kernels' sizes halved where the second
#: recurrence state would spill (the compile test proves no spills on sm_80 and sm_90).
BLOCK_RINGS = {("synthesis", torch.float32): 128, ("synthesis", torch.float64): 64,
               ("adjoint", torch.float32): 64, ("adjoint", torch.float64): 64}
#: Degrees per program of the coefficient kernel.
COEFF_BLOCK = 256


def _check(device: torch.device) -> None:
    triton_legendre._check(device)


def recurrence_table(lmax: int, spin: int, device: torch.device) -> torch.Tensor:
    """``(nalm, 3)`` float64 ``(A, A C, B)`` of every (l, m) for ``n = +spin``: one launch per call."""
    M = lmax + 1
    abc = torch.empty((M * (M + 1) // 2, 3), dtype=torch.float64, device=device)
    with device_guard(device):
        spin_coefficients_kernel[(M,)](abc, lmax, spin, BL=COEFF_BLOCK)
    return abc


def spin_synthesis_legendre(coeffs: torch.Tensor, x: torch.Tensor, start: torch.Tensor, scale: torch.Tensor,
                            cot: torch.Tensor, low: torch.Tensor, lmax: int, spin: int) -> torch.Tensor:
    """``EO (2, M, 2, nr, C)`` from coefficients ``(2, nalm, C)``; see the module doc."""
    _check(coeffs.device)
    M, nr, ncol = lmax + 1, x.shape[0], coeffs.shape[-1]
    coeffs = coeffs.contiguous()
    abc = recurrence_table(lmax, spin, coeffs.device)
    out = torch.empty((2, M, 2, nr, ncol), dtype=coeffs.dtype, device=coeffs.device)
    br = BLOCK_RINGS["synthesis", coeffs.dtype]
    grid = (2 * M, triton_cdiv(nr, br), triton_cdiv(ncol, DOT_BLOCK_COLS))
    with device_guard(coeffs.device):
        spin_synth_kernel[grid](coeffs, abc, x, start, scale, cot, low, out, lmax, spin, nr, ncol,
                                BR=br, BC=DOT_BLOCK_COLS, PRECISION=DOT_PRECISION[coeffs.dtype])
    return out


def spin_adjoint_legendre(td: torch.Tensor, x: torch.Tensor, start: torch.Tensor, scale: torch.Tensor,
                          cot: torch.Tensor, low: torch.Tensor, lmax: int, spin: int) -> torch.Tensor:
    """``(2, nalm, C)`` from ``TD (2, M, 2, nr, C)``; see the module doc."""
    _check(td.device)
    M, nr, ncol = lmax + 1, x.shape[0], td.shape[-1]
    td = td.contiguous()
    abc = recurrence_table(lmax, spin, td.device)
    out = torch.zeros((2, M * (M + 1) // 2, ncol), dtype=td.dtype, device=td.device)
    br = BLOCK_RINGS["adjoint", td.dtype]
    grid = (2 * M, triton_cdiv(ncol, DOT_BLOCK_COLS))
    with device_guard(td.device):
        spin_adjoint_kernel[grid](td, abc, x, start, scale, cot, low, out, lmax, spin, nr, ncol,
                                  BR=br, BC=DOT_BLOCK_COLS, PRECISION=DOT_PRECISION[td.dtype])
    return out


def launch_configs() -> list[dict]:
    """Every (kernel, dtype, block sizes) this module launches, with its Triton signature (for
    :func:`scatterdist.sphere.triton_aot.compile_kernel`)."""
    if triton is None:
        return []
    configs = []
    for dtype, ptr in (("float32", "*fp32"), ("float64", "*fp64")):
        tdtype = getattr(torch, dtype)
        common = {"abc_ptr": "*fp64", "x_ptr": "*fp64", "start_ptr": "*fp64", "scale_ptr": "*i32",
                  "cot_ptr": "*fp64", "low_ptr": "*fp64", "out_ptr": ptr,
                  "lmax": "i32", "spin": "i32", "nr": "i32", "ncol": "i32"}
        consts = {"BC": DOT_BLOCK_COLS, "PRECISION": DOT_PRECISION[tdtype]}
        configs.append({"name": "spin_synth_kernel", "fn": spin_synth_kernel, "dtype": dtype,
                        "signature": {"coef_ptr": ptr, **common},
                        "constexprs": {"BR": BLOCK_RINGS["synthesis", tdtype], **consts}})
        configs.append({"name": "spin_adjoint_kernel", "fn": spin_adjoint_kernel, "dtype": dtype,
                        "signature": {"td_ptr": ptr, **common},
                        "constexprs": {"BR": BLOCK_RINGS["adjoint", tdtype], **consts}})
    configs.append({"name": "spin_coefficients_kernel", "fn": spin_coefficients_kernel, "dtype": "float64",
                    "signature": {"abc_ptr": "*fp64", "lmax": "i32", "spin": "i32"},
                    "constexprs": {"BL": COEFF_BLOCK}})
    return configs
