"""The token shard format: the one format every producer writes and the trainer reads.

A shard directory holds
  manifest.json            format name + version, dtype, vocab size, end-of-document id, tokenizer file
                           and its sha256, per split the files with token and document counts, and
                           free-form `extra` (per-stage statistics, config hash, ...)
  tokenizer.json           the HF tokenizers file that produced the ids (optional)
  <split>-<NNNNN>.bin      a flat little-endian stream of token ids (uint16 when the vocabulary fits,
                           else uint32); every document ends with the end-of-document id.
Shard files and the manifest are written to temporary names and renamed into place; the manifest is
written last, so a directory with a manifest is always complete. The manifest lists each file's size and
sha256 (`bytes`, `sha256`, parallel to `files`; absent in older manifests): a reader checks sizes on every
open and hashes on request (`TokenShards(..., verify=True)`, `flopwise train --verify-data`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flopwise.atomic import atomic_path, atomic_write_json
from flopwise.errors import DataError

FORMAT = "flopwise-shards"
VERSION = 1
MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class SplitInfo:
    files: list[str] = field(default_factory=list)
    tokens: int = 0
    documents: int = 0
    bytes: list[int] = field(default_factory=list)  # per file, parallel to files
    sha256: list[str] = field(default_factory=list)  # per file, parallel to files


@dataclass
class ShardManifest:
    vocab_size: int
    eod_id: int
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    tokenizer_file: str | None = None
    tokenizer_sha256: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "dtype": self.dtype.str,
            "vocab_size": self.vocab_size,
            "eod_id": self.eod_id,
            "tokenizer": {"file": self.tokenizer_file, "sha256": self.tokenizer_sha256},
            "splits": {k: vars(v) for k, v in self.splits.items()},
            "extra": self.extra,
        }


def write_manifest(directory: str | Path, manifest: ShardManifest) -> None:
    atomic_write_json(Path(directory) / MANIFEST, manifest.to_json())


def read_manifest(directory: str | Path) -> ShardManifest:
    path = Path(directory) / MANIFEST
    import json

    if not path.is_file():
        raise DataError(f"no token shards at {directory}: {MANIFEST} is missing")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise DataError(f"{path}: not a flopwise shard manifest (format = {data.get('format')!r})")
        if data.get("version") != VERSION:
            raise DataError(f"{path}: shard format version {data.get('version')} (this flopwise reads {VERSION})")
        splits = {k: SplitInfo(**v) for k, v in data["splits"].items()}
        tok = data.get("tokenizer") or {}
        return ShardManifest(
            int(data["vocab_size"]),
            int(data["eod_id"]),
            splits,
            tok.get("file"),
            tok.get("sha256"),
            data.get("extra", {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: malformed manifest ({exc})") from None


class ShardWriter:
    """Append documents (lists of ids) to one split; rolls over to a new file every `tokens_per_file`."""

    def __init__(self, directory: str | Path, split: str, vocab_size: int, eod_id: int, tokens_per_file: int = 1 << 26):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        self.eod_id = eod_id
        self.tokens_per_file = tokens_per_file
        self.info = SplitInfo()
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids, *, append_eod: bool = True) -> None:
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise DataError(f"token id out of range [0, {self.vocab_size}) in split {self.split!r}")
        if append_eod:
            arr = np.append(arr, self.eod_id)
        self._buffer.append(arr.astype(self.dtype))
        self._buffered += arr.size
        self.info.documents += 1
        if self._buffered >= self.tokens_per_file:
            self._flush()

    def add_tokens(self, tokens: np.ndarray, documents: int) -> None:
        """Append a stream of whole documents, each already ending with the EOD id (a packed unit)."""
        arr = np.asarray(tokens)
        if arr.size and (int(arr.max()) >= self.vocab_size or int(arr.min()) < 0):
            raise DataError(f"token id out of range [0, {self.vocab_size}) in split {self.split!r}")
        if arr.size and int(arr[-1]) != self.eod_id:
            raise DataError(f"token stream for split {self.split!r} does not end with the EOD id {self.eod_id}")
        if not arr.size:
            return
        self._buffer.append(arr.astype(self.dtype, copy=False))
        self._buffered += arr.size
        self.info.documents += documents
        if self._buffered >= self.tokens_per_file:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        name = f"{self.split}-{len(self.info.files):05d}.bin"
        data = np.ascontiguousarray(np.concatenate(self._buffer))
        with atomic_path(self.directory / name) as tmp:
            data.tofile(tmp)
        self.info.files.append(name)
        self.info.bytes.append(int(data.nbytes))
        self.info.sha256.append(hashlib.sha256(memoryview(data).cast("B")).hexdigest())
        self.info.tokens += self._buffered
        self._buffer, self._buffered = [], 0

    def close(self) -> SplitInfo:
        self._flush()
        return self.info


class TokenShards:
    """Memory-mapped read access to one split of a shard directory. Sizes are checked against the manifest
    on open; with verify=True every file is also hashed against its sha256."""

    def __init__(self, directory: str | Path, split: str = "train", verify: bool = False):
        self.directory = Path(directory)
        self.manifest = read_manifest(directory)
        if split not in self.manifest.splits:
            raise DataError(f"{directory}: no split {split!r} (have: {', '.join(self.manifest.splits)})")
        self.split = split
        info = self.manifest.splits[split]
        itemsize = self.manifest.dtype.itemsize
        self.arrays: list[np.ndarray] = []
        for i, name in enumerate(info.files):
            path = self.directory / name
            if not path.is_file():
                raise DataError(f"{directory}: shard file {name} listed in the manifest is missing")
            size = path.stat().st_size
            if i < len(info.bytes) and size != info.bytes[i]:
                raise DataError(f"shard file {path} has {size} bytes, the manifest says {info.bytes[i]}: the file "
                                "is truncated or replaced; prepare the data again")
            if size % itemsize:
                raise DataError(f"shard file {path} has {size} bytes, not a whole number of {itemsize}-byte token ids: "
                                "the file is damaged; prepare the data again")
            if verify and i < len(info.sha256) and sha256_file(path) != info.sha256[i]:
                raise DataError(f"shard file {path} does not match the manifest's sha256: the file is damaged; "
                                "prepare the data again")
            arr = np.memmap(path, dtype=self.manifest.dtype, mode="r") if size else np.zeros(0, self.manifest.dtype)
            self.arrays.append(arr)
        self.files = [self.directory / name for name in info.files]
        self.tokens = sum(a.size for a in self.arrays)
        if self.tokens != info.tokens:
            raise DataError(f"{directory}: split {split!r} has {self.tokens} tokens on disk, manifest says {info.tokens}")

    @property
    def eod_id(self) -> int:
        return self.manifest.eod_id

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size
