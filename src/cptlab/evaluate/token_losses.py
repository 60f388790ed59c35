"""Per-token loss files: one parquet row per scored token, so two evaluations of the same text can be compared.

Columns: `domain` (string, dictionary-encoded), `doc` (int32: the document's index among the split's non-empty
documents; 0 for the whole stream in m2d2 mode), `position` (int32: the token's index in the document's token
list, or in the stream), `token_id` (int32), `nll` (float32, nats). Rows are in evaluation order: domain, doc,
position. Key-value metadata: `cptlab.settings` (the evaluation's settings, JSON) and `cptlab.token_text`
(JSON `{id: decoded text}` for every token id that occurs, so `compare` needs no tokenizer), and
`cptlab.special_ids` (JSON list). The file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cptlab.errors import CptlabError

COLUMNS = ("domain", "doc", "position", "token_id", "nll")
ROW_GROUP_ROWS = 1 << 20


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("domain", pa.dictionary(pa.int32(), pa.string())),
        ("doc", pa.int32()),
        ("position", pa.int32()),
        ("token_id", pa.int32()),
        ("nll", pa.float32()),
    ])


class TokenLossWriter:
    """Appends rows in batches; `close(tokenizer)` adds the token texts and renames the file into place."""

    def __init__(self, path, settings: dict):
        import pyarrow.parquet as pq

        self.path = Path(path)
        if self.path.is_dir():
            raise CptlabError(f"--token-losses {self.path}: is a directory; give a .parquet file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.settings = settings
        self.schema = _schema().with_metadata({"cptlab.settings": json.dumps(settings)})
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.seen: set[int] = set()
        self.pending: list = []
        self.pending_rows = 0

    def write(self, domain: str, doc: int, token_ids, nll, positions=None) -> None:
        import pyarrow as pa

        n = len(nll)
        if positions is None:
            positions = np.arange(n, dtype=np.int32)
        token_ids = np.asarray(token_ids, dtype=np.int32)
        self.seen.update(np.unique(token_ids).tolist())
        table = pa.table({
            "domain": pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), pa.array([domain])),
            "doc": pa.array(np.full(n, doc, dtype=np.int32)),
            "position": pa.array(np.asarray(positions, dtype=np.int32)),
            "token_id": pa.array(token_ids),
            "nll": pa.array(np.asarray(nll, dtype=np.float32)),
        }, schema=self.schema)
        self.pending.append(table)
        self.pending_rows += n
        if self.pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            table = pa.concat_tables(self.pending).unify_dictionaries()
            self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            self.pending, self.pending_rows = [], 0

    def close(self, tokenizer) -> Path:
        self._flush()
        ids = sorted(self.seen)
        texts = {str(i): tokenizer.decode([i]) for i in ids}
        special = sorted(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []))
        self.writer.add_key_value_metadata({"cptlab.token_text": json.dumps(texts),
                                            "cptlab.special_ids": json.dumps(special)})
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


@dataclass
class TokenLosses:
    """A per-token loss file in memory: numpy columns, `domains[domain_code[k]]` is row k's domain."""

    path: Path
    domains: list[str]
    domain_code: np.ndarray  # int32 index into `domains`
    doc: np.ndarray
    position: np.ndarray
    token_id: np.ndarray
    nll: np.ndarray  # float64
    settings: dict
    token_text: dict[int, str]
    special_ids: set[int]

    def __len__(self) -> int:
        return len(self.nll)


def read_token_losses(path) -> TokenLosses:
    """Read a file written by `perplexity(token_losses=...)`; errors name the file and what is wrong."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise CptlabError(f"{path}: file not found")
    try:
        pf = pq.ParquetFile(path)
        meta = pf.metadata.metadata or {}
        table = pf.read()
    except (pa.ArrowException, OSError) as e:
        raise CptlabError(f"{path}: not a readable parquet file ({e})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise CptlabError(f"{path}: not a cptlab per-token loss file: missing column(s) {', '.join(missing)} "
                          f"(expected {', '.join(COLUMNS)})")
    dom = table.column("domain").combine_chunks()
    if pa.types.is_dictionary(dom.type):
        dictionary = [str(x) for x in dom.dictionary.to_pylist()]
        codes = dom.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        # normalise to a sorted-unique dictionary of the domains that occur, in order of appearance
        used, first = np.unique(codes, return_index=True)
        order = used[np.argsort(first)]
        domains = [dictionary[c] for c in order]
        remap = np.zeros(len(dictionary), dtype=np.int32)
        remap[order] = np.arange(len(order), dtype=np.int32)
        codes = remap[codes] if len(codes) else codes
    else:
        values = dom.to_pylist()
        domains = list(dict.fromkeys(values))
        index = {d: i for i, d in enumerate(domains)}
        codes = np.array([index[v] for v in values], dtype=np.int32)

    def col(name, dtype):
        return table.column(name).to_numpy().astype(dtype, copy=False)

    def meta_json(key, default):
        raw = meta.get(key.encode())
        return json.loads(raw) if raw else default

    return TokenLosses(
        path=path, domains=domains, domain_code=codes, doc=col("doc", np.int64), position=col("position", np.int64),
        token_id=col("token_id", np.int64), nll=col("nll", np.float64),
        settings=meta_json("cptlab.settings", {}),
        token_text={int(k): v for k, v in meta_json("cptlab.token_text", {}).items()},
        special_ids=set(meta_json("cptlab.special_ids", [])),
    )
