"""Progress: one overall bar for the grid (runs) and one bar per run (its steps), drawn on a terminal."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from cptlab.console import progress as console_progress
from cptlab.study import runner
from cptlab.study.runner import run_study
from tests.study.helpers import toy_study


class RecordingProgress(Progress):
    """A real rich Progress on a fake terminal that remembers every task's total and last state."""

    def __init__(self, log):
        columns = console_progress().columns  # the columns cptlab draws (description, bar, M/N, times)
        super().__init__(*columns, console=Console(file=io.StringIO(), force_terminal=True, width=120),
                         disable=False)
        self.log = log

    def add_task(self, description, *args, total=None, **kwargs):
        task = super().add_task(description, *args, total=total, **kwargs)
        self.log.append({"description": description, "total": total, "id": task, "bar": self})
        return task

    def update(self, task_id, **kwargs):
        super().update(task_id, **kwargs)
        for t in self.log:
            if t["bar"] is self and t["id"] == task_id:
                t.update({k: kwargs[k] for k in ("completed", "description") if k in kwargs})

    def advance(self, task_id, advance=1):
        super().advance(task_id, advance)
        for t in self.log:
            if t["bar"] is self and t["id"] == task_id:
                t["completed"] = t.get("completed", 0) + advance

    def output(self) -> str:
        return self.console.file.getvalue()


def test_overall_bar_counts_runs_and_each_run_has_a_step_bar(tmp_path, monkeypatch):
    tasks, bars = [], []

    def fake_progress(*a, **k):
        bars.append(RecordingProgress(tasks))
        return bars[-1]

    monkeypatch.setattr(runner, "progress", fake_progress)
    spec = toy_study(tmp_path / "s.yaml")  # a baseline run (1 step) + 4 grid runs (2 steps each)
    run_study(spec, tmp_path / "study")
    overall, *per_run = tasks
    assert overall["description"] == "study toy" and overall["total"] == 5 and overall["completed"] == 5
    # each run's bar names the run, then the step it is in
    assert [t["description"].strip() for t in per_run] == ["baseline: eval", "grid-code-1: eval",
                                                           "grid-code-2: eval", "grid-prose-1: eval",
                                                           "grid-prose-2: eval"]
    assert [(t["total"], t["completed"]) for t in per_run] == [(1, 1), (2, 2), (2, 2), (2, 2), (2, 2)]
    drawn = bars[0].output()
    assert "study toy" in drawn and "5/5" in drawn
    # A second invocation skips every run: the overall bar still reaches its end, no run bar is drawn.
    tasks.clear()
    run_study(spec, tmp_path / "study")
    assert [(t["total"], t.get("completed")) for t in tasks] == [(5, 5)]
