"""The first device call, as one command (issue 20, build 6): ``bash benchmarks/gpu_check.sh``.

Runs, within ``--budget-s`` seconds (default 510: under 9 minutes on one H100), and writes
``<out>/gpu_check.json`` plus a markdown table ``<out>/gpu_check.md``:

1. environment (torch, triton, device, free memory);
2. the Triton kernels compiled for this device's architecture (registers, spills);
3. the GPU tests (``pytest -m gpu``: SHT accuracy, fused kernels, gradients, op counts);
4. the pipeline's GPU mode (``tests/test_gpu_pipeline.py``, its GPU test included);
5. the transform benchmark at nside 128/512/1024/2048, batches 1/8/32 (a batch that runs out
   of memory is recorded as such), peak memory, with the model's prediction beside it;
6. the SHT pair against torch-harmonics where it is installed.

Without a CUDA device every CUDA step is recorded as skipped (with the reason) and the JSON
is still written: that dry run is a test of the suite (``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

NSIDES = (128, 512, 1024, 2048)
BATCHES = (1, 8, 32)


class Clock:
    def __init__(self, budget_s: float) -> None:
        self.t0 = time.monotonic()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda_available": torch.cuda.is_available()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        env["triton"] = f"not importable: {type(exc).__name__}: {exc}"
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        env.update(device=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()),
                   free_gib=free / 2**30, total_gib=total / 2**30, cuda=torch.version.cuda,
                   device_count=torch.cuda.device_count())
    return env


def step_compile(arch: int | None) -> dict[str, Any]:
    from scatterdist.sphere import triton_aot

    arches = (arch,) if arch else triton_aot.ARCHES
    rows = [{"kernel": c.kernel, "arch": c.arch, "dtype": c.dtype, "registers": c.registers,
             "spill_bytes": c.local_bytes} for c in triton_aot.compile_all(arches)]
    return {"status": "ok" if all(r["spill_bytes"] == 0 for r in rows) else "spills", "rows": rows}


def step_pytest(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "command": " ".join(cmd), "timeout_s": timeout}
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {"status": "ok" if proc.returncode == 0 else "failed", "returncode": proc.returncode,
            "command": " ".join(cmd), "tail": tail}


def step_transform(clock: Clock, nsides: tuple[int, ...], batches: tuple[int, ...], reserve_s: float) -> dict:
    import torch_transform

    rows = []
    for nside in nsides:
        for batch in batches:
            if clock.left() < reserve_s:
                rows.append({"nside": nside, "batch": batch, "status": "skipped: time budget"})
                continue
            try:
                got = torch_transform.gpu_rows(nside, [batch], 2, 2, 1, None)
                rows.append({"status": "ok", **got[0]})
            except torch.cuda.OutOfMemoryError as exc:
                rows.append({"nside": nside, "batch": batch, "status": f"out of memory: {str(exc)[:120]}"})
            finally:
                torch.cuda.empty_cache()
    return {"status": "ok", "rows": rows}


def step_pair(clock: Clock) -> dict[str, Any]:
    import torch_transform

    rows = []
    for L in (512, 1024):
        if clock.left() < 30:
            break
        rows += torch_transform.sht_pair_rows(L, 16, 2, torch.device("cuda"))
    return {"status": "ok", "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# gpu_check: {env.get('device', 'no CUDA device')} (torch {env['torch']}, triton {env.get('triton')})",
             "", "| step | status |", "|---|---|"]
    for name, step in report["steps"].items():
        lines.append(f"| {name} | {step['status']}{': ' + step['reason'] if 'reason' in step else ''} |")
    rows = report["steps"].get("transform", {}).get("rows", [])
    if rows:
        lines += ["", "| nside | batch | maps/s | peak GiB | rel. error | engine | status |", "|---:|---:|---:|---:|---:|---|---|"]
        for r in rows:
            lines.append(f"| {r.get('nside')} | {r.get('batch')} | {r.get('maps_per_s', float('nan')):.2f} | "
                         f"{r.get('peak_gib', float('nan')):.1f} | {r.get('rel_error', float('nan')):.1e} | "
                         f"{r.get('engine', '')} | {r['status']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the first device call: tests, benchmarks, JSON + markdown")
    ap.add_argument("--out", type=Path, default=ROOT / "gpu_check_out")
    ap.add_argument("--budget-s", type=float, default=510.0)
    ap.add_argument("--quick", action="store_true", help="skip the ahead-of-time compile step (tests cover it)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    clock = Clock(args.budget_s)
    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {"environment": environment(), "steps": {}, "budget_s": args.budget_s}
    steps = report["steps"]
    no_cuda = {"status": "skipped", "reason": "no CUDA device visible to torch"}

    def save() -> None:
        report["elapsed_s"] = args.budget_s - clock.left()
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
        (args.out / "gpu_check.md").write_text(markdown(report))

    if args.quick:
        steps["compile"] = {"status": "skipped", "reason": "--quick"}
    else:
        arch = 10 * torch.cuda.get_device_capability()[0] + torch.cuda.get_device_capability()[1] if cuda else None
        try:
            steps["compile"] = step_compile(arch)
        except Exception as exc:  # noqa: BLE001 - a broken toolchain is a finding, recorded
            steps["compile"] = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
    save()
    if cuda:
        steps["gpu_tests"] = step_pytest(["-m", "gpu", "tests/test_torch_sht.py", "tests/test_triton_elementwise.py",
                                          "tests/test_torch_scattering.py",
                                          "tests/test_torch_ops.py"], min(150, clock.left() - 300))
        save()
        steps["pipeline_gpu"] = step_pytest(["tests/test_gpu_pipeline.py"], min(90, clock.left() - 240))
        save()
        steps["transform"] = step_transform(clock, NSIDES, BATCHES, reserve_s=40)
        save()
        steps["torch_harmonics_pair"] = step_pair(clock)
    else:
        for name in ("gpu_tests", "pipeline_gpu", "transform", "torch_harmonics_pair"):
            steps[name] = dict(no_cuda)
    save()
    print(markdown(report))
    print(f"written: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'} ({report['elapsed_s']:.0f} s)")
    failed = [n for n, s in steps.items() if s["status"] in ("failed", "timeout", "spills")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
