"""One writer per cache key: an advisory lock file beside each entry (<cache_dir>/<key>.lock).

Two runs of the same pipeline at once (two jobs started together, a user running it twice) would
otherwise both compute the same work units and race on the same files. With the lock the second run
waits, then finds the finished result and reuses it. The lock is flock(2) on an open file, so the kernel
drops it when its holder dies, even by SIGKILL: a killed run never leaves the key locked. The file sits
outside the entry's directory so that `force` and `cache rm` can delete the entry without unlinking a
lock that someone holds."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


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
