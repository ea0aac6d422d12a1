"""The one shape of the edit scripts beside it: read a CSV of this folder, refuse if it already has the columns the
edit adds (each edit ran once, before the rows it touched were costed), fill each row, write it back whole (a
temporary file moved into place: never half-written)."""

import csv
import os
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))


def add_columns(name: str, columns: list[str], fill: Callable[[dict], None]) -> list[dict]:
    """Append `columns` to the CSV `name` of this folder, each row's cells set by `fill(row)`; the rows written."""
    path = os.path.join(HERE, name)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fields = list(rows[0])
    if columns[0] in fields:
        raise SystemExit(f"{path}: already has the column {columns[0]!r} (this edit ran once, before the rows were costed)")
    for row in rows:
        fill(row)
    with open(path + ".tmp", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields + columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)
    return rows
