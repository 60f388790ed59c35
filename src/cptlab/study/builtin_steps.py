"""Built-in step kinds: `train` (cptlab.train.run), `sft` (cptlab.sft.run) and `eval` (cptlab.evaluate.perplexity).

    steps:
      - name: train
        kind: train
        config: {model: {path: "${base_path}"}, lr: "${lr}", max_steps: 20, ...}   # a TrainConfig as a mapping
        # or: config_file: ./train.yaml  with  overrides: ["lr=${lr}"]
      - name: eval
        kind: eval
        model: "${steps.train.final_dir}"
        corpus: "${corpus_path}"
        split: test
        label: after

`sft` takes the same options as `train` (its config is an SFT config: data: {train: FILE.jsonl, valid: ...}) and
returns the same outputs.
`train` writes into the step's directory (`out_dir` is set to it unless the config names one), records every
line of its metrics.jsonl, and returns {out_dir, final_dir, steps, tokens, last_loss, metrics_path}.
`eval` records one row per domain and returns {domains: {domain: {token_perplexity, ...}}, token_losses}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from cptlab.config import StrictModel
from cptlab.study.steps import StepContext, register_step_kind


class TrainStep(StrictModel):
    config: dict[str, Any] = Field(default_factory=dict)
    config_file: str | None = None
    overrides: list[str] = Field(default_factory=list)


def train_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Continued pretraining with cptlab.train.run; the step dir is the trainer's out_dir."""
    import cptlab.train as train
    from cptlab.config import apply_overrides, read_yaml
    from cptlab.console import is_quiet

    config: dict[str, Any] = read_yaml(step["config_file"]) if step.get("config_file") else {}
    config = _deep_merge(config, step.get("config") or {})
    config = apply_overrides(config, step.get("overrides"))
    config.setdefault("out_dir", str(ctx.step_dir))
    config.setdefault("seed", ctx.seed)
    # A redone run (killed, or failed in a later step) continues from its newest complete checkpoint; a
    # killed run with none starts afresh (the trainer clears it). A finished one is not trained again.
    config.setdefault("resume", True)
    config.setdefault("quiet", is_quiet() or ctx.rank != 0)
    if step.get("kind") == "sft":
        config["kind"] = "sft"
    result = train.run(config)
    metrics_path = Path(getattr(result, "metrics_path", None) or Path(config["out_dir"]) / "metrics.jsonl")
    ctx.add_metrics_jsonl(metrics_path)
    ctx.add_artifact("metrics", metrics_path)
    final_dir = str(getattr(result, "final_dir", ""))
    if final_dir:
        ctx.add_artifact("model", final_dir)
    return {
        "out_dir": str(getattr(result, "out_dir", config["out_dir"])),
        "final_dir": final_dir,
        "steps": int(getattr(result, "steps", 0) or 0),
        "tokens": int(getattr(result, "tokens", 0) or 0),
        "last_loss": _float(getattr(result, "last_loss", None)),
        "metrics_path": str(metrics_path),
    }


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


class EvalStep(StrictModel):
    model: str
    corpus: str
    label: str = "model"
    split: str = "test"
    domains: list[str] | None = None
    context: int | None = None
    stride: int | None = None
    mode: Literal["lm-eval", "m2d2"] = "lm-eval"
    batch_size: int | Literal["auto"] = "auto"
    precision: str = "fp32"  # checked by the evaluator (fp32, bf16)
    max_documents: int | None = None
    token_losses: bool = True
    device: str | None = None


def eval_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Perplexity per domain (cptlab.evaluate.perplexity); per-token losses saved as parquet in the step dir."""
    from cptlab.evaluate import perplexity

    token_losses = ctx.step_dir / "token_losses.parquet" if step.get("token_losses", True) else None
    result = perplexity(
        step["model"], corpus=step["corpus"], split=step.get("split", "test"), domains=step.get("domains"),
        context=step.get("context"), stride=step.get("stride"), mode=step.get("mode", "lm-eval"),
        batch_size=step.get("batch_size", "auto"), precision=step.get("precision", "fp32"),
        token_losses=token_losses, max_documents=step.get("max_documents"), device=step.get("device"))
    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    data.setdefault("settings", {}).setdefault("split", step.get("split", "test"))
    tl_path = _token_losses_paths(token_losses)
    ctx.add_evaluation(step.get("label", "model"), data, tl_path)
    return {"domains": data["domains"], "token_losses": str(token_losses) if tl_path else None}


def _token_losses_paths(token_losses: Path | None) -> Path | dict[str, Path] | None:
    """The eval writes one parquet file (or a dir of `<domain>.parquet`): whatever exists is recorded."""
    if token_losses is None or not token_losses.exists():
        return None
    if token_losses.is_dir():
        return {p.stem: p for p in sorted(token_losses.glob("*.parquet"))}
    return token_losses


def sft_step(step: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Supervised fine-tuning with cptlab.sft (the trainer's loop, response tokens only); the step dir is out_dir."""
    return train_step({**step, "kind": "sft"}, ctx)


register_step_kind("train", train_step, TrainStep, distributed=True)
register_step_kind("sft", sft_step, TrainStep, distributed=True)
register_step_kind("eval", eval_step, EvalStep)
