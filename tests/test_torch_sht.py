"""torch HEALPix SHT (scatterdist.sphere.torch_sht) against the ducc0 path, adjoints, gradients, cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scatterdist import sphere
from scatterdist.sphere import torch_sht

HAS_CUDA = torch.cuda.is_available()


def rel(got, ref) -> float:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def real_m0(alm: np.ndarray, lmax: int) -> np.ndarray:
    """Coefficients of a real map have real m = 0 terms (ducc0 ignores their imaginary part)."""
    alm = alm.copy()
    alm[..., : lmax + 1] = alm[..., : lmax + 1].real
    return alm


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# nside 4..128; lmax from tiny to 3*nside-1 (aliased in the polar caps, and deep
# underflow of lambda_mm near the poles at nside 64, lmax 191)
CASES = [(4, 0), (4, 7), (4, 11), (8, 3), (8, 23), (16, 31), (16, 47), (32, 20), (32, 63), (64, 127), (64, 191), (128, 255)]


@pytest.mark.parametrize("nside,lmax", CASES)
def test_matches_ducc0(nside: int, lmax: int, rng) -> None:
    batch = 2 if nside < 128 else 1
    maps = rng.standard_normal((batch, 12 * nside**2))
    ref = sphere.analysis(maps, lmax, nthreads=1)
    alm = real_m0(ref, lmax)
    ref_maps = sphere.synthesis(alm, nside, lmax, nthreads=1)

    got = torch_sht.analysis(torch.from_numpy(maps), lmax)
    assert got.dtype == torch.complex128 and got.shape == ref.shape
    assert rel(got, ref) <= 1e-10
    got_maps = torch_sht.synthesis(torch.from_numpy(alm), nside, lmax)
    assert got_maps.dtype == torch.float64 and got_maps.shape == ref_maps.shape
    assert rel(got_maps, ref_maps) <= 1e-10

    got32 = torch_sht.analysis(torch.from_numpy(maps).float(), lmax)
    assert got32.dtype == torch.complex64
    assert rel(got32, ref) <= 1e-5
    got_maps32 = torch_sht.synthesis(torch.from_numpy(alm).to(torch.complex64), nside, lmax)
    assert got_maps32.dtype == torch.float32
    assert rel(got_maps32, ref_maps) <= 1e-5


def test_leading_axes_numpy_input_and_lmax_default(rng) -> None:
    nside, lmax = 8, 15
    maps = rng.standard_normal((2, 3, 12 * nside**2))
    alm = torch_sht.analysis(maps, lmax)  # numpy input is converted
    assert alm.shape == (2, 3, sphere.alm_size(lmax))
    assert rel(alm, sphere.analysis(maps, lmax)) <= 1e-10
    back = torch_sht.synthesis(alm, nside)  # lmax from the alm length
    assert back.shape == maps.shape
    ints = torch_sht.analysis(torch.ones(12 * nside**2, dtype=torch.int32), 4)
    assert ints.dtype == torch.complex128
    assert abs(ints[0].real.item() - math.sqrt(4 * math.pi)) < 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_adjoint_identity(dtype: torch.dtype, tol: float, rng) -> None:
    """<S a, f> = sum_lm w_m Re(conj(a_lm) (S^T f)_lm) with w_0 = 1, w_m>0 = 2."""
    nside, lmax = 16, 40
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    nalm = sphere.alm_size(lmax)
    a = torch.from_numpy(rng.standard_normal((3, nalm)) + 1j * rng.standard_normal((3, nalm))).to(cdtype)
    f = torch.from_numpy(rng.standard_normal((3, 12 * nside**2))).to(dtype)
    lhs = (torch_sht.synthesis(a, nside, lmax) * f).sum(-1)
    w = torch.from_numpy(np.where(sphere.alm.alm_m_index(lmax) > 0, 2.0, 1.0)).to(dtype)
    at = torch_sht.adjoint_synthesis(f, lmax)
    rhs = (w * (a.conj() * at).real).sum(-1)
    assert torch.allclose(lhs, rhs, rtol=tol, atol=tol * float(lhs.abs().max()))
    quad = torch_sht.analysis(f, lmax)
    assert torch.allclose(quad, at * (4 * math.pi / f.shape[-1]), rtol=tol, atol=tol * float(quad.abs().max()))


def test_gradcheck_tiny() -> None:
    gen = torch.Generator().manual_seed(0)
    nside, lmax = 2, 5
    maps = torch.randn(2, 48, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: torch_sht.analysis(m, lmax), (maps,))
    assert torch.autograd.gradgradcheck(lambda m: torch_sht.analysis(m, lmax), (maps,), fast_mode=True)
    alm = torch.randn(2, sphere.alm_size(lmax), dtype=torch.complex128, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: torch_sht.synthesis(a, nside, lmax), (alm,))
    small = torch.randn(1, 48, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: torch_sht.analysis(m, 3, mode="lsq"), (small,), fast_mode=True)


def test_lsq_matches_ducc0_on_bandlimited_maps(rng) -> None:
    nside, lmax = 16, 32
    alm = real_m0(sphere.analysis(rng.standard_normal((2, 12 * nside**2)), lmax), lmax)
    maps = sphere.synthesis(alm, nside, lmax)
    ref = sphere.analysis(maps, lmax, mode="lsq")
    got = torch_sht.analysis(torch.from_numpy(maps), lmax, mode="lsq")
    quad = torch_sht.analysis(torch.from_numpy(maps), lmax)
    assert rel(quad, alm) > 1e-3  # quadrature alone is not exact here ...
    assert rel(got, alm) <= 1e-8  # ... least squares is, like ducc0's pseudo_analysis
    assert rel(got, ref) <= 1e-8
    got32 = torch_sht.analysis(torch.from_numpy(maps).float(), lmax, mode="lsq")
    assert rel(got32, alm) <= 1e-5


def test_memory_budget_bounds_cache_and_keeps_results(monkeypatch, rng) -> None:
    nside, lmax = 32, 63
    maps = torch.from_numpy(rng.standard_normal((2, 12 * nside**2)))
    # small chunks so that the table of this size spans many of them
    monkeypatch.setattr(torch_sht, "CHUNK_BYTES", 64 << 10)
    torch_sht.clear_legendre_cache()
    try:
        uncached = torch_sht.analysis(maps, lmax, memory_budget=0)
        assert torch_sht.legendre_cache_nbytes() == 0
        plan = torch_sht._get_plan(nside, lmax, torch.float64, torch.device("cpu"))
        assert len(plan.chunks) > 4
        full = torch_sht.analysis(maps, lmax, memory_budget=1 << 30)
        table_bytes = torch_sht.legendre_cache_nbytes()
        # the whole table of this key: northern rings x (l, m) pairs (+ padding of the blocks)
        assert table_bytes >= 2 * nside * sphere.alm_size(lmax) * 8
        assert torch.equal(full, torch_sht.analysis(maps, lmax, memory_budget=1 << 30))
        budget = table_bytes // 3
        part = torch_sht.analysis(maps, lmax, memory_budget=budget)
        assert 0 < torch_sht.legendre_cache_nbytes() <= budget
        again = torch_sht.analysis(maps, lmax, memory_budget=budget)  # partly cached, partly recomputed
        for got in (full, part, again):
            assert rel(got, uncached.numpy()) <= 1e-14
        # another key under the same small budget evicts the first one, never exceeds it
        torch_sht.analysis(maps, 20, memory_budget=budget)
        assert torch_sht.legendre_cache_nbytes() <= budget
        synth = torch_sht.synthesis(full, nside, lmax, memory_budget=budget)
        ref = torch_sht.synthesis(full, nside, lmax, memory_budget=0)
        assert rel(synth, ref.numpy()) <= 1e-14
        assert torch_sht.legendre_cache_nbytes() <= budget
    finally:
        torch_sht.clear_legendre_cache()


def test_clear_errors(rng) -> None:
    with pytest.raises(ValueError, match="real"):
        torch_sht.analysis(torch.zeros(48, dtype=torch.complex128), 3)
    with pytest.raises(ValueError, match="HEALPix"):
        torch_sht.analysis(torch.zeros(50), 3)
    with pytest.raises(ValueError, match="mode"):
        torch_sht.analysis(torch.zeros(48), 3, mode="exact")
    with pytest.raises(ValueError, match="complex"):
        torch_sht.synthesis(torch.zeros(15), 2)
    with pytest.raises(ValueError, match="coefficients"):
        torch_sht.synthesis(torch.zeros(16, dtype=torch.complex128), 2, lmax=4)
    with pytest.raises(ValueError, match="memory_budget"):
        torch_sht.analysis(torch.zeros(48), 3, memory_budget=-1)
    with pytest.raises(ValueError, match="nthreads"):
        torch_sht.analysis(torch.zeros(48), 3, nthreads=0)
    with pytest.raises(ValueError, match="lmax"):
        torch_sht.analysis(torch.zeros(48), 20)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_matches_ducc0(rng) -> None:
    nside, lmax = 64, 127
    maps = rng.standard_normal((4, 12 * nside**2))
    ref = sphere.analysis(maps, lmax)
    x = torch.from_numpy(maps).cuda()
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        alm = torch_sht.analysis(x.to(dtype), lmax)
        assert alm.device.type == "cuda"
        assert rel(alm, ref) <= tol
        back = torch_sht.synthesis(alm, nside, lmax)
        assert back.device.type == "cuda"
        assert rel(back, sphere.synthesis(real_m0(alm.cpu().numpy(), lmax).astype(np.complex128), nside, lmax)) <= tol
    m = x[:1].clone().requires_grad_(True)
    torch_sht.analysis(m, lmax).abs().sum().backward()
    assert m.grad is not None and m.grad.device.type == "cuda" and torch.isfinite(m.grad).all()
