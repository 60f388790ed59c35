"""Executors and launchers: submitit's local executor, torchrun, and the CLI (dry run, status, errors)."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from cptlab.study.runner import RunnerOptions, run_study
from tests.study.conftest import REPO, cli_cmd, cli_env
from tests.study.helpers import dump, toy_study


def test_submitit_local_executor_gives_the_same_database(tmp_path):
    spec = toy_study(tmp_path / "s.yaml", domains=("code",))
    reference = tmp_path / "reference"
    run_study(spec, reference)
    out = tmp_path / "submitit"
    summary = run_study(spec, out, options=RunnerOptions(executor="submitit-local"))
    assert summary["runs"] == {"baseline": "done", "grid-code-1": "done", "grid-code-2": "done"}
    assert dump(out) == dump(reference)
    assert any((out / "submitit").iterdir())  # submitit's job logs
    again = run_study(spec, out, options=RunnerOptions(executor="submitit-local"))
    assert set(again["runs"].values()) == {"skipped"}


def test_torchrun_launcher_runs_distributed_steps_on_every_rank(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"name": "dist", "grid": {"x": [1]},
                                "steps": [{"kind": "toy-dist", "name": "dist"}, {"kind": "toy", "name": "local"}]}))
    out = tmp_path / "study"
    proc = subprocess.run(cli_cmd("study", "run", str(spec), "--out", str(out), "--launcher", "torchrun",
                                  "--nproc", "2", "--quiet"), env=cli_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    conn = sqlite3.connect(out / "results.sqlite")
    (result,) = conn.execute("SELECT result FROM steps WHERE name='dist'").fetchone()
    assert json.loads(result) == {"world_size": 2, "rank_sum": 1, "rank": 0}  # 0 + 1 summed over gloo
    assert dict(conn.execute("SELECT key, value FROM metrics WHERE step_name='dist'")) == \
        {"world_size": 2.0, "rank_sum": 1.0}
    # the non-distributed step ran once, in the runner's process
    assert (out / "toy-calls.log").read_text().split() == ["grid-1/local"]


def test_cli_dry_run_status_and_usage_errors(tmp_path, tiny_model_dir):
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({
        "name": "dry", "base": str(tiny_model_dir), "grid": {"lr": [0.001, 0.002]},
        "steps": [{"kind": "train", "config": {"model": {"name": "${base_path}"}, "max_steps": 10,
                                               "batch_size": 4, "data": {"seq_len": 32, "sources": {"a": 1},
                                                                          "corpus": "/c"}}}]}))
    out = tmp_path / "study"
    proc = subprocess.run(cli_cmd("study", "run", str(spec), "--out", str(out), "--dry-run", "--json"),
                          env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["runs"]
    assert [r["name"] for r in rows] == ["grid-0.001", "grid-0.002"]
    assert all(r["tokens"] == 10 * 4 * 32 and r["status"] == "new" for r in rows)
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    d, L, ff = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    assert rows[0]["flops"] == pytest.approx(6 * L * (4 * d * d + 3 * d * ff) * 1280)
    assert not out.exists()  # a dry run writes nothing
    table = subprocess.run(cli_cmd("study", "run", str(spec), "--out", str(out), "--dry-run"), env=cli_env(),
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "grid-0.002" in table.stdout and "1,280" in table.stdout and "2 runs (2 to run)" in table.stdout

    bad = subprocess.run(cli_cmd("study", "run", str(spec), "--executor", "pbs"), env=cli_env(), cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--executor pbs" in " ".join(bad.stderr.split())
    missing = subprocess.run(cli_cmd("study", "status", str(tmp_path / "none")), env=cli_env(), cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "not a study directory" in " ".join(missing.stderr.split())
    assert "Traceback" not in missing.stderr


def test_cli_run_exit_code_reflects_failures(tmp_path):
    spec = toy_study(tmp_path / "s.yaml", domains=("code",), scales=(1.0,))
    data = json.loads(json.dumps(__import__("yaml").safe_load(spec.read_text())))
    data["steps"][0]["fail"] = True
    spec.write_text(json.dumps(data))
    from cptlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["study", "run", str(spec), "--out", str(tmp_path / "st"), "--quiet"])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        main(["study", "status", str(tmp_path / "st")])
    assert e.value.code == 0
