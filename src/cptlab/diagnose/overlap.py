"""Split hygiene: exact and near-duplicate documents between a domain's train and test splits.

A test document that also sits (nearly) verbatim in the train split inflates the gain of adapting to that domain:
part of the ΔPPL is memorisation. `overlap(...)` counts, for every domain, the test documents that have a copy
in train:

* **exact duplicate**: a train document whose text is identical after collapsing every run of whitespace to one
  space and stripping the ends (`" ".join(text.split())`); found by hashing, so the count is exact.
* **near duplicate**: a train document whose word-shingle set has an estimated Jaccard similarity ≥ `threshold`
  (default 0.8) with the test document's. Shingles are the overlapping `shingle_words`-grams (default 5) of the
  document's words (regex `\\w+`, lower-cased); a document with fewer words is one shingle. Jaccard is estimated
  with MinHash (`datasketch`, `num_perm` permutations, seeded). Candidates come from MinHash LSH with bands
  chosen (`lsh_params`) so that a pair exactly at the threshold is a candidate with probability ≥ 0.999
  (datasketch's default bands for 0.8 find only ~40% of such pairs); a candidate is kept when the estimate from
  the two signatures is ≥ threshold. Near the threshold the estimate decides: its standard error is about
  sqrt(J(1-J)/num_perm) (0.035 at J = 0.8 with 128 permutations). Exact duplicates always count as near
  duplicates (near ⊇ exact).

Result (kind "overlap" in a study's diagnostics; key names are a contract with the report):

    {"settings": {corpus, train_split, test_split, threshold, num_perm, shingle_words, seed, lsh_bands,
                  lsh_rows, normalisation},
     "domains": {name: {train_docs, test_docs, exact_duplicates, near_duplicates, near_duplicate_fraction,
                        exact_fraction, test_bytes, near_duplicate_bytes, near_duplicate_bytes_fraction,
                        train_source, test_source, examples: [{test_doc, train_doc, jaccard, exact, test_start}]}}}

Fractions are over the test split's documents (or bytes); `test_doc`/`train_doc` are 0-based document indices
in the order `cptlab.corpus.iter_documents` reads them. Cost: every document of both splits is read and
shingled (about 1–3 MB/s per core); memory: about 1–2 KB per train document (signature + LSH tables).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from cptlab.corpus import ReadOptions, ReadStats, SplitSource, iter_documents, open_corpus
from cptlab.errors import CptlabError, UsageError

_WORD = re.compile(r"\w+")
MAX_EXAMPLES = 5


@dataclass
class OverlapSettings:
    train_split: str = "train"
    test_split: str = "test"
    threshold: float = 0.8
    num_perm: int = 128
    shingle_words: int = 5
    seed: int = 1

    def check(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise UsageError(f"--threshold {self.threshold}: must be in (0, 1]")
        if self.num_perm < 16:
            raise UsageError(f"num_perm {self.num_perm}: must be at least 16")
        if self.shingle_words < 1:
            raise UsageError(f"shingle_words {self.shingle_words}: must be at least 1")
        if self.train_split == self.test_split:
            raise UsageError(f"train_split and test_split are both {self.train_split!r}")


def normalise(text: str) -> str:
    """The text exact duplicates are compared on: whitespace runs -> one space, ends stripped."""
    return " ".join(text.split())


def shingles(text: str, n: int) -> set[bytes]:
    """The set of overlapping n-word shingles (lower-cased `\\w+` words); one shingle when fewer than n words."""
    words = _WORD.findall(text.lower())
    if not words:
        return {normalise(text).encode("utf-8")}
    if len(words) <= n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i: i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


def _exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).digest()


@lru_cache(maxsize=4)
def _permutations(num_perm: int, seed: int):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed)
    return m.permutations, m.scheme


def _minhash(text: str, settings: OverlapSettings):
    """MinHash of the document's shingles. Shingles are hashed with CRC-32 (a C function: 4x faster than
    datasketch's default SHA-1 wrapper; 32-bit values are what its permutations expect)."""
    from datasketch import MinHash

    perms, scheme = _permutations(settings.num_perm, settings.seed)
    m = MinHash(num_perm=settings.num_perm, seed=settings.seed, hashfunc=zlib.crc32, permutations=perms,
                scheme=scheme)
    m.update_batch(shingles(text, settings.shingle_words))
    return m


def _documents(source: SplitSource, options: ReadOptions | None, stats: ReadStats) -> Iterator[str]:
    yield from iter_documents(source, options, stats)


def lsh_params(threshold: float, num_perm: int, recall: float = 0.999) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest spurious candidates) such that a pair with Jaccard equal
    to `threshold` shares at least one band with probability 1 - (1 - t^rows)^bands ≥ `recall`."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold ** rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def split_overlap(train_docs: Iterable[str], test_docs: Iterable[str],
                  settings: OverlapSettings | None = None) -> dict:
    """Exact and near duplicates of each test document among the train documents (see the module docstring)."""
    from datasketch import MinHashLSH

    settings = settings or OverlapSettings()
    settings.check()
    lsh = MinHashLSH(num_perm=settings.num_perm, params=lsh_params(settings.threshold, settings.num_perm))
    exact: dict[bytes, int] = {}
    signatures: list[np.ndarray] = []
    n_train = 0
    for i, text in enumerate(train_docs):
        exact.setdefault(_exact_key(text), i)
        m = _minhash(text, settings)
        signatures.append(m.hashvalues)
        lsh.insert(i, m, check_duplication=False)
        n_train += 1
    n_test = n_exact = n_near = 0
    test_bytes = near_bytes = 0
    examples: list[dict] = []
    for j, text in enumerate(test_docs):
        n_test += 1
        size = len(text.encode("utf-8"))
        test_bytes += size
        match = exact.get(_exact_key(text))
        best, best_j = None, 0.0
        if match is not None:
            n_exact += 1
            best, best_j = match, 1.0
        else:
            m = _minhash(text, settings)
            for cand in lsh.query(m):
                est = float(np.mean(signatures[cand] == m.hashvalues))
                if est >= settings.threshold and (est > best_j or best is None):
                    best, best_j = cand, est
        if best is None:
            continue
        n_near += 1
        near_bytes += size
        if len(examples) < MAX_EXAMPLES:
            examples.append({"test_doc": j, "train_doc": int(best), "jaccard": round(best_j, 4),
                             "exact": match is not None, "test_start": normalise(text)[:80]})
    return {
        "train_docs": n_train, "test_docs": n_test,
        "exact_duplicates": n_exact, "near_duplicates": n_near,
        "exact_fraction": n_exact / n_test if n_test else None,
        "near_duplicate_fraction": n_near / n_test if n_test else None,
        "test_bytes": test_bytes, "near_duplicate_bytes": near_bytes,
        "near_duplicate_bytes_fraction": near_bytes / test_bytes if test_bytes else None,
        "lsh_bands": int(lsh.b), "lsh_rows": int(lsh.r),
        "examples": examples,
    }


def overlap(corpus: str | Path, domains: list[str] | None = None, settings: OverlapSettings | None = None,
            read_options: ReadOptions | None = None) -> dict:
    """Split hygiene of every domain of `corpus` that has both splits (or of `domains`)."""
    from cptlab.console import log

    settings = settings or OverlapSettings()
    settings.check()
    c = open_corpus(corpus)
    both = [d for d in c.domain_names() if settings.train_split in c.domains[d] and settings.test_split in c.domains[d]]
    if domains:
        unknown = [d for d in domains if d not in c.domains]
        if unknown:
            raise CptlabError(f"--domains: {', '.join(unknown)} not in corpus {corpus} "
                              f"(domains: {', '.join(c.domain_names())})")
        lacking = [d for d in domains if d not in both]
        if lacking:
            raise CptlabError(f"corpus {corpus}: domain(s) {', '.join(lacking)} lack a {settings.train_split!r} "
                              f"or {settings.test_split!r} split")
        names = list(domains)
    else:
        names = both
    if not names:
        raise CptlabError(f"corpus {corpus}: no domain has both a {settings.train_split!r} and a "
                          f"{settings.test_split!r} split")
    results: dict = {}
    lsh_params = (None, None)
    for name in names:
        log(f"overlap: domain {name}")
        train_src, test_src = c.source(name, settings.train_split), c.source(name, settings.test_split)
        train_stats, test_stats = ReadStats(), ReadStats()
        row = split_overlap(_documents(train_src, read_options, train_stats),
                            _documents(test_src, read_options, test_stats), settings)
        for split_name, src, n in ((settings.train_split, train_src, row["train_docs"]),
                                   (settings.test_split, test_src, row["test_docs"])):
            if n == 0:
                raise CptlabError(f"{src.describe()}: domain {name!r} has no documents in its {split_name!r} split")
        lsh_params = (row.pop("lsh_bands"), row.pop("lsh_rows"))
        row["train_source"], row["test_source"] = train_src.describe(), test_src.describe()
        row["skipped"] = {settings.train_split: dict(train_stats.skipped),
                          settings.test_split: dict(test_stats.skipped)}
        results[name] = row
    return {
        "settings": {"corpus": str(corpus), **asdict(settings), "lsh_bands": lsh_params[0],
                     "lsh_rows": lsh_params[1],
                     "normalisation": "exact: whitespace runs collapsed; near: lower-cased \\w+ word shingles"},
        "domains": results,
    }
