"""The batched scorer: every speed path gives the per-token NLLs of a plain full-logits computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cptlab.evaluate import scoring
from cptlab.evaluate.scoring import Scorer, jobs_for
from cptlab.evaluate.windows import rolling_windows

CONTEXT = 32


@pytest.fixture(scope="module")
def windows(tiny_tokenizer, corpus_docs):
    """Sequences `[BOS] + tokens` of documents of very different lengths, and their rolling-window jobs."""
    short = [corpus_docs["prose"][k][:n] for k, n in enumerate((12, 30, 55, 80, 100))]
    docs = corpus_docs["code"][:2] + short + corpus_docs["prose"][5:7] + ["x = 1"]
    seqs, jobs = [], []
    for k, doc in enumerate(docs):
        ids = tiny_tokenizer.encode(doc)
        seqs.append(np.array([tiny_tokenizer.bos_token_id] + ids, dtype=np.int64))
        jobs += jobs_for(k, rolling_windows(len(ids), CONTEXT))
    assert len({j.length for j in jobs}) > 3 and len(jobs) > 20
    return seqs, jobs


def plain_nll(model, seqs, jobs) -> list[np.ndarray]:
    """One window at a time, the model's own forward, full fp32 log_softmax over every position."""
    out = [np.full(len(s), np.nan) for s in seqs]
    with torch.no_grad():
        for j in jobs:
            x = torch.from_numpy(seqs[j.seq][j.start:j.end])[None]
            logp = torch.log_softmax(model(input_ids=x).logits[0].double(), dim=-1)
            tgt = torch.from_numpy(seqs[j.seq][j.start + 1:j.end + 1])
            nll = -logp.gather(1, tgt[:, None])[:, 0].numpy()
            first = j.end - j.n_pred + 1
            out[j.seq][first:j.end + 1] = nll[-j.n_pred:]
    return out


def assert_close(got, want):
    for g, w in zip(got, want):
        assert np.array_equal(np.isnan(g), np.isnan(w))
        assert np.nanmax(np.abs(g - w)) < 1e-5


@pytest.fixture(scope="module")
def reference(tiny_model, windows):
    return plain_nll(tiny_model, *windows)


def test_every_token_after_the_prefix_is_scored_once(tiny_model, windows):
    seqs, jobs = windows
    got = Scorer(tiny_model, batch_size=4).score(seqs, jobs)
    for s, g in zip(seqs, got):
        assert np.isnan(g[0]) and not np.isnan(g[1:]).any() and len(g) == len(s)


@pytest.mark.parametrize("kwargs", [
    {"batch_size": 1},
    {"batch_size": 7},
    {"token_budget": 64},  # auto: several rows per forward, sorted by length
    {"batch_size": 4, "use_head_split": False},  # the model's own forward (logits of every position)
])
def test_scorer_paths_equal_plain_computation(tiny_model, windows, reference, kwargs):
    seqs, jobs = windows
    assert_close(Scorer(tiny_model, **kwargs).score(seqs, jobs), reference)


def test_head_in_many_small_chunks(tiny_model, windows, reference, monkeypatch):
    vocab = tiny_model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(scoring, "HEAD_CHUNK_ELEMENTS", 3 * vocab)  # 3 rows of logits at a time
    seqs, jobs = windows
    assert_close(Scorer(tiny_model, token_budget=256).score(seqs, jobs), reference)


def test_auto_batch_halves_on_out_of_memory(tiny_model, windows, reference, monkeypatch):
    seqs, jobs = windows
    real = Scorer._forward
    sizes = []

    def limited(self, seqs_, batch):
        if len(batch) * max(j.length for j in batch) > 40:
            raise RuntimeError("CPU out of memory (simulated)")
        sizes.append(len(batch))
        return real(self, seqs_, batch)

    monkeypatch.setattr(Scorer, "_forward", limited)
    scorer = Scorer(tiny_model, token_budget=512)
    assert_close(scorer.score(seqs, jobs), reference)
    assert scorer.token_budget <= 40 and max(sizes) >= 2
    with pytest.raises(RuntimeError, match="out of memory"):  # a fixed batch size is the user's choice
        Scorer(tiny_model, batch_size=8).score(seqs, jobs)


def test_other_errors_are_not_retried(tiny_model, windows, monkeypatch):
    def broken(self, seqs_, batch):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(Scorer, "_forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Scorer(tiny_model).score(*windows)


def test_cpu_workers_run_batches_single_threaded(tiny_model, windows, reference, monkeypatch):
    """With 2 torch threads, batches run on 2 worker threads with 1 torch thread each; the thread count is
    restored and the numbers are those of the plain computation; an OOM splits the batch in halves."""
    import threading

    seqs, jobs = windows
    real = Scorer._forward
    seen = []

    def spy(self, seqs_, batch):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        if len(batch) * max(j.length for j in batch) > 64:
            raise RuntimeError("out of memory (simulated)")
        return real(self, seqs_, batch)

    monkeypatch.setattr(Scorer, "_forward", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scorer = Scorer(tiny_model, token_budget=256)
        got = scorer.score(seqs, jobs)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert_close(got, reference)
    assert {t for t, _ in seen} <= {f"cptlab-score_{k}" for k in range(2)} and {n for _, n in seen} == {1}
    assert scorer.tokens_read == sum(j.length for j in jobs) and scorer.token_budget <= 64


def test_cpu_workers_stop_at_the_first_error(tiny_model, windows, monkeypatch):
    seqs, jobs = windows
    calls = []

    def broken(self, seqs_, batch):
        import time

        calls.append(len(batch))
        time.sleep(0.05)  # a forward takes time: the main thread sees the error long before the queue is done
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(Scorer, "_forward", broken)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scorer = Scorer(tiny_model, batch_size=1)
        with pytest.raises(RuntimeError, match="shape mismatch"):
            scorer.score(seqs, jobs)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(calls) < len(jobs) // 2  # the queued batches were cancelled, not run
