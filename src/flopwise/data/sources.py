"""Sources: directories of files (by glob), JSONL, Parquet and HF `datasets` saved to disk.

Input is split into work units (groups of files, byte ranges of a JSONL file, Parquet row groups, row
ranges of a dataset); a unit is the grain of parallelism, resumption and caching. Reading streams: a
unit yields documents one at a time, so memory stays flat however large the input. Documents larger
than `max_doc_bytes` are streamed past without being loaded. Bad input (malformed JSON, non-UTF-8
bytes, empty or unreadable files, oversized documents) is counted and recorded with file and line;
it never stops the run.

This is the one module that reads the user's input files (see flopwise.data.document for what a
document is).
"""

from __future__ import annotations

import glob as globlib
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flopwise.data.config import PipelineConfig, SourceConfig
from flopwise.data.document import text_bytes
from flopwise.errors import DataError
from flopwise.userfiles import UserFileError, open_binary, refuse_special

log = logging.getLogger(__name__)
MAX_EVENTS = 200  # events kept per unit with file and line; counts are always complete


@dataclass
class WorkUnit:
    index: int
    source: int
    files: list[str]
    start: int = 0  # jsonl: byte offset; hf_disk: first row; parquet: row group
    end: int = -1  # jsonl: byte offset (exclusive); hf_disk: end row


@dataclass
class SourceReport:
    """What reading one unit found: documents and bytes read, and problems with where they were."""

    docs: int = 0
    bytes: int = 0
    problems: Counter = field(default_factory=Counter)
    events: list[dict] = field(default_factory=list)

    def problem(self, kind: str, file: str, line: int | None = None, detail: str = "") -> None:
        self.problems[kind] += 1
        if len(self.events) < MAX_EVENTS:
            self.events.append({"kind": kind, "file": file, "line": line, "detail": detail[:200]})
        log.debug("%s: %s:%s %s", kind, file, line, detail)

    def merge(self, other: dict) -> None:
        """Add another unit's report (as written by `to_json`); keeps the first MAX_EVENTS events."""
        self.docs += other["docs"]
        self.bytes += other["bytes"]
        self.problems.update(other["problems"])
        self.events.extend(other["events"][: max(0, MAX_EVENTS - len(self.events))])

    def to_json(self) -> dict:
        return {
            "docs": self.docs,
            "bytes": self.bytes,
            "problems": dict(self.problems),
            "events": self.events,
        }


def _matches_exclude(path: Path, root: Path, exclude: list[str]) -> bool:
    if not exclude:
        return False
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    parts = set(rel.parts)
    return any(e in parts or rel.match(e) for e in exclude)


def _expand(cfg: PipelineConfig, src: SourceConfig, default_glob: str) -> list[Path]:
    base = cfg.resolve(src.path)
    if base.is_dir():
        pattern = src.glob if src.glob != "**/*" or src.type == "files" else default_glob
        files = sorted(p for p in base.glob(pattern) if not p.is_dir() or p.is_symlink())
        return [p for p in files if not _matches_exclude(p, base, src.exclude)]
    if base.exists() or base.is_symlink():
        refuse_special(base, f"source {src.name}:")  # named on purpose: refuse now rather than block mid-run
        return [base]
    files = sorted(Path(p) for p in globlib.glob(str(base), recursive=True))
    if not files:
        raise DataError(f"source {src.name}: no input matches {base}")
    return files


def plan_units(cfg: PipelineConfig) -> list[WorkUnit]:
    """Split every source into work units, in a deterministic order."""
    units: list[WorkUnit] = []
    for si, src in enumerate(cfg.sources):
        if src.type == "files":
            files = _expand(cfg, src, "**/*")
            for i in range(0, len(files), src.files_per_unit):
                units.append(WorkUnit(len(units), si, [str(p) for p in files[i : i + src.files_per_unit]]))
        elif src.type == "jsonl":
            for p in _expand(cfg, src, "**/*.jsonl"):
                size = _size(p)
                for start in range(0, max(size, 1), src.unit_bytes):
                    units.append(WorkUnit(len(units), si, [str(p)], start, min(start + src.unit_bytes, size)))
        elif src.type == "parquet":
            import pyarrow.parquet as pq

            for p in _expand(cfg, src, "**/*.parquet"):
                try:
                    with open_binary(p, "parquet file") as fh:
                        groups = pq.ParquetFile(fh).metadata.num_row_groups
                except Exception as exc:  # noqa: BLE001 - a broken file is reported when read
                    log.warning("cannot read parquet metadata of %s: %s", p, exc)
                    groups = 1
                for g in range(max(groups, 1)):
                    units.append(WorkUnit(len(units), si, [str(p)], g, g + 1))
        elif src.type == "hf_disk":
            path = cfg.resolve(src.path)
            rows = len(_load_hf(path, src))
            for start in range(0, rows, src.rows_per_unit):
                units.append(
                    WorkUnit(len(units), si, [str(path)], start, min(start + src.rows_per_unit, rows))
                )
    if not units:
        raise DataError("no input: the sources matched no files")
    return units


def fingerprint(units: list[WorkUnit]) -> list:
    """(path, size, mtime) of every input file: part of the cache key."""
    seen, out = set(), []
    for u in units:
        for f in u.files:
            if f in seen:
                continue
            seen.add(f)
            try:
                st = os.stat(f)
                if stat.S_ISDIR(st.st_mode):  # hf_disk: the arrow files inside
                    for p in sorted(Path(f).rglob("*")):
                        if p.is_file():
                            s2 = p.stat()
                            out.append([str(p), s2.st_size, s2.st_mtime_ns])
                else:
                    out.append([f, st.st_size, st.st_mtime_ns])
            except OSError:
                out.append([f, -1, -1])
    return out


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _load_hf(path: Path, src: SourceConfig):
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise DataError("source type hf_disk needs the `datasets` package (pip install datasets)") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"source {src.name}: cannot load a saved dataset from {path} ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if src.split not in ds:
            raise DataError(f"source {src.name}: {path} has no split {src.split!r} (have: {', '.join(ds)})")
        ds = ds[src.split]
    if src.text_field not in ds.column_names:
        raise DataError(
            f"source {src.name}: {path} has no column {src.text_field!r} (have: {ds.column_names})"
        )
    return ds


def _decode(data: bytes, src: SourceConfig, report: SourceReport, file: str, line: int | None) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.problem("non_utf8", file, line, str(exc))
        if src.encoding_errors == "skip":
            return None
        return data.decode("utf-8", errors="replace")


def read_unit(cfg: PipelineConfig, unit: WorkUnit, report: SourceReport) -> Iterator[dict]:
    src = cfg.sources[unit.source]
    reader = {"files": _read_files, "jsonl": _read_jsonl, "parquet": _read_parquet, "hf_disk": _read_hf}[
        src.type
    ]
    for doc in reader(cfg, src, unit, report):
        report.docs += 1
        report.bytes += text_bytes(doc["text"])
        yield doc


def _read_files(cfg, src: SourceConfig, unit: WorkUnit, report: SourceReport) -> Iterator[dict]:
    limit = cfg.run.max_doc_bytes
    base = cfg.resolve(src.path)
    for f in unit.files:
        p = Path(f)
        rel = str(p.relative_to(base)) if base.is_dir() and p.is_relative_to(base) else str(p)
        try:
            with open_binary(p) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > limit:
                    report.problem("too_large", f, None, f"{size} bytes > max_doc_bytes {limit}")
                    continue
                data = fh.read(limit + 1)
        except UserFileError as exc:
            report.problem("not_a_regular_file" if exc.kind in ("special", "directory") else "unreadable", f, None,
                           str(exc))
            continue
        except OSError as exc:
            report.problem("unreadable", f, None, str(exc))
            continue
        if len(data) > limit:  # grew since stat
            report.problem("too_large", f, None, f"more than max_doc_bytes {limit}")
            continue
        if not data.strip():
            report.problem("empty", f)
            continue
        text = _decode(data, src, report, f, None)
        if text is not None:
            yield {"id": f"{src.name}:{rel}", "text": text}


def _record(src: SourceConfig, obj, doc_id: str, report: SourceReport, file: str, line) -> dict | None:
    if not isinstance(obj, dict):
        report.problem("malformed", file, line, f"expected a JSON object, got {type(obj).__name__}")
        return None
    text = obj.get(src.text_field)
    if text is None and "code" in src.fields and isinstance(obj.get("code"), str):
        text = obj["code"]
    if not isinstance(text, str):
        report.problem("missing_text", file, line, f"no string field {src.text_field!r}")
        return None
    if not text.isascii():  # JSON escapes can encode lone surrogates, which are not text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            report.problem("non_utf8", file, line, str(exc))
            if src.encoding_errors == "skip":
                return None
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if not text.strip():
        report.problem("empty", file, line)
        return None
    if src.id_field and obj.get(src.id_field) is not None:
        doc_id = f"{src.name}:{obj[src.id_field]}"
    doc = {"id": doc_id, "text": text}
    for k in src.fields:
        if k in obj and obj[k] is not None:
            doc[k] = obj[k]
    return doc


def _read_jsonl(cfg, src: SourceConfig, unit: WorkUnit, report: SourceReport) -> Iterator[dict]:
    f = unit.files[0]
    limit = cfg.run.max_doc_bytes
    try:
        fh = open_binary(f)
    except UserFileError as exc:
        report.problem("not_a_regular_file" if exc.kind in ("special", "directory") else "unreadable", f, None,
                       str(exc))
        return
    with fh:
        try:
            if _size(Path(f)) == 0:
                report.problem("empty", f)
                return
            pos = unit.start
            line_no: int | None = 1
            if unit.start > 0:  # start after the first newline at or past our offset
                fh.seek(unit.start - 1)
                skipped = _skip_line(fh)
                pos = unit.start - 1 + skipped
                line_no = None
            while pos < unit.end:
                data = fh.readline(limit + 1)
                if not data:
                    break
                where = line_no if line_no is not None else f"byte {pos}"
                if len(data) > limit and not data.endswith(b"\n"):
                    extra = _skip_line(fh)
                    report.problem("too_large", f, where, f"line longer than max_doc_bytes {limit}")
                    pos += len(data) + extra
                else:
                    pos += len(data)
                    doc = _parse_line(src, data, f, where, report)
                    if doc is not None:
                        yield doc
                if line_no is not None:
                    line_no += 1
        except OSError as exc:
            report.problem("unreadable", f, None, str(exc))


def _skip_line(fh) -> int:
    """Read past the next newline in bounded chunks; return the bytes consumed."""
    n = 0
    while True:
        chunk = fh.readline(1 << 20)
        n += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return n


def _parse_line(src, data: bytes, f: str, where, report: SourceReport) -> dict | None:
    if not data.strip():
        return None
    text = _decode(data, src, report, f, where)
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        report.problem("malformed", f, where, str(exc))
        return None
    return _record(src, obj, f"{src.name}:{Path(f).name}:{where}", report, f, where)


def _read_parquet(cfg, src: SourceConfig, unit: WorkUnit, report: SourceReport) -> Iterator[dict]:
    import pyarrow.parquet as pq

    f = unit.files[0]
    try:
        pf = pq.ParquetFile(open_binary(f, "parquet file"))
        names = pf.schema_arrow.names
        if src.text_field not in names:
            report.problem("missing_text", f, None, f"no column {src.text_field!r} (have: {names})")
            return
        cols = [src.text_field] + [c for c in ({src.id_field} | set(src.fields)) if c and c in names]
        row = 0
        for batch in pf.iter_batches(batch_size=1024, row_groups=[unit.start], columns=cols):
            for obj in batch.to_pylist():
                where = f"row group {unit.start} row {row}"
                row += 1
                text = obj.get(src.text_field)
                if isinstance(text, str) and len(text) > cfg.run.max_doc_bytes:
                    report.problem(
                        "too_large", f, where, f"longer than max_doc_bytes {cfg.run.max_doc_bytes}"
                    )
                    continue
                doc = _record(src, obj, f"{src.name}:{Path(f).name}:{unit.start}:{row - 1}", report, f, where)
                if doc is not None:
                    yield doc
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        report.problem("unreadable", f, None, f"{type(exc).__name__}: {exc}")


def _read_hf(cfg, src: SourceConfig, unit: WorkUnit, report: SourceReport) -> Iterator[dict]:
    f = unit.files[0]
    ds = _load_hf(Path(f), src)
    cols = [src.text_field] + [c for c in ({src.id_field} | set(src.fields)) if c and c in ds.column_names]
    ds = ds.select_columns(cols)
    for start in range(unit.start, unit.end, 1000):
        stop = min(start + 1000, unit.end)
        batch = ds[start:stop]
        for i in range(stop - start):
            obj = {c: batch[c][i] for c in cols}
            text = obj.get(src.text_field)
            if isinstance(text, str) and len(text) > cfg.run.max_doc_bytes:
                report.problem(
                    "too_large", f, start + i, f"longer than max_doc_bytes {cfg.run.max_doc_bytes}"
                )
                continue
            doc = _record(src, obj, f"{src.name}:{start + i}", report, f, start + i)
            if doc is not None:
                yield doc
