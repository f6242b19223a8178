"""Documentation matches the code: docstring examples run, the API reference is current,
and the README quotes only commands that exist."""

from __future__ import annotations

import doctest
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCTESTED = ["scatterdist", "scatterdist.wavelets", "scatterdist.sphere.sht", "scatterdist.scattering.frontend",
             "scatterdist.wavelet_transform", "scatterdist.equivariance", "scatterdist.transforms",
             "scatterdist.scattering.covariance"]


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0


def test_api_reference_is_current():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_api_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_readme_commands_exist():
    from scatterdist.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"^scatterdist ([a-z-]+)", readme, flags=re.M))
    used |= set(re.findall(r"`scatterdist ([a-z-]+)", readme))
    assert used and used <= commands, used - commands
    first_block = readme.split("```")[1].strip().splitlines()
    assert first_block[0].startswith("make demo") and first_block[1].startswith("make test")
    for placeholder in ("PLACEHOLDER", "CMB_TABLE", "TODO"):
        assert placeholder not in readme


def test_readme_result_tables_are_generated_from_the_result_files(tmp_path):
    """Every CMB table in the README is `scripts/readme_results.py` output for a results/*/cmb.json."""
    readme = (ROOT / "README.md").read_text()
    dirs = re.findall(r"<!-- results: ([^ ]+) -->", readme)
    assert dirs, "the README has no generated result blocks"
    for d in dirs:
        assert (ROOT / d / "cmb.json").exists() and (ROOT / d / "cmb_alpha.png").exists(), d
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_results.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # the check fails on an edited number
    edited = tmp_path / "README.md"
    edited.write_text(re.sub(r"(<!-- results: [^\n]+\n(?:.*\n)*?\| 0\.\d+ \| )\**\d+\.\d", r"\g<1>12.3", readme, count=1))
    assert edited.read_text() != readme
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_results.py"), "--check", "--readme",
                           str(edited)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "out of date" in done.stderr
