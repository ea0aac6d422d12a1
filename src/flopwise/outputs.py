"""Prepare output locations before any expensive work: a bad `--out`, `--metrics` or export destination is
one clear error in the first second, not a traceback after the model has loaded.

Each check makes what it can (a run directory, the parent of a file) and proves it writable by creating
and removing a probe file there, so "read-only", "not a directory" and "/proc/x" all fail the same way."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flopwise.errors import ConfigError


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _probe_writable(directory: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".flopwise-probe-", dir=directory)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write in {directory} ({_reason(exc)})") from None


def output_dir(path: str | Path, what: str) -> Path:
    """A directory to write into: created if missing; refused if it is a file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a directory: choose a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create the directory ({_reason(exc)})") from None
    _probe_writable(path, f"{what} {path}")
    return path


def output_file(path: str | Path, what: str) -> Path:
    """A file to (re)write: refused if it is a directory or a special file, or if its folder cannot be made
    or written."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory: give a file name")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{what} {path} is not a regular file: give a file name")
    output_dir(path.parent, f"{what} {path}: its folder")
    return path
