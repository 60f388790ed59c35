"""Step kind `sensitivity`: θ + γ·ε sensitivity of a series of checkpoints (cptlab.diagnose.sensitivity).

    - name: sensitivity
      kind: sensitivity
      models: [./pre/checkpoints/step-00000010, ./pre/checkpoints/step-00000100]   # or a training run dir
      tokens: [40960, 409600]            # optional: else read from each checkpoint's state
      corpus: "${corpus_path}"
      split: valid
      gammas: [0.01, 0.03, 0.1]
      seeds: 3
      noise_scale: init                  # init | rms | absolute
      max_tokens: 8192                   # scored tokens per domain

Records the whole result as diagnostic `sensitivity` (per-tensor details stay in `sensitivity.json` in the step
dir) and returns {json, models, gammas}.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.study.steps import StepContext, register_step_kind


class SensitivityStep(StrictModel):
    models: list[str] = Field(min_length=1)
    tokens: list[int] | None = None
    labels: list[str] | None = None
    corpus: str
    split: str = "valid"
    domains: list[str] | None = None
    gammas: list[float] = Field(min_length=1)
    seeds: int = Field(3, ge=1)
    noise_scale: Literal["init", "rms", "absolute"] = "init"
    params: Literal["2d", "all"] = "2d"
    revert: Literal["copy", "subtract"] = "copy"
    max_tokens: int = Field(8192, ge=1)
    seq_len: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    seed_offset: int = 0
    tokenizer: str | None = None
    device: str | None = None
    precision: Literal["fp32", "bf16"] = "fp32"


def sensitivity_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Sensitivity (Δ log-perplexity after θ + γ·ε, over seeds) of each checkpoint, ordered by tokens seen."""
    from cptlab.diagnose.checkpoint_series import resolve_series
    from cptlab.diagnose.sensitivity import SensitivitySettings, run_sensitivity
    from cptlab.fsutil import atomic_write_json

    series = resolve_series(step["models"], tokens=step.get("tokens"), labels=step.get("labels"))
    settings = SensitivitySettings(
        gammas=[float(g) for g in step["gammas"]], seeds=step["seeds"], noise_scale=step["noise_scale"],
        params=step["params"], revert=step["revert"], split=step["split"], domains=step.get("domains"),
        max_tokens=step["max_tokens"], seq_len=step.get("seq_len"), batch_size=step["batch_size"],
        seed_offset=step["seed_offset"])
    result = run_sensitivity(series, step["corpus"], settings, tokenizer_dir=step.get("tokenizer"),
                             device=step.get("device"), dtype=step["precision"])
    path = ctx.step_dir / "sensitivity.json"
    atomic_write_json(path, result)
    ctx.add_artifact("sensitivity", path)
    slim = {**result, "models": [{k: v for k, v in m.items() if k != "tensors"} for m in result["models"]]}
    ctx.add_diagnostic("sensitivity", slim)
    return {"json": str(path), "models": [m["label"] for m in result["models"]], "gammas": settings.gammas}


register_step_kind("sensitivity", sensitivity_step, SensitivityStep)
