"""Step kind `eval-tasks`: downstream multiple-choice accuracy of a model (cptlab.evaluate.tasks.eval_tasks).

    - name: tasks-after
      kind: eval-tasks
      model: "${steps.train.final_dir}"
      tasks: [./data/capitals.jsonl, ./data/code_mc.yaml]   # task files and/or lm-eval task names
      label: after              # how the report names this model
      # batch_size (auto), precision (fp32), limit, device, include_path (a dir of lm-eval task YAMLs)

Records one `task_results` row per task and metric (value, stderr, n), writes `tasks.json` (the full JSON of
`cptlab eval-tasks`) into the step dir, and returns {tasks: {task: {acc, acc_stderr, acc_norm, acc_norm_stderr,
n, source, file, ...}}, label}, so later steps read `${steps.<name>.tasks.<task>.acc}`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.study.steps import StepContext, register_step_kind


class EvalTasksStep(StrictModel):
    model: str
    tasks: list[str] = Field(min_length=1)
    label: str = "model"
    batch_size: int | Literal["auto"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    limit: int | None = Field(None, ge=1)
    device: str | None = None
    include_path: str | None = None


def eval_tasks_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Accuracy (acc, acc_norm, as lm-evaluation-harness) on multiple-choice tasks."""
    from cptlab.evaluate.tasks import eval_tasks

    result = eval_tasks(step["model"], step["tasks"], batch_size=step.get("batch_size", "auto"),
                        precision=step.get("precision", "fp32"), device=step.get("device"),
                        limit=step.get("limit"), include_path=step.get("include_path"))
    data = result.to_dict()
    label = step.get("label", "model")
    ctx.add_task_results(label, data)
    ctx.write_json_artifact("tasks", data)
    return {"tasks": data["tasks"], "label": label}


register_step_kind("eval-tasks", eval_tasks_step, EvalTasksStep)
