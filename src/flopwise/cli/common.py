"""Shared console objects for the CLI (library code never prints)."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
