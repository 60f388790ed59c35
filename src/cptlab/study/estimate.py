"""Rough cost of a study before running it (`study run --dry-run`): training tokens and 6·N·D FLOPs.

A train step's tokens are `max_tokens` when its config sets one, else steps × batch × sequence length
(× gradient accumulation), whatever the keys are called among the usual names. N is counted from the model's
`config.json` when the base is a local HF dir (non-embedding parameters, as in the scaling-law papers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_STEPS = ("max_steps", "steps", "train_steps")
_BATCH = ("batch_size", "global_batch_size", "micro_batch_size")
_SEQ = ("seq_len", "sequence_length", "context", "block_size", "max_seq_len")
_ACCUM = ("grad_accum", "gradient_accumulation_steps", "accumulation_steps")
_TOKENS = ("max_tokens", "tokens", "train_tokens")
_MODEL = ("base", "model", "path", "model_path", "init_from")


def _find(tree: Any, keys: tuple[str, ...]) -> Any:
    """The first value of any of `keys`, searching the mapping breadth-first."""
    queue = [tree]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            for k in keys:
                if k in node and not isinstance(node[k], (dict, list)):
                    return node[k]
            queue.extend(v for v in node.values() if isinstance(v, dict))
    return None


def _num(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None  # a placeholder filled at run time, or absent


def count_model_params(location: Any) -> float | None:
    """Non-embedding parameter count of a local HF model dir (from config.json), else None."""
    if not isinstance(location, str):
        return None
    cfg_path = Path(location) / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    d = cfg.get("hidden_size") or cfg.get("n_embd")
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    if not d or not layers:
        return None
    ff = cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * d
    mlp = 3 * d * ff if "intermediate_size" in cfg else 2 * d * ff
    return float(layers * (4 * d * d + mlp))


def estimate_step(step: dict[str, Any]) -> dict[str, Any] | None:
    """{"tokens": int | None, "flops": float | None, "params": float | None} for a train step, else None."""
    if step.get("kind") != "train":
        return None
    config = step.get("config") or {}
    tokens = _num(_find(config, _TOKENS))
    if tokens is None:
        steps, batch, seq = (_num(_find(config, k)) for k in (_STEPS, _BATCH, _SEQ))
        accum = _num(_find(config, _ACCUM)) or 1.0
        tokens = steps * batch * seq * accum if None not in (steps, batch, seq) else None
    model = config.get("model")
    location = (model.get("init_from") or model.get("name")) if isinstance(model, dict) else _find(config, _MODEL)
    params = count_model_params(location)
    flops = 6.0 * params * tokens if params and tokens else None
    return {"tokens": int(tokens) if tokens else None, "flops": flops, "params": params}
