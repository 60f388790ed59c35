"""compare_token_losses: attribution sums, exclusion, token classes and mismatch errors."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from cptlab.errors import CptlabError, UsageError
from cptlab.evaluate import compare_token_losses, perplexity, read_token_losses, token_class
from cptlab.evaluate.compare import CLASSES

from .conftest import MAX_DOCS


@pytest.fixture(scope="module")
def after_path(tiny_tokenizer, tiny_corpus, tmp_path_factory):
    """The same text scored by a differently initialised model (a stand-in for 'after CPT')."""
    from cptlab.model import build_preset

    model = build_preset("llama-micro", tiny_tokenizer, seed=1)
    path = tmp_path_factory.mktemp("cmp") / "after.parquet"
    perplexity(model, tiny_tokenizer, corpus=tiny_corpus, max_documents=MAX_DOCS, token_losses=path)
    return path


def test_attribution_sums_to_total(evaluated, after_path):
    result, before_path = evaluated
    out = compare_token_losses(before_path, after_path, top=10_000)
    b, a = read_token_losses(before_path), read_token_losses(after_path)
    total = (math.fsum(a.nll) - math.fsum(b.nll)) / len(b)
    assert out["total"]["delta_log_ppl"] == pytest.approx(total, rel=1e-12, abs=1e-15)
    assert math.fsum(t["contribution"] for t in out["tokens"]) == pytest.approx(total, rel=1e-12, abs=1e-15)
    assert math.fsum(c["contribution"] for c in out["classes"].values()) == pytest.approx(total, rel=1e-12,
                                                                                          abs=1e-15)
    assert out["check"]["sum_token_contributions"] == pytest.approx(total, rel=1e-12, abs=1e-15)
    assert sum(c["count"] for c in out["classes"].values()) == len(b)
    for d, r in out["domains"].items():
        assert r["ppl_before"] == pytest.approx(result.to_dict()["domains"][d]["token_perplexity"], rel=1e-6)
        assert math.fsum(c["contribution"] for c in r["classes"].values()) == pytest.approx(
            r["delta_log_ppl"], rel=1e-12, abs=1e-15)
    # ranked by |contribution|; one token type checked by hand
    contribs = [abs(t["contribution"]) for t in out["tokens"]]
    assert contribs == sorted(contribs, reverse=True)
    t0 = out["tokens"][0]
    rows = b.token_id == t0["id"]
    assert t0["count"] == int(rows.sum())
    assert t0["delta_nll_sum"] == pytest.approx(float((a.nll[rows] - b.nll[rows]).sum()), rel=1e-9)
    assert sum(out["histogram"]["counts"]) + out["histogram"]["below"] + out["histogram"]["above"] >= len(b)


def test_exclusion_recomputes_perplexity(evaluated, after_path):
    _, before_path = evaluated
    out = compare_token_losses(before_path, after_path, exclude=["newline", "punctuation", "\\n", "id:5"])
    b, a = read_token_losses(before_path), read_token_losses(after_path)
    drop = np.array([token_class(b.token_text[int(i)]) in ("newline", "punctuation") or
                     b.token_text[int(i)] == "\n" or int(i) == 5 for i in b.token_id])
    ex = out["excluded"]
    assert ex["tokens_left_out"] == int(drop.sum()) > 0
    assert ex["total"]["ppl_before"] == pytest.approx(math.exp(b.nll[~drop].mean()), rel=1e-9)
    assert ex["total"]["ppl_after"] == pytest.approx(math.exp(a.nll[~drop].mean()), rel=1e-9)
    with pytest.raises(UsageError, match="--exclude 'zzzq'"):
        compare_token_losses(before_path, after_path, exclude=["zzzq"])


def test_identical_files_compare_to_zero(evaluated):
    _, path = evaluated
    out = compare_token_losses(path, path)
    assert out["total"]["delta_log_ppl"] == 0.0
    assert all(c["contribution"] == 0.0 for c in out["classes"].values())


def test_mismatched_inputs_fail_clearly(evaluated, tiny_model, tiny_tokenizer, tiny_corpus, tmp_path):
    _, before_path = evaluated
    b = read_token_losses(before_path)
    fewer = tmp_path / "fewer.parquet"
    perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, max_documents=MAX_DOCS - 1, token_losses=fewer)
    with pytest.raises(CptlabError, match=r"domain 'code': BEFORE scored \d+ tokens, AFTER scored \d+"):
        compare_token_losses(before_path, fewer)
    one = tmp_path / "one.parquet"
    perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, domains=["prose"], max_documents=MAX_DOCS,
               token_losses=one)
    with pytest.raises(CptlabError, match="different domains: only in BEFORE: code; only in AFTER: -"):
        compare_token_losses(before_path, one)
    ids = b.token_id.copy()
    ids[7] = (ids[7] + 1) % 512
    with pytest.raises(CptlabError, match=r"doc 0, position 7: token id .*\(1 of \d+ tokens differ"):
        compare_token_losses(b, replace(b, token_id=ids))
    pos = b.position.copy()
    pos[3] += 1000
    with pytest.raises(CptlabError, match="the scored tokens differ"):
        compare_token_losses(b, replace(b, position=pos))
    with pytest.raises(CptlabError, match="file not found"):
        compare_token_losses(tmp_path / "nope.parquet", before_path)


def test_row_order_does_not_matter(evaluated, after_path):
    _, before_path = evaluated
    b, a = read_token_losses(before_path), read_token_losses(after_path)
    perm = np.random.default_rng(0).permutation(len(a))
    shuffled = replace(a, domain_code=a.domain_code[perm], doc=a.doc[perm], position=a.position[perm],
                       token_id=a.token_id[perm], nll=a.nll[perm])
    x, y = compare_token_losses(b, a), compare_token_losses(b, shuffled)
    assert y["total"]["delta_log_ppl"] == pytest.approx(x["total"]["delta_log_ppl"], rel=1e-12)


@pytest.mark.parametrize("text,cls", [
    ("\n", "newline"), ("\n\n    ", "newline"), ("  ", "whitespace"), ("\t", "whitespace"), (".", "punctuation"),
    (" (", "punctuation"), ("):", "punctuation"), (" ==", "punctuation"), ("42", "digits"), (" 7", "digits"),
    (" the", "word-start"), ("\tfoo", "word-start"), ("ing", "subword"), ("x2", "subword"), ("The", "subword"),
])
def test_token_class(text, cls):
    assert token_class(text) == cls
    assert cls in CLASSES


def test_special_tokens_have_their_own_class():
    assert token_class("<|endoftext|>", special=True) == "special"


def test_files_that_are_not_token_losses_fail_clearly(evaluated, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, before_path = evaluated
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(CptlabError, match="junk.parquet: not a readable parquet file"):
        compare_token_losses(before_path, junk)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"doc": [0], "nll": [1.0]}), other)
    with pytest.raises(CptlabError, match=r"other.parquet: not a cptlab per-token loss file: missing column\(s\) "
                                          r"domain, position, token_id"):
        compare_token_losses(other, before_path)
