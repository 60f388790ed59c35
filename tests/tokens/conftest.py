"""Fixtures for the token layer: a token cache of the shared tiny corpus, and fake token arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, tiny_corpus, tiny_tokenizer_dir) -> Path:
    from cptlab.tokens.token_cache import build_cache

    out = tmp_path_factory.mktemp("cache")
    build_cache(tiny_corpus, tiny_tokenizer_dir, out, workers=1)
    return out


class FakeTokens:
    """A TokenArray stand-in: documents of given lengths, ids counting up (never the EOS id 0) + EOS."""

    def __init__(self, doc_lengths: list[int], eos_id: int = 0, name: str = "fake"):
        parts, offsets, next_id = [], [0], 1
        for n in doc_lengths:
            parts.append(np.arange(next_id, next_id + n, dtype=np.uint32) % 60000 + 1)
            parts.append(np.array([eos_id], dtype=np.uint32))
            next_id += n
            offsets.append(offsets[-1] + n + 1)
        self.ids = np.concatenate(parts).astype(np.uint16)
        self.doc_offsets = np.array(offsets, dtype=np.int64)
        self.eos_id = eos_id
        self.manifest = {"domain": name, "split": "train", "eos_id": eos_id}


def fake_tokens(doc_lengths, name="fake") -> FakeTokens:
    return FakeTokens(list(doc_lengths), name=name)
