"""Fused elementwise passes of the ring transforms (Triton; issue 20, build 4).

On CUDA, :mod:`scatterdist.sphere.torch_sht` runs the memory-bound passes between the Legendre
sums and the ring FFTs, and around the two FFTs of its chirp-z transform, as six kernels
instead of chains of torch ops (each torch op reads and writes the whole array once):

- ``equator_in_kernel`` (synthesis): the north/south combination of the even/odd Legendre sums,
  the gather of the equatorial rings, their half-pixel phase, the zero padding to ``neq/2 + 1``
  (replaces the combination ``bmm`` and its layout ``clone``, ``index_select``, ``mul_``,
  ``constant_pad_nd`` of the ``irfft``);
- ``chirp_in_kernel`` (synthesis): the same combination for the chirp-z pair rings, times the
  pre-chirp, zero rows up to the FFT length ``P`` (``index_select``, ``mul_``, ``constant_pad_nd``);
- ``chirp_out_kernel`` (synthesis): times the post-chirp, real part, to the RING pixels of a
  segment (``mul_``, the ``clone`` of the real part, ``index_select``);
- ``chirp_in_adjoint_kernel``: RING pixels of a segment times the post-chirp into the zeroed,
  padded FFT input (``index_put_``, ``mul``, ``constant_pad_nd``);
- ``chirp_out_adjoint_kernel``: times the pre-chirp, and the north/south combination of each
  pair straight into the adjoint Legendre input ``td`` (``mul_``, ``index_copy_`` into a zeroed
  spectrum, the combination ``bmm``);
- ``equator_out_kernel``: after the equatorial ``rfft``, ``c_m conj``, the half-pixel phase and
  the north/south combination into ``td`` (``mul_`` twice, ``index_copy_``; ring q's mirror is
  ring ``count - 1 - q`` in RING order, the equator has none).

Shapes (``R`` ring pairs, ``B`` maps, ``M`` orders, ``P`` FFT length, ``nmax`` longest ring):
the even/odd sums ``eo`` are ``(M, 2, nnorth, 2B)`` real (any strides); the spectrum ``spec``
``(M, 2 nnorth, B)`` complex on the ring axis [north | south mirrors] (north = even + odd,
mirror = even - odd); the adjoint's ``td`` ``(M, 2, nnorth, 2B)`` real (north + mirror,
north - mirror); the chirp-z array ``(P, 2, R, B)`` complex; ``pre`` ``(M, 1, R, 1)``,
``post`` ``(nmax, 1, R, 1)`` complex; a segment ``(a, b, index)`` sends slot ``index[i]`` of the
flattened ``(nmax, 2, R)`` output to RING pixel ``a + i``. Complex tensors are read through
their real views (re, im interleaved); FFT outputs through their strides. CPU tensors keep the
torch ops (or run these kernels under ``TRITON_INTERPRET=1``, which is how the suite tests
them against the torch ops).
"""

from __future__ import annotations

import torch

from scatterdist.sphere import triton_legendre

#: Elements (complex values or output pixels x maps) per program.
BLOCK = 1024

try:  # triton is optional (the torch ops run without it)
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the environment
    triton = None


def usable(device: torch.device) -> bool:
    """Whether these kernels can run on ``device`` here (CUDA, or any device in interpret mode)."""
    return triton_legendre.usable(device)


if triton is not None:

    @triton.jit
    def _cmul(ar, ai, br, bi):
        return ar * br - ai * bi, ar * bi + ai * br

    @triton.jit
    def _north_south(eo_ptr, es0, es1, es2, es3, m, ring, b, nr, mask):
        # spec[m, ring, b] of the ring axis [north (nr) | south mirrors] from the even / odd sums
        # eo (M, 2, nr, 2B) (strides es*, real elements): even + odd (north), even - odd (mirror)
        half = ring // nr
        r = ring - half * nr
        sign = 1.0 - 2.0 * half.to(tl.float32)
        base = m * es0 + r * es2 + (2 * b) * es3
        er = tl.load(eo_ptr + base, mask=mask, other=0.0)
        ei = tl.load(eo_ptr + base + es3, mask=mask, other=0.0)
        orr = tl.load(eo_ptr + base + es1, mask=mask, other=0.0)
        oi = tl.load(eo_ptr + base + es1 + es3, mask=mask, other=0.0)
        return er + sign * orr, ei + sign * oi

    @triton.jit
    def chirp_in_kernel(eo_ptr, es0, es1, es2, es3, rings_ptr, pre_ptr, x_ptr, M, nr, R, B, BLOCK: tl.constexpr):
        # x[m, s, j, b] = spec[m, rings[s R + j], b] pre[m, j] (m < M), 0 for M <= m < P; spec
        # combined from eo on the fly (north/south): no spectrum array is written
        m = tl.program_id(0).to(tl.int64)
        e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        n = 2 * R * B
        valid = e < n
        sj = e // B
        b = e % B
        live = valid & ((e * 0 + m) < M)  # a row of the zero padding when m >= M
        ring = tl.load(rings_ptr + sj, mask=live, other=0)
        sr, si = _north_south(eo_ptr, es0, es1, es2, es3, m, ring, b, nr, live)
        pj = 2 * (m * R + sj % R)
        pr = tl.load(pre_ptr + pj, mask=live, other=0.0)
        pi = tl.load(pre_ptr + pj + 1, mask=live, other=0.0)
        re, im = _cmul(sr, si, pr, pi)
        dst = 2 * (m * n + e)
        tl.store(x_ptr + dst, re, mask=valid)
        tl.store(x_ptr + dst + 1, im, mask=valid)

    @triton.jit
    def equator_in_kernel(eo_ptr, es0, es1, es2, es3, rings_ptr, shift_ptr, x_ptr, first_shifted, M, H, nr, B,
                          BLOCK: tl.constexpr):
        # x[q, m, b] = spec[m, rings[q], b] (times shift[m] on the shifted rings q = first_shifted, +2, ...)
        # for m < M, 0 up to H = neq/2 + 1: the equatorial irfft's input, already padded
        q = tl.program_id(0).to(tl.int64)
        e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = e < H * B
        m = e // B
        b = e % B
        live = valid & (m < M)
        ring = tl.load(rings_ptr + q + e * 0, mask=live, other=0)
        sr, si = _north_south(eo_ptr, es0, es1, es2, es3, m, ring, b, nr, live)
        shifted = (e * 0 + q >= first_shifted) & ((e * 0 + q - first_shifted) % 2 == 0) & live
        hr = tl.load(shift_ptr + 2 * m, mask=shifted, other=1.0)
        hi = tl.load(shift_ptr + 2 * m + 1, mask=shifted, other=0.0)
        re, im = _cmul(sr, si, hr, hi)
        dst = 2 * (q * H * B + e)
        tl.store(x_ptr + dst, re, mask=valid)
        tl.store(x_ptr + dst + 1, im, mask=valid)

    @triton.jit
    def chirp_out_kernel(z_ptr, zs0, zs1, zs2, zs3, post_ptr, index_ptr, out_ptr, total, R, B, BLOCK: tl.constexpr):
        # out[i, b] = Re(z[q, b] post[q // 2R, q % R]), q = index[i] = (n, s, j) of the (nmax, 2, R) slots;
        # z read through its strides (zs*, in complex elements: FFT outputs need not be contiguous)
        e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = e < total
        i = e // B
        b = e % B
        q = tl.load(index_ptr + i, mask=valid, other=0).to(tl.int64)
        n = q // (2 * R)
        j = q % R
        src = 2 * (n * zs0 + ((q // R) % 2) * zs1 + j * zs2 + b * zs3)
        zr = tl.load(z_ptr + src, mask=valid, other=0.0)
        zi = tl.load(z_ptr + src + 1, mask=valid, other=0.0)
        pq = 2 * (n * R + j)
        pr = tl.load(post_ptr + pq, mask=valid, other=0.0)
        pi = tl.load(post_ptr + pq + 1, mask=valid, other=0.0)
        tl.store(out_ptr + e, zr * pr - zi * pi, mask=valid)

    @triton.jit
    def chirp_in_adjoint_kernel(pix_ptr, pix_stride_p, pix_stride_b, post_ptr, index_ptr, y_ptr, total, R, B,
                                BLOCK: tl.constexpr):
        # y[q, b] = pixels[i, b] post[q // 2R, q % R], q = index[i]
        e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = e < total
        i = e // B
        b = e % B
        q = tl.load(index_ptr + i, mask=valid, other=0).to(tl.int64)
        v = tl.load(pix_ptr + i * pix_stride_p + b * pix_stride_b, mask=valid, other=0.0)
        pq = 2 * ((q // (2 * R)) * R + q % R)
        pr = tl.load(post_ptr + pq, mask=valid, other=0.0)
        pi = tl.load(post_ptr + pq + 1, mask=valid, other=0.0)
        dst = 2 * (q * B + b)
        tl.store(y_ptr + dst, v * pr, mask=valid)
        tl.store(y_ptr + dst + 1, v * pi, mask=valid)

    @triton.jit
    def _to_td(td_ptr, m, r, b, nr, B, n_re, n_im, s_re, s_im, mask):
        # td[m, 0, r, (2b, 2b+1)] = north + south, td[m, 1, r, ...] = north - south; td (M, 2, nr, 2B) contiguous
        base = ((m * 2) * nr + r) * (2 * B) + 2 * b
        half = nr * (2 * B)
        tl.store(td_ptr + base, n_re + s_re, mask=mask)
        tl.store(td_ptr + base + 1, n_im + s_im, mask=mask)
        tl.store(td_ptr + base + half, n_re - s_re, mask=mask)
        tl.store(td_ptr + base + half + 1, n_im - s_im, mask=mask)

    @triton.jit
    def chirp_out_adjoint_kernel(z_ptr, zs0, zs1, zs2, zs3, pre_ptr, rings_ptr, td_ptr, nr, R, B,
                                 BLOCK: tl.constexpr):
        # pair j: north ring r = rings[j] and its mirror; value = z[m, s, j, b] pre[m, j] (s = 0, 1),
        # combined into td (north + mirror, north - mirror); z read through its strides
        m = tl.program_id(0).to(tl.int64)
        e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = e < R * B
        j = e // B
        b = e % B
        src = 2 * (m * zs0 + j * zs2 + b * zs3)
        nre = tl.load(z_ptr + src, mask=valid, other=0.0)
        nim = tl.load(z_ptr + src + 1, mask=valid, other=0.0)
        sre = tl.load(z_ptr + src + 2 * zs1, mask=valid, other=0.0)
        sim = tl.load(z_ptr + src + 2 * zs1 + 1, mask=valid, other=0.0)
        pj = 2 * (m * R + j)
        pr = tl.load(pre_ptr + pj, mask=valid, other=0.0)
        pi = tl.load(pre_ptr + pj + 1, mask=valid, other=0.0)
        nre, nim = _cmul(nre, nim, pr, pi)
        sre, sim = _cmul(sre, sim, pr, pi)
        r = tl.load(rings_ptr + j, mask=valid, other=0)
        _to_td(td_ptr, m, r, b, nr, B, nre, nim, sre, sim, valid)

    @triton.jit
    def _equator_value(x_ptr, xs0, xs1, xs2, shift_ptr, first_shifted, q, m, b, cm, mask):
        src = 2 * (q * xs0 + m * xs1 + b * xs2)
        xr = tl.load(x_ptr + src, mask=mask, other=0.0) * cm
        xi = -tl.load(x_ptr + src + 1, mask=mask, other=0.0) * cm
        shifted = mask & (q >= first_shifted) & ((q - first_shifted) % 2 == 0)
        hr = tl.load(shift_ptr + 2 * m, mask=shifted, other=1.0)
        hi = tl.load(shift_ptr + 2 * m + 1, mask=shifted, other=0.0)
        return _cmul(xr, xi, hr, hi)

    @triton.jit
    def equator_out_kernel(x_ptr, xs0, xs1, xs2, shift_ptr, rings_ptr, td_ptr, first_shifted, count, M, nr, B,
                           BLOCK: tl.constexpr):
        # equatorial rings q (RING order, count = 2 nside + 1; ring q's mirror is count - 1 - q, the
        # equator its own): c_m conj(rfft) (times the shift on shifted rings) of the north ring and
        # of its mirror, combined into td; x (count, >= M, B) complex read through its strides
        q = tl.program_id(0).to(tl.int64)  # 0 .. count // 2: the northern half and the equator
        e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = e < M * B
        m = e // B
        b = e % B
        cm = tl.where(m == 0, 1.0, 2.0)
        qq = e * 0 + q
        mirror = count - 1 - qq
        has_mirror = valid & (mirror != qq)
        nre, nim = _equator_value(x_ptr, xs0, xs1, xs2, shift_ptr, first_shifted, qq, m, b, cm, valid)
        sre, sim = _equator_value(x_ptr, xs0, xs1, xs2, shift_ptr, first_shifted, mirror, m, b, cm, has_mirror)
        r = tl.load(rings_ptr + qq, mask=valid, other=0)
        _to_td(td_ptr, m, r, b, nr, B, nre, nim, sre, sim, valid)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _run(name: str, grid: tuple, args: tuple, nbytes: int) -> None:
    """Launch kernel ``name`` under the device guard of its tensors. ``nbytes``: what the launch reads
    and writes in device memory (``benchmarks/gpu_model.py`` replaces this function to time it)."""
    kernel = globals()[name]
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    with triton_legendre.device_guard(device):
        kernel[grid](*args, BLOCK=BLOCK)


def _real(t: torch.Tensor) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError(f"the chirp-z kernels need contiguous tensors, got strides {t.stride()} for {tuple(t.shape)}")
    return torch.view_as_real(t) if t.is_complex() else t


def chirp_in(eo: torch.Tensor, rings: torch.Tensor, pre: torch.Tensor, P: int) -> torch.Tensor:
    """``(P, 2, R, B)`` complex: the spectrum ``spec[:, rings]`` (as ``(M, 2, R, B)``) times ``pre``, zero
    rows ``M .. P-1`` (the synthesis' FFT input, already padded). ``eo``: the even / odd Legendre sums
    ``(M, 2, nr, 2B)`` real, any strides; ``spec`` (north = even + odd, mirror = even - odd) is never stored."""
    M, _, nr, C = eo.shape
    B, R = C // 2, pre.shape[2]
    x = torch.empty((P, 2, R, B), dtype=_complex(eo.dtype), device=eo.device)
    grid = (P, _cdiv(2 * R * B, BLOCK))
    nbytes = _nbytes(x) + _nbytes(rings) + 2 * (M * 2 * R * B * 2 * eo.element_size()) + _nbytes(pre)
    _run("chirp_in_kernel", grid, (eo, *eo.stride(), rings, _real(pre), _real(x), M, nr, R, B), nbytes)
    return x


def equator_in(eo: torch.Tensor, rings: torch.Tensor, shift: torch.Tensor, first_shifted: int, H: int) -> torch.Tensor:
    """``(count, H, B)`` complex: the spectrum of the equatorial rings ``spec[:, rings]`` transposed to
    (ring, m, map), times ``shift`` on every other ring from ``first_shifted``, zero for m >= M (the
    input of the equatorial ``irfft(n=neq)``, ``H = neq/2 + 1``); ``eo`` as in :func:`chirp_in`."""
    M, _, nr, C = eo.shape
    B, count = C // 2, rings.shape[0]
    x = torch.empty((count, H, B), dtype=_complex(eo.dtype), device=eo.device)
    grid = (count, _cdiv(H * B, BLOCK))
    nbytes = _nbytes(x) + _nbytes(rings) + 2 * (M * count * B * 2 * eo.element_size()) + _nbytes(shift)
    _run("equator_in_kernel", grid,
         (eo, *eo.stride(), rings, _real(shift.reshape(-1)), _real(x), first_shifted, M, H, nr, B), nbytes)
    return x


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex64 if dtype == torch.float32 else torch.complex128


def chirp_out(z: torch.Tensor, post: torch.Tensor, segments: list, out: torch.Tensor) -> None:
    """RING pixels ``out[a:b] = Re(z * post)[index]`` of every segment; ``z`` ``(>= nmax, 2, R, B)`` complex,
    ``out`` ``(npix, B)`` real contiguous."""
    R, B = z.shape[2], z.shape[3]
    for a, b, index in segments:
        count = b - a
        nbytes = 3 * _nbytes(out[a:b]) + _nbytes(index) + _nbytes(post)  # z read (complex), out written
        _run("chirp_out_kernel", (_cdiv(count * B, BLOCK),),
             (torch.view_as_real(z), *z.stride(), _real(post), index, out[a:b], count * B, R, B), nbytes)


def chirp_in_adjoint(pixels: torch.Tensor, post: torch.Tensor, segments: list, R: int, P: int) -> torch.Tensor:
    """``(P, 2, R, B)`` complex zeros with slot ``index[i]`` = RING pixel ``a + i`` times ``post``, for every
    segment (the adjoint's FFT input, already padded). ``pixels``: ``(npix, B)`` real, any strides."""
    B = pixels.shape[1]
    cdtype = torch.complex64 if pixels.dtype == torch.float32 else torch.complex128
    y = torch.zeros((P, 2, R, B), dtype=cdtype, device=pixels.device)
    for a, b, index in segments:
        count = b - a
        src = pixels[a:b]
        nbytes = _nbytes(src) * 3 + _nbytes(index) + _nbytes(post)  # pixels read, complex slots written
        _run("chirp_in_adjoint_kernel", (_cdiv(count * B, BLOCK),),
             (src, src.stride(0), src.stride(1), _real(post), index, _real(y), count * B, R, B), nbytes)
    return y


def chirp_out_adjoint(z: torch.Tensor, pre: torch.Tensor, rings: torch.Tensor, td: torch.Tensor) -> None:
    """Pair rings of ``td`` ``(M, 2, nr, 2B)`` real contiguous (north + mirror, north - mirror) from
    ``z[:M] * pre``; ``rings``: the pairs' northern rings (``(2R,)`` pair rings, first half used)."""
    M, _, nr, C = td.shape
    B, R = C // 2, pre.shape[2]
    if not td.is_contiguous():
        raise ValueError("chirp_out_adjoint writes a contiguous td")
    grid = (M, _cdiv(R * B, BLOCK))
    moved = M * 2 * R * B * 2 * td.element_size()
    nbytes = 2 * moved + _nbytes(rings) // 2 + _nbytes(pre)
    _run("chirp_out_adjoint_kernel", grid,
         (torch.view_as_real(z), *z.stride(), _real(pre), rings, td, nr, R, B), nbytes)


def equator_out(x: torch.Tensor, shift: torch.Tensor, rings: torch.Tensor, first_shifted: int,
                td: torch.Tensor) -> None:
    """Equatorial rings of ``td`` ``(M, 2, nr, 2B)`` (north + mirror, north - mirror) from their ``rfft``
    ``x`` ``(count, >= M, B)`` complex (any strides): ``c_m conj(x)``, times ``shift`` on every other ring
    from ``first_shifted``; ring q's mirror is ``count - 1 - q`` (RING order), the equator has none."""
    M, _, nr, C = td.shape
    B, count = C // 2, x.shape[0]
    if not td.is_contiguous():
        raise ValueError("equator_out writes a contiguous td")
    grid = (count // 2 + 1, _cdiv(M * B, BLOCK))
    moved = count * M * B * 2 * td.element_size()
    nbytes = 2 * moved + _nbytes(rings) + _nbytes(shift)
    _run("equator_out_kernel", grid,
         (torch.view_as_real(x), *x.stride(), _real(shift.reshape(-1)), rings, td, first_shifted, count, M, nr, B),
         nbytes)


def launch_configs() -> list[dict]:
    """Every kernel of this module with its Triton signature, float32 and float64 (for
    :func:`scatterdist.sphere.triton_aot.compile_all`)."""
    if triton is None:
        return []
    configs = []
    strides = {"zs0": "i64", "zs1": "i64", "zs2": "i64", "zs3": "i64"}
    estrides = {"es0": "i64", "es1": "i64", "es2": "i64", "es3": "i64"}
    for dtype, ptr in (("float32", "*fp32"), ("float64", "*fp64")):
        sigs = {
            "chirp_in_kernel": {"eo_ptr": ptr, **estrides, "rings_ptr": "*i64", "pre_ptr": ptr, "x_ptr": ptr,
                                "M": "i32", "nr": "i32", "R": "i32", "B": "i32"},
            "equator_in_kernel": {"eo_ptr": ptr, **estrides, "rings_ptr": "*i64", "shift_ptr": ptr, "x_ptr": ptr,
                                  "first_shifted": "i32", "M": "i32", "H": "i32", "nr": "i32", "B": "i32"},
            "chirp_out_kernel": {"z_ptr": ptr, **strides, "post_ptr": ptr, "index_ptr": "*i32", "out_ptr": ptr, "total": "i64",
                                 "R": "i32", "B": "i32"},
            "chirp_in_adjoint_kernel": {"pix_ptr": ptr, "pix_stride_p": "i32", "pix_stride_b": "i32",
                                        "post_ptr": ptr, "index_ptr": "*i32", "y_ptr": ptr, "total": "i64",
                                        "R": "i32", "B": "i32"},
            "chirp_out_adjoint_kernel": {"z_ptr": ptr, **strides, "pre_ptr": ptr, "rings_ptr": "*i64", "td_ptr": ptr,
                                         "nr": "i32", "R": "i32", "B": "i32"},
            "equator_out_kernel": {"x_ptr": ptr, "xs0": "i64", "xs1": "i64", "xs2": "i64", "shift_ptr": ptr,
                                   "rings_ptr": "*i64", "td_ptr": ptr, "first_shifted": "i32", "count": "i32",
                                   "M": "i32", "nr": "i32", "B": "i32"},
        }
        for name, sig in sigs.items():
            configs.append({"name": name, "fn": globals()[name], "dtype": dtype, "signature": sig,
                            "constexprs": {"BLOCK": BLOCK}})
    return configs
