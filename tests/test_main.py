"""`python -m cptlab` is the CLI (torchrun launches it as `torchrun -m cptlab train ...`)."""

import subprocess
import sys


def test_python_m_cptlab_is_the_cli(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "cptlab", "train", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "CONFIG" in ok.stdout.upper()
    bad = subprocess.run([sys.executable, "-m", "cptlab", "train", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "missing.yaml" in bad.stdout + bad.stderr and "Traceback" not in bad.stderr
