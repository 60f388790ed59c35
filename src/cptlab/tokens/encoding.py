"""Tokenization for the token cache: documents in fixed chunks, encoded in order, optionally in worker processes.

Each worker loads the `tokenizers` backend only (no transformers, no torch). Chunks are fixed by the documents
(`CHUNK_DOCS` documents or `CHUNK_BYTES` characters, whichever comes first), never by the number of workers, and
results come back in chunk order: any number of workers gives the same bytes as one. At most `2 * workers` chunks
are in flight, so memory stays bounded.

A document longer than `LONG_DOC` characters (a 50 MB one-line file) is encoded in pieces of at most `PIECE`
characters, cut where a GPT-2-style byte-level pre-tokenizer (cptlab's own tokenizers; its pattern has no
look-behind) always ends a pre-token: before whitespace that follows a non-space, or before the last whitespace
character of a run that precedes a non-space (" word" is one pre-token, the run before it another). BPE never
merges across pre-tokens, so the ids are exactly those of the whole document, while the tokenizer's working memory
(100+ bytes per character) stays that of one piece. Tokenizers with other pre-tokenizers may differ slightly at the
cuts (one every `PIECE` characters). A piece without whitespace (one giant word) is cut at `PIECE` characters.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import sys
from collections import deque
from typing import Iterator

import numpy as np

from cptlab.errors import CptlabError

CHUNK_DOCS = 256  # documents per worker task (fixed: the output never depends on the number of workers)
CHUNK_BYTES = 1 << 20  # ...or fewer when they add up to this many characters of text
LONG_DOC = 1 << 20  # documents longer than this (characters) are encoded in pieces
PIECE = 1 << 18  # ...of about this many characters


def _worker_init(tokenizer_json: str, eos_id: int) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _WORKER = Encoder.from_json(tokenizer_json, eos_id)


def _worker_encode(texts: list[str]):
    return _WORKER.encode(texts)


_WORKER: "Encoder | None" = None


class Encoder:
    """Batched encoding of documents with the `tokenizers` backend: raw text, no special tokens added,
    literal special-token strings inside a document encoded as text (a document never contains EOS)."""

    def __init__(self, backend, eos_id: int, pool=None, workers: int = 1):
        self.backend, self.eos_id, self.pool, self.workers = backend, eos_id, pool, workers

    @classmethod
    def from_json(cls, tokenizer_json: str, eos_id: int) -> "Encoder":
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer_json)
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = True
        return cls(backend, eos_id)

    @classmethod
    def from_hf(cls, tok, workers: int) -> "Encoder":
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            raise CptlabError(f"tokenizer {getattr(tok, 'name_or_path', tok)}: cptlab needs a fast tokenizer "
                              f"(tokenizer.json) to build a token cache")
        as_json = backend.to_str()
        enc = cls.from_json(as_json, int(tok.eos_token_id))
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            # fork on Linux: workers run only `tokenizers` code, never torch/CUDA/rich, so inheriting the
            # parent's state is safe, and unlike spawn it does not re-run the caller's __main__ (stdin,
            # notebooks, scripts without a main guard). Elsewhere (macOS) fork is unsafe: spawn.
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            enc.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                           initargs=(as_json, int(tok.eos_token_id)))
            enc.workers = workers
        return enc

    def _batch(self, texts: list[str]) -> list[list[int]]:
        batch = self.backend.encode_batch_fast(texts, add_special_tokens=False) if hasattr(
            self.backend, "encode_batch_fast") else self.backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in batch]

    def _encode_long(self, text: str) -> np.ndarray:
        return np.concatenate([np.asarray(self._batch([p])[0], dtype=np.uint32) for p in pieces(text, PIECE)])

    def encode(self, texts: list[str]):
        """-> (ids uint32 with EOS after each kept document, per-document lengths incl. EOS, n skipped)."""
        short = [i for i, t in enumerate(texts) if len(t) <= LONG_DOC]
        seqs: list = [None] * len(texts)
        if short:
            for i, ids in zip(short, self._batch([texts[i] for i in short])):
                seqs[i] = ids
        for i, t in enumerate(texts):
            if seqs[i] is None:
                seqs[i] = self._encode_long(t)
        kept = [s for s in seqs if len(s)]
        lengths = np.fromiter((len(s) + 1 for s in kept), dtype=np.int64, count=len(kept))
        ids = np.empty(int(lengths.sum()), dtype=np.uint32)
        pos = 0
        for s, n in zip(kept, lengths):
            ids[pos : pos + n - 1] = s
            ids[pos + n - 1] = self.eos_id
            pos += n
        return ids, lengths, len(seqs) - len(kept)

    def map(self, chunks: Iterator[list[str]]):
        """Encode chunks in order; in parallel with at most 2 * workers chunks in flight."""
        if self.pool is None:
            for texts in chunks:
                yield len(texts), self.encode(texts)
            return
        pending: deque = deque()
        for texts in chunks:
            pending.append((len(texts), self.pool.submit(_worker_encode, texts)))
            while len(pending) >= 2 * self.workers:
                n, fut = pending.popleft()
                yield n, result(fut)
        while pending:
            n, fut = pending.popleft()
            yield n, result(fut)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def result(fut):
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fut.result()
    except BrokenProcessPool:
        raise CptlabError("token cache: a tokenizer worker process died (out of memory?); "
                          "try fewer --workers") from None


_CUT = re.compile(r"(?<=\S)\s|\s(?=\S)")  # whitespace after a non-space, or the last whitespace before one


def pieces(text: str, size: int) -> Iterator[str]:
    """`text` cut into pieces of at most `size` characters, each cut at the last pre-token boundary in the piece
    (see the module doc); at `size` characters where there is none (one giant word)."""
    start, n = 0, len(text)
    while n - start > size:
        end = start + size
        cut = end
        for m in _CUT.finditer(text, start + 1, end):
            cut = m.start()
        yield text[start:cut]
        start = cut
    yield text[start:]


def chunks(docs: Iterator[str], stats_bytes: list[int]) -> Iterator[list[str]]:
    buf: list[str] = []
    size = 0
    for doc in docs:
        buf.append(doc)
        size += len(doc)
        stats_bytes[0] += len(doc)
        if len(buf) >= CHUNK_DOCS or size >= CHUNK_BYTES:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf
