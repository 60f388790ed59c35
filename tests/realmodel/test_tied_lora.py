"""LoRA on a matrix the model ties (SmolLM2, Llama-3.2, Qwen2.5-0.5B... tie `lm_head` to `embed_tokens`): the saved
merged model computes what the trained PEFT model computed. Before the fix, `save_model` kept the dir tied and the
LoRA delta of `lm_head` was dropped (logits off by ~36 on the tiny model), and an `embed_tokens` delta leaked into
the head. Fast (~5 s)."""

from __future__ import annotations

import json
import warnings

import pytest


@pytest.mark.parametrize("targets", [["q_proj"], ["q_proj", "lm_head"], ["embed_tokens"]])
def test_saved_merge_equals_trained_peft_model(tiny_smollm_dir, tmp_path, targets):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cptlab.model import save_model

    base = AutoModelForCausalLM.from_pretrained(tiny_smollm_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about tied targets
        pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)
    x = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(1))
    pm.eval()
    with torch.no_grad():
        want = pm(x).logits
    out = save_model(pm, None, tmp_path / "merged")
    got_model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        got = got_model(x).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    tied_target = any(t in ("lm_head", "embed_tokens") for t in targets)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is (not tied_target)
    shared = got_model.lm_head.weight.data_ptr() == got_model.model.embed_tokens.weight.data_ptr()
    assert shared is (not tied_target)
    # the live PEFT model is untouched (still tied, adapters in place)
    assert pm.get_base_model().model.embed_tokens.weight.requires_grad is False
    assert any("lora_" in n for n, _ in pm.named_parameters())


def _train_lora_on_head(tiny_smollm_dir, tiny_smollm_cache, tmp_path):
    from safetensors.torch import load_file

    from cptlab.train import run
    from tests.realmodel.helpers import cpt_config

    cfg = cpt_config(tiny_smollm_dir, tiny_smollm_cache, tmp_path / "run", max_steps=2, eval={"at_end": False},
                     optimizer={"lr": 1e-2, "weight_decay": 0.0},
                     lora={"r": 4, "target_modules": ["q_proj", "lm_head"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(cfg)
    sd = load_file(str(result.final_dir / "model.safetensors"))
    base = load_file(str(tiny_smollm_dir / "model.safetensors"))["model.embed_tokens.weight"]
    return result, sd, base


def test_cptlab_train_lora_on_tied_head_saves_untied(tiny_smollm_dir, tiny_smollm_cache, tmp_path):
    """`cptlab train` with lora.target_modules [q_proj, lm_head]: final/ is untied and its embedding unchanged."""
    import torch

    result, sd, base = _train_lora_on_head(tiny_smollm_dir, tiny_smollm_cache, tmp_path)
    assert json.loads((result.final_dir / "config.json").read_text())["tie_word_embeddings"] is False
    assert torch.equal(sd["model.embed_tokens.weight"], base)


def test_cptlab_train_lora_on_lm_head_trains_the_head(tiny_smollm_dir, tiny_smollm_cache, tmp_path):
    import torch

    _, sd, base = _train_lora_on_head(tiny_smollm_dir, tiny_smollm_cache, tmp_path)
    assert not torch.equal(sd["lm_head.weight"], base)
