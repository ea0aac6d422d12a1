"""Start a multi-process job on this machine with torchrun (torch.distributed.run).

The launcher prepares the data once (so ranks never race to build the demo corpus), then runs
`python -m torch.distributed.run --standalone --nproc-per-node N -m flopwise.cli <same arguments>`.
torchrun's agent stops every rank as soon as one fails; a hung collective ends at parallel.timeout_s.
For several nodes use torchrun's rendezvous directly (README: two-node and Slurm examples)."""

from __future__ import annotations

import os
import subprocess
import sys

from flopwise.errors import ParallelError
from flopwise.train.config import JobConfig, resolve_layout


def _without_nproc(argv: list[str]) -> list[str]:
    """Drop --nproc from the forwarded arguments: torchrun's parser would take it for --nproc-per-node."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def torchrun_command(nproc: int, argv: list[str], shards: str | None) -> list[str]:
    argv = _without_nproc(argv)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "flopwise.cli", *argv]
    if shards:
        cmd += ["--set", f'data.shards="{shards}"']
    return cmd


def launch_torchrun(job: JobConfig, nproc: int, argv: list[str]) -> int:
    from flopwise.train.trainer import resolve_shards

    resolve_layout(job, nproc)  # an impossible layout fails here, before any process starts
    shards = str(resolve_shards(job)) if not job.data.shards else None
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    proc = subprocess.run(torchrun_command(nproc, argv, shards), env=env)
    if proc.returncode != 0:
        raise ParallelError(
            f"the distributed job failed (exit status {proc.returncode}); torchrun's report above names the first "
            "failing rank and its error"
        )
    return 0
