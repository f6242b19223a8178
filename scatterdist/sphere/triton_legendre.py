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

Work per step is a small matrix product (issue 20, build 1): each program runs the
recurrence once per ring (float64; the per-(l, m) factors ``(a_lm, a_lm b_lm)`` come from a
workspace that :func:`recurrence_table` fills with one launch per call, so no divide or
square root runs per step), 16 degrees at a time, into a ``(rings, 16)`` tile in
registers; ``tl.dot`` multiplies it with the ``(16, columns)`` coefficient tile (synthesis,
once for the even and once for the odd rows) or its transpose with the ``(rings, columns)``
data (adjoint). float32 transforms use ``input_precision="tf32x3"`` (tensor cores, float32
accuracy), float64 ``"ieee"``. One program per (m, block of rings, block of columns) for
synthesis and per (m, block of columns) for the adjoint (it loops over ring blocks itself,
adding into its own rows: no atomics, so results are deterministic). Launches run under the
tensor's device guard.
"""

from __future__ import annotations

import contextlib
import os

import torch

SCALE_BITS = 300
#: ``TRITON_INTERPRET=1`` at import: the kernels below are interpreted (numpy), not compiled.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


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
    def _factor(k):
        return tl.where(k == 0, 1.0, tl.where(k == -1, TINY, 0.0))

    # ------------------------------------------------------------------ tiles for tl.dot
    # The recurrence runs once per ring (not once per column lane): 16 degrees at a time are
    # computed in registers and placed in a (BR, 16) tile (column s = degree l0 + s; the
    # selects fold to register moves), which tl.dot multiplies with the (16, BC) coefficient
    # tile twice, its even and its odd rows (tensor cores: tf32x3 for float32, fp64 for float64).

    @triton.jit
    def _advance(p1, p2, k, x, ab_ptr, row, valid):
        # one degree up: lambda_l = c1 x lambda_{l-1} - c2 lambda_{l-2} (c1, c2 precomputed per (l, m))
        c1 = tl.load(ab_ptr + 2 * row, mask=valid, other=0.0)
        c2 = tl.load(ab_ptr + 2 * row + 1, mask=valid, other=0.0)
        p = c1 * x * p1 - c2 * p2
        grow = (tl.abs(p) > BIG) & (k < 0)
        p = tl.where(grow, p * TINY, p)
        p1 = tl.where(grow, p1 * TINY, p1)
        k = tl.where(grow, k + 1, k)
        return p, p1, k

    @triton.jit
    def _tile(p1, p2, k, x, ab_ptr, row, last, OUT: tl.constexpr, BR: tl.constexpr):
        # lambda of degrees row .. row + 15 (rows of the healpy layout) -> (BR, 16), and the
        # recurrence state at row + 16
        cols = tl.arange(0, 16)
        tile = tl.zeros((BR, 16), dtype=OUT)
        for s in tl.static_range(16):
            v = (p1 * _factor(k)).to(OUT)
            tile = tl.where(cols[None, :] == s, v, tile)  # v (BR, 1): the tile's own layout, no shuffle
            p, p2, k = _advance(p1, p2, k, x, ab_ptr, row + s + 1, row + s + 1 <= last)
            p1 = p
        return tile, p1, p2, k

    @triton.jit
    def synth_dot_kernel(
        coef_ptr, ab_ptr, x_ptr, start_ptr, scale_ptr, out_ptr, lmax, nr, ncol,
        BR: tl.constexpr, BC: tl.constexpr, PRECISION: tl.constexpr,
    ):
        m = tl.program_id(0).to(tl.int64)
        r = tl.program_id(1) * BR + tl.arange(0, BR)
        c = tl.program_id(2) * BC + tl.arange(0, BC)
        rmask = r < nr
        cmask = c < ncol
        OUT: tl.constexpr = coef_ptr.dtype.element_ty
        # recurrence state as (BR, 1) columns: the layout of the (BR, 16) tile it fills
        x = tl.load(x_ptr + r, mask=rmask, other=0.0)[:, None]
        p1 = tl.load(start_ptr + m * nr + r, mask=rmask, other=0.0)[:, None]
        k = tl.load(scale_ptr + m * nr + r, mask=rmask, other=0)[:, None]
        p2 = tl.zeros_like(p1)
        base = m * (2 * lmax + 1 - m) // 2 + m  # row of (l, m) = (m, m)
        last = base + lmax - m
        cols = tl.arange(0, 16)
        even = (cols % 2) == 0  # l - m even: the tile starts at an even offset
        acc_e = tl.zeros((BR, BC), dtype=OUT)
        acc_o = tl.zeros((BR, BC), dtype=OUT)
        for i0 in range(0, lmax - m + 1, 16):
            row = base + i0
            tile, p1, p2, k = _tile(p1, p2, k, x, ab_ptr, row, last, OUT, BR)
            rows = row + cols
            ptrs = coef_ptr + rows[:, None] * ncol + c[None, :]
            valid = (rows <= last)[:, None] & cmask[None, :]
            ce = tl.load(ptrs, mask=valid & even[:, None], other=0.0)
            co = tl.load(ptrs, mask=valid & ~even[:, None], other=0.0)
            acc_e = tl.dot(tile, ce, acc_e, input_precision=PRECISION)
            acc_o = tl.dot(tile, co, acc_o, input_precision=PRECISION)
        offs = r[:, None] * ncol + c[None, :]
        mask = rmask[:, None] & cmask[None, :]
        tl.store(out_ptr + (m * 2) * nr * ncol + offs, acc_e, mask=mask)
        tl.store(out_ptr + (m * 2 + 1) * nr * ncol + offs, acc_o, mask=mask)

    @triton.jit
    def adjoint_dot_kernel(
        td_ptr, ab_ptr, x_ptr, start_ptr, scale_ptr, out_ptr, lmax, nr, ncol,
        BR: tl.constexpr, BC: tl.constexpr, PRECISION: tl.constexpr,
    ):
        m = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BC + tl.arange(0, BC)
        cmask = c < ncol
        OUT: tl.constexpr = td_ptr.dtype.element_ty
        base = m * (2 * lmax + 1 - m) // 2 + m
        last = base + lmax - m
        cols = tl.arange(0, 16)
        even = (cols % 2) == 0
        for r0 in range(0, nr, BR):
            r = r0 + tl.arange(0, BR)
            rmask = r < nr
            mask = rmask[:, None] & cmask[None, :]
            offs = r[:, None] * ncol + c[None, :]
            td_e = tl.load(td_ptr + (m * 2) * nr * ncol + offs, mask=mask, other=0.0)
            td_o = tl.load(td_ptr + (m * 2 + 1) * nr * ncol + offs, mask=mask, other=0.0)
            x = tl.load(x_ptr + r, mask=rmask, other=0.0)[:, None]
            p1 = tl.load(start_ptr + m * nr + r, mask=rmask, other=0.0)[:, None]
            k = tl.load(scale_ptr + m * nr + r, mask=rmask, other=0)[:, None]
            p2 = tl.zeros_like(p1)
            for i0 in range(0, lmax - m + 1, 16):
                row = base + i0
                tile, p1, p2, k = _tile(p1, p2, k, x, ab_ptr, row, last, OUT, BR)
                tt = tl.trans(tile)  # (16, BR)
                ve = tl.dot(tt, td_e, input_precision=PRECISION)  # (16, BC)
                vo = tl.dot(tt, td_o, input_precision=PRECISION)
                rows = row + cols
                ptrs = out_ptr + rows[:, None] * ncol + c[None, :]
                valid = (rows <= last)[:, None] & cmask[None, :]
                val = tl.where(even[:, None], ve, vo)
                tl.store(ptrs, tl.load(ptrs, mask=valid, other=0.0) + val, mask=valid)

    @triton.jit
    def coefficients_kernel(ab_ptr, lmax, BL: tl.constexpr):
        # (c1, c2) = (a_lm, a_lm b_lm) for every (l, m) row of the healpy layout, one program per m
        m = tl.program_id(0).to(tl.int64)
        base = m * (2 * lmax + 1 - m) // 2
        mf = m.to(tl.float64)
        for l0 in range(0, lmax + 1, BL):
            ell = l0 + tl.arange(0, BL)
            valid = (ell >= m) & (ell <= lmax)
            lf = ell.to(tl.float64)
            step = (ell > m)
            a = tl.sqrt((4.0 * lf * lf - 1.0) / tl.where(step, lf * lf - mf * mf, 1.0))
            lm1 = lf - 1.0
            b = tl.sqrt(tl.where(ell > m + 1, (lm1 * lm1 - mf * mf) / (4.0 * lm1 * lm1 - 1.0), 0.0))
            a = tl.where(step, a, 0.0)
            tl.store(ab_ptr + 2 * (base + ell), a, mask=valid)
            tl.store(ab_ptr + 2 * (base + ell) + 1, a * b, mask=valid)


def _check(device: torch.device) -> None:
    if not available():
        raise RuntimeError("the fused Legendre kernels need triton; install it (pip install triton) or use tables")
    if device.type != "cuda" and not interpret_mode():
        raise RuntimeError(
            f"the fused Legendre kernels run on CUDA tensors, got device {device}; "
            "set TRITON_INTERPRET=1 before importing scatterdist.sphere.triton_legendre to run them on the CPU"
        )


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
        dot = {"coef_ptr": ptr, "ab_ptr": "*fp64", **common}
        tdtype = getattr(torch, dtype)
        consts = {"BC": DOT_BLOCK_COLS, "PRECISION": DOT_PRECISION[tdtype]}
        configs.append({"name": "synth_dot_kernel", "fn": synth_dot_kernel, "dtype": dtype, "signature": dot,
                        "constexprs": {"BR": DOT_BLOCK_RINGS["synthesis", tdtype], **consts}})
        adj = {"td_ptr": ptr, **{k: v for k, v in dot.items() if k != "coef_ptr"}}
        configs.append({"name": "adjoint_dot_kernel", "fn": adjoint_dot_kernel, "dtype": dtype, "signature": adj,
                        "constexprs": {"BR": DOT_BLOCK_RINGS["adjoint", tdtype], **consts}})
    configs.append({"name": "coefficients_kernel", "fn": coefficients_kernel, "dtype": "float64",
                    "signature": {"ab_ptr": "*fp64", "lmax": "i32"}, "constexprs": {"BL": 256}})
    return configs


#: Rings per program of the tl.dot kernels, by (kernel, dtype): one ring per thread of 4 warps where
#: the registers allow it (the compile test proves no spills on sm_80 and sm_90).
DOT_BLOCK_RINGS = {("synthesis", torch.float32): 128, ("synthesis", torch.float64): 64,
                   ("adjoint", torch.float32): 64, ("adjoint", torch.float64): 64}
#: Columns per program of the tl.dot kernels (tl.dot needs >= 16).
DOT_BLOCK_COLS = 16
#: tl.dot input precision: float32 by three tf32 passes (fp32 accuracy on tensor cores); float64 exact.
DOT_PRECISION = {torch.float32: "tf32x3", torch.float64: "ieee"}
def device_guard(device: torch.device):
    """``torch.cuda.device(device)`` for CUDA tensors (Triton launches on the *current* device: a
    worker handed ``cuda:k`` without ``set_device`` would otherwise run on GPU 0 with pointers
    into GPU k); a no-op elsewhere."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def recurrence_table(lmax: int, device: torch.device) -> torch.Tensor:
    """``(nalm, 2)`` float64 ``(a_lm, a_lm b_lm)`` of every (l, m), healpy layout: one launch per call
    (a transient workspace, nothing cached)."""
    M = lmax + 1
    ab = torch.empty((M * (M + 1) // 2, 2), dtype=torch.float64, device=device)
    with device_guard(device):
        coefficients_kernel[(M,)](ab, lmax, BL=256)
    return ab


def synthesis_legendre(
    coeffs: torch.Tensor, x: torch.Tensor, start: torch.Tensor, scale: torch.Tensor, lmax: int
) -> torch.Tensor:
    """``EO (M, 2, nr, C)`` from coefficients ``(nalm, C)`` by the tl.dot kernel; see the module doc."""
    _check(coeffs.device)
    M, nr = start.shape
    ncol = coeffs.shape[1]
    coeffs = coeffs.contiguous()
    ab = recurrence_table(lmax, coeffs.device)
    out = torch.empty((M, 2, nr, ncol), dtype=coeffs.dtype, device=coeffs.device)
    br = DOT_BLOCK_RINGS["synthesis", coeffs.dtype]
    grid = (M, triton_cdiv(nr, br), triton_cdiv(ncol, DOT_BLOCK_COLS))
    with device_guard(coeffs.device):
        synth_dot_kernel[grid](coeffs, ab, x, start, scale, out, lmax, nr, ncol,
                               BR=br, BC=DOT_BLOCK_COLS, PRECISION=DOT_PRECISION[coeffs.dtype])
    return out


def adjoint_legendre(
    td: torch.Tensor, x: torch.Tensor, start: torch.Tensor, scale: torch.Tensor, lmax: int, nalm: int
) -> torch.Tensor:
    """``out (nalm, C)`` from ``TD (M, 2, nr, C)`` by the tl.dot kernel; see the module doc."""
    _check(td.device)
    M, _, nr, ncol = td.shape
    td = td.contiguous()
    ab = recurrence_table(lmax, td.device)
    out = torch.zeros((nalm, ncol), dtype=td.dtype, device=td.device)
    br = DOT_BLOCK_RINGS["adjoint", td.dtype]
    grid = (M, triton_cdiv(ncol, DOT_BLOCK_COLS))
    with device_guard(td.device):
        adjoint_dot_kernel[grid](td, ab, x, start, scale, out, lmax, nr, ncol,
                                 BR=br, BC=DOT_BLOCK_COLS, PRECISION=DOT_PRECISION[td.dtype])
    return out
