"""The base every stage shares: it counts documents, bytes and drop reasons, once, for all stages.

A per-document stage says only what becomes of each document: `apply(doc)` changes the document in place
if needed and returns a drop reason, or None to keep it (`judge` does the same for a whole batch, for
stages that work on batches). `Stage.process` is the one place that counts documents and bytes in and
out and drops by reason, and hands every dropped document with its reason to `on_drop` (set by the
pipeline when dropped documents are written out).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from flopwise.data.document import source_of, text_bytes

# A drop reason, or (reason, detail) where a stage has more to say (a failing test's output).
Verdict = str | tuple[str, str] | None
DropHook = Callable[[dict, str, str, str], None]  # (document, stage name, reason, detail)


@dataclass
class StageStats:
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: Counter = field(default_factory=Counter)
    extra: dict = field(default_factory=dict)  # stage-specific figures (replacements, clusters, events)

    def merge(self, other: dict) -> None:
        """Add the counts of another unit's stats (as written by `to_json`)."""
        self.docs_in += other["docs_in"]
        self.docs_out += other["docs_out"]
        self.bytes_in += other["bytes_in"]
        self.bytes_out += other["bytes_out"]
        self.drops.update(other["drops"])
        for k, v in other.get("extra", {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.extra[k] = self.extra.get(k, 0) + v
            elif isinstance(v, list):
                self.extra[k] = (self.extra.get(k, []) + v)[:50]
            elif isinstance(v, dict):
                cur = self.extra.setdefault(k, {})
                for kk, vv in v.items():
                    cur[kk] = cur.get(kk, 0) + vv
            else:
                self.extra[k] = v

    def to_json(self) -> dict:
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "drops": dict(self.drops),
            "extra": self.extra,
        }


class Stage:
    """One step of the pipeline. Subclasses set `type` and `defaults` (every parameter they accept) and
    implement `apply` (or `judge`)."""

    type: ClassVar[str] = ""
    barrier: ClassVar[bool] = False  # a dedup stage: decided over all units at once (see dedup.py)
    defaults: ClassVar[dict] = {}

    def __init__(self, name: str, only_sources: list[str] | None = None, **params):
        self.name = name
        self.only_sources = frozenset(only_sources or ())
        self.p = {**self.defaults, **params}
        self.stats = StageStats()
        self.on_drop: DropHook | None = None

    def applies(self, doc: dict) -> bool:
        return not self.only_sources or source_of(doc["id"]) in self.only_sources

    def apply(self, doc: dict) -> Verdict:
        """Change `doc` in place if needed; return a drop reason, or None to keep it."""
        raise NotImplementedError

    def judge(self, docs: list[dict]) -> list[Verdict]:
        """The verdict for each document of a batch; documents the stage does not apply to are kept."""
        apply, applies = self.apply, self.applies
        return [apply(doc) if applies(doc) else None for doc in docs]

    def process(self, docs: list[dict]) -> list[dict]:
        """Judge a batch; count it; return the kept documents in order."""
        texts = [doc["text"] for doc in docs]
        sizes = [text_bytes(t) for t in texts]
        verdicts = self.judge(docs)
        st = self.stats
        kept, bytes_out = [], 0
        for doc, text, size, verdict in zip(docs, texts, sizes, verdicts, strict=True):
            if verdict is None:
                kept.append(doc)
                # the text object changes only when the stage rewrote the document
                bytes_out += size if doc["text"] is text else text_bytes(doc["text"])
                continue
            reason, detail = verdict if isinstance(verdict, tuple) else (verdict, "")
            st.drops[reason] += 1
            if self.on_drop is not None:
                self.on_drop(doc, self.name, reason, detail)
        st.docs_in += len(docs)
        st.bytes_in += sum(sizes)
        st.docs_out += len(kept)
        st.bytes_out += bytes_out
        return kept

    def close(self) -> None:
        """Release resources (thread pools) at the end of a unit."""
