"""The `flopwise` command. Each subcommand parses, calls one library function and prints with rich.

A FlopwiseError becomes `error: ...` on stderr and exit status 2, without a traceback."""

from __future__ import annotations

import importlib
import sys

import typer

from flopwise.cli import cluster as cluster_cli
from flopwise.cli import data as data_cli
from flopwise.cli import plan as plan_cli
from flopwise.cli import serve as serve_cli
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
serve_cli.register(app)
app.add_typer(plan_cli.app, name="plan")
app.add_typer(data_cli.app, name="data")
app.add_typer(cluster_cli.app, name="cluster")


def _click_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """The click exception class `name`, from click and from the copy of click that newer typer releases
    vendor (typer._click): a usage error may come from either, depending on the installed typer."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


_EXIT = (*_click_exceptions("Exit"), typer.Exit)
_ABORT = (*_click_exceptions("Abort"), typer.Abort)
_USAGE = _click_exceptions("ClickException")


def main(argv: list[str] | None = None) -> None:
    try:
        status = app(args=argv, standalone_mode=False)
    except FlopwiseError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except _EXIT as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except _ABORT:
        err_console.print("aborted")
        sys.exit(130)
    except _USAGE as exc:  # unknown option, bad value: click's usage message, exit 2, no traceback
        exc.show()
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    if isinstance(status, int) and status:  # without standalone mode, click returns Exit's code
        sys.exit(status)
