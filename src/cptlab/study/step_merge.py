"""Step kind `merge`: merge checkpoints into one HF dir (cptlab.diagnose.merge.merge_models).

    - name: merge
      kind: merge
      models: ["${base_path}", "${steps.train.final_dir}"]
      method: linear            # linear | task-arithmetic | slerp | ties
      weights: [0.5, 0.5]       # as given, not renormalised
      # base: DIR (task-arithmetic, ties), density: 0.5 (ties), t: 0.5 (slerp), out: DIR (default STEP_DIR/model)

Returns {out_dir, method, weights, t}; the merged dir is recorded as a `model` artifact.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.study.steps import StepContext, register_step_kind


class MergeStep(StrictModel):
    models: list[str] = Field(min_length=1)
    method: Literal["linear", "task-arithmetic", "slerp", "ties"] = "linear"
    base: str | None = None
    weights: list[float] | None = None
    density: float | list[float] = 0.5
    t: float = 0.5
    out: str | None = None


def merge_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Merge `models` with `method`; the result is an HF dir (default: the step dir's `model/`)."""
    from cptlab.diagnose.merge import merge_models

    out = step.get("out") or str(ctx.step_dir / "model")
    result = merge_models(step["models"], step.get("method", "linear"), out, base=step.get("base"),
                          weights=step.get("weights"), density=step.get("density", 0.5), t=step.get("t", 0.5),
                          overwrite=True)
    ctx.add_artifact("model", out)
    return {"out_dir": out, "method": result.method, "weights": result.weights, "t": result.t}


register_step_kind("merge", merge_step, MergeStep)
