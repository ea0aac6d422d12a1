"""The `flopwise` command. Each subcommand parses, calls one library function and prints with rich.

A FlopwiseError becomes `error: ...` on stderr and exit status 2, without a traceback."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.markup import escape

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


def _plain_flags(command) -> None:
    """Show on/off options as plain flags (`--resume`), not `--resume <bool>`: some typer releases print a
    value type for flags, which take none."""
    for param in getattr(command, "params", []):
        if getattr(param, "is_flag", False):
            param.metavar = ""
    if hasattr(command, "get_help_option"):  # --help is made when help is printed, not listed in params
        made = command.get_help_option

        def get_help_option(ctx, made=made):
            option = made(ctx)
            if option is not None:
                option.metavar = ""
            return option

        command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        _plain_flags(sub)


def command():
    """The `flopwise` click command, as `main` runs it."""
    cmd = typer.main.get_command(app)
    _plain_flags(cmd)
    return cmd


def print_error(message: str) -> None:
    """The one place the CLI prints an error: one `error: ...` line on stderr. The message is escaped, so
    text such as `[[sources]]` or `[0, 1)` is printed as written, not taken for rich markup."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _usage_message(exc) -> str:
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None and getattr(ctx, "command_path", "") else ""
    return " ".join(exc.format_message().split()) + hint


def main(argv: list[str] | None = None) -> None:
    try:
        status = command().main(args=argv, standalone_mode=False)
    except FlopwiseError as exc:
        print_error(str(exc))
        sys.exit(2)
    except _EXIT as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except _ABORT:
        err_console.print("aborted")
        sys.exit(130)
    except _USAGE as exc:  # unknown option, bad value: click's message on one line, exit 2, no traceback
        print_error(_usage_message(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except OSError as exc:
        # a file or folder a command reads or writes: one line, like any other bad input; a broken connection or
        # pipe, or an error without a file, keeps its traceback
        if not exc.filename or not exc.strerror or isinstance(exc, ConnectionError):
            raise
        print_error(f"{exc.filename}: {exc.strerror}")
        sys.exit(2)
    if isinstance(status, int) and status:  # without standalone mode, click returns Exit's code
        sys.exit(status)
