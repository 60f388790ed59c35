"""A labelled task made from any multi-domain corpus: "which domain is this passage from?".

Every corpus in M2D2 layout carries labels for free: the domain of each document. From it this module writes

- a multiple-choice task file (jsonl: `context`, `choices`, `gold`) for `cptlab eval-tasks`: a passage, the
  question, and the domain names as choices (acc and acc_norm as lm-evaluation-harness);
- SFT data (jsonl: `prompt`, `response`) for `cptlab sft`: the same prompt with the right domain as response,

from different splits (train documents for SFT, test documents for the task), so no passage is both learned and
tested. A passage is `chars` characters from a line start in a document (cut at a line end when one is near),
at a seeded random line, documents taken round-robin in a seeded order until each domain has `per_domain`
passages (balanced classes: chance is 1/len(domains)); a document gives several passages when a domain has few.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from cptlab.errors import CptlabError

QUESTION = "\nQuestion: which kind of text is this?\nAnswer:"


def passage(doc: str, chars: int, start: int = 0) -> str:
    text = doc[start:].strip()
    if len(text) <= chars:
        return text
    cut = text.rfind("\n", int(chars * 0.6), chars)
    return text[: cut if cut > 0 else chars].rstrip()


def prompt_for(text: str) -> str:
    return f"Passage:\n{text}{QUESTION}"


def sample_passages(corpus, domains: list[str], split: str, per_domain: int, chars: int, seed: int,
                    min_chars: int = 40) -> dict[str, list[str]]:
    """`per_domain` passages of each domain's split (each at least `min_chars` long), seeded."""
    from cptlab.corpus.layout import open_corpus
    from cptlab.corpus.read import iter_documents

    c = open_corpus(corpus)
    out = {}
    for d in domains:
        docs = [doc for doc in iter_documents(c.source(d, split)) if len(doc.strip()) >= min_chars]
        if not docs:
            raise CptlabError(f"corpus {corpus}: domain {d!r} split {split!r} has no document of {min_chars}+ chars")
        rng = random.Random(f"{seed}:{d}:{split}")
        rng.shuffle(docs)
        seen, picked, tries = set(), [], 0
        while len(picked) < per_domain and tries < 20 * per_domain:
            doc = docs[tries % len(docs)]
            tries += 1
            starts = [0] + [i + 1 for i, ch in enumerate(doc[: max(1, len(doc) - min_chars)]) if ch == "\n"]
            text = passage(doc, chars, rng.choice(starts))
            if len(text) >= min_chars and text not in seen:
                seen.add(text)
                picked.append(text)
        out[d] = picked
    return out


def write_domain_task(corpus, domains: list[str], out: str | Path, split: str = "test", per_domain: int = 20,
                      chars: int = 240, seed: int = 0, labels: dict[str, str] | None = None) -> Path:
    """The multiple-choice file: one item per passage, the domains' labels as choices (" " + label)."""
    if len(domains) < 2:
        raise CptlabError("domain task: needs at least 2 domains")
    labels = labels or {d: d for d in domains}
    choices = [f" {labels[d]}" for d in domains]
    texts = sample_passages(corpus, domains, split, per_domain, chars, seed)
    items = [{"context": prompt_for(t), "choices": choices, "gold": domains.index(d), "domain": d}
             for d in domains for t in texts[d]]
    random.Random(seed).shuffle(items)
    return _write(out, items)


def write_domain_sft(corpus, domains: list[str], out: str | Path, split: str = "train", per_domain: int = 40,
                     chars: int = 240, seed: int = 0, labels: dict[str, str] | None = None) -> Path:
    """SFT rows: the task's prompt, the right label as the response."""
    labels = labels or {d: d for d in domains}
    texts = sample_passages(corpus, domains, split, per_domain, chars, seed)
    rows = [{"prompt": prompt_for(t), "response": f" {labels[d]}"} for d in domains for t in texts[d]]
    random.Random(seed + 1).shuffle(rows)
    return _write(out, rows)


def _write(out: str | Path, rows: list[dict]) -> Path:
    from cptlab.fsutil import atomic_write_bytes

    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    return p
