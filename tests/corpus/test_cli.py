"""`cptlab corpus inspect`: the table, --json, options, and errors as one message with exit code 1."""

from __future__ import annotations

import json

import pytest

from tests.corpus.helpers import run_cli, write_jsonl, write_parquet, write_txt


def _expected(docs):
    return {"documents": len(docs), "words": sum(len(d.split()) for d in docs),
            "bytes": sum(len(d.encode("utf-8")) for d in docs)}


def test_inspect_json_matches_independent_counts(tiny_corpus, corpus_docs, capsys):
    code, out, _ = run_cli(["corpus", "inspect", str(tiny_corpus), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    for domain, docs in corpus_docs.items():
        clean = ["\n".join(line for line in d.split("\n") if line.strip()) for d in docs]
        n = len(clean)
        cut1, cut2 = int(n * 0.7), int(n * 0.85)
        for split, part in (("train", clean[:cut1]), ("valid", clean[cut1:cut2]), ("test", clean[cut2:])):
            got = result["domains"][domain][split]
            assert {k: got[k] for k in ("documents", "words", "bytes")} == _expected(part)
            assert got["files"] == 1 and got["skipped"] == {}
    assert result["total"]["documents"] == sum(len(d) for d in corpus_docs.values())
    assert result["options"]["txt_mode"] == "blank-line"


def test_inspect_table(tmp_path, capsys):
    root = tmp_path / "c"
    write_txt(root / "news" / "train.txt", "one two\n\nthree\n")
    write_jsonl(root / "news" / "test.jsonl", ["", "four five six"])
    write_parquet(root / "law" / "valid.parquet", {"body": ["a b", "c"]})
    code, out, _ = run_cli(["corpus", "inspect", str(root)], capsys)
    assert code == 1  # law/valid.parquet has no `text` column
    code, out, _ = run_cli(["corpus", "inspect", str(root), "--domains", "news"], capsys)
    assert code == 0
    lines = [line for line in out.splitlines() if "news" in line or "total" in line]
    cells = [[c.strip() for c in line.strip("│ ").split("│")] for line in lines]
    # "one two" + "three": the line break before a separating blank line and at the end of the file is not
    # part of a document (read.py's module doc), so 7 + 5 bytes
    assert cells == [["news", "train", "1", "2", "3", "12", "0"],
                     ["news", "test", "1", "1", "3", "13", "empty 1"],
                     ["total", "", "2", "3", "6", "25", "empty 1"]]


def test_inspect_options_are_passed(tmp_path, capsys):
    root = tmp_path / "c"
    write_txt(root / "d" / "train.txt", b"a b\nc \xff\n\nd\n")
    write_jsonl(root / "e" / "train.jsonl", [{"body": "x y"}, {"other": 1}])
    code, out, _ = run_cli(["corpus", "inspect", str(root), "--json", "--txt-mode", "line",
                            "--on-decode-error", "replace", "--text-field", "body", "--on-bad-record", "skip"], capsys)
    assert code == 0
    r = json.loads(out)
    # lines "a b", "c \ufffd" (U+FFFD is a word: 3 UTF-8 bytes), "", "d"
    assert r["domains"]["d"]["train"] == {"files": 1, "documents": 3, "words": 5, "bytes": 9,
                                          "skipped": {"empty": 1}, "replaced": 1}
    assert r["domains"]["e"]["train"]["documents"] == 1
    assert r["domains"]["e"]["train"]["skipped"] == {"missing_field": 1}
    code, out, _ = run_cli(["corpus", "inspect", str(root), "--json", "--on-decode-error", "skip",
                            "--on-bad-record", "skip", "--splits", "train"], capsys)
    assert json.loads(out)["total"]["skipped"] == {"invalid_utf8": 1, "missing_field": 2}


def _bad_inputs(tmp_path):
    c = tmp_path
    yield [str(c / "missing")], f"{c / 'missing'}: no such file or directory"
    write_txt(c / "u" / "d" / "train.txt", b"ok\n\nbad \xff\n")
    yield [str(c / "u")], f"{c / 'u' / 'd' / 'train.txt'}: invalid UTF-8 at byte 8 (line 3)"
    write_txt(c / "j" / "d" / "train.jsonl", b'{"text": "a"}\n{"text": \n')
    yield [str(c / "j")], f"{c / 'j' / 'd' / 'train.jsonl'}:2: not valid JSON"
    write_jsonl(c / "f" / "d" / "train.jsonl", [{"body": "a"}])
    yield [str(c / "f")], f"{c / 'f' / 'd' / 'train.jsonl'}:1: no field 'text'"
    write_txt(c / "b" / "d" / "train.txt", b"\x00\x01\x02binary")
    yield [str(c / "b")], f"{c / 'b' / 'd' / 'train.txt'}: binary file"
    write_parquet(c / "p" / "d" / "train.parquet", {"body": ["a"]})
    yield [str(c / "p")], f"{c / 'p' / 'd' / 'train.parquet'}: no column 'text'"
    yield [str(c / "p"), "--domains", "zzz"], "no domain 'zzz'"
    yield [str(c / "u"), "--splits", "test"], "no 'test' split in domain(s) d"
    (c / "m.yaml").write_text("d: {train: nothere.txt}\n")
    yield [str(c / "m.yaml")], f"m.yaml: d.train: {c / 'nothere.txt'}: no such file"


def test_inspect_errors_exit_1_without_traceback(tmp_path, capsys):
    n = 0
    for args, message in _bad_inputs(tmp_path):
        code, out, err = run_cli(["corpus", "inspect", *args], capsys)
        text = "".join((out + err).split())  # rich may wrap long messages anywhere: compare without whitespace
        assert code == 1, (args, out, err)
        assert "error:" in text and "".join(message.split()) in text, (message, out + err)
        assert "Traceback" not in out + err
        n += 1
    assert n == 9


def test_inspect_help(capsys):
    code, out, _ = run_cli(["corpus", "inspect", "--help"], capsys)
    assert code == 0 and "Example: cptlab corpus inspect" in " ".join(out.split())


def _cli_catches_typer_usage_errors() -> bool:
    """Whether `cptlab.cli.main` turns typer's usage errors into exit 2 (False while the cli.py bug is there)."""
    import contextlib
    import io

    from cptlab.cli import main

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            main(["corpus", "inspect"])
    except SystemExit as e:
        return e.code == 2
    except Exception:
        return False
    return False


@pytest.mark.xfail(not _cli_catches_typer_usage_errors(), strict=True, reason="cli.py catches click.ClickException, but typer 0.29 raises its vendored "
                                       "typer._click.exceptions.ClickException (not a subclass): a bad choice or "
                                       "a missing argument ends in a traceback. Fix in cli.py (lead).")
def test_inspect_usage_errors():
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "cptlab"
    for args in (["--txt-mode", "paragraph"], []):
        proc = subprocess.run([str(exe), "corpus", "inspect", *(["x"] if args else []), *args],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr[-300:])


@pytest.mark.slow
def test_inspect_subprocess(tiny_corpus):
    """The installed console script, as a user runs it."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "cptlab"
    proc = subprocess.run([str(exe), "corpus", "inspect", str(tiny_corpus / "nope")], capture_output=True, text=True)
    err = " ".join(proc.stderr.split())  # rich wraps long lines
    assert proc.returncode == 1 and "no such file or directory" in err and "Traceback" not in err
