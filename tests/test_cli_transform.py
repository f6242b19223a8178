import subprocess
import sys

from scatterdist.cli import main


def test_equivariance_command_prints_table(capsys):
    assert main(["equivariance", "--nside", "16", "--trials", "1", "--oversample", "2", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    rows = {int(r[0]): r for r in lines if len(r) == 5 and r[0].isdigit()}
    assert sorted(rows) == [0, 1] and rows[1][1] == "modulus"
    assert float(rows[0][3]) < 1e-2 and 0 < float(rows[1][3]) < 0.1
    assert "oversample=2" in out


def test_console_script_runs_in_a_fresh_process():
    done = subprocess.run(
        [sys.executable, "-m", "scatterdist", "equivariance", "--nside", "8", "--trials", "1", "--analysis", "lsq"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "mean error" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "scatterdist", "equivariance", "--nside", "12"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "scatterdist: error: nside must be a power of two" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "equivariance" in capsys.readouterr().out
