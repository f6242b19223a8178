"""torch HEALPix SHT (scatterdist.sphere.torch_sht) against the ducc0 path, adjoints, gradients, cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scatterdist import sphere
from scatterdist.sphere import torch_sht, triton_legendre

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


@pytest.fixture(params=["auto", "torch"])
def engine(request, monkeypatch) -> str:
    """Run a test with the default engine ("auto": ducc0 on CPU tensors) and with the torch engines."""
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", request.param)
    return request.param


# nside 4..128; lmax from tiny to 3*nside-1 (aliased in the polar caps, and deep
# underflow of lambda_mm near the poles at nside 64, lmax 191)
CASES = [(4, 0), (4, 7), (4, 11), (8, 3), (8, 23), (16, 31), (16, 47), (32, 20), (32, 63), (64, 127), (64, 191), (128, 255)]


@pytest.mark.parametrize("nside,lmax", CASES)
def test_matches_ducc0(nside: int, lmax: int, rng, engine: str) -> None:
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
def test_adjoint_identity(dtype: torch.dtype, tol: float, rng, engine: str) -> None:
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


def test_gradcheck_tiny(engine: str) -> None:
    gen = torch.Generator().manual_seed(0)
    nside, lmax = 2, 5
    maps = torch.randn(2, 48, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: torch_sht.analysis(m, lmax), (maps,))
    assert torch.autograd.gradgradcheck(lambda m: torch_sht.analysis(m, lmax), (maps,), fast_mode=True)
    alm = torch.randn(2, sphere.alm_size(lmax), dtype=torch.complex128, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: torch_sht.synthesis(a, nside, lmax), (alm,))
    small = torch.randn(1, 48, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: torch_sht.analysis(m, 3, mode="lsq"), (small,), fast_mode=True)


def test_lsq_matches_ducc0_on_bandlimited_maps(rng, engine: str) -> None:
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
    # small stream chunks so that the table of this size spans many of them
    monkeypatch.setattr(torch_sht, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")  # the budget-driven torch engines
    monkeypatch.setattr(torch_sht, "ONE_GROUP_SHARE", 0.0)  # small keys in one group: checked at the end
    torch_sht.clear_legendre_cache()
    try:
        assert torch_sht.legendre_engine(nside, lmax, torch.float64, memory_budget=0) == "stream"
        uncached = torch_sht.analysis(maps, lmax, memory_budget=0)
        assert torch_sht.legendre_cache_nbytes() == 0
        plan = torch_sht._get_plan(nside, lmax, torch.float64, torch.device("cpu"))
        assert len(torch_sht._layout(plan, "stream").units) > 4
        # whole tables in 2 groups: northern rings x (l, m) pairs, plus the padding of the groups
        assert torch_sht.legendre_engine(nside, lmax, torch.float64, memory_budget=1 << 30) == "tables (2 groups)"
        full = torch_sht.analysis(maps, lmax, memory_budget=1 << 30)
        table_bytes = torch_sht.legendre_cache_nbytes()
        assert 2 * nside * sphere.alm_size(lmax) * 8 <= table_bytes <= 2 * nside * sphere.alm_size(lmax) * 8 * 1.6
        assert torch.equal(full, torch_sht.analysis(maps, lmax, memory_budget=1 << 30))
        # a budget between the 8-group and the 2-group sizes: more groups, less padding
        g8 = torch_sht._tables_bytes(plan, 8)
        assert g8 < table_bytes
        assert torch_sht.legendre_engine(nside, lmax, torch.float64, memory_budget=2 * g8) in (
            "tables (4 groups)", "tables (8 groups)")
        # below the smallest table: the stream engine caches a prefix of its chunks
        budget = g8 // 3
        assert torch_sht.legendre_engine(nside, lmax, torch.float64, memory_budget=budget) == "stream"
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
        tables = torch_sht.synthesis(full, nside, lmax, memory_budget=1 << 30)
        assert rel(synth, ref.numpy()) <= 1e-14
        assert rel(tables, ref.numpy()) <= 1e-13
        assert torch_sht.legendre_cache_nbytes() <= 1 << 30
        # one group (a padded rectangle) for a key far below the budget: same numbers
        monkeypatch.setattr(torch_sht, "ONE_GROUP_SHARE", 1 / 16)
        assert torch_sht.legendre_engine(nside, lmax, torch.float64, memory_budget=1 << 30) == "tables (1 group)"
        assert rel(torch_sht.analysis(maps, lmax, memory_budget=1 << 30), uncached.numpy()) <= 1e-14
        assert rel(torch_sht.synthesis(full, nside, lmax, memory_budget=1 << 30), ref.numpy()) <= 1e-13
    finally:
        torch_sht.clear_legendre_cache()


def test_engine_choice_errors(monkeypatch) -> None:
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "magic")
    with pytest.raises(ValueError, match="LEGENDRE_ENGINE"):
        torch_sht.analysis(torch.zeros(48), 3)
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "ducc0")  # ducc0 only takes CPU tensors
    with pytest.raises(RuntimeError, match="ducc0 only runs on CPU"):
        torch_sht.legendre_engine(8, 15, device="meta")
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "auto")  # auto: never ducc0 off the CPU
    assert torch_sht.legendre_engine(8, 15, device="meta") != "ducc0"
    if not triton_legendre.usable(torch.device("cpu")):
        monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "fused")
        with pytest.raises(RuntimeError, match="fused"):
            torch_sht.analysis(torch.zeros(48), 3)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_default_cpu_engine_is_ducc0_and_agrees_with_tables(monkeypatch, dtype: torch.dtype, tol: float, rng) -> None:
    """CPU tensors go through ducc0 by default (no tables, no torch ops), in the tensor's
    precision; the forced tables engine gives the same transforms and gradients."""
    from torch.utils._python_dispatch import TorchDispatchMode

    nside, lmax = 32, 63
    maps = torch.from_numpy(rng.standard_normal((3, 12 * nside**2))).to(dtype).requires_grad_()
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "auto")
    assert torch_sht.legendre_engine(nside, lmax, dtype, "cpu") == "ducc0"
    torch_sht.clear_legendre_cache()
    alm = torch_sht.analysis(maps, lmax, nthreads=2)
    back = torch_sht.synthesis(alm, nside, lmax)
    (grad,) = torch.autograd.grad((back**2).sum(), maps)
    assert alm.dtype == (torch.complex64 if dtype == torch.float32 else torch.complex128)
    assert back.dtype == dtype and grad.dtype == dtype
    assert torch_sht.legendre_cache_nbytes() == 0  # ducc0 computes its Legendre values on the fly

    class Count(TorchDispatchMode):
        ffts = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ffts += "fft" in str(func) or "bmm" in str(func)
            return func(*args, **(kwargs or {}))

    with Count():
        torch_sht.synthesis(torch_sht.analysis(maps.detach(), lmax), nside, lmax)
    assert Count.ffts == 0  # no torch FFT nor table product: the transform ran in ducc0

    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "tables")
    assert torch_sht.legendre_engine(nside, lmax, dtype, "cpu").startswith("tables")
    ref_alm = torch_sht.analysis(maps, lmax)
    ref_back = torch_sht.synthesis(ref_alm, nside, lmax)
    (ref_grad,) = torch.autograd.grad((ref_back**2).sum(), maps)
    assert rel(alm, ref_alm.detach().numpy()) <= tol
    assert rel(back, ref_back.detach().numpy()) <= tol
    assert rel(grad, ref_grad.numpy()) <= tol
    # forcing ducc0 on a CPU tensor is the default path (one thread here, two above: ducc0's
    # multithreaded sums may differ in the last bits)
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "ducc0")
    assert torch_sht.legendre_engine(nside, lmax, dtype, "cpu") == "ducc0"
    assert rel(torch_sht.analysis(maps.detach(), lmax, nthreads=1), alm.detach().numpy()) <= tol


def test_ring_ffts_use_few_kernels(monkeypatch) -> None:
    """All ring FFTs of a transform are O(1) calls: the FFT count does not grow with nside."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")  # the torch engines (a GPU's launches)
    counts = {}
    for nside in (8, 32):
        lmax = 2 * nside - 1
        maps = torch.randn(2, 12 * nside**2, dtype=torch.float64)
        alm = torch_sht.analysis(maps, lmax)
        torch_sht.synthesis(alm, nside, lmax)  # plans and tables built before counting
        with Count() as c:
            torch_sht.synthesis(torch_sht.analysis(maps, lmax), nside, lmax)
        counts[nside] = (len(c.ops), sum("fft" in op for op in c.ops))
    assert counts[8] == counts[32]  # same ops whatever the number of rings and degrees
    n_ops, n_fft = counts[32]
    assert n_fft <= 2 + 4 * torch_sht.POLAR_GROUPS and n_ops <= 150


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


_FUSED_SCALING_CHECK = r"""
import torch
from scatterdist.sphere import torch_sht, triton_legendre

torch.set_num_threads(1)
nside, lmax = 128, 255
plan = torch_sht._get_plan(nside, lmax, torch.float64, torch.device("cpu"))
assert int(plan.scale.min()) <= -5  # lambda_mm scaled by 2**-300 several times near the poles
gen = torch.Generator().manual_seed(3)
coeffs = torch.randn(plan.nalm, 4, generator=gen, dtype=torch.float64)
tables = torch_sht._legendre_synthesis(plan, coeffs, 1 << 30)
fused = triton_legendre.synthesis_legendre(coeffs, plan.cos_theta, plan.start, plan.scale, lmax)
errors = {"synthesis": float((fused - tables).abs().max() / tables.abs().max())}
td = torch.randn(lmax + 1, 2, 2 * nside, 4, generator=gen, dtype=torch.float64)
tables = torch_sht._legendre_adjoint(plan, td, 1 << 30)
fused = triton_legendre.adjoint_legendre(td, plan.cos_theta, plan.start, plan.scale, lmax, plan.nalm)
errors["adjoint"] = float((fused - tables).abs().max() / tables.abs().max())
print(repr(errors))
"""


@pytest.mark.slow
def test_fused_kernels_across_the_scaling_boundary_in_interpret_mode() -> None:
    """nside 128, lmax 255 in float64: ring recurrences start scaled (lambda_mm below 2**-300 near
    the poles) and cross back to unscaled values inside the kernels' 32-degree blocks; synthesis and
    adjoint agree with the tables engine (measured 2e-13 / 4e-14; about 3 minutes interpreted)."""
    import ast
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _FUSED_SCALING_CHECK], env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert max(errors.values()) <= 1e-10, errors


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


_FUSED_CHECK = r"""
import sys
import numpy as np
import torch
from scatterdist import sphere
from scatterdist.sphere import torch_sht, triton_legendre

assert triton_legendre.interpret_mode() and triton_legendre.usable(torch.device("cpu"))
torch.set_num_threads(1)
errors = {}
# 1. the kernels against tabulated values, where lambda_mm is scaled near the poles; lmax 40:
#    two 32-degree blocks for the orders m <= 8, the second one partial; nside 128: 256 rings,
#    several ring blocks (the adjoint adds into its rows from the second one on)
for nside, lmax in ((32, 40), (128, 20)):
    for dtype in (torch.float64, torch.float32):
        plan = torch_sht._get_plan(nside, lmax, dtype, torch.device("cpu"))
        assert int(plan.scale.min()) < 0  # the 2**-300 exponent path is exercised
        gen = torch.Generator().manual_seed(3)
        coeffs = torch.randn(plan.nalm, 4, generator=gen, dtype=torch.float64).to(dtype)
        tables = torch_sht._legendre_synthesis(plan, coeffs, 1 << 30)
        fused = triton_legendre.synthesis_legendre(coeffs, plan.cos_theta, plan.start, plan.scale, lmax)
        assert fused.shape == tables.shape == (lmax + 1, 2, 2 * nside, 4)
        errors[f"synthesis {dtype} lmax {lmax}"] = float((fused - tables).abs().max() / tables.abs().max())
        td = torch.randn(lmax + 1, 2, 2 * nside, 4, generator=gen, dtype=torch.float64).to(dtype)
        tables = torch_sht._legendre_adjoint(plan, td, 1 << 30)
        fused = triton_legendre.adjoint_legendre(td, plan.cos_theta, plan.start, plan.scale, lmax, plan.nalm)
        assert fused.shape == tables.shape == (plan.nalm, 4)
        errors[f"adjoint {dtype} lmax {lmax}"] = float((fused - tables).abs().max() / tables.abs().max())
# 2. whole transforms through the fused engine against ducc0
torch_sht.LEGENDRE_ENGINE = "fused"
nside, lmax = 4, 11
assert torch_sht.legendre_engine(nside, lmax) == "fused"
maps = np.random.default_rng(5).standard_normal((2, 12 * nside**2))
ref = sphere.analysis(maps, lmax, nthreads=1)
alm = ref.copy()
alm[:, : lmax + 1] = alm[:, : lmax + 1].real
ref_maps = sphere.synthesis(alm, nside, lmax, nthreads=1)
def rel(got, want):
    return float(np.linalg.norm(got.numpy() - want) / np.linalg.norm(want))
errors["analysis float64"] = rel(torch_sht.analysis(torch.from_numpy(maps), lmax), ref)
errors["synthesis float64"] = rel(torch_sht.synthesis(torch.from_numpy(alm), nside, lmax), ref_maps)
errors["analysis float32"] = rel(torch_sht.analysis(torch.from_numpy(maps).float(), lmax), ref)
errors["synthesis float32"] = rel(torch_sht.synthesis(torch.from_numpy(alm).to(torch.complex64), nside, lmax), ref_maps)
print(repr(errors))
"""


@pytest.mark.skipif(not triton_legendre.available(), reason="triton is not installed")
def test_fused_triton_kernels_in_interpret_mode() -> None:
    """The Triton kernels run on CPU tensors under TRITON_INTERPRET=1 (set before import,
    hence a fresh interpreter): against tables (with scaled lambda_mm) and against ducc0."""
    import ast
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _FUSED_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    for name, err in errors.items():
        tol = 1e-5 if "float32" in name else 1e-10
        assert err <= tol, (name, err)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_fused_triton_engine_matches_ducc0_and_tables(monkeypatch, rng) -> None:
    """The compiled Triton kernels on a GPU: forced 'fused' engine against ducc0 (float32 and
    float64, aliased polar rings, scaled lambda_mm at nside 64), and the kernels against tables."""
    if not triton_legendre.usable(torch.device("cuda")):
        pytest.skip("triton is not installed")
    dev = torch.device("cuda")
    nside, lmax = 64, 191
    maps = rng.standard_normal((3, 12 * nside**2))
    ref = sphere.analysis(maps, lmax)
    alm = real_m0(ref, lmax)
    ref_maps = sphere.synthesis(alm, nside, lmax)
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "fused")
    assert torch_sht.legendre_engine(nside, lmax, torch.float32, dev) == "fused"
    x = torch.from_numpy(maps).to(dev)
    a = torch.from_numpy(alm).to(dev)
    for dtype, cdtype, tol in ((torch.float64, torch.complex128, 1e-10), (torch.float32, torch.complex64, 1e-5)):
        assert rel(torch_sht.analysis(x.to(dtype), lmax), ref) <= tol
        assert rel(torch_sht.synthesis(a.to(cdtype), nside, lmax), ref_maps) <= tol
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "auto")
    plan = torch_sht._get_plan(nside, lmax, torch.float64, dev)
    coeffs = torch.randn(plan.nalm, 6, dtype=torch.float64, device=dev)
    tables = torch_sht._legendre_synthesis(plan, coeffs, 1 << 30)
    fused = triton_legendre.synthesis_legendre(coeffs, plan.cos_theta, plan.start, plan.scale, lmax)
    assert float((fused - tables).abs().max() / tables.abs().max()) <= 1e-12
    td = torch.randn(lmax + 1, 2, 2 * nside, 6, dtype=torch.float64, device=dev)
    tables = torch_sht._legendre_adjoint(plan, td, 1 << 30)
    fused = triton_legendre.adjoint_legendre(td, plan.cos_theta, plan.start, plan.scale, lmax, plan.nalm)
    assert float((fused - tables).abs().max() / tables.abs().max()) <= 1e-12


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_beyond_budget_uses_fused_engine_and_gradients(rng) -> None:
    """Budget 0 on CUDA: no tables, the fused kernels, and gradients through the adjoints."""
    if not triton_legendre.usable(torch.device("cuda")):
        pytest.skip("triton is not installed")
    nside, lmax = 32, 63
    assert torch_sht.legendre_engine(nside, lmax, torch.float32, "cuda", memory_budget=0) == "fused"
    maps = rng.standard_normal((2, 12 * nside**2))
    x = torch.from_numpy(maps).cuda().requires_grad_(True)
    alm = torch_sht.analysis(x, lmax, memory_budget=0)
    assert rel(alm, sphere.analysis(maps, lmax)) <= 1e-10
    (torch_sht.synthesis(alm, nside, lmax, memory_budget=0) ** 2).sum().backward()
    grad_fused = x.grad.clone()
    x.grad = None
    alm = torch_sht.analysis(x, lmax, memory_budget=1 << 30)
    (torch_sht.synthesis(alm, nside, lmax, memory_budget=1 << 30) ** 2).sum().backward()
    assert float((grad_fused - x.grad).abs().max() / x.grad.abs().max()) <= 1e-10
