"""Ahead-of-time compilation of the Triton kernels for CUDA targets, without a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` runs the whole
toolchain (Triton IR -> LLVM -> PTX -> ptxas -> cubin) on the CPU; the cubin's resource
usage (registers per thread, local memory = spills, stack) is read with the ``cuobjdump``
that ships with Triton. This is how the suite proves that every kernel the engine launches
builds for sm_80 (A100) and sm_90 (H100) with no register spills (issue 20, build 5), and
how ``benchmarks/gpu_model.py`` reads the compiled code of the fused kernels.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scatterdist.sphere import triton_elementwise, triton_legendre

#: Architectures proven in CI: A100 (sm_80) and H100 (sm_90).
ARCHES = (80, 90)


@dataclass
class Compiled:
    """One kernel compiled for one target."""

    kernel: str
    arch: int
    dtype: str
    constexprs: dict
    registers: int  # per thread
    local_bytes: int  # local memory per thread: register spills (0 when none)
    stack_bytes: int
    shared_bytes: int
    num_warps: int
    sass: str  # the disassembled code ("" when nvdisasm is not available)

    @property
    def spills(self) -> bool:
        return self.local_bytes > 0


class TritonToolchainError(RuntimeError):
    """Triton or its bundled CUDA tools are missing or failed (the message says which)."""


def _triton() -> Any:
    """The triton module, or one :class:`TritonToolchainError` that says how to install it."""
    try:
        import triton
    except ImportError as err:  # triton is the optional extra [triton]
        raise TritonToolchainError("triton is not installed: pip install 'scatterdist[triton]' "
                                   "(the ahead-of-time compile needs it)") from err
    return triton


def _tool(name: str) -> str:
    triton = _triton()
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if bundled.exists():
        return str(bundled)
    found = shutil.which(name)
    if found is None:
        raise TritonToolchainError(f"{name} not found next to triton ({bundled}) nor on PATH")
    return found


def resource_usage(cubin: bytes, kernel: str) -> dict[str, int]:
    """``{"REG", "STACK", "SHARED", "LOCAL"}`` of ``kernel`` in a cubin (``cuobjdump --dump-resource-usage``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    block = out[out.index(f"Function {kernel}") :] if f"Function {kernel}" in out else out
    usage = {}
    for name in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{name}:(\d+)", block)
        usage[name] = int(m.group(1)) if m else 0
    return usage


def disassemble(cubin: bytes) -> str:
    """SASS of a cubin (``nvdisasm``), "" when the tool is missing."""
    try:
        tool = _tool("nvdisasm")
    except TritonToolchainError:
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "-c", f.name], capture_output=True, text=True, check=True).stdout


def compile_kernel(fn: Any, signature: dict, constexprs: dict, arch: int, num_warps: int = 4,
                   with_sass: bool = False) -> tuple[dict, bytes, str]:
    """Compile a ``@triton.jit`` function for ``sm_<arch>``; returns (resource usage, cubin, sass)."""
    triton = _triton()
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature)
    sig.update({k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    cubin = compiled.asm["cubin"]
    name = compiled.metadata.name
    return resource_usage(cubin, name), cubin, disassemble(cubin) if with_sass else ""


def launch_configs() -> list[dict]:
    """Every kernel and launch configuration the engine launches: :mod:`triton_legendre` and
    :mod:`triton_elementwise`."""
    return triton_legendre.launch_configs() + triton_elementwise.launch_configs()


def compile_all(arches: tuple[int, ...] = ARCHES, with_sass: bool = False) -> list[Compiled]:
    """Every kernel and launch configuration of :func:`launch_configs`, for every arch."""
    results = []
    for launch in launch_configs():
        for arch in arches:
            usage, _, sass = compile_kernel(launch["fn"], launch["signature"], launch["constexprs"], arch,
                                            launch.get("num_warps", 4), with_sass)
            results.append(Compiled(
                kernel=launch["name"], arch=arch, dtype=launch["dtype"], constexprs=dict(launch["constexprs"]),
                registers=usage["REG"], local_bytes=usage["LOCAL"], stack_bytes=usage["STACK"],
                shared_bytes=usage["SHARED"], num_warps=launch.get("num_warps", 4), sass=sass,
            ))
    return results
