"""Mixture sampler: token ratios follow the weights, seeded, epoch counts, exact resume, ranks, errors."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cptlab.errors import CptlabError
from cptlab.tokens.mixture import MixtureSampler, source_seed
from cptlab.tokens.packing import PackedSource
from tests.tokens.conftest import fake_tokens

SEQ = 16


def _sources(sizes=None, seed=0):
    sizes = sizes or {"law": 120, "news": 60, "code": 30}
    rng = np.random.default_rng(len(sizes))
    return {n: PackedSource(fake_tokens(rng.integers(1, 30, size=k).tolist(), name=n), SEQ,
                            seed=source_seed(seed, n), name=n) for n, k in sizes.items()}


def _drain(sampler, batches, batch_size=8):
    return [sampler.next_batch(batch_size) for _ in range(batches)]


def test_token_ratios_within_one_percent():
    weights = {"law": 0.6, "news": 0.3, "code": 0.1}
    s = MixtureSampler(_sources(), weights, seed=0)
    counts = Counter()
    for n_batch, b in enumerate(_drain(s, 150), 1):
        counts.update(b.sources)  # independent of the sampler's own counters
        seen = n_batch * 8
        for name, w in weights.items():  # smooth round-robin: within k-1 = 2 sequences of n*w at every batch
            assert abs(counts[name] - seen * w) < 2 + 1e-9, (n_batch, name, counts)
    total = sum(counts.values()) * SEQ
    for name, w in weights.items():
        assert abs(counts[name] * SEQ / total - w) < 0.01
    assert s.tokens_by_source == {n: counts[n] * SEQ for n in weights}
    # unnormalised weights and a weight of 0
    z = MixtureSampler(_sources(), {"law": 3, "news": 1, "code": 0}, seed=1)
    got = Counter(n for b in _drain(z, 50) for n in b.sources)
    assert got["code"] == 0 and got["law"] == 300 and got["news"] == 100


def test_rows_are_the_windows_of_their_source():
    srcs = _sources()
    s = MixtureSampler(srcs, {"law": 1, "news": 1, "code": 1}, seed=2)
    for b in _drain(s, 10, batch_size=6):
        assert b.input_ids.shape == (6, SEQ + 1) and b.position_ids.shape == (6, SEQ) and b.num_tokens == 6 * SEQ
        for row, (name, _epoch, k) in enumerate(b.windows):
            ids, pos = srcs[name].window(k)
            assert b.sources[row] == name
            assert b.input_ids[row].tolist() == ids.tolist() and b.position_ids[row].tolist() == pos.tolist()


def test_seeded_reproducibility():
    a = _drain(MixtureSampler(_sources(seed=4), {"law": 0.5, "news": 0.3, "code": 0.2}, seed=4), 30)
    b = _drain(MixtureSampler(_sources(seed=4), {"law": 0.5, "news": 0.3, "code": 0.2}, seed=4), 30)
    c = _drain(MixtureSampler(_sources(seed=5), {"law": 0.5, "news": 0.3, "code": 0.2}, seed=5), 30)
    assert all(x.input_ids.equal(y.input_ids) and x.sources == y.sources for x, y in zip(a, b))
    assert any(not x.input_ids.equal(y.input_ids) for x, y in zip(a, c))


def test_epoch_counts_per_source():
    srcs = _sources({"big": 200, "small": 20})
    s = MixtureSampler(srcs, {"big": 0.5, "small": 0.5}, seed=0)
    batches = _drain(s, 40)
    per = Counter(n for b in batches for n in b.sources)
    for name, src in srcs.items():
        expected = per[name] / src.num_windows  # independent: sequences drawn / windows per epoch
        assert s.epochs_by_source[name] == pytest.approx(expected)
        assert s.epochs_completed_by_source[name] == per[name] // src.num_windows
    assert s.epochs_completed_by_source["small"] >= 2 and s.epochs_by_source["big"] < 1
    # within each completed epoch of `small`, every window exactly once
    by_epoch: dict[int, list[int]] = {}
    for b in batches:
        for name, epoch, k in b.windows:
            if name == "small":
                by_epoch.setdefault(epoch, []).append(k)
    for epoch in range(s.epochs_completed_by_source["small"]):
        assert sorted(by_epoch[epoch]) == list(range(srcs["small"].num_windows))


@pytest.mark.parametrize("steps", [0, 7, 31])
def test_state_dict_resumes_exactly(steps):
    weights = {"law": 0.5, "news": 0.35, "code": 0.15}
    a = MixtureSampler(_sources(seed=3), weights, seed=3)
    _drain(a, steps, batch_size=5)
    state = json.loads(json.dumps(a.state_dict()))
    b = MixtureSampler(_sources(seed=3), weights, seed=3)  # a fresh process: new sources, same caches
    b.load_state_dict(state)
    for x, y in zip(_drain(a, 40, batch_size=5), _drain(b, 40, batch_size=5)):
        assert x.input_ids.equal(y.input_ids) and x.position_ids.equal(y.position_ids)
        assert x.sources == y.sources and x.windows == y.windows
    assert a.state_dict() == b.state_dict() and a.tokens_by_source == b.tokens_by_source


def test_ranks_take_slices_of_the_same_global_batch():
    weights = {"law": 0.5, "news": 0.5, "code": 0.0}
    one = MixtureSampler(_sources(), weights, seed=1)
    ranks = [MixtureSampler(_sources(), weights, seed=1) for _ in range(2)]
    for _ in range(10):
        full = one.next_batch(8)
        parts = [r.next_batch(8, rank=i, world_size=2) for i, r in enumerate(ranks)]
        assert parts[0].input_ids.shape[0] == 4
        assert np.array_equal(np.concatenate([p.input_ids.numpy() for p in parts]), full.input_ids.numpy())
    with pytest.raises(CptlabError, match="not divisible by 3"):
        one.next_batch(8, rank=0, world_size=3)


def test_errors():
    srcs = _sources()
    with pytest.raises(CptlabError, match="no weight for source\\(s\\) code"):
        MixtureSampler(srcs, {"law": 1, "news": 1})
    with pytest.raises(CptlabError, match="weights for wiki name no source"):
        MixtureSampler(srcs, {"law": 1, "news": 1, "code": 1, "wiki": 1})
    with pytest.raises(CptlabError, match="weight of law is -1"):
        MixtureSampler(srcs, {"law": -1, "news": 1, "code": 1})
    with pytest.raises(CptlabError, match="all weights are 0"):
        MixtureSampler(srcs, {"law": 0, "news": 0, "code": 0})
    other = {**srcs, "code": PackedSource(fake_tokens([50] * 5), 8, name="code")}
    with pytest.raises(CptlabError, match="different seq_len"):
        MixtureSampler(other, {"law": 1, "news": 1, "code": 1})
    s = MixtureSampler(srcs, {"law": 1, "news": 1, "code": 1})
    t = MixtureSampler(_sources(), {"law": 2, "news": 1, "code": 1})
    with pytest.raises(CptlabError, match="saved with other weights for code, law, news"):
        t.load_state_dict(s.state_dict())


def test_from_caches(tiny_cache):
    s = MixtureSampler.from_caches(tiny_cache, {"code": 0.5, "prose/valid": 0.5}, seq_len=32, seed=0)
    b = s.next_batch(4)
    assert sorted(set(b.sources)) == ["code", "prose/valid"]
    assert s.sources["prose/valid"].tokens.split == "valid" and s.sources["code"].tokens.split == "train"
    with pytest.raises(CptlabError, match="law/train: not found"):
        MixtureSampler.from_caches(tiny_cache, {"law": 1.0}, seq_len=32)
