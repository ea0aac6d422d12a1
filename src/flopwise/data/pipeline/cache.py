"""The pipeline's cache: keys, the one-writer lock, listing and removing entries, placing results.

Layout: <cache_dir>/<key>/ holds one pipeline result: key.json (what made it), work/ (per-unit
intermediate files and completion markers, kept for resumption) and shards/ (the finished shard directory,
complete once its manifest exists). The key hashes the configuration, the input files (path, size,
mtime) and the code of flopwise.data, so a change to any of them is a new entry; a finished entry is
reused at once.

One writer per key: an advisory lock file beside each entry (<cache_dir>/<key>.lock). Two runs of the
same pipeline at once (two jobs started together, a user running it twice) would otherwise both compute
the same work units and race on the same files. With the lock the second run waits, then finds the
finished result and reuses it. The lock is flock(2) on an open file, so the kernel drops it when its
holder dies, even by SIGKILL: a killed run never leaves the key locked. The file sits outside the
entry's directory so that `force` and `cache rm` can delete the entry without unlinking a lock that
someone holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import flopwise
from flopwise.atomic import atomic_path
from flopwise.data.config import PipelineConfig
from flopwise.data.pipeline.dropped import FOLDER as DROPPED
from flopwise.data.shards import MANIFEST, read_manifest
from flopwise.data.sources import WorkUnit, fingerprint
from flopwise.errors import DataError
from flopwise.userfiles import read_bytes

DATA_PACKAGE = Path(__file__).resolve().parents[1]  # flopwise/data: its code is part of every key
SHARDS, WORK, KEY_INFO = "shards", "work", "key.json"


# ---------------------------------------------------------------- keys


@functools.cache
def code_version() -> str:
    """flopwise version + a hash of the data package's source: a code change invalidates the cache."""
    digest = hashlib.sha256(flopwise.__version__.encode())
    for p in sorted(DATA_PACKAGE.rglob("*.py")):
        digest.update(p.relative_to(DATA_PACKAGE).as_posix().encode())
        digest.update(p.read_bytes())
    return f"{flopwise.__version__}+{digest.hexdigest()[:12]}"


def config_hash(cfg: PipelineConfig) -> str:
    """Hash of the configuration's content (not of where it runs: workers, cache and output folders)."""
    d = cfg.to_dict()
    for k in ("workers", "cache_dir"):
        d["run"].pop(k, None)
    d["output"].pop("dir", None)
    for s in d["sources"]:
        s["path"] = str(cfg.resolve(s["path"]))
    if cfg.tokenizer.path:
        tok = read_bytes(cfg.resolve(cfg.tokenizer.path), "tokenizer.path")
        d["tokenizer"]["sha256"] = hashlib.sha256(tok).hexdigest()
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def cache_key(cfg: PipelineConfig, units: list[WorkUnit]) -> str:
    h = hashlib.sha256()
    h.update(config_hash(cfg).encode())
    h.update(json.dumps(fingerprint(units)).encode())
    h.update(code_version().encode())
    return h.hexdigest()[:20]


# ---------------------------------------------------------------- one writer per key


def lock_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.lock"


def holder_pid(cache_dir: Path, key: str) -> str:
    try:
        return lock_path(cache_dir, key).read_text().strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def key_lock(cache_dir: Path, key: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the key's lock for the block; if another process holds it, call on_wait(its pid) and wait."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_path(cache_dir, key), "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(holder_pid(cache_dir, key))
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield  # closing the file releases the lock


def is_locked(cache_dir: Path, key: str) -> bool:
    """True while a running pipeline holds the key (a stale lock file of a dead run does not count)."""
    path = lock_path(cache_dir, key)
    if not path.is_file():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


# ---------------------------------------------------------------- entries


def is_complete(entry: Path) -> bool:
    return (entry / SHARDS / MANIFEST).is_file()


def cache_entries(cache_dir: str | Path) -> list[dict]:
    root = Path(cache_dir)
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        info_file = d / KEY_INFO
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
                "complete": is_complete(d),
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


# ---------------------------------------------------------------- placing a result


def materialise(cfg: PipelineConfig, shards: Path) -> Path:
    """Place the cached shards at output.dir (hard links where possible, else copies; manifest last);
    return the shard directory the caller should use."""
    if not cfg.output.dir:
        return shards
    out = cfg.resolve(cfg.output.dir)
    if out.resolve() == shards.resolve():
        return shards
    out.mkdir(parents=True, exist_ok=True)
    m = read_manifest(shards)
    wanted = [f for s in m.splits.values() for f in s.files] + ([m.tokenizer_file] if m.tokenizer_file else [])
    dropped = sorted(p.relative_to(shards).as_posix() for p in (shards / DROPPED).glob("*.jsonl"))
    for old in out.glob("*-[0-9][0-9][0-9][0-9][0-9].bin"):
        if old.name not in wanted:
            old.unlink()
    for old in (out / DROPPED).glob("*.jsonl"):  # a previous run's dropped documents
        if old.relative_to(out).as_posix() not in dropped:
            old.unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    if (shards / DROPPED).is_dir():
        (out / DROPPED).mkdir(exist_ok=True)
    elif (out / DROPPED).is_dir() and not any((out / DROPPED).iterdir()):
        (out / DROPPED).rmdir()
    for name in wanted + dropped:
        with atomic_path(out / name) as tmp:
            tmp.unlink()
            try:
                os.link(shards / name, tmp)
            except OSError:
                shutil.copyfile(shards / name, tmp)
    with atomic_path(out / MANIFEST) as tmp:
        shutil.copyfile(shards / MANIFEST, tmp)
    return out
