"""The one place that opens the user's own input files: configs (TOML), CSVs, tokenizers, data files.

Every path a user names can be wrong in ways that Python reports as a traceback or never reports at all:
missing, a directory, unreadable (permissions), not UTF-8, or a special file. Special files are the worst:
a FIFO or a character device blocks `open()` or `read()` until something writes to it, and pseudo files
under /proc, /sys and /dev (such as /proc/kmsg) look like empty regular files and block on read. So a file
is opened with O_NONBLOCK (opening a FIFO never waits), checked with fstat on the descriptor itself (no race
between a check and the open) and refused unless it is a regular file outside those pseudo file systems.
Each failure is one UserFileError (a DataError), `cannot read <what> <path>: <why>`;
`kind` says which failure it was, for callers that count problems instead of stopping (data sources).
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

from flopwise.errors import ConfigError, DataError

PSEUDO_ROOTS = ("/proc", "/sys", "/dev")  # kernel interfaces, not files: reads may block or never end


class UserFileError(DataError):
    """A user's file cannot be read. kind: missing | directory | special | permission | unreadable | encoding."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def _pseudo(path: Path) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + "/") for root in PSEUDO_ROOTS)


def describe_mode(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def refuse_special(path: str | Path, what: str = "file") -> None:
    """Raise UserFileError when `path` is a FIFO, device, socket or kernel pseudo file (what a caller must
    refuse before it plans work on it); missing, unreadable, regular files and directories pass."""
    path = Path(path)
    if _pseudo(path):
        raise UserFileError(f"cannot read {what} {path}: a kernel pseudo file (under {', '.join(PSEUDO_ROOTS)}) "
                            "is not input; refused (reading it could block forever)", "special")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserFileError(f"cannot read {what} {path}: it is {describe_mode(mode)}; refused (reading it could "
                            "block forever)", "special")


def open_binary(path: str | Path, what: str = "file"):
    """Open a user's regular file for reading in binary mode, or raise UserFileError; never blocks."""
    path = Path(path)
    label = f"cannot read {what} {path}"
    if _pseudo(path):
        refuse_special(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserFileError(f"{label}: no such file", "missing") from None
    except IsADirectoryError:
        raise UserFileError(f"{label}: it is a directory, not a file", "directory") from None
    except PermissionError:
        raise UserFileError(f"{label}: permission denied", "permission") from None
    except OSError as exc:
        raise UserFileError(f"{label}: {exc.strerror or exc}", "unreadable") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "directory" if stat.S_ISDIR(mode) else "special"
            detail = ", not a file" if kind == "directory" else "; refused (reading it could block forever)"
            raise UserFileError(f"{label}: it is {describe_mode(mode)}{detail}", kind)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path, what: str = "file", limit: int | None = None) -> bytes:
    """The file's bytes (at most limit + 1 when a limit is given, so a caller can tell it was longer)."""
    with open_binary(path, what) as fh:
        try:
            return fh.read() if limit is None else fh.read(limit + 1)
        except OSError as exc:
            raise UserFileError(f"cannot read {what} {path}: {exc.strerror or exc}", "unreadable") from None


def decode(data: bytes, path: str | Path, what: str = "file") -> str:
    """UTF-8 text (a byte-order mark is dropped), or UserFileError saying where the first bad byte is."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserFileError(
            f"cannot read {what} {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, "
            f"offset {exc.start})",
            "encoding",
        ) from None


def read_text(path: str | Path, what: str = "file") -> str:
    """A user's text file as str: UTF-8, regular file, readable; else one UserFileError."""
    return decode(read_bytes(path, what), path, what)


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """A user's TOML file as a dict; every failure (including invalid TOML) is one ConfigError."""
    try:
        text = read_text(path, what)
    except UserFileError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None
