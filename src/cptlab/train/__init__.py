"""The CPT trainer: `run(config) -> TrainResult` (config: a TrainConfig, a dict, or a YAML path).

Modules: config (TrainConfig), loop (the loop), loss (chunked cross-entropy), schedules (lr), checkpoint
(atomic checkpoints, retention, schedules in tokens), metrics (metrics.jsonl, TensorBoard, spikes), setup
(tokenizer, data, model, optimizer), regularizers (KL / LSSD, by the remedies area).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_train_config(config, overrides: list[str] | None = None, kind: str | None = None):
    """A validated `TrainConfig` from a TrainConfig, a dict or a YAML path, with `a.b=c` overrides applied.

    A config with `kind: sft` (or `kind="sft"` here) is an `SFTConfig` (cptlab.sft): same loop, SFT data."""
    import copy

    from cptlab.config import apply_overrides, read_yaml, validate
    from cptlab.errors import CptlabError
    from cptlab.sft.config import SFTConfig
    from cptlab.train.config import TrainConfig

    if isinstance(config, TrainConfig):
        if not overrides and (kind is None or getattr(config, "kind", "cpt") == kind):
            return config
        config = config.model_dump(mode="json")
    where = "train config"
    if isinstance(config, (str, Path)):
        where = str(config)
        config = read_yaml(config)
        if not isinstance(config, dict):
            raise CptlabError(f"{where}: expected a mapping of config keys")
    if not isinstance(config, dict):
        raise CptlabError(f"train config: expected a TrainConfig, a dict or a YAML path, got {type(config).__name__}")
    data = apply_overrides(copy.deepcopy(config), overrides)
    if kind is not None:
        if data.get("kind", kind) != kind:
            raise CptlabError(f"{where}: kind: {data['kind']!r}, but this command runs {kind!r}")
        data["kind"] = kind
    if data.get("kind") == "sft":
        return validate(SFTConfig, data, where)
    return validate(TrainConfig, data, where)


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
