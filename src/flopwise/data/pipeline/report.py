"""What a pipeline run reports: one row per step (read, each stage, tokenize) with documents, bytes and
tokens in and out and drops by reason, summed from the units' completion markers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flopwise.data.shards import read_manifest
from flopwise.data.sources import SourceReport
from flopwise.data.stages import StageStats


@dataclass
class PipelineResult:
    shard_dir: Path
    cache_dir: Path
    key: str
    cached: bool
    seconds: float
    stages: list[dict] = field(default_factory=list)  # rows: stage, docs/bytes/tokens in/out, drops
    source_problems: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    splits: dict = field(default_factory=dict)
    dropped_dir: Path | None = None  # dropped documents by stage (output.write_dropped)

    def to_json(self) -> dict:
        return {
            "shard_dir": str(self.shard_dir),
            "cache_dir": str(self.cache_dir),
            "key": self.key,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "stages": self.stages,
            "source_problems": self.source_problems,
            "events": self.events,
            "splits": self.splits,
            "dropped_dir": str(self.dropped_dir) if self.dropped_dir else None,
        }


def collect(names: list[str], map_markers: list[Path], barrier_stats: dict, tok_markers: list[Path]) -> dict:
    """Sum the units' markers into the report: rows by step, input problems and events, split counts."""
    source = SourceReport()
    stage_stats = {n: StageStats() for n in names}
    for marker in map_markers:
        done = json.loads(marker.read_text())
        if done["source"]:
            source.merge(done["source"])
        for name, st in done["stages"].items():
            stage_stats[name].merge(st)
    for name, st in barrier_stats.items():
        stage_stats[name].merge(st)
    counts = {"train": [0, 0, 0], "eval": [0, 0, 0]}  # docs, tokens, bytes
    for marker in tok_markers:
        c = json.loads(marker.read_text())["counts"]
        for split in counts:
            counts[split] = [a + b for a, b in zip(counts[split], c[split], strict=True)]
    docs_tok = counts["train"][0] + counts["eval"][0]
    bytes_tok = counts["train"][2] + counts["eval"][2]
    rows = [
        {
            "stage": "read",
            "docs_in": None,
            "docs_out": source.docs,
            "bytes_in": None,
            "bytes_out": source.bytes,
            "tokens_out": None,
            "drops": dict(source.problems),
        }
    ]
    for n in names:
        row = {"stage": n, **stage_stats[n].to_json(), "tokens_out": None}
        if n in barrier_stats:  # a dedup reduce reads signatures, not text
            row["bytes_in"] = row["bytes_out"] = None
        rows.append(row)
    rows.append(
        {
            "stage": "tokenize",
            "docs_in": docs_tok,
            "docs_out": docs_tok,
            "bytes_in": bytes_tok,
            "bytes_out": bytes_tok,
            "tokens_out": counts["train"][1] + counts["eval"][1],
            "drops": {},
            "extra": {"train": counts["train"][:2], "eval": counts["eval"][:2]},
        }
    )
    return {
        "stages": rows,
        "source_problems": dict(source.problems),
        "events": source.events,
        "counts": counts,
    }


def result_from_manifest(shards: Path, root: Path, key: str, cached: bool, seconds: float) -> PipelineResult:
    m = read_manifest(shards)
    p = m.extra.get("pipeline", {})
    return PipelineResult(
        shard_dir=shards,
        cache_dir=root,
        key=key,
        cached=cached,
        seconds=seconds,
        stages=p.get("stages", []),
        source_problems=p.get("source_problems", {}),
        events=p.get("events", []),
        splits={k: vars(v) for k, v in m.splits.items()},
    )
