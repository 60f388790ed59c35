"""`cptlab.model.gguf`: errors without `gguf` or on a non-GGUF file; and the conversion itself on tiny GGUF files
written here with gguf's writer (llama.cpp's tensor names and Q/K permutation, a 512-token BPE with a ChatML
template), tied and untied. Fast (~3 s each); the conversion tests skip when `gguf` is not installed
(`pip install 'cptlab[real]'`). SmolLM2's own 49152-token tokenizer through GGUF is covered by test_smollm.py
(transformers' GGUF tokenizer conversion of it alone takes ~9 s)."""

from __future__ import annotations

import json

import pytest

from cptlab.errors import CptlabError


def test_not_a_gguf_file(tmp_path):
    from cptlab.model.gguf import gguf_to_hf

    pytest.importorskip("gguf")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(CptlabError, match=r"model\.gguf: not a GGUF file \(starts with b'PK"):
        gguf_to_hf(bad, tmp_path / "out")
    with pytest.raises(CptlabError, match="missing.gguf: not found"):
        gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gguf_package_missing_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from cptlab.model import gguf as mod

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(CptlabError, match=r"needs the `gguf` package: pip install gguf"):
        mod.gguf_to_hf(tmp_path / "m.gguf", tmp_path / "out")


def _permute(w, n_head: int):
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers undoes it when loading)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, model, tok_dir, tied: bool, chat_template: str):
    """A float32 GGUF of a tiny LlamaForCausalLM with the tokenizer in `tok_dir`, as llama.cpp would write it."""
    import gguf
    import numpy as np

    c = model.config
    tj = json.loads((tok_dir / "tokenizer.json").read_text())
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["content"] for t in tj["added_tokens"] if t.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-smollm")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.head_dim)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    w.add_pad_token_id(c.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(chat_template)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", np.ascontiguousarray(
            _permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads)))
        w.add_tensor(f"blk.{i}.attn_k.weight", np.ascontiguousarray(
            _permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads)))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not tied:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gguf_to_hf_round_trip(tmp_path, tiny_tokenizer_dir, tied):
    """An HF model -> GGUF (float32) -> `gguf_to_hf`: the same weights and logits as the original, the config's
    `tie_word_embeddings` as the GGUF says, the chat template and the tokenizer kept."""
    pytest.importorskip("gguf")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from cptlab.model.gguf import gguf_info, gguf_to_hf
    from tests.realmodel.tiny_smollm import tiny_smollm_config
    from tests.sft.conftest import CHATML

    tok_dir = tiny_tokenizer_dir  # byte-level BPE, 512 tokens: <|endoftext|> (EOS) 0, <|bos|> 1, <|pad|> 2
    torch.manual_seed(1)
    model = LlamaForCausalLM(tiny_smollm_config(vocab_size=512, bos_token_id=1, eos_token_id=0, pad_token_id=2,
                                                tie_word_embeddings=tied)).eval()
    if not tied:
        with torch.no_grad():
            model.lm_head.weight.normal_(0, 0.02)
    path = write_tiny_gguf(tmp_path / "tiny.gguf", model, tok_dir, tied, CHATML)
    assert gguf_info(path)["tied_embeddings"] is tied

    out = gguf_to_hf(path, tmp_path / "hf")
    config = AutoConfig.from_pretrained(out)
    assert config.tie_word_embeddings is tied and not hasattr(config, "quantization_config")
    got = AutoModelForCausalLM.from_pretrained(out).eval()
    assert (got.lm_head.weight.data_ptr() == got.model.embed_tokens.weight.data_ptr()) is tied
    ref_sd, got_sd = model.state_dict(), got.state_dict()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], got_sd[k]), k

    tok, orig = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tok_dir)
    assert tok.chat_template == CHATML and tok.eos_token == "<|endoftext|>"
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert "local_files_only" not in saved and "quantization_config" not in json.loads((out / "config.json").read_text())
    text = "Hello world!\n  Tabs\tand café 123 <|endoftext|>"
    assert tok(text)["input_ids"] == orig(text)["input_ids"] and tok.decode(tok(text)["input_ids"]) == text
    x = torch.tensor([orig("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(got(x).logits, model(x).logits, rtol=0, atol=0)
