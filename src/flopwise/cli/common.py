"""Shared console objects and option checks for the CLI (library code never prints)."""

from __future__ import annotations

import os

from rich.console import Console

from flopwise.config_values import check_number

PIPED_WIDTH = 200  # columns with no terminal at all: Rich's 80 would cut the plan table's last columns


def _console(stderr: bool = False) -> Console:
    """Rich takes its width from whichever standard stream is a terminal (`flopwise plan | tee log` keeps the
    terminal's); with none (a batch job, CI, `nohup`) the output gets room for every column, unless COLUMNS says
    otherwise."""
    if os.environ.get("COLUMNS", "").isdigit() or any(_isatty(fd) for fd in (0, 1, 2)):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPED_WIDTH)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


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
