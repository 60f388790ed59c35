"""`cptlab tokenizer train` and `cptlab prepare`: outputs, reuse, exit codes, errors without a traceback."""

from __future__ import annotations

import json

import numpy as np

from tests.corpus.helpers import run_cli, write_txt


def _flat(text: str) -> str:
    return "".join(text.split())  # rich wraps long messages anywhere


def test_tokenizer_train_and_prepare(tmp_path, tiny_corpus, capsys):
    tok_dir = tmp_path / "tok"
    code, out, _ = run_cli(["tokenizer", "train", "--corpus", str(tiny_corpus), "--vocab-size", "400",
                            "--out", str(tok_dir), "--quiet"], capsys)
    assert code == 0 and out.strip() == str(tok_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert len(tok) == 400 and tok.eos_token == "<|endoftext|>" and tok.pad_token and tok.bos_token

    cache = tmp_path / "cache"
    args = ["prepare", "--corpus", str(tiny_corpus), "--tokenizer", str(tok_dir), "--out", str(cache),
            "--splits", "train,test", "--workers", "1", "--quiet"]
    code, out, _ = run_cli([*args, "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert [(e["domain"], e["split"], e["status"]) for e in summary["entries"]] == [
        ("code", "train", "built"), ("code", "test", "built"), ("prose", "train", "built"), ("prose", "test", "built")]
    from cptlab.tokens.token_cache import open_tokens

    t = open_tokens(cache, "prose", "test")
    assert summary["entries"][3]["tokens"] == t.num_tokens and summary["dtype"] == "uint16"
    assert int(np.asarray(t.ids).max()) == summary["entries"][3]["max_id"] < 400
    code, out, _ = run_cli(args, capsys)  # the table; everything reused
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 4 and all("reused" in r for r in rows)
    assert "code" in rows[0] and f"{t.num_tokens:,}" in rows[3]


def test_errors_exit_codes_without_traceback(tmp_path, tiny_corpus, tiny_tokenizer_dir, capsys):
    bad = tmp_path / "bad"
    write_txt(bad / "d" / "train.txt", b"fine\n\nbroken \xc3\x28 here\n")
    cases = [
        (["tokenizer", "train", "--corpus", str(tmp_path / "nope"), "--vocab-size", "400", "--out",
          str(tmp_path / "t")], 1, f"corpus {tmp_path / 'nope'}: no such file or directory"),
        (["tokenizer", "train", "--corpus", str(tiny_corpus), "--vocab-size", "10", "--out", str(tmp_path / "t")],
         1, "--vocab-size 10: must be at least 300"),
        (["prepare", "--corpus", str(tiny_corpus), "--tokenizer", str(tmp_path / "notok"), "--out",
          str(tmp_path / "c")], 1, f"tokenizer {tmp_path / 'notok'}: directory not found"),
        (["prepare", "--corpus", str(bad), "--tokenizer", str(tiny_tokenizer_dir), "--out", str(tmp_path / "c")],
         1, f"{bad / 'd' / 'train.txt'}: invalid UTF-8 at byte 13 (line 3)"),
        (["prepare", "--corpus", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer_dir), "--out",
          str(tmp_path / "c"), "--domains", "law"], 2, "--domains: unknown domain(s) law"),
        (["prepare", "--corpus", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer_dir), "--out",
          str(tmp_path / "c"), "--workers", "0"], 2, "--workers 0: must be at least 1"),
    ]
    for args, want_code, message in cases:
        code, out, err = run_cli(args, capsys)
        assert code == want_code, (args, out, err)
        assert _flat(message) in _flat(out + err) and "Traceback" not in out + err, (message, out + err)
    from cptlab.tokens.token_cache import list_entries

    assert list_entries(tmp_path / "c") == [] and not (tmp_path / "c" / "d" / "train.tmp").exists()
    # the same corpus with --on-decode-error skip: the bad document is skipped and counted
    code, out, _ = run_cli(["prepare", "--corpus", str(bad), "--tokenizer", str(tiny_tokenizer_dir), "--out",
                            str(tmp_path / "c"), "--on-decode-error", "skip", "--json", "--quiet"], capsys)
    assert code == 0
    e = json.loads(out)["entries"][0]
    assert e["documents"] == 1 and e["skipped"] == {"invalid_utf8": 1}


def test_help_has_examples(capsys):
    for args, example in ((["tokenizer", "train", "--help"], "Example: cptlab tokenizer train"),
                          (["prepare", "--help"], "Example: cptlab prepare")):
        code, out, _ = run_cli(args, capsys)
        assert code == 0 and example in " ".join(out.split())
