"""The overtraining demo (`cptlab demo --study overtraining`): is a longer-pretrained model harder to adapt?

"Overtrained Language Models Are Harder to Fine-Tune" (arXiv 2503.19206) shows that past some number of
pretraining tokens per parameter, parameters grow more sensitive to any change, and adapting a later checkpoint
can end worse than adapting an earlier one. The effect lives at hundreds to thousands of tokens per parameter, so
the demo model is deliberately minute (Llama, 2 layers, 16 wide, a 512-token BPE: 14,928 parameters, more than half
of them the tied embedding) and is pretrained on the general mix for 16.4 M tokens (~1100 tokens per parameter;
quick: 6.1 M, ~410), with a WSD schedule whose learning rate stays constant while the checkpoints are taken
(log-spaced in tokens: 34 to 988 tokens per parameter; quick: 26 to 370) and decays only after the last one, so
that no checkpoint's sensitivity is confounded by an LR anneal (RESEARCH-NOTES).

Then a `checkpoint-sweep` study adapts every checkpoint to one held-out domain (pydoc_topics, else another
held-out domain this machine has) with the same recipe (fresh AdamW, short warmup, constant LR 3e-3 and 1e-2,
three seeds; quick: 1e-2, two seeds), evaluates target and general validation perplexity before and after, and
measures each checkpoint's sensitivity (θ + γ·ε at the initialization scale, three seeds). The report says how
many tokens per parameter each checkpoint has seen, whether the curves turn up (with the difference in standard
errors over seeds), and how much adaptation raised the general log-perplexity from each checkpoint (forgetting).

What it showed on this machine (full run): sensitivity rose with every checkpoint (Δ loss at γ = 4: 0.49 -> 4.9
nats, Spearman ρ = +1); forgetting grew from +0.10 to +0.78 nats (lr 3e-3) and +0.31 to +1.30 (lr 1e-2); target
perplexity after adaptation still fell monotonically, but general perplexity after adapting at lr 1e-2 bottomed
out at 564 tokens per parameter and the last checkpoint ended 2.5% worse (2.6 standard errors over 3 seeds).

Time and memory (cold and re-run, `--quick`): BENCHMARKS.md, section "Demo" (`python benchmarks/bench_demo.py`).
Everything runs on one torch thread in fp32 (see `threads`, `precision`).

Stages under OUT/overtraining/ are reused when their inputs did not change: tokenizer/, cache/, init/ (the
random initial weights), pretrain/ (checkpoints), study.yaml and study/ (the study runner skips finished runs).
Results: OUT/results.json (and OUT/overtraining/results.json), report OUT/overtraining/report/index.html.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cptlab.console import log
from cptlab.errors import CptlabError


@dataclass(frozen=True)
class OvertrainingSettings:
    vocab_size: int = 512
    hidden: int = 16
    layers: int = 2
    heads: int = 2
    ffn: int = 48
    seq_len: int = 128
    batch_size: int = 32  # 4096 tokens per step
    pretrain_steps: int = 4000  # ~16.4 M tokens: ~1100 tokens per parameter
    pretrain_lr: float = 3e-3
    warmup_steps: int = 30
    decay_fraction: float = 0.1  # WSD: constant LR for the first 90 % of steps, linear decay after
    checkpoints: int = 7  # log-spaced in tokens over the constant-LR phase
    first_checkpoint_fraction: float = 1 / 32  # of the run's tokens
    target: str = "pydoc_topics"  # held out from pretraining; English prose about Python
    adapt_steps: int = 40
    adapt_warmup: int = 5
    adapt_lrs: tuple[float, ...] = (3e-3, 1e-2)  # the pretraining LR, and above it (where forgetting is largest)
    adapt_seeds: tuple[int, ...] = (0, 1, 2)
    eval_max_documents: int = 8  # per domain: bounds the 49 evaluations (validation docs are up to ~40 k tokens)
    sensitivity_gammas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    sensitivity_seeds: int = 3
    sensitivity_max_tokens: int = 4096
    precision: str = "fp32"  # at this width bf16 autocast on CPU is ~2x slower than fp32 (casts dominate)
    threads: int | None = 1  # torch threads while the demo runs: a model this small gains nothing from more, and
    # two threads on two busy cores were ~10x slower than one (OpenMP waits); None leaves torch's setting alone
    seed: int = 0
    general: tuple[str, ...] = field(default=())  # empty: the corpus manifest's general domains


QUICK = OvertrainingSettings(pretrain_steps=1500, checkpoints=4, first_checkpoint_fraction=1 / 16,
                             adapt_steps=30, adapt_lrs=(1e-2,), adapt_seeds=(0, 1), eval_max_documents=6,
                             sensitivity_gammas=(1.0, 4.0), sensitivity_max_tokens=2048)
FULL = OvertrainingSettings()


def settings_for(quick: bool) -> OvertrainingSettings:
    return QUICK if quick else FULL


def checkpoint_tokens(s: OvertrainingSettings) -> list[int]:
    """Log-spaced token counts from `first_checkpoint_fraction` of the run to the end of the constant-LR phase."""
    per_step = s.batch_size * s.seq_len
    total = s.pretrain_steps * per_step
    stable_end = int(s.pretrain_steps * (1 - s.decay_fraction)) * per_step
    first = max(per_step, int(total * s.first_checkpoint_fraction))
    if s.checkpoints == 1:
        return [stable_end]
    ratio = (stable_end / first) ** (1 / (s.checkpoints - 1))
    out = sorted({int(round(first * ratio ** i / per_step)) * per_step for i in range(s.checkpoints)})
    return [max(per_step, t) for t in out]


def _model_config(tok, s: OvertrainingSettings):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=s.hidden, intermediate_size=s.ffn,
                       num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.heads,
                       max_position_embeddings=s.seq_len, rms_norm_eps=1e-5, initializer_range=0.02,
                       tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)


def pretrain_config(init_dir: Path, cache_dir: Path, out_dir: Path, general: list[str],
                    s: OvertrainingSettings) -> dict:
    """WSD pretraining on equal parts of the general domains, checkpoints at `checkpoint_tokens(s)`."""
    return {
        "model": {"name": str(init_dir), "init": "pretrained"},
        "data": {"cache_dir": str(cache_dir), "sources": {d: 1.0 for d in general}, "seq_len": s.seq_len},
        "optimizer": {"lr": s.pretrain_lr, "weight_decay": 0.1},
        "schedule": {"kind": "wsd", "warmup_steps": s.warmup_steps, "decay_fraction": s.decay_fraction,
                     "min_lr_ratio": 0.1},
        "precision": s.precision,
        "batch_size": s.batch_size,
        "max_steps": s.pretrain_steps,
        "checkpoint": {"at_tokens": checkpoint_tokens(s), "at_end": False},
        "eval": {"at_end": False},
        "tensorboard": False,
        "out_dir": str(out_dir),
        "seed": s.seed,
    }


def build_overtraining_study(corpus_dir: str | Path, out_dir: str | Path, quick: bool = False,
                             settings: OvertrainingSettings | None = None) -> Path:
    """Tokenizer, token cache, a tiny model pretrained with log-spaced checkpoints, and the study YAML.

    `corpus_dir` is the demo corpus (cptlab.demo.corpora manifest with general/held-out groups, or any M2D2 corpus
    when `settings.general` names the pretraining domains). Returns the path of the `checkpoint-sweep` study YAML;
    run it with `cptlab study run` (or `run_overtraining_demo`)."""
    import yaml

    from cptlab.fsutil import atomic_write_text

    s = settings or settings_for(quick)
    corpus_dir, out_dir = Path(corpus_dir).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    general = list(s.general) or _general_domains(corpus_dir)
    s = replace(s, target=_pick_target(corpus_dir, s.target, general))
    tok_dir, cache_dir, init_dir, pre_dir = (out_dir / n for n in ("tokenizer", "cache", "init", "pretrain"))
    stamps = _read_json(out_dir / "stages.json")

    from cptlab.tokens.token_cache import build_cache
    from cptlab.tokens.tokenizer import load_tokenizer, train_tokenizer_on_corpus

    manifest = _read_json(corpus_dir / "manifest.json")
    tok_key = json.dumps([manifest.get("fingerprints"), s.vocab_size, general], sort_keys=True)
    if stamps.get("tokenizer") != tok_key or not (tok_dir / "tokenizer.json").exists():
        log(f"training a {s.vocab_size}-token BPE on the general domains: {', '.join(general)}")
        _remove(tok_dir)
        train_tokenizer_on_corpus(corpus_dir, s.vocab_size, tok_dir, domains=general)
        stamps["tokenizer"] = tok_key
        _write_json(out_dir / "stages.json", stamps)
    build_cache(corpus_dir, tok_dir, cache_dir, domains=[*general, s.target])
    tok = load_tokenizer(tok_dir)

    init_key = json.dumps([tok_key, s.hidden, s.layers, s.heads, s.ffn, s.seq_len, s.seed])
    if stamps.get("init") != init_key or not (init_dir / "config.json").exists():
        import torch
        from transformers import AutoModelForCausalLM

        from cptlab.model import save_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            model = AutoModelForCausalLM.from_config(_model_config(tok, s))
        _remove(init_dir)
        save_model(model, tok, init_dir)
        stamps["init"] = init_key
        _write_json(out_dir / "stages.json", stamps)

    from cptlab.diagnose.checkpoint_series import parameters_in_dir

    n_params = parameters_in_dir(init_dir) or 0
    config = pretrain_config(init_dir, cache_dir, pre_dir, general, s)
    pre_key = json.dumps([init_key, config], sort_keys=True)
    if stamps.get("pretrain") != pre_key or not (pre_dir / "final" / "config.json").exists():
        tokens = s.pretrain_steps * s.batch_size * s.seq_len
        log(f"pretraining a {n_params:,}-parameter Llama on the general mix: {s.pretrain_steps} steps, "
            f"{tokens / 1e6:.1f} M tokens ({tokens / max(1, n_params):.0f} tokens per parameter), WSD schedule, "
            f"checkpoints at {', '.join(f'{t / 1e6:.2f}M' for t in checkpoint_tokens(s))} tokens")
        import cptlab.train as train

        train.run({**config, "overwrite": True})
        stamps["pretrain"] = pre_key
        _write_json(out_dir / "stages.json", stamps)
    else:
        log(f"pretraining run {pre_dir}: up to date, not retrained")

    spec = study_spec(corpus_dir, cache_dir, pre_dir, general, s, parameters=n_params)
    path = out_dir / "study.yaml"
    atomic_write_text(path, yaml.safe_dump(spec, sort_keys=False))
    # The study runner skips runs it finished, but a changed study (other checkpoints, LRs, seeds) would leave the
    # old runs in its database and in the report: start that study afresh.
    study_key = json.dumps([pre_key, spec], sort_keys=True)
    if stamps.get("study") != study_key:
        if (out_dir / "study").exists():
            log(f"the study changed since the last run: removing {out_dir / 'study'}")
        _remove(out_dir / "study")
        stamps["study"] = study_key
        _write_json(out_dir / "stages.json", stamps)
    return path


def study_spec(corpus_dir: Path, cache_dir: Path, pre_dir: Path, general: list[str],
               s: OvertrainingSettings, parameters: int | None = None) -> dict:
    """The `checkpoint-sweep` study: the same adaptation recipe from every checkpoint; sensitivity of each."""
    tokens = checkpoint_tokens(s)
    regime = ""
    if parameters:
        regime = (f" The model has {parameters:,} parameters; its checkpoints saw "
                  f"{', '.join(f'{t / parameters:.0f}' for t in tokens)} tokens per parameter, taken while the "
                  f"learning rate was constant (WSD: it decays over the last {s.decay_fraction:.0%} of the steps, "
                  "after the last checkpoint), so no checkpoint's sensitivity is confounded by an LR anneal.")
    return {
        "name": "overtraining",
        "kind": "checkpoint-sweep",
        "description": f"Adapt each pretraining checkpoint of a tiny Llama to {s.target}; does a later "
                       f"checkpoint end worse? (arXiv 2503.19206).{regime}",
        "corpus": str(corpus_dir),
        "options": {
            "pretrain_run": str(pre_dir),
            "target": [s.target],
            "general": list(general),
            "split": "valid",
            "lrs": list(s.adapt_lrs),
            "seeds": list(s.adapt_seeds),
            "train": {
                "data": {"cache_dir": str(cache_dir), "sources": {s.target: 1.0}, "seq_len": s.seq_len},
                "optimizer": {"weight_decay": 0.1},
                "schedule": {"kind": "constant", "warmup_steps": s.adapt_warmup},
                "precision": s.precision,
                "batch_size": s.batch_size,
                "max_steps": s.adapt_steps,
                "checkpoint": {"at_end": False},
                "eval": {"at_end": False},
                "tensorboard": False,
                "quiet": True,
            },
            "eval": {"max_documents": s.eval_max_documents, "token_losses": False, "precision": "fp32"},
            "sensitivity": {"gammas": list(s.sensitivity_gammas), "seeds": s.sensitivity_seeds,
                            "noise_scale": "init", "max_tokens": s.sensitivity_max_tokens, "seq_len": s.seq_len},
        },
    }


def run_overtraining_demo(out: str | Path = "runs/demo", quick: bool = False,
                          settings: OvertrainingSettings | None = None, corpus_dir: str | Path | None = None) -> dict:
    """Corpus -> tiny pretraining with checkpoints -> checkpoint-sweep study -> report; returns the results.

    `corpus_dir`: use this corpus instead of building the demo corpus in OUT/corpus (then `settings.general` and
    `settings.target` must name its domains unless it has the demo corpus's manifest)."""
    import torch

    start = time.perf_counter()
    out = Path(out)
    s = settings or settings_for(quick)
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        return _run(out, quick, s, corpus_dir, start)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, quick: bool, s: OvertrainingSettings, corpus_dir: str | Path | None, start: float) -> dict:
    from cptlab.demo.corpora import build_demo_corpus
    from cptlab.fsutil import atomic_write_json
    from cptlab.report.render import render_report
    from cptlab.study.runner import run_study

    if corpus_dir is None:
        corpus_dir = out / "corpus"
        build_demo_corpus(corpus_dir, seed=s.seed)
    spec = build_overtraining_study(corpus_dir, out / "overtraining", quick=quick, settings=s)
    study_dir = out / "overtraining" / "study"
    log(f"running the checkpoint-sweep study {spec} -> {study_dir}")
    result = run_study(spec, study_dir)
    failed = [n for n, st in result["runs"].items() if st == "failed"]
    index = render_report(study_dir, out / "overtraining" / "report")
    summary = summarize_study(study_dir)
    summary.update(study="overtraining", report=str(index), study_dir=str(study_dir), runs=result["runs"],
                   failed_runs=failed, settings=asdict(s), seconds=round(time.perf_counter() - start, 1))
    # OUT/results.json is the demo's contract (cptlab.demo.pipeline); the copy beside the study survives a later
    # `cptlab demo --study odyssey` into the same OUT.
    atomic_write_json(out / "results.json", summary)
    atomic_write_json(out / "overtraining" / "results.json", summary)
    _print_summary(summary)
    log(f"overtraining demo done in {summary['seconds']:.0f} s: report {index}")
    return summary


def summarize_study(study_dir: Path) -> dict:
    """The verdicts and the sensitivity trend, computed from the study's database (what the report shows)."""
    from cptlab.report.section_checkpoint_sweep import forgetting, sweep_table, verdicts
    from cptlab.report.section_sensitivity import reference_gamma, sensitivity_results, verdict_text
    from cptlab.report.sections import ReportContext
    from cptlab.study.store import Store

    with Store(study_dir, create=False) as store:
        ctx = ReportContext(db=store.conn, study_dir=study_dir, out_dir=study_dir / "report")
        table = sweep_table(ctx)
        out: dict = {"verdicts": {}, "forgetting": {}, "checkpoints": [], "sensitivity": None}
        if table is not None:
            out["checkpoints"] = table["checkpoints"]
            out["target"], out["general"] = table["target"], table["general"]
            out["verdicts"] = {f"{g}@{lr:g}": v for (g, lr), v in verdicts(table).items()}
            out["forgetting"] = {f"{lr:g}": f for lr, f in forgetting(table).items()}
        sens = sensitivity_results(ctx)
        if sens:
            res = sens[-1][1]
            g = reference_gamma(res)
            out["sensitivity"] = {"gamma": g, "text": verdict_text(res, g) if g is not None else None,
                                  "models": [{"label": m["label"], "tokens": m.get("tokens"),
                                              "tokens_per_parameter": m.get("tokens_per_parameter"),
                                              "delta_loss": {str(r["gamma"]): r["delta_loss"]["mean"]
                                                             for r in m["gammas"]}} for m in res["models"]]}
    return out


def _print_summary(summary: dict) -> None:
    from rich.console import Console

    con = Console()
    for c in summary["checkpoints"]:
        p, t = c.get("parameters"), c.get("tokens")
        tpp = f"{t / p:.0f} tokens/param" if p and t is not None else ""
        con.print(f"checkpoint {c['name']}: {t:,} tokens {tpp}" if t is not None else c["name"])
    if summary.get("sensitivity") and summary["sensitivity"].get("text"):
        con.print(f"[bold]sensitivity:[/] {summary['sensitivity']['text']}")
    for key, v in summary["verdicts"].items():
        con.print(f"[bold]{key}:[/] {v['text']}")
    for f in summary.get("forgetting", {}).values():
        con.print(f"[bold]forgetting:[/] {f['text']}")


# Held-out demo domains to adapt to when the preferred one could not be built on this machine (best first).
FALLBACK_TARGETS = ("pydoc_topics", "legal", "gui_code", "docstrings", "man_de_fr")


def _pick_target(corpus_dir: Path, target: str, general: list[str]) -> str:
    """`target` if the corpus has it; for the demo corpus, else the first held-out domain it has."""
    from cptlab.corpus import open_corpus

    if target in general:
        raise CptlabError(f"target {target!r} is one of the pretraining domains ({', '.join(general)})")
    have = open_corpus(str(corpus_dir)).domain_names()
    if target in have:
        return target
    held_out = [d for d, e in (_read_json(corpus_dir / "manifest.json").get("domains") or {}).items()
                if e.get("group") != "general" and d in have]
    for d in [*FALLBACK_TARGETS, *held_out]:
        if d in held_out:
            log(f"target domain {target!r} is not in {corpus_dir} (not built on this machine); adapting to {d!r}")
            return d
    raise CptlabError(f"{corpus_dir}: no domain {target!r} and no held-out domain to adapt to "
                      f"(domains: {', '.join(have)})")


def _general_domains(corpus_dir: Path) -> list[str]:
    manifest = _read_json(corpus_dir / "manifest.json")
    general = [d for d, e in (manifest.get("domains") or {}).items() if e.get("group") == "general"]
    if not general:
        raise CptlabError(f"{corpus_dir}: no manifest.json naming general domains; give settings.general")
    return general


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    from cptlab.fsutil import atomic_write_json

    atomic_write_json(path, data)


def _remove(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)

