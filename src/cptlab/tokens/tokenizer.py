"""Tokenizers: load any HF tokenizer, or train a byte-level BPE on a corpus with `tokenizers`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

from cptlab.errors import CptlabError

SPECIALS = {"bos_token": "<|bos|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "unk_token": None}


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    """A fast HF tokenizer from a local dir or a hub name. EOS must exist (documents are separated by it)."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    local = Path(name).expanduser()
    if (name.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise CptlabError(f"tokenizer {name}: directory not found")
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CptlabError(f"tokenizer {name}: could not load: {first}") from None
    if tok.eos_token_id is None:
        raise CptlabError(f"tokenizer {name}: has no EOS token; cptlab separates documents with it")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked out everywhere; any id will do
    return tok


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary, merges and special tokens: a changed tokenizer invalidates token caches."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps({"eos": tokenizer.eos_token_id, "bos": tokenizer.bos_token_id, "n": len(tokenizer)})
    return hashlib.sha256((payload + extra).encode("utf-8")).hexdigest()


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | Path, min_frequency: int = 2):
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) and save it as an HF tokenizer dir.

    Special tokens: `<|endoftext|>` (EOS, also the document separator), `<|bos|>`, `<|pad|>`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise CptlabError(f"--vocab-size {vocab_size}: must be at least 300 (256 bytes + specials + merges)")
    specials = [SPECIALS["eos_token"], SPECIALS["bos_token"], SPECIALS["pad_token"]]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_non_empty(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=SPECIALS["bos_token"],
        eos_token=SPECIALS["eos_token"],
        pad_token=SPECIALS["pad_token"],
        model_max_length=1_000_000_000,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if t:
            yield t


def train_tokenizer_on_corpus(corpus, vocab_size: int, out_dir: str | Path, domains=None,
                              splits=("train",), max_bytes: int | None = None, read_options=None,
                              min_frequency: int = 2):
    """Train a byte-level BPE on a corpus's documents and save it (atomically) as an HF tokenizer dir.

    `corpus`: a `Corpus` or anything `open_corpus` accepts. `max_bytes` caps the UTF-8 text used, shared
    equally among the selected domains (so one large domain cannot crowd out the others); a domain with less
    text leaves the rest of its share to the domains after it. Writes `cptlab_tokenizer.json` (what it was trained on) beside the
    tokenizer files. Returns the loaded tokenizer.
    """
    from cptlab.corpus import ReadStats, iter_documents, open_corpus
    from cptlab.fsutil import atomic_dir, atomic_write_json

    if not hasattr(corpus, "domains"):
        corpus = open_corpus(corpus)
    if max_bytes is not None and max_bytes <= 0:
        raise CptlabError(f"--max-bytes {max_bytes}: must be positive")
    names = list(domains) if domains else corpus.domain_names()
    unknown = [d for d in names if d not in corpus.domains]
    if unknown:
        raise CptlabError(f"--domains: unknown domain(s) {', '.join(unknown)} in corpus {corpus.root} "
                          f"(domains: {', '.join(corpus.domain_names())})")
    sources = [corpus.domains[d][s] for d in names for s in splits if s in corpus.domains[d]]
    if not sources:
        raise CptlabError(f"corpus {corpus.root}: none of the splits {', '.join(splits)} exist in the selected domains")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                     and not (out_dir / "tokenizer_config.json").exists())):
        raise CptlabError(f"--out {out_dir}: exists and is not a tokenizer dir; choose a new or empty dir")

    used = {"documents": 0, "bytes": 0, "by_domain": {}}

    def texts() -> Iterator[str]:
        remaining = max_bytes
        for i, d in enumerate(names):
            budget = None if remaining is None else remaining // (len(names) - i)
            got = 0
            for source in (s for s in sources if s.domain == d):
                stats = ReadStats()
                for doc in iter_documents(source, read_options, stats):
                    n = len(doc.encode("utf-8"))
                    if budget is not None and got + n > budget:
                        doc = doc.encode("utf-8")[: budget - got].decode("utf-8", errors="ignore")
                        n = len(doc.encode("utf-8"))
                    if doc:
                        got += n
                        used["documents"] += 1
                        yield doc
                    if budget is not None and got >= budget:
                        break
                if budget is not None and got >= budget:
                    break
            used["by_domain"][d] = got
            used["bytes"] += got
            if remaining is not None:
                remaining -= got

    with atomic_dir(out_dir) as tmp:
        tok = train_bpe(texts(), vocab_size, tmp, min_frequency=min_frequency)
        if used["documents"] == 0:
            raise CptlabError(f"corpus {corpus.root}: no documents to train a tokenizer on")
        atomic_write_json(tmp / "cptlab_tokenizer.json", {
            "corpus": str(corpus.root), "domains": names, "splits": list(splits), "max_bytes": max_bytes,
            "vocab_size_requested": vocab_size, "vocab_size": len(tok), **used,
            "fingerprint": tokenizer_fingerprint(tok),
        })
    return load_tokenizer(out_dir)
