"""Fixtures for the evaluation tests: the tiny model loaded once, an evaluation with per-token losses."""

from __future__ import annotations

import pytest

MAX_DOCS = 4  # documents per domain in these tests (keeps them fast; the code docs span many windows)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from cptlab.model import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_docs(tiny_corpus) -> dict[str, list[str]]:
    """The documents `perplexity` sees: the first MAX_DOCS of each domain's test split."""
    from cptlab.corpus import iter_documents, open_corpus

    c = open_corpus(tiny_corpus)
    return {d: list(iter_documents(c.source(d, "test")))[:MAX_DOCS] for d in c.domain_names()}


@pytest.fixture(scope="session")
def evaluated(tiny_model, tiny_tokenizer, tiny_corpus, tmp_path_factory):
    """(EvalResult, token-loss parquet path) of the default lm-eval mode on MAX_DOCS documents per domain."""
    from cptlab.evaluate import perplexity

    path = tmp_path_factory.mktemp("eval") / "base.parquet"
    result = perplexity(tiny_model, tiny_tokenizer, corpus=tiny_corpus, max_documents=MAX_DOCS, token_losses=path)
    return result, path
