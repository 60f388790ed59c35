"""Every kind of bad input: an error naming file and place, or (when asked) skipped and counted."""

from __future__ import annotations

import gzip
import json

import pytest

from cptlab.corpus import ReadOptions, ReadStats, SplitSource, iter_documents
from cptlab.errors import CptlabError, UsageError
from tests.corpus.helpers import write_jsonl, write_parquet, write_txt


def read(path, stats=None, **opts):
    return list(iter_documents(SplitSource("d", "train", [path]), ReadOptions(**opts), stats))


BAD_TXT = b"good one\n\nbad \xff\xfe here\nmore\n\nfine \xe2\x98\x83\n\ncut \xe2\x98\n"


def test_invalid_utf8_error_names_file_and_byte_offset(tmp_path):
    path = write_txt(tmp_path / "a.txt", BAD_TXT)
    with pytest.raises(CptlabError) as e:
        read(path)
    offset = BAD_TXT.index(b"\xff")
    assert f"{path}: invalid UTF-8 at byte {offset} (line 3)" in str(e.value)


def test_invalid_utf8_offset_in_long_line_and_gzip(tmp_path, monkeypatch):
    from cptlab.corpus import textio

    monkeypatch.setattr(textio, "CHUNK", 1000)
    raw = ("é" * 5000).encode("utf-8") + b"\xc3(" + b"x" * 100 + b"\n"
    for name in ("long.txt", "long.txt.gz"):
        path = write_txt(tmp_path / name, raw)
        with pytest.raises(CptlabError, match=rf"{path}: invalid UTF-8 at byte 10000 \(line 1\)"):
            read(path)


def test_invalid_utf8_replace_counts(tmp_path):
    stats = ReadStats()
    docs = read(write_txt(tmp_path / "a.txt", BAD_TXT), stats, on_decode_error="replace")
    assert docs == ["good one", "bad \ufffd\ufffd here\nmore", "fine ☃", "cut \ufffd"]
    assert stats.replaced == 3 and not stats.skipped


def test_invalid_utf8_skip_counts(tmp_path):
    stats = ReadStats()
    docs = read(write_txt(tmp_path / "a.txt", BAD_TXT), stats, on_decode_error="skip")
    assert docs == ["good one", "fine ☃"]
    assert stats.skipped == {"invalid_utf8": 2} and stats.replaced == 0
    stats = ReadStats()
    path = write_txt(tmp_path / "a.jsonl", b'{"text": "ok"}\n{"text": "bad \xff"}\n')
    assert read(path, stats, on_decode_error="skip") == ["ok"]
    assert stats.skipped == {"invalid_utf8": 1}


def test_legit_replacement_characters_are_not_counted(tmp_path):
    stats = ReadStats()
    assert read(write_txt(tmp_path / "a.txt", "already \ufffd\n"), stats, on_decode_error="replace") == ["already \ufffd"]
    assert stats.replaced == 0


def test_empty_and_whitespace_documents_are_counted(tmp_path):
    stats = ReadStats()
    write_jsonl(tmp_path / "a.jsonl", ["", " ", "\n\n", "\u3000", "real"])
    assert read(tmp_path / "a.jsonl", stats) == ["real"]
    assert stats.skipped == {"empty": 4} and stats.documents == 1
    stats = ReadStats()
    write_parquet(tmp_path / "a.parquet", {"text": ["", "x", "  \t"]})
    assert read(tmp_path / "a.parquet", stats) == ["x"]
    assert stats.skipped == {"empty": 2}


JSONL_LINES = [
    (b'{"text": "ok"}', None, None),
    (b'{"text": "broken', "invalid_json", "not valid JSON"),
    (b'[1, 2]', "invalid_json", "expected a JSON object, got an array"),
    (b'{"body": "x"}', "missing_field", "no field 'text' (fields: body"),
    (b'{"text": null}', "missing_field", "field 'text' is null"),
    (b'{"text": 3}', "not_a_string", "field 'text' is a number, expected a string"),
    (b'{"text": ["a"]}', "not_a_string", "field 'text' is an array"),
    (b"[" * 100000, "invalid_json", "not valid JSON"),
]


@pytest.mark.parametrize("line, reason, message", JSONL_LINES[1:])
def test_bad_jsonl_record_error_names_file_and_line(tmp_path, line, reason, message):
    path = write_txt(tmp_path / "a.jsonl", b'{"text": "ok"}\n\n' + line + b"\n")
    with pytest.raises(CptlabError) as e:
        read(path)
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value)


def test_bad_jsonl_records_skipped_and_counted(tmp_path):
    path = write_txt(tmp_path / "a.jsonl", b"\n".join(line for line, _, _ in JSONL_LINES) + b"\n")
    stats = ReadStats()
    assert read(path, stats, on_bad_record="skip") == ["ok"]
    expected = {}
    for _, reason, _ in JSONL_LINES[1:]:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(stats.skipped) == expected


def test_binary_file_is_a_clear_error(tmp_path):
    path = write_txt(tmp_path / "a.txt", b"some text\n" + bytes(range(256)) * 4)
    with pytest.raises(CptlabError, match=rf"{path}: binary file, not text \(NUL byte at byte 10\)"):
        read(path, on_decode_error="replace")  # even when decode errors are tolerated
    gz = tmp_path / "b.txt"
    gz.write_bytes(gzip.compress(b"hello\n" * 100, mtime=0))
    with pytest.raises(CptlabError, match="binary file.*looks like gzip data"):
        read(gz)


def test_not_gzip_named_gz(tmp_path):
    path = write_txt(tmp_path / "a.txt", "plain text\n")
    path = path.rename(tmp_path / "a.txt.gz")
    with pytest.raises(CptlabError, match=rf"{path}: not a valid gzip file"):
        read(path)
    trunc = tmp_path / "t.jsonl.gz"
    trunc.write_bytes(gzip.compress(json.dumps({"text": "x" * 10000}).encode())[:50])
    with pytest.raises(CptlabError, match=rf"{trunc}: not a valid gzip file"):
        read(trunc)


def test_parquet_errors_name_file_and_column(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"body": ["x"], "id": [1]})
    with pytest.raises(CptlabError, match=rf"{path}: no column 'text' \(columns: body, id"):
        read(path)
    with pytest.raises(CptlabError, match=rf"{path}: column 'id' has type int64, expected strings"):
        read(path, text_field="id")
    bogus = write_txt(tmp_path / "b.parquet", "not parquet at all\n")
    with pytest.raises(CptlabError, match=rf"{bogus}: not a readable parquet file"):
        read(bogus)


def test_parquet_null_is_a_bad_record(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"text": ["x", None, "y"]})
    with pytest.raises(CptlabError, match=rf"{path}: row 1: column 'text' is null"):
        read(path)
    stats = ReadStats()
    assert read(path, stats, on_bad_record="skip") == ["x", "y"]
    assert stats.skipped == {"missing_field": 1}


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="on_decode_error: 'ignore' is not one of"):
        ReadOptions(on_decode_error="ignore")
    with pytest.raises(UsageError, match="txt_mode"):
        ReadOptions(txt_mode="paragraph")


def test_whitespace_documents_in_line_mode_are_counted(tmp_path):
    stats = ReadStats()
    path = write_txt(tmp_path / "a.txt", "one\n   \n\t\r\ntwo\n\u2003\n")
    assert read(path, stats, txt_mode="line") == ["one", "two"]
    assert stats.skipped == {"empty": 3} and stats.documents == 2


def test_binary_file_named_jsonl_is_a_clear_error(tmp_path):
    path = write_txt(tmp_path / "a.jsonl", b'{"text": "ok"}\n' + b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(CptlabError, match=rf"{path}: binary file, not text \(NUL byte at byte 23\)"):
        read(path, on_bad_record="skip")  # not a bad record to skip: the file is not text
    png = write_txt(tmp_path / "b.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(CptlabError, match="binary file.*looks like a PNG image"):
        read(png)
