"""Document templates for prompt-based continued pretraining (PCP): wrap each document before it is tokenized.

A template is a Python format string over named fields, e.g. `"{text} It was {label}."`:
  - `{text}` is the document (required);
  - any other field comes from the document's record (a .jsonl key or a .parquet column of the same row), or from
    a labels file: one row per document of the split, in document order, e.g. a pseudo-labelling model's
    predictions. A field in both is taken from the labels file.

Labels file (`labels`, may contain `{domain}` and `{split}`, e.g. `labels/{domain}/{split}.jsonl`):
  .jsonl   one JSON value per line: an object (its keys are fields; an optional integer `doc` key says which
           document, otherwise the line order does) or a scalar (the field `label`)
  .txt     one label per line (the field `label`)
  .parquet one row per document; its columns are fields (an optional `doc` column as above)
Document i is the i-th document that reading the split without a template gives (empty documents and skipped
records do not count), so labels written next to `iter_documents(source)` line up. A labels file with more
rows than the split has documents is an error (it belongs to other data).

`domains` limits the template to some domains (e.g. the CPT target, not the replayed general data).
Templates are part of the read options, so a token cache built with one is rebuilt when it changes.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

from cptlab.errors import CptlabError, UsageError

KEYS = ("format", "labels", "domains")


@dataclass(frozen=True)
class Template:
    format: str
    labels: str | None = None
    domains: tuple[str, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.format, str) or not self.format:
            raise UsageError(f"template.format: expected a non-empty string, got {self.format!r}")
        names = []
        try:
            parsed = list(string.Formatter().parse(self.format))
        except ValueError as e:
            raise UsageError(f"template.format {self.format!r}: {e} (write {{{{ and }}}} for literal braces)") from None
        for _, name, spec, _ in parsed:
            if name is None:
                continue
            if not name.isidentifier():
                raise UsageError(f"template.format {self.format!r}: field {{{name}}} must be a plain name "
                                 f"(no positions, attributes or indexes)")
            if spec and ("{" in spec):
                raise UsageError(f"template.format {self.format!r}: nested fields are not supported")
            names.append(name)
        if "text" not in names:
            raise UsageError(f"template.format {self.format!r}: must contain {{text}} (the document)")
        object.__setattr__(self, "_fields", tuple(dict.fromkeys(n for n in names if n != "text")))
        if self.labels is not None and (not isinstance(self.labels, str) or not self.labels):
            raise UsageError(f"template.labels: expected a file path, got {self.labels!r}")
        if self.domains is not None:
            doms = (self.domains,) if isinstance(self.domains, str) else tuple(self.domains)
            if not doms or not all(isinstance(d, str) and d for d in doms):
                raise UsageError(f"template.domains: expected a list of domain names, got {self.domains!r}")
            object.__setattr__(self, "domains", doms)

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields besides `text`, in order of first use."""
        return self._fields

    def applies_to(self, domain: str) -> bool:
        return self.domains is None or domain in self.domains

    def labels_path(self, domain: str, split: str) -> Path | None:
        if self.labels is None:
            return None
        try:
            return Path(self.labels.format(domain=domain, split=split)).expanduser().resolve()
        except (KeyError, IndexError, ValueError) as e:
            raise UsageError(f"template.labels {self.labels!r}: only {{domain}} and {{split}} can be used ({e})") from None

    def to_dict(self) -> dict:
        return {"format": self.format, "labels": self.labels,
                "domains": list(self.domains) if self.domains is not None else None}

    def render(self, text: str, fields: dict) -> str:
        return self.format.format_map({**fields, "text": text})


def parse_template(value) -> Template | None:
    """A `Template` from a format string, a dict with keys format/labels/domains, a `Template`, or None."""
    if value is None or isinstance(value, Template):
        return value
    if isinstance(value, str):
        return Template(value)
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(KEYS))
        if unknown:
            raise UsageError(f"template: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(KEYS)})")
        if "format" not in value:
            raise UsageError("template: missing key 'format' (e.g. format: \"{text} It was {label}.\")")
        return Template(value["format"], value.get("labels"), value.get("domains"))
    raise UsageError(f"template: expected a format string or a mapping, got {type(value).__name__}")


def field_value(value):
    """A record value as template text: strings as they are, numbers and booleans as JSON writes them;
    None (missing) stays None; lists/objects are not labels (ValueError)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise ValueError(f"is {type(value).__name__}, expected a string or a number")


class Labels:
    """The rows of a labels file, by document index."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[int, dict] = {}
        if not path.is_file():
            raise CptlabError(f"template.labels: {path}: no such file")
        name = path.name.lower()
        if name.endswith(".parquet"):
            self._parquet()
        elif name.endswith((".jsonl", ".jsonl.gz")):
            self._jsonl()
        elif name.endswith((".txt", ".txt.gz")):
            self._txt()
        else:
            raise CptlabError(f"template.labels: {path}: expected a .jsonl, .txt or .parquet file")

    def _add(self, where: str, i: int, row: dict) -> None:
        if "doc" in row:
            doc = row.pop("doc")
            if isinstance(doc, bool) or not isinstance(doc, int) or doc < 0:
                raise CptlabError(f"{where}: 'doc' must be a document index (integer >= 0), got {doc!r}")
            i = doc
        if i in self.rows:
            raise CptlabError(f"{where}: a second row for document {i}")
        fields = {}
        for k, v in row.items():
            try:
                fields[str(k)] = field_value(v)
            except ValueError as e:
                raise CptlabError(f"{where}: field {k!r} {e}") from None
        self.rows[i] = fields

    def _jsonl(self) -> None:
        from cptlab.corpus.textio import iter_lines

        i = 0
        for line in iter_lines(self.path):
            if not line.text.strip():
                continue
            where = f"{self.path}:{line.number}"
            try:
                value = json.loads(line.text)
            except json.JSONDecodeError as e:
                raise CptlabError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            self._add(where, i, value if isinstance(value, dict) else {"label": value})
            i += 1

    def _txt(self) -> None:
        from cptlab.corpus.textio import iter_lines

        for i, line in enumerate(iter_lines(self.path)):
            self._add(f"{self.path}:{line.number}", i, {"label": line.text.rstrip("\r\n")})

    def _parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(self.path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise CptlabError(f"template.labels: {self.path}: not a readable parquet file ({e})") from None
        for i, row in enumerate(rows):
            self._add(f"{self.path}: row {i}", i, dict(row))

    def get(self, i: int) -> dict | None:
        return self.rows.get(i)

    def check_used(self, n_docs: int, label: str) -> None:
        extra = sorted(i for i in self.rows if i >= n_docs)
        if extra:
            raise CptlabError(f"template.labels: {self.path}: has rows for document(s) {extra[0]}"
                              f"{'..' + str(extra[-1]) if len(extra) > 1 else ''}, but {label} has only {n_docs} "
                              f"documents (labels for other data?)")
