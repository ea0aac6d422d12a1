"""A job's data, prepared on its node before it runs: `python -m flopwise.cluster.service.prepare PIPELINE RECORD
-- ARGV...` runs the data pipeline PIPELINE into its content-addressed cache (a result already there is reused),
writes RECORD (JSON: key, shard_dir, cached, seconds) so the service knows the node now holds this data, then
replaces itself with ARGV, where `{data_shards}` becomes the shard directory (also in FLOPWISE_DATA_SHARDS).
The service skips this step on a node its database says already holds the key."""

from __future__ import annotations

import json
import os
import sys
import time

from flopwise.atomic import atomic_write_text
from flopwise.errors import FlopwiseError

PLACEHOLDER = "{data_shards}"


def data_key(pipeline: str) -> str:
    """The content address of a pipeline's result (its config, its input files' fingerprint, the code version):
    the key its cache stores it under."""
    from flopwise.data.config import load_config
    from flopwise.data.pipeline import cache_key
    from flopwise.data.sources import plan_units

    cfg = load_config(pipeline)
    return cache_key(cfg, plan_units(cfg))


def substitute(argv: list[str], shards: str) -> list[str]:
    return [a.replace(PLACEHOLDER, shards) for a in argv]


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        print("usage: python -m flopwise.cluster.service.prepare PIPELINE RECORD -- ARGV...", file=sys.stderr)
        return 2
    pipeline, record, argv = args[0], args[1], args[3:]
    from flopwise.data.config import load_config
    from flopwise.data.pipeline import run_pipeline

    print(f"preparing data: {pipeline}", flush=True)
    try:
        result = run_pipeline(load_config(pipeline))
    except FlopwiseError as exc:
        print(f"error: data pipeline {pipeline}: {exc}", file=sys.stderr, flush=True)
        return 2
    what = "reused from the cache" if result.cached else f"prepared in {result.seconds:.1f} s"
    print(f"data {result.key} {what}: {result.shard_dir}", flush=True)
    atomic_write_text(record, json.dumps({"key": result.key, "shard_dir": str(result.shard_dir),
                                          "cached": result.cached, "seconds": result.seconds, "at": time.time()}))
    os.environ["FLOPWISE_DATA_SHARDS"] = str(result.shard_dir)
    argv = substitute(argv, str(result.shard_dir))
    os.execvp(argv[0], argv)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
