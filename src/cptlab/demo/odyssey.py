"""The default demo study ("odyssey"): adapt the base to each domain, evaluate every domain before and after.

Adaptation Odyssey (arXiv 2410.05581) asks why continued pretraining sometimes makes test perplexity *worse*. The demo
adapts the tiny general-text base to domains that were inside its pretraining mix and to domains far from it, and
always runs the control (the same recipe continued on the pretraining mix itself), so that an effect of re-warming
the learning rate is not mistaken for an effect of the domain.
"""

from __future__ import annotations

import math
from pathlib import Path

from cptlab.console import log

CONTROL = "control"


def adapt_config(base: Path, tok_dir: Path, cache_dir: Path, out_dir: Path, sources: dict[str, float], lr: float,
                 settings) -> dict:
    """One adaptation run: fresh AdamW from the base, short warmup, constant LR (RESEARCH-NOTES' recipe)."""
    return {
        "model": {"name": str(base), "init": "pretrained"},
        "tokenizer": str(tok_dir),
        "data": {"cache_dir": str(cache_dir), "sources": sources, "seq_len": settings.seq_len},
        "optimizer": {"lr": lr, "weight_decay": 0.1},
        "schedule": {"kind": "constant", "warmup_steps": settings.adapt_warmup},
        "precision": "bf16",
        "batch_size": settings.batch_size,
        "max_steps": settings.adapt_steps,
        "checkpoint": {"at_end": False},
        "eval": {"at_end": False},
        "out_dir": str(out_dir),
        "overwrite": True,  # a second demo redoes the (short) adaptation runs; the base is reused
        "seed": settings.seed,
    }


def run_odyssey_study(out: Path, prepared: dict, settings) -> dict:
    """Adapt to every domain (and the control) at each LR; evaluate all test splits; print and return the table."""
    from cptlab.evaluate import perplexity
    from cptlab.train import run as train_run

    general, held_out = prepared["general"], prepared["held_out"]
    domains = [d for d in (settings.adapt_domains or general + held_out) if d in general + held_out]
    missing = [d for d in (settings.adapt_domains or ()) if d not in domains]
    if missing:
        log(f"not in this machine's demo corpus, skipped: {', '.join(missing)}")
    evaluate_on = general + held_out

    def evaluate(model_dir: Path) -> dict[str, float]:
        result = perplexity(str(model_dir), corpus=str(prepared["corpus"]), split="test", domains=evaluate_on,
                            max_documents=settings.eval_max_documents, precision="fp32").to_dict()
        return {d: r["token_perplexity"] for d, r in result["domains"].items()}

    log("evaluating the base model on every domain's test split")
    before = evaluate(prepared["base"])
    runs: dict[str, dict] = {}
    targets = [CONTROL] + domains
    for lr in settings.adapt_lrs:
        for target in targets:
            name = f"{target}@{lr:g}"
            sources = {d: 1.0 for d in general} if target == CONTROL else {target: 1.0}
            run_dir = out / "adapt" / name.replace("@", "-lr")
            log(f"adapting to {target} (lr {lr:g}, {settings.adapt_steps} steps)")
            result = train_run(adapt_config(prepared["base"], prepared["tokenizer"], prepared["cache"], run_dir,
                                            sources, lr, settings))
            runs[name] = {"target": target, "lr": lr, "after": evaluate(result.final_dir)}

    table = []
    for name, r in runs.items():
        control = runs[f"{CONTROL}@{r['lr']:g}"]["after"]
        row = {"run": name, "target": r["target"], "lr": r["lr"], "domains": {}}
        for d in evaluate_on:
            delta = r["after"][d] / before[d] - 1
            vs_control = r["after"][d] / control[d] - 1
            row["domains"][d] = {"ppl_before": before[d], "ppl_after": r["after"][d], "delta": delta,
                                 "delta_vs_control": vs_control}
        table.append(row)
    _print_table(table, before, general)
    return {"before": before, "runs": table, "general": general, "held_out": held_out}


def _print_table(table: list[dict], before: dict[str, float], general: list[str]) -> None:
    """The diagonal: each target domain's own test perplexity before and after adapting to it."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Adapting the demo base to each domain: own-domain test perplexity")
    for col in ("target", "in pretraining mix", "lr", "PPL before", "PPL after", "change", "vs control"):
        t.add_column(col, justify="left" if col == "target" else "right")
    for row in table:
        d = row["target"]
        if d == CONTROL:
            continue
        cell = row["domains"][d]
        t.add_row(d, "yes" if d in general else "no", f"{row['lr']:g}", f"{cell['ppl_before']:.1f}",
                  f"{cell['ppl_after']:.1f}", f"{100 * cell['delta']:+.1f}%", f"{100 * cell['delta_vs_control']:+.1f}%")
    Console().print(t)  # results go to stdout, logs to stderr
    mean_log = sum(math.log(v) for v in before.values()) / len(before)
    log(f"base model: geometric-mean test perplexity over {len(before)} domains {math.exp(mean_log):.1f}")
