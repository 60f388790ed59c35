"""Bounded memory: a 50 MB one-line document, and streaming over many files without growth."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from cptlab.corpus import ReadOptions, ReadStats, SplitSource, iter_documents

MB = 1 << 20


def _peak_while(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _write_big_line(path, size, prefix=b"", suffix=b""):
    unit = b"lorem ipsum dolor sit amet, consectetur \xc3\xa9l\xc3\xa9ment "
    with open(path, "wb") as f:
        f.write(prefix)
        written = 0
        block = unit * (MB // len(unit))
        while written < size:
            f.write(block)
            written += len(block)
        f.write(suffix)
    return written, unit


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_50mb_single_line_document_bounded_memory(tmp_path, fmt):
    path = tmp_path / f"big.{fmt}"
    if fmt == "txt":
        size, unit = _write_big_line(path, 50 * MB, suffix=b"\n\nsmall doc\n")
    else:
        size, unit = _write_big_line(path, 50 * MB, prefix=b'{"text": "', suffix=b'"}\n{"text": "small doc"}\n')
    source = SplitSource("d", "train", [path])

    def consume():
        stats = ReadStats()
        lengths = [len(doc) for doc in iter_documents(source, ReadOptions(), stats)]
        return lengths, stats

    (lengths, stats), peak = _peak_while(consume)
    n_units = size // len(unit)
    chars_per_unit = len(unit.decode("utf-8"))
    assert lengths == [n_units * chars_per_unit, len("small doc")]
    assert stats.words == n_units * len(unit.split()) + 2
    assert stats.bytes == size + len("small doc")
    # The document itself (~50 MB of text) is held; everything else together stays within a few times that.
    print(f"peak {peak / MB:.0f} MiB for a {size / MB:.0f} MiB document")
    assert peak < 3 * size, f"peak {peak / MB:.0f} MiB for a {size / MB:.0f} MiB document"


def test_streaming_many_files_does_not_grow(tmp_path):
    doc = "A line of ordinary text, with some words in it.\n" * 20
    files = []
    for i in range(40):
        n_docs = 8000 if i == 39 else 100  # the last file alone is ~8 MB: reading files whole would show
        path = tmp_path / f"part-{i:03d}.jsonl" if i % 2 else tmp_path / f"part-{i:03d}.txt"
        with open(path, "w", encoding="utf-8") as f:
            for j in range(n_docs):
                text = f"doc {i}/{j}\n{doc}"
                f.write(json.dumps({"text": text}) + "\n" if i % 2 else text + "\n")
        files.append(path)
    total = sum(p.stat().st_size for p in files)

    def consume(n_files):
        stats = ReadStats()
        for _ in iter_documents(SplitSource("d", "train", files[-n_files:]), ReadOptions(), stats):
            pass
        return stats

    stats_small, peak_small = _peak_while(lambda: consume(2))
    stats_all, peak_all = _peak_while(lambda: consume(40))
    assert stats_all.documents == 39 * 100 + 8000 and stats_small.documents == 100 + 8000
    assert total > 10 * MB
    # Constant in the corpus size: twenty times the files, (almost) the same peak, far below any file's size.
    assert peak_all < peak_small + 256 * 1024, (peak_small, peak_all)
    assert peak_all < 1 * MB, peak_all
