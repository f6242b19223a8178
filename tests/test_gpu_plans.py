"""Transform plans (issue 20, build 2): none rebuilt in steady state at any nside up to 4096,
plan memory per grid shared by every bandlimit and under 1 GiB at nside 2048 (float32)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scatterdist import Scattering
from scatterdist.sphere import torch_sht

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _gpu_model():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_model.py"
    spec = importlib.util.spec_from_file_location("gpu_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_model", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def counted_builds(monkeypatch):
    """Count ``_build_plan`` and ``_build_geometry`` calls (the builds run as usual)."""
    counts = {"plans": 0, "geometries": 0}
    build_plan, build_geometry = torch_sht._build_plan, torch_sht._build_geometry

    def plan(*args, **kwargs):
        counts["plans"] += 1
        return build_plan(*args, **kwargs)

    def geometry(*args, **kwargs):
        counts["geometries"] += 1
        return build_geometry(*args, **kwargs)

    monkeypatch.setattr(torch_sht, "_build_plan", plan)
    monkeypatch.setattr(torch_sht, "_build_geometry", geometry)
    return counts


def test_second_call_builds_no_plan(monkeypatch, counted_builds) -> None:
    """The torch engines (what a GPU runs) on a depth-2 call: every plan built on the first call only."""
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")
    torch_sht.clear_legendre_cache()
    nside = 32
    sc = Scattering(nside, depth=2, backend="torch", device="cpu", dtype=torch.float32, nthreads=1)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 12 * nside**2))).float()
    sc(x)
    first = dict(counted_builds)
    model = _gpu_model()
    assert first["plans"] == len(model.plan_keys(sc)) > 1
    assert first["geometries"] == len(model.geometry_keys(sc))
    sc(x)
    assert counted_builds == first  # nothing rebuilt on the second call


@pytest.mark.parametrize("nside", [512, 1024, 2048, 4096])
def test_plan_working_set_fits_the_caches(nside: int) -> None:
    """The (nside, lmax) plans and the grids a depth-2 call needs, counted on meta tensors
    (nothing built), fit the caches: no least-recently-used eviction call after call."""
    model = _gpu_model()
    sc = Scattering(nside, depth=2, backend="torch", device="meta", dtype=torch.float32)
    keys, geos = model.plan_keys(sc), model.geometry_keys(sc)
    assert len(keys) > 16  # more than the old cache held: it thrashed
    assert len(keys) <= torch_sht._PLANS_MAX // 2  # room for a second transform
    assert len(geos) <= torch_sht._GEOMETRIES_MAX // 2


def test_geometry_bytes_formula_and_the_nside_2048_budget() -> None:
    """Built geometries match the formula; by it, every plan of a depth-2 call at nside 2048
    (float32) takes under 1 GiB (was 6.3 GiB: chirps, indexes and starts per (nside, lmax))."""
    for nside in (4, 16, 64):
        for direct in (True, False):
            geo = torch_sht._build_geometry(nside, direct, torch.float32, torch.device("cpu"))
            assert geo.nbytes() == torch_sht.geometry_nbytes(nside, direct, torch.float32)
    model = _gpu_model()
    sc = Scattering(2048, depth=2, backend="torch", device="meta", dtype=torch.float32)
    total = sum(torch_sht.geometry_nbytes(n, d, torch.float32) for n, d in model.geometry_keys(sc))
    assert total < 1 << 30, total / 2**30
    torch_sht.clear_legendre_cache()
    sc_small = Scattering(64, depth=2, backend="torch", device="cpu", dtype=torch.float32, nthreads=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")
        sc_small(torch.randn(1, 12 * 64**2))
    built = torch_sht.plan_nbytes("cpu")
    expected = sum(torch_sht.geometry_nbytes(n, d, torch.float32) for n, d in model.geometry_keys(sc_small))
    assert expected <= built <= expected * 1.5  # plus the tables engine's small index layouts
    torch_sht.clear_legendre_cache()


def test_input_check_is_one_reduction_and_one_sync() -> None:
    """The clean-map check of tensor inputs: one fused reduction, one device-to-host read
    (``_local_scalar_dense``, what ``bool``/``float`` of a CUDA tensor waits on)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from scatterdist.scattering.inputs import check_masked_maps

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func)] += 1
            return func(*args, **(kwargs or {}))

    x = torch.randn(3, 12 * 8**2)
    with Ops() as ops:
        _, _, bad = check_masked_maps(x, 8)
    assert bad is None
    assert ops.ops["aten._local_scalar_dense.default"] == 1 and ops.ops["aten.aminmax.default"] == 1, ops.ops
    x[1, 5] = float("nan")
    assert check_masked_maps(x, 8)[2][1, 5]  # the masked path still finds the pixel
