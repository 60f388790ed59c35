"""Rough cost of a study before running it (`study run --dry-run`): training tokens and 6·N·D FLOPs.

A `train` step's config is read the way the step reads it (`config_file`, then `config`, then `overrides`) and,
when it validates, through `cptlab.train.config.TrainConfig` itself: tokens = the trainer's `total_steps` ×
`tokens_per_step` (batch_size × data.seq_len; batch_size already counts every micro-batch and process), so
defaults and a `max_tokens` budget (rounded up to whole steps) count exactly as in training. A config that does
not validate yet (a value filled in at run time) falls back to its top-level `max_tokens` / `max_steps`,
`batch_size` and `data.seq_len` with the trainer's defaults; nested keys of other sections (e.g.
`eval.max_tokens`, `eval.batch_size`) are never taken for training ones.

N is the non-embedding parameter count (as in the scaling-law papers), from the model's `config.json` when
`model.init_from` or `model.name` is a local HF dir (or a trainer checkpoint holding `model/`), or from the
preset's shape when `model.name` is a preset (`llama-micro`, ...). Unknown: None (the dry run shows "–").
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None  # a placeholder filled at run time, or absent


def _non_embedding(layers: int, d: int, ff: int, kv_dim: int, gated: bool) -> float:
    attn = 2 * d * d + 2 * d * kv_dim  # q, o: d×d; k, v: d×kv_dim
    mlp = (3 if gated else 2) * d * ff  # llama: gate, up, down; gpt2: fc, proj
    return float(layers * (attn + mlp))


def count_model_params(location: Any) -> float | None:
    """Non-embedding parameter count of a local HF model dir (or a checkpoint dir with `model/`), else None."""
    if not isinstance(location, str) or not location:
        return None
    root = Path(location)
    cfg_path = next((p for p in (root / "config.json", root / "model" / "config.json") if p.is_file()), None)
    if cfg_path is None:
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    d = cfg.get("hidden_size") or cfg.get("n_embd")
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    if not d or not layers:
        return None
    gated = "intermediate_size" in cfg
    ff = cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * d
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or (d // heads if heads else None)
    kv_dim = kv_heads * head_dim if kv_heads and head_dim else d
    return _non_embedding(int(layers), int(d), int(ff), int(kv_dim), gated)


def preset_params(name: Any) -> float | None:
    """Non-embedding parameter count of a model preset (`cptlab.model.presets.PRESETS`), else None."""
    from cptlab.model.presets import PRESETS

    p = PRESETS.get(name) if isinstance(name, str) else None
    if p is None:
        return None
    if p.family == "llama":
        return _non_embedding(p.layers, p.hidden, p.ffn, p.hidden, gated=True)
    return _non_embedding(p.layers, p.hidden, 4 * p.hidden, p.hidden, gated=False)


def train_config(step: dict[str, Any]) -> dict[str, Any]:
    """The trainer config a `train` step will run: config_file, then config deep-merged, then overrides."""
    from cptlab.config import apply_overrides, read_yaml
    from cptlab.study.builtin_steps import _deep_merge

    config: dict[str, Any] = {}
    if step.get("config_file"):
        try:
            config = read_yaml(step["config_file"]) or {}
        except Exception:  # noqa: BLE001 - a dry run estimates what it can; the run itself reports the error
            config = {}
    config = _deep_merge(config, copy.deepcopy(step.get("config") or {}))  # overrides must not edit the step
    try:
        return apply_overrides(config, step.get("overrides"))
    except Exception:  # noqa: BLE001
        return config


def _tokens(config: dict[str, Any]) -> float | None:
    from cptlab.train.config import DataConfig, TrainConfig

    try:
        cfg = TrainConfig.model_validate(config)
        return float(cfg.total_steps * cfg.tokens_per_step)
    except Exception:  # noqa: BLE001 - not valid yet (run-time placeholders): read the top-level keys
        pass
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    batch = _num(config.get("batch_size", TrainConfig.model_fields["batch_size"].default))
    seq = _num(data.get("seq_len", DataConfig.model_fields["seq_len"].default))
    if batch is None or seq is None:
        return None
    candidates = [_num(config.get("max_steps"))]
    budget = _num(config.get("max_tokens"))
    if budget is not None:
        candidates.append(-(-budget // (batch * seq)))
    steps = [s for s in candidates if s is not None]
    return min(steps) * batch * seq if steps else None


def estimate_step(step: dict[str, Any]) -> dict[str, Any] | None:
    """{"tokens": int | None, "flops": float | None, "params": float | None} for a train step, else None."""
    if step.get("kind") not in ("train", "sft"):
        return None
    config = train_config(step)
    tokens = _tokens(config)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    params = count_model_params(model.get("init_from")) or count_model_params(model.get("name")) \
        or preset_params(model.get("name"))
    flops = 6.0 * params * tokens if params and tokens else None
    return {"tokens": int(tokens) if tokens else None, "flops": flops, "params": params}
