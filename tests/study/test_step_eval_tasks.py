"""Step kind `eval-tasks`: task accuracy rows in results.sqlite, outputs readable by later steps, CSV export."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from cptlab.study.runner import run_study
from cptlab.study.store import export_csv, read_task_results

ITEMS = [
    {"context": "The capital of France is", "choices": ["Paris", "a city far away in the north"], "gold": 1},
    {"context": "def add(x, y):", "choices": [" return x + y", " pass"], "gold": 0},
    {"context": "JSON stands for", "choices": ["JavaScript Object Notation", "Java"], "gold": 0},
]


def test_eval_tasks_step_records_rows(tmp_path, tiny_model_dir):
    from cptlab.evaluate.tasks import eval_tasks

    task = tmp_path / "mc.jsonl"
    task.write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    spec = {
        "name": "tasks", "seed": 0,
        "steps": [
            {"kind": "eval-tasks", "name": "acc", "model": str(tiny_model_dir), "tasks": [str(task)],
             "label": "base", "batch_size": 4, "device": "cpu"},
            {"kind": "toy", "name": "after", "offset": "${steps.acc.tasks.mc.acc_norm}", "points": 1},
        ],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "study"
    summary = run_study(path, out)
    assert summary["counts"]["done"] == 1, summary

    expected = eval_tasks(str(tiny_model_dir), [str(task)], device="cpu").tasks["mc"]
    rows = {r["metric"]: r for r in read_task_results(out)}
    assert set(rows) == {"acc", "acc_norm"}
    for metric in ("acc", "acc_norm"):
        r = rows[metric]
        assert (r["step_name"], r["model"], r["task"], r["n"], r["status"]) == ("acc", "base", "mc", 3, "done")
        assert r["value"] == pytest.approx(expected[metric])
        assert r["stderr"] == pytest.approx(expected[f"{metric}_stderr"])
        assert r["extra"]["source"] == "cptlab" and r["extra"]["file"] == str(task)
    assert read_task_results(out, metric="acc")[0]["metric"] == "acc"

    conn = sqlite3.connect(out / "results.sqlite")
    (result,) = conn.execute("SELECT result FROM steps WHERE name = 'acc'").fetchone()
    assert json.loads(result)["tasks"]["mc"]["acc"] == pytest.approx(expected["acc"])
    (offset_used,) = conn.execute("SELECT result FROM diagnostics WHERE step_name = 'after'").fetchone()
    (ppl,) = conn.execute("SELECT token_perplexity FROM evaluations WHERE step_name = 'after' "
                          "AND domain = 'code'").fetchone()
    assert ppl == pytest.approx(10.0 + 4 + expected["acc_norm"])  # toy: 10*scale + seed*0.5 + len + offset
    assert json.loads(offset_used)["scale"] == 1.0
    (art,) = conn.execute("SELECT path FROM artifacts WHERE step_name = 'acc' AND kind = 'tasks'").fetchone()
    assert (out / art).is_file()
    conn.close()

    csvs = {p.name: p for p in export_csv(out, tmp_path / "csv")}
    assert "task_results.csv" in csvs and "acc_norm" in csvs["task_results.csv"].read_text()

    # a second `study run` finds the run done: nothing is recomputed, the rows stay
    assert run_study(path, out)["counts"]["done"] == 1
    assert len(read_task_results(out)) == 2


def test_add_task_results_maps_lm_eval_metrics(tmp_path):
    from cptlab.study.spec import RunSpec
    from cptlab.study.steps import StepContext
    from cptlab.study.store import RunRecord

    run = RunSpec.__new__(RunSpec)
    ctx = StepContext(run=run, run_dir=tmp_path, step_dir=tmp_path / "s", study_dir=tmp_path, step_name="s",
                      outputs={}, record=RunRecord())
    n = ctx.add_task_results("after", {"tasks": {"arc_easy": {
        "acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.6, "acc_norm_stderr": None, "acc_bytes": 0.4, "n": 10,
        "source": "lm-eval", "file": None}}, "settings": {"precision": "fp32"}})
    assert n == 3
    by = {t[3]: t for t in ctx.record.task_results}
    assert by["acc"][4:7] == (0.5, 0.1, 10) and by["acc_norm"][5] is None and by["acc_bytes"][5] is None
    assert by["acc"][7]["source"] == "lm-eval" and by["acc"][7]["settings"] == {"precision": "fp32"}
