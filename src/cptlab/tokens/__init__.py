"""Tokens: tokenizers, the memory-mapped token cache, packing into fixed windows, and the mixture sampler.

Public API (imported lazily, so that `import cptlab.tokens` stays cheap for worker processes):
    load_tokenizer, train_bpe, train_tokenizer_on_corpus, tokenizer_fingerprint   (cptlab.tokens.tokenizer)
    build_cache, open_tokens, TokenArray, read_index                               (cptlab.tokens.token_cache)
    PackedSource                                                                   (cptlab.tokens.packing)
    MixtureSampler, Batch                                                          (cptlab.tokens.mixture)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_tokenizer": "cptlab.tokens.tokenizer",
    "train_bpe": "cptlab.tokens.tokenizer",
    "train_tokenizer_on_corpus": "cptlab.tokens.tokenizer",
    "tokenizer_fingerprint": "cptlab.tokens.tokenizer",
    "build_cache": "cptlab.tokens.token_cache",
    "open_tokens": "cptlab.tokens.token_cache",
    "read_index": "cptlab.tokens.token_cache",
    "TokenArray": "cptlab.tokens.token_cache",
    "PackedSource": "cptlab.tokens.packing",
    "MixtureSampler": "cptlab.tokens.mixture",
    "Batch": "cptlab.tokens.mixture",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cptlab.tokens' has no attribute {name!r}")
