"""`cptlab demo`: the offline demo on real text found on this machine."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        quick: bool = typer.Option(False, "--quick", help="The small version (odyssey about 4.5 minutes, "
                                   "overtraining about 1.5 minutes on 2 CPU cores; benchmarks/results/demo.md)."),
        study: str = typer.Option("odyssey", "--study", help="Which demo study: odyssey | overtraining."),
        out: Path = typer.Option(Path("runs/demo"), "--out", help="Where corpora, models and results go."),
        quiet: bool = typer.Option(False, "--quiet", help="Logs only, no progress bars."),
    ) -> None:
        """Build corpora from text on this machine, pretrain a tiny model, adapt it, evaluate before/after.

        Example: cptlab demo --quick --out runs/demo
        """
        from cptlab.console import set_quiet
        from cptlab.demo.pipeline import run_demo

        set_quiet(quiet)
        run_demo(out=out, quick=quick, study=study)
