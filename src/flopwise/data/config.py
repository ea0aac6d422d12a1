"""The data pipeline's configuration: sources, ordered stages, tokenizer, output and run settings.

Read from TOML (`load_config`) or built in code (`PipelineConfig.from_dict`). Every key is validated
when loaded; a wrong one gets one line naming the key, the value and what is allowed.

    [[sources]]                    # any number; type = files | jsonl | parquet | hf_disk
    type = "files"
    path = "corpus/"
    glob = "**/*.py"

    [[stages]]                     # run in the order given; see flopwise.data.stages
    type = "normalize"

    [tokenizer]                    # train a byte-level BPE (vocab_size) or load `path`
    vocab_size = 8192

    [output]
    dir = "shards"                 # optional; the shards always live in the cache too
    eval_fraction = 0.03
    write_dropped = true           # dropped documents with their reason, in <dir>/dropped/<stage>.jsonl

    [run]
    cache_dir = "~/.cache/flopwise/data"
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flopwise.config_values import check_value
from flopwise.data.stages.registry import STAGE_TYPES, build_stage
from flopwise.errors import ConfigError
from flopwise.userfiles import read_toml

SOURCE_TYPES = ("files", "jsonl", "parquet", "hf_disk")


@dataclass
class SourceConfig:
    type: str
    path: str
    name: str = ""  # prefix of document ids; defaults to "s<index>"
    glob: str = "**/*"  # files: which files under `path`; jsonl/parquet: glob when `path` is a directory
    exclude: list[str] = field(default_factory=list)  # path parts (directory or file names) to skip
    text_field: str = "text"  # jsonl / parquet / hf_disk
    id_field: str = ""  # optional field holding a stable document id
    fields: list[str] = field(default_factory=list)  # extra fields kept with each record (e.g. code, tests)
    encoding_errors: str = "replace"  # non-UTF-8 bytes: "replace" (keep, counted) or "skip" (drop the doc)
    files_per_unit: int = 64  # files: work-unit size
    unit_bytes: int = 64 << 20  # jsonl: byte range per work unit
    rows_per_unit: int = 20000  # hf_disk: rows per work unit (parquet: one row group per unit)
    split: str = "train"  # hf_disk: which split of a DatasetDict

    def validate(self, where: str) -> None:
        _choice(f"{where}.type", self.type, SOURCE_TYPES)
        _choice(f"{where}.encoding_errors", self.encoding_errors, ("replace", "skip"))
        for key in ("files_per_unit", "unit_bytes", "rows_per_unit"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key} = {getattr(self, key)}: must be >= 1")
        if not self.path:
            raise ConfigError(f"{where}.path is empty: give a file, directory or glob")


@dataclass
class StageConfig:
    type: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizerConfig:
    path: str = ""  # load this tokenizer.json instead of training one
    vocab_size: int = 8192
    train_bytes: int = 200 << 20  # train on at most this many bytes of the kept documents
    min_frequency: int = 2
    eod_token: str = "<|endoftext|>"

    def validate(self) -> None:
        if not self.path and not 256 < self.vocab_size <= 2**32:
            raise ConfigError(f"tokenizer.vocab_size = {self.vocab_size}: must be in (256, 2**32]")
        if self.train_bytes < 1:
            raise ConfigError(f"tokenizer.train_bytes = {self.train_bytes}: must be >= 1")


@dataclass
class OutputConfig:
    dir: str = ""
    eval_fraction: float = 0.01
    tokens_per_file: int = 1 << 26
    seed: int = 0  # salt of the hash that assigns documents to the held-out split
    write_dropped: bool = False  # also write every dropped document with its reason (dropped/<stage>.jsonl)

    def validate(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"output.eval_fraction = {self.eval_fraction}: must be in [0, 1)")
        if self.tokens_per_file < 1:
            raise ConfigError(f"output.tokens_per_file = {self.tokens_per_file}: must be >= 1")


@dataclass
class RunConfig:
    cache_dir: str = ""  # default: $FLOPWISE_CACHE/data or ~/.cache/flopwise/data
    workers: int = 0  # 0: one per CPU core
    max_doc_bytes: int = 64 << 20  # larger documents are skipped (streamed past, never loaded whole)
    batch_docs: int = 256  # documents per batch inside a work unit

    def validate(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"run.workers = {self.workers}: must be >= 0 (0 = one per core)")
        if self.max_doc_bytes < 1:
            raise ConfigError(f"run.max_doc_bytes = {self.max_doc_bytes}: must be >= 1")
        if self.batch_docs < 1:
            raise ConfigError(f"run.batch_docs = {self.batch_docs}: must be >= 1")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("FLOPWISE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flopwise")
        return Path(base) / "data"


@dataclass
class PipelineConfig:
    sources: list[SourceConfig]
    stages: list[StageConfig] = field(default_factory=list)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)
    base_dir: str = "."  # relative paths in the config are relative to this (the TOML file's folder)

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | Path = ".") -> PipelineConfig:
        _check_keys("", data, {"sources", "stages", "tokenizer", "output", "run"})
        raw_sources = data.get("sources")
        if not isinstance(raw_sources, list) or not raw_sources:
            raise ConfigError("sources: at least one [[sources]] table is required")
        sources = [_build(SourceConfig, f"sources[{i}]", s) for i, s in enumerate(raw_sources)]
        for i, s in enumerate(sources):
            s.validate(f"sources[{i}]")
            if not s.name:
                s.name = f"s{i}"
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"sources: names must be unique (got {names})")
        stages = []
        for i, st in enumerate(data.get("stages", [])):
            if not isinstance(st, dict) or "type" not in st:
                raise ConfigError(
                    f"stages[{i}]: each [[stages]] table needs a type (one of {', '.join(STAGE_TYPES)})"
                )
            params = {k: v for k, v in st.items() if k != "type"}
            cfg = StageConfig(str(st["type"]), params)
            build_stage(cfg.type, cfg.params, f"stages[{i}]")  # validates type and parameters now, not mid-run
            stages.append(cfg)
        cfg = cls(
            sources=sources,
            stages=stages,
            tokenizer=_build(TokenizerConfig, "tokenizer", data.get("tokenizer", {})),
            output=_build(OutputConfig, "output", data.get("output", {})),
            run=_build(RunConfig, "run", data.get("run", {})),
            base_dir=str(base_dir),
        )
        cfg.tokenizer.validate()
        cfg.output.validate()
        cfg.run.validate()
        return cfg

    def to_dict(self) -> dict:
        return {
            "sources": [dataclasses.asdict(s) for s in self.sources],
            "stages": [{"type": s.type, **s.params} for s in self.stages],
            "tokenizer": dataclasses.asdict(self.tokenizer),
            "output": dataclasses.asdict(self.output),
            "run": dataclasses.asdict(self.run),
        }

    def stage_names(self) -> list[str]:
        """Each stage's name in reports and file names: its `name` (default: its type), made unique by
        appending #2, #3, ... to repeats."""
        names, seen = [], {}
        for st in self.stages:
            base = st.params.get("name", st.type)
            seen[base] = seen.get(base, 0) + 1
            names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
        return names

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    data = read_toml(path, "pipeline config")
    return PipelineConfig.from_dict(data, base_dir=path.parent.resolve())


def _check_keys(where: str, data: dict, allowed: set[str]) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown key {name} (allowed: {', '.join(sorted(allowed))})")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} = {value!r}: must be one of {', '.join(map(repr, allowed))}")


def _build(cls, where: str, data: dict):
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "params"}
    _check_keys(where, data, set(fields))
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = check_value(f"{where}.{key}", value, fields[key].type)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
