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

Tokenization runs in worker processes (each loads the `tokenizers` backend only, no transformers)
over fixed chunks of documents, results are written in chunk order, so any number of workers gives the
same bytes as one. Memory stays bounded: at most `2 * workers` chunks are in flight.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cptlab.errors import CptlabError, UsageError
from cptlab.fsutil import atomic_dir, atomic_write_json

FORMAT_VERSION = 1
CHUNK_DOCS = 256  # documents per worker task (fixed: the output never depends on the number of workers)
CHUNK_BYTES = 1 << 20  # ...or fewer when they add up to this many bytes of text
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


def entry_dir(cache_dir: str | Path, domain: str, split: str) -> Path:
    return Path(cache_dir) / domain / split


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
    manifest = _read_json(manifest_path)
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


def list_entries(cache_dir: str | Path) -> list[str]:
    """`domain/split` names of the complete entries under a cache dir."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    return sorted(
        f"{p.parent.parent.name}/{p.parent.name}"
        for p in root.glob("*/*/manifest.json")
        if not p.parent.name.endswith((".tmp", ".old"))
    )


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
) -> dict:
    """Tokenize a corpus (a `Corpus` or anything `open_corpus` accepts) into `out_dir`; reuse what is current.

    `workers=None` picks one per CPU (at most 8), or 1 for small corpora. Returns a summary:
    `{"cache_dir", "tokenizer_fingerprint", "vocab_size", "dtype", "entries": [{"domain", "split", "status"
    ("built" | "reused"), "reason", "documents", "tokens", "skipped", "max_id", "seconds"}]}`.
    """
    from cptlab.corpus import ReadOptions, iter_documents, open_corpus
    from cptlab.tokens.tokenizer import load_tokenizer, tokenizer_fingerprint

    if not hasattr(corpus, "domains"):
        corpus = open_corpus(corpus)
    read_options = read_options if read_options is not None else ReadOptions()
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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = _options_dict(read_options)

    todo, summary_entries = [], []
    for source in targets:
        d = entry_dir(out_dir, source.domain, source.split)
        reason = "forced" if force else _stale_reason(d, source, tok_info, options, verify_hash)
        if reason is None:
            m = _read_json(d / "manifest.json")
            summary_entries.append(_summary_row(m, "reused", "unchanged", 0.0))
        else:
            todo.append((source, d, reason))

    if todo:
        n_workers = _resolve_workers(workers, [s for s, _, _ in todo])
        encoder = _Encoder.from_hf(tok, n_workers)
        from cptlab.console import log

        log(f"tokenizing {len(todo)} split(s) into {out_dir} with {n_workers} worker(s)")
        try:
            with _progress() as progress:
                for source, d, reason in todo:
                    t0 = time.perf_counter()
                    manifest = _build_entry(source, d, tok_info, dtype, options, read_options, encoder,
                                            progress, iter_documents)
                    summary_entries.append(_summary_row(manifest, "built", reason, time.perf_counter() - t0))
        finally:
            encoder.close()

    order = {(s.domain, s.split): i for i, s in enumerate(targets)}
    summary_entries.sort(key=lambda e: order[(e["domain"], e["split"])])
    _write_index(out_dir)
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


def _options_dict(options) -> dict:
    if dataclasses.is_dataclass(options):
        d = dataclasses.asdict(options)
    elif hasattr(options, "model_dump"):
        d = options.model_dump()
    else:
        d = dict(vars(options))
    return {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v)) for k, v in sorted(d.items())}


def _summary_row(m: dict, status: str, reason: str, seconds: float) -> dict:
    return {
        "domain": m["domain"], "split": m["split"], "status": status, "reason": reason,
        "documents": m["counts"]["documents"], "tokens": m["counts"]["tokens"],
        "skipped": dict(m["counts"]["skipped"]), "max_id": m["max_id"], "seconds": round(seconds, 3),
    }


# ----------------------------------------------------------------------------- source fingerprints


def _stat_files(source) -> list[dict]:
    """`[{"path", "size", "mtime_ns"}]` of a plain source's files, without hashing (the cheap check)."""
    out = []
    for f in source.files:
        p = Path(f).resolve()
        try:
            st = p.stat()
        except OSError as e:
            raise CptlabError(f"{p}: cannot read ({e.strerror})") from None
        out.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _source_settings(source) -> dict:
    import json

    settings = {k: getattr(source, k, None) for k in ("hf", "format", "text_field", "txt_mode")}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))  # as the manifest will hold it


def _source_record(source) -> dict:
    """What an entry depends on: the source's settings and its files (path, size, mtime_ns, sha256)."""
    from cptlab.corpus import corpus_fingerprint_files

    files = [{k: f[k] for k in ("path", "size", "mtime_ns", "sha256")} for f in corpus_fingerprint_files(source)]
    return {**_source_settings(source), "files": files}


def _stale_reason(d: Path, source, tok_info: dict, options: dict, verify_hash: bool) -> str | None:
    """None when the entry at `d` is current; else why it must be (re)built. Refreshes touched mtimes."""
    from cptlab.corpus import sha256_file

    mpath = d / "manifest.json"
    if not mpath.is_file():
        return "new"
    try:
        m = _read_json(mpath)
    except CptlabError:
        return "unreadable manifest"
    if m.get("format_version") != FORMAT_VERSION:
        return "format version"
    if m.get("tokenizer", {}).get("fingerprint") != tok_info["fingerprint"]:
        return "tokenizer changed"
    if m.get("read_options") != options:
        return "read options changed"
    old = m.get("source", {})
    if {k: old.get(k) for k in _source_settings(source)} != _source_settings(source):
        return "source settings changed"
    if getattr(source, "hf", None):  # a datasets spec: its local files, if any, hashed every time
        return None if _source_record(source)["files"] == old.get("files") else "dataset files changed"
    now = _stat_files(source)
    old_files = old.get("files", [])
    if [f["path"] for f in now] != [f["path"] for f in old_files]:
        return "source files changed"
    touched = False
    for new, prev in zip(now, old_files):
        if new["size"] != prev["size"]:
            return f"{new['path']} changed"
        if new["mtime_ns"] != prev["mtime_ns"] or verify_hash:
            if sha256_file(new["path"]) != prev.get("sha256"):
                return f"{new['path']} changed"
            if new["mtime_ns"] != prev["mtime_ns"]:
                prev["mtime_ns"] = new["mtime_ns"]
                touched = True
    bin_path = d / "tokens.bin"
    if not bin_path.is_file() or bin_path.stat().st_size != m["counts"]["tokens"] * np.dtype(m["dtype"]).itemsize:
        return "tokens.bin missing or truncated"
    if touched:  # same content, new mtime: remember it so the next check is cheap again
        atomic_write_json(mpath, m)
    return None


# ------------------------------------------------------------------------------------ tokenization


def _worker_init(tokenizer_json: str, eos_id: int) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _WORKER = _Encoder.from_json(tokenizer_json, eos_id)


def _worker_encode(texts: list[str]):
    return _WORKER.encode(texts)


_WORKER: "_Encoder | None" = None


class _Encoder:
    """Batched encoding of documents with the `tokenizers` backend: raw text, no special tokens added,
    literal special-token strings inside a document encoded as text (a document never contains EOS)."""

    def __init__(self, backend, eos_id: int, pool=None, workers: int = 1):
        self.backend, self.eos_id, self.pool, self.workers = backend, eos_id, pool, workers

    @classmethod
    def from_json(cls, tokenizer_json: str, eos_id: int) -> "_Encoder":
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer_json)
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = True
        return cls(backend, eos_id)

    @classmethod
    def from_hf(cls, tok, workers: int) -> "_Encoder":
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            raise CptlabError(f"tokenizer {getattr(tok, 'name_or_path', tok)}: cptlab needs a fast tokenizer "
                              f"(tokenizer.json) to build a token cache")
        as_json = backend.to_str()
        enc = cls.from_json(as_json, int(tok.eos_token_id))
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            # fork on Linux: workers run only `tokenizers` code, never torch/CUDA/rich, so inheriting the
            # parent's state is safe, and unlike spawn it does not re-run the caller's __main__ (stdin,
            # notebooks, scripts without a main guard). Elsewhere (macOS) fork is unsafe: spawn.
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            enc.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                           initargs=(as_json, int(tok.eos_token_id)))
            enc.workers = workers
        return enc

    def encode(self, texts: list[str]):
        """-> (ids uint32 with EOS after each kept document, per-document lengths incl. EOS, n skipped)."""
        batch = self.backend.encode_batch_fast(texts, add_special_tokens=False) if hasattr(
            self.backend, "encode_batch_fast") else self.backend.encode_batch(texts, add_special_tokens=False)
        seqs = [e.ids for e in batch]
        kept = [s for s in seqs if s]
        lengths = np.fromiter((len(s) + 1 for s in kept), dtype=np.int64, count=len(kept))
        ids = np.empty(int(lengths.sum()), dtype=np.uint32)
        pos = 0
        for s, n in zip(kept, lengths):
            ids[pos : pos + n - 1] = s
            ids[pos + n - 1] = self.eos_id
            pos += n
        return ids, lengths, len(seqs) - len(kept)

    def map(self, chunks: Iterator[list[str]]):
        """Encode chunks in order; in parallel with at most 2 * workers chunks in flight."""
        if self.pool is None:
            for texts in chunks:
                yield len(texts), self.encode(texts)
            return
        pending: deque = deque()
        for texts in chunks:
            pending.append((len(texts), self.pool.submit(_worker_encode, texts)))
            while len(pending) >= 2 * self.workers:
                n, fut = pending.popleft()
                yield n, _result(fut)
        while pending:
            n, fut = pending.popleft()
            yield n, _result(fut)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _result(fut):
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fut.result()
    except BrokenProcessPool:
        raise CptlabError("token cache: a tokenizer worker process died (out of memory?); "
                          "try fewer --workers") from None


def _chunks(docs: Iterator[str], stats_bytes: list[int]) -> Iterator[list[str]]:
    buf: list[str] = []
    size = 0
    for doc in docs:
        buf.append(doc)
        size += len(doc)
        stats_bytes[0] += len(doc)
        if len(buf) >= CHUNK_DOCS or size >= CHUNK_BYTES:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf


def _build_entry(source, d: Path, tok_info: dict, dtype: np.dtype, options: dict, read_options,
                 encoder: _Encoder, progress, iter_documents) -> dict:
    from cptlab.corpus import ReadStats

    record = _source_record(source)
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
            for _n, (ids, lengths, skipped) in encoder.map(_chunks(docs, chars)):
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
        after = _stat_files(source) if not record["hf"] else record["files"]
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


# ----------------------------------------------------------------------------------------- index


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CptlabError(f"{path}: unreadable ({e})") from None


def _write_index(cache_dir: Path) -> None:
    """`CACHE/cache.json`: every complete entry with its counts, rebuilt from the manifests on disk."""
    entries: dict[str, Any] = {}
    for name in list_entries(cache_dir):
        domain, split = name.split("/")
        try:
            m = _read_json(entry_dir(cache_dir, domain, split) / "manifest.json")
        except CptlabError:
            continue
        entries[name] = {
            "domain": domain, "split": split, "path": f"{domain}/{split}",
            "documents": m["counts"]["documents"], "tokens": m["counts"]["tokens"],
            "dtype": m["dtype"], "vocab_size": m["vocab_size"], "eos_id": m["eos_id"], "max_id": m["max_id"],
            "tokenizer_fingerprint": m["tokenizer"]["fingerprint"],
        }
    atomic_write_json(cache_dir / "cache.json", {"format_version": FORMAT_VERSION, "entries": entries})


def read_index(cache_dir: str | Path) -> dict:
    """The `cache.json` of a cache dir (entries keyed `domain/split`)."""
    path = Path(cache_dir) / "cache.json"
    if not path.is_file():
        raise CptlabError(f"{path}: not found; is {cache_dir} a token cache (made by `cptlab prepare`)?")
    return _read_json(path)
