"""Run several parallel layouts in spawned gloo processes and return their per-step losses."""

from __future__ import annotations

import json
import os
import socket
import tempfile

import torch.multiprocessing as mp

from flopwise.train.config import load_config
from flopwise.train.trainer import train

BASE = ["train.global_batch=8", "train.micro_batch=2", "train.lr=3e-3", "train.warmup_steps=2", "train.log_every=1",
        "train.eval_every=0", "checkpoint.every=0", "guard.enabled=false", "model.layers=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, shards, out, overrides, steps, resume, result_file, preset):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    job = load_config(None, [f'data.shards="{shards}"', *BASE, *overrides], preset=preset, out=out,
                      **{"train.steps": steps})
    result = train(job, resume=resume, metrics_path=os.path.join(out, f"metrics-rank{rank}.jsonl"))
    if rank == 0:
        with open(result_file, "w") as fh:
            json.dump({r["step"]: r["loss"] for r in result.history}, fh)


def run_layout(shards, world: int, overrides: list[str], steps: int = 10, out: str | None = None,
               resume: bool = False, preset: str = "nano") -> dict[int, float]:
    out = out or tempfile.mkdtemp(prefix="flopwise-par-")
    result_file = os.path.join(out, "losses.json")
    if world == 1:
        job = load_config(None, [f'data.shards="{shards}"', *BASE, *overrides], preset=preset, out=out,
                          **{"train.steps": steps})
        result = train(job, resume=resume)
        return {r["step"]: r["loss"] for r in result.history}
    mp.start_processes(_worker, args=(world, free_port(), str(shards), out, overrides, steps, resume, result_file, preset),
                       nprocs=world, join=True, start_method="spawn")
    with open(result_file) as fh:
        return {int(k): v for k, v in json.load(fh).items()}
