"""Stream documents from corpus files. FIRST VERSION (happy path); the corpus issue hardens it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from cptlab.corpus.layout import SplitSource


@dataclass
class ReadOptions:
    txt_mode: Literal["blank-line", "line"] = "blank-line"
    text_field: str = "text"
    on_decode_error: Literal["error", "replace", "skip"] = "error"
    on_bad_record: Literal["error", "skip"] = "error"


@dataclass
class ReadStats:
    documents: int = 0
    words: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count


def iter_documents(source: SplitSource, options: ReadOptions | None = None,
                   stats: ReadStats | None = None) -> Iterator[str]:
    options = options or ReadOptions()
    for path in source.files:
        for doc in _iter_file(Path(path), options):
            if not doc.strip():
                if stats is not None:
                    stats.skipped["empty"] += 1
                continue
            if stats is not None:
                stats.documents += 1
                stats.words += len(doc.split())
                stats.bytes += len(doc.encode("utf-8"))
            yield doc


def _iter_file(path: Path, options: ReadOptions) -> Iterator[str]:
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(columns=[options.text_field]):
            yield from batch.column(0).to_pylist()
        return
    text = path.read_text(encoding="utf-8")
    if name.endswith(".jsonl"):
        for line in text.splitlines():
            if line.strip():
                yield json.loads(line)[options.text_field]
    elif options.txt_mode == "line":
        yield from text.splitlines()
    else:
        buf: list[str] = []
        for line in text.split("\n"):
            if line.strip():
                buf.append(line)
            elif buf:
                yield "\n".join(buf)
                buf = []
        if buf:
            yield "\n".join(buf)
