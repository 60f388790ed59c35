"""perplexity(): numbers checked against straightforward computations and against lm-evaluation-harness."""

from __future__ import annotations

import math
import re

import pytest
import torch
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from cptlab.errors import CptlabError, UsageError
from cptlab.evaluate import perplexity, read_token_losses

from .conftest import MAX_DOCS


def straightforward_nll(model, tokenizer, doc: str, context: int, stride: int | None = None) -> tuple[float, int]:
    """One document, one unbatched forward per lm-eval window, full fp32 log-softmax: (nll sum, tokens)."""
    stride = stride or context
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    tokens = tokenizer.encode(doc)
    total = 0.0
    with torch.no_grad():
        for ctx, cont in map(make_disjoint_window,
                             get_rolling_token_windows(tokens, prefix, context, context - stride + 1)):
            inp = (ctx + cont)[-(context + 1):][:-1]
            logp = torch.log_softmax(model(torch.tensor([inp])).logits[0].float(), dim=-1)
            logp = logp[len(inp) - len(cont):]
            total -= logp.gather(1, torch.tensor(cont)[:, None]).sum().item()
    return total, len(tokens)


def test_nll_sum_equals_straightforward_computation(evaluated, tiny_model, tiny_tokenizer, tiny_docs):
    result, _ = evaluated
    context = tiny_model.config.max_position_embeddings
    assert result.settings["context"] == context
    for domain, docs in tiny_docs.items():
        pairs = [straightforward_nll(tiny_model, tiny_tokenizer, d, context) for d in docs]
        r = result.domains[domain]
        assert r.documents == len(docs) == MAX_DOCS
        assert r.tokens == sum(n for _, n in pairs)
        assert r.tokens > 2 * context  # several windows per document were exercised
        assert r.nll_sum == pytest.approx(sum(s for s, _ in pairs), rel=1e-5)
        assert r.words == sum(len(re.split(r"\s+", d)) for d in docs)
        assert r.bytes == sum(len(d.encode("utf-8")) for d in docs)
        out = r.to_dict()
        assert out["token_perplexity"] == pytest.approx(math.exp(r.nll_sum / r.tokens), rel=1e-12)
        assert out["bits_per_byte"] == pytest.approx(r.nll_sum / r.bytes / math.log(2), rel=1e-12)


def test_sliding_windows_equal_straightforward_computation(tiny_model, tiny_tokenizer, tiny_corpus, tiny_docs):
    result = perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, domains=["prose"], max_documents=2,
                        context=32, stride=12)
    want = sum(straightforward_nll(tiny_model, tiny_tokenizer, d, 32, 12)[0] for d in tiny_docs["prose"][:2])
    assert result.domains["prose"].nll_sum == pytest.approx(want, rel=1e-5)
    assert result.tokens_read > result.domains["prose"].tokens  # overlapping context cost extra reads


@pytest.mark.parametrize("batch_size", [1, 5])
def test_batch_size_does_not_change_results(evaluated, tiny_model, tiny_tokenizer, tiny_corpus, batch_size):
    base, _ = evaluated
    other = perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, max_documents=MAX_DOCS,
                       batch_size=batch_size)
    for d, r in base.domains.items():
        assert other.domains[d].tokens == r.tokens
        assert other.domains[d].nll_sum == pytest.approx(r.nll_sum, rel=1e-5, abs=0)


def test_equal_to_lm_evaluation_harness(evaluated, tiny_model_dir, tiny_docs):
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM

    result, _ = evaluated
    lm = HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=3)
    assert result.settings["prefix_token_id"] == lm.prefix_token_id
    assert result.settings["context"] == lm.max_length
    for domain, docs in tiny_docs.items():
        reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(d,), idx=i)
                for i, d in enumerate(docs)]
        ll = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
        words = [(x, ConfigurableTask.count_words(d)) for x, d in zip(ll, docs)]
        nbytes = [(x, ConfigurableTask.count_bytes(d)) for x, d in zip(ll, docs)]
        ours = result.to_dict()["domains"][domain]
        assert ours["word_perplexity"] == pytest.approx(weighted_perplexity(words), rel=1e-4)
        assert ours["byte_perplexity"] == pytest.approx(weighted_perplexity(nbytes), rel=1e-4)
        assert ours["bits_per_byte"] == pytest.approx(bits_per_byte(nbytes), rel=1e-4)


def test_to_dict_has_the_contract_keys(evaluated):
    data = evaluated[0].to_dict()
    assert set(data) == {"settings", "domains"}
    assert {"model", "split", "context", "stride", "mode", "precision", "tokenizer"} <= set(data["settings"])
    for r in data["domains"].values():
        assert set(r) == {"documents", "tokens", "words", "bytes", "nll_sum", "token_perplexity",
                          "word_perplexity", "byte_perplexity", "bits_per_byte"}


def test_token_losses_file(evaluated, tiny_tokenizer, tiny_docs):
    result, path = evaluated
    tl = read_token_losses(path)
    assert tl.domains == list(result.domains)
    for k, (domain, docs) in enumerate(tiny_docs.items()):
        rows = tl.domain_code == k
        assert math.fsum(tl.nll[rows]) == pytest.approx(result.domains[domain].nll_sum, rel=1e-6)
        first = rows & (tl.doc == 1)
        assert tl.token_id[first].tolist() == tiny_tokenizer.encode(docs[1])
        assert tl.position[first].tolist() == list(range(first.sum()))
    assert tl.settings["mode"] == "lm-eval"
    some = int(tl.token_id[0])
    assert tl.token_text[some] == tiny_tokenizer.decode([some])


def test_m2d2_mode_equals_its_script(tiny_model, tiny_tokenizer, tiny_corpus, tiny_docs):
    """M2D2's eval_ppl with HF's own loss, on the joined documents, context 32 (stride = context)."""
    docs = tiny_docs["prose"][:3]
    result = perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, domains=["prose"], max_documents=3,
                        context=32, mode="m2d2")
    # the file's lines joined with "\n": the fixture's .txt separates documents by one blank line
    ids = tiny_tokenizer("\n\n".join(docs), return_tensors="pt").input_ids
    n, stride, nlls, total, scored = ids.size(1), 32, [], 0.0, 0
    with torch.no_grad():
        for i in range(0, n, stride):
            begin, end = max(i + stride - 32, 0), min(i + stride, n)
            trg_len = end - i
            inp = ids[:, begin:end]
            target = inp.clone()
            target[:, :-trg_len] = -100
            loss = tiny_model(inp, labels=target).loss
            k = int((target[0, 1:] != -100).sum())
            if k:
                nlls.append(loss * trg_len)
                total += loss.item() * k
                scored += k
    m2d2 = math.exp(torch.stack(nlls).sum().item() / end)
    r = result.domains["prose"]
    assert r.tokens == scored
    assert r.nll_sum == pytest.approx(total, rel=1e-5)
    assert result.m2d2_perplexity["prose"] == pytest.approx(m2d2, rel=1e-5)
    joined = "\n\n".join(docs)
    assert (r.words, r.bytes, r.documents) == (len(re.split(r"\s+", joined)), len(joined.encode()), 3)


def test_m2d2_streams_across_chunks(tiny_model, tiny_tokenizer, tiny_corpus):
    """Scoring the stream in small pieces gives the windows of the whole stream."""
    kw = dict(corpus=tiny_corpus, domains=["prose"], max_documents=6, context=32, mode="m2d2")
    whole = perplexity(tiny_model, tiny_tokenizer, **kw)
    pieces = perplexity(tiny_model, tiny_tokenizer, chunk_chars=300, **kw)
    a, b = whole.domains["prose"], pieces.domains["prose"]
    assert (a.tokens, a.words, a.bytes) == (b.tokens, b.words, b.bytes)
    assert b.nll_sum == pytest.approx(a.nll_sum, rel=1e-3)  # equal up to tokenization at piece boundaries


def test_lm_eval_mode_chunking_is_exact(evaluated, tiny_model, tiny_tokenizer, tiny_corpus):
    base, _ = evaluated
    small = perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, max_documents=MAX_DOCS, chunk_chars=1000)
    for d, r in base.domains.items():
        assert (small.domains[d].tokens, small.domains[d].words) == (r.tokens, r.words)
        assert small.domains[d].nll_sum == pytest.approx(r.nll_sum, rel=1e-5)


def test_bf16_is_close(evaluated, tiny_model, tiny_tokenizer, tiny_corpus):
    base, _ = evaluated
    low = perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, max_documents=MAX_DOCS, precision="bf16")
    for d, r in base.domains.items():
        assert low.domains[d].nll_sum == pytest.approx(r.nll_sum, rel=1e-2)
    assert next(tiny_model.parameters()).dtype == torch.float32


def test_model_from_a_path_and_training_mode_restored(tiny_model_dir, tiny_corpus, tiny_model, tiny_tokenizer):
    from_path = perplexity(str(tiny_model_dir), corpus=tiny_corpus, domains="prose", max_documents=1, device="cpu")
    tiny_model.train()
    try:
        loaded = perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, domains=["prose"], max_documents=1)
        assert tiny_model.training
    finally:
        tiny_model.eval()
    assert list(from_path.domains) == ["prose"]
    assert from_path.domains["prose"].nll_sum == pytest.approx(loaded.domains["prose"].nll_sum, rel=1e-6)


def test_errors_are_clear(tiny_model, tiny_tokenizer, tiny_corpus, tmp_path):
    with pytest.raises(CptlabError, match="no domain 'nope'"):
        perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, domains=["nope"])
    with pytest.raises(CptlabError, match="directory not found"):
        perplexity(str(tmp_path / "missing"), corpus=tiny_corpus)
    with pytest.raises(UsageError, match="--mode"):
        perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, mode="bogus")
    with pytest.raises(UsageError, match="--batch-size"):
        perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, batch_size=0)
    with pytest.raises(UsageError, match="--context 4096"):
        perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, context=4096)
    from cptlab.model import build_preset

    with pytest.raises(UsageError, match="needs its tokenizer"):  # a model not loaded from a dir
        perplexity(build_preset("llama-micro", tiny_tokenizer), corpus=tiny_corpus)


def test_vocab_mismatch_is_an_error(tiny_tokenizer, tiny_corpus, tmp_path):
    from cptlab.model import build_preset, save_model

    model = build_preset("llama-micro", tiny_tokenizer, seed=0)
    model.resize_token_embeddings(100)
    save_model(model, tiny_tokenizer, tmp_path / "small-vocab")
    with pytest.raises(CptlabError, match="does not fit the model's vocabulary of 100"):
        perplexity(str(tmp_path / "small-vocab"), corpus=tiny_corpus)


def test_nothing_written_when_evaluation_fails(tiny_model, tiny_tokenizer, tiny_corpus, tmp_path):
    out = tmp_path / "tl.parquet"
    with pytest.raises(UsageError):
        perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, context=8, stride=9, token_losses=out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_failure_midway_leaves_no_token_loss_file(tiny_model, tiny_tokenizer, tiny_corpus, tmp_path, monkeypatch):
    from cptlab.evaluate import scoring

    def boom(self, seqs, jobs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(scoring.Scorer, "score", boom)
    out = tmp_path / "tl.parquet"
    with pytest.raises(RuntimeError, match="simulated"):
        perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, max_documents=1, token_losses=out)
    assert not list(tmp_path.iterdir())


def test_short_documents_equal_one_forward_per_document(tiny_model, tiny_tokenizer, corpus_docs, tmp_path):
    """Documents that fit in the context: nll_sum = the sum over documents of one unbatched forward of
    [BOS] + document with the library's own cross-entropy (an independent route to the same number)."""
    import json

    import torch.nn.functional as F

    docs = [d for d in corpus_docs["prose"] if len(tiny_tokenizer.encode(d)) <= 120][:12]
    assert len(docs) == 12
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "test.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    result = perplexity(tiny_model, tiny_tokenizer, corpus=tmp_path, batch_size=5)
    want, n = 0.0, 0
    with torch.no_grad():
        for d in docs:
            ids = torch.tensor([[tiny_tokenizer.bos_token_id] + tiny_tokenizer.encode(d)])
            logits = tiny_model(ids).logits[0, :-1].double()
            want += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            n += ids.shape[1] - 1
    r = result.domains["short"]
    assert (r.documents, r.tokens) == (12, n)
    assert r.nll_sum == pytest.approx(want, rel=1e-5)
