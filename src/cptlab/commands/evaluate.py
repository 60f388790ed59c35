"""`cptlab eval` (perplexity per domain) and `cptlab compare` (token-level before/after comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1e6:
        return f"{x:.3e}"
    return f"{x:,.{digits}f}"


def eval_table(data: dict):
    from rich.table import Table

    s = data["settings"]
    title = (f"{s['model']} on {s['split']} ({s['mode']}, context {s['context']}, stride {s['stride']}, "
             f"{s['precision']})")
    table = Table(title=title, title_justify="left")
    table.add_column("domain")
    for name in ("documents", "tokens", "token ppl", "word ppl", "byte ppl", "bits/byte"):
        table.add_column(name, justify="right")
    for d, r in data["domains"].items():
        table.add_row(d, f"{r['documents']:,}", f"{r['tokens']:,}", _fmt(r["token_perplexity"]),
                      _fmt(r["word_perplexity"]), _fmt(r["byte_perplexity"], 4), _fmt(r["bits_per_byte"], 4))
    return table


def compare_tables(result: dict, top: int) -> list:
    from rich.table import Table

    out = []
    t = Table(title="Perplexity per domain (Δ log PPL = mean Δ nll per token)", title_justify="left")
    for c in ("domain", "tokens", "ppl before", "ppl after", "Δ ppl", "Δ log ppl"):
        t.add_column(c, justify="left" if c == "domain" else "right")
    rows = list(result["domains"].items()) + [("total", result["total"])]
    for d, r in rows:
        t.add_row(d, f"{r['tokens']:,}", _fmt(r["ppl_before"]), _fmt(r["ppl_after"]), _fmt(r["delta_ppl"]),
                  _fmt(r["delta_log_ppl"], 5), style="bold" if d == "total" else None)
    out.append(t)

    t = Table(title="Token classes: contribution to the total Δ log PPL", title_justify="left")
    for c in ("class", "tokens", "Δ nll sum", "mean Δ nll", "contribution", "share"):
        t.add_column(c, justify="left" if c == "class" else "right")
    total = result["total"]["delta_log_ppl"] or 0.0
    for name, r in sorted(result["classes"].items(), key=lambda kv: -abs(kv[1]["contribution"])):
        if r["count"]:
            share = f"{100 * r['contribution'] / total:.1f}%" if total else "-"
            t.add_row(name, f"{r['count']:,}", _fmt(r["delta_nll_sum"], 2), _fmt(r["mean_delta_nll"], 4),
                      _fmt(r["contribution"], 5), share)
    out.append(t)

    t = Table(title=f"Top {min(top, len(result['tokens']))} token types by |contribution|", title_justify="left")
    for c in ("token", "id", "class", "count", "mean Δ nll", "contribution"):
        t.add_column(c, justify="left" if c in ("token", "class") else "right")
    for r in result["tokens"][:top]:
        t.add_row(repr(r["text"]), str(r["id"]), r["class"], f"{r['count']:,}", _fmt(r["mean_delta_nll"], 4),
                  _fmt(r["contribution"], 5))
    out.append(t)

    ex = result.get("excluded")
    if ex:
        t = Table(title=f"Without {', '.join(ex['exclude'])} ({ex['tokens_left_out']:,} tokens left out)",
                  title_justify="left")
        for c in ("domain", "tokens", "ppl before", "ppl after", "Δ ppl", "Δ log ppl"):
            t.add_column(c, justify="left" if c == "domain" else "right")
        for d, r in list(ex["domains"].items()) + [("total", ex["total"])]:
            t.add_row(d, f"{r['tokens']:,}", _fmt(r["ppl_before"]), _fmt(r["ppl_after"]), _fmt(r["delta_ppl"]),
                      _fmt(r["delta_log_ppl"], 5), style="bold" if d == "total" else None)
        out.append(t)
    return out


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        model: str = typer.Option(..., "--model", help="HF model dir or hub name."),
        corpus: str = typer.Option(..., "--corpus", help="Corpus root (ROOT/<domain>/<split>.txt|jsonl|parquet), "
                                                         "manifest .yaml or hf: spec."),
        split: str = typer.Option("test", "--split", help="Which split of each domain."),
        domains: Optional[str] = typer.Option(None, "--domains", help="Comma-separated domains (default: all)."),
        context: Optional[int] = typer.Option(None, "--context", help="Tokens per window (default: the model's "
                                                                      "maximum length, as lm-eval)."),
        stride: Optional[int] = typer.Option(None, "--stride", help="New tokens scored per window (default: the "
                                                                    "context; smaller = sliding windows)."),
        mode: str = typer.Option("lm-eval", "--mode", help="lm-eval (each document on its own) | m2d2 (documents "
                                                           "joined with newlines, fixed windows)."),
        batch_size: str = typer.Option("auto", "--batch-size", help="Windows per forward, or auto."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 (autocast)."),
        token_losses: Optional[Path] = typer.Option(None, "--token-losses", help="Write per-token losses to this "
                                                                                 ".parquet file."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON to this file."),
        max_documents: Optional[int] = typer.Option(None, "--max-documents", help="First N documents per domain."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer dir (default: the model's)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if "
                                                                    "available)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress logs."),
    ) -> None:
        """Perplexity (token, word, byte) of a model on each domain of a corpus split, as lm-evaluation-harness
        computes it.

        Example: cptlab eval --model runs/base/final --corpus data/m2d2 --split test --json ppl.json
        --token-losses base.parquet
        """
        from rich.console import Console

        from cptlab.console import set_quiet
        from cptlab.evaluate import perplexity
        from cptlab.fsutil import atomic_write_json

        if quiet:
            set_quiet(True)
        if (device or "cpu").startswith("cpu"):  # no device given: CPU unless CUDA is there (harmless then)
            from cptlab.host_memory import keep_host_memory

            keep_host_memory()  # this process only evaluates: reuse freed memory instead of page-faulting it in
        result = perplexity(model, tokenizer=tokenizer, corpus=corpus, split=split, domains=_csv(domains),
                            context=context, stride=stride, mode=mode, batch_size=batch_size, precision=precision,
                            token_losses=token_losses, max_documents=max_documents, device=device)
        data = result.to_dict()
        Console().print(eval_table(data))
        if json_out is not None:
            atomic_write_json(json_out, data)
        from cptlab.console import log

        log(f"{sum(r.tokens for r in result.domains.values()):,} tokens in {result.seconds:.1f} s "
            f"({result.tokens_per_second:,.0f} tokens/s)")

    @app.command("compare")
    def compare_cmd(
        before: Path = typer.Argument(..., help="Per-token losses before (from cptlab eval --token-losses)."),
        after: Path = typer.Argument(..., help="Per-token losses after, of the same text."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full comparison as JSON."),
        plots: Optional[Path] = typer.Option(None, "--plots", help="Write PNG plots into this directory."),
        exclude: Optional[str] = typer.Option(None, "--exclude", help="Comma-separated token classes (newline, "
                                              "whitespace, punctuation, digits, word-start, subword, special), "
                                              "token texts (\\n, ' the') or id:N to leave out in a recomputed PPL."),
        domains: Optional[str] = typer.Option(None, "--domains", help="Only these domains (comma-separated)."),
        top: int = typer.Option(20, "--top", help="How many token types to list."),
    ) -> None:
        """Which tokens got better or worse between two evaluations of the same text, and by how much each
        contributes to the change in log-perplexity.

        Example: cptlab compare base.parquet adapted.parquet --exclude newline,whitespace --plots cmp/ --json cmp.json
        """
        from rich.console import Console

        from cptlab.console import log
        from cptlab.evaluate.compare import compare_token_losses, write_plots
        from cptlab.fsutil import atomic_write_json

        result = compare_token_losses(before, after, exclude=_csv_keep(exclude), domains=_csv(domains),
                                      top=max(top, 50))
        out = Console()
        for t in compare_tables(result, top):
            out.print(t)
        if json_out is not None:
            atomic_write_json(json_out, result)
        if plots is not None:
            for p in write_plots(result, plots):
                log(f"wrote {p}")


def _csv_keep(value: str | None) -> list[str] | None:
    """Comma-separated items without stripping (a token text may be " the")."""
    return [v for v in value.split(",") if v != ""] if value else None
