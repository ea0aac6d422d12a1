"""`flopwise data`: the data pipeline's commands (filled in by the data-pipeline issue)."""

import typer

app = typer.Typer(help="Turn raw corpora into training shards: clean, deduplicate, verify, tokenize, pack.")
