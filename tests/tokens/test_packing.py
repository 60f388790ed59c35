"""Packing: every window of an epoch once, windows are plain slices, positions restart per document, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cptlab.errors import CptlabError
from cptlab.tokens.packing import PackedSource, document_positions, window_order
from tests.tokens.conftest import fake_tokens


def _lengths(seed: int, n: int = 60) -> list[int]:
    return np.random.default_rng(seed).integers(1, 40, size=n).tolist()


def _naive_positions(ids: np.ndarray, doc_starts: set[int], start: int, length: int) -> list[int]:
    """Independent: walk the window; a position is 0 at the window start and where a document starts."""
    out, pos = [], 0
    for j in range(length):
        pos = 0 if j == 0 or (start + j) in doc_starts else pos + 1
        out.append(pos)
    return out


@pytest.mark.parametrize("seq_len", [1, 7, 32, 100])
def test_every_window_once_per_epoch(seq_len):
    toks = fake_tokens(_lengths(1))
    n = len(toks.ids)
    src = PackedSource(toks, seq_len, seed=3)
    assert src.num_windows == (n - 1) // seq_len and src.tokens_per_epoch == src.num_windows * seq_len
    orders = []
    for epoch in range(3):
        seen = [src.next_window() for _ in range(src.num_windows)]
        assert {e for e, _ in seen} == {epoch}
        ks = [k for _, k in seen]
        assert sorted(ks) == list(range(src.num_windows))  # each window exactly once
        orders.append(ks)
        assert src.epochs_completed == epoch + 1 and src.epoch_progress == epoch + 1
    if src.num_windows > 5:
        assert orders[0] != orders[1] != orders[2]  # a new order each epoch
    # targets: every token after the first, up to the last full window, exactly once per epoch
    targets = np.zeros(n, dtype=int)
    for k in range(src.num_windows):
        ids, pos = src.window(k)
        assert np.array_equal(ids, np.asarray(toks.ids[k * seq_len: k * seq_len + seq_len + 1], dtype=np.int64))
        assert ids.dtype == np.int64 and pos.shape == (seq_len,)
        targets[k * seq_len + 1: k * seq_len + seq_len + 1] += 1
    assert targets[0] == 0 and set(targets[1: src.tokens_per_epoch + 1]) == {1}
    assert not targets[src.tokens_per_epoch + 1:].any()


def test_order_is_seeded():
    a = PackedSource(fake_tokens(_lengths(2)), 8, seed=5)
    b = PackedSource(fake_tokens(_lengths(2)), 8, seed=5)
    c = PackedSource(fake_tokens(_lengths(2)), 8, seed=6)
    run = lambda s: [s.next_window() for _ in range(2 * s.num_windows)]  # noqa: E731
    ra, rb, rc = run(a), run(b), run(c)
    assert ra == rb and ra != rc
    assert np.array_equal(window_order(5, 1, a.num_windows), [k for e, k in ra if e == 1])


def test_positions_restart_at_document_starts():
    toks = fake_tokens(_lengths(3, 80))
    starts = set(int(x) for x in toks.doc_offsets[:-1])
    for seq_len in (1, 5, 16, 64):
        src = PackedSource(toks, seq_len)
        for k in range(src.num_windows):
            ids, pos = src.window(k)
            assert pos.tolist() == _naive_positions(toks.ids, starts, k * seq_len, seq_len)
            # equivalently: 0 exactly where the previous input token is EOS (fake ids are never 0 elsewhere)
            after_eos = np.concatenate([[True], ids[:seq_len - 1] == toks.eos_id])
            assert np.array_equal(pos == 0, after_eos)
            assert pos.max() < seq_len
    # hand-made: documents of 3 and 2 tokens (+ EOS each): ids a a a E b b E
    pos = document_positions(np.array([0, 4, 7]), 0, 6)
    assert pos.tolist() == [0, 1, 2, 3, 0, 1]
    assert document_positions(np.array([0, 4, 7]), 2, 4).tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("steps", [0, 5, 23, 40])
def test_state_dict_resumes_exactly(steps):
    toks = fake_tokens(_lengths(4))
    a = PackedSource(toks, 16, seed=9)
    for _ in range(steps):
        a.next()
    state = json.loads(json.dumps(a.state_dict()))  # plain JSON
    b = PackedSource(toks, 16, seed=9)
    b.load_state_dict(state)
    for _ in range(2 * a.num_windows):  # across at least one epoch boundary
        (ia, pa), (ib, pb) = a.next(), b.next()
        assert np.array_equal(ia, ib) and np.array_equal(pa, pb)
    assert a.state_dict() == b.state_dict()


def test_errors():
    toks = fake_tokens([3, 4])  # 9 tokens
    with pytest.raises(CptlabError, match="9 tokens, too few for one sequence of 9\\+1"):
        PackedSource(toks, 9)  # a window needs seq_len + 1 tokens
    assert PackedSource(toks, 8).num_windows == 1
    assert PackedSource(toks, 4).num_windows == 2
    with pytest.raises(CptlabError, match="seq_len 0"):
        PackedSource(toks, 0)
    src = PackedSource(toks, 4, seed=1)
    bad = {**src.state_dict(), "seq_len": 2}
    with pytest.raises(CptlabError, match="saved with seq_len=2, now 4"):
        src.load_state_dict(bad)
    with pytest.raises(CptlabError, match="invalid position"):
        src.load_state_dict({**src.state_dict(), "index": 2})
    with pytest.raises(IndexError):
        src.window(2)


def test_real_cache_windows(tiny_cache):
    from cptlab.tokens.token_cache import open_tokens

    t = open_tokens(tiny_cache, "prose", "train")
    src = PackedSource(t, 64, seed=0)
    assert src.name == "prose/train" and src.num_windows == (t.num_tokens - 1) // 64
    starts = set(int(x) for x in t.doc_offsets[:-1])
    for k in (0, src.num_windows // 2, src.num_windows - 1):
        ids, pos = src.window(k)
        assert np.array_equal(ids, np.asarray(t.ids[k * 64: k * 64 + 65], dtype=np.int64))
        assert pos.tolist() == _naive_positions(t.ids, starts, k * 64, 64)
