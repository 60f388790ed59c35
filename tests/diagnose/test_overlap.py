"""Split hygiene: exact and near-duplicate test documents found in train (MinHash), on constructed splits."""

from __future__ import annotations

import json
import random

import pytest

from cptlab.diagnose.overlap import OverlapSettings, overlap, shingles, split_overlap
from cptlab.errors import CptlabError, UsageError
from tests.conftest import write_corpus


def _docs(corpus_docs, n=40):
    """Distinct real documents of at least 30 words."""
    docs = [d for d in corpus_docs["code"] + corpus_docs["prose"] if len(d.split()) >= 30]
    assert len(docs) >= n
    return docs[:n]


def _edit(text: str, frac: float, seed: int) -> str:
    """Replace `frac` of the words (evenly spread) by a new word: a near copy when frac is small."""
    words = text.split()
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), max(1, int(len(words) * frac))):
        words[i] = f"zz{i}q"
    return " ".join(words)


def _true_jaccard(a: str, b: str, n=5) -> float:
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb)


def test_counts_match_construction(corpus_docs):
    docs = _docs(corpus_docs)
    train = docs[:30]
    exact = [train[0], train[1].replace("\n", "   \n ")]  # whitespace differences still count as exact
    near = [_edit(train[5], 0.01, 0), _edit(train[6], 0.01, 1)]
    far = [_edit(train[7], 0.6, 2)]  # heavily edited: well below 0.8
    fresh = docs[30:36]
    # Independent check of what "near" means: true shingle Jaccard on each side of the threshold.
    assert all(_true_jaccard(n, t) > 0.85 for n, t in zip(near, [train[5], train[6]]))
    assert _true_jaccard(far[0], train[7]) < 0.3
    test = exact + near + far + fresh
    r = split_overlap(train, test)
    assert (r["train_docs"], r["test_docs"]) == (30, len(test))
    assert r["exact_duplicates"] == 2
    assert r["near_duplicates"] == 4  # near includes exact
    assert r["near_duplicate_fraction"] == pytest.approx(4 / len(test))
    assert r["exact_fraction"] == pytest.approx(2 / len(test))
    dup_bytes = sum(len(t.encode()) for t in exact + near)
    assert r["near_duplicate_bytes"] == dup_bytes
    assert r["near_duplicate_bytes_fraction"] == pytest.approx(dup_bytes / sum(len(t.encode()) for t in test))
    ex = {e["test_doc"]: e for e in r["examples"]}
    assert ex[0]["train_doc"] == 0 and ex[0]["exact"] and ex[0]["jaccard"] == 1.0
    assert ex[2]["train_doc"] == 5 and not ex[2]["exact"] and ex[2]["jaccard"] >= 0.8


def test_disjoint_splits_have_no_duplicates_and_order_does_not_matter(corpus_docs):
    docs = _docs(corpus_docs)
    train, test = docs[:25], docs[25:40] + [docs[3]]
    a = split_overlap(train, test)
    b = split_overlap(list(reversed(train)), list(reversed(test)))
    assert a["near_duplicates"] == b["near_duplicates"] == 1 and a["exact_duplicates"] == 1


def test_corpus_level_and_errors(tmp_path, corpus_docs):
    docs = _docs(corpus_docs)
    # write_corpus splits 70/15/15 in order: put copies of train docs at the end (the test split).
    leaky = docs[:17] + docs[17:20] + docs[0:3]  # 23 docs -> train 16, valid 3, test 4
    root = write_corpus(tmp_path / "c", {"leaky": leaky, "clean": docs[20:40]})
    r = overlap(root)
    assert set(r["domains"]) == {"clean", "leaky"}
    leak = r["domains"]["leaky"]
    assert leak["test_docs"] == 4 and leak["exact_duplicates"] == 3 and leak["near_duplicates"] == 3
    assert r["domains"]["clean"]["near_duplicates"] == 0
    assert r["settings"]["threshold"] == 0.8 and r["settings"]["lsh_bands"] >= 1
    json.dumps(r)
    with pytest.raises(CptlabError, match="nope"):
        overlap(root, domains=["nope"])
    with pytest.raises(UsageError, match="threshold"):
        overlap(root, settings=OverlapSettings(threshold=1.5))
    (root / "leaky" / "test.txt").write_text("\n\n  \n")
    with pytest.raises(CptlabError, match="no documents"):
        overlap(root, domains=["leaky"])


def test_minhash_estimate_is_unbiased_against_true_jaccard():
    """The MinHash estimate (128 permutations) against the exact shingle Jaccard on 60 constructed pairs."""
    import numpy as np

    from cptlab.diagnose.overlap import _minhash

    rng = random.Random(0)
    errors = []
    for _ in range(60):
        base = [f"w{rng.randint(0, 10**6)}" for _ in range(200)]
        other = base[:]
        for i in rng.sample(range(200), rng.randint(0, 40)):
            other[i] = f"x{rng.randint(0, 10**6)}"
        a, b = " ".join(base), " ".join(other)
        s = OverlapSettings()
        est = float(np.mean(_minhash(a, s).hashvalues == _minhash(b, s).hashvalues))
        errors.append(est - _true_jaccard(a, b))
    assert abs(np.mean(errors)) < 0.02 and np.std(errors) < 0.07  # sqrt(J(1-J)/128) <= 0.044


def test_near_duplicates_above_the_threshold_are_found():
    """100 edited copies with a true Jaccard of 371/421 = 0.88: all found (the estimate's own noise, sd ~0.03,
    misses ~0.3 of 100). datasketch's default LSH bands for 0.8 (9 x 13) find fewer (about 90)."""
    from cptlab.diagnose.overlap import lsh_params

    rng = random.Random(4)
    vocab = [f"v{i}" for i in range(20000)]
    train = [" ".join(rng.choice(vocab) for _ in range(400)) for _ in range(100)]
    test = []
    for i, doc in enumerate(train):
        words = doc.split()
        for k in range(5):  # 5 changed words, spread out: 25 of 396 shingles differ on each side
            words[20 + 75 * k] = f"new{i}x{k}"
        test.append(" ".join(words))
    assert all(_true_jaccard(t, d) == pytest.approx(371 / 421) for t, d in zip(test, train))
    r = split_overlap(train, test)
    assert r["exact_duplicates"] == 0 and r["near_duplicates"] >= 99
    bands, rows = lsh_params(0.8, 128)
    assert bands * rows <= 128 and 1 - (1 - 0.8 ** rows) ** bands >= 0.999
