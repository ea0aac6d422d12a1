"""Shared console objects and option checks for the CLI (library code never prints)."""

from __future__ import annotations

import os

from rich.console import Console

from flopwise.config_values import check_number

PIPED_WIDTH = 200  # columns when the output is a file or a pipe: Rich's 80 would cut the plan table's columns


def _console(stderr: bool = False) -> Console:
    """A terminal keeps its own width; piped output (a log, `| tee`, CI) gets room for every column, unless
    COLUMNS says otherwise."""
    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(stderr=stderr, width=PIPED_WIDTH)


console = _console()
err_console = _console(stderr=True)


def number(*, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, integer: bool = False):
    """An option callback that refuses NaN, infinity and values outside [low, high] with one line naming the
    option (flopwise.config_values.check_number); None (an option not given) passes.

        gpus: int = typer.Option(8, help="...", callback=number(low=1, integer=True))
    """

    def callback(ctx, param, value):  # untyped: typer passes (context, parameter, value) by position
        if value is None:
            return None
        name = max(getattr(param, "opts", None) or [f"--{param.name}"], key=len)
        return check_number(name, value, low=low, high=high, low_open=low_open, high_open=high_open,
                            integer=integer)

    return callback


# the common cases, for `callback=`
POSITIVE_INT = number(low=1, integer=True)
NON_NEGATIVE_INT = number(low=0, integer=True)
POSITIVE = number(low=0, low_open=True)
NON_NEGATIVE = number(low=0)
