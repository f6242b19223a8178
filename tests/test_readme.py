"""The README's five-minute tour runs as written (the CUDA line only where a GPU is present)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tour_code() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Five-minute tour", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_tour_runs_and_its_round_trip_is_exact():
    import torch

    code = _tour_code()
    if not torch.cuda.is_available():
        code = "\n".join(line for line in code.splitlines() if 'device="cuda"' not in line)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README tour", "exec"), namespace)
    m, back = namespace["m"], namespace["back"]
    error = abs(back - m).max() / abs(m).max()
    assert error < 1e-8, error
    assert namespace["coeffs"].shape == (4, namespace["sc"].n_paths, namespace["sc"].npix_out)
