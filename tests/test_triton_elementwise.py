"""The fused chirp-z kernels (scatterdist/sphere/triton_elementwise.py, issue 20 build 4): under
TRITON_INTERPRET=1 they give the numbers of the torch ops they replace, and a Triton failure
falls back to those ops with one warning."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import warnings

import pytest
import torch

from scatterdist.sphere import torch_sht, triton_elementwise

_CHECK = r"""
import numpy as np
import torch
from scatterdist.sphere import torch_sht, triton_elementwise as te

assert te.usable(torch.device("cpu"))
torch.set_num_threads(1)
torch_sht.LEGENDRE_ENGINE = "torch"
launched = []
run = te._run
def counting(name, grid, args, nbytes):
    launched.append(name)
    return run(name, grid, args, nbytes)
te._run = counting
rng = np.random.default_rng(4)
errors = {}
# lmax < 2 nside: equatorial rfft + chirp-z polar caps (two pixel segments);
# lmax >= 2 nside: every ring through chirp-z (one segment, the equator paired with a zero ring)
for nside, lmax in ((8, 15), (8, 23)):
    for dtype in (torch.float32, torch.float64):
        maps = torch.from_numpy(rng.standard_normal((3, 12 * nside**2))).to(dtype)
        torch_sht.FUSED_ELEMENTWISE = "off"
        alm = torch_sht.adjoint_synthesis(maps, lmax)
        back = torch_sht.synthesis(alm, nside, lmax)
        assert not launched
        torch_sht.FUSED_ELEMENTWISE = "on"
        alm_f = torch_sht.adjoint_synthesis(maps, lmax)
        back_f = torch_sht.synthesis(alm, nside, lmax)
        segments = 2 if lmax < 2 * nside else 1
        equator = ["equator_in_kernel"] if lmax < 2 * nside else []
        adjoint = ["equator_out_kernel"] * len(equator) + ["chirp_in_adjoint_kernel"] * segments + [
            "chirp_out_adjoint_kernel"]
        assert launched == adjoint + equator + ["chirp_in_kernel"] + ["chirp_out_kernel"] * segments, launched
        launched.clear()
        key = f"{nside} {lmax} {dtype}"
        errors["adjoint " + key] = float((alm_f - alm).abs().max() / alm.abs().max())
        errors["synthesis " + key] = float((back_f - back).abs().max() / back.abs().max())
print(repr(errors))
"""


@pytest.mark.skipif(triton_elementwise.triton is None, reason="triton is not installed")
def test_fused_chirp_kernels_match_the_torch_ops_in_interpret_mode() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 8
    for name, err in errors.items():
        assert err <= (1e-6 if "float32" in name else 1e-13), (name, err)


def test_fused_chirp_failure_falls_back_once_with_a_warning(monkeypatch) -> None:
    """A Triton failure under "auto": one TritonFallbackWarning per device, the torch ops' result, and
    the device marked so that later calls take the torch ops directly; "on" re-raises; OOM propagates."""
    monkeypatch.setattr(torch_sht, "_ELEMENTWISE_FAILED", {})
    monkeypatch.setattr(torch_sht, "FUSED_ELEMENTWISE", "auto")
    dev = torch.device("cpu")

    def broken():
        raise RuntimeError("PTX .version 8.7 does not support .target sm_90a")

    with pytest.warns(torch_sht.TritonFallbackWarning, match="chirp-z kernels failed on cpu"):
        assert torch_sht._elementwise_or_fallback(dev, broken, lambda: 42) == 42
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert torch_sht._elementwise_or_fallback(dev, broken, lambda: 43) == 43
    assert "sm_90a" in torch_sht._ELEMENTWISE_FAILED["cpu"]
    monkeypatch.setattr(triton_elementwise, "usable", lambda device: True)
    assert not torch_sht._fuse_elementwise(dev)  # marked: the torch ops from now on

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        torch_sht._elementwise_or_fallback(dev, oom, lambda: 0)
    monkeypatch.setattr(torch_sht, "FUSED_ELEMENTWISE", "on")
    with pytest.raises(RuntimeError, match="sm_90a"):
        torch_sht._elementwise_or_fallback(dev, broken, lambda: 0)
    monkeypatch.setattr(torch_sht, "FUSED_ELEMENTWISE", "sometimes")
    with pytest.raises(ValueError, match="auto, on or off"):
        torch_sht._fuse_elementwise(dev)


def test_fused_chirp_kernels_only_on_cuda_by_default(monkeypatch) -> None:
    monkeypatch.setattr(torch_sht, "_ELEMENTWISE_FAILED", {})
    monkeypatch.setattr(torch_sht, "FUSED_ELEMENTWISE", "auto")
    monkeypatch.setattr(triton_elementwise, "usable", lambda device: True)
    assert torch_sht._fuse_elementwise(torch.device("cuda", 0))
    assert not torch_sht._fuse_elementwise(torch.device("cpu"))  # CPU keeps the torch ops
    monkeypatch.setattr(torch_sht, "FUSED_ELEMENTWISE", "off")
    assert not torch_sht._fuse_elementwise(torch.device("cuda", 0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fused_chirp_kernels_match_the_torch_ops(monkeypatch) -> None:
    """On a GPU (the default there): the compiled kernels against the torch ops, both ring classes."""
    if triton_elementwise.triton is None:
        pytest.skip("triton is not installed")
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(6)
    for nside, lmax in ((32, 63), (32, 95)):
        for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-13)):
            maps = torch.randn(5, 12 * nside**2, generator=gen, dtype=torch.float64).to(dtype).to(dev)
            monkeypatch.setattr(torch_sht, "FUSED_ELEMENTWISE", "off")
            alm = torch_sht.adjoint_synthesis(maps, lmax)
            back = torch_sht.synthesis(alm, nside, lmax)
            monkeypatch.setattr(torch_sht, "FUSED_ELEMENTWISE", "on")
            assert torch_sht._fuse_elementwise(dev)
            assert float((torch_sht.adjoint_synthesis(maps, lmax) - alm).abs().max() / alm.abs().max()) <= tol
            assert float((torch_sht.synthesis(alm, nside, lmax) - back).abs().max() / back.abs().max()) <= tol
