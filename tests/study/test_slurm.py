"""The SLURM path, without a cluster: the documented example's parameters become the sbatch script submitit
submits (fake `srun`/`sbatch` on PATH record it), and bad parameters or a missing SLURM are clear errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from cptlab.errors import CptlabError
from cptlab.study import runner
from cptlab.study.runner import make_executor


def _documented_example() -> dict:
    """The `executor:` block of cptlab.study.runner's docstring (the documentation of the SLURM path)."""
    doc = runner.__doc__
    block = doc[doc.index("    executor:\n"):]
    lines = []
    for line in block.splitlines():
        if lines and line.strip() and not line.startswith("      "):
            break
        lines.append(line)
    return yaml.safe_load("\n".join(lines))["executor"]["slurm"]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    # sbatch: keep the submitted script and answer like SLURM does.
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def _noop(x):
    return x


def test_documented_slurm_example_becomes_one_job_array(fake_slurm):
    params = _documented_example()
    assert params["partition"] == "gpu" and params["array_parallelism"] == 16
    executor = make_executor(fake_slurm / "submitit", "slurm", params, "cptlab-demo")
    jobs = executor.map_array(_noop, list(range(20)))
    assert [j.job_id for j in jobs][:2] == ["4242_0", "4242_1"] and len(jobs) == 20
    script = (fake_slurm / "submitted.sh").read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, flags=re.M))
    assert sbatch["array"] == "0-19%16"  # every run in one array, at most array_parallelism at once
    assert sbatch["partition"] == "gpu" and sbatch["time"] == "240" and sbatch["gpus-per-node"] == "1"
    assert sbatch["cpus-per-task"] == "8" and sbatch["account"] == "my-project"
    assert sbatch["job-name"] == "cptlab-demo"
    assert params["array_parallelism"] == 16  # the study's parameters are not consumed


def test_bad_slurm_parameters_and_missing_slurm_are_clear_errors(fake_slurm, monkeypatch):
    with pytest.raises(CptlabError, match="executor.slurm: Unknown argument 'partitoin'"):
        make_executor(fake_slurm / "submitit", "slurm", {"partitoin": "gpu"}, "x")
    monkeypatch.setenv("PATH", str(Path(fake_slurm) / "empty"))
    with pytest.raises(CptlabError, match="--executor slurm: .*srun.*login node"):
        make_executor(fake_slurm / "submitit", "slurm", {}, "x")
