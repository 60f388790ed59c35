"""`cptlab study status DIR`: every run with done / failed (its error) / pending, and its times."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from cptlab.study.runner import run_study
from tests.study.helpers import toy_study


def test_status_lists_done_failed_with_error_and_pending_with_times(tmp_path, capsys):
    from cptlab.cli import main

    spec = toy_study(tmp_path / "s.yaml", domains=("code", "prose"), scales=(1.0,))
    data = yaml.safe_load(spec.read_text())
    data["steps"][0]["fail"] = True  # the grid runs' first step raises
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "st"
    run_study(spec, out, only=["grid-code-*"])  # baseline done, grid-code-1 failed, grid-prose-1 not selected
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["study", "status", str(out), "--json"])
    assert e.value.code == 0
    status = json.loads(capsys.readouterr().out)
    runs = {r["name"]: r for r in status["runs"]}
    assert {n: r["status"] for n, r in runs.items()} == {"baseline": "done", "grid-code-1": "failed",
                                                          "grid-prose-1": "pending"}
    assert runs["grid-code-1"]["error"] == "ValueError: toy failure in grid-code-1"
    assert status["counts"] == {"pending": 1, "running": 0, "done": 1, "failed": 1}
    done = runs["baseline"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", done["started"])
    assert re.fullmatch(r"\d+:\d\d:\d\d", done["duration"]) and runs["grid-prose-1"]["started"] == ""
    with pytest.raises(SystemExit) as e:  # the table: the same facts for people
        main(["study", "status", str(out)])
    table = capsys.readouterr().out
    assert e.value.code == 0
    for word in ("baseline", "done", "grid-code-1", "failed", "ValueError: toy failure in grid-code-1",
                 "grid-prose-1", "pending", done["started"]):
        assert word in table, word
