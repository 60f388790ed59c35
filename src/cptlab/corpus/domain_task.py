"""A labelled task made from any multi-domain corpus: "which domain is this passage from?".

Every corpus in M2D2 layout carries labels for free: the domain of each document. From it this module writes

- a multiple-choice task file (jsonl: `context`, `choices`, `gold`) for `cptlab eval-tasks`: a passage, the
  question, and the domain names as choices (acc and acc_norm as lm-evaluation-harness);
- SFT data (jsonl: `prompt`, `response`) for `cptlab sft`: the same prompt with the right domain as response,

from different splits (train documents for SFT, test documents for the task), so no passage is both learned and
tested. Passages are the first `chars` characters of a document, cut at a line end when one is near; documents
are taken in a seeded order, the same number per domain (balanced classes, so chance is 1/len(domains)).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from cptlab.errors import CptlabError

QUESTION = "\nQuestion: which kind of text is this?\nAnswer:"


def passage(doc: str, chars: int) -> str:
    text = doc.strip()
    if len(text) <= chars:
        return text
    cut = text.rfind("\n", int(chars * 0.6), chars)
    return text[: cut if cut > 0 else chars].rstrip()


def prompt_for(text: str) -> str:
    return f"Passage:\n{text}{QUESTION}"


def sample_documents(corpus, domains: list[str], split: str, per_domain: int, seed: int,
                     min_chars: int = 40) -> dict[str, list[str]]:
    """Up to `per_domain` documents of each domain's split (at least `min_chars` long), in a seeded order."""
    from cptlab.corpus.layout import open_corpus
    from cptlab.corpus.read import iter_documents

    c = open_corpus(corpus)
    out = {}
    for d in domains:
        docs = [doc for doc in iter_documents(c.source(d, split)) if len(doc.strip()) >= min_chars]
        if not docs:
            raise CptlabError(f"corpus {corpus}: domain {d!r} split {split!r} has no document of {min_chars}+ chars")
        random.Random(f"{seed}:{d}:{split}").shuffle(docs)
        out[d] = docs[:per_domain]
    return out


def write_domain_task(corpus, domains: list[str], out: str | Path, split: str = "test", per_domain: int = 20,
                      chars: int = 240, seed: int = 0, labels: dict[str, str] | None = None) -> Path:
    """The multiple-choice file: one item per passage, the domains' labels as choices (" " + label)."""
    if len(domains) < 2:
        raise CptlabError("domain task: needs at least 2 domains")
    labels = labels or {d: d for d in domains}
    choices = [f" {labels[d]}" for d in domains]
    docs = sample_documents(corpus, domains, split, per_domain, seed)
    items = [{"context": prompt_for(passage(doc, chars)), "choices": choices, "gold": domains.index(d),
              "domain": d} for d in domains for doc in docs[d]]
    random.Random(seed).shuffle(items)
    return _write(out, items)


def write_domain_sft(corpus, domains: list[str], out: str | Path, split: str = "train", per_domain: int = 40,
                     chars: int = 240, seed: int = 0, labels: dict[str, str] | None = None) -> Path:
    """SFT rows: the task's prompt, the right label as the response."""
    labels = labels or {d: d for d in domains}
    docs = sample_documents(corpus, domains, split, per_domain, seed)
    rows = [{"prompt": prompt_for(passage(doc, chars)), "response": f" {labels[d]}"}
            for d in domains for doc in docs[d]]
    random.Random(seed + 1).shuffle(rows)
    return _write(out, rows)


def _write(out: str | Path, rows: list[dict]) -> Path:
    from cptlab.fsutil import atomic_write_bytes

    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    return p
