"""The pipeline's cache: keys, the one-writer lock, listing and removing entries, placing results.

Layout: <cache_dir>/<key>/ holds one pipeline result: key.json (what made it), work/ (per-unit
intermediate files and completion markers, kept for resumption), shards/ (the finished shard directory,
complete once its manifest exists) and files.json (size, mtime and sha256 of every file in shards/).

A cache hit is verified before it is reused: sizes always, and a file whose mtime changed is hashed and
compared. A damaged entry (a shard edited, truncated or removed) is re-packed from work/, never reused.
Results are published to output.dir as copies (copy-on-write clones where the file system has them), never
as hard links, so editing a published shard cannot write through into the cache; and publishing replaces
only files the pipeline wrote there before (listed in the folder's own manifest), never the user's.

The key hashes the configuration, the input files (path, size, mtime) and the code of flopwise.data, so a
change to any of them is a new entry; a finished entry is reused at once.

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
from flopwise.atomic import atomic_path, atomic_write_json
from flopwise.data.config import PipelineConfig
from flopwise.data.pipeline.dropped import FOLDER as DROPPED
from flopwise.data.shards import MANIFEST, read_manifest, sha256_file
from flopwise.data.sources import WorkUnit, fingerprint
from flopwise.errors import DataError
from flopwise.outputs import output_dir
from flopwise.userfiles import read_bytes

DATA_PACKAGE = Path(__file__).resolve().parents[1]  # flopwise/data: its code is part of every key
SHARDS, WORK, KEY_INFO, FILES = "shards", "work", "key.json", "files.json"


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


def cache_remove(cache_dir: str | Path, keys: list[str] | None = None, all_matching: bool = False) -> list[str]:
    """Remove the given keys or unique key prefixes (every entry when keys is None); returns the removed keys.

    A prefix that matches several keys is refused, listing them, unless `all_matching`; nothing is removed
    unless every key given is found (and unambiguous)."""
    root = Path(cache_dir)
    entries = cache_entries(cache_dir)
    if keys is None:
        chosen = entries
    else:
        chosen, seen = [], set()
        for k in keys:
            exact = [e for e in entries if e["key"] == k]
            matches = exact or [e for e in entries if e["key"].startswith(k)]
            if not matches:
                raise DataError(f"no cache entry {k!r} in {cache_dir}")
            if len(matches) > 1 and not all_matching:
                listed = ", ".join(e["key"] for e in matches)
                raise DataError(f"cache key prefix {k!r} matches {len(matches)} entries ({listed}): give a longer "
                                "prefix, or --all-matching to remove them all")
            chosen += [e for e in matches if e["key"] not in seen]
            seen.update(e["key"] for e in matches)
    for e in chosen:
        if is_locked(root, e["key"]):
            raise DataError(f"cache entry {e['key']} is in use by a running pipeline; not removed")
    removed = []
    for e in chosen:
        shutil.rmtree(e["path"])
        lock_path(root, e["key"]).unlink(missing_ok=True)
        removed.append(e["key"])
    return removed


# ---------------------------------------------------------------- verifying an entry


def _shard_files(shards: Path) -> list[str]:
    """The files a finished shard directory consists of, relative names, manifest first."""
    names = [MANIFEST] + sorted(
        p.relative_to(shards).as_posix() for p in shards.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    return [n for n in names if not Path(n).name.startswith(".")]


def record_files(entry: Path) -> None:
    """Write files.json: size, mtime and sha256 of every file of the entry's finished shards."""
    shards = entry / SHARDS
    files = {}
    for name in _shard_files(shards):
        st = (shards / name).stat()
        files[name] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(shards / name)}
    atomic_write_json(entry / FILES, files)


def damaged_files(entry: Path) -> list[str]:
    """Files of a finished entry that differ from files.json (missing, resized, or changed content); an
    entry without files.json (written by an older flopwise) is recorded now and trusted."""
    shards = entry / SHARDS
    try:
        files = json.loads((entry / FILES).read_text())
    except FileNotFoundError:
        record_files(entry)
        return []
    except ValueError:
        return [FILES]
    bad = []
    for name, want in files.items():
        try:
            st = (shards / name).stat()
        except OSError:
            bad.append(name)
            continue
        if st.st_size != want["bytes"]:
            bad.append(name)
        elif st.st_mtime_ns != want["mtime_ns"] and sha256_file(shards / name) != want["sha256"]:
            bad.append(name)  # touched: hash it (an unchanged mtime with changed bytes needs a deliberate reset)
    return bad


# ---------------------------------------------------------------- placing a result


def _owned(out: Path) -> set[str]:
    """Files in `out` that an earlier publish wrote: those its manifest lists, and its dropped/ files. A
    manifest.json that is not a flopwise shard manifest means the folder is not ours: refused."""
    if not (out / MANIFEST).exists():
        return set()
    try:
        old = read_manifest(out)
    except DataError:
        raise DataError(f"output.dir {out} holds a {MANIFEST} that the pipeline did not write; not replacing it "
                        "(choose an empty or new folder)") from None
    owned = {f for s in old.splits.values() for f in s.files} | {MANIFEST}
    if old.tokenizer_file:
        owned.add(old.tokenizer_file)
    owned |= {p.relative_to(out).as_posix() for p in (out / DROPPED).glob("*.jsonl")}
    return owned


def _clone(src: Path, dst: Path) -> None:
    """Copy src to dst: a copy-on-write clone where the file system supports it (btrfs, XFS), else bytes."""
    ficlone = 0x40049409  # linux/fs.h FICLONE
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), ficlone, fin.fileno())
            return
        except OSError:
            pass
        shutil.copyfileobj(fin, fout, 1 << 20)


def prepare_output(cfg: PipelineConfig) -> Path | None:
    """Check output.dir before any work: creatable, a directory, and holding no file of the user's where the
    pipeline writes (a foreign manifest.json, shard or tokenizer names). Returns the folder (None: unset)."""
    if not cfg.output.dir:
        return None
    out = output_dir(cfg.resolve(cfg.output.dir), "output.dir")  # the one output check (flopwise.outputs)
    owned = _owned(out)
    names = [p.name for pattern in ("train-[0-9]*.bin", "eval-[0-9]*.bin", "tokenizer.json") for p in out.glob(pattern)]
    theirs = sorted(n for n in names if n not in owned)
    if theirs:
        raise DataError(
            f"output.dir {out} holds files the pipeline did not write ({', '.join(theirs[:3])}"
            f"{', ...' if len(theirs) > 3 else ''}); not overwriting them: choose an empty or new folder"
        )
    return out


def materialise(cfg: PipelineConfig, shards: Path) -> Path:
    """Publish the cached shards at output.dir as copies (manifest last); return the shard directory the
    caller should use. Only files an earlier publish wrote there are replaced or removed; a file of the
    user's in the way (a shard or tokenizer name the pipeline would write) is refused with its name."""
    if not cfg.output.dir:
        return shards
    out = cfg.resolve(cfg.output.dir)
    if out.resolve() == shards.resolve():
        return shards
    prepare_output(cfg)
    owned = _owned(out)
    m = read_manifest(shards)
    wanted = [f for s in m.splits.values() for f in s.files] + ([m.tokenizer_file] if m.tokenizer_file else [])
    dropped = sorted(p.relative_to(shards).as_posix() for p in (shards / DROPPED).glob("*.jsonl"))
    theirs = [n for n in [*wanted, *dropped] if (out / n).exists() and n not in owned]
    if theirs:
        raise DataError(
            f"output.dir {out} holds files the pipeline did not write ({', '.join(theirs[:3])}"
            f"{', ...' if len(theirs) > 3 else ''}); not overwriting them: choose an empty or new folder"
        )
    (out / MANIFEST).unlink(missing_ok=True)  # first: a folder without a manifest is never read half-written
    for old in sorted(owned - set(wanted) - set(dropped) - {MANIFEST}):  # a previous publish's, now stale
        (out / old).unlink(missing_ok=True)
    if dropped:
        (out / DROPPED).mkdir(exist_ok=True)
    elif (out / DROPPED).is_dir() and not any((out / DROPPED).iterdir()):
        (out / DROPPED).rmdir()
    for name in wanted + dropped:
        with atomic_path(out / name) as tmp:
            _clone(shards / name, tmp)
    with atomic_path(out / MANIFEST) as tmp:
        _clone(shards / MANIFEST, tmp)
    return out
