"""The default demo study ("odyssey"): adapt the base to each domain, evaluate every domain before and after.

Adaptation Odyssey (arXiv 2410.05581) asks why continued pretraining sometimes makes test perplexity *worse*. The demo
adapts the tiny general-text base to domains that were inside its pretraining mix and to domains far from it, and
always runs the control (the same recipe continued on the pretraining mix itself), so that an effect of re-warming
the learning rate is not mistaken for an effect of the domain.

It is a study of kind `adaptation-matrix` (cptlab.study.kind_adaptation_matrix) shipped as YAML in the package
(`cptlab/demo/studies/odyssey.yaml`): `run_odyssey_study` fills in the prepared locations and the demo settings,
writes the filled copy to OUT/study/study.yaml, runs it with the study runner (in this process; finished runs of an
earlier demo with the same config are skipped), renders OUT/study/report/index.html and prints the diagonal table.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from cptlab.console import log
from cptlab.errors import CptlabError

CONTROL = "control"
TEMPLATE = "odyssey.yaml"


def load_template(name: str = TEMPLATE) -> dict[str, Any]:
    """A study YAML shipped in the package (cptlab/demo/studies/), as a dict."""
    import importlib.resources

    import yaml

    text = (importlib.resources.files("cptlab.demo") / "studies" / name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def study_spec(prepared: dict, settings) -> dict[str, Any]:
    """The shipped template filled with the prepared locations and the demo settings."""
    general, held_out = list(prepared["general"]), list(prepared["held_out"])
    available = general + held_out
    domains = [d for d in (settings.adapt_domains or available) if d in available]
    missing = [d for d in (settings.adapt_domains or ()) if d not in available]
    if missing:
        log(f"not in this machine's demo corpus, skipped: {', '.join(missing)}")
    if not domains:
        raise CptlabError(f"adapt_domains {list(settings.adapt_domains or ())}: none is in the demo corpus "
                          f"({', '.join(available)})")
    spec = copy.deepcopy(load_template())
    spec["seed"] = settings.seed
    spec["base"] = str(Path(prepared["base"]).resolve())
    spec["corpus"] = str(Path(prepared["corpus"]).resolve())
    opts = spec["options"]
    opts["domains"] = domains
    opts["general"] = general
    opts["eval_domains"] = available
    opts["lrs"] = [float(lr) for lr in settings.adapt_lrs]
    opts["seeds"] = [settings.seed]
    train = opts["train"]
    train["tokenizer"] = str(Path(prepared["tokenizer"]).resolve())
    train["data"]["cache_dir"] = str(Path(prepared["cache"]).resolve())
    train["data"]["seq_len"] = settings.seq_len
    train["batch_size"] = settings.batch_size
    train["max_steps"] = settings.adapt_steps
    train["schedule"]["warmup_steps"] = settings.adapt_warmup
    opts["eval"]["max_documents"] = settings.eval_max_documents
    _fill_tasks(opts, prepared, settings, domains, available)
    sim = opts.get("similarity")
    if isinstance(sim, dict):
        sim["seed"] = settings.seed
        # Optional settings (a DemoSettings may carry them): which measures, how large a sample per side.
        measures = settings.similarity_measures
        if measures is not None:
            sim["measures"] = list(measures)
        sample_bytes = settings.similarity_sample_bytes
        if sample_bytes is not None:
            sim["sample_bytes"] = int(sample_bytes)
    return spec


def _fill_tasks(opts: dict, prepared: dict, settings, domains: list[str], available: list[str]) -> None:
    """The task block: write OUT/tasks/{which_domain,sft_train}.jsonl from the corpus and point the study at them
    (or drop the block when the settings ask for no task)."""
    if settings.task_per_domain is None or "tasks" not in opts:
        opts.pop("tasks", None)
        return
    from cptlab.corpus.domain_task import write_domain_sft, write_domain_task

    tasks_dir = Path(prepared["corpus"]).resolve().parent / "tasks"
    task = write_domain_task(prepared["corpus"], available, tasks_dir / "which_domain.jsonl", split="test",
                             per_domain=settings.task_per_domain, chars=settings.task_chars, seed=settings.seed)
    sft = write_domain_sft(prepared["corpus"], available, tasks_dir / "sft_train.jsonl", split="train",
                           per_domain=settings.sft_per_domain, chars=settings.task_chars, seed=settings.seed)
    t = opts["tasks"]
    t["files"] = [str(task)]
    t["sft"]["data"]["train"] = str(sft)
    t["sft"]["data"]["seq_len"] = settings.sft_seq_len or settings.seq_len
    t["sft"]["batch_size"] = settings.batch_size
    t["sft"]["max_steps"] = settings.sft_steps
    t["sft"]["tokenizer"] = str(Path(prepared["tokenizer"]).resolve())
    t["sft_targets"] = [d for d in settings.sft_targets if d == CONTROL or d in domains]


def run_odyssey_study(out: Path, prepared: dict, settings) -> dict:
    """Write, run and report the demo study; print the diagonal table; return the results dict
    ({before, runs, general, held_out, report, study_dir, failed})."""
    import sqlite3

    import yaml

    from cptlab.diagnose.adaptation_matrix import matrix_from_db
    from cptlab.fsutil import atomic_write_text
    from cptlab.report.render import render_report
    from cptlab.study.runner import run_study

    study_dir = Path(out).resolve() / "study"
    study_dir.mkdir(parents=True, exist_ok=True)
    spec = study_spec(prepared, settings)
    spec_path = study_dir / "study.yaml"
    atomic_write_text(spec_path, "# Written by `cptlab demo` from cptlab/demo/studies/odyssey.yaml.\n"
                      + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    log(f"running the demo study {spec_path} (finished runs are reused)")
    result = run_study(spec_path, study_dir)
    failed = {name: status for name, status in result["runs"].items() if status == "failed"}
    report = render_report(study_dir)
    log(f"report: {report}")

    conn = sqlite3.connect(str(study_dir / "results.sqlite"))
    try:
        data = matrix_from_db(conn, n_boot=1000, seed=settings.seed)
    finally:
        conn.close()
    if failed:
        raise CptlabError(f"demo study: {len(failed)} run(s) failed ({', '.join(sorted(failed))}); see "
                          f"{study_dir / 'runs'}/<run>/error.log and the report {report}")
    if data is None:
        raise CptlabError(f"demo study {study_dir}: no adaptation run finished")
    before, table = results_table(data)
    _print_table(table, before, data["general"])
    tasks = task_table(study_dir)
    _print_tasks(tasks)
    return {"before": before, "runs": table, "tasks": tasks, "general": list(prepared["general"]),
            "held_out": list(prepared["held_out"]), "report": str(report), "study_dir": str(study_dir),
            "correlations": [{k: c[k] for k in ("group", "measure", "y", "n", "spearman", "pearson", "partial")
                              if k in c} for c in data["correlations"]]}


def results_table(data: dict) -> tuple[dict[str, float], list[dict]]:
    """(before: {domain: PPL of the base}, one row per run: {run, target, lr, domains: {d: {ppl_before, ppl_after,
    delta, delta_vs_control}}}) from cptlab.diagnose.adaptation_matrix.matrix_from_db's result (one base)."""
    before: dict[str, float] = {}
    table = []
    for g in data["groups"]:
        for target in g["targets"]:
            row = {"run": f"{target}@{g['lr']:g}", "target": target, "lr": g["lr"], "domains": {}}
            for d, cell in g["cells"][target].items():
                if cell["ppl_before"] is None or cell["ppl_after"] is None:
                    continue
                before[d] = cell["ppl_before"]
                row["domains"][d] = {"ppl_before": cell["ppl_before"], "ppl_after": cell["ppl_after"],
                                     "delta": cell["rel_change"],
                                     "delta_vs_control": 0.0 if target == CONTROL else cell["vs_control"]}
            table.append(row)
    return before, table


def task_table(study_dir: Path) -> list[dict]:
    """One row per task and model label: {task, model, acc, acc_norm, n} (the demo task: which domain?)."""
    from cptlab.study.store import read_task_results

    rows: dict[tuple[str, str], dict] = {}
    for r in read_task_results(study_dir):
        if r["status"] != "done" or r["metric"] not in ("acc", "acc_norm"):
            continue
        row = rows.setdefault((r["task"], r["model"]), {"task": r["task"], "model": r["model"], "n": r["n"]})
        row[r["metric"]] = r["value"]
    return list(rows.values())


def _print_tasks(rows: list[dict]) -> None:
    if not rows:
        return
    from rich.console import Console
    from rich.table import Table

    from cptlab.report.section_cpt_then_sft import arm_text

    t = Table(title=f"Task accuracy ({rows[0]['task']}: which domain is a passage from?), before/after CPT and SFT")
    for col in ("task", "model", "items", "acc", "acc_norm"):
        t.add_column(col, justify="left" if col in ("task", "model") else "right")
    for r in sorted(rows, key=lambda r: (r["task"], r["model"].endswith("+sft"), r["model"] != "base", r["model"])):
        t.add_row(r["task"], arm_text(r["model"]), str(r["n"]), f"{r.get('acc', float('nan')):.3f}",
                  f"{r.get('acc_norm', float('nan')):.3f}")
    Console().print(t)


def _print_table(table: list[dict], before: dict[str, float], general: list[str]) -> None:
    """The diagonal: each target domain's own test perplexity before and after adapting to it."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Adapting the demo base to each domain: own-domain test perplexity")
    for col in ("target", "in pretraining mix", "lr", "PPL before", "PPL after", "change", "vs control"):
        t.add_column(col, justify="left" if col == "target" else "right")
    for row in table:
        d = row["target"]
        if d == CONTROL or d not in row["domains"]:
            continue
        cell = row["domains"][d]
        vs = cell["delta_vs_control"]
        t.add_row(d, "yes" if d in general else "no", f"{row['lr']:g}", f"{cell['ppl_before']:.1f}",
                  f"{cell['ppl_after']:.1f}", f"{100 * cell['delta']:+.1f}%",
                  "–" if vs is None else f"{100 * vs:+.1f}%")
    Console().print(t)  # results go to stdout, logs to stderr
    if before:
        mean_log = sum(math.log(v) for v in before.values()) / len(before)
        log(f"base model: geometric-mean test perplexity over {len(before)} domains {math.exp(mean_log):.1f}")
