"""Step kind `probe`: nearest-class-mean probe of a model on labelled data (cptlab.diagnose.probe).

    - name: probe-after
      kind: probe
      model: "${steps.train.final_dir}"
      data: ./labelled.jsonl
      label: after              # how the report names this model
      # text_field, label_field, split_field, layer (-1), test_fraction (0.3), seed (the run's), metric

Records a `probe` diagnostic (accuracy, per-class accuracy, settings, label) and returns {accuracy, n_train,
n_test, label}.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.study.steps import StepContext, register_step_kind


class ProbeStep(StrictModel):
    model: str
    data: str
    label: str = "model"
    text_field: str = "text"
    label_field: str = "label"
    split_field: str | None = "split"
    layer: int = -1
    test_fraction: float = Field(0.3, gt=0, lt=1)
    seed: int | None = None  # default: the run's seed
    metric: Literal["euclidean", "cosine"] = "euclidean"
    batch_size: int = Field(16, ge=1)
    max_length: int | None = Field(None, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


def probe_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Accuracy of the nearest class mean of frozen mean-pooled hidden states."""
    from cptlab.diagnose.probe import probe

    seed = ctx.seed if step.get("seed") is None else int(step["seed"])
    result = probe(step["model"], step["data"], text_field=step.get("text_field", "text"),
                   label_field=step.get("label_field", "label"), split_field=step.get("split_field", "split"),
                   test_fraction=step.get("test_fraction", 0.3), layer=step.get("layer", -1), seed=seed,
                   metric=step.get("metric", "euclidean"), batch_size=step.get("batch_size", 16),
                   max_length=step.get("max_length"), precision=step.get("precision", "fp32"))
    label = step.get("label", "model")
    ctx.add_diagnostic("probe", {**result.to_dict(), "label": label})
    return {"accuracy": result.accuracy, "n_train": result.n_train, "n_test": result.n_test, "label": label}


register_step_kind("probe", probe_step, ProbeStep)
