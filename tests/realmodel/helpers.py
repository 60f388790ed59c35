"""Helpers shared by the real-model and tiny-SmolLM tests: the CLI in-process, train configs, structural checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml


def cli(argv: list[str]) -> int:
    from cptlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def cpt_config(model_dir, cache_dir, out_dir, **over) -> dict:
    cfg = {
        "model": {"name": str(model_dir)},
        "data": {"cache_dir": str(cache_dir), "sources": {"docs": 1.0}, "seq_len": 128},
        "optimizer": {"lr": 1e-5},
        "schedule": {"kind": "constant"},
        "precision": "bf16",
        "batch_size": 2,
        "max_steps": 3,
        "eval": {"at_end": True, "max_tokens": 1024},
        "checkpoint": {"at_end": True},
        "out_dir": str(out_dir),
        "seed": 0,
        "tensorboard": False,
        "quiet": True,
    }
    cfg.update(over)
    return cfg


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def train_losses(out_dir) -> list[float]:
    from cptlab.train.metrics import read_metrics

    return [r["loss"] for r in read_metrics(Path(out_dir) / "metrics.jsonl") if "domain" not in r and "loss" in r]


def eval_ppl(capsys, model_dir, corpus, tmp_path, name="ppl", extra=()) -> dict:
    out = tmp_path / f"{name}.json"
    code = cli(["eval", "--model", str(model_dir), "--corpus", str(corpus), "--json", str(out), "--device", "cpu",
                "--quiet", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(out.read_text())


def assert_hf_dir_like(final_dir, original_dir, chat_template: str | None):
    """The saved dir loads with plain transformers, keeps the chat template and tied embeddings (shared storage
    after loading, `tie_word_embeddings: true` in the config, no separate lm_head tensor in the safetensors)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final_dir)
    assert tok.chat_template == chat_template
    orig = AutoTokenizer.from_pretrained(original_dir)
    assert len(tok) == len(orig) and tok.eos_token == orig.eos_token and tok.bos_token == orig.bos_token
    config = AutoConfig.from_pretrained(final_dir)
    assert config.tie_word_embeddings is True
    assert config.vocab_size == AutoConfig.from_pretrained(original_dir).vocab_size
    model = AutoModelForCausalLM.from_pretrained(final_dir)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with safe_open(str(Path(final_dir) / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    for p in model.parameters():
        assert math.isfinite(float(p.detach().float().abs().sum()))
    return model, tok


def reference_first_loss(model_dir, cache_dir, out_dir, seq_len: int = 128, domain: str = "docs") -> float:
    """Plain transformers' mean next-token loss (fp32, full logits) on the windows of the run's first step, as
    recorded by the trainer's CPTLAB_TEST_RECORD_WINDOWS hook."""
    import torch
    from transformers import AutoModelForCausalLM

    from cptlab.tokens.packing import PackedSource
    from cptlab.tokens.token_cache import open_tokens
    from cptlab.train.metrics import read_metrics

    first = next(r for r in read_metrics(Path(out_dir) / "metrics.jsonl") if "windows" in r)
    src = PackedSource(open_tokens(cache_dir, domain, "train"), seq_len)
    rows = [torch.from_numpy(src.window(int(w[-1]))[0]) for w in first["windows"]]
    ids = torch.stack(rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1]).logits.float()
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()))
