"""Seeded document samples of corpora, for the similarity measures (cptlab.diagnose.similarity).

Sampling (`SampleSpec`): each side is a sample of documents of about `bytes` UTF-8 bytes (default 8 MB) or of
`docs` documents, chosen with `seed`:

* Sources up to `stream_limit` bytes (and any compressed, parquet or HF-dataset source) are **streamed**: every
  document is read with `cptlab.corpus.iter_documents` and the sample is the set of documents with the smallest
  seeded hash of their text (bottom-k sampling): a uniform random sample without replacement that does not depend
  on the order of documents or files. With a sample at least as large as the source, the whole source is used.
  Copies of one document share a hash, so they are kept or dropped together (a sample of distinct texts).
* Larger plain `.txt`/`.jsonl` sources are **seek-sampled** so that a 1 GB reference costs a few MB of reads:
  uniformly random byte offsets over the files; at each, the document that starts next (wrapping to the file's
  first document at its end) is read. A document's chance is proportional to the byte length of the document
  before it: close to uniform when neighbouring documents' lengths are unrelated, but not exact, and it depends on
  file order. Raise `stream_limit` to stream instead. Documents are found as `iter_documents` finds them, except
  that a line of only non-ASCII whitespace (e.g. U+00A0) separates documents when streamed but not when seeking.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import heapq
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from cptlab.corpus import ReadOptions, SplitSource, iter_documents, open_corpus
from cptlab.errors import CptlabError, UsageError

SEEKABLE = (".txt", ".jsonl")
DEFAULT_SAMPLE_BYTES = 8_000_000
_BLANK_RUN = re.compile(rb"\n(?:[^\S\n]*\n)+")  # one or more blank (whitespace-only) lines, as iter_documents sees them


@dataclass
class SampleSpec:
    """How many documents to sample from each side, and how. Exactly one of `docs`/`bytes` is used (docs wins)."""

    docs: int | None = None
    bytes: int | None = DEFAULT_SAMPLE_BYTES
    seed: int = 0
    stream_limit: int = 256 * 2**20  # sources larger than this (in bytes, all files) are seek-sampled when possible
    embedding_docs: int = 128


def make_spec(docs: int | None = None, bytes: int | None = None, seed: int = 0, **kw) -> SampleSpec:
    """A SampleSpec from `--sample-docs N | --sample-bytes N` (at most one; neither = the default 8 MB)."""
    if docs is not None and bytes is not None:
        raise UsageError("--sample-docs and --sample-bytes: give one of them, not both")
    for flag, value in (("--sample-docs", docs), ("--sample-bytes", bytes)):
        if value is not None and int(value) < 1:
            raise UsageError(f"{flag} {value}: must be a positive number")
    if docs is not None:
        return SampleSpec(docs=int(docs), bytes=None, seed=int(seed), **kw)
    return SampleSpec(bytes=int(bytes) if bytes is not None else DEFAULT_SAMPLE_BYTES, seed=int(seed), **kw)


@dataclass
class Sample:
    """The sampled documents of one side (in a seeded random order) and how they were drawn."""

    name: str
    texts: list[str]
    mode: str  # "stream" | "seek"
    source_bytes: int  # total size of the source files (0 when unknown, e.g. HF datasets)
    source_documents: int | None  # known when streamed
    skipped: dict = field(default_factory=dict)
    origin: str = ""  # the files (or dataset) it was drawn from, for messages

    @property
    def bytes(self) -> int:
        return sum(len(t.encode("utf-8")) for t in self.texts)

    def describe(self) -> dict:
        return {"mode": self.mode, "documents": len(self.texts), "bytes": self.bytes,
                "source_bytes": self.source_bytes, "source_documents": self.source_documents,
                "skipped": dict(self.skipped)}


# ---------------------------------------------------------------------------------------------------- sources


def resolve_reference(spec: str | Path, split: str = "train") -> tuple[str, list[SplitSource]]:
    """REF is a corpus (a root dir, a corpus .yaml manifest or an `hf:` spec; all its domains with `split`
    pooled), `ROOT:dom1,dom2` (those domains of a local corpus) or a single text file."""
    from cptlab.corpus.layout import MANIFEST_SUFFIXES

    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file() and not path.name.lower().endswith(MANIFEST_SUFFIXES):
        return path.name, [SplitSource(path.stem, split, [path])]
    target: str | Path = path
    domains: list[str] | None = None
    if spec.startswith("hf:"):
        target = spec
    elif not path.exists() and ":" in spec:
        root, _, names = spec.rpartition(":")
        target = Path(root).expanduser()
        domains = [d.strip() for d in names.split(",") if d.strip()]
        if not domains:
            raise UsageError(f"--reference {spec}: no domain names after ':'")
    if isinstance(target, Path) and not target.exists():
        raise CptlabError(f"--reference {spec}: no such file or directory")
    corpus = open_corpus(target)
    names = domains or [d for d in corpus.domain_names() if split in corpus.domains[d]]
    if not names:
        raise CptlabError(f"--reference {spec}: no domain has a {split!r} split")
    return spec, [corpus.source(d, split) for d in names]


def _source_files(sources: list[SplitSource]) -> list[Path] | None:
    """The files of the sources, or None when some source is not a set of files (an HF dataset)."""
    files: list[Path] = []
    for s in sources:
        if s.hf is not None or not s.files:
            return None
        files += [Path(f) for f in s.files]
    return files


# ---------------------------------------------------------------------------------------------------- sampling


def _doc_key(text: str, seed: int) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little")


def bottom_k(docs: Iterable[str], spec: SampleSpec) -> list[str]:
    """The documents with the smallest seeded hashes: `spec.docs` of them, or the fewest reaching `spec.bytes`.

    The result (sorted by hash, ties broken by text) is the same for any order of `docs`.
    """
    heap: list[tuple[int, str, int]] = []  # max-heap on the hash via its negation: the root is evicted first
    total = 0
    for text in docs:
        key = _doc_key(text, spec.seed)
        size = len(text.encode("utf-8")) if spec.docs is None else 1
        item = (-key, text, size)
        if spec.docs is not None:
            if len(heap) < spec.docs:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
            continue
        heapq.heappush(heap, item)
        total += size
        while total - heap[0][2] >= spec.bytes:
            total -= heapq.heappop(heap)[2]
    return [text for _, text, _ in sorted(heap, reverse=True)]


def sample_documents(name: str, sources: list[SplitSource], spec: SampleSpec,
                     read_options: ReadOptions | None = None) -> Sample:
    """A seeded sample of the documents of `sources` (pooled): streamed bottom-k, or seek sampling when large."""
    from cptlab.corpus import ReadStats

    read_options = read_options or ReadOptions()
    origin = "; ".join(s.describe() for s in sources)
    files = _source_files(sources)
    size = sum(f.stat().st_size for f in files) if files else 0
    seek_options = _seek_options(sources, files, read_options)
    if seek_options is not None and size > spec.stream_limit:
        texts, skipped = _seek_sample(files, spec, seek_options)
        return Sample(name, texts, "seek", size, None, skipped, origin)
    stats = ReadStats()

    def stream() -> Iterator[str]:
        for s in sources:
            yield from iter_documents(s, read_options, stats)

    texts = bottom_k(stream(), spec)
    return Sample(name, texts, "stream", size, stats.documents, dict(stats.skipped), origin)


def _seek_options(sources: list[SplitSource], files: list[Path] | None,
                  options: ReadOptions) -> ReadOptions | None:
    """The read options of a seek sample, or None when the sources must be streamed (compressed or parquet
    files, a `datasets` spec, or sources whose manifest settings differ from each other)."""
    if files is None or not all(f.name.endswith(SEEKABLE) for f in files):
        return None
    settings = {(s.format, s.text_field, s.txt_mode) for s in sources}
    if len(settings) != 1:
        return None
    fmt, text_field, txt_mode = settings.pop()
    if fmt not in (None, "txt", "jsonl"):
        return None
    return dataclasses.replace(options, text_field=text_field or options.text_field,
                               txt_mode=txt_mode or options.txt_mode)


def _seek_sample(files: list[Path], spec: SampleSpec, options: ReadOptions) -> tuple[list[str], dict]:
    sizes = np.array([f.stat().st_size for f in files], dtype=np.int64)
    ends = np.cumsum(sizes)
    rng = np.random.default_rng(spec.seed)
    seen: set[tuple[int, int]] = set()
    texts: list[str] = []
    skipped: Counter = Counter()
    total = 0
    want_docs = spec.docs
    misses = 0
    spans: list[tuple[list[int], list[int]]] = [([], []) for _ in files]  # scanned stretches, per file
    handles = [open(f, "rb") for f in files]
    try:
        while misses < 1000 + 10 * len(texts):
            if want_docs is not None and len(texts) >= want_docs:
                break
            if want_docs is None and total >= spec.bytes:
                break
            u = int(rng.integers(0, int(ends[-1])))
            fi = int(np.searchsorted(ends, u, side="right"))
            offset = u - (int(ends[fi - 1]) if fi else 0)
            los, his = spans[fi]
            i = bisect.bisect_right(los, offset) - 1
            if i >= 0 and offset < his[i]:  # inside a stretch already scanned: its next document is drawn already
                misses += 1
                continue
            found = _doc_after(handles[fi], int(sizes[fi]), offset, options)
            if found is not None and found[0] > offset:  # remember: no document starts in (offset, start)
                i = bisect.bisect_right(los, offset)
                los.insert(i, offset)
                his.insert(i, found[0])
            if found is None or (fi, found[0]) in seen:
                misses += 1
                continue
            start, raw = found
            seen.add((fi, start))
            text = _decode_doc(raw, files[fi], start, options, skipped)
            if text is None:
                misses += 1
                continue
            texts.append(text)
            total += len(text.encode("utf-8"))
    finally:
        for h in handles:
            h.close()
    return texts, dict(skipped)


def _find(handle, size: int, pos: int, pattern: re.Pattern) -> tuple[int, int] | None:
    """(start, end) in the file of the first match of `pattern` at or after `pos` that no later byte could extend.

    Reads on in doubling blocks; every pattern here starts with a newline (or matches at the start), so a search
    resumes at the last newline already read.
    """
    handle.seek(pos)
    buf = handle.read(8192)
    block, at = 8192, 0
    while True:
        eof = pos + len(buf) >= size
        m = pattern.search(buf, at)
        if m and (m.end() < len(buf) or eof):
            return pos + m.start(), pos + m.end()
        if eof:
            return None
        at = m.start() if m else max(0, buf.rfind(b"\n"))
        block = min(block * 2, 2**26)
        buf += handle.read(block)


_LEADING_BLANK = re.compile(rb"(?:[^\S\n]*\n)*")
_DOC_END = re.compile(rb"\n[^\S\n]*(?:\n|\Z)")
_LINE_END = re.compile(rb"\n|\Z")
_NEWLINE = re.compile(rb"\n(?:[^\S\n]*\n)*")  # line mode: a line break and any blank lines after it


def _doc_after(handle, size: int, offset: int, options: ReadOptions) -> tuple[int, bytes] | None:
    """(start, raw bytes) of the first document starting after `offset`; past the last one, the file's first."""
    by_line = handle.name.endswith(".jsonl") or options.txt_mode == "line"
    boundary, doc_end = (_NEWLINE, _LINE_END) if by_line else (_BLANK_RUN, _DOC_END)
    handle.seek(offset)
    buf = handle.read(16384)  # fast path: boundary and the whole document in one read
    eof = offset + len(buf) >= size
    m = boundary.search(buf)
    if m and m.end() < len(buf):
        e = doc_end.search(buf, m.end())
        if e and (e.end() < len(buf) or eof):
            return offset + m.end(), _trim(buf[m.end(): e.start()], by_line)
    found = _find(handle, size, offset, boundary)
    start = found[1] if found else size
    if start >= size:  # wrap around to the first document of the file
        start = _find(handle, size, 0, _LEADING_BLANK)[1]
        if start >= size:
            return None
    end = _find(handle, size, start, doc_end)
    stop = end[0] if end else size
    handle.seek(start)
    return start, _trim(handle.read(stop - start), by_line)


def _trim(raw: bytes, by_line: bool) -> bytes:
    if by_line:
        return raw.rstrip(b"\r")
    raw = raw[_LEADING_BLANK.match(raw).end():]  # a blank line a block boundary hid from the boundary search
    return raw[:-1] if raw.endswith(b"\r") else raw  # "\r\n" before the blank line: not part of the document


def _decode_doc(raw: bytes, path: Path, start: int, options: ReadOptions, skipped: Counter) -> str | None:
    """The document's text as `iter_documents` would give it, or None (skipped; counted under its reason)."""
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        if options.on_decode_error == "error":
            raise CptlabError(f"{path}: invalid UTF-8 in the document at byte {start} (set on_decode_error to "
                              "replace or skip)") from None
        if options.on_decode_error == "skip":
            skipped["invalid_utf8"] += 1
            return None
        text = raw.decode("utf-8", errors="replace")
    if path.name.endswith(".jsonl"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        reason = ("invalid_json" if not isinstance(record, dict) else
                  "missing_field" if record.get(options.text_field) is None else
                  "not_a_string" if not isinstance(record[options.text_field], str) else None)
        if reason is not None:
            if options.on_bad_record == "error":
                raise CptlabError(f"{path}: the record at byte {start}: {reason.replace('_', ' ')} "
                                  f"(text field {options.text_field!r})")
            skipped[reason] += 1
            return None
        text = record[options.text_field]
    if not text.strip():
        skipped["empty"] += 1
        return None
    return text
