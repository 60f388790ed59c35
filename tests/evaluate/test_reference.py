"""Equality with lm-evaluation-harness's HFLM on awkward documents and on a second model family.

Documents are written to a jsonl corpus (verbatim: leading/trailing whitespace, non-ASCII text, a document that
starts with the prefix token's text, documents of exactly one context and exactly two contexts of tokens, a
one-token document and a long one), so every rule of lm-eval's `loglikelihood_rolling` is exercised end to end.
"""

from __future__ import annotations

import json
import math

import pytest

from cptlab.evaluate import perplexity


def exact_length_text(tokenizer, source: str, n: int) -> str:
    """A prefix of `source` that tokenizes to exactly `n` tokens (decode/encode round trip checked)."""
    ids = tokenizer.encode(source)
    for k in range(n, min(len(ids), n + 8)):
        text = tokenizer.decode(ids[:k])
        if len(tokenizer.encode(text)) == n:
            return text
    raise AssertionError(f"no prefix of the source tokenizes to {n} tokens")


@pytest.fixture(scope="module")
def awkward_docs(tiny_tokenizer, corpus_docs) -> list[str]:
    source = "\n\n".join(corpus_docs["code"][:40])
    prefix_text = tiny_tokenizer.decode([tiny_tokenizer.bos_token_id])
    docs = [
        "  leading and trailing whitespace, tabs\tand  double  spaces \n\n",
        "naïve café — 東京 ünïcödé: 3 × 4 ≠ 11 …\n",
        prefix_text + "def f(x):\n    return x + 1\n",
        exact_length_text(tiny_tokenizer, source, 128),  # exactly one context of llama-micro
        exact_length_text(tiny_tokenizer, source[500:], 256),  # exactly two contexts
        exact_length_text(tiny_tokenizer, "return", 1),
        source[:6000],  # many windows, last one partial
    ]
    assert len(tiny_tokenizer.encode(docs[3])) == 128 and len(tiny_tokenizer.encode(docs[4])) == 256
    return docs


def lm_eval_numbers(model_dir, docs: list[str]) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=4, dtype="float32")
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(d,), idx=i) for i, d in enumerate(docs)]
    ll = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    words = [(x, ConfigurableTask.count_words(d)) for x, d in zip(ll, docs)]
    nbytes = [(x, ConfigurableTask.count_bytes(d)) for x, d in zip(ll, docs)]
    return {"nll_sum": -math.fsum(ll), "tokens": sum(len(lm.tok_encode(d)) for d in docs),
            "word_perplexity": weighted_perplexity(words), "byte_perplexity": weighted_perplexity(nbytes),
            "bits_per_byte": bits_per_byte(nbytes), "words": sum(w for _, w in words),
            "bytes": sum(b for _, b in nbytes), "prefix": lm.prefix_token_id, "max_length": lm.max_length}


def write_jsonl(root, docs):
    (root / "odd").mkdir(parents=True)
    with open(root / "odd" / "test.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return root


def check_equal(ours: dict, ref: dict) -> None:
    assert (ours["tokens"], ours["words"], ours["bytes"]) == (ref["tokens"], ref["words"], ref["bytes"])
    assert ours["nll_sum"] == pytest.approx(ref["nll_sum"], rel=1e-5)
    for key in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-4), key


def test_awkward_documents_equal_lm_eval(tiny_model_dir, awkward_docs, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus", awkward_docs)
    result = perplexity(str(tiny_model_dir), corpus=corpus, device="cpu", batch_size=3)
    ref = lm_eval_numbers(tiny_model_dir, awkward_docs)
    assert result.settings["prefix_token_id"] == ref["prefix"] and result.settings["context"] == ref["max_length"]
    ours = result.to_dict()["domains"]["odd"]
    assert ours["documents"] == len(awkward_docs)  # nothing stripped or dropped
    check_equal(ours, ref)


def test_gpt2_family_equals_lm_eval(tiny_tokenizer, corpus_docs, tmp_path):
    """Learned positions and a `transformer`/`lm_head` split: the head-only-on-scored-positions path."""
    from cptlab.evaluate.scoring import split_head
    from cptlab.model import build_preset, save_model

    model = build_preset("gpt2-micro", tiny_tokenizer, seed=3, context=48)
    assert split_head(model) is not None
    model_dir = save_model(model, tiny_tokenizer, tmp_path / "gpt2")
    docs = corpus_docs["prose"][:5]
    corpus = write_jsonl(tmp_path / "corpus", docs)
    result = perplexity(str(model_dir), corpus=corpus, device="cpu")
    ref = lm_eval_numbers(model_dir, docs)
    assert result.settings["context"] == ref["max_length"] == 48
    ours = result.to_dict()["domains"]["odd"]
    assert ours["tokens"] > 3 * 48  # several windows
    check_equal(ours, ref)
