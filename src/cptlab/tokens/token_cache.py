"""Token cache: one flat memory-mapped array of token ids per domain/split, EOS after every document.

Layout (format version 1)::

    CACHE/cache.json                             index of entries (domain/split -> counts, fingerprint)
    CACHE/<domain>/<split>/tokens.bin            ids, raw little-endian uint16 (vocab <= 65536) or uint32
    CACHE/<domain>/<split>/offsets.npy           int64, n_docs + 1; doc i = ids[off[i] : off[i+1] - 1],
                                                 followed by EOS at off[i+1] - 1
    CACHE/<domain>/<split>/manifest.json         tokenizer fingerprint, source files (size, mtime, sha256),
                                                 read options, counts, dtype, eos_id, vocab_size, max_id

An entry is built in `<split>.tmp` and renamed when complete, so a reader never sees half a cache. It is
reused when the tokenizer fingerprint, the read options and the source files are unchanged: size and mtime
are compared first; the sha256 is computed only when those differ (a touched but identical file is reused
and its manifest refreshed) or when `verify_hash=True`.

This module builds and opens entries. `cache_manifest` decides whether an entry is current and keeps the
index; `encoding` tokenizes documents in worker processes (any number of workers gives the same bytes).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from cptlab.errors import CptlabError, UsageError
from cptlab.fsutil import atomic_dir, atomic_write_json
from cptlab.tokens.cache_manifest import (FORMAT_VERSION, entry_dir, list_entries, read_index, read_json,
                                          source_record, stale_reason, stat_files, write_index)
from cptlab.tokens.encoding import CHUNK_BYTES, CHUNK_DOCS, Encoder, chunks

__all__ = ["AUTO_SINGLE_WORKER_BYTES", "CHUNK_BYTES", "CHUNK_DOCS", "FORMAT_VERSION", "TokenArray", "build_cache",
           "choose_dtype", "entry_dir", "list_entries", "open_tokens", "read_index"]
AUTO_SINGLE_WORKER_BYTES = 8 << 20  # below this much source text, worker start-up costs more than it saves


# --------------------------------------------------------------------------------------------- reading


@dataclass
class TokenArray:
    """One domain/split of a token cache, memory-mapped read-only."""

    path: Path
    ids: np.ndarray  # np.memmap, uint16 or uint32
    doc_offsets: np.ndarray  # int64, num_docs + 1
    manifest: dict

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_docs(self) -> int:
        return int(self.doc_offsets.shape[0] - 1)

    @property
    def eos_id(self) -> int:
        return int(self.manifest["eos_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def max_id(self) -> int:
        """Largest id in the array (-1 when empty): pass to `cptlab.model.check_vocab` before training."""
        return int(self.manifest["max_id"])

    @property
    def domain(self) -> str:
        return self.manifest["domain"]

    @property
    def split(self) -> str:
        return self.manifest["split"]

    def document(self, i: int) -> np.ndarray:
        """Token ids of document i, without its EOS."""
        if not 0 <= i < self.num_docs:
            raise IndexError(f"document {i} out of range (0..{self.num_docs - 1})")
        return np.asarray(self.ids[int(self.doc_offsets[i]) : int(self.doc_offsets[i + 1]) - 1])

    def __len__(self) -> int:
        return self.num_tokens


def choose_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id (< vocab_size) fits in 16 bits, else uint32."""
    if vocab_size <= 0:
        raise CptlabError(f"vocabulary size {vocab_size}: must be positive")
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    if vocab_size <= 1 << 32:
        return np.dtype("<u4")
    raise CptlabError(f"vocabulary size {vocab_size}: does not fit in 32-bit token ids")


def open_tokens(cache_dir: str | Path, domain: str, split: str) -> TokenArray:
    """Open `CACHE/<domain>/<split>` read-only. Errors name the path and say how to (re)build it."""
    d = entry_dir(cache_dir, domain, split)
    manifest_path = d / "manifest.json"
    if not manifest_path.is_file():
        have = ", ".join(sorted(list_entries(cache_dir))) or "none"
        raise CptlabError(
            f"token cache {d}: not found (entries in {cache_dir}: {have}); "
            f"build it with `cptlab prepare --corpus ROOT --tokenizer DIR --out {cache_dir}`"
        )
    manifest = read_json(manifest_path)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CptlabError(
            f"{manifest_path}: token cache format {manifest.get('format_version')!r}, this cptlab reads "
            f"{FORMAT_VERSION}; rebuild it with `cptlab prepare ... --force`"
        )
    dtype = np.dtype(manifest["dtype"])
    n_tokens, n_docs = int(manifest["counts"]["tokens"]), int(manifest["counts"]["documents"])
    bin_path = d / "tokens.bin"
    size = bin_path.stat().st_size if bin_path.is_file() else -1
    if size != n_tokens * dtype.itemsize:
        raise CptlabError(f"{bin_path}: {size} bytes, manifest says {n_tokens} tokens of {dtype}; rebuild the cache")
    ids = np.memmap(bin_path, dtype=dtype, mode="r", shape=(n_tokens,)) if n_tokens else np.zeros(0, dtype)
    try:
        offsets = np.load(d / "offsets.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
        raise CptlabError(f"{d / 'offsets.npy'}: unreadable ({e}); rebuild the cache") from None
    if offsets.dtype != np.int64 or offsets.shape != (n_docs + 1,) or (n_docs and int(offsets[-1]) != n_tokens):
        raise CptlabError(f"{d / 'offsets.npy'}: does not match {manifest_path}; rebuild the cache")
    return TokenArray(d, ids, offsets, manifest)


# --------------------------------------------------------------------------------------------- building


def build_cache(
    corpus,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    domains: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    workers: int | None = None,
    read_options=None,
    force: bool = False,
    verify_hash: bool = False,
    template=None,
) -> dict:
    """Tokenize a corpus (a `Corpus` or anything `open_corpus` accepts) into `out_dir`; reuse what is current.

    `workers=None` picks one per CPU (at most 8), or 1 for small corpora. `template` (a format string such as
    "{text} It was {label}." or a dict format/labels/domains; see `cptlab.corpus.template`) wraps every document
    of the domains it applies to before tokenization (it replaces `read_options.template`); an entry records the
    template and its labels file's sha256, and is rebuilt when either changes. Returns a summary:
    `{"cache_dir", "tokenizer_fingerprint", "vocab_size", "dtype", "entries": [{"domain", "split", "status"
    ("built" | "reused"), "reason", "documents", "tokens", "skipped", "max_id", "seconds"}]}`.
    """
    from cptlab.corpus import ReadOptions, iter_documents, open_corpus
    from cptlab.tokens.tokenizer import load_tokenizer, tokenizer_fingerprint

    if not hasattr(corpus, "domains"):
        corpus = open_corpus(corpus)
    read_options = read_options if read_options is not None else ReadOptions()
    if template is not None:
        read_options = dataclasses.replace(read_options, template=template)  # parsed (and checked) there
    tok = load_tokenizer(tokenizer_dir)
    tok_info = {
        "path": str(Path(tokenizer_dir).expanduser().resolve()) if Path(tokenizer_dir).expanduser().exists()
        else str(tokenizer_dir),
        "fingerprint": tokenizer_fingerprint(tok),
        "vocab_size": len(tok),
        "eos_id": int(tok.eos_token_id),
    }
    dtype = choose_dtype(tok_info["vocab_size"])
    targets = _select(corpus, domains, splits)
    t = read_options.template
    if t is not None and t.domains is not None and (unknown := [d for d in t.domains if d not in corpus.domains]):
        raise UsageError(f"template.domains: unknown domain(s) {', '.join(unknown)} in corpus {corpus.root} "
                         f"(domains: {', '.join(sorted(corpus.domains))})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    todo, summary_entries = [], []
    for source in targets:
        d = entry_dir(out_dir, source.domain, source.split)
        options = _options_dict(read_options, source)
        reason = "forced" if force else stale_reason(d, source, tok_info, options, verify_hash)
        if reason is None:
            m = read_json(d / "manifest.json")
            summary_entries.append(_summary_row(m, "reused", "unchanged", 0.0))
        else:
            todo.append((source, d, reason, options))

    if todo:
        n_workers = _resolve_workers(workers, [t[0] for t in todo])
        encoder = Encoder.from_hf(tok, n_workers)
        from cptlab.console import log

        log(f"tokenizing {len(todo)} split(s) into {out_dir} with {n_workers} worker(s)")
        try:
            with _progress() as progress:
                for source, d, reason, options in todo:
                    t0 = time.perf_counter()
                    manifest = _build_entry(source, d, tok_info, dtype, options, read_options, encoder,
                                            progress, iter_documents)
                    summary_entries.append(_summary_row(manifest, "built", reason, time.perf_counter() - t0))
        finally:
            encoder.close()

    order = {(s.domain, s.split): i for i, s in enumerate(targets)}
    summary_entries.sort(key=lambda e: order[(e["domain"], e["split"])])
    write_index(out_dir)
    return {
        "cache_dir": str(out_dir),
        "tokenizer_fingerprint": tok_info["fingerprint"],
        "vocab_size": tok_info["vocab_size"],
        "dtype": dtype.name,
        "entries": summary_entries,
    }


def _select(corpus, domains, splits) -> list:
    names = corpus.domain_names() if hasattr(corpus, "domain_names") else sorted(corpus.domains)
    wanted = list(domains) if domains else names
    unknown = [d for d in wanted if d not in corpus.domains]
    if unknown:
        raise UsageError(f"--domains: unknown domain(s) {', '.join(unknown)} in corpus {corpus.root} "
                         f"(domains: {', '.join(names)})")
    out = []
    for d in wanted:
        available = corpus.domains[d]
        for s in (list(splits) if splits else list(available)):
            if s in available:
                out.append(available[s])
    if not out:
        raise UsageError(f"--splits {','.join(splits or [])}: no such split in the selected domains of {corpus.root}")
    return out


def _resolve_workers(workers: int | None, sources: list) -> int:
    if workers is not None:
        if workers < 1:
            raise UsageError(f"--workers {workers}: must be at least 1")
        return workers
    total = sum(f.stat().st_size for s in sources for f in getattr(s, "files", []) or [] if Path(f).exists())
    if total < AUTO_SINGLE_WORKER_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def _options_dict(options, source) -> dict:
    """The read options an entry depends on, as JSON: the template only where it applies to the source's
    domain, with its labels file (resolved for the domain/split) and that file's sha256."""
    import json

    from cptlab.corpus import sha256_file

    template = getattr(options, "template", None)
    if dataclasses.is_dataclass(options):
        d = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    elif hasattr(options, "model_dump"):
        d = options.model_dump()
    else:
        d = dict(vars(options))
    d.pop("template", None)
    d = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v)) for k, v in sorted(d.items())}
    if template is not None and template.applies_to(source.domain):
        t = template.to_dict()
        lpath = template.labels_path(source.domain, source.split)
        if lpath is not None:
            if not lpath.is_file():
                raise CptlabError(f"template.labels: {lpath}: no such file (for {source.domain}/{source.split})")
            t["labels"], t["labels_sha256"] = str(lpath), sha256_file(lpath)
        d["template"] = json.loads(json.dumps(t))
    return d


def _summary_row(m: dict, status: str, reason: str, seconds: float) -> dict:
    return {
        "domain": m["domain"], "split": m["split"], "status": status, "reason": reason,
        "documents": m["counts"]["documents"], "tokens": m["counts"]["tokens"],
        "skipped": dict(m["counts"]["skipped"]), "max_id": m["max_id"], "seconds": round(seconds, 3),
    }


def _build_entry(source, d: Path, tok_info: dict, dtype: np.dtype, options: dict, read_options,
                 encoder: Encoder, progress, iter_documents) -> dict:
    from cptlab.corpus import ReadStats

    record = source_record(source)
    stats = ReadStats()
    label = f"{source.domain}/{source.split}"
    total = sum(f["size"] for f in record["files"]) or None
    task = progress.add_task(label, total=total, rate="")
    chars = [0]
    n_tokens = n_docs = 0
    max_id = -1
    no_tokens = 0
    t0 = time.perf_counter()
    with atomic_dir(d) as tmp:
        with open(tmp / "tokens.bin", "wb") as fb, open(tmp / "offsets.raw", "wb") as fo:
            fo.write(np.zeros(1, dtype=np.int64).tobytes())
            docs = iter_documents(source, read_options, stats)
            for _n, (ids, lengths, skipped) in encoder.map(chunks(docs, chars)):
                no_tokens += skipped
                if ids.size:
                    max_id = max(max_id, int(ids.max()))
                    if max_id >= tok_info["vocab_size"] or max_id > np.iinfo(dtype).max:
                        raise CptlabError(f"tokenizer {tok_info['path']}: produced id {max_id} outside its "
                                          f"vocabulary of {tok_info['vocab_size']}")
                    fb.write(ids.astype(dtype, copy=False).tobytes())
                    fo.write((np.cumsum(lengths) + n_tokens).tobytes())
                n_tokens += int(ids.size)
                n_docs += int(lengths.size)
                elapsed = max(time.perf_counter() - t0, 1e-9)
                progress.update(task, completed=min(chars[0], total or chars[0]),
                                rate=f"{n_tokens / elapsed:,.0f} tok/s")
        _raw_to_npy(tmp / "offsets.raw", tmp / "offsets.npy", n_docs + 1)
        after = stat_files(source) if not record["hf"] else record["files"]
        if [(f["size"], f["mtime_ns"]) for f in after] != [(f["size"], f["mtime_ns"]) for f in record["files"]]:
            raise CptlabError(f"corpus {label}: a source file changed while it was being tokenized; run again")
        skipped = Counter({str(k): int(v) for k, v in dict(stats.skipped).items()})
        if no_tokens:
            skipped["no_tokens"] += no_tokens
        manifest = {
            "format_version": FORMAT_VERSION,
            "domain": source.domain,
            "split": source.split,
            "tokenizer": {"path": tok_info["path"], "fingerprint": tok_info["fingerprint"]},
            "tokenizer_fingerprint": tok_info["fingerprint"],
            "vocab_size": tok_info["vocab_size"],
            "eos_id": tok_info["eos_id"],
            "dtype": dtype.name,
            "max_id": max_id,
            "read_options": options,
            "source": record,
            "counts": {"documents": n_docs, "tokens": n_tokens, "skipped": dict(sorted(skipped.items()))},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    progress.update(task, completed=total or chars[0])
    return manifest


def _raw_to_npy(raw: Path, npy: Path, n: int) -> None:
    """Copy a raw int64 file into a .npy in blocks (constant memory), then delete the raw file."""
    out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.int64, shape=(n,))
    src = np.memmap(raw, dtype=np.int64, mode="r", shape=(n,))
    step = 1 << 22
    for i in range(0, n, step):
        out[i : i + step] = src[i : i + step]
    out.flush()
    del out, src
    raw.unlink()


def _progress():
    from rich.progress import TextColumn

    from cptlab.console import progress

    return progress(TextColumn("{task.fields[rate]}"))


