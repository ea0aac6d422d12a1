"""The data pipeline: sources -> stages -> tokenizer -> token shards, resumable, cached, parallel.

    result = run_pipeline(load_config("data.toml"))
    result.shard_dir          # a shard directory (manifest.json, tokenizer.json, <split>-NNNNN.bin)

  driver.py     plans the steps, runs them through an executor, assembles the result
  tasks.py      typed tasks (map a segment of stages over a unit, dedup reduce, tokenize a unit)
  executors.py  in-process, local worker processes, Ray Data
  cache.py      cache keys, the one-writer lock per key, listing/removing entries, placing results
  tokenizer.py  training or loading the tokenizer; the held-out split
  packing.py    token files -> shards + manifest
  dropped.py    dropped documents with their reason (output.write_dropped)
  report.py     per-step counts
"""

from flopwise.data.pipeline.cache import cache_entries, cache_key, cache_remove
from flopwise.data.pipeline.driver import run_pipeline
from flopwise.data.pipeline.report import PipelineResult

__all__ = ["PipelineResult", "cache_entries", "cache_key", "cache_remove", "run_pipeline"]
