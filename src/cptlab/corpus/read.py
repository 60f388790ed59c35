"""Stream documents from a corpus split: .txt(.gz), .jsonl(.gz), .parquet, or a `datasets` spec.

Memory stays constant in the corpus size: text files are read line by line (a long line in 1 MiB pieces),
parquet by row batches, datasets by streaming. Documents are returned verbatim, except that in .txt blank-line
mode the line break before a separating blank line is not part of the document. Empty or whitespace-only
documents are skipped and counted.

.txt documents: `txt_mode="blank-line"` (default): documents are separated by one or more blank lines (empty or
whitespace-only); `"line"`: every line is a document (without its line break, "\\n" or "\\r\\n").
.jsonl: one JSON object per line, text in `text_field` (default `text`); whitespace-only lines are ignored.

`template` (a `cptlab.corpus.template.Template`, a format string or a dict; see that module) wraps every
document, e.g. "{text} It was {label}.", with fields from the document's record or a labels file; emptiness is
judged before, counts (documents, words, bytes) after templating.

Skip reasons counted in `ReadStats.skipped`:
    empty          empty or whitespace-only document
    invalid_utf8   document with invalid UTF-8, under on_decode_error="skip"
    invalid_json   jsonl line that is not JSON or not an object, under on_bad_record="skip"
    missing_field  record without the text field (or null), under on_bad_record="skip"
    not_a_string   record whose text field is not a string, under on_bad_record="skip"
    missing_label  document without a value for a template field, under on_bad_record="skip"
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cptlab.corpus.layout import SplitSource, file_format
from cptlab.corpus.template import Labels, Template, field_value, parse_template
from cptlab.corpus.textio import iter_lines
from cptlab.errors import CptlabError, UsageError

TXT_MODES = ("blank-line", "line")
DECODE_ERROR_MODES = ("error", "replace", "skip")
BAD_RECORD_MODES = ("error", "skip")
PARQUET_BATCH_ROWS = 256
_BIG = 1 << 20  # documents longer than this are counted in slices (bounded temporary memory)


@dataclass
class ReadOptions:
    txt_mode: Literal["blank-line", "line"] = "blank-line"
    text_field: str = "text"
    on_decode_error: Literal["error", "replace", "skip"] = "error"
    on_bad_record: Literal["error", "skip"] = "error"
    template: Template | None = None  # PCP: wrap each document (a format string or dict is parsed)

    def __post_init__(self):
        self.template = parse_template(self.template)
        for name, allowed in (("txt_mode", TXT_MODES), ("on_decode_error", DECODE_ERROR_MODES),
                              ("on_bad_record", BAD_RECORD_MODES)):
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise UsageError(f"text_field: expected a non-empty string, got {self.text_field!r}")


@dataclass
class ReadStats:
    """What reading saw. `words` = `len(doc.split())` (runs of non-whitespace; lm-eval's word perplexity uses
    `len(re.split(r"\\s+", doc))`, which also counts empty strings at the ends); `bytes` = UTF-8 bytes."""

    documents: int = 0
    words: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    replaced: int = 0  # invalid UTF-8 sequences replaced by U+FFFD (on_decode_error="replace")
    files: int = 0  # files opened (0 for a datasets spec)

    def add(self, other: ReadStats) -> None:
        self.documents += other.documents
        self.words += other.words
        self.bytes += other.bytes
        self.skipped.update(other.skipped)
        self.replaced += other.replaced
        self.files += other.files

    def to_dict(self) -> dict:
        return {"files": self.files, "documents": self.documents, "words": self.words, "bytes": self.bytes,
                "skipped": dict(sorted(self.skipped.items())), "replaced": self.replaced}


_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())
_TO_SPACE_OR_X = bytes.maketrans(bytes(range(256)), bytes(0x20 if c in _ASCII_SPACE else 0x78 for c in range(256)))
# Non-ASCII characters for which str.isspace() is true (Unicode White_Space; tests check this list), by lead byte.
WIDE_SPACES = ("\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
               "\u2028\u2029\u202f\u205f\u3000")
_WIDE_BY_LEAD: dict[int, list[bytes]] = {}
for _c in WIDE_SPACES:
    _WIDE_BY_LEAD.setdefault(_c.encode("utf-8")[0], []).append(_c.encode("utf-8"))


def _count_words_slice(part: str) -> int:
    """Words in a slice, as str.split sees them, in a few C-speed passes over its bytes (no list of words)."""
    data = part.encode("utf-8")
    if not part.isascii():
        for lead, group in _WIDE_BY_LEAD.items():
            if lead in data:
                for ws in group:  # UTF-8 is self-synchronizing: a match is always a whole character
                    data = data.replace(ws, b" ")
    data = data.translate(_TO_SPACE_OR_X)
    return data.count(b" x") + (data[:1] == b"x")


def count_words(doc: str) -> int:
    """`len(doc.split())`: runs of non-whitespace characters; long documents are counted in slices."""
    if len(doc) <= _BIG:
        return len(doc.split())
    n, prev_space = 0, True
    for i in range(0, len(doc), _BIG):
        part = doc[i:i + _BIG]
        n += _count_words_slice(part)
        if not prev_space and not part[0].isspace():
            n -= 1  # a word cut at the slice boundary was counted twice
        prev_space = part[-1].isspace()
    return n


def count_bytes(doc: str) -> int:
    if doc.isascii():
        return len(doc)
    if len(doc) <= _BIG:
        return len(doc.encode("utf-8"))
    return sum(len(doc[i:i + _BIG].encode("utf-8")) for i in range(0, len(doc), _BIG))


def iter_documents(source: SplitSource, options: ReadOptions | None = None,
                   stats: ReadStats | None = None) -> Iterator[str]:
    """The documents of one split, in file order; see the module doc for formats, options and skip reasons."""
    options = options or ReadOptions()
    stats = stats if stats is not None else ReadStats()
    template = options.template if options.template and options.template.applies_to(source.domain) else None
    opts = dataclasses.replace(options, text_field=source.text_field or options.text_field,
                               txt_mode=source.txt_mode or options.txt_mode, template=template)
    if template is not None:
        yield from _templated(source, opts, stats, template)
        return
    for raw, _, _ in _iter_raw(source, opts, stats):
        if not raw or raw.isspace():
            stats.skipped["empty"] += 1
            continue
        stats.documents += 1
        stats.words += count_words(raw)
        stats.bytes += count_bytes(raw)
        yield raw


def _where(loc, index: int) -> str:
    if loc is None:
        return f"document {index}"
    path, n, kind = loc
    return f"{path}:{n}" if kind == "line" else f"{path}: {kind} {n}"


def _templated(source: SplitSource, options: ReadOptions, stats: ReadStats, template: Template) -> Iterator[str]:
    """Documents wrapped in the template; document i takes its labels-file fields from row i."""
    lpath = template.labels_path(source.domain, source.split)
    labels = Labels(lpath) if lpath is not None else None
    index = 0
    for raw, record, loc in _iter_raw(source, options, stats):
        if not raw or raw.isspace():
            stats.skipped["empty"] += 1
            continue
        i, index = index, index + 1
        fields = dict(record or {})
        if labels is not None:
            fields.update(labels.get(i) or {})
        missing = [f for f in template.fields if fields.get(f) is None]
        if missing:
            where = f"{_where(loc, i)} (document {i} of {source.domain}/{source.split})"
            sources = "its record" + (f" or the labels file {lpath}" if lpath else "")
            _bad(where, "missing_label", f"template field {missing[0]!r} not found in {sources}", options, stats)
            continue
        doc = template.render(raw, fields)
        stats.documents += 1
        stats.words += count_words(doc)
        stats.bytes += count_bytes(doc)
        yield doc
    if labels is not None:
        labels.check_used(index, f"{source.domain}/{source.split}")


def _iter_raw(source: SplitSource, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    if source.hf:
        from cptlab.corpus.hf import iter_hf_texts

        for text in iter_hf_texts(source, options.text_field, options.on_bad_record, stats):
            yield text, None, None
        return
    for path in source.files:
        path = Path(path)
        fmt = source.format or file_format(path)
        if not path.is_file():
            raise CptlabError(f"{path}: no such file (corpus {source.domain}/{source.split})")
        stats.files += 1
        if fmt == "parquet":
            yield from _parquet(path, options, stats)
        elif fmt == "jsonl":
            yield from _jsonl(path, options, stats)
        elif fmt == "txt":
            yield from (_txt_lines if options.txt_mode == "line" else _txt_blocks)(path, options, stats)
        else:
            raise CptlabError(f"{path}: unknown format (expected .txt, .jsonl, .parquet, .txt.gz, .jsonl.gz)")


def _strip_eol(text: str) -> str:
    if text.endswith("\n"):
        return text[:-2] if text.endswith("\r\n") else text[:-1]
    return text


def _decode_ok(invalid: int, options: ReadOptions, stats: ReadStats) -> bool:
    """Whether a document with `invalid` replaced sequences is kept (and count it)."""
    if not invalid:
        return True
    if options.on_decode_error == "skip":
        stats.skipped["invalid_utf8"] += 1
        return False
    stats.replaced += invalid
    return True


def _txt_lines(path: Path, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    for line in iter_lines(path, options.on_decode_error):
        if _decode_ok(line.invalid, options, stats):
            yield _strip_eol(line.text), None, (path, line.number, "line")


def _txt_blocks(path: Path, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    buf: list[str] = []
    invalid = 0
    first = 0  # line number where the current document starts
    for line in iter_lines(path, options.on_decode_error):
        text = line.text
        if not text or text.isspace():
            if buf:
                if _decode_ok(invalid, options, stats):
                    yield _strip_eol(buf[0] if len(buf) == 1 else "".join(buf)), None, (path, first, "line")
                buf, invalid = [], 0
            continue
        if not buf:
            first = line.number
        buf.append(text)
        invalid += line.invalid
    if buf and _decode_ok(invalid, options, stats):
        yield _strip_eol(buf[0] if len(buf) == 1 else "".join(buf)), None, (path, first, "line")


def _bad(where: str, reason: str, message: str, options: ReadOptions, stats: ReadStats) -> None:
    if options.on_bad_record == "skip":
        stats.skipped[reason] += 1
        return
    raise CptlabError(f"{where}: {message} (--on-bad-record skip to skip such records)")


def _type_name(value) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _record_fields(record: dict, want: tuple[str, ...], where: str, options: ReadOptions, stats: ReadStats):
    """The template fields a record has (None for a value that cannot be a label, after counting it)."""
    out = {}
    for f in want:
        try:
            out[f] = field_value(record.get(f))
        except ValueError as e:
            _bad(where, "not_a_string", f"template field {f!r} {e}", options, stats)
            return None
    return out


def _jsonl(path: Path, options: ReadOptions, stats: ReadStats) -> Iterator[tuple]:
    key = options.text_field
    want = options.template.fields if options.template else ()
    for line in iter_lines(path, options.on_decode_error):
        if not line.text or line.text.isspace():
            continue
        where = f"{path}:{line.number}"
        if line.invalid and options.on_decode_error == "skip":
            stats.skipped["invalid_utf8"] += 1
            continue
        try:
            record = json.loads(line.text)
        except json.JSONDecodeError as e:
            _bad(where, "invalid_json", f"not valid JSON ({e.msg} at column {e.colno})", options, stats)
            continue
        except RecursionError:
            _bad(where, "invalid_json", "not valid JSON (nested too deeply)", options, stats)
            continue
        if not isinstance(record, dict):
            _bad(where, "invalid_json", f"expected a JSON object, got {_type_name(record)}", options, stats)
            continue
        value = record.get(key)
        if value is None:
            fields = ", ".join(record) or "none"
            msg = f"field {key!r} is null" if key in record else f"no field {key!r} (fields: {fields}; see --text-field)"
            _bad(where, "missing_field", msg, options, stats)
            continue
        if not isinstance(value, str):
            _bad(where, "not_a_string", f"field {key!r} is {_type_name(value)}, expected a string", options, stats)
            continue
        fields = None
        if want:
            fields = _record_fields(record, want, where, options, stats)
            if fields is None:
                continue
        if line.invalid:
            stats.replaced += line.invalid
        yield value, fields, (path, line.number, "line")


def _parquet(path: Path, options: ReadOptions, stats: ReadStats) -> Iterator[tuple]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    key = options.text_field
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise CptlabError(f"{path}: not a readable parquet file ({e})") from None
    if key not in schema.names:
        raise CptlabError(f"{path}: no column {key!r} (columns: {', '.join(schema.names) or 'none'}; "
                          f"see --text-field)")
    t = schema.field(key).type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        raise CptlabError(f"{path}: column {key!r} has type {t}, expected strings")
    want = [f for f in (options.template.fields if options.template else ()) if f in schema.names and f != key]
    row = 0
    batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[key, *want])
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise CptlabError(f"{path}: cannot read rows from {row} ({e})") from None
        extra = [batch.column(j + 1).to_pylist() for j in range(len(want))]
        for r, value in enumerate(batch.column(0).to_pylist()):
            if value is None:
                _bad(f"{path}: row {row}", "missing_field", f"column {key!r} is null", options, stats)
            else:
                fields = _record_fields({f: col[r] for f, col in zip(want, extra)}, tuple(want),
                                        f"{path}: row {row}", options, stats) if want else None
                if fields is not None or not want:
                    yield value, fields, (path, row, "row")
            row += 1
