"""Corpus discovery: M2D2 directories, file orders, and errors that name the missing path."""

from __future__ import annotations

import pytest

from cptlab.corpus import ReadStats, iter_documents, open_corpus
from cptlab.errors import CptlabError
from tests.conftest import write_corpus
from tests.corpus.helpers import write_jsonl, write_parquet, write_txt


def _expected_txt(docs):
    """What write_corpus puts in a .txt for each document: its non-blank lines."""
    return ["\n".join(line for line in d.split("\n") if line.strip()) for d in docs]


def test_tiny_corpus_round_trip(tiny_corpus, corpus_docs):
    corpus = open_corpus(tiny_corpus)
    assert corpus.domain_names() == ["code", "prose"]
    for domain, docs in corpus_docs.items():
        assert sorted(corpus.domains[domain]) == ["test", "train", "valid"]
        got = [d for split in ("train", "valid", "test") for d in iter_documents(corpus.source(domain, split))]
        assert got == _expected_txt(docs)


def test_jsonl_corpus_is_verbatim(tmp_path):
    docs = {"a": ["  leading spaces", "trailing\n\n", "x\n\n\ny", "tab\tsep"] * 5}
    corpus = open_corpus(write_corpus(tmp_path, docs, fmt="jsonl"))
    got = [d for s in ("train", "valid", "test") for d in iter_documents(corpus.source("a", s))]
    assert got == docs["a"]


def test_all_formats_and_split_folder_in_order(tmp_path):
    root = tmp_path / "c"
    d = root / "dom"
    write_txt(d / "train.txt", "t1\n")
    write_jsonl(d / "train.jsonl", ["j1"])
    write_parquet(d / "train.parquet", {"text": ["p1"]})
    write_txt(d / "train.txt.gz", "g1\n")
    write_jsonl(d / "train.jsonl.gz", ["jg1"])
    write_txt(d / "train" / "b" / "2.txt", "f2\n")
    write_txt(d / "train" / "a.txt", "f1\n")
    write_txt(d / "train" / "notes.md", "ignored\n")
    write_txt(d / "train" / ".hidden" / "x.txt", "ignored\n")
    write_txt(d / "test.txt", "x\n")
    write_txt(root / "not-a-domain" / "README", "hello\n")
    corpus = open_corpus(root)
    assert list(corpus.domains) == ["dom"]
    assert sorted(corpus.domains["dom"]) == ["test", "train"]
    stats = ReadStats()
    docs = list(iter_documents(corpus.source("dom", "train"), stats=stats))
    assert docs == ["t1", "j1", "p1", "g1", "jg1", "f1", "f2"]
    assert stats.files == 7 and stats.documents == 7


def test_missing_root_names_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CptlabError, match=f"{missing}: no such file or directory"):
        open_corpus(missing)


def test_root_without_domains(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CptlabError, match="no domains found"):
        open_corpus(tmp_path / "empty")
    write_txt(tmp_path / "single" / "train.txt", "x\n")
    with pytest.raises(CptlabError, match="looks like a single domain"):
        open_corpus(tmp_path / "single")
    write_txt(tmp_path / "file.txt", "x\n")
    with pytest.raises(CptlabError, match="not a .yaml manifest"):
        open_corpus(tmp_path / "file.txt")


def test_missing_domain_and_split_name_the_path(tmp_path, corpus_docs):
    root = write_corpus(tmp_path / "c", {"code": corpus_docs["code"][:20], "prose": corpus_docs["prose"][:20]})
    corpus = open_corpus(root)
    with pytest.raises(CptlabError) as e:
        corpus.source("legal", "train")
    assert str(root / "legal") in str(e.value) and "code, prose" in str(e.value)
    (root / "code" / "valid.txt").unlink()
    corpus = open_corpus(root)
    with pytest.raises(CptlabError) as e:
        corpus.source("code", "valid")
    assert str(root / "code" / "valid") in str(e.value)
    assert [s.split for s in corpus.sources(["code"])] == ["train", "test"]


def test_file_deleted_after_discovery(tmp_path):
    f = write_txt(tmp_path / "c" / "d" / "train.txt", "x\n")
    corpus = open_corpus(tmp_path / "c")
    f.unlink()
    with pytest.raises(CptlabError, match=f"{f}: no such file"):
        list(iter_documents(corpus.source("d", "train")))
