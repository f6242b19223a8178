"""Launch budget of the torch backend (DESIGN.md, "GPU engine rules"): aten ops per call.

Every aten op is one kernel launch (or a free view) on a GPU; a transform must be a
handful of large kernels whatever nside, lmax and the number of rings. The counts come
from ``TorchDispatchMode`` on CPU tensors: what a GPU would be asked to launch.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scatterdist import Scattering
from scatterdist.sphere import torch_sht

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(autouse=True)
def torch_engines(monkeypatch) -> None:
    """Count the torch engines' ops (what a GPU launches): CPU tensors would otherwise go to ducc0."""
    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")

#: Issue 11: aten ops per scattering call at nside 256, batch 8, depth 2, default budget.
OPS_BUDGET_NSIDE256 = 1500


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside the ``with`` block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def ops_of_call(sc: Scattering, x: torch.Tensor) -> OpCounter:
    sc(x)  # plans, filters and Legendre tables are built once, outside the count
    with OpCounter() as counter:
        sc(x)
    return counter


def test_scattering_call_ops_nside256_batch8() -> None:
    nside = 256
    sc = Scattering(nside, depth=2, backend="torch", device="cpu", dtype=torch.float32, nthreads=1)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 12 * nside**2))).float()
    counter = ops_of_call(sc, x)
    assert counter.total <= OPS_BUDGET_NSIDE256, counter.ops.most_common(12)
    # FFTs: O(1) calls per transform, not one per ring length (the old engine: 2,500 here)
    ffts = sum(n for op, n in counter.ops.items() if "fft" in op)
    assert ffts <= 4 * 30, counter.ops.most_common(12)


def test_call_ops_do_not_grow_with_the_map() -> None:
    """Same filter bank (L = 64) on nside 32 and 128 input maps: the same op count."""
    counts = {}
    for nside in (32, 128):
        sc = Scattering(nside, L=64, depth=2, backend="torch", device="cpu", dtype=torch.float32, nthreads=1)
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 12 * nside**2))).float()
        counts[nside] = ops_of_call(sc, x).total
    assert counts[32] == counts[128]


@pytest.mark.parametrize("lmax_of", [lambda n: n // 2, lambda n: 2 * n - 1, lambda n: 3 * n - 1])
def test_sht_ops_independent_of_nside_and_lmax(lmax_of) -> None:
    """One analysis + synthesis pair: a fixed op count from nside 16 to 128, tables engine."""
    counts = set()
    for nside in (16, 128):
        lmax = lmax_of(nside)
        x = torch.randn(3, 12 * nside**2)
        alm = torch_sht.analysis(x, lmax)
        torch_sht.synthesis(alm, nside, lmax)
        assert torch_sht.legendre_engine(nside, lmax).startswith("tables")
        with OpCounter() as counter:
            torch_sht.synthesis(torch_sht.analysis(x, lmax), nside, lmax)
        counts.add(counter.total)
    assert len(counts) == 1 and counts.pop() <= 150
