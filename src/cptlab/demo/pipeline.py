"""`cptlab demo`: real text from this machine -> tokenizer -> token cache -> a tiny pretrained "base" -> a study.

Stages, each reused when its inputs did not change (so a second `cptlab demo` only redoes what changed):
    corpus/     9 domains built from the stdlib, changelogs, licences and man pages (cptlab.demo.corpora)
    tokenizer/  a 4096-token byte-level BPE trained on the *general* domains' train splits
    cache/      every domain/split tokenized once (cptlab.tokens.token_cache)
    base/       a tiny Llama pretrained from scratch on the general mixture (cptlab.train)
    tasks/      a labelled task from the corpus (which domain is a passage from?) and SFT data for it
    study/      the demo study run by the study runner: results.sqlite and report/index.html

The settings follow ../shared/RESEARCH-NOTES.md: llama-tiny (1.44 M parameters with this vocabulary), sequences of
256 tokens, batch 16, bf16 autocast; ~15 k tokens/s when training on 2 quiet cores, ~40 k when evaluating.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cptlab.console import log
from cptlab.errors import CptlabError


@dataclass(frozen=True)
class DemoSettings:
    vocab_size: int = 4096
    preset: str = "llama-tiny"
    seq_len: int = 256
    batch_size: int = 16
    pretrain_steps: int = 1000         # ~4.1 M tokens, ~1.6 epochs of the general mix
    pretrain_lr: float = 3e-3
    pretrain_min_lr_ratio: float = 0.1  # cosine to 3e-4: the final pretraining LR
    pretrain_warmup: int = 50
    adapt_steps: int = 48               # ~196 k tokens per adaptation run
    adapt_warmup: int = 10
    adapt_lrs: tuple[float, ...] = (3e-4, 1e-3)
    eval_max_documents: int | None = 200  # per domain and split: bounds evaluation time on big test splits
    adapt_domains: tuple[str, ...] | None = None  # None: every domain of the corpus
    corpus_max_domain_bytes: int | None = None  # None: the corpus builder's default caps
    corpus_max_file_bytes: int = 60_000  # files are cut to this size (one document each)
    similarity_measures: tuple[str, ...] | None = None  # None: the study YAML's (jsd, vocab, embedding)
    similarity_sample_bytes: int | None = None  # None: the study YAML's 1 MB per side
    # the labelled task (cptlab.corpus.domain_task): which domain is a passage from? (None: no task)
    task_per_domain: int | None = 10    # test-split passages per domain (multiple choice over the domains)
    task_chars: int = 200
    sft_per_domain: int = 48            # train-split passages per domain for SFT
    sft_steps: int = 80                 # lr 3e-3: 60 steps took the quick demo's base from chance (0.11) to ~0.4
    sft_seq_len: int | None = None      # None: seq_len
    sft_targets: tuple[str, ...] = ("control", "legal", "pydoc_topics")  # adapted runs that are fine-tuned too
    seed: int = 0


QUICK = DemoSettings(pretrain_steps=300, pretrain_warmup=30, adapt_steps=32, adapt_warmup=5, adapt_lrs=(1e-3,),
                     eval_max_documents=40, task_per_domain=8, sft_per_domain=24, sft_steps=60)
FULL = DemoSettings()


def settings_for(quick: bool) -> DemoSettings:
    return QUICK if quick else FULL


def prepare_base(out: Path, settings: DemoSettings) -> dict:
    """Corpus, tokenizer, cache and the pretrained base model; returns their locations and the domain groups."""
    from cptlab.demo.corpora import build_demo_corpus
    from cptlab.tokens.token_cache import build_cache
    from cptlab.tokens.tokenizer import train_tokenizer_on_corpus

    out.mkdir(parents=True, exist_ok=True)
    corpus_dir, tok_dir, cache_dir, base_dir = out / "corpus", out / "tokenizer", out / "cache", out / "base"
    manifest = build_demo_corpus(corpus_dir, seed=settings.seed, max_domain_bytes=settings.corpus_max_domain_bytes,
                                 max_file_bytes=settings.corpus_max_file_bytes)
    # sorted: a freshly built manifest and a reloaded one list domains in different orders
    general = sorted(d for d, e in manifest["domains"].items() if e["group"] == "general")
    held_out = sorted(d for d, e in manifest["domains"].items() if e["group"] != "general")
    if not general:
        raise CptlabError(f"{corpus_dir}: no general domain could be built from this machine's text: "
                          + "; ".join(f"{d}: {e['reason']}" for d, e in manifest["dropped"].items()))

    stamps = _read_stamps(out)
    corpus_key = json.dumps(manifest["fingerprints"], sort_keys=True) + json.dumps(manifest["settings"], sort_keys=True)
    tok_key = json.dumps([corpus_key, settings.vocab_size, general])
    if stamps.get("tokenizer") != tok_key or not (tok_dir / "tokenizer_config.json").exists():
        log(f"training a {settings.vocab_size}-token BPE on the general domains: {', '.join(general)}")
        _remove(tok_dir)
        train_tokenizer_on_corpus(corpus_dir, settings.vocab_size, tok_dir, domains=general)
        stamps["tokenizer"] = tok_key
        _write_stamps(out, stamps)
    build_cache(corpus_dir, tok_dir, cache_dir)

    from cptlab.train import run as train_run

    config = pretrain_config(cache_dir, tok_dir, base_dir, general, settings)
    base_key = json.dumps([tok_key, config], sort_keys=True)
    if stamps.get("base") != base_key or not (base_dir / "final" / "config.json").exists():
        log(f"pretraining {settings.preset} from scratch on the general mix: {settings.pretrain_steps} steps of "
            f"{settings.batch_size}x{settings.seq_len} tokens")
        _remove(base_dir)
        train_run(config)
        stamps["base"] = base_key
        _write_stamps(out, stamps)
    else:
        log(f"base model {base_dir / 'final'}: up to date, not retrained")
    return {"corpus": corpus_dir, "tokenizer": tok_dir, "cache": cache_dir, "base": base_dir / "final",
            "general": general, "held_out": held_out, "manifest": manifest}


def pretrain_config(cache_dir: Path, tok_dir: Path, out_dir: Path, general: list[str], s: DemoSettings) -> dict:
    """The pretraining run: equal parts of each general domain, warmup then cosine to the final LR."""
    return {
        "model": {"name": s.preset, "init": "scratch"},
        "tokenizer": str(tok_dir),
        "data": {"cache_dir": str(cache_dir), "sources": {d: 1.0 for d in general}, "seq_len": s.seq_len},
        "optimizer": {"lr": s.pretrain_lr, "weight_decay": 0.1},
        "schedule": {"kind": "cosine", "warmup_steps": s.pretrain_warmup, "min_lr_ratio": s.pretrain_min_lr_ratio},
        "precision": "bf16",
        "batch_size": s.batch_size,
        "max_steps": s.pretrain_steps,
        "checkpoint": {"interval": max(1, s.pretrain_steps // 4), "keep_last": 1},
        "eval": {"interval": max(1, s.pretrain_steps // 4), "max_tokens": 16384},
        "out_dir": str(out_dir),
        "seed": s.seed,
    }


def run_demo(out: str | Path = "runs/demo", quick: bool = False, study: str = "odyssey",
             settings: DemoSettings | None = None) -> dict:
    """Run the demo end to end; returns the results dict also written to `out/results.json`.

    `settings` overrides the quick/full presets (tests use a much smaller one)."""
    out = Path(out)
    settings = settings or settings_for(quick)
    start = time.perf_counter()
    if study == "overtraining":
        from cptlab.demo.overtraining import run_overtraining_demo

        return run_overtraining_demo(out, quick=quick)
    if study != "odyssey":
        raise CptlabError(f"--study {study!r}: unknown demo study (odyssey | overtraining)")
    prepared = prepare_base(out, settings)
    from cptlab.demo.odyssey import run_odyssey_study

    results = run_odyssey_study(out, prepared, settings)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["settings"] = asdict(settings)
    from cptlab.fsutil import atomic_write_json

    atomic_write_json(out / "results.json", results)
    log(f"demo done in {results['seconds']:.0f} s: results in {out / 'results.json'}"
        + (f", report in {results['report']}" if results.get("report") else ""))
    return results


def _read_stamps(out: Path) -> dict:
    path = out / "stages.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _write_stamps(out: Path, stamps: dict) -> None:
    from cptlab.fsutil import atomic_write_json

    atomic_write_json(out / "stages.json", stamps)


def _remove(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)
