"""`cptlab study run|status|export` and `cptlab report`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

study_app = typer.Typer(help="Run grids of train/eval/diagnostic steps; resumable; results in one database.",
                        no_args_is_help=True, rich_markup_mode="rich")


def _fmt_time(ts) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def _fmt_duration(a, b) -> str:
    if not a or not b:
        return ""
    s = int(round(b - a))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _print_table(table) -> None:
    from rich.console import Console

    Console(width=200).print(table)


@study_app.command("run")
def run_cmd(
    spec: Path = typer.Argument(..., help="The study YAML."),
    out: Path = typer.Option(None, "--out", help="Study directory (default: runs/<study name>)."),
    only: list[str] = typer.Option(None, "--only", help="Only runs whose name matches this glob (repeatable, "
                                                        "or comma-separated); their baselines come along."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded runs and estimated cost; run nothing."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed run."),
    launcher: str = typer.Option(None, "--launcher", help="`torchrun`: run train steps under torchrun."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes per node for --launcher torchrun."),
    executor: str = typer.Option("local", "--executor", help="local | submitit-local | slurm. slurm: one job "
                                                             "array via submitit, parameters from the study "
                                                             "YAML's executor.slurm (partition, timeout_min, "
                                                             "gpus_per_node, cpus_per_task, array_parallelism, "
                                                             "additional_parameters: {account: ...})."),
    overrides: list[str] = typer.Option(None, "--set", help="Override a key of the study YAML: a.b=value."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (or the dry run) as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", help="Logs only, no progress bars."),
) -> None:
    """Expand the study's grid into runs and run those not done yet (skipped when their config hash is done).

    Example: cptlab study run study.yaml --out runs/lr-sweep --only 'grid-code-*'

    On a SLURM cluster (from a login node; the study dir must be on a shared filesystem), add to study.yaml
    `executor: {slurm: {partition: gpu, timeout_min: 240, gpus_per_node: 1, cpus_per_task: 8,
    array_parallelism: 16}}` and run: cptlab study run study.yaml --executor slurm
    """
    from cptlab.console import log, set_quiet
    from cptlab.errors import UsageError
    from cptlab.study.runner import EXECUTORS, RunnerOptions, estimate, open_study, run_study
    from cptlab.study.spec import select

    set_quiet(quiet)
    if executor not in EXECUTORS:
        raise UsageError(f"--executor {executor}: expected one of {', '.join(EXECUTORS)}")
    if launcher not in (None, "torchrun"):
        raise UsageError(f"--launcher {launcher}: expected torchrun")
    if dry_run:
        study = open_study(spec, out, overrides)
        rows = estimate(study, select(study.runs, only))
        status = _db_status(study.dir, {r["name"]: r["hash"] for r in rows})
        for r in rows:
            r["status"] = status.get(r["name"], "new")
        if as_json:
            typer.echo(json.dumps({"study_dir": str(study.dir), "runs": rows}, indent=2))
            return
        _print_dry_run(study, rows)
        return
    options = RunnerOptions(fail_fast=fail_fast, launcher=launcher, nproc=nproc, executor=executor)
    summary = run_study(spec, out, only, options, overrides)
    counts = summary["counts"]
    line = f"study {summary['study_dir']}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        log(line)
    else:
        typer.echo(line)  # the result: stdout (logs went to stderr)
    if counts.get("failed"):
        raise SystemExit(1)


def _db_status(study_dir: Path, hashes: dict[str, str]) -> dict[str, str]:
    from cptlab.study.store import DB_NAME, Store

    if not (study_dir / DB_NAME).is_file():
        return {}
    with Store(study_dir, create=False) as store:
        out = {}
        for row in store.runs():
            if row["name"] in hashes:
                out[row["name"]] = row["status"] if row["hash"] == hashes[row["name"]] else "changed"
        return out


def _print_dry_run(study, rows) -> None:
    from rich.table import Table

    from cptlab.report.sections import fmt

    table = Table(title=f"study {study.spec.name} ({study.spec.kind}) -> {study.dir}", title_justify="left")
    for c in ("run", "role", "status", "steps", "train tokens", "FLOPs (6ND)", "hash"):
        table.add_column(c, justify="right" if c in ("train tokens", "FLOPs (6ND)") else "left")
    tokens = flops = 0
    for r in rows:
        tokens += r["tokens"] or 0
        flops += r["flops"] or 0
        table.add_row(r["name"], r["role"], r["status"], r["steps"], fmt(r["tokens"]),
                      f"{r['flops']:.2e}" if r["flops"] else "–", r["hash"])
    table.add_section()
    todo = [r for r in rows if r["status"] != "done"]
    table.add_row(f"{len(rows)} runs ({len(todo)} to run)", "", "", "", fmt(int(tokens)),
                  f"{flops:.2e}" if flops else "–", "", style="bold")
    _print_table(table)


@study_app.command("status")
def status_cmd(
    study_dir: Path = typer.Argument(..., help="The study directory (holds results.sqlite)."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
) -> None:
    """Table of runs: done / failed (with its error) / pending / running, with times.

    Example: cptlab study status runs/lr-sweep
    """
    from rich.table import Table

    from cptlab.study.store import Store, claimant_alive

    with Store(study_dir, create=False) as store:
        runs = store.runs()
        counts = store.counts()
        rows = []
        for r in runs:
            status = r["status"]
            if status == "running" and not claimant_alive(r["claimed_by"], r["claimant_started"], r["heartbeat"],
                                                          120.0):
                status = "interrupted"
            rows.append({"name": r["name"], "role": r["role"], "status": status, "attempts": r["attempts"],
                         "started": _fmt_time(r["started"]), "duration": _fmt_duration(r["started"], r["ended"]),
                         "claimed_by": r["claimed_by"] if status == "running" else None, "error": r["error"]})
    if as_json:
        typer.echo(json.dumps({"runs": rows, "counts": counts}, indent=2))
        return
    colors = {"done": "green", "failed": "red", "running": "yellow", "interrupted": "magenta", "pending": "dim"}
    table = Table(title=f"{study_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
                  title_justify="left")
    for c in ("run", "role", "status", "attempts", "started (UTC)", "duration", "error / claimed by"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["name"], r["role"], f"[{colors.get(r['status'], 'white')}]{r['status']}[/]",
                      str(r["attempts"]), r["started"], r["duration"], r["error"] or r["claimed_by"] or "")
    _print_table(table)


@study_app.command("export")
def export_cmd(
    study_dir: Path = typer.Argument(..., help="The study directory (holds results.sqlite)."),
    csv: bool = typer.Option(False, "--csv", help="Write one CSV file per table."),
    out: Path = typer.Option(None, "--out", help="Where the CSV files go (default: DIR/export)."),
) -> None:
    """Export the results database: one CSV per table (runs, steps, metrics, evaluations, diagnostics, ...).

    Example: cptlab study export runs/lr-sweep --csv --out /tmp/lr-sweep-csv
    In Python: `cptlab.study.store.to_dataframes("runs/lr-sweep")` gives the same tables as pandas DataFrames.
    """
    from cptlab.errors import UsageError
    from cptlab.study.store import export_csv

    if not csv:
        raise UsageError("study export: choose a format (--csv)")
    for path in export_csv(study_dir, out or Path(study_dir) / "export"):
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")

    @app.command("report")
    def report_cmd(
        study_dir: Path = typer.Argument(..., help="The study directory (holds results.sqlite)."),
        open_browser: bool = typer.Option(False, "--open", help="Open the report in a web browser."),
        out: Path = typer.Option(None, "--out", help="Report directory (default: DIR/report)."),
    ) -> None:
        """Write DIR/report/index.html (self-contained, plots embedded) and its plots as PNG files beside it.

        Example: cptlab report runs/lr-sweep --open
        """
        from cptlab.report.render import render_report

        index = render_report(study_dir, out)
        typer.echo(str(index))
        if open_browser:
            import webbrowser

            webbrowser.open(index.resolve().as_uri())
