"""Scattering with backend="torch" against the numpy (ducc0) backend; batching, devices, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scatterdist import InvalidMapError, Scattering
from scatterdist.scattering.backend import Backend, get_backend
from scatterdist.scattering.backend.torch_backend import TorchBackend

HAS_CUDA = torch.cuda.is_available()


def rel_max(got, ref) -> float:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def maps32() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((4, 12 * 32**2))


@pytest.fixture(scope="module")
def numpy32(maps32) -> tuple[Scattering, np.ndarray]:
    sc = Scattering(32, nthreads=1)
    return sc, sc(maps32)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_equals_numpy_backend(dtype: torch.dtype, tol: float, maps32, numpy32) -> None:
    sc_np, ref = numpy32
    sc = Scattering(32, backend="torch", device="cpu", dtype=dtype, nthreads=1)
    assert (sc.n_paths, sc.npix_out, sc.paths) == (sc_np.n_paths, sc_np.npix_out, sc_np.paths)
    out = sc(torch.from_numpy(maps32))
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.device.type == "cpu"
    assert out.shape == ref.shape == (4, 7, 768)
    assert rel_max(out, ref) <= tol
    inv = sc.invariants(torch.from_numpy(maps32))
    assert inv.shape == (4, 7)
    assert rel_max(inv, sc_np.invariants(maps32)) <= tol


def test_nside64_float32_equals_numpy() -> None:
    maps = np.random.default_rng(5).standard_normal((2, 12 * 64**2))
    ref = Scattering(64, nthreads=1)(maps)
    out = Scattering(64, backend="torch", device="cpu", nthreads=1)(torch.from_numpy(maps))
    assert out.shape == ref.shape == (2, 11, 768) and out.dtype == torch.float32
    assert rel_max(out, ref) <= 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_batch_of_1_and_16_agree(dtype: torch.dtype, tol: float) -> None:
    nside = 16
    maps = torch.from_numpy(np.random.default_rng(3).standard_normal((16, 12 * nside**2))).to(dtype)
    sc = Scattering(nside, backend="torch", device="cpu", dtype=dtype, depth=2)
    batch = sc(maps)
    single = torch.stack([sc(maps[i : i + 1])[0] for i in range(16)])
    one_d = sc(maps[7])
    assert batch.shape == (16, sc.n_paths, sc.npix_out) and one_d.shape == (sc.n_paths, sc.npix_out)
    assert rel_max(single, batch.numpy()) <= tol
    assert rel_max(one_d, batch[7].numpy()) <= tol


def test_lsq_analysis_equals_numpy(red_maps) -> None:
    maps, _ = red_maps  # bandlimited at L = 64 = 2*nside: least squares is exact there
    ref = Scattering(32, analysis="lsq", nthreads=1)(maps)
    out = Scattering(32, analysis="lsq", backend="torch", device="cpu", dtype=torch.float64)(torch.from_numpy(maps))
    assert rel_max(out, ref) <= 1e-8


def test_numpy_input_and_other_dtype_are_converted(maps32, numpy32) -> None:
    _, ref = numpy32
    sc = Scattering(32, backend="torch", device="cpu", dtype="float64")
    assert rel_max(sc(maps32), ref) <= 1e-8  # numpy float64 in, float64 tensor out
    out = sc(torch.from_numpy(maps32).float())  # float32 tensor is computed in float64
    assert out.dtype == torch.float64


def test_gradient_matches_finite_difference() -> None:
    nside = 16
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 12 * nside**2, dtype=torch.float64, generator=gen)
    v = torch.randn(1, 12 * nside**2, dtype=torch.float64, generator=gen)
    sc = Scattering(nside, backend="torch", device="cpu", dtype=torch.float64)
    w = torch.randn(1, sc.n_paths, sc.npix_out, dtype=torch.float64, generator=gen)
    xg = x.clone().requires_grad_(True)
    (sc(xg) * w).sum().backward()
    eps = 1e-6
    numeric = ((sc(x + eps * v) * w).sum() - (sc(x - eps * v) * w).sum()) / (2 * eps)
    analytic = (xg.grad * v).sum()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().max() > 0
    assert abs(float(numeric - analytic)) <= 1e-6 * max(1.0, abs(float(analytic)))


def test_backend_protocol_and_errors(maps32) -> None:
    be = get_backend("torch", device="cpu", dtype=torch.float64)
    assert isinstance(be, TorchBackend) and isinstance(be, Backend) and be.name == "torch"
    idx = be.from_numpy(np.array([0, 2], dtype=np.int32))
    kernel = be.from_numpy(np.array([1.0, 2.0]))
    assert idx.dtype == torch.int64 and kernel.dtype == torch.float64
    with pytest.raises(ValueError, match="dtype"):
        TorchBackend(dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype"):
        TorchBackend(dtype="int8")
    with pytest.raises(ValueError, match="nthreads"):
        TorchBackend(nthreads=0)
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="CUDA"):
            TorchBackend(device="cuda")
    sc = Scattering(32, backend="torch", device="cpu")
    # (NaN / UNSEEN pixels are masked by the transform since the cut-sky contract, not refused)
    with pytest.raises(InvalidMapError):
        sc(torch.zeros(2, 100))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_equals_numpy(maps32, numpy32) -> None:
    _, ref = numpy32
    sc = Scattering(32, backend="torch", device="cuda", dtype=torch.float32)
    x = torch.from_numpy(maps32).cuda()
    out = sc(x)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert rel_max(out, ref) <= 1e-4
    xg = x.clone().requires_grad_(True)
    sc(xg).sum().backward()
    assert xg.grad.device.type == "cuda" and torch.isfinite(xg.grad).all()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("budget", [None, 0])
def test_cuda_nside128_equals_numpy_tables_and_fused(budget) -> None:
    """float32 on the GPU within 1e-4 of ducc0 float64 with tables (default budget) and with
    the fused Triton kernels (budget 0: no table at all), float64 within 1e-8."""
    from scatterdist.sphere import triton_legendre

    if budget == 0 and not triton_legendre.usable(torch.device("cuda")):
        pytest.skip("triton is not installed")
    maps = np.random.default_rng(8).standard_normal((4, 12 * 128**2))
    ref = Scattering(128)(maps)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-8)):
        sc = Scattering(128, backend="torch", device="cuda", dtype=dtype, memory_budget=budget)
        out = sc(torch.from_numpy(maps).cuda())
        assert out.device.type == "cuda" and out.dtype == dtype
        assert rel_max(out, ref) <= tol
