"""The CPT trainer: `run(config) -> TrainResult` (config: a TrainConfig, a dict, or a YAML path).

Modules: config (TrainConfig), loop (the loop), loss (chunked cross-entropy), schedules (lr), checkpoint
(atomic checkpoints, retention, schedules in tokens), metrics (metrics.jsonl, TensorBoard, spikes), setup
(tokenizer, data, model, optimizer), regularizers (KL / LSSD, by the remedies area).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_train_config(config, overrides: list[str] | None = None):
    """A validated `TrainConfig` from a TrainConfig, a dict or a YAML path, with `a.b=c` overrides applied."""
    import copy

    from cptlab.config import apply_overrides, load_config, validate
    from cptlab.train.config import TrainConfig

    if isinstance(config, TrainConfig):
        if not overrides:
            return config
        config = config.model_dump(mode="json")
    if isinstance(config, dict):
        data = apply_overrides(copy.deepcopy(config), overrides)
        return validate(TrainConfig, data, "train config")
    if isinstance(config, (str, Path)):
        return load_config(TrainConfig, config, overrides)
    from cptlab.errors import CptlabError

    raise CptlabError(f"train config: expected a TrainConfig, a dict or a YAML path, got {type(config).__name__}")


def run(config: Any, overrides: list[str] | None = None):
    """Train (or resume) one run; returns TrainResult(out_dir, final_dir, steps, tokens, last_loss, metrics_path)."""
    from cptlab.train.loop import train

    return train(load_train_config(config, overrides))


def __getattr__(name: str):
    if name == "TrainConfig":
        from cptlab.train.config import TrainConfig

        return TrainConfig
    if name == "TrainResult":
        from cptlab.train.loop import TrainResult

        return TrainResult
    raise AttributeError(name)


__all__ = ["TrainConfig", "TrainResult", "load_train_config", "run"]
