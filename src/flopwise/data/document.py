"""What a document is, and how it is written between pipeline steps.

A document is a plain dict: {"id": "<source name>:<stable id>", "text": str, plus the source's extra
`fields`}. Plain dicts keep the per-document cost of the stages low; this module is the one place that
knows their shape and their JSON-lines form.
"""

from __future__ import annotations

import json


def source_of(doc_id: str) -> str:
    """The source name a document id starts with (ids are "<source name>:<id within the source>")."""
    return doc_id.partition(":")[0]


def text_bytes(text: str) -> int:
    """UTF-8 size of `text` (lone surrogates from the input count as 3 bytes each)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def open_lines(path, mode: str = "r"):
    """A JSON-lines file of documents. Ids may hold lone surrogates (file names that are not UTF-8,
    decoded with surrogateescape); they are written and read back unchanged."""
    return open(path, mode, encoding="utf-8", errors="surrogatepass")


def to_line(doc: dict) -> str:
    """One JSON-lines record (with its newline)."""
    return json.dumps(doc, ensure_ascii=False) + "\n"


def from_line(line: str) -> dict:
    return json.loads(line)
