"""Tokenizers: a trained byte-level BPE has EOS/BOS/PAD, loads with AutoTokenizer, round-trips text; training on a corpus."""

from __future__ import annotations

import json

import pytest

from cptlab.errors import CptlabError
from cptlab.tokens.tokenizer import load_tokenizer, tokenizer_fingerprint, train_bpe, train_tokenizer_on_corpus


def test_trained_bpe_has_special_tokens_and_round_trips(tiny_tokenizer_dir, tiny_tokenizer, corpus_docs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)  # a plain HF tokenizer dir
    assert len(tok) == 512
    assert (tok.eos_token, tok.bos_token, tok.pad_token) == ("<|endoftext|>", "<|bos|>", "<|pad|>")
    ids = {tok.eos_token_id, tok.bos_token_id, tok.pad_token_id}
    assert len(ids) == 3 and all(i is not None and 0 <= i < 512 for i in ids)
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|endoftext|>"
    for text in [corpus_docs["code"][0], corpus_docs["prose"][3], "Unicode: naïve café ✓ 日本語\ttab", " lead"]:
        enc = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(enc) == text  # byte-level: every string round-trips
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(tiny_tokenizer)


def test_fingerprint_changes_with_the_tokenizer(tmp_path, corpus_docs, tiny_tokenizer):
    other = train_bpe(corpus_docs["prose"], 400, tmp_path / "t")
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_tokenizer)
    again = train_bpe(corpus_docs["prose"], 400, tmp_path / "t2")
    assert tokenizer_fingerprint(other) == tokenizer_fingerprint(again)  # deterministic training


def test_train_on_corpus_with_byte_budget(tmp_path, tiny_corpus):
    from cptlab.corpus import iter_documents, open_corpus

    tok = train_tokenizer_on_corpus(tiny_corpus, 400, tmp_path / "tok", max_bytes=20_000)
    info = json.loads((tmp_path / "tok" / "cptlab_tokenizer.json").read_text())
    assert info["vocab_size"] == len(tok) == 400 and info["fingerprint"] == tokenizer_fingerprint(tok)
    assert info["by_domain"] == {"code": 10_000, "prose": 10_000}  # the budget shared equally
    assert info["bytes"] == 20_000 and info["splits"] == ["train"]
    full = sum(len(d.encode()) for s in open_corpus(tiny_corpus).sources(splits=["train"]) for d in iter_documents(s))
    assert full > 20_000
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>" and tok.bos_token == "<|bos|>"


def test_errors(tmp_path, tiny_corpus):
    with pytest.raises(CptlabError, match="--vocab-size 100: must be at least 300"):
        train_bpe(["a b c"], 100, tmp_path / "x")
    with pytest.raises(CptlabError, match="unknown domain\\(s\\) law"):
        train_tokenizer_on_corpus(tiny_corpus, 400, tmp_path / "y", domains=["law"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(CptlabError, match="exists and is not a tokenizer dir"):
        train_tokenizer_on_corpus(tiny_corpus, 400, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"
    with pytest.raises(CptlabError, match="directory not found"):
        load_tokenizer(tmp_path / "nothing")
    with pytest.raises(CptlabError, match="--max-bytes 0"):
        train_tokenizer_on_corpus(tiny_corpus, 400, tmp_path / "z", max_bytes=0)
