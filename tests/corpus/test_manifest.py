"""YAML manifests and `datasets` specs."""

from __future__ import annotations

import pytest
import yaml

from cptlab.corpus import ReadOptions, ReadStats, iter_documents, open_corpus
from cptlab.errors import CptlabError
from tests.corpus.helpers import write_jsonl, write_parquet, write_txt


def _docs(corpus, domain, split, **opts):
    return list(iter_documents(corpus.source(domain, split), ReadOptions(**opts) if opts else None))


def _manifest(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_manifest_files_lists_globs_folders(tmp_path, monkeypatch):
    base = tmp_path / "data"
    write_jsonl(base / "wiki" / "train.jsonl", [{"body": "w1"}, {"body": "w2"}], )
    write_jsonl(base / "wiki" / "v0.jsonl", [{"body": "v0"}])
    write_jsonl(base / "wiki" / "v1.jsonl", [{"body": "v1"}])
    write_jsonl(base / "wiki" / "test" / "b.jsonl", [{"body": "t-b"}])
    write_jsonl(base / "wiki" / "test" / "a.jsonl", [{"body": "t-a"}])
    write_txt(base / "notes" / "train.text", "n1\nn2\n")
    write_txt(base / "code" / "train.txt", "c1\n\nc2\n")
    write_txt(base / "code" / "test.txt", "c3\n")
    write_parquet(base / "pq" / "x.parquet", {"text": ["p1"]})
    m = _manifest(base / "corpus.yaml", {
        "wiki": {"text_field": "body", "train": "wiki/train.jsonl", "valid": ["wiki/v1.jsonl", "wiki/v0.jsonl"],
                 "test": "wiki/test/*.jsonl"},
        "notes": {"format": "txt", "txt_mode": "line", "train": "notes/train.text"},
        "code": "code",
        "pq": {"train": "pq"},
    })
    monkeypatch.chdir(tmp_path)  # paths are relative to the manifest, not the current directory
    corpus = open_corpus(str(m.relative_to(tmp_path)))
    assert corpus.domain_names() == ["code", "notes", "pq", "wiki"]
    assert _docs(corpus, "wiki", "train") == ["w1", "w2"]
    assert _docs(corpus, "wiki", "valid") == ["v1", "v0"]
    assert _docs(corpus, "wiki", "test") == ["t-a", "t-b"]
    assert _docs(corpus, "notes", "train") == ["n1", "n2"]  # per-domain txt_mode wins over the default
    assert _docs(corpus, "code", "train") == ["c1", "c2"] and _docs(corpus, "code", "test") == ["c3"]
    assert sorted(corpus.domains["code"]) == ["test", "train"]
    assert _docs(corpus, "pq", "train") == ["p1"]
    with pytest.raises(CptlabError, match="domain 'pq' has no 'valid' split"):
        corpus.source("pq", "valid")


@pytest.mark.parametrize("data, message", [
    ({"wiki": {"tran": "a.txt"}}, r"corpus.yaml: wiki.tran: unknown key"),
    ({"wiki": {"train": "missing.txt"}}, r"corpus.yaml: wiki.train: .*missing.txt: no such file"),
    ({"wiki": {"train": "*.nothing"}}, r"wiki.train: no file matches"),
    ({"wiki": {"train": "a.csv"}}, r"wiki.train: cannot tell the format of .*a.csv"),
    ({"wiki": {"format": "csv", "train": "a.csv"}}, r"wiki.format: 'csv' is not one of txt, jsonl, parquet"),
    ({"wiki": {"train": 3}}, r"wiki.train: expected a file path"),
    ({"wiki": {}}, r"wiki: no splits"),
    ({"wiki": "nofolder"}, r"wiki: .*nofolder: no such directory"),
    ({"a/b": {"train": "a.csv"}}, r"'a/b': a domain name must be"),
    ({"wiki": {"train": {"path": "x"}}}, r"wiki.train: a mapping here must be \{hf"),
    ({"wiki": {"train": {"hf": {"name": "x"}}}}, r"wiki.train.path: required"),
    ({"wiki": {"train": {"hf": {"path": "x", "colour": 1}}}}, r"wiki.train.colour: unknown key"),
    ([1, 2], r"corpus.yaml: expected a mapping at the top level"),
    ({}, r"corpus.yaml: no domains"),
])
def test_manifest_errors_name_the_field(tmp_path, data, message):
    write_txt(tmp_path / "a.csv", "x\n")
    m = tmp_path / "corpus.yaml"
    m.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(CptlabError, match=message):
        open_corpus(m)


def test_manifest_invalid_yaml_names_line(tmp_path):
    m = tmp_path / "corpus.yaml"
    m.write_text("wiki:\n  train: [a.txt\n", encoding="utf-8")
    with pytest.raises(CptlabError, match=r"corpus.yaml:\d+:\d+: invalid YAML"):
        open_corpus(m)


def test_inline_dict_manifest(tmp_path, monkeypatch):
    write_txt(tmp_path / "x.txt", "a\n\nb\n")
    monkeypatch.chdir(tmp_path)
    corpus = open_corpus({"d": {"train": "x.txt"}})
    assert _docs(corpus, "d", "train") == ["a", "b"]


@pytest.fixture
def local_dataset(tmp_path):
    """A local parquet dataset folder, as `datasets` loads it: one file per split."""
    d = tmp_path / "ds"
    for split, n in (("train", 5), ("validation", 2), ("test", 3)):
        write_parquet(d / f"{split}.parquet", {"content": [f"{split} {i}" for i in range(n)] + [" "],
                                               "n": list(range(n + 1))})
    return d


def test_hf_string_spec_discovers_splits(local_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    corpus = open_corpus(f"hf:{local_dataset}")
    assert corpus.domain_names() == ["ds"]
    assert sorted(corpus.domains["ds"]) == ["test", "train", "valid"]
    stats = ReadStats()
    docs = list(iter_documents(corpus.source("ds", "valid"), ReadOptions(text_field="content"), stats))
    assert docs == ["validation 0", "validation 1"]
    assert stats.skipped == {"empty": 1} and stats.files == 0
    with pytest.raises(CptlabError, match=r"dataset hf:.*ds \[train\]: no column 'text' \(columns: content, n\)"):
        list(iter_documents(corpus.source("ds", "train")))


def test_hf_in_manifest(local_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    m = _manifest(tmp_path / "corpus.yaml", {
        "whole": {"hf": {"path": "./ds", "splits": {"train": "train", "test": "test"}}, "text_field": "content"},
        "built": {"train": {"hf": {"path": "parquet", "data_files": "ds/train.parquet", "split": "train[:3]",
                                   "text_field": "content", "streaming": False}}},
    })
    corpus = open_corpus(m)
    assert sorted(corpus.domains["whole"]) == ["test", "train"]
    assert _docs(corpus, "whole", "test") == ["test 0", "test 1", "test 2"]
    assert _docs(corpus, "built", "train") == ["train 0", "train 1", "train 2"]
    _manifest(m, {"missing": {"train": {"hf": {"path": "./nope"}}}})
    with pytest.raises(CptlabError, match=rf"corpus.yaml: missing.train.path: {tmp_path / 'nope'}: no such dataset"):
        open_corpus(m)
    _manifest(m, {"broken": {"train": {"hf": {"path": "ds", "split": "nosplit", "text_field": "content"}}}})
    with pytest.raises(CptlabError, match=r"dataset hf:.*ds \[nosplit\]: cannot load \(ValueError: Bad split"):
        _docs(open_corpus(m), "broken", "train")


def test_hf_missing_dataset_is_an_error(tmp_path):
    with pytest.raises(CptlabError, match=r"corpus hf:.*\.path: .*nothing-here: no such dataset folder"):
        open_corpus(f"hf:{tmp_path / 'nothing-here'}")
    with pytest.raises(CptlabError, match=r"dataset hf:no-such-org/no-such-dataset: cannot load"):
        open_corpus("hf:no-such-org/no-such-dataset")  # offline in tests: the hub cannot be reached
    with pytest.raises(CptlabError, match=r"expected hf:PATH\[:NAME\]"):
        open_corpus("hf:")
