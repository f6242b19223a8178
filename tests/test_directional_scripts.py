"""The directional benchmark and the anisotropy study run as documented (tiny sizes)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "directional.py"), "--nside", "16", "--rounds", "1",
                          "--threads", "1", "--maps", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Scattering depth 2: N=1" in out.stdout and "pys2let analysis_lm2wav" in out.stdout


def test_anisotropy_study_runs(tmp_path):
    result = tmp_path / "aniso.json"
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "anisotropy.py"), "--nside", "16", "--skies", "16",
                          "--calibration", "16", "--threads", "1", "--json", str(result)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {r["statistic"]: r for r in json.loads(result.read_text())["rows"]}
    assert set(rows) == {"scattering N=1", "scattering N=1 S1", "scattering N=4", "scattering N=4 S1",
                         "power spectrum", "pixel moments", "wavelet moments"}
    assert all(0 <= r["accuracy"] <= 1 and r["se"] > 0 for r in rows.values())
    assert rows["scattering N=4"]["features"] > rows["scattering N=1"]["features"]
