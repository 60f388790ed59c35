"""Seeded document samples: streamed bottom-k (order-invariant, exact) and seek sampling (real documents only)."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from cptlab.corpus import ReadOptions, SplitSource, iter_documents
from cptlab.diagnose.similarity_sample import SampleSpec, bottom_k, make_spec, resolve_reference, sample_documents
from cptlab.errors import CptlabError, UsageError


def _key(text: str, seed: int) -> int:
    h = hashlib.blake2b(text.encode(), digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest(), "little")


def _docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return [f"doc{i} " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for i in range(n)]


def test_bottom_k_is_the_k_smallest_hashes_in_any_order():
    docs = _docs(200)
    want = sorted(docs, key=lambda t: _key(t, 3))[:25]
    for order in range(3):
        shuffled = docs[:]
        random.Random(order).shuffle(shuffled)
        assert bottom_k(shuffled, SampleSpec(docs=25, bytes=None, seed=3)) == want
    # Bytes: the shortest prefix (by hash order) that reaches the budget.
    ranked = sorted(docs, key=lambda t: _key(t, 0))
    total, prefix = 0, []
    for t in ranked:
        if total >= 5000:
            break
        prefix.append(t)
        total += len(t.encode())
    assert bottom_k(reversed(docs), SampleSpec(bytes=5000)) == prefix
    assert bottom_k(docs, SampleSpec(docs=1000, bytes=None)) == ranked  # larger than the source: all of it


def _write(path, docs, kind):
    if kind == "blank-line":
        # Separators of one or several blank or whitespace-only lines, CRLF endings in some documents.
        parts = []
        for i, d in enumerate(docs):
            text = d.replace(" ", "\n", 2) if i % 3 else d
            parts.append(text.replace("\n", "\r\n") + "\r\n" if i % 5 == 0 else text + "\n")
            parts.append(["\n", "  \n\n", "\t\n \n\n"][i % 3])
        path.write_text("\n" * (len(docs) % 2) + "".join(parts), encoding="utf-8", newline="")
    elif kind == "line":
        path.write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" + ("\n" if i % 4 == 0 else "")
                                for i, d in enumerate(docs)), encoding="utf-8")


@pytest.mark.parametrize("kind", ["blank-line", "line", "jsonl"])
def test_seek_sample_returns_real_documents(tmp_path, kind):
    path = tmp_path / ("train.jsonl" if kind == "jsonl" else "train.txt")
    _write(path, _docs(300), kind)
    options = ReadOptions(txt_mode="line" if kind == "line" else "blank-line")
    src = SplitSource("d", "train", [path], txt_mode=options.txt_mode if kind != "jsonl" else None)
    real = list(iter_documents(src, options))
    assert len(real) == 300 and len(set(real)) == 300
    spec = SampleSpec(docs=60, bytes=None, seed=7, stream_limit=0)
    s = sample_documents("d", [src], spec, options)
    assert s.mode == "seek" and len(s.texts) == 60 and len(set(s.texts)) == 60
    assert set(s.texts) <= set(real), set(s.texts) - set(real)
    assert sample_documents("d", [src], spec, options).texts == s.texts  # seeded
    other = sample_documents("d", [src], SampleSpec(docs=60, bytes=None, seed=8, stream_limit=0), options)
    assert other.texts != s.texts
    by_bytes = sample_documents("d", [src], SampleSpec(bytes=4000, seed=1, stream_limit=0), options)
    assert 4000 <= by_bytes.bytes < 4000 + max(len(t.encode()) for t in real)
    # Streamed: exactly the bottom-k of the real documents.
    streamed = sample_documents("d", [src], SampleSpec(docs=60, bytes=None, seed=7), options)
    assert streamed.mode == "stream" and streamed.texts == bottom_k(real, SampleSpec(docs=60, bytes=None, seed=7))
    assert streamed.describe()["source_documents"] == 300


def test_seek_sample_is_roughly_uniform(tmp_path):
    """Equal-length documents: each is drawn with about the same chance (10 of 40 per seed, 200 seeds: 50 ± 7)."""
    docs = [f"document number {i:03d} " + "x" * 40 for i in range(40)]
    path = tmp_path / "train.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    src = SplitSource("d", "train", [path])
    counts = {d: 0 for d in docs}
    for seed in range(200):
        for t in sample_documents("d", [src], SampleSpec(docs=10, bytes=None, seed=seed, stream_limit=0)).texts:
            counts[t] += 1
    assert sum(counts.values()) == 2000 and 30 <= min(counts.values()) and max(counts.values()) <= 70, counts


def test_reference_forms_and_spec_errors(tmp_path, tiny_corpus):
    name, sources = resolve_reference(tiny_corpus)
    assert [s.domain for s in sources] == ["code", "prose"]
    _, sources = resolve_reference(f"{tiny_corpus}:prose")
    assert [s.domain for s in sources] == ["prose"]
    name, sources = resolve_reference(tiny_corpus / "code" / "train.txt")
    assert name == "train.txt" and sources[0].files == [tiny_corpus / "code" / "train.txt"]
    with pytest.raises(CptlabError, match="no such file"):
        resolve_reference(tmp_path / "missing")
    with pytest.raises(CptlabError, match="nope"):
        resolve_reference(f"{tiny_corpus}:nope")
    with pytest.raises(UsageError, match="not both"):
        make_spec(docs=3, bytes=10)
    with pytest.raises(UsageError, match="--sample-docs 0"):
        make_spec(docs=0)
    assert make_spec(docs=5).docs == 5 and make_spec().bytes == 8_000_000


def test_reference_from_a_manifest(tmp_path, tiny_corpus):
    manifest = tmp_path / "corpus.yaml"
    manifest.write_text(f"general:\n  train: {tiny_corpus / 'code' / 'train.txt'}\n")
    name, sources = resolve_reference(manifest)
    assert [s.domain for s in sources] == ["general"]
    assert sources[0].files and sources[0].files[0].name == "train.txt"


def test_seek_sample_over_several_files(tmp_path):
    """A split made of several files (one empty, one blank-only): documents of every file, nothing else."""
    docs = _docs(120, seed=5)
    paths = [tmp_path / f"part-{i}.txt" for i in range(4)]
    paths[0].write_text("\n\n".join(docs[:70]) + "\n", encoding="utf-8")
    paths[1].write_text("", encoding="utf-8")
    paths[2].write_text("\n \n\n", encoding="utf-8")
    paths[3].write_text("\n\n".join(docs[70:]) + "\n", encoding="utf-8")
    src = SplitSource("d", "train", paths)
    s = sample_documents("d", [src], SampleSpec(docs=50, bytes=None, seed=2, stream_limit=0))
    assert len(s.texts) == 50 and set(s.texts) <= set(docs)
    assert set(s.texts) & set(docs[:70]) and set(s.texts) & set(docs[70:])


def test_seek_sample_with_long_documents(tmp_path):
    """Documents longer than the read blocks (up to 200 KB, many lines, long blank runs between some)."""
    rng = random.Random(9)
    docs = []
    for i in range(40):
        n_lines = rng.choice([1, 3, 200, 3000])
        docs.append("\n".join(f"d{i} line {k} " + "y" * rng.randint(0, 60) for k in range(n_lines)))
    seps = ["\n\n", "\n   \n\t\n" + "\n" * 20000 + "\n"]  # some separators longer than a read block
    text = "".join(d + "\n" + seps[i % 2] for i, d in enumerate(docs))
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf-8")
    src = SplitSource("d", "train", [path])
    real = list(iter_documents(src))
    assert len(real) == 40
    s = sample_documents("d", [src], SampleSpec(docs=25, bytes=None, seed=0, stream_limit=0))
    assert len(s.texts) == 25 and set(s.texts) <= set(real)
