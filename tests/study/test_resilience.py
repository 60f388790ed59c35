"""Must-show: SIGKILL mid-grid and restart; two runner processes on one study. Real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from cptlab.study.runner import run_study
from tests.study.conftest import REPO, cli_cmd, cli_env
from tests.study.helpers import dump, toy_study


def calls(study_dir: Path) -> list[str]:
    path = study_dir / "toy-calls.log"
    return path.read_text().split() if path.exists() else []


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"runner exited early: {proc.communicate()}"
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


def test_sigkill_mid_grid_then_restart_equals_uninterrupted(tmp_path):
    spec = toy_study(tmp_path / "s.yaml", sleep=0.1)
    reference = tmp_path / "reference"
    run_study(spec, reference)

    out = tmp_path / "killed"
    cmd = cli_cmd("study", "run", str(spec), "--out", str(out), "--quiet")
    proc = subprocess.Popen(cmd, env=cli_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(out / "runs" / "grid-code-2" / "train" / "started", proc)
    time.sleep(0.05)  # in the middle of the step (4 points x 0.1 s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    before_restart = calls(out)
    assert before_restart == ["baseline/eval", "grid-code-1/train", "grid-code-1/eval", "grid-code-2/train"]
    conn = sqlite3.connect(out / "results.sqlite")
    status = dict(conn.execute("SELECT name, status FROM runs").fetchall())
    assert status == {"baseline": "done", "grid-code-1": "done", "grid-code-2": "running",
                      "grid-prose-1": "pending", "grid-prose-2": "pending"}
    # The killed run left nothing in the results tables.
    assert conn.execute("SELECT count(*) FROM metrics WHERE run='grid-code-2'").fetchone() == (0,)
    conn.close()
    st = subprocess.run(cli_cmd("study", "status", str(out), "--json"), env=cli_env(), cwd=REPO,
                        capture_output=True, text=True, check=True)
    assert {r["name"]: r["status"] for r in json.loads(st.stdout)["runs"]}["grid-code-2"] == "interrupted"

    again = subprocess.run(cmd, env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    # Finished runs were not re-run; the interrupted one was redone from its interrupted step.
    assert calls(out)[len(before_restart):] == ["grid-code-2/train", "grid-code-2/eval", "grid-prose-1/train",
                                                "grid-prose-1/eval", "grid-prose-2/train", "grid-prose-2/eval"]
    assert dump(out) == dump(reference)
    conn = sqlite3.connect(out / "results.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT attempts FROM runs WHERE name='grid-code-2'").fetchone() == (2,)


def test_two_runner_processes_share_a_study_without_running_a_run_twice(tmp_path):
    spec = toy_study(tmp_path / "s.yaml", scales=(1.0, 2.0, 3.0), sleep=0.1)
    reference = tmp_path / "reference"
    run_study(spec, reference)

    out = tmp_path / "shared"
    cmd = cli_cmd("study", "run", str(spec), "--out", str(out), "--quiet")
    procs = [subprocess.Popen(cmd, env=cli_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    steps = calls(out)
    assert sorted(steps) == sorted(calls(reference))  # every step ran exactly once over both processes
    assert len(steps) == len(set(steps)) == 13
    conn = sqlite3.connect(out / "results.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    claimants = {c for (c,) in conn.execute("SELECT claimed_by FROM runs")}
    assert len(claimants) == 2, claimants  # both processes did work
    assert conn.execute("SELECT max(attempts) FROM runs").fetchone() == (1,)
    assert dump(out) == dump(reference)
