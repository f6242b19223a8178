"""torch spin-n synthesis (scatterdist.sphere.torch_spin) against ducc0, adjoints, gradients, op counts;
the torch backend's directional scattering (N > 1) against the numpy backend."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from scatterdist import Scattering
from scatterdist.sphere import torch_sht, torch_spin, triton_spin
from scatterdist.sphere.alm import alm_size
from scatterdist.sphere.healpix import ring_geometry

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: engine setting, torch backend memory budget: ducc0 (CPU default), tables, stream (nothing fits)
ENGINES = [("auto", None), ("torch", None), ("torch", 0)]


def ducc0_spin(alm: np.ndarray, nside: int, lmax: int, spin: int) -> np.ndarray:
    import ducc0

    return ducc0.sht.synthesis(alm=alm[:, None], lmax=lmax, spin=spin, mode="GRAD_ONLY", **ring_geometry(nside))


def random_alm(rng, batch: int, lmax: int) -> np.ndarray:
    a = rng.standard_normal((batch, alm_size(lmax))) + 1j * rng.standard_normal((batch, alm_size(lmax)))
    a[:, : lmax + 1] = a[:, : lmax + 1].real  # ducc0 ignores Im of m = 0, as the torch engines do
    return a


def rel(got: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(got.detach().numpy() - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("engine,budget", ENGINES)
@pytest.mark.parametrize("nside,lmax", [(8, 15), (8, 23), (16, 40), (32, 63)])
@pytest.mark.parametrize("spin", [1, 2, 3])
def test_spin_synthesis_and_adjoint_match_ducc0(nside, lmax, spin, engine, budget, monkeypatch) -> None:
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", engine)
    rng = np.random.default_rng(100 * nside + spin)
    a = random_alm(rng, 2, lmax)
    ref = ducc0_spin(a, nside, lmax, spin)
    maps = rng.standard_normal((2, 2, 12 * nside**2))
    import ducc0

    ref_adj = ducc0.sht.adjoint_synthesis(map=maps, lmax=lmax, spin=spin, mode="GRAD_ONLY", **ring_geometry(nside))[:, 0]
    for dtype, tol in ((torch.complex128, 1e-10), (torch.complex64, 1e-5)):
        got = torch_spin.spin_synthesis(torch.from_numpy(a).to(dtype), nside, spin, lmax, memory_budget=budget)
        assert got.shape == (2, 2, 12 * nside**2) and got.dtype == dtype.to_real()
        assert rel(got, ref) < tol, (dtype, rel(got, ref))
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        adj = torch_spin.spin_adjoint_synthesis(torch.from_numpy(maps).to(real), lmax, spin, memory_budget=budget)
        assert adj.dtype == dtype and rel(adj, ref_adj) < tol, (dtype, rel(adj, ref_adj))
    expected = "ducc0" if engine == "auto" else ("stream" if budget == 0 else "tables")
    assert torch_spin.spin_legendre_engine(nside, lmax, spin, memory_budget=budget).startswith(expected)


def test_deep_underflow_near_the_poles(monkeypatch) -> None:
    """nside 64, lmax 191: d^l_{m,+-s} near the poles far below 2**-300 (the exponent bookkeeping)."""
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")
    a = random_alm(np.random.default_rng(3), 1, 191)
    got = torch_spin.spin_synthesis(torch.from_numpy(a), 64, 2, 191)
    assert rel(got, ducc0_spin(a, 64, 191, 2)) < 1e-10


@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_adjoint_identity_and_gradcheck(engine, monkeypatch) -> None:
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", engine)
    gen = torch.Generator().manual_seed(0)
    nside, lmax, spin = 2, 5, 2
    a = torch.randn(3, alm_size(lmax), dtype=torch.complex128, generator=gen)
    f = torch.randn(3, 2, 48, dtype=torch.float64, generator=gen)
    w = torch_sht._m_weight(lmax, torch.float64, torch.device("cpu"))
    lhs = (torch_spin.spin_synthesis(a, nside, spin, lmax) * f).sum((-2, -1))
    rhs = (w * (a.conj() * torch_spin.spin_adjoint_synthesis(f, lmax, spin)).real).sum(-1)
    a0 = a.clone()
    a0[:, : lmax + 1] = a0[:, : lmax + 1].real  # Im of m = 0 is ignored by the synthesis
    rhs0 = (w * (a0.conj() * torch_spin.spin_adjoint_synthesis(f, lmax, spin)).real).sum(-1)
    torch.testing.assert_close(lhs, rhs0, rtol=1e-12, atol=1e-12)
    assert torch.allclose(rhs, rhs0)  # the adjoint's m = 0 terms are real
    for s in (1, 3):
        alm = torch.randn(2, alm_size(lmax), dtype=torch.complex128, generator=gen, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x: torch_spin.spin_synthesis(x, nside, s, lmax), (alm,))
        maps = torch.randn(2, 2, 48, dtype=torch.float64, generator=gen, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x: torch_spin.spin_adjoint_synthesis(x, lmax, s), (maps,))
        assert torch.autograd.gradgradcheck(lambda x: torch_spin.spin_synthesis(x, nside, s, lmax), (alm,),
                                            fast_mode=True)


def test_spin_tables_share_the_scalar_cache_and_budget(monkeypatch) -> None:
    """Spin tables are twice the scalar ones, live in the same Legendre cache and obey its budget."""
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")
    torch_sht.clear_legendre_cache()
    nside, lmax = 16, 31
    plan = torch_sht._get_plan(nside, lmax, torch.float64, torch.device("cpu"))
    one_group = torch_sht._tables_bytes(plan, 1)
    a = torch.from_numpy(random_alm(np.random.default_rng(4), 1, lmax))
    ref = torch_spin.spin_synthesis(a, nside, 2, lmax)
    assert torch_spin.spin_legendre_engine(nside, lmax, 2, torch.float64) == "tables (1 group)"
    assert torch_sht.legendre_cache_nbytes("cpu") == 2 * one_group
    torch_sht.clear_legendre_cache()
    budget = 3 * one_group  # the scalar tables would fit its shares, the spin tables (2x) not in one group
    assert torch_spin.spin_legendre_engine(nside, lmax, 2, torch.float64, memory_budget=budget) != "tables (1 group)"
    got = torch_spin.spin_synthesis(a, nside, 2, lmax, memory_budget=budget)
    assert 0 < torch_sht.legendre_cache_nbytes("cpu") <= budget
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch_sht.clear_legendre_cache()


def test_input_errors() -> None:
    alm = torch.zeros(1, alm_size(7), dtype=torch.complex128)
    with pytest.raises(ValueError, match="spin must be an integer in"):
        torch_spin.spin_synthesis(alm, 4, 0)
    with pytest.raises(ValueError, match="complex64 or complex128"):
        torch_spin.spin_synthesis(alm.real, 4, 1)
    with pytest.raises(ValueError, match=r"\(Q, U\)"):
        torch_spin.spin_adjoint_synthesis(torch.zeros(1, 3, 192), 7, 1)


def test_spin_ops_independent_of_nside(monkeypatch) -> None:
    """Tables engine: one synthesis + adjoint pair is a fixed number of aten ops from nside 16 to 64,
    at most 1.5x the scalar pair's (measured: 141 against 105)."""
    from test_torch_ops import OpCounter

    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")

    def ops(pair) -> int:
        pair()  # plans and tables built outside the count
        with OpCounter() as counter:
            pair()
        return counter.total

    counts, scalar = set(), set()
    for nside in (16, 64):
        lmax = 2 * nside - 1
        a = torch.from_numpy(random_alm(np.random.default_rng(0), 2, lmax)).to(torch.complex64)
        counts.add(ops(lambda: torch_spin.spin_adjoint_synthesis(torch_spin.spin_synthesis(a, nside, 3, lmax), lmax, 3)))
        scalar.add(ops(lambda: torch_sht.adjoint_synthesis(torch_sht.synthesis(a, nside, lmax), lmax)))
    assert len(counts) == 1 and len(scalar) == 1, (counts, scalar)
    assert counts.pop() <= 1.5 * scalar.pop()


# ------------------------------------------------------------------ directional scattering


@pytest.mark.parametrize("N", [2, 4])
def test_directional_scattering_torch_equals_numpy(N, monkeypatch) -> None:
    nside = 16
    x = np.random.default_rng(N).standard_normal((2, 12 * nside**2))
    sc_np = Scattering(nside, N=N)
    ref = sc_np(x)
    assert any(h > 0 for h in sc_np.path_coords()["orientation_harmonic"])
    for engine, budget in ENGINES:
        monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", engine)
        options = {} if budget is None else {"memory_budget": budget}
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
            sc = Scattering(nside, N=N, backend="torch", device="cpu", dtype=dtype, **options)
            assert sc.path_labels == sc_np.path_labels
            got = sc(torch.from_numpy(x)).numpy()
            err = np.abs(got - ref).max() / np.abs(ref).max()
            assert err < tol, (engine, budget, dtype, err)


def test_directional_scattering_ops_do_not_grow_with_the_map(monkeypatch) -> None:
    """Scattering(N=4), same filter bank (L = 32) on nside 16 and 64 maps: the same aten op count."""
    from test_torch_ops import ops_of_call

    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")
    counts = {}
    for nside in (16, 64):
        sc = Scattering(nside, L=32, N=4, backend="torch", device="cpu", dtype=torch.float32, nthreads=1)
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 12 * nside**2))).float()
        counts[nside] = ops_of_call(sc, x).total
    assert counts[16] == counts[64], counts


def test_oriented_moduli_torch_and_numpy_paths_agree() -> None:
    """The torch backend's reduction over orientation: the differentiable torch path (taken for
    CUDA tensors and whenever a gradient is needed) equals the numpy path of CPU tensors."""
    from scatterdist.scattering.backend.torch_backend import TorchBackend
    from scatterdist.scattering.directional import oriented_moduli

    be = TorchBackend(device="cpu", dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    comps = [torch.randn(3, 768, dtype=torch.float64, generator=gen) for _ in range(4)]
    ref = oriented_moduli([c.numpy() for c in comps], 4, 1)
    plain = be.oriented_moduli(comps, 4, 1)
    with torch.enable_grad():
        graded = be.oriented_moduli([c.clone().requires_grad_() for c in comps], 4, 1)
    assert len(plain) == len(graded) == 2 and all(g.requires_grad for g in graded)
    for r, a, b in zip(ref, plain, graded):
        np.testing.assert_allclose(a.numpy(), r, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(b.detach().numpy(), r, rtol=1e-13, atol=1e-13)


def test_directional_scattering_gradcheck() -> None:
    nside = 8
    sc = Scattering(nside, N=4, backend="torch", device="cpu", dtype=torch.float64)
    x = torch.randn(1, 12 * nside**2, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                    requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: sc(m), (x,), fast_mode=True)


def test_scatter_cli_torch_backend_directional(tmp_path) -> None:
    import xarray as xr

    nside, n = 16, 2
    maps = np.random.default_rng(7).standard_normal((n, 12 * nside**2))
    xr.Dataset({"maps": (("map", "pixel"), maps)},
               coords={"map": np.array([f"sky{i}" for i in range(n)], dtype=object)}).to_zarr(
        tmp_path / "maps.zarr", zarr_format=3, consolidated=False)
    out = tmp_path / "coeffs.zarr"
    proc = subprocess.run([sys.executable, "-m", "scatterdist", "scatter", str(tmp_path / "maps.zarr"), "--output",
                           str(out), "--N", "4", "--backend", "torch", "--device", "cpu", "--workers", "1",
                           "--shard-size", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ds = xr.open_zarr(out, consolidated=False)
    assert json.loads(ds.attrs["scattering_config"])["N"] == 4
    assert "torch backend, --device cpu" in proc.stdout + proc.stderr  # the torch transform ran
    sc = Scattering(nside, N=4)
    np.testing.assert_array_equal(ds["orientation_harmonic"].values, sc.path_coords()["orientation_harmonic"])
    coeffs = ds["coefficients"].values
    coeffs = coeffs[:, 0] if coeffs.ndim == 4 else coeffs
    ref = sc(maps)
    np.testing.assert_allclose(coeffs, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


_FUSED_SPIN_CHECK = r"""
import numpy as np
import torch
import ducc0
from scatterdist.sphere import torch_sht, torch_spin, triton_spin
from scatterdist.sphere.healpix import ring_geometry

assert triton_spin.usable(torch.device("cpu"))
torch.set_num_threads(1)
errors = {}
# 1. the kernels against the tables (orders m < s start late: s = 3 at lmax 7)
nside, lmax = 4, 7
gen = torch.Generator().manual_seed(3)
for s in (1, 3):
    for dtype in (torch.float64, torch.float32):
        plan = torch_sht._get_plan(nside, lmax, dtype, torch.device("cpu"))
        coeffs = torch.randn(2, plan.nalm, 4, generator=gen, dtype=torch.float64).to(dtype)
        ref = torch_spin._legendre_synthesis(plan, s, coeffs, 1 << 30, "G1")
        got = torch_spin._legendre_synthesis(plan, s, coeffs, 1 << 30, "fused")
        assert got.is_contiguous() and got.shape == ref.shape == (2, lmax + 1, 2, 2 * nside, 4)
        errors[f"synthesis s={s} {dtype}"] = float((got - ref).abs().max() / ref.abs().max())
        td = torch.randn(2, lmax + 1, 2, 2 * nside, 4, generator=gen, dtype=torch.float64).to(dtype)
        ref = torch_spin._legendre_adjoint(plan, s, td, 1 << 30, "G1")
        got = torch_spin._legendre_adjoint(plan, s, td, 1 << 30, "fused")
        errors[f"adjoint s={s} {dtype}"] = float((got - ref).abs().max() / ref.abs().max())
# 2. whole transforms through the fused engine ("fused" raises instead of falling back) against ducc0
torch_sht.LEGENDRE_ENGINE = "fused"
assert torch_spin.spin_legendre_engine(nside, lmax, 2) == "fused"
rng = np.random.default_rng(5)
alm = rng.standard_normal((1, 36)) + 1j * rng.standard_normal((1, 36))
alm[:, :8] = alm[:, :8].real
ref = ducc0.sht.synthesis(alm=alm[:, None], lmax=lmax, spin=2, mode="GRAD_ONLY", **ring_geometry(nside))
maps = rng.standard_normal((1, 2, 192))
ref_adj = ducc0.sht.adjoint_synthesis(map=maps, lmax=lmax, spin=2, mode="GRAD_ONLY", **ring_geometry(nside))[:, 0]
def rel(got, want):
    return float(np.abs(got.numpy() - want).max() / np.abs(want).max())
errors["spin_synthesis float64"] = rel(torch_spin.spin_synthesis(torch.from_numpy(alm), nside, 2, lmax), ref)
errors["spin_adjoint float64"] = rel(torch_spin.spin_adjoint_synthesis(torch.from_numpy(maps), lmax, 2), ref_adj)
errors["spin_synthesis float32"] = rel(torch_spin.spin_synthesis(torch.from_numpy(alm).to(torch.complex64), nside, 2, lmax), ref)
assert not torch_sht._FUSED_FAILED
print(repr(errors))
"""


@pytest.mark.skipif(not triton_spin.available(), reason="triton is not installed")
def test_fused_spin_kernels_in_interpret_mode() -> None:
    """The Triton spin kernels on CPU tensors under TRITON_INTERPRET=1 (a fresh interpreter):
    against the tables and, through the whole transform, against ducc0."""
    import ast
    import os

    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _FUSED_SPIN_CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 11
    for name, err in errors.items():
        assert err <= (1e-5 if "float32" in name else 1e-10), (name, err)


def test_benchmark_torch_and_ops_rows() -> None:
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "directional.py"
    out = subprocess.run([sys.executable, str(script), "--nside", "16", "--rounds", "1", "--threads", "1", "--maps", "1",
                          "--torch", "--ops", "--no-pys2let"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torch backend (CPU, 1 threads): float64" in out.stdout and "x numpy), float32" in out.stdout
    assert "aten ops per torch scattering call (1 maps, GPU engines on CPU): N=1" in out.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("engine", ["auto", "fused"])
def test_cuda_spin_engines_match_ducc0_and_numpy_backend(engine, monkeypatch) -> None:
    """On a GPU: tables ("auto") and the compiled Triton spin kernels ("fused") against ducc0 at
    nside 64, lmax 191 (scaled starts near the poles), and Scattering(N=4) against numpy."""
    if engine == "fused" and not triton_spin.usable(torch.device("cuda")):
        pytest.skip("triton is not installed")
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", engine)
    dev = torch.device("cuda")
    rng = np.random.default_rng(11)
    nside, lmax = 64, 191
    a = random_alm(rng, 2, lmax)
    for spin in (1, 3):
        ref = ducc0_spin(a, nside, lmax, spin)
        for dtype, tol in ((torch.complex128, 1e-10), (torch.complex64, 1e-5)):
            got = torch_spin.spin_synthesis(torch.from_numpy(a).to(dtype).to(dev), nside, spin, lmax)
            assert rel(got.cpu(), ref) < tol, (spin, dtype)
    x = rng.standard_normal((2, 12 * 32**2))
    ref = Scattering(32, N=4)(x)
    got = Scattering(32, N=4, backend="torch", device="cuda", dtype=torch.float64)(torch.from_numpy(x)).cpu().numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-10
