"""Packing: the units' token files, concatenated in unit order into shards of the shard format
(flopwise.data.shards), with the tokenizer beside them and the manifest written last."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flopwise.atomic import atomic_path
from flopwise.data.config import PipelineConfig
from flopwise.data.pipeline.cache import code_version, config_hash
from flopwise.data.pipeline.tasks import SPLITS, UnitFiles
from flopwise.data.pipeline.tokenizer import load_tokenizer
from flopwise.data.shards import ShardManifest, ShardWriter, sha256_file, write_manifest
from flopwise.errors import DataError

TOKENIZER = "tokenizer.json"


def pack(
    cfg: PipelineConfig,
    tok_path: Path,
    units: list[UnitFiles],
    shards: Path,
    report: dict,
    key: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Write the shard directory `shards`; its manifest (last) carries the run's report."""
    tok = load_tokenizer(tok_path)
    vocab = tok.get_vocab_size()
    eod = tok.token_to_id(cfg.tokenizer.eod_token)
    shards.mkdir(parents=True, exist_ok=True)
    with atomic_path(shards / TOKENIZER) as tmp:
        shutil.copyfile(tok_path, tmp)
    writers = {s: ShardWriter(shards, s, vocab, eod, cfg.output.tokens_per_file) for s in SPLITS}
    if progress:
        progress("pack", 0, len(units))
    for i, files in enumerate(units):
        for split, w in writers.items():
            arr = np.fromfile(files.tokens(split), dtype=w.dtype)
            w.add_tokens(arr, int(np.count_nonzero(arr == eod)))
        if progress:
            progress("pack", i + 1, len(units))
    splits = {s: w.close() for s, w in writers.items()}
    if splits["train"].tokens == 0:
        read = report["stages"][0]
        if not read.get("docs_out"):
            problems = ", ".join(f"{k}: {v}" for k, v in read.get("drops", {}).items())
            raise DataError("no input documents: the sources hold no readable document"
                            + (f" (input problems: {problems})" if problems else " (the input files are empty)"))
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
