"""Per-rank memory of each parallel layout on CPU (gloo): model state and activations, measured.

Model state = bytes of this rank's parameters + gradients + optimizer state (local shards) after one
step. Activations = peak bytes of tensors saved for backward during one training step, per storage,
parameters excluded (flopwise.train.memory_probe), the figure pipeline schedules change.

    python benchmarks/parallel_memory.py [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SHAPE = ["model.layers=8", "model.hidden=256", "model.heads=8", "model.kv_heads=4", "model.ffn=768",
         "model.seq_len=256", "model.vocab_size=512"]
BASE = ["train.global_batch=16", "train.micro_batch=2", "guard.enabled=false"]
LAYOUTS = {
    "single": (1, []),
    "dp2 (replicate)": (2, ["parallel.dp=2"]),
    "zero1 dp4": (4, ["parallel.dp=4", "parallel.zero=1"]),
    "zero2 dp4": (4, ["parallel.dp=4", "parallel.zero=2"]),
    "zero3 dp4": (4, ["parallel.dp=4", "parallel.zero=3"]),
    "tp2 + sp": (2, ["parallel.tp=2"]),
    "tp4 + sp": (4, ["parallel.tp=4"]),
    "pp2 1f1b uniform 4,4": (2, ["parallel.pp=2", 'parallel.split="4,4"']),
    "pp2 1f1b non-uniform 3,5": (2, ["parallel.pp=2", 'parallel.split="3,5"']),
    "pp2 1f1b auto split": (2, ["parallel.pp=2"]),
    "pp2 gpipe uniform 4,4": (2, ["parallel.pp=2", 'parallel.split="4,4"', 'parallel.schedule="gpipe"']),
}


def _measure(job, shards):
    from flopwise.data.loader import TokenLoader
    from flopwise.data.shards import TokenShards
    from flopwise.train.engine import build_engine
    from flopwise.train.memory_probe import measure_step_memory

    engine = build_engine(job)
    loader = TokenLoader(TokenShards(shards), job.seq_len, job.train.global_batch, 0, engine.data_rank, engine.data_world)
    result = measure_step_memory(engine, *loader.next_batch())
    result.update(split=list(engine.layout.split), stages=engine.parts.stage_ids)
    return result


def _worker(rank, world, port, overrides, shards, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from flopwise.train.config import load_config

    job = load_config(None, [f'data.shards="{shards}"', *SHAPE, *BASE, *overrides], preset="nano", out=out)
    result = _measure(job, shards)
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def run(name, world, overrides, shards):
    out = tempfile.mkdtemp()
    if world == 1:
        from flopwise.train.config import load_config

        job = load_config(None, [f'data.shards="{shards}"', *SHAPE, *BASE, *overrides], preset="nano", out=out)
        return [_measure(job, shards)]
    from parallel.harness import free_port

    mp.start_processes(_worker, args=(world, free_port(), overrides, str(shards), out), nprocs=world, join=True,
                       start_method="spawn")
    return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from conftest import make_shards

    shards = make_shards(Path(tempfile.mkdtemp()), docs=400)
    results = {}
    for name, (world, overrides) in LAYOUTS.items():
        results[name] = run(name, world, overrides, shards)
    single = results["single"][0]
    print(json.dumps({"torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
                      "shape": SHAPE, "batch": BASE}))
    print(f"{'layout':<26}{'rank':>5}{'model state MiB':>17}{'vs single':>11}{'activations MiB':>17}{'vs single':>11}")
    for name, ranks in results.items():
        for r, res in enumerate(ranks):
            ms, act = res["model_state_bytes"], res["activation_peak_bytes"]
            extra = f"  split {res['split']}, stage {res['stages']}" if res.get("split") else ""
            print(f"{name:<26}{r:>5}{ms / 2**20:>17.2f}{ms / single['model_state_bytes']:>10.0%}"
                  f"{act / 2**20:>17.2f}{act / single['activation_peak_bytes']:>10.0%}{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
