"""The driver: plans a run's tasks step by step, hands them to an executor, and assembles the result.

How it runs. The input is split into work units (flopwise.data.sources). The stage list is cut into
segments at dedup stages (barriers): within a segment every unit is processed independently (MapTask:
in local processes, or as Ray Data tasks), writing its surviving documents and dedup signatures to the
work directory and then a completion marker; a barrier's reduce reads all signatures in unit order and
writes the set of dropped documents. Then a tokenizer is trained (or loaded), every unit is tokenized
into its own token files with a marker (TokenizeTask), and the files are packed into shards; the
manifest is written last.

Resumable: every file is written to a temporary name and renamed, markers come after their data, and a
restarted run skips units whose marker exists. All decisions depend only on the input and configuration
(never on timing or worker count), so a run killed at any moment and started again produces exactly the
documents of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from flopwise.atomic import atomic_write_json
from flopwise.data.config import PipelineConfig
from flopwise.data.pipeline import cache, dropped
from flopwise.data.pipeline.executors import Progress, run_tasks
from flopwise.data.pipeline.packing import TOKENIZER, pack
from flopwise.data.pipeline.report import PipelineResult, collect, result_from_manifest
from flopwise.data.pipeline.tasks import (
    MapTask,
    TokenizeTask,
    UnitFiles,
    map_unit,
    read_kept,
    reduce_segment,
    tokenize_unit,
)
from flopwise.data.pipeline.tokenizer import make_tokenizer
from flopwise.data.sources import WorkUnit, plan_units
from flopwise.data.stages import segments

log = logging.getLogger(__name__)


def run_pipeline(
    cfg: PipelineConfig,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> PipelineResult:
    """Run (or reuse from the cache) the pipeline described by `cfg`; return where the shards are.

    workers: local processes (default: cfg.run.workers, 0 = one per core). ray_address: run the unit tasks
    on Ray Data instead ("auto": connect to a running cluster or start a local one). force: recompute
    even when the cache holds a finished result (resumes nothing; starts the key's work afresh).
    """
    t0 = time.monotonic()
    workers = workers if workers is not None else cfg.run.workers
    workers = workers or os.cpu_count() or 1
    cache.prepare_output(cfg)  # before any work: a bad output.dir fails now, not after the whole run
    units = plan_units(cfg)
    key = cache.cache_key(cfg, units)
    cache_dir = cfg.resolve(str(cfg.run.resolved_cache_dir()))

    waited: list[str] = []

    def waiting(pid: str) -> None:
        waited.append(f"waiting for pid {pid}, preparing the same data")
        log.info("%s (key %s)", waited[0], key)
        if progress is not None:
            progress(waited[0], 0, 1)

    with cache.key_lock(cache_dir, key, on_wait=waiting):
        if waited and progress is not None:
            progress(waited[0], 1, 1)
        run = _Run(cfg, units, key, cache_dir / key, workers, ray_address, progress)
        if force and run.root.exists():
            shutil.rmtree(run.root)
        cached = cache.is_complete(run.root)
        damaged = cache.damaged_files(run.root) if cached else []
        if damaged:  # edited or truncated since it was written: re-pack from the work files, never reuse it
            log.warning("cache entry %s is damaged (%s); re-packing it", key, ", ".join(damaged[:3]))
            shutil.rmtree(run.shards)
            cached = False
        if cached:
            log.info("cache hit: %s (key %s)", run.shards, key)
        else:
            run.compute()
            cache.record_files(run.root)
        result = result_from_manifest(run.shards, run.root, key, cached=cached, seconds=time.monotonic() - t0)
        result.shard_dir = cache.materialise(cfg, run.shards)
        if cfg.output.write_dropped:
            result.dropped_dir = result.shard_dir / dropped.FOLDER
        return result


class _Run:
    """One key's computation, under that key's lock: the steps in order, each skipping finished units."""

    def __init__(self, cfg, units: list[WorkUnit], key: str, root: Path, workers: int, ray_address, progress):
        self.cfg, self.units, self.key, self.root = cfg, units, key, root
        self.work, self.shards = root / cache.WORK, root / cache.SHARDS
        self.execute = {"workers": workers, "ray_address": ray_address, "progress": progress}
        self.progress = progress
        self.names = cfg.stage_names()
        self.segments = segments([s.type for s in cfg.stages])

    def files(self, step: str) -> list[UnitFiles]:
        """The units' files in the folder of one step ("seg<k>" or "tok")."""
        return [UnitFiles(self.work / step, u.index) for u in self.units]

    def compute(self) -> None:
        self._start()
        source, decisions, barrier_stats = self._map_segments()
        tok_path = self._tokenizer(source, decisions)
        tok = self._tokenize(tok_path, source, decisions)
        self._finish(tok_path, tok, barrier_stats)

    def _start(self) -> None:
        if self.work.is_dir():  # resuming: temporary files of a killed run are never completed, remove them
            for stale in list(self.root.rglob(".*.tmp")):
                stale.unlink(missing_ok=True)
            log.info("resuming the unfinished run in %s", self.root)
        self.work.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        atomic_write_json(
            self.root / cache.KEY_INFO,
            {
                "key": self.key,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "code_version": cache.code_version(),
                "config_hash": cache.config_hash(cfg),
                "sources": [str(cfg.resolve(s.path)) for s in cfg.sources],
                "units": len(self.units),
            },
        )

    def _map_segments(self) -> tuple[list[UnitFiles], Path | None, dict[str, dict]]:
        """Every segment over every unit, then its dedup reduce. Returns the last segment's files, its
        dedup decisions (if it has dedup stages) and the dedup stages' counts."""
        source: list[UnitFiles] | None = None  # the previous segment's files (None: read the input)
        decisions: Path | None = None
        barrier_stats: dict[str, dict] = {}
        for seg in self.segments:
            out = self.files(f"seg{seg.index}")
            out[0].dir.mkdir(exist_ok=True)
            tasks = [
                MapTask(self.cfg, seg, u, source[u.index] if source else None, decisions, out[u.index])
                for u in self.units
                if not out[u.index].marker.is_file()
            ]
            label = ", ".join(self.names[i] for i in seg.stages) or "read"
            run_tasks(map_unit, tasks, label, **self.execute)
            source, decisions = out, None
            if seg.barriers:
                decisions = out[0].dir / "dedup.json"
                if not decisions.is_file():
                    reduce_segment(self.cfg, seg, out, decisions, self.progress)
                barrier_stats.update(json.loads(decisions.read_text())["stats"])
        assert source is not None  # there is always a segment
        return source, decisions, barrier_stats

    def _tokenizer(self, source: list[UnitFiles], decisions: Path | None) -> Path:
        tok_path = self.work / TOKENIZER
        if tok_path.is_file():
            return tok_path
        phase = None if self.cfg.tokenizer.path else "train tokenizer"
        if self.progress and phase:
            self.progress(phase, 0, 1)
        make_tokenizer(self.cfg, (doc for files in source for doc in read_kept(files, decisions)), tok_path)
        if self.progress and phase:
            self.progress(phase, 1, 1)
        return tok_path

    def _tokenize(self, tok_path: Path, source: list[UnitFiles], decisions: Path | None) -> list[UnitFiles]:
        tok = self.files("tok")
        tok[0].dir.mkdir(exist_ok=True)
        tasks = [
            TokenizeTask(self.cfg, u, tok_path, source[u.index], decisions, tok[u.index])
            for u in self.units
            if not tok[u.index].marker.is_file()
        ]
        run_tasks(tokenize_unit, tasks, "tokenize", **self.execute)
        return tok

    def _finish(self, tok_path: Path, tok: list[UnitFiles], barrier_stats: dict[str, dict]) -> None:
        """The report, the dropped documents by stage, the shards; the manifest last."""
        maps = [self.files(f"seg{seg.index}") for seg in self.segments]
        report = collect(self.names, [f.marker for step in maps for f in step], barrier_stats, [f.marker for f in tok])
        if self.cfg.output.write_dropped:
            # each stage's drops are in one step's folder (a dedup stage's: the next step's), in unit order
            steps = [*maps, tok]
            dropped.gather(
                lambda i: [f.dropped(i) for step in steps for f in step if f.dropped(i).is_file()],
                self.names,
                self.shards / dropped.FOLDER,
            )
        pack(self.cfg, tok_path, tok, self.shards, report, self.key, self.progress)
