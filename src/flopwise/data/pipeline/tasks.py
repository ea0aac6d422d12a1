"""The pipeline's tasks: typed descriptions of the work on one unit, and the functions that do it.

A task is a frozen dataclass that travels to a worker (a local process or a Ray task) and names every
file it reads and writes (`UnitFiles`). Each task writes its outputs under temporary names, renames them
into place, and writes its completion marker last; a restarted run skips units whose marker exists.
  MapTask       one segment's per-document stages over one unit: documents out, dedup signatures, marker
  reduce_segment  (in the driver) one segment's dedup stages over all units' signatures, in unit order
  TokenizeTask  one unit's final documents into token files
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flopwise.atomic import atomic_path, atomic_write_json, atomic_write_text
from flopwise.data.config import PipelineConfig
from flopwise.data.document import from_line, open_lines, text_bytes, to_line
from flopwise.data.pipeline.dropped import DropLog
from flopwise.data.pipeline.tokenizer import held_out, load_tokenizer
from flopwise.data.shards import token_dtype
from flopwise.data.sources import SourceReport, WorkUnit, read_unit
from flopwise.data.stages import DedupStage, Segment, Stage, build_stage

SPLITS = ("train", "eval")
TOKENIZE_BATCH = 512  # documents per encode_batch call


@dataclass(frozen=True)
class UnitFiles:
    """The files of one unit in one step's folder: one naming scheme for the writer and every reader."""

    dir: Path
    index: int

    def _path(self, suffix: str) -> Path:
        return self.dir / f"u{self.index:06d}{suffix}"

    @property
    def docs(self) -> Path:  # the unit's documents after this step (JSON lines)
        return self._path(".jsonl")

    @property
    def ids(self) -> Path:  # the ids of `docs`, in order (JSON list): what a dedup reduce reads
        return self._path(".ids.json")

    def signatures(self, barrier: int) -> Path:  # dedup signatures of `docs`, for the segment's barrier-th
        return self._path(f".sig{barrier}.npy")

    def dropped(self, stage: int) -> Path:  # documents the stage-th stage dropped here (write_dropped)
        return self._path(f".drop{stage:03d}.jsonl")

    def tokens(self, split: str) -> Path:
        return self._path(f".{split}.bin")

    @property
    def marker(self) -> Path:  # written last: the unit's step is complete
        return self._path(".done.json")


@dataclass(frozen=True)
class MapTask:
    cfg: PipelineConfig
    segment: Segment
    unit: WorkUnit
    source: UnitFiles | None  # the previous segment's output for this unit; None: read the input
    decisions: Path | None  # the previous segment's dedup decisions, if it had dedup stages
    out: UnitFiles


@dataclass(frozen=True)
class TokenizeTask:
    cfg: PipelineConfig
    unit: WorkUnit
    tokenizer: Path
    source: UnitFiles  # the last segment's output for this unit
    decisions: Path | None  # the last segment's dedup decisions
    out: UnitFiles


def build_stages(cfg: PipelineConfig, indices: range) -> list[Stage]:
    """The stages at `indices` of the pipeline, named as in reports (unique names)."""
    names = cfg.stage_names()
    stages = []
    for i in indices:
        st = build_stage(cfg.stages[i].type, cfg.stages[i].params)
        st.name = names[i]
        stages.append(st)
    return stages


# ---------------------------------------------------------------- reading a previous step's documents


def load_decisions(path: Path | None) -> dict[str, list[str]]:
    """A segment's dedup decisions: {dropped id: [stage name, reason, id of the kept duplicate]}; read
    once per process (per version of the file)."""
    return {} if path is None else _decisions(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _decisions(path: Path, mtime_ns: int) -> dict[str, list[str]]:
    return json.loads(path.read_text())["dropped"]


def read_kept(source: UnitFiles, decisions: Path | None, drops: DropLog | None = None) -> Iterator[dict]:
    """The documents of `source` that the dedup decisions keep; the others go to `drops`."""
    dropped = load_decisions(decisions)
    with open_lines(source.docs) as fh:
        for line in fh:
            doc = from_line(line)
            hit = dropped.get(doc["id"])
            if hit is None:
                yield doc
            elif drops is not None:
                drops.add(doc, hit[0], hit[1], duplicate_of=hit[2])


# ---------------------------------------------------------------- map


def map_unit(task: MapTask) -> None:
    """Run one segment's per-document stages over one unit; write docs, signatures, then the marker."""
    cfg, seg, out = task.cfg, task.segment, task.out
    stages = build_stages(cfg, seg.stages)
    barriers: list[DedupStage] = build_stages(cfg, seg.barriers)  # type: ignore[assignment]
    drops = DropLog(cfg.stage_names()) if cfg.output.write_dropped else None
    for st in stages:
        st.on_drop = drops.add if drops is not None else None
    report = SourceReport()
    ids: list[str] = []
    sigs: list[list] = [[] for _ in barriers]
    n_out = 0
    if task.source is None:
        docs = read_unit(cfg, task.unit, report)
    else:
        docs = read_kept(task.source, task.decisions, drops)
    try:
        with atomic_path(out.docs) as tmp, open_lines(tmp, "w") as fh:

            def flush(batch: list[dict]) -> None:
                nonlocal n_out
                for st in stages:
                    batch = st.process(batch)
                for doc in batch:
                    if barriers:
                        ids.append(doc["id"])
                        for b, lst in zip(barriers, sigs, strict=True):
                            lst.append(b.signature(doc) if b.applies(doc) else None)
                    fh.write(to_line(doc))
                n_out += len(batch)

            batch: list[dict] = []
            for doc in docs:
                batch.append(doc)
                if len(batch) >= cfg.run.batch_docs:
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)
    finally:
        for st in stages:
            st.close()
    if barriers:
        for j, (b, lst) in enumerate(zip(barriers, sigs, strict=True)):
            present = np.array([s is not None for s in lst], dtype=bool)
            arr = np.zeros(len(lst), dtype=b.sig_dtype)
            for i, s in enumerate(lst):
                if s is not None:
                    arr[i] = s
            with atomic_path(out.signatures(j)) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
                np.save(fh, present)
        atomic_write_text(out.ids, json.dumps(ids))  # ASCII: ids may hold lone surrogates
    if drops is not None:
        drops.write(out.dropped)
    atomic_write_json(
        out.marker,
        {
            "unit": task.unit.index,
            "docs_out": n_out,
            "source": report.to_json() if task.source is None else None,
            "stages": {st.name: st.stats.to_json() for st in stages},
        },
    )


# ---------------------------------------------------------------- reduce (dedup barriers)


def reduce_segment(
    cfg: PipelineConfig,
    seg: Segment,
    units: list[UnitFiles],
    out: Path,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Run the segment's dedup stages over every unit's signatures in unit order; write the decisions
    ({"dropped": {id: [stage, reason, kept id]}, "stats": {stage: counts}}) to `out`."""
    dropped: dict[str, list[str]] = {}
    stats = {}
    for j, b in enumerate(build_stages(cfg, seg.barriers)):
        assert isinstance(b, DedupStage)
        if progress:
            progress(b.name, 0, len(units))

        def items(j=j, name=b.name):
            for i, files in enumerate(units):
                doc_ids = json.loads(files.ids.read_text())
                with open(files.signatures(j), "rb") as fh:
                    sig, present = np.load(fh), np.load(fh)
                for n, doc_id in enumerate(doc_ids):
                    if doc_id not in dropped:  # else removed by an earlier dedup stage of this segment
                        yield doc_id, (sig[n] if present[n] else None)
                if progress:
                    progress(name, i + 1, len(units))

        for doc_id, kept in b.reduce(items()).items():
            dropped[doc_id] = [b.name, b.reason, kept]
        stats[b.name] = b.stats.to_json()
    atomic_write_json(out, {"dropped": dropped, "stats": stats})


# ---------------------------------------------------------------- tokenize


def tokenize_unit(task: TokenizeTask) -> None:
    """Tokenize one unit's final documents into <unit>.train.bin / .eval.bin, then the marker."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = task.cfg
    tok = load_tokenizer(task.tokenizer)
    tok.encode_special_tokens = True  # "<|endoftext|>" written in a document is text, not a document end
    eod = tok.token_to_id(cfg.tokenizer.eod_token)
    dtype = token_dtype(tok.get_vocab_size())
    drops = DropLog(cfg.stage_names()) if cfg.output.write_dropped else None
    counts = {s: [0, 0, 0] for s in SPLITS}  # docs, tokens, bytes
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    eod_arr = np.array([eod], dtype=dtype)
    is_eval = held_out(cfg.output)

    def encode(batch: list[dict]) -> None:
        for doc, enc in zip(batch, tok.encode_batch([d["text"] for d in batch]), strict=True):
            split = "eval" if is_eval(doc["id"]) else "train"
            ids = np.asarray(enc.ids, dtype=dtype)
            parts[split] += (ids, eod_arr)
            c = counts[split]
            c[0] += 1
            c[1] += ids.size + 1
            c[2] += text_bytes(doc["text"])

    batch = []
    for doc in read_kept(task.source, task.decisions, drops):
        batch.append(doc)
        if len(batch) >= TOKENIZE_BATCH:
            encode(batch)
            batch = []
    if batch:
        encode(batch)
    for split, arrs in parts.items():
        with atomic_path(task.out.tokens(split)) as tmp:
            (np.concatenate(arrs) if arrs else np.zeros(0, dtype)).tofile(tmp)
    if drops is not None:
        drops.write(task.out.dropped)
    atomic_write_json(task.out.marker, {"unit": task.unit.index, "counts": counts})
