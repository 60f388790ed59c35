"""Token cache: round trip, dtype, reuse and invalidation, parallel = serial, atomic builds, the vocab guard."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from cptlab.corpus import ReadOptions, iter_documents, open_corpus
from cptlab.errors import CptlabError
from cptlab.tokens.token_cache import build_cache, choose_dtype, list_entries, open_tokens, read_index
from tests.corpus.helpers import write_jsonl, write_txt


def _expected_ids(tok, docs):
    """Independent: each document encoded on its own by the HF tokenizer (no specials), EOS after each."""
    ids, offsets = [], [0]
    for d in docs:
        one = tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids += one
        offsets.append(offsets[-1] + len(one))
    return np.array(ids, dtype=np.int64), np.array(offsets, dtype=np.int64)


def test_round_trip_every_split(tiny_cache, tiny_corpus, tiny_tokenizer):
    corpus = open_corpus(tiny_corpus)
    assert list_entries(tiny_cache) == sorted(f"{d}/{s}" for d in ("code", "prose") for s in ("test", "train", "valid"))
    index = read_index(tiny_cache)["entries"]
    for source in corpus.sources():
        docs = list(iter_documents(source))
        t = open_tokens(tiny_cache, source.domain, source.split)
        want_ids, want_off = _expected_ids(tiny_tokenizer, docs)
        assert t.ids.dtype == np.uint16 and isinstance(t.ids, np.memmap)
        assert np.array_equal(np.asarray(t.ids, dtype=np.int64), want_ids)
        assert np.array_equal(np.asarray(t.doc_offsets), want_off)
        assert t.num_docs == len(docs) and t.num_tokens == len(want_ids) and t.eos_id == tiny_tokenizer.eos_token_id
        assert t.max_id == int(want_ids.max()) and t.vocab_size == len(tiny_tokenizer)
        for i in (0, len(docs) // 2, len(docs) - 1):  # decoding the cache gives back the documents
            assert tiny_tokenizer.decode(t.document(i).tolist()) == docs[i]
            assert int(t.ids[int(t.doc_offsets[i + 1]) - 1]) == t.eos_id
        decoded = tiny_tokenizer.decode(np.asarray(t.ids).tolist())
        assert decoded == "".join(d + tiny_tokenizer.eos_token for d in docs)
        assert index[f"{source.domain}/{source.split}"]["tokens"] == t.num_tokens
        m = t.manifest
        assert m["counts"] == {"documents": len(docs), "tokens": len(want_ids), "skipped": {}}
        assert [f["path"] for f in m["source"]["files"]] == [str(p.resolve()) for p in source.files]


def test_skipped_documents_are_counted(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    root = tmp_path / "c"
    write_jsonl(root / "d" / "train.jsonl", ["alpha beta", "   ", {"body": "x"}, "gamma <|endoftext|> delta", ""])
    with pytest.raises(CptlabError, match=r"train.jsonl:3: no field 'text'"):
        build_cache(root, tiny_tokenizer_dir, tmp_path / "cache", workers=1)
    assert list_entries(tmp_path / "cache") == []
    s = build_cache(root, tiny_tokenizer_dir, tmp_path / "cache", workers=1,
                    read_options=ReadOptions(on_bad_record="skip"))
    assert s["entries"][0]["skipped"] == {"empty": 2, "missing_field": 1}
    t = open_tokens(tmp_path / "cache", "d", "train")
    assert t.num_docs == 2
    # a literal special-token string inside a document is text, never the EOS separator
    assert tiny_tokenizer.decode(t.document(1).tolist()) == "gamma <|endoftext|> delta"
    assert int((np.asarray(t.ids) == t.eos_id).sum()) == 2


def test_dtype_uint16_and_uint32(tmp_path, tiny_tokenizer_dir):
    assert choose_dtype(512) == np.uint16 and choose_dtype(65536) == np.uint16 and choose_dtype(65537) == np.uint32
    with pytest.raises(CptlabError):
        choose_dtype(0)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # a word-level vocabulary of 70,000 entries: ids above 65535 need 32 bits
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    big_dir = tmp_path / "big_tok"
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="[UNK]").save_pretrained(
        big_dir)
    big = AutoTokenizer.from_pretrained(big_dir)
    root = tmp_path / "c"
    docs = ["w1 w2 w3", "w69999 w70 w65534 w65535"]
    write_txt(root / "d" / "train.txt", "\n\n".join(docs) + "\n")
    s = build_cache(root, big_dir, tmp_path / "cache", workers=1)
    t = open_tokens(tmp_path / "cache", "d", "train")
    assert s["dtype"] == "uint32" and t.ids.dtype == np.uint32 and t.vocab_size == 70_002
    assert (tmp_path / "cache/d/train/tokens.bin").stat().st_size == 4 * t.num_tokens
    assert np.array_equal(np.asarray(t.ids, dtype=np.int64), [3, 4, 5, 0, 70_001, 72, 65_536, 65_537, 0])
    assert t.max_id == 70_001
    assert big.decode(t.document(1).tolist()) == docs[1]


def _statuses(summary):
    return {(e["domain"], e["split"]): (e["status"], e["reason"]) for e in summary["entries"]}


def test_reuse_and_invalidation(tmp_path, tiny_corpus, tiny_tokenizer_dir, corpus_docs):
    root = tmp_path / "c"
    shutil.copytree(tiny_corpus, root)
    cache = tmp_path / "cache"
    first = build_cache(root, tiny_tokenizer_dir, cache, splits=["train", "valid"], workers=1)
    assert {v for v in _statuses(first).values()} == {("built", "new")}
    bin_path = cache / "prose/train/tokens.bin"
    inode = bin_path.stat().st_ino

    again = build_cache(root, tiny_tokenizer_dir, cache, splits=["train", "valid"], workers=1)
    assert {v for v in _statuses(again).values()} == {("reused", "unchanged")}
    assert bin_path.stat().st_ino == inode  # not rewritten

    # touched, same content: reused, and the manifest remembers the new mtime
    f = root / "prose/train.txt"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = build_cache(root, tiny_tokenizer_dir, cache, splits=["train", "valid"], workers=1)
    assert _statuses(touched)[("prose", "train")] == ("reused", "unchanged")
    m = json.loads((cache / "prose/train/manifest.json").read_text())
    assert m["source"]["files"][0]["mtime_ns"] == f.stat().st_mtime_ns

    # same size and mtime, other content: only --verify-hash notices
    before = f.stat()
    data = bytearray(f.read_bytes())
    data[0:1] = b"Z" if data[0:1] != b"Z" else b"Y"
    f.write_bytes(bytes(data))
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert _statuses(build_cache(root, tiny_tokenizer_dir, cache, workers=1, splits=["train"]))[
        ("prose", "train")] == ("reused", "unchanged")
    s = build_cache(root, tiny_tokenizer_dir, cache, workers=1, splits=["train"], verify_hash=True)
    assert _statuses(s)[("prose", "train")] == ("built", f"{f.resolve()} changed")
    assert bin_path.stat().st_ino != inode

    # an edited file (new size) rebuilds that split only
    with open(f, "a", encoding="utf-8") as fh:
        fh.write("\nA new document at the end.\n")
    s = build_cache(root, tiny_tokenizer_dir, cache, splits=["train", "valid"], workers=1)
    st_ = _statuses(s)
    assert st_[("prose", "train")] == ("built", f"{f.resolve()} changed")
    assert [k for k, v in st_.items() if v[0] == "built"] == [("prose", "train")]
    t = open_tokens(cache, "prose", "train")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert tok.decode(t.document(t.num_docs - 1).tolist()) == "A new document at the end."

    # other read options rebuild; --force rebuilds
    s = build_cache(root, tiny_tokenizer_dir, cache, splits=["valid"], workers=1,
                    read_options=ReadOptions(txt_mode="line"))
    assert {v for v in _statuses(s).values()} == {("built", "read options changed")}
    s = build_cache(root, tiny_tokenizer_dir, cache, splits=["valid"], domains=["code"], workers=1,
                    read_options=ReadOptions(txt_mode="line"), force=True)
    assert _statuses(s) == {("code", "valid"): ("built", "forced")}

    # another tokenizer rebuilds everything
    from cptlab.tokens.tokenizer import train_bpe

    other = tmp_path / "tok2"
    train_bpe(corpus_docs["prose"], 400, other)
    s = build_cache(root, other, cache, splits=["train", "valid"], workers=1)
    assert {v for v in _statuses(s).values()} == {("built", "tokenizer changed")}
    # a deleted tokens.bin is noticed
    (cache / "code/train/tokens.bin").unlink()
    s = build_cache(root, other, cache, splits=["train"], domains=["code"], workers=1)
    assert _statuses(s)[("code", "train")] == ("built", "tokens.bin missing or truncated")


def test_parallel_equals_serial(tmp_path, tiny_corpus, tiny_tokenizer_dir, monkeypatch):
    import cptlab.tokens.encoding as encoding

    monkeypatch.setattr(encoding, "CHUNK_DOCS", 7)  # many chunks, so order across workers matters
    serial = build_cache(tiny_corpus, tiny_tokenizer_dir, tmp_path / "one", splits=["train"], workers=1)
    parallel = build_cache(tiny_corpus, tiny_tokenizer_dir, tmp_path / "two", splits=["train"], workers=2)
    for e1, e2 in zip(serial["entries"], parallel["entries"]):
        assert {k: v for k, v in e1.items() if k != "seconds"} == {k: v for k, v in e2.items() if k != "seconds"}
    for d in ("code", "prose"):
        for name in ("tokens.bin", "offsets.npy"):
            a = (tmp_path / "one" / d / "train" / name).read_bytes()
            assert a == (tmp_path / "two" / d / "train" / name).read_bytes()
        assert open_tokens(tmp_path / "one", d, "train").num_docs > 3 * 7


def test_interrupted_build_leaves_no_valid_looking_cache(tmp_path, tiny_corpus, tiny_tokenizer_dir, monkeypatch):
    import cptlab.tokens.encoding as encoding

    cache = tmp_path / "cache"
    build_cache(tiny_corpus, tiny_tokenizer_dir, cache, domains=["code"], splits=["train"], workers=1)
    good = (cache / "code/train/tokens.bin").read_bytes()
    monkeypatch.setattr(encoding, "CHUNK_DOCS", 5)
    real = encoding.Encoder.encode
    calls = []

    def dying(self, texts):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C half way through
        return real(self, texts)

    monkeypatch.setattr(encoding.Encoder, "encode", dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tiny_corpus, tiny_tokenizer_dir, cache, domains=["code", "prose"], splits=["train"],
                    workers=1, force=True)
    # the old entry is intact, the interrupted one does not exist, no temporary dir is left
    assert (cache / "code/train/tokens.bin").read_bytes() == good
    assert not (cache / "code/train.tmp").exists() and list_entries(cache) == ["code/train"]
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        build_cache(tiny_corpus, tiny_tokenizer_dir, cache, domains=["prose"], splits=["train"], workers=1)
    assert not (cache / "prose/train").exists() and not (cache / "prose/train.tmp").exists()
    with pytest.raises(CptlabError, match=r"prose/train: not found .*entries in .*: code/train.*cptlab prepare"):
        open_tokens(cache, "prose", "train")

    # a build killed hard (no cleanup) leaves `train.tmp`: never listed or opened, replaced by the next build
    monkeypatch.setattr(encoding.Encoder, "encode", real)
    shutil.copytree(cache / "code/train", cache / "prose/train.tmp")
    assert list_entries(cache) == ["code/train"]
    with pytest.raises(CptlabError, match="not found"):
        open_tokens(cache, "prose", "train")
    s = build_cache(tiny_corpus, tiny_tokenizer_dir, cache, domains=["prose"], splits=["train"], workers=1)
    assert _statuses(s) == {("prose", "train"): ("built", "new")} and not (cache / "prose/train.tmp").exists()


def test_corrupt_cache_is_named(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    cache = tmp_path / "cache"
    build_cache(tiny_corpus, tiny_tokenizer_dir, cache, domains=["code"], splits=["test"], workers=1)
    bin_path = cache / "code/test/tokens.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    with pytest.raises(CptlabError, match=r"tokens.bin: \d+ bytes, manifest says \d+ tokens"):
        open_tokens(cache, "code", "test")
    m = cache / "code/test/manifest.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), "format_version": 99}))
    with pytest.raises(CptlabError, match="format 99"):
        open_tokens(cache, "code", "test")
    with pytest.raises(CptlabError, match="not found; is .* a token cache"):
        read_index(tmp_path)


def test_selection_errors(tmp_path, tiny_corpus, tiny_tokenizer_dir):
    from cptlab.errors import UsageError

    with pytest.raises(UsageError, match=r"--domains: unknown domain\(s\) law .*domains: code, prose"):
        build_cache(tiny_corpus, tiny_tokenizer_dir, tmp_path / "c", domains=["law"])
    with pytest.raises(UsageError, match="--splits dev"):
        build_cache(tiny_corpus, tiny_tokenizer_dir, tmp_path / "c", splits=["dev"])
    with pytest.raises(UsageError, match="--workers 0"):
        build_cache(tiny_corpus, tiny_tokenizer_dir, tmp_path / "c", workers=0)
    with pytest.raises(CptlabError, match="tokenizer .*nope: directory not found"):
        build_cache(tiny_corpus, tmp_path / "nope", tmp_path / "c")


def test_vocab_guard_names_cache_and_model(tmp_path, tiny_cache, tiny_tokenizer):
    """The trainer checks the cache's largest id against the model's embedding rows before training."""
    from cptlab.model import build_preset, check_vocab

    t = open_tokens(tiny_cache, "code", "train")
    model = build_preset("llama-micro", tiny_tokenizer, seed=0)
    check_vocab(model, t.max_id, f"data.cache_dir {tiny_cache}")  # fits: no error
    model.resize_token_embeddings(t.max_id)  # one row too few for the largest id
    with pytest.raises(CptlabError) as e:
        check_vocab(model, t.max_id, f"data.cache_dir {tiny_cache}")
    msg = str(e.value)
    assert str(tiny_cache) in msg and f"token id {t.max_id}" in msg and f"vocabulary of {t.max_id}" in msg


def test_vocab_guard_in_a_training_run(tmp_path, tiny_cache, tiny_tokenizer_dir, tiny_tokenizer):
    """A model whose vocabulary is smaller than the cache's largest id stops the run with one clear error."""
    from cptlab.model import build_preset, save_model
    from cptlab.train import run

    small_dir = tmp_path / "small_model"
    model = build_preset("llama-micro", tiny_tokenizer, seed=0)
    model.resize_token_embeddings(100)
    save_model(model, None, small_dir)
    cfg = {"model": {"name": str(small_dir)}, "tokenizer": str(tiny_tokenizer_dir),
           "data": {"cache_dir": str(tiny_cache), "sources": {"code": 1.0}, "seq_len": 32},
           "batch_size": 2, "max_steps": 1, "out_dir": str(tmp_path / "run"), "tensorboard": False, "quiet": True,
           "eval": {"at_end": False}}
    with pytest.raises(CptlabError) as e:
        run(cfg)
    msg = str(e.value)
    assert f"data.cache_dir {tiny_cache}" in msg and "vocabulary of 100" in msg


def test_long_documents_are_encoded_in_pieces_exactly(tmp_path, tiny_corpus, tiny_tokenizer_dir, tiny_tokenizer,
                                                      monkeypatch):
    import cptlab.tokens.encoding as encoding

    text = "alpha  beta\tgamma\n\n delta's 12,345 (x) " * 40 + "x" * 300 + " end"
    for size in (7, 64, 100):
        parts = list(encoding.pieces(text, size))
        assert "".join(parts) == text and all(len(p) <= size for p in parts)
        for a, b in zip(parts, parts[1:]):  # cut at whitespace after a non-space, or before "<space>X", ...
            boundary = b[0].isspace() and (not a[-1].isspace() or not b[1].isspace())
            assert boundary or (len(a) == size and not encoding._CUT.search(a, 1)), (a, b)  # ...or in a giant word
    monkeypatch.setattr(encoding, "LONG_DOC", 100)
    monkeypatch.setattr(encoding, "PIECE", 64)
    root = tmp_path / "c"
    shutil.copytree(tiny_corpus, root)
    # one document (no blank line); exact unless a giant word is cut
    write_txt(root / "long" / "train.txt", text.replace("x" * 300, "").replace("\n\n", "\n") + "\n")
    build_cache(root, tiny_tokenizer_dir, tmp_path / "cache", splits=["train"], workers=1)
    for d in ("code", "prose", "long"):
        docs = list(iter_documents(open_corpus(root).source(d, "train")))
        assert max(len(x) for x in docs) > 300  # some documents went through the pieces path
        want, offsets = _expected_ids(tiny_tokenizer, docs)
        t = open_tokens(tmp_path / "cache", d, "train")
        assert np.array_equal(np.asarray(t.ids, dtype=np.int64), want)  # the same ids as the whole document
        assert np.array_equal(np.asarray(t.doc_offsets), offsets)


@pytest.mark.slow
def test_20mb_single_line_document_bounded_memory(tmp_path, tiny_tokenizer_dir):
    """The token cache of a 20 MB one-line document: peak memory about 9 times the document's size, not the
    100+ bytes per character a tokenizer needs for a document encoded whole (2 GB here; measured before pieces)."""
    import subprocess
    import sys

    root = tmp_path / "c"
    (root / "d").mkdir(parents=True)
    unit = "lorem ipsum dolor sit amet, consectetur élément "
    with open(root / "d" / "train.txt", "w", encoding="utf-8") as f:
        f.write(unit * (20 * 2**20 // len(unit.encode())) + "\n\nsmall doc\n")
    script = ("import resource, sys; from cptlab.tokens.token_cache import build_cache; "
              "s = build_cache(sys.argv[1], sys.argv[2], sys.argv[3], workers=1); "
              "print(s['entries'][0]['documents'], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    small = tmp_path / "s"
    (small / "d").mkdir(parents=True)
    (small / "d" / "train.txt").write_text("small doc\n")
    runs = [subprocess.run([sys.executable, "-c", script, str(r), str(tiny_tokenizer_dir), str(tmp_path / n)],
                           capture_output=True, text=True, check=True).stdout.split()
            for r, n in ((small, "c1"), (root, "c2"))]
    (_, base_mib), (docs, big_mib) = [(int(a), int(b)) for a, b in runs]
    assert docs == 2
    # the document is 40 MiB as a Python str (UCS-2); the reader joins its pieces, the cache holds its ids: ~9x
    assert big_mib - base_mib < 12 * 20, (base_mib, big_mib)
