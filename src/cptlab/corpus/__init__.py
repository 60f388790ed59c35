"""Corpora: discover domains and splits (M2D2 layout, a YAML manifest or a `datasets` spec) and stream documents.

Public API (other packages use only these):
    open_corpus(spec, options=None) -> Corpus
    iter_documents(source: SplitSource, options: ReadOptions, stats: ReadStats | None = None) -> Iterator[str]
"""

from cptlab.corpus.layout import Corpus, SplitSource, open_corpus
from cptlab.corpus.read import ReadOptions, ReadStats, iter_documents

__all__ = ["Corpus", "ReadOptions", "ReadStats", "SplitSource", "iter_documents", "open_corpus"]
