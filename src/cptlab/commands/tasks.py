"""`cptlab eval-tasks`: downstream accuracy on multiple-choice tasks (local task files or lm-eval tasks)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _pm(value, stderr) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if isinstance(stderr, (int, float)) else "")


def tasks_table(data: dict):
    from rich.table import Table

    s = data["settings"]
    table = Table(title=f"{data['model']} ({s.get('precision')}, {s.get('device')})", title_justify="left")
    table.add_column("task")
    table.add_column("source")
    for name in ("n", "acc ± stderr", "acc_norm ± stderr"):
        table.add_column(name, justify="right")
    for task, r in data["tasks"].items():
        table.add_row(task, r.get("source", ""), "-" if r.get("n") is None else f"{r['n']:,}",
                      _pm(r.get("acc"), r.get("acc_stderr")), _pm(r.get("acc_norm"), r.get("acc_norm_stderr")))
    return table


def register(app: typer.Typer) -> None:
    @app.command("eval-tasks")
    def eval_tasks_cmd(
        model: str = typer.Option(..., "--model", help="HF model dir or hub name."),
        tasks: list[str] = typer.Option(..., "--tasks", help="Task file (.jsonl, or a task .yaml) or lm-eval task "
                                                             "name; repeatable and/or comma-separated."),
        batch_size: str = typer.Option("auto", "--batch-size", help="Rows (item x choice) per forward, or auto."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 (autocast)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if "
                                                                    "available)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N items of each task."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON to this file."),
        include_path: Optional[Path] = typer.Option(None, "--include-path", help="A dir of lm-eval task YAMLs "
                                                                                 "(for task names in it)."),
        samples: Optional[Path] = typer.Option(None, "--samples", help="Write one JSON line per item (log-"
                                                                       "likelihoods, prediction) to this file."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer dir (default: the model's)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress logs."),
    ) -> None:
        """Accuracy on multiple-choice tasks: the choice with the highest log-likelihood (acc) and the highest
        log-likelihood per character (acc_norm), as lm-evaluation-harness defines them.

        Task file: a .jsonl, one item per line: context, choices (a list), gold (an index or one of the choices).

        Or a small .yaml naming one (path, target_delimiter, num_fewshot, limit).

        Anything else is an lm-eval task name (or an lm-eval task .yaml), run offline on the same model.

        Example: cptlab eval-tasks --model runs/adapted/final --tasks data/capitals.jsonl,arc_easy --json acc.json
        """
        from rich.console import Console

        from cptlab.console import log, set_quiet
        from cptlab.evaluate.tasks import eval_tasks
        from cptlab.fsutil import atomic_write_json

        if quiet:
            set_quiet(True)
        result = eval_tasks(model, tasks, tokenizer=tokenizer, batch_size=batch_size, precision=precision,
                            device=device, limit=limit, include_path=include_path, samples=samples)
        data = result.to_dict()
        Console().print(tasks_table(data))
        if json_out is not None:
            atomic_write_json(json_out, data)
        log(f"{len(data['tasks'])} task(s) in {result.seconds:.1f} s")
