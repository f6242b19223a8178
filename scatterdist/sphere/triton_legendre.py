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
``a_lm = sqrt((4l^2-1)/(l^2-m^2))``, ``b_lm = sqrt(((l-1)^2-m^2)/(4(l-1)^2-1))``; at the end
of every block of DEGREES degrees a mantissa above ``2**SCALE_BITS`` (with ``k < 0``) is
renormalised and its exponent raised. Values with ``k = -1`` enter the sums multiplied by
``2**-SCALE_BITS``; smaller ones (below ``2**-SCALE_BITS`` times the block's growth, under
``2**-150``) enter as 0.

Layouts (``C = 2*B`` real columns, the real and imaginary parts of B transforms):

- synthesis: coefficients ``(nalm, C)`` (healpy m-major rows) ->
  ``EO (M, 2, nr, C)``: ``EO[m, 0] = sum_{l-m even} a_lm lambda_lm``, ``EO[m, 1]`` the odd sum;
- adjoint: ``TD (M, 2, nr, C)`` (north + south mirror, north - south mirror) ->
  ``out (nalm, C)``: ``out[lm] = sum_r lambda_lm(r) TD[m, (l-m) % 2, r]``.

Work per step is a small matrix product (issue 20, build 1): each program runs the
recurrence once per ring (float64, one ring per thread, 32 degrees per loop iteration; the
per-(l, m) factors ``(a_lm, a_lm b_lm)`` come from a workspace that :func:`recurrence_table`
fills with one launch per call, padded with zero rows past lmax so the per-step loads need no
mask, and no divide or square root runs per step; the 2**SCALE_BITS renormalisation runs once
per 32 degrees). The values go into two ``(rings, 16)`` register tiles, the even and the odd
degrees of the block, and ``tl.dot`` multiplies each with its ``(16, columns)`` coefficient
tile (synthesis) or its transpose with the ``(rings, columns)`` data (adjoint). float32
transforms use ``input_precision="tf32x3"`` (tensor cores, float32 accuracy), float64
``"ieee"``. One program per (m, block of rings, block of columns) for synthesis and per
(m, block of columns) for the adjoint (it loops over ring blocks itself, adding into its own
rows: no atomics, so results are deterministic). The degree loops are not software-pipelined
(``num_stages=1``): pipelining turned every scalar factor load into an asynchronous copy
through shared memory, more instructions than the whole recurrence. Launches run under the
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

#: Degrees of the recurrence per loop iteration of the tl.dot kernels (two tiles of 16: even, odd).
DEGREES = 32

if triton is not None:
    DEGREES_C = tl.constexpr(DEGREES)
    BIG = tl.constexpr(2.0**SCALE_BITS)
    TINY = tl.constexpr(2.0**-SCALE_BITS)

    @triton.jit
    def _factor(k):
        return tl.where(k == 0, 1.0, tl.where(k == -1, TINY, 0.0))

    # ------------------------------------------------------------------ tiles for tl.dot
    # The recurrence runs once per ring, in a 1-D (BR,) layout (one ring per thread: nothing is
    # computed twice), DEGREES (32) degrees per loop iteration. The values are gathered into two
    # (BR, 16) tiles, the even and the odd degrees of the block, by a tree of tl.join (each
    # thread keeps its own values: no shuffle, no select); the join tree puts degree pair
    # ``bitrev4(c)`` in column c, and the coefficient rows are read in that same order
    # (:func:`_pair_of_column`). Each tile meets only its own rows in tl.dot (no zero half).
    # The recurrence is renormalised once per block, not per degree: within 32 degrees a
    # mantissa grows by less than 2**150 (the product of ``a_lm`` over the block at m <= 8192),
    # far inside the float64 range above 2**SCALE_BITS, and a value's exponent k only changes
    # where its mantissa exceeds 2**SCALE_BITS; the factor 2**(SCALE_BITS*k) of the block is
    # exact for every degree of it.

    @triton.jit
    def _step(p1, p2, x, ab_ptr, row):
        # lambda at workspace row ``row`` from the two below it: c1 x lambda_{l-1} - c2 lambda_{l-2};
        # no mask: the workspace has DEGREES zero rows past lmax for every m (values there are 0)
        c1 = tl.load(ab_ptr + 2 * row)
        c2 = tl.load(ab_ptr + 2 * row + 1)
        return (c1 * x) * p1 - c2 * p2

    @triton.jit
    def _pair(p1, p2, x, f, ab_ptr, row, OUT: tl.constexpr):
        # values at rows ``row`` (p1) and ``row + 1``; the state moved up two degrees
        ve = (p1 * f).to(OUT)
        q = _step(p1, p2, x, ab_ptr, row + 1)
        vo = (q * f).to(OUT)
        p = _step(q, p1, x, ab_ptr, row + 2)
        return ve, vo, p, q

    @triton.jit
    def _four(p1, p2, x, f, ab_ptr, row, OUT: tl.constexpr):
        e0, o0, p1, p2 = _pair(p1, p2, x, f, ab_ptr, row, OUT)
        e1, o1, p1, p2 = _pair(p1, p2, x, f, ab_ptr, row + 2, OUT)
        return tl.join(e0, e1), tl.join(o0, o1), p1, p2

    @triton.jit
    def _eight(p1, p2, x, f, ab_ptr, row, OUT: tl.constexpr):
        e0, o0, p1, p2 = _four(p1, p2, x, f, ab_ptr, row, OUT)
        e1, o1, p1, p2 = _four(p1, p2, x, f, ab_ptr, row + 4, OUT)
        return tl.join(e0, e1), tl.join(o0, o1), p1, p2

    @triton.jit
    def _sixteen(p1, p2, x, f, ab_ptr, row, OUT: tl.constexpr):
        e0, o0, p1, p2 = _eight(p1, p2, x, f, ab_ptr, row, OUT)
        e1, o1, p1, p2 = _eight(p1, p2, x, f, ab_ptr, row + 8, OUT)
        return tl.join(e0, e1), tl.join(o0, o1), p1, p2

    @triton.jit
    def _block(p1, p2, k, x, ab_ptr, row, OUT: tl.constexpr, BR: tl.constexpr):
        # lambda at rows row .. row + 31 as (even, odd) (BR, 16) tiles, column c = degree pair
        # bitrev4(c); the state (p1, p2, k) at row + 32, renormalised once
        f = _factor(k)
        e0, o0, p1, p2 = _sixteen(p1, p2, x, f, ab_ptr, row, OUT)
        e1, o1, p1, p2 = _sixteen(p1, p2, x, f, ab_ptr, row + 16, OUT)
        te = tl.reshape(tl.join(e0, e1), (BR, 16))
        to = tl.reshape(tl.join(o0, o1), (BR, 16))
        grow = (tl.abs(p1) > BIG) & (k < 0)
        p1 = tl.where(grow, p1 * TINY, p1)
        p2 = tl.where(grow, p2 * TINY, p2)
        k = tl.where(grow, k + 1, k)
        return te, to, p1, p2, k

    @triton.jit
    def _pair_of_column():
        # degree pair held by each tile column: the join tree's order, bit-reversed column index
        c = tl.arange(0, 16)
        return ((c & 1) << 3) | ((c & 2) << 1) | ((c & 4) >> 1) | ((c & 8) >> 3)

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
        x = tl.load(x_ptr + r, mask=rmask, other=0.0)
        p1 = tl.load(start_ptr + m * nr + r, mask=rmask, other=0.0)
        k = tl.load(scale_ptr + m * nr + r, mask=rmask, other=0)
        p2 = tl.zeros_like(p1)
        base = m * (2 * lmax + 1 - m) // 2 + m  # row of (l, m) = (m, m)
        last = base + lmax - m
        abase = _workspace_row(m, lmax)  # workspace row of (m, m)
        offset = 2 * _pair_of_column()  # even degree offset of each tile column
        acc_e = tl.zeros((BR, BC), dtype=OUT)
        acc_o = tl.zeros((BR, BC), dtype=OUT)
        for i0 in tl.range(0, lmax - m + 1, DEGREES_C, num_stages=1):
            row = base + i0
            te, to, p1, p2, k = _block(p1, p2, k, x, ab_ptr, row - base + abase, OUT, BR)
            rows = row + offset
            ptrs = coef_ptr + rows[:, None] * ncol + c[None, :]
            ce = tl.load(ptrs, mask=(rows <= last)[:, None] & cmask[None, :], other=0.0)
            co = tl.load(ptrs + ncol, mask=(rows + 1 <= last)[:, None] & cmask[None, :], other=0.0)
            acc_e = tl.dot(te, ce, acc_e, input_precision=PRECISION)
            acc_o = tl.dot(to, co, acc_o, input_precision=PRECISION)
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
        abase = _workspace_row(m, lmax)  # workspace row of (m, m)
        offset = 2 * _pair_of_column()
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
            for i0 in tl.range(0, lmax - m + 1, DEGREES_C, num_stages=1):
                row = base + i0
                te, to, p1, p2, k = _block(p1, p2, k, x, ab_ptr, row - base + abase, OUT, BR)
                ve = tl.dot(tl.trans(te), td_e, input_precision=PRECISION)  # (16, BC)
                vo = tl.dot(tl.trans(to), td_o, input_precision=PRECISION)
                rows = row + offset
                ptrs = out_ptr + rows[:, None] * ncol + c[None, :]
                ve_mask = (rows <= last)[:, None] & cmask[None, :]
                vo_mask = (rows + 1 <= last)[:, None] & cmask[None, :]
                if r0 > 0:  # the first ring block writes, the others add (out starts as zeros)
                    ve += tl.load(ptrs, mask=ve_mask, other=0.0)
                    vo += tl.load(ptrs + ncol, mask=vo_mask, other=0.0)
                tl.store(ptrs, ve, mask=ve_mask)
                tl.store(ptrs + ncol, vo, mask=vo_mask)

    @triton.jit
    def _workspace_row(m, lmax):
        # first row of order m in the recurrence workspace: lmax - m + 1 + DEGREES rows per m
        return m * (lmax + 1 + DEGREES_C) - m * (m - 1) // 2

    @triton.jit
    def coefficients_kernel(ab_ptr, lmax, BL: tl.constexpr):
        # (c1, c2) = (a_lm, a_lm b_lm) for every (l, m), then DEGREES rows of zeros: one program per m
        m = tl.program_id(0).to(tl.int64)
        base = _workspace_row(m, lmax) - m  # row of (l, m) = base + l
        mf = m.to(tl.float64)
        for l0 in range(0, lmax + 1 + DEGREES_C, BL):
            ell = l0 + tl.arange(0, BL)
            inside = ell <= lmax
            valid = (ell >= m) & (ell <= lmax + DEGREES_C)
            lf = ell.to(tl.float64)
            step = (ell > m) & inside
            a = tl.sqrt((4.0 * lf * lf - 1.0) / tl.where(step, lf * lf - mf * mf, 1.0))
            lm1 = lf - 1.0
            b = tl.sqrt(tl.where((ell > m + 1) & inside, (lm1 * lm1 - mf * mf) / (4.0 * lm1 * lm1 - 1.0), 0.0))
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
                   ("adjoint", torch.float32): 128, ("adjoint", torch.float64): 64}
#: Columns per program of the tl.dot kernels (tl.dot needs >= 16).
DOT_BLOCK_COLS = 16
#: tl.dot input precision: float32 by three tf32 passes (fp32 accuracy on tensor cores); float64 exact.
DOT_PRECISION = {torch.float32: "tf32x3", torch.float64: "ieee"}
def device_guard(device: torch.device):
    """``torch.cuda.device(device)`` for CUDA tensors (Triton launches on the *current* device: a
    worker handed ``cuda:k`` without ``set_device`` would otherwise run on GPU 0 with pointers
    into GPU k); a no-op elsewhere."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def workspace_rows(lmax: int) -> int:
    """Rows of the recurrence workspace: ``lmax - m + 1`` factors and ``DEGREES`` zero rows per m."""
    M = lmax + 1
    return M * (lmax + 1 + DEGREES) - M * (M - 1) // 2


def recurrence_table(lmax: int, device: torch.device) -> torch.Tensor:
    """``(workspace_rows(lmax), 2)`` float64 ``(a_lm, a_lm b_lm)`` of every (l, m), m-major, each order
    followed by ``DEGREES`` rows of zeros (the kernels read them unmasked past lmax): one launch per
    call, a transient workspace (16 bytes a row; 0.14 GB at lmax 4095), nothing cached."""
    M = lmax + 1
    ab = torch.empty((workspace_rows(lmax), 2), dtype=torch.float64, device=device)
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
