import pytest
import torch
from transformers import AutoModelForCausalLM

from cptlab.errors import CptlabError
from cptlab.model import build_preset, check_vocab, count_parameters, load_model, save_model


@pytest.mark.parametrize("preset", ["llama-micro", "gpt2-micro"])
def test_save_load_round_trip_gives_identical_logits(tmp_path, tiny_tokenizer, preset):
    model = build_preset(preset, tiny_tokenizer, seed=3).eval()
    out = save_model(model, tiny_tokenizer, tmp_path / preset)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "tokenizer.json").is_file()
    assert not (tmp_path / f"{preset}.tmp").exists()
    ids = torch.tensor([tiny_tokenizer("def f(x):\n    return x + 1\n")["input_ids"]])
    with torch.no_grad():
        expected = model(ids).logits
        # plain transformers, not cptlab's loader, must read it back
        got = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    assert torch.equal(expected, got)


def test_preset_is_seeded_and_sized_to_tokenizer(tiny_tokenizer):
    a = build_preset("llama-micro", tiny_tokenizer, seed=1)
    b = build_preset("llama-micro", tiny_tokenizer, seed=1)
    c = build_preset("llama-micro", tiny_tokenizer, seed=2)
    assert a.get_input_embeddings().weight.shape[0] == len(tiny_tokenizer)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert a.config.eos_token_id == tiny_tokenizer.eos_token_id
    n = count_parameters(a)
    assert n == sum(p.numel() for p in {id(p): p for p in a.parameters()}.values())


def test_vocab_guard_names_the_source(tiny_tokenizer):
    model = build_preset("llama-micro", tiny_tokenizer)
    check_vocab(model, len(tiny_tokenizer) - 1, "cache x")
    with pytest.raises(CptlabError, match="cache x: token id 9999 does not fit"):
        check_vocab(model, 9999, "cache x")


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CptlabError, match="directory not found"):
        load_model(tmp_path / "nope")
