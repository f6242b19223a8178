"""Meta-device model of the torch engine on a GPU: what one scattering call launches and how long
it takes at the roofline, without a GPU (DESIGN.md "GPU engine rules", issue 20).

The real ``Scattering`` code runs on ``device="meta"`` tensors (shapes only, nothing
allocated or computed); a ``TorchDispatchMode`` records every aten op with its output
shapes, the bytes it reads and writes and its flops. The Legendre step of each transform
is recorded as the engine the code would choose on the device (tables ``bmm``, or one
Triton launch whose time comes from its compiled code, see :func:`fused_time`).

    python benchmarks/gpu_model.py --nside 512 1024 2048 --batch 1 4 16 32 --json model.json

Per (nside, batch): kernel launches, bytes, flops, peak memory of the call (live tensors
plus the cached plans and tables), the roofline time (each op at max(bytes / bandwidth,
flops / peak)) and maps/s. H100 SXM figures: 3.35 TB/s, 60 TFLOP/s fp32, 33.5 TFLOP/s
fp64, ~400 TFLOP/s tf32 tensor cores (dense).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scatterdist import Scattering  # noqa: E402
from scatterdist.scattering.core import scattering_alm  # noqa: E402
from scatterdist.sphere import alm_size, torch_sht  # noqa: E402

#: H100 SXM (bytes/s, flop/s).
H100 = {"bandwidth": 3.35e12, "fp32": 60e12, "fp64": 33.5e12, "tf32_tensor": 400e12, "launch_s": 4e-6}


def transform_calls(sc: Scattering, batch: int) -> list[tuple[str, int, int, int]]:
    """Every SHT of one call ``sc(maps)`` on ``batch`` full-sky maps, as (``"analysis"`` or
    ``"synthesis"``, nside, lmax, number of maps), found by running the scattering code on
    meta tensors with the transforms replaced by shape-only stand-ins (nothing is built)."""
    calls: list[tuple[str, int, int, int]] = []
    if str(getattr(sc.backend, "device", "")) != "meta":
        sc = meta_twin(sc)
    be = sc.backend
    cdtype = torch.complex64 if be.dtype == torch.float32 else torch.complex128

    def analysis(maps: torch.Tensor, lmax: int, mode: str = "quadrature") -> torch.Tensor:
        nside = math.isqrt(maps.shape[-1] // 12)
        calls.append(("analysis", nside, lmax, maps.shape[0]))
        return torch.empty(maps.shape[0], alm_size(lmax), dtype=cdtype, device="meta")

    def synthesis(alm: torch.Tensor, nside: int, lmax: int) -> torch.Tensor:
        calls.append(("synthesis", nside, lmax, alm.shape[0]))
        return torch.empty(alm.shape[0], 12 * nside * nside, dtype=be.dtype, device="meta")

    with _patched(be, analysis=analysis, synthesis=synthesis):
        x = torch.empty(batch, sc.npix, dtype=be.dtype, device="meta")
        alm = scattering_alm(sc.plan, x, analysis=sc.analysis)
        be.synthesis(alm.reshape(-1, alm.shape[-1]), sc.nside_out, sc.L0 - 1)
    return calls


def meta_twin(sc: Scattering, dtype: torch.dtype | None = None) -> Scattering:
    """The same transform with the torch backend on the meta device (shapes only)."""
    dtype = dtype or getattr(sc.backend, "dtype", torch.float32)
    return Scattering(**sc.config(), backend="torch", device="meta", dtype=dtype)


def plan_keys(sc: Scattering, batch: int = 1) -> set[tuple[int, int]]:
    """Distinct (nside, lmax) transform plans one call needs."""
    return {(nside, lmax) for _, nside, lmax, _ in transform_calls(sc, batch)}


def geometry_keys(sc: Scattering, batch: int = 1) -> set[tuple[int, bool]]:
    """Distinct (nside, direct) plan geometries one call needs (shared by every lmax of a grid)."""
    return {(nside, lmax < 2 * nside) for nside, lmax in plan_keys(sc, batch)}


@contextlib.contextmanager
def _patched(obj: Any, **attrs: Any):
    old = {k: obj.__dict__.get(k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                delattr(obj, k)
            else:
                setattr(obj, k, v)
