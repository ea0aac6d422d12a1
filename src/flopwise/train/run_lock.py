"""A run owns its directory: `<out>/run.lock` holds an exclusive flock and says who holds it (pid, host).

The kernel drops the flock when its process dies, however it dies, so a lock left behind by a killed run is
free for the next one; the pid and host in the file name the holder in the refusal and in the take-over
warning. On another host (a shared filesystem) the pid cannot be checked: such a lock is refused, and the
message says how to remove it. A multi-process run is locked once, by the launcher; it tells its ranks
through FLOPWISE_RUN_LOCK, and they do not lock again."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from flopwise.errors import FlopwiseError
from flopwise.outputs import output_dir

log = logging.getLogger(__name__)
LOCK_FILE = "run.lock"
HELD_ENV = "FLOPWISE_RUN_LOCK"  # set by the launcher for its ranks: the lock file it holds
_held: dict[Path, int] = {}  # lock files this process holds -> their fd (re-entrant)


class RunLockedError(FlopwiseError):
    """Another run holds the run directory."""


def _read_holder(path: Path) -> dict:
    for _ in range(20):  # the holder writes its details right after taking the lock
        try:
            text = path.read_text()
            if text.strip() and isinstance(json.loads(text), dict):
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    started = f", started {holder['started']}" if holder.get("started") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{started}"


@contextlib.contextmanager
def run_lock(out: str | Path, command: str = "train") -> Iterator[str | None]:
    """Hold `<out>/run.lock` for the block. Yields a warning when a dead run's lock was taken over, else None.

    Raises RunLockedError naming the holder when another live run holds it."""
    out = output_dir(out, "--out")
    path = (out / LOCK_FILE).resolve()
    if os.environ.get(HELD_ENV) == str(path) or path in _held:
        yield None  # our launcher (or this process, further up) holds it
        return
    fd, previous = _acquire(path)
    host = socket.gethostname()
    warning = None
    if previous and previous.get("pid") != os.getpid():
        if previous.get("host") not in (None, host):
            os.close(fd)
            raise RunLockedError(
                f"{out} is locked by {_describe(previous)}: a run on another machine may still use it; if it has "
                f"ended, delete {path} and start again"
            )
        warning = f"took over the lock of {_describe(previous)}, which is no longer running"
        log.info("%s: %s", out, warning)  # the caller shows it
    record = {"pid": os.getpid(), "host": host, "command": command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    _held[path] = fd
    try:
        yield warning
    finally:
        _held.pop(path, None)
        with contextlib.suppress(OSError):
            path.unlink()  # unlinked while locked: a waiter re-checks the inode (see _acquire)
        os.close(fd)


def _acquire(path: Path) -> tuple[int, dict]:
    """Open and flock the lock file; retry if its holder unlinked it meanwhile. Returns (fd, previous record)."""
    for _ in range(50):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise FlopwiseError(f"cannot create the run lock {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            os.close(fd)
            raise RunLockedError(
                f"{path.parent} is in use by another run ({_describe(holder)}); wait for it to end or choose "
                "another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            try:
                previous = json.loads(text) if text.strip() else {}
            except ValueError:
                previous = {}
            return fd, previous if isinstance(previous, dict) else {}
        os.close(fd)  # the file we locked was unlinked by its releasing holder: lock the new one
    raise FlopwiseError(f"cannot take the run lock {path}: it keeps changing")
