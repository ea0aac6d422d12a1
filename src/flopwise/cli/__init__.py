"""The `flopwise` command. Each subcommand parses, calls one library function and prints with rich.

A FlopwiseError becomes `error: ...` on stderr and exit status 2, without a traceback."""

from __future__ import annotations

import sys

import click
import typer

from flopwise.cli import data as data_cli
from flopwise.cli import plan as plan_cli
from flopwise.cli import train as train_cli
from flopwise.cli.common import err_console
from flopwise.errors import FlopwiseError

app = typer.Typer(
    name="flopwise",
    help="Plan, prepare data for and train large language models at high compute efficiency.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_cli.register(app)
app.add_typer(plan_cli.app, name="plan")
app.add_typer(data_cli.app, name="data")


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except FlopwiseError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
