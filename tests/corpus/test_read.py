"""Reading documents: txt modes, jsonl, parquet, gzip, verbatim text, counts, chunk boundaries."""

from __future__ import annotations

import re

import pytest

from cptlab.corpus import ReadOptions, ReadStats, SplitSource, count_bytes, count_words, iter_documents
from cptlab.corpus import textio
from tests.corpus.helpers import write_jsonl, write_parquet, write_txt


def read(path, stats=None, **opts):
    return list(iter_documents(SplitSource("d", "train", [path]), ReadOptions(**opts), stats))


TXT = "  indented first\nline two  \n\n\n \t \nsecond doc\r\nwith crlf\r\n\r\nthird\n\n\nlast no newline"


def test_txt_blank_line_mode_is_verbatim(tmp_path):
    stats = ReadStats()
    docs = read(write_txt(tmp_path / "a.txt", TXT), stats)
    assert docs == ["  indented first\nline two  ", "second doc\r\nwith crlf", "third", "last no newline"]
    assert stats.documents == 4 and not stats.skipped  # runs of blank lines are separators, not documents


def test_txt_line_mode(tmp_path):
    stats = ReadStats()
    docs = read(write_txt(tmp_path / "a.txt", TXT), stats, txt_mode="line")
    assert docs == ["  indented first", "line two  ", "second doc", "with crlf", "third", "last no newline"]
    # Empty and whitespace-only lines are empty documents: skipped and counted.
    assert stats.skipped == {"empty": 6}


def test_txt_without_final_newline_and_unicode_lines(tmp_path):
    # \x0b, \x0c and \u2028 are line breaks for str.splitlines but not for us: only \n ends a line.
    text = "a\x0bb\x0cc\u2028d\n\ne"
    assert read(write_txt(tmp_path / "a.txt", text)) == ["a\x0bb\x0cc\u2028d", "e"]


def test_bom_is_dropped(tmp_path):
    path = write_txt(tmp_path / "a.txt", b"\xef\xbb\xbfhello\n\nworld\n")
    assert read(path) == ["hello", "world"]
    path = write_txt(tmp_path / "a.jsonl", b'\xef\xbb\xbf{"text": "x"}\n')
    assert read(path) == ["x"]


def test_jsonl_text_field_and_empty_records(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"body": " one \n"}, {"body": ""}, {"body": "\n\t"}, {"body": "two"}])
    stats = ReadStats()
    assert read(path, stats, text_field="body") == [" one \n", "two"]
    assert stats.skipped == {"empty": 2}


def test_parquet_in_batches(tmp_path):
    n = 3 * 256 + 17  # several read batches and row groups
    texts = [f"row {i} " + "w" * (i % 7) for i in range(n)]
    texts[5] = "   "
    path = write_parquet(tmp_path / "a.parquet", {"content": texts, "id": list(range(n))}, row_group_size=300)
    stats = ReadStats()
    docs = read(path, stats, text_field="content")
    assert docs == [t for t in texts if t.strip()]
    assert stats.skipped == {"empty": 1}


def test_gzip_files(tmp_path):
    assert read(write_txt(tmp_path / "a.txt.gz", "x y\n\nz\n")) == ["x y", "z"]
    assert read(write_jsonl(tmp_path / "a.jsonl.gz", ["é", "b"])) == ["é", "b"]


def test_stats_match_independent_counts(tmp_path, corpus_docs):
    docs = corpus_docs["prose"][:40] + ["héllo wörld ☃ \u3000 ideographic\u00a0space"]
    path = write_jsonl(tmp_path / "a.jsonl", docs)
    stats = ReadStats()
    got = read(path, stats)
    assert got == docs
    assert stats.documents == len(docs)
    assert stats.words == sum(len(re.findall(r"\S+", d)) for d in docs)
    assert stats.bytes == sum(len(d.encode("utf-8")) for d in docs)
    assert stats.files == 1


def test_count_words_and_bytes_on_long_documents():
    from cptlab.corpus.read import _BIG

    # Words straddle the slice boundaries; unicode whitespace and multibyte characters near them.
    unit = "ab\u3000cd é\u2028\x1c\u2019\xa0" + "x" * 1000 + " "
    doc = unit * (3 * _BIG // len(unit) + 5) + "tail"
    for cut in (_BIG - 1, _BIG, _BIG + 1, 2 * _BIG + 3):
        d = doc[:cut] + " " + doc[cut:]
        assert count_words(d) == len(d.split())
        assert count_words(doc[:cut]) == len(doc[:cut].split())
    assert count_words(doc) == len(doc.split())
    assert count_bytes(doc) == len(doc.encode("utf-8"))
    assert count_bytes("a" * (2 * _BIG + 3)) == 2 * _BIG + 3


def test_wide_spaces_list_is_complete():
    import sys

    from cptlab.corpus.read import WIDE_SPACES

    assert WIDE_SPACES == "".join(chr(c) for c in range(128, sys.maxunicode + 1) if chr(c).isspace())


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_small_read_pieces_keep_characters_whole(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(textio, "CHUNK", chunk)
    text = "héllo ☃ wörld 𝄞 end\n\n多字节字符 文本\r\nnext line é\n"
    path = write_txt(tmp_path / "a.txt", text)
    assert read(path) == ["héllo ☃ wörld 𝄞 end", "多字节字符 文本\r\nnext line é"]
    lines = list(textio.iter_lines(path))
    assert "".join(line.text for line in lines) == text
    raw = text.encode("utf-8")
    assert [line.offset for line in lines] == [0] + [i + 1 for i, b in enumerate(raw) if b == 10][:-1]
    assert [line.number for line in lines] == [1, 2, 3, 4]
