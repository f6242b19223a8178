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
import re
import sys
import weakref
from collections import Counter
from dataclasses import dataclass
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



# ----------------------------------------------------------------------------- op accounting

#: aten ops that launch nothing (views, metadata, allocation without a fill).
NO_LAUNCH = {
    "view", "_unsafe_view", "slice", "select", "transpose", "t", "permute", "expand", "narrow", "as_strided",
    "alias", "unsqueeze", "squeeze", "view_as_real", "view_as_complex", "_reshape_alias", "detach", "split",
    "unbind", "empty", "empty_strided", "_conj", "real", "imag", "lift_fresh", "_local_scalar_dense",
}


def _base(func: Any) -> str:
    return str(func).split(".")[1] if str(func).startswith("aten.") else str(func)


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _flops(name: str, args: tuple, out: list[torch.Tensor]) -> float:
    """Real flops of one op (complex multiply-add = 8, complex product = 6)."""
    if not out:
        return 0.0
    o = out[0]
    cplx = o.is_complex()
    if name in ("bmm", "mm", "matmul", "addmm", "baddbmm"):
        a = _tensors(args)[0]
        k = a.shape[-1]
        return (8.0 if cplx else 2.0) * o.numel() * k
    if name.startswith("_fft"):
        x = _tensors(args)[0]
        dims = args[1] if len(args) > 1 else [x.ndim - 1]
        n = max(math.prod(x.shape[d] for d in dims), max(_nbytes(o) // o.element_size(), 1) // max(
            math.prod(o.shape) // max(math.prod(x.shape[d] for d in dims), 1), 1))
        length = max(math.prod(x.shape[d] for d in dims), math.prod(o.shape[d] for d in dims))
        count = max(x.numel(), o.numel()) / max(length, 1)
        return 5.0 * count * length * math.log2(max(length, 2))
    return float(o.numel()) * (6.0 if cplx else 1.0)


def _op_bytes(name: str, args: tuple, out: list[torch.Tensor]) -> int:
    """Bytes moved by one op: inputs read (gathers: only what they gather) plus outputs written."""
    ins = _tensors(args)
    written = sum(_nbytes(o) for o in out)
    if name in ("index_select",):
        return _nbytes(ins[1]) + 2 * written
    if name in ("index_put_", "index_copy_", "index_put"):
        src = ins[-1]
        idx = [t for t in ins[1:-1]]
        return sum(_nbytes(i) for i in idx) + 2 * _nbytes(src)
    if name in ("zeros", "fill_", "zero_"):
        return written
    if name.endswith("_") and ins:  # in place: self read and written once
        return sum(_nbytes(t) for t in ins[1:]) + 2 * _nbytes(ins[0])
    return sum(_nbytes(t) for t in ins) + written


@dataclass
class Op:
    name: str
    shapes: list
    dtype: str
    bytes: int
    flops: float
    launch: bool
    seconds: float = 0.0  # roofline time


class Recorder(TorchDispatchMode):
    """Records every aten op (launches, bytes, flops) and the live bytes of what ops allocate."""

    def __init__(self, device: dict = H100) -> None:
        super().__init__()
        self.device = device
        self.ops: list[Op] = []
        self.live: dict[int, list] = {}  # storage -> [bytes, live tensors]
        self.live_bytes = 0
        self.peak_bytes = 0
        self.syncs = 0

    def _track(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [t.untyped_storage().nbytes(), 0]
            self.live_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = _base(func)
        if name == "_local_scalar_dense":
            self.syncs += 1
            return result
        out = _tensors(result)
        if "out" in kwargs:
            out = _tensors(kwargs["out"])
        for t in _tensors(result):
            self._track(t)
        launch = name not in NO_LAUNCH and bool(out) and all(o.numel() > 0 for o in out)
        if name in ("empty", "empty_like", "new_empty"):
            launch = False
        real = _tensors(args) + out
        dtype = str((out or real or [torch.empty(0)])[0].dtype).replace("torch.", "")
        op = Op(name, [list(o.shape) for o in out], dtype, _op_bytes(name, args, out) if launch else 0,
                _flops(name, args, out) if launch else 0.0, launch)
        if launch:
            peak = self.device["fp64"] if "64" in dtype and "complex64" not in dtype else self.device["fp32"]
            op.seconds = max(op.bytes / self.device["bandwidth"], op.flops / peak)
        self.ops.append(op)
        return result


# ----------------------------------------------------------------------------- fused kernels


def _sass_loop_cycles(sass: str) -> tuple[float, int]:
    """Issue cycles per iteration of the innermost loop with the most instructions, and its length.

    Per-warp issue cost: 1 cycle, fp64 arithmetic (D*) 2 (H100: 64 fp64 lanes per SM per
    clock), MUFU (special functions) 8; memory instructions 1 (their bytes are counted apart).
    """
    lines = [ln for ln in sass.splitlines() if ln.strip()]
    labels: dict[str, int] = {}
    instrs: list[tuple[int, str]] = []
    for ln in lines:
        m = re.match(r"\s*\.?(L_x_\d+):", ln)
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?);", ln)
        if m:
            instrs.append((len(instrs), m.group(1)))
    loops = []
    for i, text in instrs:
        m = re.search(r"BRA\s+(?:`\(\.)?(L_x_\d+)", text)
        if m and m.group(1) in labels and labels[m.group(1)] <= i:
            loops.append((labels[m.group(1)], i))
    inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    if not inner:
        return 0.0, 0
    a, b = max(inner, key=lambda lp: lp[1] - lp[0])

    def cost(text: str) -> float:
        op = re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]
        if op.startswith("MUFU"):
            return 8.0
        if op[0] == "D" and op.split(".")[0] in ("DFMA", "DMUL", "DADD", "DSETP", "DMNMX"):
            return 2.0
        return 1.0

    body = [t for i, t in instrs[a : b + 1]]
    return sum(cost(t) for t in body), len(body)


_KERNEL_CODE: dict = {}


def kernel_code(name: str, dtype: str, arch: int = 90) -> dict:
    """Registers, loop cycles and loop length of a fused kernel as compiled for ``sm_<arch>``."""
    key = (name, dtype, arch)
    if key not in _KERNEL_CODE:
        from scatterdist.sphere import triton_aot, triton_legendre

        launch = next(c for c in triton_legendre.launch_configs() if c["name"] == name and c["dtype"] == dtype)
        usage, _, sass = triton_aot.compile_kernel(launch["fn"], launch["signature"], launch["constexprs"], arch,
                                                   launch.get("num_warps", 4), with_sass=True)
        cycles, length = _sass_loop_cycles(sass)
        _KERNEL_CODE[key] = {"registers": usage["REG"], "loop_cycles": cycles, "loop_instructions": length,
                             "num_warps": launch.get("num_warps", 4), **launch["constexprs"]}
    return _KERNEL_CODE[key]


def degrees_per_iteration(name: str) -> int:
    """Degrees of the recurrence per iteration of a kernel's loop (the tl.dot kernels: ``DEGREES``)."""
    from scatterdist.sphere import triton_legendre

    return triton_legendre.DEGREES if name.endswith("_dot_kernel") else 2


def fused_time(kind: str, lmax: int, nr: int, ncol: int, dtype: str, device: dict = H100,
               kernel: str = "dot") -> dict:
    """As-compiled time of one fused Legendre launch: issue cycles of the compiled loop times
    the iterations every warp runs, over the SMs' schedulers (132 SMs x 4 at 1.755 GHz on an H100),
    or its bytes at the bandwidth when that is longer. ``kernel``: "dot" (tl.dot tiles, the
    engine's kernels); "workspace": the alternative of
    recomputing table tiles into a bounded workspace and multiplying them with ``torch.bmm``
    (modelled: the dot kernel's recurrence plus writing and reading every table value once)."""
    if kernel not in ("dot", "workspace"):
        raise ValueError(f"kernel must be 'dot' or 'workspace', got {kernel!r}")
    name = ("synth" if kind == "synthesis" else "adjoint") + "_dot_kernel"
    code = kernel_code(name, dtype)
    degrees = degrees_per_iteration(name)
    M = lmax + 1
    iterations_per_block = sum(-(-(lmax - m + 1) // degrees) for m in range(M))
    col_blocks = -(-ncol // code["BC"])
    ring_blocks = -(-nr // code["BR"])
    iterations = iterations_per_block * ring_blocks * col_blocks
    cycles = iterations * code["num_warps"] * code["loop_cycles"]
    schedulers = device.get("sms", 132) * 4
    seconds = cycles / schedulers / device.get("clock_hz", 1.755e9)
    itemsize = 4 if dtype == "float32" else 8
    nalm = alm_size(lmax)
    coef_passes = ring_blocks if kind == "synthesis" else 2 * ring_blocks - 1  # adjoint: read + write per ring block
    # the recurrence workspace (a_lm, a_lm b_lm): read by every (ring block, column block) of each m,
    # counted from memory each time (conservative: most of it is an L2 hit)
    workspace = _workspace_bytes(lmax) * ring_blocks * col_blocks
    moved = nalm * ncol * itemsize * coef_passes + M * 2 * nr * ncol * itemsize + M * nr * 12 + workspace
    useful = 2.0 * nalm * nr * ncol
    peak = device["fp32" if dtype == "float32" else "fp64"]
    roof = max((nalm * ncol * itemsize + M * 2 * nr * ncol * itemsize) / device["bandwidth"], useful / peak)
    if kernel == "workspace":  # the recurrence alone (one column block) + every value written and read once
        recurrence = iterations_per_block * ring_blocks * code["num_warps"] * code["loop_cycles"] / schedulers / device.get(
            "clock_hz", 1.755e9)
        table = nalm * nr * itemsize
        seconds = recurrence + max(2 * table / device["bandwidth"], useful / peak)
        moved += 2 * table
    else:
        seconds = max(seconds, moved / device["bandwidth"])
    return {"seconds": seconds, "roofline_s": roof, "bytes": moved, "flops": useful, "kernel": name, **code}


def _workspace_bytes(lmax: int) -> int:
    from scatterdist.sphere import triton_legendre

    return triton_legendre.workspace_rows(lmax) * 16


def coefficients_time(lmax: int, device: dict = H100) -> dict:
    """The launch that fills the recurrence workspace (one per fused transform): its bytes written."""
    moved = _workspace_bytes(lmax)
    seconds = moved / device["bandwidth"]
    return {"seconds": seconds, "roofline_s": seconds, "bytes": moved, "flops": 0.0, "kernel": "coefficients_kernel",
            "registers": 0, "loop_cycles": 0.0}


# ----------------------------------------------------------------------------- the model


def _meta_geometry(nside: int, direct: bool, dtype: torch.dtype, device: torch.device) -> torch_sht._Geometry:
    """A geometry of meta tensors with the shapes :func:`torch_sht._build_geometry` gives (nothing computed)."""
    nnorth, npix, M = 2 * nside, 12 * nside * nside, torch_sht._geometry_mmax(nside, direct)
    cd = torch.complex64 if dtype == torch.float32 else torch.complex128
    R = nside - 1 if direct else nnorth
    nmax = 4 * R if direct else 4 * nside
    P = torch_sht._smooth_length(M + nmax - 1)

    def e(*shape, dt=cd):
        return torch.empty(*shape, dtype=dt, device="meta")

    ncap = 2 * nside * (nside - 1)
    segments = [(0, ncap, e(ncap, dt=torch.int32)), (npix - ncap, npix, e(ncap, dt=torch.int32))] if direct else [
        (0, npix, e(npix, dt=torch.int32))]
    return torch_sht._Geometry(
        nside=nside, direct=direct, mmax=M, dtype=dtype, device=torch.device("meta"), nring=4 * nside - 1,
        nnorth=nnorth, npix=npix, cos_theta=e(nnorth, dt=torch.float64), start=e(M, nnorth, dt=torch.float64),
        scale=e(M, nnorth, dt=torch.int32), eq_rings=e(2 * nside + 1, dt=torch.int64) if direct else None,
        eq_shifted=0, eq_shift=e(M, 1, 1) if direct else None, eq_pix=(ncap, ncap + (2 * nside + 1) * 4 * nside),
        neq=4 * nside, pair_rings=e(2 * R, dt=torch.int64), npair=R, nmax=nmax, P=P, pre=e(M, 1, R, 1),
        kernel=e(P, 1, R, 1), post=e(nmax, 1, R, 1), segments=segments,
    )


class Model:
    """Runs one scattering call on meta tensors under a :class:`Recorder`."""

    def __init__(self, device: dict = H100, memory_bytes: int = 80 << 30, engine: str = "auto",
                 kernel: str = "dot", elementwise: bool = True) -> None:
        self.kernel = kernel  # fused Legendre kernel: "dot" or "workspace" (see fused_time)
        # the chirp-z passes as the Triton kernels of triton_elementwise (what CUDA runs), or torch ops
        self.elementwise = elementwise
        self._rec: Recorder | None = None
        self.device = device
        self.memory_bytes = memory_bytes
        self.budget = int(memory_bytes * torch_sht.DEFAULT_MEMORY_BUDGET_CUDA_FRACTION)
        self.engine = engine  # "auto" (tables within the budget, else fused), "tables" or "fused"
        self.fused: list[dict] = []
        self.tables_bytes = 0
        self._tables: dict = {}

    def _choose(self, plan: torch_sht._Plan, budget: int) -> str:
        if self.engine == "fused":
            return "fused"
        if torch_sht._tables_bytes(plan, 1) <= budget * torch_sht.ONE_GROUP_SHARE:
            return "G1"
        for groups in torch_sht.TABLE_GROUPS:
            if torch_sht._tables_bytes(plan, groups) <= budget * torch_sht.TABLE_SHARE:
                return f"G{groups}"
        return "fused" if self.engine == "auto" else f"G{torch_sht.TABLE_GROUPS[-1]}"

    def _unit_tables(self, plan, layout, budget):
        """Meta tables of the layout, made on the warm-up call and cached (as the real engine caches them)."""
        for index, (m0, m1, rows) in enumerate(layout.units):
            key = (plan.nside, plan.lmax, plan.dtype, layout.name, index)
            if key not in self._tables:
                self._tables[key] = torch.empty((m1 - m0, 2, rows, plan.nnorth), dtype=plan.dtype, device="meta")
            yield index, self._tables[key]

    def _fused(self, kind: str):
        def launch(data: torch.Tensor, x, start, scale, lmax, nalm=None):
            dtype = str(data.dtype).replace("torch.", "")
            nr = x.shape[0]
            ncol = data.shape[-1]
            from scatterdist.sphere import triton_legendre

            # the transient workspace the real launch allocates (counted in the peak while it lives)
            workspace = torch.empty((triton_legendre.workspace_rows(lmax), 2), dtype=torch.float64, device="meta")
            self.fused.append({"kind": kind, "lmax": lmax, "nr": nr, "ncol": ncol, "dtype": "float64",
                               **coefficients_time(lmax, self.device)})
            self.fused.append({"kind": kind, "lmax": lmax, "nr": nr, "ncol": ncol, "dtype": dtype,
                               **fused_time(kind, lmax, nr, ncol, dtype, self.device, self.kernel)})
            del workspace
            if kind == "synthesis":
                return torch.empty((lmax + 1, 2, nr, ncol), dtype=data.dtype, device="meta")
            return torch.empty((nalm, ncol), dtype=data.dtype, device="meta")
        return launch

    def _elementwise_launch(self, name: str, grid: tuple, args: tuple, nbytes: int) -> None:
        """Stand-in for ``triton_elementwise._run``: the launch recorded with the bytes the wrapper
        says it reads and writes, timed at the bandwidth (a memory-bound kernel: a few flops a byte)."""
        if self._rec is None:  # the warm-up call, outside the count
            return
        dtype = next(str(a.dtype).replace("torch.", "") for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
        self._rec.ops.append(Op(name, [], dtype, nbytes, 0.0, True, seconds=nbytes / self.device["bandwidth"]))

    def run(self, nside: int, batch: int, dtype: torch.dtype = torch.float32, depth: int = 2,
            L: int | None = None) -> dict:
        """Model of ``Scattering(nside, L, depth)(maps)`` on ``batch`` maps: a dict of figures."""
        from scatterdist.scattering import inputs
        from scatterdist.sphere import triton_elementwise, triton_legendre

        torch_sht.clear_legendre_cache()
        self.fused = []
        self._tables = {}
        sc = Scattering(nside, L=L, depth=depth, backend="torch", device="meta", dtype=dtype,
                        memory_budget=self.budget)
        budget = self.budget

        def all_clean(x):  # the same reduction; the sync is counted by the recorder's caller
            lo, hi = torch.aminmax(x.detach())
            (lo > -1e30) & (hi < 1e30)
            return True

        def tables_bytes_of_call():
            total = 0
            for n, lmax in plan_keys(sc):
                plan = torch_sht._get_plan(n, lmax, dtype, torch.device("meta"))
                name = self._choose(plan, budget)
                if name.startswith("G"):
                    total += torch_sht._tables_bytes(plan, int(name[1:]))
            return total

        patches = [
            (torch_sht, {"_build_geometry": _meta_geometry, "_choose": self._choose,
                         "_unit_tables": self._unit_tables, "_use_ducc0": lambda device: False}),
            (triton_legendre, {"synthesis_legendre": self._fused("synthesis"),
                               "adjoint_legendre": self._fused("adjoint")}),
            (inputs, {"_all_clean": all_clean}),
            (torch_sht, {"_fuse_elementwise": lambda device: self.elementwise}),
            (triton_elementwise, {"_run": self._elementwise_launch}),
        ]
        with contextlib.ExitStack() as stack:
            for module, attrs in patches:
                stack.enter_context(_patched_module(module, attrs))
            x = torch.empty(batch, sc.npix, dtype=dtype, device="meta")
            self.tables_bytes = tables_bytes_of_call()
            plans = sum(torch_sht.geometry_nbytes(n, d, dtype) for n, d in geometry_keys(sc))
            filters = sum(_nbytes(t) for t in [sc.plan.eta, *sc.plan.kappa.values()])
            sc._outputs(x, None)  # steady state: plans and small constants built once, outside the count
            self.fused = []
            rec = self._rec = Recorder(self.device)
            try:
                with rec:
                    out, _, _ = sc._outputs(x, None)
                    shape = list(out.shape)
                    del out
            finally:
                self._rec = None
            rec.syncs += 1  # bool() of the clean-input check
        self.last_recorder = rec
        launches = [op for op in rec.ops if op.launch]
        fused_s = sum(f["seconds"] for f in self.fused)
        fused_roof = sum(f["roofline_s"] for f in self.fused)
        roof = sum(op.seconds for op in launches) + fused_roof
        launch_s = self.device["launch_s"]
        as_built = sum(max(op.seconds, launch_s) for op in launches) + sum(
            max(f["seconds"], launch_s) for f in self.fused)
        by_kind = Counter()
        for op in launches:
            kind = ("fft" if op.name.startswith("_fft") else "matmul" if op.name in ("bmm", "mm", "matmul")
                    else "gather/scatter" if op.name.startswith("index")
                    else "fused chirp-z" if op.name.startswith(("chirp_", "equator_")) else "elementwise/copy")
            by_kind[kind] += op.seconds
        by_kind["fused Legendre"] = fused_roof
        resident = plans + self.tables_bytes + filters + _nbytes(x)
        return {
            "nside": nside, "batch": batch, "dtype": str(dtype).replace("torch.", ""), "depth": depth, "L": sc.L,
            "output_shape": shape, "aten_ops": len(rec.ops), "launches": len(launches) + len(self.fused),
            "fused_launches": len(self.fused), "syncs": rec.syncs,
            "bytes": sum(op.bytes for op in launches) + sum(f["bytes"] for f in self.fused),
            "flops": sum(op.flops for op in launches) + sum(f["flops"] for f in self.fused),
            "peak_bytes": resident + rec.peak_bytes, "plan_bytes": plans, "tables_bytes": self.tables_bytes,
            "transient_peak_bytes": rec.peak_bytes,
            "roofline_s": roof, "as_built_s": as_built, "fused_as_compiled_s": fused_s, "fused_roofline_s": fused_roof,
            "roofline_maps_per_s": batch / roof, "as_built_maps_per_s": batch / as_built,
            "time_share": {k: v / roof for k, v in by_kind.items()},
            "fused": [{k: f[k] for k in ("kind", "kernel", "lmax", "ncol", "dtype", "seconds", "roofline_s", "registers",
                                          "loop_cycles")} for f in self.fused],
        }


@contextlib.contextmanager
def _patched_module(module: Any, attrs: dict):
    old = {k: getattr(module, k) for k in attrs}
    for k, v in attrs.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


def markdown(rows: list[dict]) -> str:
    lines = ["| nside | batch | launches / call | roofline maps/s | as built maps/s | fused Legendre s (as compiled / roofline) | peak memory GiB (plans, tables) |",
             "|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        fr = (f"{r['fused_as_compiled_s']:.3f} / {r['fused_roofline_s']:.3f}" if r["fused_launches"] else "none (tables)")
        lines.append(f"| {r['nside']} | {r['batch']} | {r['launches']} | {r['roofline_maps_per_s']:.1f} | "
                     f"{r['as_built_maps_per_s']:.1f} | {fr} | {r['peak_bytes'] / 2**30:.1f} "
                     f"({r['plan_bytes'] / 2**30:.2f}, {r['tables_bytes'] / 2**30:.1f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nside", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--engine", choices=["auto", "tables", "fused"], default="auto")
    # the first per-degree loop kernels were replaced by the tl.dot ones (issue 20) and are no longer in the
    # package, so they can no longer be compiled and modelled (their figures: issue 20's text and the git history)
    ap.add_argument("--kernel", choices=["dot", "workspace"], default="dot",
                    help="fused Legendre step: tl.dot tiles (the engine's) or table tiles + bmm")
    ap.add_argument("--torch-elementwise", action="store_true",
                    help="the chirp-z passes as torch ops (the CPU path) instead of the fused Triton kernels")
    ap.add_argument("--memory-gib", type=float, default=80.0, help="device memory (H100: 80)")
    ap.add_argument("--max-peak-gib", type=float, default=None, help="skip (nside, batch) whose peak exceeds this")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    model = Model(memory_bytes=int(args.memory_gib * 2**30), engine=args.engine, kernel=args.kernel,
                  elementwise=not args.torch_elementwise)
    rows = []
    for nside in args.nside:
        for batch in args.batch:
            r = model.run(nside, batch, getattr(torch, args.dtype), args.depth)
            if args.max_peak_gib is not None and r["peak_bytes"] > args.max_peak_gib * 2**30:
                continue
            rows.append(r)
            print(f"nside {nside} batch {batch}: {r['launches']} launches, roofline {r['roofline_maps_per_s']:.1f} maps/s, "
                  f"as built {r['as_built_maps_per_s']:.1f} maps/s, peak {r['peak_bytes'] / 2**30:.1f} GiB", flush=True)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": "H100 SXM (model)", "figures": H100, "engine": args.engine, "kernel": args.kernel,
                                         "fused_elementwise": not args.torch_elementwise,
                                         "rows": rows}, indent=1))
    return 0



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


if __name__ == "__main__":
    raise SystemExit(main())
