"""Helpers for the corpus tests: write files of every format, run the CLI and capture its output."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest


def write_txt(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_jsonl(path: Path, records: list, field: str = "text") -> Path:
    lines = [json.dumps({field: r}) if not isinstance(r, dict) else json.dumps(r) for r in records]
    return write_txt(path, "".join(line + "\n" for line in lines))


def write_parquet(path: Path, columns: dict, row_group_size: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `cptlab ARGS` run in-process."""
    from cptlab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err
