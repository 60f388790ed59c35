"""Corpora: discover domains and splits (M2D2 layout, a YAML manifest or a `datasets` spec) and stream documents.

Public API (other packages use only these):
    open_corpus(spec) -> Corpus            (.domains[domain][split] -> SplitSource, .source(d, s), .domain_names(),
                                            .sources(domains=None, splits=None))
    iter_documents(source: SplitSource, options: ReadOptions | None = None, stats: ReadStats | None = None)
        -> Iterator[str]                   (verbatim documents; empty ones skipped and counted in stats.skipped)
    inspect_corpus(spec, options=None, domains=None, splits=None) -> dict   (counts per domain/split)
    corpus_fingerprint_files(source) -> [{"path", "size", "mtime", "mtime_ns", "sha256"}]
    count_words(doc) -> int                (the word count ReadStats uses: len(doc.split()))
    Template, parse_template               (PCP: `ReadOptions(template="{text} It was {label}.")` wraps each
                                            document; fields from its record or a labels file; see corpus.template)
"""

from cptlab.corpus.fingerprint import corpus_fingerprint_files, sha256_file
from cptlab.corpus.layout import Corpus, SplitSource, open_corpus
from cptlab.corpus.read import ReadOptions, ReadStats, count_bytes, count_words, iter_documents
from cptlab.corpus.summary import inspect_corpus
from cptlab.corpus.template import Template, parse_template

__all__ = [
    "Corpus",
    "ReadOptions",
    "ReadStats",
    "SplitSource",
    "Template",
    "corpus_fingerprint_files",
    "count_bytes",
    "count_words",
    "inspect_corpus",
    "iter_documents",
    "open_corpus",
    "parse_template",
    "sha256_file",
]
