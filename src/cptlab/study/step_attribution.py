"""Step kind `attribution`: which tokens made the perplexity change between two evaluations of the same text.

    - name: attribution
      kind: attribution
      before: "${study.dir}/runs/before-base/eval/token_losses.parquet"   # per-token losses of the base
      after: "${steps.eval.token_losses}"                                  # ... and of the adapted model
      targets: [legal]          # the domain(s) adapted to: top tokens and ΔPPL without them, pooled over these
      top: 10
      format_classes: [newline, whitespace, punctuation]

Records diagnostic kind "attribution" (cptlab.diagnose.attribution.attribute: per domain PPL before/after,
ΔPPL, relative change, class contributions, the format classes' share and the change without them; top tokens
over the targets and the change without the tokens that raised the loss) with `label`, `before`, `after`.
Returns {domains: {d: {ppl_before, ppl_after, rel_change, format_share, rel_change_without_format}}}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.diagnose.attribution import FORMAT_CLASSES
from cptlab.errors import CptlabError
from cptlab.study.steps import StepContext, register_step_kind


class AttributionStep(StrictModel):
    before: str
    after: str
    targets: list[str] = Field(default_factory=list)
    top: int = Field(10, ge=1)
    format_classes: list[str] = Field(default_factory=lambda: list(FORMAT_CLASSES))
    label: str = "model"


def attribution_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Per-token attribution of the change from `before` to `after` (cptlab.diagnose.attribution)."""
    from cptlab.diagnose.attribution import attribute

    for key in ("before", "after"):
        path = Path(str(step[key]))
        if not path.is_file():
            hint = (" (the baseline run must finish before this one; is it done, and did its eval keep "
                    "token_losses?)" if key == "before" else " (did the eval step keep token_losses?)")
            raise CptlabError(f"{key}: {path}: no per-token loss file{hint}")
    try:
        result = attribute(step["before"], step["after"], targets=step.get("targets") or [],
                           top=int(step.get("top", 10)), format_classes=step.get("format_classes") or FORMAT_CLASSES)
    except ValueError as e:
        raise CptlabError(str(e)) from None
    result = {"label": step.get("label", "model"), "before": ctx.relpath(step["before"]),
              "after": ctx.relpath(step["after"]), **result}
    ctx.add_diagnostic("attribution", result)
    return {"domains": {d: {"ppl_before": c["ppl_before"], "ppl_after": c["ppl_after"], "rel_change": c["rel_change"],
                            "format_share": c["format"]["share"],
                            "rel_change_without_format": c["without_format"]["rel_change"]}
                        for d, c in result["domains"].items()}}


register_step_kind("attribution", attribution_step, AttributionStep)
