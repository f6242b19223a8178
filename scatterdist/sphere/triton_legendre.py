"""Fused Legendre kernels (Triton): the recurrence runs on the fly, nothing is tabulated.

Used by :mod:`scatterdist.sphere.torch_sht` when its Legendre tables do not fit the memory
budget and the device is CUDA (or ``TRITON_INTERPRET=1`` is set, which runs the very same
kernels on CPU tensors: that is how the suite tests them). Both kernels read the ring
geometry and the start of the recurrence from the plan:

- ``x``      ``(nr,)`` float64, ``cos(theta)`` of the northern rings (equator last);
- ``start``  ``(M, nr)`` float64 mantissa of ``lambda_mm(cos theta_r)`` (Condon-Shortley sign
  included); ``scale`` ``(M, nr)`` int32 exponent ``k <= 0``: the value is
  ``mantissa * 2**(SCALE_BITS*k)``, so that nothing underflows near the poles.

Recurrence (float64): ``lambda_{l,m} = a_lm (x lambda_{l-1,m} - b_lm lambda_{l-2,m})`` with
``a_lm = sqrt((4l^2-1)/(l^2-m^2))``, ``b_lm = sqrt(((l-1)^2-m^2)/(4(l-1)^2-1))``; whenever a
scaled value exceeds ``2**SCALE_BITS`` it is renormalised and its exponent raised. Values
with ``k = -1`` enter the sums multiplied by ``2**-SCALE_BITS``; smaller ones are exactly 0
in any float format.

Layouts (``C = 2*B`` real columns, the real and imaginary parts of B transforms):

- synthesis: coefficients ``(nalm, C)`` (healpy m-major rows) ->
  ``EO (M, 2, nr, C)``: ``EO[m, 0] = sum_{l-m even} a_lm lambda_lm``, ``EO[m, 1]`` the odd sum;
- adjoint: ``TD (M, 2, nr, C)`` (north + south mirror, north - south mirror) ->
  ``out (nalm, C)``: ``out[lm] = sum_r lambda_lm(r) TD[m, (l-m) % 2, r]``.

One program per (m, block of rings, block of columns) for synthesis and per
(m, block of columns) for the adjoint (it loops over ring blocks itself: no atomics, so
results are deterministic).
"""

from __future__ import annotations

import os

import torch

SCALE_BITS = 300
#: ``TRITON_INTERPRET=1`` at import: the kernels below are interpreted (numpy), not compiled.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
#: Rings per program (synthesis and adjoint) and columns per program.
BLOCK_RINGS = 64
BLOCK_COLS = 16


def available() -> bool:
    """True when triton could be imported."""
    return triton is not None


def interpret_mode() -> bool:
    """True when the kernels were built with ``TRITON_INTERPRET=1`` set (at import of this
    module): they then run on CPU tensors too (slowly; that is how the suite tests them)."""
    return INTERPRETED


def usable(device: torch.device) -> bool:
    """Whether the fused kernels can run on ``device`` here (CUDA, or any device in interpret mode)."""
    return available() and (device.type == "cuda" or interpret_mode())


try:  # triton is optional: without it the pure-torch paths of torch_sht are used
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the environment
    triton = None

if triton is not None:
    BIG = tl.constexpr(2.0**SCALE_BITS)
    TINY = tl.constexpr(2.0**-SCALE_BITS)

    @triton.jit
    def _step(p1, p2, k, x, lf, mf):
        # one recurrence step to degree lf; renormalise scaled values that grew past 2**SCALE_BITS
        a = tl.sqrt((4.0 * lf * lf - 1.0) / (lf * lf - mf * mf))
        lm1 = lf - 1.0
        b = tl.sqrt((lm1 * lm1 - mf * mf) / (4.0 * lm1 * lm1 - 1.0))
        p = a * (x * p1 - b * p2)
        grow = (tl.abs(p) > BIG) & (k < 0)
        p = tl.where(grow, p * TINY, p)
        p1 = tl.where(grow, p1 * TINY, p1)
        k = tl.where(grow, k + 1, k)
        return p, p1, k

    @triton.jit
    def _factor(k):
        return tl.where(k == 0, 1.0, tl.where(k == -1, TINY, 0.0))

    @triton.jit
    def synth_kernel(
        coef_ptr, x_ptr, start_ptr, scale_ptr, out_ptr, lmax, nr, ncol,
        BR: tl.constexpr, BC: tl.constexpr,
    ):
        m = tl.program_id(0).to(tl.int64)
        r = tl.program_id(1) * BR + tl.arange(0, BR)
        c = tl.program_id(2) * BC + tl.arange(0, BC)
        rmask = r < nr
        cmask = c < ncol
        x = tl.load(x_ptr + r, mask=rmask, other=0.0)
        p1 = tl.load(start_ptr + m * nr + r, mask=rmask, other=0.0)
        k = tl.load(scale_ptr + m * nr + r, mask=rmask, other=0)
        p2 = tl.zeros_like(p1)
        base = m * (2 * lmax + 1 - m) // 2 + m  # row of (l, m) = (m, m)
        row = tl.load(coef_ptr + base * ncol + c, mask=cmask, other=0.0)
        acc_e = (p1 * _factor(k)).to(row.dtype)[:, None] * row[None, :]
        acc_o = tl.zeros_like(acc_e)
        mf = m.to(tl.float64)
        lf = mf
        nsteps = lmax - m
        for i in range(1, nsteps + 1, 2):
            # odd l - m
            lf = lf + 1.0
            p, p2, k = _step(p1, p2, k, x, lf, mf)
            p2, p1 = p2, p
            row = tl.load(coef_ptr + (base + i) * ncol + c, mask=cmask, other=0.0)
            acc_o += (p1 * _factor(k)).to(row.dtype)[:, None] * row[None, :]
            # even l - m (beyond lmax when i == nsteps: the zero row is read instead)
            lf = lf + 1.0
            p, p2, k = _step(p1, p2, k, x, lf, mf)
            p2, p1 = p2, p
            valid = (tl.zeros_like(c) + (i + 1)) <= nsteps
            row = tl.load(coef_ptr + (base + i + 1) * ncol + c, mask=cmask & valid, other=0.0)
            acc_e += (p1 * _factor(k)).to(row.dtype)[:, None] * row[None, :]
        offs = r[:, None] * ncol + c[None, :]
        mask = rmask[:, None] & cmask[None, :]
        tl.store(out_ptr + (m * 2) * nr * ncol + offs, acc_e, mask=mask)
        tl.store(out_ptr + (m * 2 + 1) * nr * ncol + offs, acc_o, mask=mask)

    @triton.jit
    def adjoint_kernel(
        td_ptr, x_ptr, start_ptr, scale_ptr, out_ptr, lmax, nr, ncol,
        BR: tl.constexpr, BC: tl.constexpr,
    ):
        m = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BC + tl.arange(0, BC)
        cmask = c < ncol
        base = m * (2 * lmax + 1 - m) // 2 + m
        mf = m.to(tl.float64)
        nsteps = lmax - m
        for r0 in range(0, nr, BR):
            r = r0 + tl.arange(0, BR)
            rmask = r < nr
            mask = rmask[:, None] & cmask[None, :]
            offs = r[:, None] * ncol + c[None, :]
            td_e = tl.load(td_ptr + (m * 2) * nr * ncol + offs, mask=mask, other=0.0)
            td_o = tl.load(td_ptr + (m * 2 + 1) * nr * ncol + offs, mask=mask, other=0.0)
            x = tl.load(x_ptr + r, mask=rmask, other=0.0)
            p1 = tl.load(start_ptr + m * nr + r, mask=rmask, other=0.0)
            k = tl.load(scale_ptr + m * nr + r, mask=rmask, other=0)
            p2 = tl.zeros_like(p1)
            ptr = out_ptr + base * ncol + c
            val = tl.sum((p1 * _factor(k)).to(td_e.dtype)[:, None] * td_e, axis=0)
            tl.store(ptr, tl.load(ptr, mask=cmask, other=0.0) + val, mask=cmask)
            lf = mf
            for i in range(1, nsteps + 1, 2):
                lf = lf + 1.0
                p, p2, k = _step(p1, p2, k, x, lf, mf)
                p2, p1 = p2, p
                ptr = out_ptr + (base + i) * ncol + c
                val = tl.sum((p1 * _factor(k)).to(td_o.dtype)[:, None] * td_o, axis=0)
                tl.store(ptr, tl.load(ptr, mask=cmask, other=0.0) + val, mask=cmask)
                lf = lf + 1.0
                p, p2, k = _step(p1, p2, k, x, lf, mf)
                p2, p1 = p2, p
                valid = cmask & ((tl.zeros_like(c) + (i + 1)) <= nsteps)
                ptr = out_ptr + (base + i + 1) * ncol + c
                val = tl.sum((p1 * _factor(k)).to(td_e.dtype)[:, None] * td_e, axis=0)
                tl.store(ptr, tl.load(ptr, mask=valid, other=0.0) + val, mask=valid)



def _check(device: torch.device) -> None:
    if not available():
        raise RuntimeError("the fused Legendre kernels need triton; install it (pip install triton) or use tables")
    if device.type != "cuda" and not interpret_mode():
        raise RuntimeError(
            f"the fused Legendre kernels run on CUDA tensors, got device {device}; "
            "set TRITON_INTERPRET=1 before importing scatterdist.sphere.triton_legendre to run them on the CPU"
        )


def synthesis_legendre(
    coeffs: torch.Tensor, x: torch.Tensor, start: torch.Tensor, scale: torch.Tensor, lmax: int
) -> torch.Tensor:
    """``EO (M, 2, nr, C)`` from coefficients ``(nalm, C)``; see the module doc."""
    _check(coeffs.device)
    M, nr = start.shape
    ncol = coeffs.shape[1]
    out = torch.empty((M, 2, nr, ncol), dtype=coeffs.dtype, device=coeffs.device)
    grid = (M, triton_cdiv(nr, BLOCK_RINGS), triton_cdiv(ncol, BLOCK_COLS))
    synth_kernel[grid](coeffs, x, start, scale, out, lmax, nr, ncol, BR=BLOCK_RINGS, BC=BLOCK_COLS)
    return out


def adjoint_legendre(
    td: torch.Tensor, x: torch.Tensor, start: torch.Tensor, scale: torch.Tensor, lmax: int, nalm: int
) -> torch.Tensor:
    """``out (nalm, C)`` from ``TD (M, 2, nr, C)``; see the module doc."""
    _check(td.device)
    M, _, nr, ncol = td.shape
    out = torch.zeros((nalm, ncol), dtype=td.dtype, device=td.device)
    grid = (M, triton_cdiv(ncol, BLOCK_COLS))
    adjoint_kernel[grid](td, x, start, scale, out, lmax, nr, ncol, BR=BLOCK_RINGS, BC=BLOCK_COLS)
    return out


def triton_cdiv(a: int, b: int) -> int:
    """Ceiling division (grid sizes)."""
    return -(-a // b)


def launch_configs() -> list[dict]:
    """Every (kernel, dtype, block sizes) this module launches, with the Triton signature of its
    arguments: what :func:`scatterdist.sphere.triton_aot.compile_all` builds ahead of time."""
    if triton is None:
        return []
    configs = []
    for dtype, ptr in (("float32", "*fp32"), ("float64", "*fp64")):
        common = {"x_ptr": "*fp64", "start_ptr": "*fp64", "scale_ptr": "*i32", "out_ptr": ptr,
                  "lmax": "i32", "nr": "i32", "ncol": "i32"}
        configs.append({"name": "synth_kernel", "fn": synth_kernel, "dtype": dtype,
                        "signature": {"coef_ptr": ptr, **common},
                        "constexprs": {"BR": BLOCK_RINGS, "BC": BLOCK_COLS}})
        configs.append({"name": "adjoint_kernel", "fn": adjoint_kernel, "dtype": dtype,
                        "signature": {"td_ptr": ptr, **common},
                        "constexprs": {"BR": BLOCK_RINGS, "BC": BLOCK_COLS}})
    return configs
