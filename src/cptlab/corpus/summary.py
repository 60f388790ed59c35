"""Read a whole corpus once and count, per domain/split: files, documents, words, bytes, skipped by reason."""

from __future__ import annotations

import dataclasses

from cptlab.corpus.layout import Corpus, open_corpus
from cptlab.corpus.read import ReadOptions, ReadStats, iter_documents
from cptlab.errors import CptlabError


def _select(corpus: Corpus, domains, splits) -> list:
    """Named domains must exist; named splits are taken where a domain has them, and each must exist somewhere."""
    sources = corpus.sources(domains)  # raises on an unknown domain
    if not splits:
        return sources
    for split in splits:
        if not any(s.split == split for s in sources):
            names = ", ".join(sorted({d for s in sources for d in [s.domain]}))
            raise CptlabError(f"corpus {corpus.root}: no {split!r} split in domain(s) {names}")
    return [s for s in sources if s.split in splits]


def inspect_corpus(spec, options: ReadOptions | None = None, domains=None, splits=None) -> dict:
    """`{"corpus", "options", "word_count", "domains": {domain: {split: stats}}, "total": stats}` where stats is
    `ReadStats.to_dict()`: files, documents, words, bytes, skipped {reason: n}, replaced."""
    from cptlab.console import progress

    corpus: Corpus = open_corpus(spec)
    options = options or ReadOptions()
    sources = _select(corpus, domains, splits)
    out: dict = {"corpus": corpus.root, "options": dataclasses.asdict(options),
                 "word_count": "len(doc.split()): runs of non-whitespace characters", "domains": {}}
    total = ReadStats()
    with progress() as bar:
        task = bar.add_task("reading corpus", total=len(sources))
        for source in sources:
            stats = ReadStats()
            bar.update(task, description=f"{source.domain}/{source.split}")
            for _ in iter_documents(source, options, stats):
                pass
            out["domains"].setdefault(source.domain, {})[source.split] = stats.to_dict()
            total.add(stats)
            bar.advance(task)
    out["total"] = total.to_dict()
    return out
