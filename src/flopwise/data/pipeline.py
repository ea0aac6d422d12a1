"""The data pipeline: sources -> stages -> tokenizer -> token shards, resumable, cached, parallel.

    result = run_pipeline(load_config("data.toml"))
    result.shard_dir          # a shard directory (manifest.json, tokenizer.json, <split>-NNNNN.bin)

How it runs. The input is split into work units (flopwise.data.sources). The stage list is cut into
segments at dedup stages (barriers): within a segment every unit is processed independently (in local
processes, or as Ray Data tasks), writing its surviving documents and dedup signatures to the work
directory and then a completion marker; a barrier's reduce reads all signatures in unit order and writes
the set of dropped documents. Then a tokenizer is trained (or loaded), every unit is tokenized into its
own token file with a marker, and the files are concatenated into shards; the manifest is written last.

Resumable: every file is written to a temporary name and renamed, markers come after their data, and a
restarted run skips units whose marker exists. All decisions depend only on the input and configuration
(never on timing or worker count), so a run killed at any moment and started again produces exactly the
documents of an uninterrupted run.

Cached: everything lives under <cache_dir>/<key>, where the key hashes the configuration, the input
files (path, size, mtime) and the code version of flopwise.data. A finished key is reused at once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import flopwise
from flopwise.atomic import atomic_path, atomic_write_json, atomic_write_text
from flopwise.data.cache_lock import is_locked, key_lock, lock_path
from flopwise.data.config import PipelineConfig, StageConfig
from flopwise.data.shards import (
    MANIFEST,
    ShardManifest,
    ShardWriter,
    read_manifest,
    sha256_file,
    write_manifest,
)
from flopwise.data.sources import SourceReport, WorkUnit, fingerprint, plan_units, read_unit, text_bytes
from flopwise.data.stages import DedupStage, StageStats, build_stage
from flopwise.errors import DataError

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (phase, done, total)
TOKENIZER = "tokenizer.json"


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
        }


# ---------------------------------------------------------------- keys


@functools.cache
def code_version() -> str:
    """flopwise version + a hash of the data package's source: a code change invalidates the cache."""
    digest = hashlib.sha256(flopwise.__version__.encode())
    for p in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(p.name.encode())
        digest.update(p.read_bytes())
    return f"{flopwise.__version__}+{digest.hexdigest()[:12]}"


def config_hash(cfg: PipelineConfig) -> str:
    d = cfg.to_dict()
    for k in ("workers", "cache_dir"):
        d["run"].pop(k, None)
    d["output"].pop("dir", None)
    for s in d["sources"]:
        s["path"] = str(cfg.resolve(s["path"]))
    if cfg.tokenizer.path:
        d["tokenizer"]["sha256"] = sha256_file(cfg.resolve(cfg.tokenizer.path))
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def cache_key(cfg: PipelineConfig, units: list[WorkUnit]) -> str:
    h = hashlib.sha256()
    h.update(config_hash(cfg).encode())
    h.update(json.dumps(fingerprint(units)).encode())
    h.update(code_version().encode())
    return h.hexdigest()[:20]


# ---------------------------------------------------------------- plan


def _segments(stages: list[StageConfig]) -> list[tuple[list[StageConfig], list[StageConfig]]]:
    """Cut the stage list into (per-document stages, barrier stages) segments."""
    from flopwise.data.stages import STAGE_TYPES

    segs: list[tuple[list, list]] = [([], [])]
    for st in stages:
        barrier = STAGE_TYPES[st.type].barrier
        if barrier:
            segs[-1][1].append(st)
        else:
            if segs[-1][1]:
                segs.append(([], []))
            segs[-1][0].append(st)
    return segs


def _stage_names(stages: list[StageConfig]) -> list[str]:
    names, seen = [], {}
    for st in stages:
        base = st.params.get("name", st.type)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


# ---------------------------------------------------------------- tasks (run in workers)


@functools.lru_cache(maxsize=4)
def _load_config(cfg_json: str, base_dir: str) -> PipelineConfig:
    return PipelineConfig.from_dict(json.loads(cfg_json), base_dir=base_dir)


@functools.lru_cache(maxsize=4)
def _dropped(path: str) -> frozenset:
    if not path:
        return frozenset()
    return frozenset(json.loads(Path(path).read_text())["dropped"])


def _iter_input(cfg: PipelineConfig, task: dict, unit: WorkUnit, report: SourceReport):
    if task["seg"] == 0:
        yield from read_unit(cfg, unit, report)
        return
    dropped = _dropped(task["dropped"])
    with open(task["input"], encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            if doc["id"] not in dropped:
                yield doc


def map_unit(task: dict) -> dict:
    """Run one segment's per-document stages over one unit; write docs, signatures, then the marker."""
    cfg = _load_config(task["config"], task["base_dir"])
    unit = WorkUnit.from_json(task["unit"])
    seg_stages, barriers = _segments(cfg.stages)[task["seg"]]
    first = task["stage_offset"]
    names = _stage_names(cfg.stages)
    stages = [build_stage(s) for s in seg_stages]
    barrier_objs: list[DedupStage] = [build_stage(s) for s in barriers]  # type: ignore[misc]
    report = SourceReport()
    sigs: list[list] = [[] for _ in barrier_objs]
    out_path = Path(task["output"])
    n_out = 0
    batch_docs = cfg.run.batch_docs
    try:
        with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as out:

            def flush(batch):
                nonlocal n_out
                for st in stages:
                    batch = st.process(batch)
                for doc in batch:
                    for b, lst in zip(barrier_objs, sigs, strict=True):
                        lst.append(b.signature(doc) if b.applies(doc) else None)
                    out.write(json.dumps(doc, ensure_ascii=False) + "\n")
                n_out += len(batch)

            batch: list[dict] = []
            for doc in _iter_input(cfg, task, unit, report):
                batch.append(doc)
                if len(batch) >= batch_docs:
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)
    finally:
        for st in stages:
            st.close()
    for j, (b, lst) in enumerate(zip(barrier_objs, sigs, strict=True)):
        present = np.array([s is not None for s in lst], dtype=bool)
        arr = np.zeros(len(lst), dtype=b.sig_dtype)
        for i, s in enumerate(lst):
            if s is not None:
                arr[i] = s
        with atomic_path(f"{out_path}.sig{j}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr)
            np.save(fh, present)
    stats = {names[first + i]: st.stats.to_json() for i, st in enumerate(stages)}
    done = {
        "unit": unit.index,
        "docs_out": n_out,
        "source": report.to_json() if task["seg"] == 0 else None,
        "stages": stats,
    }
    atomic_write_json(task["marker"], done)
    return {"unit": unit.index}


def tokenize_unit(task: dict) -> dict:
    """Tokenize one unit's final documents into <unit>.train.bin / .eval.bin, then the marker."""
    import xxhash

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = _load_config(task["config"], task["base_dir"])
    tok = _tokenizer(task["tokenizer"])
    vocab = tok.get_vocab_size()
    eod = tok.token_to_id(cfg.tokenizer.eod_token)
    dtype = np.dtype("<u2") if vocab <= 2**16 else np.dtype("<u4")
    dropped = _dropped(task["dropped"])
    counts = {"train": [0, 0, 0], "eval": [0, 0, 0]}  # docs, tokens, bytes
    parts: dict[str, list[np.ndarray]] = {"train": [], "eval": []}
    salt = str(cfg.output.seed).encode()

    def encode(batch):
        for doc, enc in zip(batch, tok.encode_batch([d["text"] for d in batch]), strict=True):
            split = "eval" if _is_eval(doc["id"], cfg.output.eval_fraction, salt, xxhash) else "train"
            ids = np.asarray(enc.ids, dtype=dtype)
            parts[split].append(ids)
            parts[split].append(np.array([eod], dtype=dtype))
            c = counts[split]
            c[0] += 1
            c[1] += ids.size + 1
            c[2] += text_bytes(doc["text"])

    batch = []
    with open(task["input"], encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            if doc["id"] in dropped:
                continue
            batch.append(doc)
            if len(batch) >= 512:
                encode(batch)
                batch = []
    if batch:
        encode(batch)
    for split, arrs in parts.items():
        with atomic_path(f"{task['output']}.{split}.bin") as tmp:
            (np.concatenate(arrs) if arrs else np.zeros(0, dtype)).tofile(tmp)
    atomic_write_json(task["marker"], {"unit": task["unit"]["index"], "counts": counts})
    return {"unit": task["unit"]["index"]}


def _is_eval(doc_id: str, fraction: float, salt: bytes, xxhash) -> bool:
    if fraction <= 0:
        return False
    return xxhash.xxh64_intdigest(salt + b":" + doc_id.encode("utf-8", "surrogatepass")) < fraction * 2**64


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


# ---------------------------------------------------------------- executors


def _run_tasks(
    fn, tasks: list[dict], phase: str, workers: int, ray_address: str | None, progress: Progress | None
):
    total = len(tasks)
    if progress:
        progress(phase, 0, total)
    if not tasks:
        return
    if ray_address:
        from flopwise.data.ray_exec import run_ray

        for done in run_ray(fn, tasks, ray_address, workers):
            if progress:
                progress(phase, done, total)
        return
    if workers <= 1 or total == 1:
        for i, t in enumerate(tasks, 1):
            fn(t)
            if progress:
                progress(phase, i, total)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    with ctx.Pool(min(workers, total), maxtasksperchild=64) as pool:
        for i, _ in enumerate(pool.imap_unordered(fn, tasks), 1):
            if progress:
                progress(phase, i, total)


# ---------------------------------------------------------------- the pipeline


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
    units = plan_units(cfg)
    key = cache_key(cfg, units)
    cache_dir = cfg.resolve(str(cfg.run.resolved_cache_dir()))

    waited: list[str] = []

    def waiting(pid: str) -> None:
        waited.append(f"waiting for pid {pid}, preparing the same data")
        log.info("%s (key %s)", waited[0], key)
        if progress is not None:
            progress(waited[0], 0, 1)

    with key_lock(cache_dir, key, on_wait=waiting):
        if waited and progress is not None:
            progress(waited[0], 1, 1)
        return _run_key(cfg, units, key, cache_dir / key, workers, ray_address, progress, force, t0)


def _run_key(cfg, units, key: str, root: Path, workers: int, ray_address, progress, force: bool, t0: float):
    """run_pipeline's work for one cache key, under that key's lock."""
    shards = root / "shards"
    if force and root.exists():
        shutil.rmtree(root)
    if (shards / MANIFEST).is_file():
        log.info("cache hit: %s (key %s)", shards, key)
        result = _result_from_manifest(cfg, shards, root, key, cached=True, seconds=time.monotonic() - t0)
        result.shard_dir = _materialise(cfg, shards)
        return result
    work = root / "work"
    if work.is_dir():  # resuming: temporary files of a killed run are never completed, remove them
        for stale in list(root.rglob(".*.tmp")):
            stale.unlink(missing_ok=True)
        log.info("resuming the unfinished run in %s", root)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        root / "key.json",
        {
            "key": key,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "code_version": code_version(),
            "config_hash": config_hash(cfg),
            "sources": [str(cfg.resolve(s.path)) for s in cfg.sources],
            "units": len(units),
        },
    )
    cfg_json = json.dumps(cfg.to_dict())
    base = str(cfg.base_dir)
    names = _stage_names(cfg.stages)
    segments = _segments(cfg.stages)
    seg_inputs: list[str] = [""] * len(units)
    dropped_file = ""
    offset = 0
    barrier_stats: dict[str, dict] = {}
    for k, (per_doc, barriers) in enumerate(segments):
        seg_dir = work / f"seg{k}"
        seg_dir.mkdir(exist_ok=True)
        tasks = []
        for u in units:
            marker = seg_dir / f"u{u.index:06d}.done.json"
            if marker.is_file():
                continue
            tasks.append(
                {
                    "config": cfg_json,
                    "base_dir": base,
                    "seg": k,
                    "stage_offset": offset,
                    "unit": u.to_json(),
                    "input": seg_inputs[u.index],
                    "dropped": dropped_file,
                    "output": str(seg_dir / f"u{u.index:06d}.jsonl"),
                    "marker": str(marker),
                }
            )
        label = ", ".join(names[offset : offset + len(per_doc)]) or "read"
        _run_tasks(map_unit, tasks, f"{label}", workers, ray_address, progress)
        seg_inputs = [str(seg_dir / f"u{u.index:06d}.jsonl") for u in units]
        offset += len(per_doc)
        if barriers:
            dfile = seg_dir / "dedup.json"
            if not dfile.is_file():
                _reduce(
                    cfg, barriers, names[offset : offset + len(barriers)], units, seg_dir, dfile, progress
                )
            barrier_stats.update(json.loads(dfile.read_text())["stats"])
            dropped_file = str(dfile)
            offset += len(barriers)
        else:
            dropped_file = ""
    final_inputs, final_dropped = seg_inputs, dropped_file

    tok_path = work / TOKENIZER
    if not tok_path.is_file():
        _make_tokenizer(cfg, units, final_inputs, final_dropped, tok_path, progress)
    tok_dir = work / "tok"
    tok_dir.mkdir(exist_ok=True)
    tasks = []
    for u in units:
        marker = tok_dir / f"u{u.index:06d}.done.json"
        if not marker.is_file():
            tasks.append(
                {
                    "config": cfg_json,
                    "base_dir": base,
                    "unit": u.to_json(),
                    "tokenizer": str(tok_path),
                    "input": final_inputs[u.index],
                    "dropped": final_dropped,
                    "output": str(tok_dir / f"u{u.index:06d}"),
                    "marker": str(marker),
                }
            )
    _run_tasks(tokenize_unit, tasks, "tokenize", workers, ray_address, progress)

    report = _collect(cfg, units, work, segments, names, barrier_stats, tok_dir)
    _pack(cfg, units, tok_path, tok_dir, shards, report, key, progress)
    result = _result_from_manifest(cfg, shards, root, key, cached=False, seconds=time.monotonic() - t0)
    result.shard_dir = _materialise(cfg, shards)
    return result


def _reduce(cfg, barriers, names, units, seg_dir: Path, dfile: Path, progress: Progress | None) -> None:
    objs: list[DedupStage] = [build_stage(b) for b in barriers]  # type: ignore[misc]
    dropped: dict[str, str] = {}
    stats = {}
    for j, (b, name) in enumerate(zip(objs, names, strict=True)):
        if progress:
            progress(name, 0, len(units))

        st = StageStats()

        def items(j=j, st=st, name=name):
            for i, u in enumerate(units):
                base = seg_dir / f"u{u.index:06d}.jsonl"
                with open(f"{base}.sig{j}.npy", "rb") as fh:
                    sig, present = np.load(fh), np.load(fh)
                with open(base, encoding="utf-8") as fh:
                    for n, line in enumerate(fh):
                        doc_id = line[8 : line.index('", "text"')] if line.startswith('{"id": "') else None
                        if doc_id is None or "\\" in doc_id:
                            doc_id = json.loads(line)["id"]
                        if doc_id in dropped:  # removed by an earlier barrier of this segment
                            continue
                        st.docs_in += 1
                        if not present[n]:
                            continue
                        yield doc_id, sig[n]
                if progress:
                    progress(name, i + 1, len(units))

        new = b.reduce(items())
        st.docs_out = st.docs_in - len(new)
        reason = "exact_duplicate" if b.type == "exact_dedup" else "near_duplicate"
        st.drops[reason] = len(new)
        clusters: dict[str, list[str]] = {}
        for d, kept in new.items():
            clusters.setdefault(kept, []).append(d)
        st.extra = {
            "clusters": len(clusters),
            "examples": [
                {"kept": k, "removed": v[:5], "size": len(v) + 1} for k, v in list(clusters.items())[:20]
            ],
        }
        dropped.update(new)
        stats[name] = st.to_json()
    atomic_write_json(dfile, {"dropped": sorted(dropped), "stats": stats})


def _iter_final(inputs: list[str], dropped_file: str):
    dropped = _dropped(dropped_file)
    for path in inputs:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                if doc["id"] not in dropped:
                    yield doc


def _make_tokenizer(
    cfg: PipelineConfig, units, inputs, dropped_file, out: Path, progress: Progress | None
) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tc = cfg.tokenizer
    if tc.path:
        src = cfg.resolve(tc.path)
        try:
            tok = Tokenizer.from_file(str(src))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"tokenizer.path = {src}: cannot load a tokenizers file ({exc})") from None
        if tok.token_to_id(tc.eod_token) is None:
            raise DataError(f"tokenizer {src} has no end-of-document token {tc.eod_token!r}")
        with atomic_path(out) as tmp:
            shutil.copyfile(src, tmp)
        return
    import xxhash

    if progress:
        progress("train tokenizer", 0, 1)
    salt = str(cfg.output.seed).encode()

    def texts():
        budget = tc.train_bytes
        for doc in _iter_final(inputs, dropped_file):
            if _is_eval(doc["id"], cfg.output.eval_fraction, salt, xxhash):
                continue
            budget -= text_bytes(doc["text"])
            yield doc["text"]
            if budget <= 0:
                return

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=tc.vocab_size,
        min_frequency=tc.min_frequency,
        special_tokens=[tc.eod_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    atomic_write_text(out, tok.to_str())
    if progress:
        progress("train tokenizer", 1, 1)


def _collect(cfg, units, work: Path, segments, names, barrier_stats, tok_dir: Path) -> dict:
    source = SourceReport()
    stage_stats = {n: StageStats() for n in names}
    for k, _ in enumerate(segments):
        for u in units:
            done = json.loads((work / f"seg{k}" / f"u{u.index:06d}.done.json").read_text())
            if done["source"]:
                s = done["source"]
                source.docs += s["docs"]
                source.bytes += s["bytes"]
                source.problems.update(s["problems"])
                source.events.extend(s["events"][: max(0, 200 - len(source.events))])
            for name, st in done["stages"].items():
                stage_stats[name].merge(st)
    for name, st in barrier_stats.items():
        stage_stats[name].merge(st)
    counts = {"train": [0, 0, 0], "eval": [0, 0, 0]}
    for u in units:
        c = json.loads((tok_dir / f"u{u.index:06d}.done.json").read_text())["counts"]
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


def _pack(cfg, units, tok_path: Path, tok_dir: Path, shards: Path, report: dict, key: str, progress) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    vocab = tok.get_vocab_size()
    eod = tok.token_to_id(cfg.tokenizer.eod_token)
    shards.mkdir(parents=True, exist_ok=True)
    with atomic_path(shards / TOKENIZER) as tmp:
        shutil.copyfile(tok_path, tmp)
    writers = {s: ShardWriter(shards, s, vocab, eod, cfg.output.tokens_per_file) for s in ("train", "eval")}
    if progress:
        progress("pack", 0, len(units))
    for i, u in enumerate(units):
        for split, w in writers.items():
            arr = np.fromfile(tok_dir / f"u{u.index:06d}.{split}.bin", dtype=w.dtype)
            docs = int(np.count_nonzero(arr == eod))
            w.add_tokens(arr, docs)
        if progress:
            progress("pack", i + 1, len(units))
    splits = {s: w.close() for s, w in writers.items()}
    if splits["train"].tokens == 0:
        raise DataError(
            "no documents survived the pipeline: nothing to write (see the per-stage drop reasons)"
        )
    manifest = ShardManifest(
        vocab_size=vocab,
        eod_id=eod,
        splits=splits,
        tokenizer_file=TOKENIZER,
        tokenizer_sha256=sha256_file(shards / TOKENIZER),
        extra={
            "pipeline": {
                "cache_key": key,
                "config_hash": config_hash(cfg),
                "code_version": code_version(),
                "config": cfg.to_dict(),
                "stages": report["stages"],
                "source_problems": report["source_problems"],
                "events": report["events"][:100],
            }
        },
    )
    write_manifest(shards, manifest)  # last: its presence marks the directory complete


def _result_from_manifest(
    cfg, shards: Path, root: Path, key: str, cached: bool, seconds: float
) -> PipelineResult:
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


def _materialise(cfg: PipelineConfig, shards: Path) -> Path:
    """Place the cached shards at output.dir (hard links where possible, else copies; manifest last)."""
    if not cfg.output.dir:
        return shards
    out = cfg.resolve(cfg.output.dir)
    if out.resolve() == shards.resolve():
        return shards
    out.mkdir(parents=True, exist_ok=True)
    m = read_manifest(shards)
    wanted = [f for s in m.splits.values() for f in s.files] + [TOKENIZER]
    for old in out.glob("*-[0-9][0-9][0-9][0-9][0-9].bin"):
        if old.name not in wanted:
            old.unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    for name in wanted:
        with atomic_path(out / name) as tmp:
            tmp.unlink()
            try:
                os.link(shards / name, tmp)
            except OSError:
                shutil.copyfile(shards / name, tmp)
    with atomic_path(out / MANIFEST) as tmp:
        shutil.copyfile(shards / MANIFEST, tmp)
    return out


# ---------------------------------------------------------------- cache management


def cache_entries(cache_dir: str | Path) -> list[dict]:
    root = Path(cache_dir)
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        info_file = d / "key.json"
        if not info_file.is_file():
            continue
        try:
            info = json.loads(info_file.read_text())
        except ValueError:
            info = {}
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        out.append(
            {
                "key": d.name,
                "complete": (d / "shards" / MANIFEST).is_file(),
                "bytes": size,
                "created": info.get("created"),
                "sources": info.get("sources", []),
                "path": str(d),
            }
        )
    return out


def cache_remove(cache_dir: str | Path, keys: list[str] | None = None) -> list[str]:
    """Remove the given keys (or every entry when keys is None); returns the removed keys."""
    removed = []
    root = Path(cache_dir)
    for e in cache_entries(cache_dir):
        if keys is None or e["key"] in keys or any(e["key"].startswith(k) for k in keys):
            if is_locked(root, e["key"]):
                raise DataError(f"cache entry {e['key']} is in use by a running pipeline; not removed")
            shutil.rmtree(e["path"])
            lock_path(root, e["key"]).unlink(missing_ok=True)
            removed.append(e["key"])
    if keys:
        missing = [k for k in keys if not any(r.startswith(k) for r in removed)]
        if missing:
            raise DataError(f"no cache entry {missing[0]!r} in {cache_dir}")
    return removed
