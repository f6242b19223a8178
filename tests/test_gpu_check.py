"""``bash benchmarks/gpu_check.sh`` dry run (issue 20, build 6): without a CUDA device it skips
every CUDA step with the reason and still writes its JSON and markdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the no-device path")
def test_gpu_check_dry_run_writes_its_json(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--quick"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["environment"]["cuda_available"] is False
    for step in ("gpu_tests", "pipeline_gpu", "transform", "torch_harmonics_pair"):
        assert report["steps"][step] == {"status": "skipped", "reason": "no CUDA device visible to torch"}
    assert report["elapsed_s"] < report["budget_s"]
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| transform | skipped: no CUDA device visible to torch |" in md
