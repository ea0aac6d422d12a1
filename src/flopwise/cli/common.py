"""Shared console objects and option checks for the CLI (library code never prints)."""

from __future__ import annotations

from rich.console import Console

from flopwise.config_values import check_number

console = Console()
err_console = Console(stderr=True)


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
