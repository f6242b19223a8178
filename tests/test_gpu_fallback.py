"""Robust on real nodes (issue 20, build 3): a Triton failure falls back to a non-Triton engine
with one warning, never a failed map; every Triton launch runs under the tensor's device guard."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from scatterdist import sphere
from scatterdist.sphere import torch_sht, triton_legendre

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_triton_failure_falls_back_with_one_warning(monkeypatch) -> None:
    """The fused engine is chosen (the budget holds no table) and its launch fails as a node
    without a working toolchain would: the transforms still match ducc0, one warning in all."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("PTX .version 8.7 does not support .target sm_90a (ptxas fatal)")

    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")
    monkeypatch.setattr(triton_legendre, "usable", lambda device: True)
    monkeypatch.setattr(triton_legendre, "synthesis_legendre", broken)
    monkeypatch.setattr(triton_legendre, "adjoint_legendre", broken)
    torch_sht.clear_legendre_cache()
    nside, lmax = 8, 15
    maps = np.random.default_rng(2).standard_normal((2, 12 * nside**2))
    ref = sphere.analysis(maps, lmax, nthreads=1)
    try:
        assert torch_sht.legendre_engine(nside, lmax, torch.float64, memory_budget=0) == "fused"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            alm = torch_sht.analysis(torch.from_numpy(maps), lmax, memory_budget=0)
            back = torch_sht.synthesis(alm, nside, lmax, memory_budget=0)
            again = torch_sht.analysis(torch.from_numpy(maps), lmax, memory_budget=0)
        fallbacks = [w for w in caught if issubclass(w.category, torch_sht.TritonFallbackWarning)]
        assert len(fallbacks) == 1 and "ptxas" in str(fallbacks[0].message)
        assert len(calls) == 1  # the device is marked: no second try, no second warning
        assert torch_sht.legendre_engine(nside, lmax, torch.float64, memory_budget=0) == "stream"
        for got in (alm, again):
            assert np.linalg.norm(got.numpy() - ref) / np.linalg.norm(ref) <= 1e-10
        assert back.shape == maps.shape
        # a forced "fused" engine is a request, not a preference: its failure is raised
        monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "fused")
        with pytest.raises(RuntimeError, match="ptxas"):
            torch_sht.analysis(torch.from_numpy(maps), lmax, memory_budget=0)
    finally:
        torch_sht.clear_legendre_cache()


def test_out_of_memory_is_not_a_triton_failure(monkeypatch) -> None:
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")
    monkeypatch.setattr(triton_legendre, "usable", lambda device: True)
    monkeypatch.setattr(triton_legendre, "adjoint_legendre", oom)
    torch_sht.clear_legendre_cache()
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch_sht.analysis(torch.randn(1, 12 * 8**2, dtype=torch.float64), 15, memory_budget=0)
        assert torch_sht._FUSED_FAILED == {}
    finally:
        torch_sht.clear_legendre_cache()


def test_launches_run_under_the_tensor_device_guard() -> None:
    """CUDA tensors: ``torch.cuda.device(tensor.device)``; other devices: no guard needed."""
    guard = triton_legendre.device_guard(torch.device("cuda", 3))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 3
    with triton_legendre.device_guard(torch.device("cpu")):
        pass
