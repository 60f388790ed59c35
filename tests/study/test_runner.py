"""The runner in this process, with the toy step kind: skip by hash, changed config, failures, outputs."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from cptlab.errors import CptlabError
from cptlab.study.runner import RunnerOptions, run_study
from cptlab.study.store import Store, to_dataframes
from tests.study.helpers import dump, toy_study
from tests.study.toy import toy_numbers


def calls(study_dir):
    path = study_dir / "toy-calls.log"
    return path.read_text().split() if path.exists() else []


def test_runs_the_grid_and_records_every_result(tmp_path):
    spec = toy_study(tmp_path / "s.yaml")
    out = tmp_path / "study"
    summary = run_study(spec, out)
    assert summary["counts"] == {"pending": 0, "running": 0, "done": 5, "failed": 0}
    assert calls(out) == ["baseline/eval", "grid-code-1/train", "grid-code-1/eval", "grid-code-2/train",
                          "grid-code-2/eval", "grid-prose-1/train", "grid-prose-1/eval", "grid-prose-2/train",
                          "grid-prose-2/eval"]
    conn = sqlite3.connect(out / "results.sqlite")
    # The eval step of grid-prose-2 read ${steps.train.value} = 2 * scale = 4 as its offset.
    (ppl,) = conn.execute("SELECT token_perplexity FROM evaluations WHERE run='grid-prose-2' AND step_name='eval' "
                          "AND domain='code'").fetchone()
    assert ppl == pytest.approx(toy_numbers(2.0, 1, "code", offset=4.0)["token_perplexity"])
    # train recorded only its own domain; metrics: 4 points per toy step, seed 1 from the spec.
    assert conn.execute("SELECT domain FROM evaluations WHERE run='grid-prose-1' AND step_name='train'").fetchall() \
        == [("prose",)]
    losses = [v for (v,) in conn.execute("SELECT value FROM metrics WHERE run='grid-code-2' AND step_name='train' "
                                          "AND key='loss' ORDER BY step")]
    assert losses == pytest.approx([2.0 * 3.0 / (i + 1) + 0.01 for i in range(4)])
    # NaN in a diagnostic became null; the artifact path is relative to the study dir.
    (diag,) = conn.execute("SELECT result FROM diagnostics WHERE run='grid-code-1' AND step_name='eval'").fetchone()
    assert json.loads(diag) == {"scale": 1.0, "nan": None}
    (art,) = conn.execute("SELECT path FROM artifacts WHERE run='grid-code-1' AND step_name='train'").fetchone()
    assert art == "runs/grid-code-1/train/out.json" and (out / art).is_file()
    assert conn.execute("SELECT baseline FROM runs WHERE name='grid-code-1'").fetchone() == ("baseline",)


def test_second_run_skips_everything_and_changed_config_reruns_only_that_run(tmp_path):
    spec = toy_study(tmp_path / "s.yaml")
    out = tmp_path / "study"
    run_study(spec, out)
    before = dump(out)
    n = len(calls(out))
    summary = run_study(spec, out)
    assert set(summary["runs"].values()) == {"skipped"} and len(calls(out)) == n
    assert dump(out) == before

    # Change the recipe of one run only: an `include`-style override through the scale of code/2 via exclude+include
    data = yaml.safe_load(spec.read_text())
    data["exclude"] = [{"domain": "prose", "scale": 2.0}]
    data["include"] = [{"domain": "prose", "scale": 2.5}]
    spec.write_text(yaml.safe_dump(data))
    run_study(spec, out)
    assert calls(out)[n:] == ["grid-prose-2.5/train", "grid-prose-2.5/eval"]
    names = [r["name"] for r in Store(out).runs()]
    assert "grid-prose-2" not in names and "grid-prose-2.5" in names  # pruned, added



def test_changing_one_runs_config_reruns_that_run_only(tmp_path):
    """Each domain's number of points comes from vars via a nested placeholder; change only prose/2's."""
    spec = toy_study(tmp_path / "s.yaml")
    data = yaml.safe_load(spec.read_text())
    data["vars"] = {"points": {"code-1": 4, "code-2": 4, "prose-1": 4, "prose-2": 4}}
    data["steps"][0]["points"] = "${points.${domain}-${scale}}"
    data["grid"]["scale"] = [1, 2]
    spec.write_text(yaml.safe_dump(data))
    out = tmp_path / "study"
    run_study(spec, out)
    before = dump(out)
    n = len(calls(out))
    data["vars"]["points"]["prose-2"] = 6
    spec.write_text(yaml.safe_dump(data))
    summary = run_study(spec, out)
    assert calls(out)[n:] == ["grid-prose-2/train", "grid-prose-2/eval"]
    assert summary["runs"]["grid-prose-2"] == "done"
    assert [summary["runs"][r] for r in ("baseline", "grid-code-1", "grid-code-2", "grid-prose-1")] == ["skipped"] * 4
    after = dump(out)
    changed = [t for t in after if after[t] != before[t]]
    assert set(changed) <= {"runs", "steps", "metrics"}
    pts = [r for r in after["metrics"] if r[0] == "grid-prose-2" and r[1] == "train"]
    assert len(pts) == 6
    assert [r for r in after["metrics"] if r[0] != "grid-prose-2"] == \
        [r for r in before["metrics"] if r[0] != "grid-prose-2"]


def test_changed_step_config_reruns_that_run_and_replaces_its_results(tmp_path):
    spec = toy_study(tmp_path / "s.yaml")
    out = tmp_path / "study"
    run_study(spec, out)
    n = len(calls(out))
    data = yaml.safe_load(spec.read_text())
    # Only the baseline's recipe changes.
    data["baseline"]["steps"][0]["scale"] = 0.75
    spec.write_text(yaml.safe_dump(data))
    summary = run_study(spec, out)
    assert calls(out)[n:] == ["baseline/eval"]
    assert summary["runs"]["baseline"] == "done"
    assert all(summary["runs"][r] == "skipped" for r in summary["runs"] if r != "baseline")
    conn = sqlite3.connect(out / "results.sqlite")
    ppls = conn.execute("SELECT token_perplexity FROM evaluations WHERE run='baseline' ORDER BY domain").fetchall()
    assert [p for (p,) in ppls] == pytest.approx([toy_numbers(0.75, 1, d)["token_perplexity"]
                                                  for d in ("code", "prose")])


def test_failed_run_is_recorded_and_the_study_goes_on(tmp_path):
    spec = toy_study(tmp_path / "s.yaml")
    data = yaml.safe_load(spec.read_text())
    data["grid"]["fail"] = [False]
    data["include"] = [{"domain": "code", "scale": 9.0, "fail": True}]
    data["steps"][0]["fail"] = "${fail}"
    spec.write_text(yaml.safe_dump(data))
    out = tmp_path / "study"
    summary = run_study(spec, out)
    assert summary["counts"]["failed"] == 1 and summary["counts"]["done"] == 5
    row = Store(out).run("grid-code-true-9")
    assert row["status"] == "failed" and "toy failure in grid-code-true-9" in row["error"]
    assert "ValueError" in (out / "runs" / "grid-code-true-9" / "error.log").read_text()
    conn = sqlite3.connect(out / "results.sqlite")
    assert conn.execute("SELECT count(*) FROM evaluations WHERE run='grid-code-true-9'").fetchone() == (0,)
    # A new invocation retries the earlier failure (it fails again, still recorded once).
    n = len(calls(out))
    run_study(spec, out)
    assert calls(out)[n:] == ["grid-code-true-9/train"]
    assert Store(out).run("grid-code-true-9")["attempts"] == 2


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    spec = toy_study(tmp_path / "s.yaml", scales=(1.0,))
    data = yaml.safe_load(spec.read_text())
    data["steps"][0]["fail"] = True
    spec.write_text(yaml.safe_dump(data))
    out = tmp_path / "study"
    with pytest.raises(CptlabError, match="grid-code-1 failed"):
        run_study(spec, out, options=RunnerOptions(fail_fast=True))
    assert Store(out).counts() == {"pending": 1, "running": 0, "done": 1, "failed": 1}


def test_only_selects_runs_and_their_baseline(tmp_path):
    spec = toy_study(tmp_path / "s.yaml")
    out = tmp_path / "study"
    summary = run_study(spec, out, only=["*prose-2"])
    assert set(summary["runs"]) == {"baseline", "grid-prose-2"}
    assert Store(out).counts()["pending"] == 3


def test_finished_steps_are_reused_when_a_run_is_redone(tmp_path):
    """The train step finished, then eval failed: the retry runs eval only."""
    spec = toy_study(tmp_path / "s.yaml", domains=("code",), scales=(1.0,))
    data = yaml.safe_load(spec.read_text())
    data["steps"][1]["fail"] = "${vars_fail}"
    data["vars"] = {"vars_fail": True}
    spec.write_text(yaml.safe_dump(data))
    out = tmp_path / "study"
    run_study(spec, out)
    assert calls(out) == ["baseline/eval", "grid-code-1/train", "grid-code-1/eval"]
    # Fixing the eval step changes the run's hash: the run dir is wiped, everything runs again.
    data["vars"] = {"vars_fail": False}
    spec.write_text(yaml.safe_dump(data))
    run_study(spec, out)
    assert calls(out)[3:] == ["grid-code-1/train", "grid-code-1/eval"]


def test_step_done_markers_let_a_retry_skip_finished_steps(tmp_path, monkeypatch):
    spec = toy_study(tmp_path / "s.yaml", domains=("code",), scales=(1.0,))
    out = tmp_path / "study"
    import tests.study.toy as toy_mod

    real = toy_mod.toy

    def flaky(step, ctx):
        if ctx.step_name == "eval" and ctx.run.role == "run":
            raise RuntimeError("transient")
        return real(step, ctx)

    from cptlab.study.steps import register_step_kind

    register_step_kind("toy", flaky, toy_mod.ToyStep)
    try:
        run_study(spec, out)
    finally:
        register_step_kind("toy", real, toy_mod.ToyStep)
    assert Store(out).run("grid-code-1")["error"] == "RuntimeError: transient"
    run_study(spec, out)  # same hash: the finished train step is reused
    assert calls(out) == ["baseline/eval", "grid-code-1/train", "grid-code-1/eval"]
    conn = sqlite3.connect(out / "results.sqlite")
    assert conn.execute("SELECT count(*) FROM metrics WHERE run='grid-code-1' AND step_name='train'").fetchone() \
        == (4,)


def test_dataframes_and_csv_export(tmp_path):
    spec = toy_study(tmp_path / "s.yaml")
    out = tmp_path / "study"
    run_study(spec, out)
    frames = to_dataframes(out)
    runs = frames["runs"]
    assert list(runs["name"]) == ["baseline", "grid-code-1", "grid-code-2", "grid-prose-1", "grid-prose-2"]
    assert list(runs["axis.scale"][1:]) == [1.0, 2.0, 1.0, 2.0]
    ev = frames["evaluations"]
    conn = sqlite3.connect(out / "results.sqlite")
    assert len(ev) == conn.execute("SELECT count(*) FROM evaluations").fetchone()[0] == 14
    from cptlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["study", "export", str(out), "--csv", "--out", str(tmp_path / "csv")])
    assert e.value.code == 0
    import pandas as pd

    back = pd.read_csv(tmp_path / "csv" / "evaluations.csv")
    assert back["token_perplexity"].sum() == pytest.approx(ev["token_perplexity"].sum())
