"""Dropped documents with their reason (`[output] write_dropped = true`), so users can see why a document
went.

Every work unit writes the documents it drops to one file per stage (atomically, before the unit's
completion marker, so resumption neither loses nor repeats any); at the end each stage's files are
concatenated in unit order into <shard dir>/dropped/<stage>.jsonl. A record is the document as it reached
the stage (id, text, extra fields) with `stage` and `reason`, and `detail` (a failing test's output) or
`duplicate_of` (the id of the kept document) where there is one.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

from flopwise.atomic import atomic_path
from flopwise.data.document import open_lines, to_line

FOLDER = "dropped"  # inside the shard directory
OURS = ("stage", "reason", "detail", "duplicate_of")  # keys we add; a document's own field of that name yields


class DropLog:
    """Collects one unit's dropped documents, by stage; `write` puts each stage's in its file."""

    def __init__(self, stage_names: list[str]) -> None:
        self.index = {name: i for i, name in enumerate(stage_names)}
        self.lines: dict[int, list[str]] = {}

    def add(self, doc: dict, stage: str, reason: str, detail: str = "", duplicate_of: str = "") -> None:
        """Record a dropped document (the signature of Stage.on_drop, plus the kept duplicate's id)."""
        rec = {"id": doc["id"], "stage": stage, "reason": reason}
        if detail:
            rec["detail"] = detail
        if duplicate_of:
            rec["duplicate_of"] = duplicate_of
        rec.update((k, v) for k, v in doc.items() if k not in OURS)
        self.lines.setdefault(self.index[stage], []).append(to_line(rec))

    def write(self, path_of: Callable[[int], Path]) -> None:
        """Write each stage's records to path_of(stage index)."""
        for i, lines in self.lines.items():
            with atomic_path(path_of(i)) as tmp, open_lines(tmp, "w") as fh:
                fh.writelines(lines)


def file_name(stage: str) -> str:
    """The file of a stage's dropped documents (stage names are free text; file names are not)."""
    return re.sub(r"[^\w.#+-]", "_", stage) + ".jsonl"


def gather(parts: Callable[[int], list[Path]], stage_names: list[str], out_dir: Path) -> list[Path]:
    """Concatenate each stage's unit files (parts(stage index), in unit order) into its file in out_dir."""
    names = [file_name(s) for s in stage_names]
    if len(set(names)) < len(names):  # two names alike but for characters a file name cannot hold
        names = [f"{i:02d}-{n}" for i, n in enumerate(names)]
    out_dir.mkdir(parents=True, exist_ok=True)  # present and empty when nothing was dropped
    written = []
    for i, name in enumerate(names):
        files = parts(i)
        if not files:
            continue
        with atomic_path(out_dir / name) as tmp, open(tmp, "wb") as out:
            for f in files:
                with open(f, "rb") as fh:
                    shutil.copyfileobj(fh, out)
        written.append(out_dir / name)
    return written
