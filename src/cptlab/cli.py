"""The `cptlab` command. Thin: each command module parses its options and calls one library function.

Command modules live in `cptlab.commands.*` and import heavy libraries (torch, transformers) inside the
command bodies so that `cptlab --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer

from cptlab.errors import CptlabError

try:  # typer >= 0.20 vendors click as typer._click: its exceptions are not click's
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover
    _typer_click = None
_CLICK_ERRORS = (click.ClickException,) + ((_typer_click.ClickException,) if _typer_click else ())
_EXITS = (click.exceptions.Exit, typer.Exit)
_ABORTS = (click.exceptions.Abort, typer.Abort, KeyboardInterrupt)

app = typer.Typer(
    name="cptlab",
    help="Continued pretraining of causal LMs, and finding out whether and why it helps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

# Each module defines `register(app)`; the order is the order of `cptlab --help`.
COMMAND_MODULES = [
    "cptlab.commands.demo",
    "cptlab.commands.corpus",
    "cptlab.commands.tokens",
    "cptlab.commands.train",
    "cptlab.commands.evaluate",
    "cptlab.commands.tasks",
    "cptlab.commands.study",
    "cptlab.commands.diagnose",
    "cptlab.commands.sensitivity",
    "cptlab.commands.remedies",
    "cptlab.commands.mixlaw",
]


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # not written yet
                continue
            raise
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point: library errors become one message and a non-zero exit, never a traceback."""
    from cptlab.console import console

    try:
        rv = app(args=argv, prog_name="cptlab", standalone_mode=False)
    except _EXITS as e:
        sys.exit(e.exit_code)
    except _CLICK_ERRORS as e:  # usage errors: exit 2
        e.show()
        sys.exit(e.exit_code)
    except _ABORTS:
        console.print("[red]interrupted[/]")
        sys.exit(130)
    except CptlabError as e:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)  # paths stay on one line
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
