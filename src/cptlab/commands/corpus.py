"""`cptlab corpus inspect`: count documents, words, bytes and skipped input per domain/split."""

from __future__ import annotations

import json
from enum import Enum

import typer


class TxtMode(str, Enum):
    blank_line = "blank-line"
    line = "line"


class OnDecodeError(str, Enum):
    error = "error"
    replace = "replace"
    skip = "skip"


class OnBadRecord(str, Enum):
    error = "error"
    skip = "skip"

corpus_app = typer.Typer(help="Look at corpora: domains, splits, counts, bad input.", no_args_is_help=True,
                         rich_markup_mode="rich")


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _skipped_text(skipped: dict) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in skipped.items()) if skipped else "0"


def render_table(result: dict):
    from rich.table import Table

    replaced = result["total"]["replaced"] > 0
    table = Table(title=f"corpus {result['corpus']}", title_justify="left")
    table.add_column("domain")
    table.add_column("split")
    for name in ("files", "documents", "words", "bytes"):
        table.add_column(name, justify="right")
    table.add_column("skipped (by reason)")
    if replaced:
        table.add_column("replaced", justify="right")

    def row(domain, split, s, style=None):
        cells = [domain, split, f"{s['files']:,}", f"{s['documents']:,}", f"{s['words']:,}", f"{s['bytes']:,}",
                 _skipped_text(s["skipped"])]
        table.add_row(*cells, *([f"{s['replaced']:,}"] if replaced else []), style=style)

    for domain, splits in result["domains"].items():
        for split, s in splits.items():
            row(domain, split, s)
    table.add_section()
    row("total", "", result["total"], style="bold")
    return table


def register(app: typer.Typer) -> None:
    @corpus_app.command("inspect")
    def inspect(
        root: str = typer.Argument(..., help="Corpus: a directory ROOT/<domain>/<split>.txt|jsonl|parquet, "
                                             "a corpus.yaml manifest, or hf:PATH[:NAME]."),
        txt_mode: TxtMode = typer.Option(TxtMode.blank_line, "--txt-mode",
                                     help="In .txt files, documents are separated by blank lines, or one per line."),
        text_field: str = typer.Option("text", "--text-field", help="Field/column holding the text (jsonl, parquet, "
                                                                      "datasets)."),
        on_decode_error: OnDecodeError = typer.Option(OnDecodeError.error, "--on-decode-error",
                                            help="Invalid UTF-8: stop with an error, replace by U+FFFD, or skip "
                                                 "the document (counted)."),
        on_bad_record: OnBadRecord = typer.Option(OnBadRecord.error, "--on-bad-record",
                                          help="A jsonl/parquet record that is not JSON or lacks the text field: "
                                               "stop with an error, or skip it (counted)."),
        domains: str = typer.Option(None, "--domains", help="Comma-separated domains (default: all)."),
        splits: str = typer.Option(None, "--splits", help="Comma-separated splits (default: all)."),
        as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON on stdout instead of a table."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or log lines."),
    ) -> None:
        """Read every document of a corpus once; print files, documents, words, bytes and skipped input
        (by reason) per domain/split. Words are runs of non-whitespace characters (len(doc.split())).

        Example: cptlab corpus inspect data/m2d2 --txt-mode line --on-decode-error replace --json
        """
        from rich.console import Console

        from cptlab.console import set_quiet
        from cptlab.corpus import ReadOptions, inspect_corpus

        if quiet:
            set_quiet(True)
        options = ReadOptions(txt_mode=txt_mode.value, text_field=text_field,
                              on_decode_error=on_decode_error.value, on_bad_record=on_bad_record.value)
        result = inspect_corpus(root, options, domains=_csv(domains), splits=_csv(splits))
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            Console(soft_wrap=False).print(render_table(result))

    app.add_typer(corpus_app, name="corpus")
