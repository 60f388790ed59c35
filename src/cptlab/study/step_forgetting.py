"""Step kind `forgetting`: continual-learning summaries of a sequence of evaluations (cptlab.diagnose.forgetting).

    - name: forgetting
      kind: forgetting
      stages: [legal, man_en]                         # the domain adapted to at each stage
      evals: ["${steps.eval-0.domains}", "${steps.eval-1.domains}", "${steps.eval-2.domains}"]   # base, stage 1..T

Records diagnostic kind "forgetting" (loss and perplexity matrices, forgetting matrix, per-domain and average
forgetting, backward and forward transfer) and metrics `average_forgetting`, `backward_transfer`,
`forward_transfer` at training step T; returns those three numbers.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.errors import CptlabError
from cptlab.study.steps import StepContext, register_step_kind


class ForgettingStep(StrictModel):
    stages: list[str] = Field(min_length=1)
    evals: list[dict[str, Any]] = Field(min_length=2)


def forgetting_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Forgetting matrix, average forgetting, backward/forward transfer of a domain sequence."""
    from cptlab.diagnose.forgetting import forgetting_summary, losses_from_evals

    try:
        result = forgetting_summary(losses_from_evals(step["evals"]), step["stages"])
    except ValueError as e:
        raise CptlabError(str(e)) from None
    ctx.add_diagnostic("forgetting", result)
    T = len(step["stages"])
    out = {k: result[k] for k in ("average_forgetting", "backward_transfer", "forward_transfer", "final_loss")}
    for key, value in out.items():
        ctx.add_metric(T, key, value)
    return out


register_step_kind("forgetting", forgetting_step, ForgettingStep)
