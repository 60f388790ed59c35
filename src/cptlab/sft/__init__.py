"""Supervised fine-tuning after CPT: `run(config) -> TrainResult` on prompt/response or chat jsonl.

The loop, loss, checkpoints, resume, metrics and distribution are the trainer's (`cptlab.train.loop`); this
package adds the data (data: read + mask the prompt; packing: rows of whole examples; sources: what the loop
gets) and the config (config: TrainConfig with an SFT data section).
"""

from __future__ import annotations

from typing import Any


def load_sft_config(config, overrides: list[str] | None = None):
    """A validated `SFTConfig` from an SFTConfig, a dict or a YAML path, with `a.b=c` overrides applied."""
    from cptlab.train import load_train_config

    return load_train_config(config, overrides, kind="sft")


def run(config: Any, overrides: list[str] | None = None):
    """Fine-tune (or resume) one run; returns the trainer's TrainResult."""
    from cptlab.train.loop import train

    return train(load_sft_config(config, overrides))


__all__ = ["load_sft_config", "run"]
