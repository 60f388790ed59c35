"""`cptlab tokenizer train` and `cptlab prepare`: a byte-level BPE from a corpus, and the token cache."""

from __future__ import annotations

import json

import typer

from cptlab.commands.corpus import OnBadRecord, OnDecodeError, TxtMode

tokenizer_app = typer.Typer(help="Tokenizers: train a byte-level BPE on a corpus.", no_args_is_help=True,
                            rich_markup_mode="rich")


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def render_table(summary: dict):
    from rich.table import Table

    table = Table(title=f"token cache {summary['cache_dir']} ({summary['dtype']}, vocab {summary['vocab_size']:,})",
                  title_justify="left")
    for name, justify in (("domain", "left"), ("split", "left"), ("documents", "right"), ("tokens", "right"),
                          ("max id", "right"), ("skipped", "left"), ("status", "left")):
        table.add_column(name, justify=justify)
    for e in summary["entries"]:
        skipped = ", ".join(f"{k} {v:,}" for k, v in e["skipped"].items()) or "0"
        status = "reused" if e["status"] == "reused" else f"built ({e['reason']}, {e['seconds']:.1f} s)"
        table.add_row(e["domain"], e["split"], f"{e['documents']:,}", f"{e['tokens']:,}", str(e["max_id"]),
                      skipped, status)
    return table


def register(app: typer.Typer) -> None:
    @tokenizer_app.command("train")
    def train(
        corpus: str = typer.Option(..., "--corpus", help="Corpus: ROOT/<domain>/<split>.txt|jsonl|parquet, a "
                                                         "corpus.yaml manifest, or hf:PATH[:NAME]."),
        vocab_size: int = typer.Option(..., "--vocab-size", help="Vocabulary size, special tokens included "
                                                                 "(>= 300)."),
        out: str = typer.Option(..., "--out", help="Directory for the HF tokenizer (created or replaced)."),
        domains: str = typer.Option(None, "--domains", help="Comma-separated domains to train on (default: all)."),
        splits: str = typer.Option("train", "--splits", help="Comma-separated splits to train on."),
        max_bytes: int = typer.Option(None, "--max-bytes", help="Use at most this many bytes of text, shared "
                                                                "equally among the domains."),
        min_frequency: int = typer.Option(2, "--min-frequency", help="Merge only pairs seen this often."),
        txt_mode: TxtMode = typer.Option(TxtMode.blank_line, "--txt-mode",
                                         help="In .txt files, documents are separated by blank lines, or one per "
                                              "line."),
        text_field: str = typer.Option("text", "--text-field", help="Field/column holding the text."),
        quiet: bool = typer.Option(False, "--quiet", help="No log lines."),
    ) -> None:
        """Train a byte-level BPE (GPT-2 style; EOS `<|endoftext|>`, BOS `<|bos|>`, PAD `<|pad|>`) on a corpus
        and save it as an HF tokenizer dir that `AutoTokenizer.from_pretrained` loads.

        Example: cptlab tokenizer train --corpus data/m2d2 --vocab-size 8192 --out runs/tokenizer --max-bytes 50000000
        """
        from cptlab.console import log, set_quiet
        from cptlab.corpus import ReadOptions
        from cptlab.tokens.tokenizer import train_tokenizer_on_corpus

        if quiet:
            set_quiet(True)
        options = ReadOptions(txt_mode=txt_mode.value, text_field=text_field)
        tok = train_tokenizer_on_corpus(corpus, vocab_size, out, domains=_csv(domains),
                                        splits=tuple(_csv(splits) or ["train"]), max_bytes=max_bytes,
                                        read_options=options, min_frequency=min_frequency)
        log(f"tokenizer: vocabulary {len(tok):,}, eos {tok.eos_token!r} = {tok.eos_token_id}")
        typer.echo(out)

    app.add_typer(tokenizer_app, name="tokenizer")

    @app.command("prepare")
    def prepare(
        corpus: str = typer.Option(..., "--corpus", help="Corpus: ROOT/<domain>/<split>.txt|jsonl|parquet, a "
                                                         "corpus.yaml manifest, or hf:PATH[:NAME]."),
        tokenizer: str = typer.Option(..., "--tokenizer", help="Tokenizer: an HF tokenizer dir or hub name."),
        out: str = typer.Option(..., "--out", help="Token cache directory (CACHE/<domain>/<split>/...)."),
        domains: str = typer.Option(None, "--domains", help="Comma-separated domains (default: all)."),
        splits: str = typer.Option(None, "--splits", help="Comma-separated splits (default: all)."),
        workers: int = typer.Option(None, "--workers", help="Tokenizer processes (default: one per CPU, at most "
                                                            "8; 1 for small corpora)."),
        force: bool = typer.Option(False, "--force", help="Rebuild even when the cache is current."),
        verify_hash: bool = typer.Option(False, "--verify-hash", help="Compare source sha256s even when size and "
                                                                      "mtime are unchanged."),
        txt_mode: TxtMode = typer.Option(TxtMode.blank_line, "--txt-mode",
                                         help="In .txt files, documents are separated by blank lines, or one per "
                                              "line."),
        text_field: str = typer.Option("text", "--text-field", help="Field/column holding the text."),
        on_decode_error: OnDecodeError = typer.Option(OnDecodeError.error, "--on-decode-error",
                                                      help="Invalid UTF-8: error, replace by U+FFFD, or skip the "
                                                           "document (counted)."),
        on_bad_record: OnBadRecord = typer.Option(OnBadRecord.error, "--on-bad-record",
                                                  help="A bad jsonl/parquet record: error, or skip it (counted)."),
        template: str = typer.Option(None, "--template", help="Prompt-based CPT: wrap each document, e.g. "
                                                             "'{text} It was {label}.'; fields from the record "
                                                             "(jsonl key, parquet column) or --template-labels."),
        template_labels: str = typer.Option(None, "--template-labels", help="Labels file, one row per document "
                                                                           "(.jsonl/.txt/.parquet); may contain "
                                                                           "{domain} and {split}."),
        template_domains: str = typer.Option(None, "--template-domains", help="Comma-separated domains the "
                                                                             "template applies to (default: all)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or log lines."),
    ) -> None:
        """Tokenize a corpus into a memory-mapped token cache: per domain/split a flat array of ids with EOS
        after every document, document offsets and a manifest. Splits whose sources and tokenizer are
        unchanged are reused; changed ones are rebuilt (atomically).

        Example: cptlab prepare --corpus data/m2d2 --tokenizer runs/tokenizer --out runs/cache --workers 4

        Example (PCP): cptlab prepare --corpus data/reviews --tokenizer runs/tokenizer --out runs/pcp-cache
        --template '{text} It was {label}.' --template-labels 'labels/{domain}/{split}.jsonl'
        """
        from rich.console import Console

        from cptlab.console import set_quiet
        from cptlab.corpus import ReadOptions
        from cptlab.errors import UsageError
        from cptlab.tokens.token_cache import build_cache

        if template is None and (template_labels or template_domains):
            raise UsageError("--template-labels/--template-domains: give --template too")
        spec = None if template is None else {"format": template, "labels": template_labels,
                                              "domains": _csv(template_domains)}
        if quiet:
            set_quiet(True)
        options = ReadOptions(txt_mode=txt_mode.value, text_field=text_field,
                              on_decode_error=on_decode_error.value, on_bad_record=on_bad_record.value)
        summary = build_cache(corpus, tokenizer, out, domains=_csv(domains), splits=_csv(splits),
                              workers=workers, read_options=options, force=force, verify_hash=verify_hash,
                              template=spec)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
        else:
            Console(soft_wrap=False).print(render_table(summary))
