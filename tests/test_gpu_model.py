"""benchmarks/gpu_model.py (issue 20, build 5): its meta-device accounting against a real CPU run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from scatterdist import Scattering
from scatterdist.sphere import torch_sht

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _gpu_model():
    spec = importlib.util.spec_from_file_location("gpu_model", ROOT / "benchmarks" / "gpu_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_model", module)
    spec.loader.exec_module(module)
    return module


def test_model_matches_a_real_cpu_run_at_nside_64(monkeypatch) -> None:
    """Same aten ops (name by name) and the same output shape as the torch engines on CPU tensors."""
    gm = _gpu_model()
    nside, batch = 64, 2
    model = gm.Model(memory_bytes=4 << 30, engine="tables", elementwise=False)  # the CPU path's torch ops
    predicted = model.run(nside, batch, torch.float32)
    predicted_ops = Counter(op.name for op in model.last_recorder.ops)

    monkeypatch.setattr(torch_sht, "LEGENDRE_ENGINE", "torch")
    torch_sht.clear_legendre_cache()
    sc = Scattering(nside, depth=2, backend="torch", device="cpu", dtype=torch.float32, nthreads=1,
                    memory_budget=model.budget)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 12 * nside**2))).float()
    sc(x)  # plans and tables built
    rec = gm.Recorder()
    with rec:
        out = sc(x)
    real_ops = Counter(op.name for op in rec.ops)
    torch_sht.clear_legendre_cache()
    assert predicted["output_shape"] == list(out.shape)
    assert predicted["aten_ops"] == len(rec.ops), (predicted_ops - real_ops, real_ops - predicted_ops)
    assert predicted_ops == real_ops
    assert predicted["syncs"] == rec.syncs + 0 == 1
    assert predicted["launches"] == sum(op.launch for op in rec.ops)
    assert predicted["bytes"] == sum(op.bytes for op in rec.ops)
    assert 0 < predicted["roofline_s"] <= predicted["as_built_s"]


def test_model_cli_writes_json_with_the_fused_engine(tmp_path) -> None:
    """Beyond the table budget the model times the fused kernels from their compiled code."""
    pytest.importorskip("triton", reason="triton is not importable: no compiled code to time")
    out = tmp_path / "model.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_model.py"), "--nside", "32", "--batch", "2",
         "--engine", "fused", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["fused_launches"] > 0
    kernels = [f["kernel"] for f in rows[0]["fused"]]
    dots = [f for f in rows[0]["fused"] if f["kernel"].endswith("_dot_kernel")]
    # every tl.dot launch comes with the launch that fills its recurrence workspace
    assert dots and kernels.count("coefficients_kernel") == len(dots) == len(kernels) // 2
    for fused in dots:
        assert fused["registers"] > 0 and fused["loop_cycles"] > 0 and fused["seconds"] > 0
    assert "| 32 | 2 |" in proc.stdout


def test_model_of_the_fused_chirp_kernels_replaces_their_torch_ops() -> None:
    """With the CUDA path's fused chirp-z kernels (triton_elementwise) the model records those launches,
    at their bytes over the bandwidth, in place of the torch ops they fuse: fewer launches and bytes."""
    gm = _gpu_model()
    plain = gm.Model(memory_bytes=4 << 30, engine="tables", elementwise=False)
    fused = gm.Model(memory_bytes=4 << 30, engine="tables", elementwise=True)
    a, b = plain.run(64, 2, torch.float32), fused.run(64, 2, torch.float32)
    names = Counter(op.name for op in fused.last_recorder.ops)
    assert {"chirp_in_kernel", "chirp_out_kernel", "chirp_in_adjoint_kernel", "chirp_out_adjoint_kernel",
            "equator_in_kernel", "equator_out_kernel"} <= set(names)
    assert names["bmm"] < Counter(op.name for op in plain.last_recorder.ops)["bmm"]  # no north/south bmm
    assert names["constant_pad_nd"] < Counter(op.name for op in plain.last_recorder.ops)["constant_pad_nd"]
    assert b["launches"] < a["launches"] and b["bytes"] < a["bytes"]
    assert b["output_shape"] == a["output_shape"]
    for op in fused.last_recorder.ops:
        if op.name.startswith(("chirp_", "equator_")):
            assert op.launch and op.bytes > 0 and op.seconds == op.bytes / gm.H100["bandwidth"]
