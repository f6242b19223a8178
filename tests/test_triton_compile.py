"""Every Triton kernel the engine launches compiles for sm_80 and sm_90, float32 and float64,
at the block sizes it launches, with no register spills (issue 20, build 5): proven on the CPU
with ``triton.compile(..., target=GPUTarget("cuda", arch, 32))`` and the cubin's resource usage."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton", reason="triton is not importable here: the Triton kernels cannot be compiled")

from scatterdist.sphere import triton_aot, triton_legendre  # noqa: E402


@pytest.fixture(scope="module")
def compiled() -> list[triton_aot.Compiled]:
    return triton_aot.compile_all()


def test_every_launch_config_compiles_for_sm80_and_sm90(compiled) -> None:
    launches = triton_aot.launch_configs()
    names = {c["name"] for c in launches}
    assert names == {"synth_dot_kernel", "adjoint_dot_kernel", "coefficients_kernel", "chirp_in_kernel",
                     "chirp_out_kernel", "chirp_in_adjoint_kernel", "chirp_out_adjoint_kernel", "equator_in_kernel",
                     "equator_out_kernel"}
    assert {c["name"] for c in triton_legendre.launch_configs()} < names
    assert {c["dtype"] for c in launches} == {"float32", "float64"}
    built = {(c.kernel, c.arch, c.dtype) for c in compiled}
    assert built == {(c["name"], arch, c["dtype"]) for c in launches for arch in triton_aot.ARCHES}


def test_no_register_spills(compiled) -> None:
    for c in compiled:
        assert c.registers > 0, c
        assert not c.spills and c.stack_bytes == 0, (
            f"{c.kernel} ({c.dtype}, sm_{c.arch}, {c.constexprs}) spills {c.local_bytes} bytes/thread "
            f"to local memory (stack {c.stack_bytes} bytes) with {c.registers} registers"
        )
        assert c.registers <= 255


@pytest.mark.slow  # ~5 min on 2 shared cores (each unrolled two-recurrence kernel compiles in ~35 s)
def test_spin_kernels_compile_for_sm80_and_sm90_without_spills() -> None:
    """The fused spin-n kernels (:mod:`scatterdist.sphere.triton_spin`), at the block sizes they
    launch, for both targets and dtypes. Measured: 156-254 registers, no local memory."""
    from scatterdist.sphere import triton_spin

    launches = triton_spin.launch_configs()
    assert {c["name"] for c in launches} == {"spin_synth_kernel", "spin_adjoint_kernel", "spin_coefficients_kernel"}
    for launch in launches:
        for arch in triton_aot.ARCHES:
            usage, _, _ = triton_aot.compile_kernel(launch["fn"], launch["signature"], launch["constexprs"], arch,
                                                    launch.get("num_warps", 4))
            where = f"{launch['name']} ({launch['dtype']}, sm_{arch}, {launch['constexprs']})"
            assert 0 < usage["REG"] <= 255, (where, usage)
            assert usage["LOCAL"] == 0 and usage["STACK"] == 0, (where, usage)
