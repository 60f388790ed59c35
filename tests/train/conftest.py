"""Fixtures for the trainer: a token cache of the shared tiny corpus, a base config, and a subprocess runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def train_cache(tmp_path_factory, tiny_corpus, tiny_tokenizer_dir) -> Path:
    """Token cache of `code` and `prose` (train/valid/test). At seq_len 64 prose/train has ~100 windows."""
    from cptlab.tokens.token_cache import build_cache

    out = tmp_path_factory.mktemp("train_cache")
    build_cache(tiny_corpus, tiny_tokenizer_dir, out, workers=1)
    return out


def make_config(out_dir, cache, tokenizer_dir, **over) -> dict:
    """A small fp32 llama-micro run: 8 sequences of 64 tokens per step, code/prose 50/50."""
    cfg = {
        "model": {"name": "llama-micro"},
        "tokenizer": str(tokenizer_dir),
        "data": {"cache_dir": str(cache), "sources": {"code": 0.5, "prose": 0.5}, "seq_len": 64},
        "optimizer": {"lr": 3e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 3},
        "batch_size": 8,
        "max_steps": 12,
        "eval": {"at_end": False},
        "checkpoint": {"at_end": True},
        "out_dir": str(out_dir),
        "seed": 1,
        "tensorboard": False,
        "quiet": True,
    }
    return apply_over(cfg, over)


def apply_over(cfg: dict, over: dict) -> dict:
    """Set nested keys given as `a__b=value` (e.g. checkpoint__interval=4) in place; returns cfg."""
    for key, value in over.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


@pytest.fixture
def base_config(tmp_path, train_cache, tiny_tokenizer_dir):
    def make(name="run", **over) -> dict:
        return make_config(tmp_path / name, train_cache, tiny_tokenizer_dir, **over)

    return make


SCRIPT = "import json, sys, torch; torch.set_num_threads(1); from cptlab.train import run; run(json.loads(sys.argv[1]))"


def run_subprocess(cfg: dict, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    """Train in a fresh Python process (so that it can be SIGKILLed for real); env holds test hooks."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **{k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cfg)], env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def train_records(out_dir) -> list[dict]:
    from cptlab.train.metrics import read_metrics

    return [r for r in read_metrics(Path(out_dir) / "metrics.jsonl") if "domain" not in r]


def final_tensors(out_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(out_dir) / "final" / "model.safetensors"))
