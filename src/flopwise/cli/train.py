"""`flopwise train`, `flopwise generate`, `flopwise info`."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from flopwise.cli.common import console


def info(
    preset: str = typer.Option("tiny", "--preset", "-p", help="Model preset name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Parameters and training FLOPs per token of a model preset (counted on the meta device)."""
    from flopwise.models.info import model_info

    data = model_info(preset)
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title=f"{preset}", show_header=False)
    for key, value in data.items():
        table.add_row(key, _fmt(value))
    console.print(table)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def register(app: typer.Typer) -> None:
    app.command()(info)
