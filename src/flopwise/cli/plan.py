"""`flopwise plan`: the planner's commands (filled in by the planner issue)."""

import typer

app = typer.Typer(help="Predict step time, memory and cost; choose the most compute-efficient layout.")
