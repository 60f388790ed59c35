"""m2d2 mode's stream keeps a .txt file's blank lines as empty lines, as M2D2 does ("\\n".join of the file's lines)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cptlab.corpus import ReadOptions
from cptlab.evaluate import perplexity, read_token_losses

# blank lines between documents (one, then three, one of them whitespace-only), a leading and a trailing blank line
TEXT = ("\nThe first document, line one.\nIts second line.\n\nA second document.\n\n   \n\n"
        "def third(x):\n    return x + 1\n\n")


def _corpus(root, name: str, body: str):
    d = root / "dom"
    d.mkdir(parents=True)
    (d / name).write_text(body, encoding="utf-8")
    return root


def _run(tiny_model, tiny_tokenizer, corpus, tmp_path, **kw):
    path = tmp_path / f"tl-{len(list(tmp_path.glob('*.parquet')))}.parquet"
    res = perplexity(tiny_model, tiny_tokenizer, corpus=corpus, context=16, stride=8, mode="m2d2",
                     token_losses=path, **kw)
    return res.domains["dom"], read_token_losses(path)


def _check_stream(r, tl, tiny_tokenizer, stream: str):
    ids = tiny_tokenizer(stream)["input_ids"]  # independent: the whole stream tokenized at once
    # stride < context: every token after the first is scored once, in stream order
    assert tl.position.tolist() == list(range(1, len(ids)))
    assert tl.token_id.tolist() == ids[1:]
    assert r.tokens == len(ids) - 1
    assert r.words == len(re.split(r"\s+", stream)) and r.bytes == len(stream.encode("utf-8"))


def test_m2d2_txt_stream_is_the_files_lines_joined(tiny_model, tiny_tokenizer, tmp_path):
    corpus = _corpus(tmp_path / "c", "test.txt", TEXT)
    lines = TEXT.splitlines()  # M2D2: the file's lines, blank ones included, joined with "\n"
    stream = "\n".join(lines)
    assert "\n\n   \n\n" in stream  # the blank lines are in it
    r, tl = _run(tiny_model, tiny_tokenizer, corpus, tmp_path)
    _check_stream(r, tl, tiny_tokenizer, stream)
    assert r.documents == 3
    # the newline tokens differ from joining the documents: the old stream would not pass
    old = "\n".join(["The first document, line one.\nIts second line.", "A second document.",
                     "def third(x):\n    return x + 1"])
    assert tiny_tokenizer(old)["input_ids"] != tiny_tokenizer(stream)["input_ids"]
    nl = set(tiny_tokenizer("\n\n")["input_ids"]) | set(tiny_tokenizer("\n\n   \n\n")["input_ids"])
    assert nl & set(tl.token_id.tolist())

    # one document per line: the same stream (blank lines are in the stream, not documents)
    r2, tl2 = _run(tiny_model, tiny_tokenizer, corpus, tmp_path, read_options=ReadOptions(txt_mode="line"))
    _check_stream(r2, tl2, tiny_tokenizer, stream)
    assert r2.documents == 5
    assert r2.nll_sum == pytest.approx(r.nll_sum, rel=1e-6)

    # the first two documents: the stream ends with the second document's last line
    r3, tl3 = _run(tiny_model, tiny_tokenizer, corpus, tmp_path, max_documents=2)
    _check_stream(r3, tl3, tiny_tokenizer, "\nThe first document, line one.\nIts second line.\n\nA second document.")
    assert r3.documents == 2

    # read in tiny pieces: the same words, bytes and documents (tokens equal up to piece-boundary merges)
    r4, _ = _run(tiny_model, tiny_tokenizer, corpus, tmp_path, chunk_chars=5)
    assert (r4.words, r4.bytes, r4.documents) == (r.words, r.bytes, r.documents)


def test_m2d2_crlf_lines_and_lm_eval_mode_unchanged(tiny_model, tiny_tokenizer, tmp_path):
    corpus = _corpus(tmp_path / "c", "test.txt", TEXT.replace("\n", "\r\n"))
    r, tl = _run(tiny_model, tiny_tokenizer, corpus, tmp_path)
    _check_stream(r, tl, tiny_tokenizer, "\n".join(TEXT.splitlines()))  # terminators are not part of a line
    lm = perplexity(tiny_model, tiny_tokenizer, corpus=corpus, context=16).domains["dom"]
    assert lm.documents == 3  # lm-eval mode still reads documents on their own


def test_m2d2_jsonl_joins_documents_verbatim(tiny_model, tiny_tokenizer, tmp_path):
    docs = ["A record\n\nwith a blank line inside.", "   ", "Second record."]
    corpus = _corpus(tmp_path / "c", "test.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in docs))
    r, tl = _run(tiny_model, tiny_tokenizer, corpus, tmp_path)
    _check_stream(r, tl, tiny_tokenizer, "A record\n\nwith a blank line inside.\nSecond record.")
    assert r.documents == 2 and np.all(np.isfinite(tl.nll))
