"""Dry-run cost estimate: training tokens exactly as the trainer counts them, non-embedding N, 6·N·D FLOPs."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from cptlab.study.estimate import count_model_params, estimate_step, preset_params


def _train(config, **extra):
    return {"kind": "train", "name": "train", "config": config, **extra}


def _data(**kw):
    return {"sources": {"code": 1.0}, "corpus": "/c", **kw}


def test_tokens_follow_the_trainer_not_other_sections_keys():
    # eval.max_tokens / eval.batch_size belong to evaluation: the trainer's defaults (batch 8) count here.
    step = _train({"model": {"name": "llama-micro"}, "max_steps": 10, "data": _data(seq_len=32),
                   "eval": {"max_tokens": 999, "batch_size": 3}})
    assert estimate_step(step)["tokens"] == 10 * 8 * 32
    # batch_size counts every micro-batch already: grad_accum does not multiply it.
    step = _train({"model": {"name": "llama-micro"}, "max_steps": 10, "batch_size": 8, "grad_accum": 2,
                   "data": _data(seq_len=16)})
    assert estimate_step(step)["tokens"] == 10 * 8 * 16
    # A token budget is rounded up to whole steps (ceil(1000 / 128) = 8); with max_steps too, the first to end.
    step = _train({"model": {"name": "llama-micro"}, "max_tokens": 1000, "batch_size": 4, "data": _data(seq_len=32)})
    assert estimate_step(step)["tokens"] == 8 * 128
    step["config"]["max_steps"] = 5
    assert estimate_step(step)["tokens"] == 5 * 128
    # The default seq_len (256) when data does not set it.
    step = _train({"model": {"name": "llama-micro"}, "max_steps": 2, "batch_size": 2, "data": _data()})
    assert estimate_step(step)["tokens"] == 2 * 2 * 256
    assert estimate_step({"kind": "eval", "name": "eval"}) is None


def test_config_file_and_overrides_count_and_the_step_is_not_changed(tmp_path):
    f = tmp_path / "train.yaml"
    f.write_text(yaml.safe_dump({"model": {"name": "llama-micro"}, "max_steps": 100, "batch_size": 4,
                                 "data": _data(seq_len=64)}))
    step = _train({"data": {"seq_len": 32}}, config_file=str(f), overrides=["max_steps=7", "data.seq_len=16"])
    before = copy.deepcopy(step)
    assert estimate_step(step)["tokens"] == 7 * 4 * 16
    assert step == before


def test_a_config_with_run_time_values_falls_back_to_its_top_level_keys():
    # No data.sources yet (filled by a kind at run time): not a valid TrainConfig, still estimated.
    step = _train({"model": {"name": "llama-micro"}, "max_steps": 3, "data": {"seq_len": 16},
                   "eval": {"max_tokens": 5}})
    assert estimate_step(step)["tokens"] == 3 * 8 * 16
    step = _train({"model": {"name": "${steps.a.final_dir}"}, "max_steps": "${steps.a.steps}",
                   "data": {"seq_len": 16}})
    assert estimate_step(step) == {"tokens": None, "flops": None, "params": None}


def _linear_weights(model) -> int:
    """Non-embedding matrices, counted on the built model."""
    return sum(p.numel() for n, p in model.named_parameters()
               if p.ndim == 2 and not any(e in n for e in ("embed_tokens", "lm_head", "wte", "wpe")))


@pytest.mark.parametrize("preset", ["llama-micro", "gpt2-micro"])
def test_params_of_presets_and_model_dirs_match_the_built_models(preset, tiny_tokenizer, tmp_path):
    from cptlab.model import build_preset, save_model

    model = build_preset(preset, tiny_tokenizer, seed=0)
    expected = _linear_weights(model)
    assert preset_params(preset) == expected
    saved = save_model(model, tiny_tokenizer, tmp_path / "m")
    assert count_model_params(str(saved)) == expected
    (tmp_path / "ckpt").mkdir()
    save_model(model, tiny_tokenizer, tmp_path / "ckpt" / "model")  # a trainer checkpoint dir holds model/
    assert count_model_params(str(tmp_path / "ckpt")) == expected
    step = _train({"model": {"name": preset}, "max_steps": 4, "batch_size": 2, "data": _data(seq_len=8)})
    e = estimate_step(step)
    assert e["params"] == expected and e["flops"] == pytest.approx(6 * expected * 4 * 2 * 8)
    # init_from (the weights a run starts from) wins over the name.
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((saved / "config.json").read_text())
    layers = "num_hidden_layers" if "num_hidden_layers" in cfg else "n_layer"
    (other / "config.json").write_text(json.dumps({**cfg, layers: 2 * cfg[layers]}))
    step["config"]["model"]["init_from"] = str(other)
    assert estimate_step(step)["params"] == 2 * expected


def test_grouped_query_attention_counts_smaller_key_value_projections(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path / "gqa", safe_serialization=True)
    assert count_model_params(str(tmp_path / "gqa")) == _linear_weights(model)
