"""Source fingerprints: size, mtime, streamed sha256, for every file a source reads."""

from __future__ import annotations

import hashlib
import os

import pytest

from cptlab.corpus import corpus_fingerprint_files, open_corpus, sha256_file
from cptlab.errors import CptlabError
from tests.corpus.helpers import write_txt


def test_fingerprint_files(tmp_path):
    root = tmp_path / "c"
    a = write_txt(root / "d" / "train.txt", "alpha\n")
    b = write_txt(root / "d" / "train" / "part.txt", "beta " * 300_000)  # > one 1 MiB hash block
    write_txt(root / "e" / "test.txt", "gamma\n")
    corpus = open_corpus(root)
    fps = corpus_fingerprint_files(corpus.source("d", "train"))
    assert [f["path"] for f in fps] == [str(a.resolve()), str(b.resolve())]
    for f, p in zip(fps, (a, b)):
        assert f["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert f["size"] == p.stat().st_size and f["mtime_ns"] == p.stat().st_mtime_ns
        assert f["mtime"] == p.stat().st_mtime
    everything = corpus_fingerprint_files(corpus)
    assert [f["path"] for f in everything] == sorted(str(p.resolve()) for p in root.rglob("*.txt"))
    assert corpus_fingerprint_files(a) == fps[:1]

    before = corpus_fingerprint_files(a)[0]
    a.write_text("alphb\n")  # same size, different content
    os.utime(a, ns=(before["mtime_ns"], before["mtime_ns"]))
    after = corpus_fingerprint_files(a)[0]
    assert after["size"] == before["size"] and after["mtime_ns"] == before["mtime_ns"]
    assert after["sha256"] != before["sha256"]


def test_fingerprint_missing_file(tmp_path):
    with pytest.raises(CptlabError, match="nope.txt: cannot read"):
        corpus_fingerprint_files(tmp_path / "nope.txt")
    with pytest.raises(CptlabError, match="nope.txt: cannot read"):
        sha256_file(tmp_path / "nope.txt")
